"""atomicwrite.transformers: the Trainer's and accelerate's checkpoints, published whole.

Real transformers and accelerate on CPU with a one-layer GPT-2 built from a config (nothing is
downloaded).  Crash tests fork training runs from one worker process that SIGKILL themselves at
chosen points of a save; the two-node test runs two processes on gloo.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read when transformers is imported
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import torch

import atomicwrite._directories.local as local_directories
from atomicwrite import TargetExistsError, UsageError, open_directory, sweep, verify_directory
from atomicwrite._directories.manifest import MANIFEST_NAME
from atomicwrite.transformers import atomic_checkpoints, last_complete_checkpoint, save_pretrained
from tests._hf_workers import KILL_POINTS, TinyData, make_trainer, tiny_model, tiny_tokenizer
from tests._stores import moto_endpoint, s3_options

__all__ = ["moto_endpoint"]

ROOT = Path(__file__).resolve().parent.parent


def checkpoints(directory: Path, separator: str = "-") -> list[str]:
    """The checkpoint directories a reader sees, oldest first."""
    found = [name for name in os.listdir(directory) if name.startswith(f"checkpoint{separator}")]
    return sorted(found, key=lambda name: int(name.rpartition(separator)[2]))


def assert_loads(checkpoint: Path) -> None:
    """The checkpoint verifies against its manifest and every part of it loads."""
    from transformers import GPT2LMHeadModel

    verification = verify_directory(checkpoint)
    assert verification, verification.problems
    model = GPT2LMHeadModel.from_pretrained(checkpoint)
    assert model.transformer.wte.weight.shape == (64, 16)
    optimizer = torch.load(checkpoint / "optimizer.pt", weights_only=False)
    assert optimizer["state"]
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["global_step"] == int(checkpoint.name.rpartition("-")[2])
    assert torch.load(checkpoint / "rng_state.pth", weights_only=False)["cpu"].numel() > 0


class RemovalWitness:
    """Wraps the directory layer's remove_tree: records each removal, and the checkpoints a
    reader could load at that instant (the one being removed excluded)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.removed: list[str] = []
        self.complete_at_removal: list[str | None] = []
        original = local_directories.remove_tree

        def witness(parent: str, dir_fd: int, name: str) -> None:
            self.removed.append(name)
            others = [entry for entry in os.listdir(parent) if entry != name and entry.startswith("checkpoint")]
            newest = None
            for entry in sorted(others, key=lambda n: int(n.replace("_", "-").rpartition("-")[2]), reverse=True):
                if verify_directory(os.path.join(parent, entry)):
                    newest = entry
                    break
            self.complete_at_removal.append(newest)
            original(parent, dir_fd, name)

        monkeypatch.setattr(local_directories, "remove_tree", witness)


# --- the Trainer -------------------------------------------------------------------------------


def test_every_checkpoint_is_published_whole_and_rotated_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    witness = RemovalWitness(monkeypatch)
    trainer = make_trainer(str(tmp_path), save_total_limit=2)
    trainer.train()
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-4", "checkpoint-5"]  # no staging left behind
    for name in checkpoints(tmp_path):
        assert_loads(tmp_path / name)
        listed = {entry.name for entry in open_directory(tmp_path / name).manifest.files}
        assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"} <= listed
        assert {"tokenizer.json", "tokenizer_config.json", "config.json"} <= listed
    assert witness.removed == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    # Each old one went only once a newer, complete one was published.
    assert witness.complete_at_removal == ["checkpoint-3", "checkpoint-4", "checkpoint-5"]
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-5")


def test_save_total_limit_one_never_leaves_the_run_without_a_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    witness = RemovalWitness(monkeypatch)
    trainer = make_trainer(str(tmp_path), save_total_limit=1)
    trainer.train()
    assert checkpoints(tmp_path) == ["checkpoint-5"]
    assert witness.removed == ["checkpoint-1", "checkpoint-2", "checkpoint-3", "checkpoint-4"]
    assert witness.complete_at_removal == ["checkpoint-2", "checkpoint-3", "checkpoint-4", "checkpoint-5"]
    assert_loads(tmp_path / "checkpoint-5")


def test_rotation_keeps_the_best_checkpoint_with_its_real_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scores = iter([1.0, 5.0, 2.0, 3.0, 4.0])  # the best is the evaluation at step 2

    def compute_metrics(_: Any) -> dict[str, float]:
        return {"score": next(scores)}

    witness = RemovalWitness(monkeypatch)
    trainer = make_trainer(
        str(tmp_path),
        save_total_limit=1,
        eval_strategy="steps",
        eval_steps=1,
        load_best_model_at_end=True,
        metric_for_best_model="score",
        greater_is_better=True,
    )
    trainer.compute_metrics = compute_metrics
    trainer.train()
    best = str(tmp_path / "checkpoint-2")
    assert trainer.state.best_model_checkpoint == best
    assert "checkpoint-2" not in witness.removed
    # save_total_limit=1 with a best one: the Trainer's rule at the end keeps the best only.
    assert checkpoints(tmp_path) == ["checkpoint-2"]
    assert_loads(tmp_path / "checkpoint-2")
    recorded = json.loads((tmp_path / "checkpoint-2" / "trainer_state.json").read_text())
    assert recorded["best_model_checkpoint"] == best  # not the staging directory's name


