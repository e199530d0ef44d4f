"""Ranks of the multi-rank checkpoint tests, run as subprocesses (gloo on CPU)::

    python -m tests._distworkers ROLE RANK WORLD INIT_FILE ROOT MODE

Each rank prints one JSON line on stdout as its last act: what happened to it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from datetime import timedelta
from typing import Any


def report(result: object) -> None:
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def shard(rank: int, step: int) -> dict[str, Any]:
    import torch

    generator = torch.Generator().manual_seed(rank * 1000 + step)
    return {"rank": rank, "step": step, "weight": torch.randn(64, 64, generator=generator)}


def store_save(rank: str, world: str, init_file: str, root: str, mode: str) -> None:
    """Save one generation from every rank.  ``mode``: "ok"; "kill" (rank 1 is SIGKILLed half
    way through its shard); "raise" (rank 1 raises in its block); "badmeta" (a NaN metric)."""
    import torch
    import torch.distributed as dist

    import atomicwrite.distributed as awd
    from atomicwrite import CheckpointStore, DistributedAbortError

    me, size = int(rank), int(world)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=me, world_size=size, timeout=timedelta(seconds=60)
    )
    store = CheckpointStore(root)
    step = len(store.generations()) + 1
    outcome: dict[str, Any] = {"rank": me}
    try:
        # Each rank passes its own loss: the generation records rank 0's.
        loss = float("nan") if mode == "badmeta" else 0.5 + me
        with awd.save(store, metrics={"loss": loss}, tags={"writer": f"rank{me}"}, group=None) as stage:
            if mode == "kill" and me == 1:
                with open(stage / f"shard-{me}.pt", "wb") as file:
                    file.write(b"half a shard")
                    file.flush()
                    os.kill(os.getpid(), signal.SIGKILL)
            torch.save(shard(me, step), stage / f"shard-{me}.pt")
            if me == 0:
                with stage.open("meta.json", "w") as file:
                    file.write(json.dumps({"world": size, "step": step}))
            if mode == "raise" and me == 1:
                raise RuntimeError("rank 1 failed on purpose")
        outcome["published"] = store.pointer()
    except DistributedAbortError as exc:
        outcome["aborted"] = str(exc)
    except Exception as exc:
        outcome["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        with_group = dist.is_initialized()
    report(outcome)
    if with_group:
        # No collective after a lost peer: just leave.
        os._exit(0)


class KillWhenPickled:
    """A state-dict entry whose serialization, inside dcp.save's write step, SIGKILLs the rank."""

    def __reduce__(self) -> Any:
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")


def dcp_state(rank: int, step: int) -> dict[str, Any]:
    import torch

    generator = torch.Generator().manual_seed(step)
    return {"model": {"weight": torch.randn(32, 32, generator=generator)}, "step": step, f"rank{rank}": rank}


def dcp(rank: str, world: str, init_file: str, target: str, mode: str) -> None:
    """dcp.save through the atomic writer from every rank; ``mode`` "kill": rank 1 dies while
    DCP serializes its part."""
    import torch.distributed as dist

    from atomicwrite.distributed import dcp_save

    me, size = int(rank), int(world)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=me, world_size=size, timeout=timedelta(seconds=60)
    )
    step = 2 if mode == "kill" else int(mode.removeprefix("step"))
    state = dcp_state(me, step)
    if mode == "kill" and me == 1:
        state["bomb"] = KillWhenPickled()
    outcome: dict[str, Any] = {"rank": me}
    try:
        result = dcp_save(state, target)
        outcome["published"] = None if result is None else len(result.manifest.files)
    except Exception as exc:
        outcome["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    report(outcome)
    os._exit(0)


if __name__ == "__main__":
    role, *arguments = sys.argv[1:]
    globals()[role](*arguments)
