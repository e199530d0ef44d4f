"""Multi-rank checkpoints on torch.distributed (gloo on CPU), ranks as real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from atomicwrite import CheckpointStore, sweep, verify_directory

torch = pytest.importorskip("torch")
pytest.importorskip("torch.distributed")

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(), reason="no gloo backend"
)


def run_rank_commands(commands: list[list[str]]) -> list[tuple[int, Any]]:
    """Start one ``python -m ARGS...`` process per rank, wait for all; ``(returncode, report or
    None)`` per rank, the report being the JSON line a rank prints last."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", *command],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command in commands
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        lines = out.strip().splitlines()
        results.append((proc.returncode, json.loads(lines[-1]) if lines else {"stderr": err[-2000:]}))
    return results


def run_ranks(tmp_path: Path, root: Path, world: int, mode: str, run: int) -> list[tuple[int, Any]]:
    """Start ``world`` ranks, wait for all; ``(returncode, report or None)`` per rank."""
    init_file = tmp_path / f"init-{run}"
    return run_rank_commands(
        [
            ["tests._distworkers", "store_save", str(rank), str(world), str(init_file), str(root), mode]
            for rank in range(world)
        ]
    )


def check_generation(store: CheckpointStore, name: str, world: int, step: int) -> None:
    assert store.verify(name).ok
    generation = store.get(name)
    names = sorted(entry.name for entry in generation.directory.manifest.files)
    assert names == sorted([*(f"shard-{rank}.pt" for rank in range(world)), "meta.json"])
    assert generation.step == step
    assert generation.metrics == {"loss": 0.5}
    assert generation.tags == {"writer": "rank0"}
    for rank in range(world):
        state = torch.load(generation / f"shard-{rank}.pt", weights_only=True)
        assert state["rank"] == rank
        assert state["step"] == step


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 4])
def test_a_failed_rank_publishes_nothing(tmp_path: Path, world: int) -> None:
    """One rank SIGKILLed mid-save, then (2 ranks) one that raises: nothing is published, the
    previous generation stays latest and loads, and the next save works."""
    root = tmp_path / "run"
    store = CheckpointStore(root)

    first = run_ranks(tmp_path, root, world, "ok", 1)
    assert [code for code, _ in first] == [0] * world, first
    assert all(result.get("published") == "gen-00000001" for _, result in first), first
    check_generation(store, "gen-00000001", world, 1)

    killed = run_ranks(tmp_path, root, world, "kill", 2)
    codes = [code for code, _ in killed]
    assert codes[1] == -9, killed
    survivors = [result for rank, (_, result) in enumerate(killed) if rank != 1]
    assert all("published" not in result for result in survivors), killed
    assert all("aborted" in result or "error" in result for result in survivors), killed
    assert store.generations() == ["gen-00000001"]
    assert store.pointer() == "gen-00000001"
    latest = store.latest()
    assert latest is not None
    assert latest.name == "gen-00000001"
    check_generation(store, "gen-00000001", world, 1)
    sweep(root, older_than=0)
    assert sorted(os.listdir(root)) == ["gen-00000001", "latest"]

    if world > 2:
        return  # each run starts torch in every rank: the longer sequence runs with 2 ranks

    # A rank that raises in its block: every rank aborts, the staging area goes.
    raised = run_ranks(tmp_path, root, world, "raise", 3)
    assert [code for code, _ in raised] == [0, 0], raised
    assert "aborted" in raised[0][1], raised
    assert raised[1][1].get("error") == "RuntimeError: rank 1 failed on purpose", raised
    assert store.generations() == ["gen-00000001"]
    assert sorted(os.listdir(root)) == ["gen-00000001", "latest"]
    assert verify_directory(root / "gen-00000001").ok

    # Metadata rank 0 refuses: every rank aborts before anything is staged.
    refused = run_ranks(tmp_path, root, world, "badmeta", 4)
    assert [code for code, _ in refused] == [0, 0], refused
    assert refused[0][1].get("error", "").startswith("UsageError: "), refused
    assert "aborted" in refused[1][1], refused
    assert sorted(os.listdir(root)) == ["gen-00000001", "latest"]

    # And the next save goes through.
    again = run_ranks(tmp_path, root, world, "ok", 5)
    assert all(result.get("published") == "gen-00000002" for _, result in again), again
    check_generation(store, "gen-00000002", world, 2)