def tear(checkpoint: Path, copy_of: Path) -> None:
    """What a crash of an unprotected save leaves: a checkpoint directory without all its files."""
    shutil.copytree(copy_of, checkpoint)
    (checkpoint / MANIFEST_NAME).unlink()
    for optimizer in ("optimizer.pt", "optimizer.bin"):  # the Trainer's, accelerate's
        (checkpoint / optimizer).unlink(missing_ok=True)
    with open(checkpoint / "model.safetensors", "r+b") as file:
        file.truncate(100)


def test_resume_true_uses_the_last_complete_checkpoint_and_keeps_it(tmp_path: Path) -> None:
    from transformers.trainer_utils import get_last_checkpoint

    make_trainer(str(tmp_path), max_steps=3).train()
    tear(tmp_path / "checkpoint-4", tmp_path / "checkpoint-3")
    assert get_last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-4")  # what the Trainer would pick
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-3")

    trainer = make_trainer(str(tmp_path), save_total_limit=1)
    trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == 5
    # checkpoint-4 was rewritten whole; the one training resumed from survived a limit of 1.
    assert checkpoints(tmp_path) == ["checkpoint-3", "checkpoint-5"]
    assert_loads(tmp_path / "checkpoint-5")
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-5")


def test_resume_true_without_a_complete_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    from atomicwrite import TargetNotFoundError

    make_trainer(str(tmp_path), max_steps=1, adopt=False).train()  # published without a manifest
    trainer = make_trainer(str(tmp_path))
    with pytest.raises(TargetNotFoundError, match="no complete checkpoint"):
        trainer.train(resume_from_checkpoint=True)
    assert checkpoints(tmp_path) == ["checkpoint-1"]


def test_last_complete_checkpoint_checks_every_shard_of_the_index(tmp_path: Path) -> None:
    from atomicwrite import atomic_directory

    model = tiny_model()
    save_pretrained(model, tmp_path / "checkpoint-1", max_shard_size="10KB")
    shards = sorted(name for name in os.listdir(tmp_path / "checkpoint-1") if name.startswith("model-"))
    assert len(shards) > 1
    assert (tmp_path / "checkpoint-1" / "model.safetensors.index.json").exists()
    # A directory published whole, but whose index names a shard it does not hold.
    with atomic_directory(tmp_path / "checkpoint-2") as stage:
        for name in os.listdir(tmp_path / "checkpoint-1"):
            if name != MANIFEST_NAME and name != shards[-1]:
                shutil.copy(tmp_path / "checkpoint-1" / name, Path(stage) / name)
    assert verify_directory(tmp_path / "checkpoint-2")
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-1")
    # A damaged file (same size, other bytes) is found by its checksum.
    path = tmp_path / "checkpoint-1" / shards[0]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert last_complete_checkpoint(tmp_path) is None
    assert last_complete_checkpoint(tmp_path, checksums=False) == str(tmp_path / "checkpoint-1")
    assert last_complete_checkpoint(tmp_path / "absent") is None


def test_atomic_checkpoints_refuses_other_objects() -> None:
    with pytest.raises(UsageError, match=r"Trainer or an accelerate\.Accelerator"):
        atomic_checkpoints(object())


# --- save_pretrained ---------------------------------------------------------------------------


def test_save_pretrained_publishes_a_sharded_model_and_replaces_it_whole(tmp_path: Path) -> None:
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

    target = tmp_path / "model"
    first = tiny_model(seed=1)
    save_pretrained(first, target, max_shard_size="10KB")
    second = tiny_model(seed=2)
    result = save_pretrained(second, target, max_shard_size="10KB")
    assert result.replaced
    assert verify_directory(target)
    assert last_complete_checkpoint(tmp_path) is None  # not a checkpoint-N name
    loaded = GPT2LMHeadModel.from_pretrained(target)
    for name, tensor in second.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert [entry for entry in os.listdir(tmp_path) if entry != "model"] == []

    save_pretrained(tiny_tokenizer(), tmp_path / "tokenizer")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tmp_path / "tokenizer")
    assert tokenizer("w1 w2")["input_ids"] == [3, 4]


