"""4 KiB durable replace against the peers, each made as durable as ours (file and directory flushed).

atomicwrites 1.4 flushes the file and the directory itself.  safer 6 flushes nothing, so its temp
file is fsynced inside the block (before its rename) and the directory after.  boltons'
AtomicSaver fsyncs the file; the directory flush is added after it.  Each contender replaces
its own file, 500 times per sample, all contenders once per round in a rotated order.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ._harness import Context, Row, Target, alternate_many, fsync_directory, median, spread_reason, timed
from .small_replace import SIZE, count, ours_replace

NAME = "peers"
TITLE = "4 KiB durable replace, peers"


def atomicwrites_replace(target: Path, payload: bytes) -> None:
    # atomicwrites 1.4 flushes the file and, on POSIX, the directory after the rename.
    import atomicwrites

    with atomicwrites.atomic_write(target, mode="wb", overwrite=True) as file:
        file.write(payload)


def safer_replace(target: Path, payload: bytes) -> None:
    # safer writes a temp file beside the target and renames it, but flushes nothing: the
    # file is fsynced before the rename and the directory after it, as ours does.
    import safer

    with safer.open(target, "wb", temp_file=True) as file:
        file.write(payload)
        file.flush()
        os.fsync(file.fileno())
    fsync_directory(target.parent)


def boltons_replace(target: Path, payload: bytes) -> None:
    # AtomicSaver fsyncs the file but not the directory; the directory flush is added.
    from boltons.fileutils import AtomicSaver

    with AtomicSaver(str(target), overwrite=True) as file:
        file.write(payload)
    fsync_directory(target.parent)


PEERS: dict[str, tuple[str, Callable[[Path, bytes], None]]] = {
    "atomicwrites": ("atomicwrites 1.4 atomic_write", atomicwrites_replace),
    "safer": ("safer 6 open(temp_file=True) + fsyncs", safer_replace),
    "boltons": ("boltons AtomicSaver + dir fsync", boltons_replace),
}


def available() -> dict[str, tuple[str, Callable[[Path, bytes], None]]]:
    import importlib.util

    modules = {"atomicwrites": "atomicwrites", "safer": "safer", "boltons": "boltons"}
    return {key: value for key, value in PEERS.items() if importlib.util.find_spec(modules[key]) is not None}


def run(context: Context) -> list[Row]:
    directory = context.directory / "peers"
    directory.mkdir()
    payload = os.urandom(SIZE)
    times = count(context)
    peers = available()

    def contender(write: Callable[[Path, bytes], None], name: str) -> Callable[[], float]:
        target = directory / name
        return lambda: timed(lambda: [write(target, payload) for _ in range(times)]) / times * 1e3

    contenders = {"ours": contender(ours_replace, "ours.bin")}
    for key, (_, write) in peers.items():
        contenders[key] = contender(write, f"{key}.bin")
    samples = alternate_many(context.rounds, contenders)
    rows = []
    for key, (label, _) in PEERS.items():
        if key not in peers:
            row = Row(f"4 KiB replace x{times} vs {key}", "atomic_open", label, "ms/op", samples["ours"], [1.0], False)
            row.targets.append(Target("faster", "not installed (pip install -e .[bench])", None))
            rows.append(row)
            continue
        row = Row(
            f"4 KiB replace x{times} vs {key}", "atomic_open", label, "ms/op", samples["ours"], samples[key], False
        )
        met = median(row.ours) < median(row.baseline)
        row.targets.append(
            Target(
                "faster (time per op < 1x)",
                f"{row.ratio:.3f}x",
                met,
                "" if met else spread_reason(row),
            )
        )
        rows.append(row)
    return rows
