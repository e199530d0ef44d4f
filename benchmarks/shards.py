"""Multi-file torch checkpoints: 16 shards of 64 MiB, and 1,000 tensors of 64 KiB (4 MiB and 100
of 64 KiB with --quick), saved six ways in the same process, alternated.

Ours: ``atomic_directory`` (each tensor ``torch.save``d through ``stage.open``; at the end every
file's writeback is started, then each is read back once for the manifest's CRC and flushed, and
the directory is renamed into place), the same without checksums, ``CheckpointStore.save`` (a
numbered generation and an atomic ``latest``), and ``atomicwrite.distributed.dcp_save`` (DCP's own
files, ``thread_count=1``, published as one directory with a manifest).
Against: torch DCP (``torch.distributed.checkpoint.save`` with ``no_dist=True`` and a
``FileSystemWriter`` at its defaults but ``thread_count=1``, ours' thread count: one data file per
thread, fsynced, then ``.metadata``), and N plain ``torch.save`` calls, each file fsynced (no
all-or-nothing: a crash leaves a mix).  Each sample writes a new directory and removes it outside
the timer, followed by a ``sync``, so the next sample does not pay for freeing its blocks.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from atomicwrite import CheckpointStore, atomic_directory
from atomicwrite._directories.manifest import manifest_algorithm

from ._harness import Context, MiB, Row, Target, alternate_many, median, ratio_target, spread_reason, timed

NAME = "shards"
TITLE = "multi-file torch checkpoint"


def shapes(quick: bool) -> list[tuple[int, int]]:
    """(files, bytes each)."""
    if quick:
        return [(16, 4 * MiB), (100, 64 << 10)]
    return [(16, 64 * MiB), (1000, 64 << 10)]


def contenders(directory: Path, state: dict[str, Any]) -> dict[str, Callable[[], float]]:
    """name -> a sample: seconds for the whole checkpoint."""
    import torch
    from torch.distributed.checkpoint.filesystem import FileSystemWriter
    from torch.distributed.checkpoint.state_dict_saver import save as distributed_save

    def staged(stage: Any) -> None:
        for name, tensor in state.items():
            with stage.open(f"{name}.pt") as file:
                torch.save(tensor, file)

    def ours(checksums: bool) -> float:
        target = directory / "ours"

        def save() -> None:
            with atomic_directory(target, checksums=checksums) as stage:
                staged(stage)

        seconds = timed(save)
        _remove(target)
        return seconds

    def store() -> float:
        root = directory / "store"
        checkpoints = CheckpointStore(root, keep_last=1)

        def save() -> None:
            with checkpoints.save() as stage:
                staged(stage)

        seconds = timed(save)
        checkpoints.close()
        _remove(root)
        return seconds

    def distributed() -> float:
        target = directory / "dcp"
        writer = FileSystemWriter(target, thread_count=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the single-process warnings
            seconds = timed(lambda: distributed_save(state, storage_writer=writer, no_dist=True))
        _remove(target)
        return seconds

    def atomic_dcp() -> float:
        from atomicwrite.distributed import dcp_save

        target = directory / "atomic-dcp"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the single-process warnings
            seconds = timed(lambda: dcp_save(state, target, thread_count=1))
        _remove(target)
        return seconds

    def plain() -> float:
        target = directory / "plain"
        target.mkdir()

        def save() -> None:
            for name, tensor in state.items():
                path = target / f"{name}.pt"
                torch.save(tensor, path)
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

        seconds = timed(save)
        _remove(target)
        return seconds

    return {
        "atomic_directory": lambda: ours(True),
        "atomic_directory, no checksums": lambda: ours(False),
        "CheckpointStore.save": store,
        "dcp_save": atomic_dcp,
        "DCP": distributed,
        "torch.save x N + fsync": plain,
    }


def _remove(directory: Path) -> None:
    """Remove a sample's checkpoint and sync, so the next sample does not pay for freeing it:
    without the sync, whichever contender followed a 1 GiB removal here ran up to a third
    slower (atomic_directory without checksums came out slower than with them)."""
    shutil.rmtree(directory)
    os.sync()


def run(context: Context) -> list[Row]:
    directory = context.directory / "shards"
    directory.mkdir()
    if importlib.util.find_spec("torch") is None:
        row = Row("multi-file checkpoint", "atomic_directory", "torch DCP", "MiB/s", [1.0], [1.0], True)
        row.targets.append(Target(">= DCP throughput", "torch not installed", None))
        return [row]
    import torch

    rows = []
    for files, size in shapes(context.quick):
        state = {f"shard-{index}": torch.full((size // 4,), float(index)) for index in range(files)}
        total = files * size
        samples = alternate_many(max(5, context.rounds // 2), contenders(directory, state))
        throughput = {name: [total / MiB / seconds for seconds in runs] for name, runs in samples.items()}
        label = f"{files} x {size // MiB} MiB" if size >= MiB else f"{files} x {size >> 10} KiB"
        for ours_name in ("atomic_directory", "atomic_directory, no checksums", "CheckpointStore.save", "dcp_save"):
            row = Row(
                f"{label} checkpoint: {ours_name}",
                ours_name,
                "torch DCP FileSystemWriter, 1 thread",
                "MiB/s",
                throughput[ours_name],
                throughput["DCP"],
                True,
            )
            why_not = _why_slower(row, files, median(throughput["atomic_directory, no checksums"]))
            row.targets.append(ratio_target(row, 1.0, at_least=True, what="throughput vs DCP", why_not=why_not))
            rows.append(row)
        plain = Row(
            f"{label} checkpoint: atomic_directory vs plain",
            "atomic_directory",
            "torch.save x N + fsync each",
            "MiB/s",
            throughput["atomic_directory"],
            throughput["torch.save x N + fsync"],
            True,
        )
        rows.append(plain)
        plain.notes.append(
            f"{label} checkpoint: median MiB/s "
            + ", ".join(f"{name} {median(values):.0f}" for name, values in throughput.items())
            + f"; against N torch.save + fsync, {spread_reason(plain)}"
        )
        del state
    return rows


def _why_slower(row: Row, files: int, without_checksums: float) -> str:
    reasons = [spread_reason(row)]
    if row.ours_name != "atomic_directory, no checksums":
        reasons.append(
            f"the manifest's {manifest_algorithm().upper()} of every byte, read back once on the caller's"
            f" thread while the files are flushed (DCP computes none): without checksums atomic_directory"
            f" ran at {without_checksums:.0f} MiB/s"
        )
    if files > 16 and row.ours_name != "dcp_save":
        reasons.append(
            f"DCP (one file per thread) writes the {files} tensors into one file and fsyncs it once, while"
            f" the directory holds {files} files, each created, flushed and listed in the manifest"
        )
    return "; ".join(reasons)
