"""``atomicwrite verify`` on checkpoints written by other tools, judged by their own conventions.

Orbax, DeepSpeed and NeMo layouts are built by hand (those tools are not installed here); the
torch.distributed.checkpoint one is written by ``torch.distributed.checkpoint.save`` itself, in
one process, and then damaged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from atomicwrite._cli.verify import verify
from tests._stores import moto_endpoint, s3_options
from tests.test_cli_tools import run_cli

__all__ = ["moto_endpoint"]


def checks(path: Path) -> list[tuple[str, bool | None]]:
    return [(check.name, check.ok) for check in verify(str(path)).checks]


# --- Orbax -------------------------------------------------------------------------------------


def orbax_step(path: Path, *, committed: bool) -> Path:
    path.mkdir(parents=True)
    (path / "_CHECKPOINT_METADATA").write_text("{}")
    (path / "default").mkdir()
    (path / "default" / "d").write_bytes(b"array data")
    if committed:
        (path / "commit_success.txt").write_text("Checkpoint commit was successful to " + str(path))
    return path


def test_orbax_local_step_is_complete_by_its_final_name(tmp_path: Path) -> None:
    report = verify(str(orbax_step(tmp_path / "ckpt" / "100", committed=False)))
    assert report.verdict == "ok"
    assert report.kind == "checkpoint by Orbax's convention"
    assert [(c.name, c.ok) for c in report.checks] == [("Orbax final name", True)]


def test_orbax_temporary_directory_is_incomplete(tmp_path: Path) -> None:
    step = orbax_step(tmp_path / "ckpt" / "100.orbax-checkpoint-tmp-1733300000", committed=False)
    report = verify(str(step))
    assert report.verdict == "torn"
    assert "never renamed to '100'" in report.checks[0].detail


def test_orbax_commit_marker_on_an_object_store(tmp_path: Path, moto_endpoint: str) -> None:
    """On a store Orbax cannot rename: only commit_success.txt says the step finished."""
    import s3fs

    options = s3_options(moto_endpoint)
    fs = s3fs.S3FileSystem(**options)
    bucket = "atomicwrite-verify-peers"
    fs.call_s3("create_bucket", Bucket=bucket)
    fs.pipe({f"{bucket}/run/100/_CHECKPOINT_METADATA": b"{}", f"{bucket}/run/100/default/d": b"array"})
    unfinished = verify(f"s3://{bucket}/run/100", storage_options=options)
    assert unfinished.verdict == "torn"
    assert unfinished.checks[0].name == "Orbax commit marker"
    fs.pipe({f"{bucket}/run/100/commit_success.txt": b"done"})
    finished = verify(f"s3://{bucket}/run/100", storage_options=options)
    assert finished.verdict == "ok"


# --- torch.distributed.checkpoint ---------------------------------------------------------------


@pytest.fixture
def dcp_checkpoint(tmp_path: Path) -> Path:
    torch = pytest.importorskip("torch")
    import torch.distributed.checkpoint as dcp

    target = tmp_path / "dcp"
    state = {"weight": torch.arange(4096, dtype=torch.float32), "bias": torch.ones(16)}
    dcp.save(state, checkpoint_id=str(target))
    return target


def test_dcp_checkpoint_written_by_torch_is_complete(dcp_checkpoint: Path) -> None:
    report = verify(str(dcp_checkpoint))
    assert report.kind == "checkpoint by torch.distributed.checkpoint's convention"
    assert [(c.name, c.ok) for c in report.checks] == [("DCP .metadata", True), ("DCP shards", True)]


def test_dcp_truncated_shard_is_torn(dcp_checkpoint: Path) -> None:
    shard = next(dcp_checkpoint.glob("*.distcp"))
    os.truncate(shard, shard.stat().st_size // 2)
    report = verify(str(dcp_checkpoint))
    assert report.verdict == "torn"
    assert ("DCP shard", False) in [(c.name, c.ok) for c in report.checks]
    assert shard.name in " ".join(c.detail for c in report.checks)


def test_dcp_missing_shard_or_metadata_is_torn(dcp_checkpoint: Path) -> None:
    shard = next(dcp_checkpoint.glob("*.distcp"))
    shard.unlink()
    missing = verify(str(dcp_checkpoint))
    assert missing.verdict == "torn"
    assert f"{shard.name} is missing" in [c.detail for c in missing.checks]
    shard.write_bytes(b"")
    (dcp_checkpoint / ".metadata").unlink()
    assert checks(dcp_checkpoint) == [("DCP .metadata", False)]


# --- DeepSpeed ---------------------------------------------------------------------------------


def deepspeed_root(path: Path, tag: str = "global_step200", ranks: tuple[int, ...] = (0, 1, 2)) -> Path:
    (path / tag).mkdir(parents=True)
    (path / "latest").write_text(tag)
    (path / tag / "mp_rank_00_model_states.pt").write_bytes(b"model")
    for rank in ranks:
        (path / tag / f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"optimizer")
    return path


def test_deepspeed_latest_names_a_complete_tag(tmp_path: Path) -> None:
    report = verify(str(deepspeed_root(tmp_path / "run")))
    assert report.verdict == "ok"
    assert [c.name for c in report.checks] == [
        "DeepSpeed latest",
        "DeepSpeed model states",
        "DeepSpeed optimizer shards",
    ]


def test_deepspeed_incomplete_tags(tmp_path: Path) -> None:
    gap = deepspeed_root(tmp_path / "gap", ranks=(0, 2))
    assert ("DeepSpeed optimizer shards", False) in checks(gap)
    dangling = deepspeed_root(tmp_path / "dangling")
    (dangling / "latest").write_text("global_step300")
    assert checks(dangling) == [("DeepSpeed latest", False)]
    no_model = deepspeed_root(tmp_path / "no-model")
    (no_model / "global_step200" / "mp_rank_00_model_states.pt").unlink()
    assert ("DeepSpeed model states", False) in checks(no_model)


# --- NeMo --------------------------------------------------------------------------------------


def test_nemo_unfinished_marker_beside_a_file_and_a_directory(tmp_path: Path) -> None:
    ckpt = tmp_path / "megatron_gpt--step=100-last.ckpt"
    ckpt.write_bytes(b"not a zip")
    assert ("NeMo marker", False) not in checks(ckpt)
    (tmp_path / "megatron_gpt--step=100-unfinished").touch()
    assert verify(str(ckpt)).verdict == "torn"
    assert ("NeMo marker", False) in checks(ckpt)

    distributed = tmp_path / "model--step=5"
    distributed.mkdir()
    (distributed / "weights").write_bytes(b"w")
    (tmp_path / "model--step=5-unfinished").touch()
    report = verify(str(distributed))
    assert report.kind == "checkpoint by NeMo's convention"
    assert report.verdict == "torn"


def test_name_ending_in_unfinished_is_torn(tmp_path: Path) -> None:
    (tmp_path / "step=9-unfinished").mkdir()
    assert checks(tmp_path / "step=9-unfinished") == [("NeMo marker", False)]


# --- nothing recognised, and the command line ----------------------------------------------------


def test_unknown_directory_stays_unverified(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"w")
    report = verify(str(tmp_path))
    assert report.verdict == "unverified"
    assert report.kind == "directory"


def test_cli_says_which_convention_judged(tmp_path: Path) -> None:
    step = orbax_step(tmp_path / "7.orbax-checkpoint-tmp-99", committed=False)
    result = run_cli("verify", "--json", str(step))
    assert result.returncode == 1, result.stderr
    answer = json.loads(result.stdout)
    assert answer["kind"] == "checkpoint by Orbax's convention"
    assert answer["verdict"] == "torn"


def test_dcp_metadata_that_calls_anything_else_is_not_run(dcp_checkpoint: Path) -> None:
    """.metadata is a pickle: one naming a global outside torch is refused, never called."""
    import pickle

    (dcp_checkpoint / ".metadata").write_bytes(pickle.dumps(os.getcwd))
    report = verify(str(dcp_checkpoint))
    assert [(c.name, c.ok) for c in report.checks] == [("DCP .metadata", None)]
    assert report.verdict == "unverified"
    assert "present, not checked" in report.checks[0].detail
