"""Cost against size: one durable local write of 4 KiB up to the --size (1 GiB; 64 MiB with
--quick), four ways, alternated at each size.

Ours: ``atomic_open(path, "wb")``, one write of the payload (replacing the file of the previous
sample).  Against: the raw protocol in plain os calls (named temp, fsync, rename, directory fsync),
``open`` + write + fsync of a new file, and an in-place overwrite of an existing file of the same
size (``open(path, "wb")`` + write + fsync; the old file is written before the timer starts).  Up
to 1 MiB, a sample times many writes in a row (as many as make 64 MiB, at most 200) and reports the
time of one.  Each sample deletes what it wrote (outside the timer), so no contender frees another's
blocks.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from atomicwrite import atomic_open

from ._harness import Context, MiB, Row, alternate_many, fsync_directory, median, spread_reason

NAME = "sizes"
TITLE = "cost against size"
SIZES = (4 << 10, 64 << 10, MiB, 16 * MiB, 64 * MiB, 256 * MiB, 1 << 30)
QUICK_SIZES = (4 << 10, MiB, 64 * MiB)


def repeats(size: int, quick: bool = False) -> int:
    """Writes per sample: enough small ones that a sample is not one disk flush's luck."""
    return max(1, min(20 if quick else 200, (64 * MiB) // size)) if size <= MiB else 1


def _fsync_write(path: Path, payload: bytes) -> None:
    with open(path, "wb") as file:
        file.write(payload)
        file.flush()
        os.fsync(file.fileno())


def _raw_protocol(directory: Path, payload: bytes) -> None:
    temp = directory / ".raw.tmp"
    _fsync_write(temp, payload)
    os.rename(temp, directory / "raw.bin")
    fsync_directory(directory)


def contenders(directory: Path, payload: bytes, times: int) -> dict[str, Callable[[], float]]:
    """name -> a sample: milliseconds per write, over ``times`` writes."""

    def sample(write: Callable[[int], None], cleanup: Callable[[], None], prepare: Callable[[int], None]) -> float:
        elapsed = 0.0
        for index in range(times):
            prepare(index)
            started = time.perf_counter()
            write(index)
            elapsed += time.perf_counter() - started
        cleanup()
        return elapsed / times * 1e3

    def nothing(_: int = 0) -> None:
        return None

    def remove(name: str) -> Callable[[], None]:
        return lambda: os.unlink(directory / name)

    def ours(_: int) -> None:
        with atomic_open(directory / "ours.bin", "wb") as file:
            file.write(payload)

    def new_file(index: int) -> None:
        _fsync_write(directory / f"new-{index}.bin", payload)

    def remove_new() -> None:
        for index in range(times):
            os.unlink(directory / f"new-{index}.bin")

    def old_file(_: int) -> None:
        _fsync_write(directory / "old.bin", payload)

    return {
        "ours": lambda: sample(ours, remove("ours.bin"), nothing),
        "raw": lambda: sample(lambda _: _raw_protocol(directory, payload), remove("raw.bin"), nothing),
        "new": lambda: sample(new_file, remove_new, nothing),
        # Its prepare writes the old file; its timed write overwrites it in place.
        "overwrite": lambda: sample(
            lambda _: _fsync_write(directory / "old.bin", payload), remove("old.bin"), old_file
        ),
    }


LABELS = {
    "raw": "raw protocol: temp+fsync+rename+dir fsync",
    "new": "open(new)+write+fsync",
    "overwrite": 'open(existing, "wb")+write+fsync',
}


def run(context: Context) -> list[Row]:
    directory = context.directory / "sizes"
    directory.mkdir()
    rows = []
    for size in [size for size in (QUICK_SIZES if context.quick else SIZES) if size <= context.stream_size]:
        payload = os.urandom(size)
        times = repeats(size, context.quick)
        big = size >= 256 * MiB
        samples = alternate_many(
            context.rounds if not big else max(3, context.rounds // 2),
            contenders(directory, payload, times),
            warmup=not big,
        )
        label = f"{_size_label(size)} durable write" + (f" (x{times})" if times > 1 else "")
        row = Row(
            f"{label}: time",
            "atomic_open",
            LABELS["raw"],
            "ms",
            samples["ours"],
            samples["raw"],
            False,
            chart="local-size",
            x=float(size),
            others={LABELS["new"]: samples["new"], LABELS["overwrite"]: samples["overwrite"]},
        )
        # No target: the curve is what the row is for.  The ratio against each is a note.
        ratios = ", ".join(f"{name} {median(row.ours) / median(values):.3f}x" for name, values in row.others.items())
        row.notes.append(f"{label}: time, ours / theirs: {ratios}; against the raw protocol, {spread_reason(row)}")
        rows.append(row)
        del payload
    return rows


def _size_label(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size // scale} {unit}"
    return f"{size} B"