def test_save_pretrained_failure_leaves_the_old_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import transformers.modeling_utils as modeling_utils

    target = tmp_path / "model"
    save_pretrained(tiny_model(seed=1), target)
    before = verify_directory(target).manifest

    def disk_full(tensors: Any, filename: str, **_: Any) -> None:
        with open(filename, "wb") as file:
            file.write(b"part of a shard")
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(modeling_utils, "safe_save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_pretrained(tiny_model(seed=2), target)
    assert verify_directory(target).manifest == before
    assert os.listdir(tmp_path) == ["model"]
    with pytest.raises(UsageError, match="no save_pretrained"):
        save_pretrained(object(), target)


@pytest.fixture
def s3_place(moto_endpoint: str) -> Iterator[tuple[str, dict[str, Any]]]:
    import fsspec

    options = s3_options(moto_endpoint)
    fs = fsspec.filesystem("s3", **options)
    bucket = "hf-models"
    if not fs.exists(bucket):
        fs.call_s3("create_bucket", Bucket=bucket)
    yield f"s3://{bucket}/{uuid.uuid4().hex}", options
    type(fs).clear_instance_cache()


@pytest.mark.parametrize("store", ["memory", "s3"])
def test_save_pretrained_to_an_object_store(store: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    from transformers import GPT2LMHeadModel

    if store == "memory":
        url, options = f"memory://models-{uuid.uuid4().hex}/tiny", {}
    else:
        url, options = request.getfixturevalue("s3_place")
    save_pretrained(tiny_model(seed=1), url, storage_options=options, max_shard_size="10KB")
    model = tiny_model(seed=2)
    result = save_pretrained(model, url, storage_options=options, max_shard_size="10KB")
    assert result.replaced
    assert verify_directory(url, storage_options=options)
    published = open_directory(url, storage_options=options)
    download = tmp_path / "download"
    download.mkdir()
    for entry in published.manifest.files:
        with published.open(entry.name) as source:
            (download / entry.name).write_bytes(source.read())
    assert len([e for e in published.manifest.files if e.name.startswith("model-")]) > 1
    loaded = GPT2LMHeadModel.from_pretrained(download)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


# --- accelerate ------------------------------------------------------------------------------------


def accelerator_run(project: Path, total_limit: int) -> tuple[Any, Any, Any]:
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    config = ProjectConfiguration(project_dir=str(project), automatic_checkpoint_naming=True, total_limit=total_limit)
    accelerator = atomic_checkpoints(Accelerator(cpu=True, project_config=config))
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    return accelerator, model, optimizer


def train_step(model: Any, optimizer: Any) -> None:
    batch = TinyData()[0]
    loss = model(input_ids=batch["input_ids"][None], labels=batch["labels"][None]).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def test_accelerate_save_state_publishes_whole_and_rotates_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    witness = RemovalWitness(monkeypatch)
    accelerator, model, optimizer = accelerator_run(tmp_path, total_limit=2)
    for _ in range(5):
        train_step(model, optimizer)
        accelerator.save_state()
    root = tmp_path / "checkpoints"
    assert sorted(os.listdir(root)) == ["checkpoint_3", "checkpoint_4"]
    assert witness.removed == ["checkpoint_0", "checkpoint_1", "checkpoint_2"]
    assert witness.complete_at_removal == ["checkpoint_2", "checkpoint_3", "checkpoint_4"]
    for name in os.listdir(root):
        assert verify_directory(root / name)
    expected = {k: v.clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}

    # A fresh run: load_state() finds the newest complete checkpoint, not a torn newer one.
    tear(root / "checkpoint_5", root / "checkpoint_4")
    resumed, model, optimizer = accelerator_run(tmp_path, total_limit=1)
    resumed.load_state()
    for name, tensor in resumed.unwrap_model(model).state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    assert resumed.project_configuration.iteration == 5
    train_step(model, optimizer)
    assert resumed.save_state() == str(root / "checkpoint_5")
    # The torn checkpoint_5 was replaced whole; the one loaded is kept despite total_limit=1.
    assert sorted(os.listdir(root)) == ["checkpoint_4", "checkpoint_5"]
    assert last_complete_checkpoint(root) == str(root / "checkpoint_5")

    # A save numbered like a complete checkpoint is refused, as accelerate refuses it.
    restarted, model, optimizer = accelerator_run(tmp_path, total_limit=1)
    restarted.project_configuration.iteration = 4
    before = open_directory(root / "checkpoint_4").manifest
    with pytest.raises(TargetExistsError):
        restarted.save_state()
    assert open_directory(root / "checkpoint_4").manifest == before
    assert sorted(os.listdir(root)) == ["checkpoint_4", "checkpoint_5"]


def test_accelerate_save_state_to_a_named_directory(tmp_path: Path) -> None:
    from accelerate import Accelerator

    accelerator = atomic_checkpoints(Accelerator(cpu=True))
    model = accelerator.prepare(tiny_model())
    target = tmp_path / "state"
    assert accelerator.save_state(target) == str(target)
    assert verify_directory(target)
    assert "model.safetensors" in os.listdir(target)
    with pytest.raises(UsageError, match="output_dir"):
        accelerator.save_state()
    accelerator.load_state(target)
    assert model is not None


# --- SIGKILL during saves ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="fork and SIGKILL are POSIX")
def test_sigkill_at_every_point_of_a_save_leaves_loadable_checkpoints_and_resumes(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [sys.executable, "-m", "tests._hf_workers", "kills", str(tmp_path), *KILL_POINTS],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    outcome = json.loads((tmp_path / "kills.json").read_text())
    assert outcome == dict.fromkeys(KILL_POINTS, -signal.SIGKILL)
    for point in KILL_POINTS:
        run = tmp_path / point
        visible = checkpoints(run)
        # The killed save was checkpoint-3: published only if the kill came after its rename.
        expected = ["checkpoint-2", "checkpoint-3"] if point == "rotation" else ["checkpoint-1", "checkpoint-2"]
        assert visible == expected, point
        for name in visible:
            assert_loads(run / name)
        assert last_complete_checkpoint(run) == str(run / expected[-1])
        # What the crash left under hidden names, sweep clears (the writer is dead): it removes
        # a partial staging directory, and finishes the publish of one whose manifest was
        # written (killed just before the rename), which is then whole.
        hidden = [name for name in os.listdir(run) if name.startswith(".")]
        assert hidden, point
        sweep(run, older_than=0)
        after_sweep = ["checkpoint-1", "checkpoint-2", "checkpoint-3"] if point == "publish" else expected
        assert sorted(os.listdir(run)) == after_sweep, point
        assert_loads(run / after_sweep[-1])

    # Resuming continues from the last complete checkpoint, and finishes whole.
    for point in ("weights-half", "rotation"):
        run = tmp_path / point
        trainer = make_trainer(str(run), save_total_limit=2)
        resumed_from = last_complete_checkpoint(run)
        trainer.train(resume_from_checkpoint=True)
        assert trainer._atomicwrite_adoption.resumed_from == resumed_from
        assert trainer.state.global_step == 5
        assert_loads(run / "checkpoint-5")
        assert set(checkpoints(run)) >= {"checkpoint-5", os.path.basename(str(resumed_from))}


# --- two processes on gloo, as two nodes ---------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_two_nodes(output: Path, mode: str) -> list[dict[str, Any]]:
    port = free_port()
    processes = []
    for rank in (0, 1):
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(ROOT),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "WORLD_SIZE": "2",
            # Two nodes of one process each: each process is its node's first.
            "LOCAL_RANK": "0",
            "LOCAL_WORLD_SIZE": "1",
            "GROUP_RANK": str(rank),
            "OMP_NUM_THREADS": "1",
        }
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "tests._hf_workers", "rank", str(output), mode],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    reports = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
        reports.append(json.loads(stdout.strip().splitlines()[-1]))
    return reports


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="the gloo run uses POSIX paths")
def test_two_nodes_sharing_the_output_directory(tmp_path: Path) -> None:
    reports = run_two_nodes(tmp_path, "shared")
    assert [(r["rank"], r["world"], r["should_save"]) for r in reports] == [(0, 2, True), (1, 2, False)]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-2", "checkpoint-3"]
    for name in ("checkpoint-2", "checkpoint-3"):
        verification = verify_directory(tmp_path / name)
        assert verification, verification.problems
        listed = {entry.name for entry in open_directory(tmp_path / name).manifest.files}
        # One checkpoint holds both processes' files, published once.
        assert {"model.safetensors", "optimizer.pt", "rng_state_0.pth", "rng_state_1.pth"} <= listed
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-3")


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="the gloo run uses POSIX paths")
def test_two_nodes_saving_on_each_node(tmp_path: Path) -> None:
    reports = run_two_nodes(tmp_path, "each-node")
    assert [(r["rank"], r["should_save"]) for r in reports] == [(0, True), (1, True)]
    for rank in (0, 1):
        node = tmp_path / f"node{rank}"
        assert sorted(os.listdir(node)) == ["checkpoint-2", "checkpoint-3"]
        for name in ("checkpoint-2", "checkpoint-3"):
            verification = verify_directory(node / name)
            assert verification, verification.problems
            listed = {entry.name for entry in open_directory(node / name).manifest.files}
            assert {"optimizer.pt", "trainer_state.json", f"rng_state_{rank}.pth"} <= listed
            assert f"rng_state_{1 - rank}.pth" not in listed
        assert last_complete_checkpoint(node) == str(node / "checkpoint-3")
    assert "model.safetensors" in os.listdir(tmp_path / "node0" / "checkpoint-3")
