"""A ~1 GiB state dict saved three ways, each in a fresh process: wall time and peak extra RSS.

Ours: ``atomicwrite.torch.save`` (streamed into the temp file, durability full).  Baselines:
``torch.save(path)`` followed by an fsync of the file (not atomic), and Lightning 2.6's
``TorchCheckpointIO.save_checkpoint`` (serialized into memory first, then written).  Ours and
``torch.save`` alternate (with ``torch.save`` twice per round, to see the noise); Lightning
alternates with ours separately, since the process after a Lightning save runs slower.
"""

from __future__ import annotations

import importlib.util
import os

from ._harness import (
    Context,
    MiB,
    Row,
    Target,
    alternate_many,
    median,
    noise_reason,
    probe,
    same_code_gap,
    spread_reason,
)

NAME = "torch"
TITLE = "torch checkpoint"
TENSOR = 64 * MiB

PROBE = r"""
import os, sys
import torch

contender, path, size, tensor = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
count = max(1, size // tensor)
state = {f"layer{i}.weight": torch.empty(tensor // 4, dtype=torch.float32).fill_(i) for i in range(count)}

if contender == "ours":
    import atomicwrite.torch

    save = lambda: atomicwrite.torch.save(state, path)
elif contender == "torch":
    def save():
        torch.save(state, path)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
else:
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    save = lambda: TorchCheckpointIO().save_checkpoint(state, path)
measure(save, bytes=count * tensor)
os.unlink(path)
"""


def run(context: Context) -> list[Row]:
    directory = context.directory / "torch"
    directory.mkdir()
    if importlib.util.find_spec("torch") is None:
        row = Row("torch checkpoint", "atomicwrite.torch.save", "torch.save + fsync", "s", [1.0], [1.0], False)
        row.targets.append(Target("wall <= 1.05x", "torch not installed", None))
        return [row]
    size = context.torch_size

    def contender(kind: str) -> dict[str, float]:
        # Each starts from a clean page cache: Lightning flushes nothing, and the dirty pages it
        # leaves (or their writeback) would otherwise land on whoever runs next.
        os.sync()
        return probe(PROBE, kind, str(directory / f"{kind}.ckpt"), str(size), str(min(TENSOR, size)))

    # A save's time swings from one process to the next here (the page cache and writeback of
    # 1 GiB): a warm-up round and the default rounds, so the medians hold.  The baseline runs
    # twice per round (A/A): how far apart two runs of the same save come out.
    samples = alternate_many(
        1 if context.quick else context.rounds,
        {
            "ours": lambda: contender("ours"),
            "torch": lambda: contender("torch"),
            "torch again": lambda: contender("torch"),
        },
        warmup=not context.quick,
    )
    # Lightning in an alternation of its own: the process right after a Lightning save ran
    # 15-20% slower here, whichever it was (the ~3 GiB its process frees), which would tilt the
    # row above against whoever follows it.
    if importlib.util.find_spec("lightning") is not None:
        beside = alternate_many(
            1 if context.quick else max(3, context.rounds // 2),
            {"ours": lambda: contender("ours"), "lightning": lambda: contender("lightning")},
            warmup=False,
        )
        samples["ours beside lightning"], samples["lightning"] = beside["ours"], beside["lightning"]
    gap = same_code_gap(
        [sample["seconds"] for sample in samples["torch"]], [sample["seconds"] for sample in samples["torch again"]]
    )
    label = f"torch {size // MiB} MiB state dict"
    seconds = {name: [sample["seconds"] for sample in runs] for name, runs in samples.items()}
    extra = {name: [sample["extra_rss"] / MiB for sample in runs] for name, runs in samples.items()}
    rows = []
    row = Row(
        f"{label}: wall",
        "atomicwrite.torch.save",
        "torch.save(path) + fsync",
        "s",
        seconds["ours"],
        seconds["torch"],
        False,
    )
    met = row.ratio <= 1.05
    why_not = "" if met else f"{noise_reason(row, gap)}; {spread_reason(row)}"
    row.targets.append(Target("wall <= 1.05x", f"{row.ratio:.3f}x", met, why_not))
    row.notes.append(f"torch checkpoint: torch.save + fsync against itself (A/A) came out {gap:.1%} apart")
    ours_rss = median(extra["ours"])
    row.targets.append(
        Target(
            "peak extra RSS <= 32 MiB",
            f"{ours_rss:.0f} MiB (torch.save: {median(extra['torch']):.0f} MiB)",
            ours_rss <= 32,
            "" if ours_rss <= 32 else "more than one buffer of the payload is held while saving",
        )
    )
    rows.append(row)
    if "lightning" in samples:
        row = Row(
            f"{label}: wall vs Lightning",
            "atomicwrite.torch.save",
            "Lightning 2.6 TorchCheckpointIO",
            "s",
            seconds["ours beside lightning"],
            seconds["lightning"],
            False,
        )
        lightning_rss = median(extra["lightning"])
        row.targets.append(
            Target(
                "less RAM than Lightning (+1x checkpoint)",
                f"ours +{ours_rss:.0f} MiB, Lightning +{lightning_rss:.0f} MiB",
                ours_rss < lightning_rss,
            )
        )
        faster = row.ratio < 1
        row.targets.append(
            Target("faster than Lightning", f"{row.ratio:.3f}x", faster, "" if faster else spread_reason(row))
        )
        rows.append(row)
    return rows
