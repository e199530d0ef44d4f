"""A background torch save: how long the caller is blocked, against the same save done in the
caller.  Each in a fresh process, at 64 MiB, 256 MiB and the --torch-size (1 GiB by default; 16
and 64 MiB with --quick), for the blocking time against the checkpoint size.

Ours: ``atomicwrite.torch.save(state, path, background=True)``, timed until it returns (the CPU
snapshot of the tensors is taken before it returns; the write happens in a worker thread and is
waited for outside the timer).  Baseline: ``atomicwrite.torch.save(state, path)``, which returns
once the checkpoint is durable.
"""

from __future__ import annotations

import importlib.util

from ._harness import Context, MiB, Row, Target, alternate, probe, spread_reason

NAME = "background"
TITLE = "background torch save"
TENSOR = 64 * MiB

PROBE = r"""
import os, sys
import torch
import atomicwrite.torch

contender, path, size, tensor = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
count = max(1, size // tensor)
state = {f"layer{i}.weight": torch.empty(tensor // 4, dtype=torch.float32).fill_(i) for i in range(count)}
futures = []
if contender == "background":
    save = lambda: futures.append(atomicwrite.torch.save(state, path, background=True))
else:
    save = lambda: atomicwrite.torch.save(state, path)
measure(save, bytes=count * tensor)
for future in futures:
    future.result()
os.unlink(path)
"""


def run(context: Context) -> list[Row]:
    directory = context.directory / "background"
    directory.mkdir()
    label = "background torch save: caller blocked"
    if importlib.util.find_spec("torch") is None:
        row = Row(label, "save(background=True)", "save()", "s", [1.0], [1.0], False)
        row.targets.append(Target("blocked <= 0.2x", "torch not installed", None))
        return [row]
    sizes = (16 * MiB, context.torch_size) if context.quick else (64 * MiB, 256 * MiB, context.torch_size)
    rows = []
    for size in sorted(set(sizes)):

        def contender(name: str, size: int = size) -> float:
            path = str(directory / f"{name}.ckpt")
            return float(probe(PROBE, name, path, str(size), str(min(TENSOR, size)))["seconds"])

        rounds = 1 if context.quick else 5 if size == context.torch_size else 3
        mine, theirs = alternate(rounds, lambda: contender("background"), lambda: contender("sync"), warmup=False)
        row = Row(
            f"{label} ({size // MiB} MiB)",
            "save(background=True)",
            "save(), synchronous",
            "s",
            mine,
            theirs,
            False,
            chart="background",
            x=float(size),
        )
        met = row.ratio <= 0.2
        row.targets.append(Target("blocked <= 0.2x", f"{row.ratio:.3f}x", met, "" if met else spread_reason(row)))
        rows.append(row)
    return rows