# --- torch.distributed.checkpoint -----------------------------------------------------------


def load_dcp(target: Path) -> dict[str, Any]:
    import torch.distributed.checkpoint as dcp

    state = {"model": {"weight": torch.zeros(32, 32)}, "step": -1}
    with pytest.warns(UserWarning, match="single process"):
        dcp.load(state, checkpoint_id=str(target))
    return state


def test_dcp_round_trip_and_replace_in_one_process(tmp_path: Path) -> None:
    from atomicwrite.distributed import dcp_save

    target = tmp_path / "dcp"
    for step in (1, 2):
        weight = torch.full((32, 32), float(step))
        with pytest.warns(UserWarning, match="single process"):
            result = dcp_save({"model": {"weight": weight}, "step": step}, target)
        assert result is not None
        assert ".metadata" in {entry.name for entry in result.manifest.files}
        assert result.replaced == (step == 2)
        assert verify_directory(target).ok
        state = load_dcp(target)
        assert state["step"] == step
        assert torch.equal(state["model"]["weight"], weight)
    assert os.listdir(tmp_path) == ["dcp"]

    class Unpicklable:
        def __reduce__(self) -> Any:
            raise RuntimeError("cannot serialize")

    from torch.distributed.checkpoint.api import CheckpointException

    with pytest.raises(CheckpointException), pytest.warns(UserWarning, match="single process"):
        dcp_save({"model": {"weight": torch.zeros(32, 32)}, "step": 3, "bad": Unpicklable()}, target)
    assert os.listdir(tmp_path) == ["dcp"]  # the staging directory went with the failure
    assert load_dcp(target)["step"] == 2


def test_dcp_writer_refuses_urls_no_strategy_writes() -> None:
    from atomicwrite import UnsupportedTargetError
    from atomicwrite.distributed import dcp_writer

    # Object stores are written (tests/test_dcp_stores.py); a protocol nothing writes is refused.
    with pytest.raises(UnsupportedTargetError):
        dcp_writer("nosuchstore://bucket/ckpt")


def run_dcp_ranks(tmp_path: Path, target: Path, world: int, mode: str, run: int) -> list[tuple[int, Any]]:
    init_file = tmp_path / f"dcp-init-{run}"
    return run_rank_commands(
        [
            ["tests._distworkers", "dcp", str(rank), str(world), str(init_file), str(target), mode]
            for rank in range(world)
        ]
    )


@pytest.mark.slow
def test_dcp_two_ranks_and_a_rank_killed_mid_save(tmp_path: Path) -> None:
    from tests._distworkers import dcp_state

    target = tmp_path / "dcp"
    first = run_dcp_ranks(tmp_path, target, 2, "step1", 1)
    assert [code for code, _ in first] == [0, 0], first
    assert first[0][1].get("published", 0) >= 3, first  # .metadata and one file per rank
    assert "error" not in first[1][1], first
    assert verify_directory(target).ok
    state = load_dcp(target)
    assert state["step"] == 1
    assert torch.equal(state["model"]["weight"], dcp_state(0, 1)["model"]["weight"])

    killed = run_dcp_ranks(tmp_path, target, 2, "kill", 2)
    assert killed[1][0] == -9, killed
    assert "error" in killed[0][1], killed
    # The coordinator dropped its staging directory when the save failed: nothing to sweep.
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".dcp.")]
    assert verify_directory(target).ok
    assert load_dcp(target)["step"] == 1
