"""Ranks of the DCP object-store tests, run as subprocesses (gloo on CPU)::

    python -m tests._dcp_workers RANK WORLD INIT_FILE TARGET OPTIONS_JSON MODE

``MODE``: ``stepN`` saves step N; ``raise``: rank 1 cannot serialize its part; ``kill1``: rank 1
is SIGKILLed while DCP serializes its part; ``killfinish``:
the coordinator is SIGKILLed in ``finish``, after every rank wrote its shard and before the
manifest.  Each rank prints one JSON line on stdout as its last act: what happened to it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from datetime import timedelta
from typing import Any

from tests._distworkers import KillWhenPickled, dcp_state, report


class Unpicklable:
    def __reduce__(self) -> Any:
        raise RuntimeError("rank 1 cannot serialize its part")


def main(rank: str, world: str, init_file: str, target: str, options: str, mode: str) -> None:
    import torch.distributed as dist
    from torch.distributed.checkpoint.filesystem import FileSystemWriter

    from atomicwrite.distributed import dcp_save

    me, size = int(rank), int(world)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=me, world_size=size, timeout=timedelta(seconds=30)
    )
    step = int(mode.removeprefix("step")) if mode.startswith("step") else 2
    state = dcp_state(me, step)
    if mode == "raise" and me == 1:
        state["bad"] = Unpicklable()
    if mode == "kill1" and me == 1:
        state["bomb"] = KillWhenPickled()
    if mode == "killfinish" and me == 0:

        def die(*_: Any) -> None:
            os.kill(os.getpid(), signal.SIGKILL)

        FileSystemWriter.finish = die  # type: ignore[method-assign]
    outcome: dict[str, Any] = {"rank": me}
    try:
        result = dcp_save(state, target, storage_options=json.loads(options))
        outcome["published"] = None if result is None else sorted(entry.name for entry in result.manifest.files)
    except BaseException as exc:  # DCP's CheckpointException is a BaseException
        outcome["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    report(outcome)
    os._exit(0)


if __name__ == "__main__":
    main(*sys.argv[1:])
