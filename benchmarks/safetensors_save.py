"""A state dict (the --torch-size, 1 GiB by default) saved in the safetensors format, each in a fresh
process (after a warm-up save of one tiny tensor): wall time and peak extra RSS.

Ours: ``atomic_save(state, path, "safetensors")``.  Baseline: ``safetensors.torch.save_file``
followed by an fsync of the file (not atomic).  Ours writes the safetensors format itself,
streamed into the atomic write: the header, then each tensor from its own memory in slices (no
copy of the file is held; the row's RSS shows it).  ``save_file`` writes from the tensors' memory
straight to its path.
"""

from __future__ import annotations

import importlib.util

from ._harness import Context, MiB, Row, Target, alternate, median, probe, spread_reason

NAME = "safetensors"
TITLE = "safetensors save"
TENSOR = 64 * MiB

PROBE = r"""
import os, sys
import torch

contender, path, size, tensor = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
count = max(1, size // tensor)
state = {f"layer{i}.weight": torch.empty(tensor // 4, dtype=torch.float32).fill_(i) for i in range(count)}
if contender == "ours":
    from atomicwrite import atomic_save
    import atomicwrite.torch  # registers the serializer

    save = lambda tensors: atomic_save(tensors, path, "safetensors")
elif contender == "serialize":
    # safetensors' own in-memory writer (the whole file as one bytes object), for reference.
    from safetensors.torch import save as to_bytes

    def save(tensors):
        to_bytes(tensors)
        open(path, "wb").close()
else:
    from safetensors.torch import save_file

    def save(tensors):
        save_file(tensors, path)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
# A warm-up save of one tiny tensor: the imports and first-call costs land outside the timer.
save({"w": torch.zeros(4)})
os.unlink(path)
measure(lambda: save(state), bytes=count * tensor)
os.unlink(path)
"""


def run(context: Context) -> list[Row]:
    directory = context.directory / "safetensors"
    directory.mkdir()
    label = "safetensors state dict"
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("safetensors") is None:
        row = Row(label, 'atomic_save(..., "safetensors")', "save_file + fsync", "s", [1.0], [1.0], False)
        row.targets.append(Target("wall <= 1.05x", "torch or safetensors not installed", None))
        return [row]
    size = context.torch_size

    def contender(name: str) -> dict[str, float]:
        return probe(PROBE, name, str(directory / f"{name}.safetensors"), str(size), str(min(TENSOR, size)))

    samples: dict[str, list[dict[str, float]]] = {"ours": [], "theirs": []}

    def sample(name: str) -> float:
        result = contender(name)
        samples[name].append(result)
        return result["seconds"]

    mine, theirs = alternate(
        1 if context.quick else max(3, context.rounds // 2),
        lambda: sample("ours"),
        lambda: sample("theirs"),
        warmup=False,
    )
    row = Row(
        f"{label} {size // MiB} MiB: wall",
        'atomic_save(..., "safetensors")',
        "safetensors.torch.save_file + fsync",
        "s",
        mine,
        theirs,
        False,
    )
    met = row.ratio <= 1.05
    why_not = ""
    if not met:
        # For reference: safetensors.torch.save alone, into memory, once.
        serialize = contender("serialize")["seconds"]
        why_not = (
            f"{spread_reason(row)}; ours streams the format itself (the header, then each tensor from its"
            f" memory); safetensors.torch.save alone took {serialize:.2f} s to build the file in memory,"
            f" save_file writes it from the tensors in {median(theirs):.2f} s"
        )
    row.targets.append(Target("wall <= 1.05x", f"{row.ratio:.3f}x", met, why_not))
    ours_rss = median([result["extra_rss"] / MiB for result in samples["ours"]])
    theirs_rss = median([result["extra_rss"] / MiB for result in samples["theirs"]])
    row.notes.append(
        f"safetensors: peak extra RSS ours +{ours_rss:.0f} MiB, save_file +{theirs_rss:.0f} MiB: both write"
        " from the tensors' memory, ours in slices into the atomic write, save_file straight to its path"
    )
    return [row]
