"""4 KiB durable replace, many times in a row, against the floor: the same two fsyncs in plain os calls."""

from __future__ import annotations

import os
from pathlib import Path

from atomicwrite import atomic_open

from ._harness import Context, Row, alternate, ratio_target, relative_spread, timed

NAME = "small"
TITLE = "4 KiB durable replace"
SIZE = 4096


def raw_replace(directory: Path, payload: bytes) -> None:
    """The floor for a durable replace: write, fsync, rename, fsync the directory."""
    temp = directory / ".raw.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, payload)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temp, directory / "raw.bin")
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def ours_replace(target: Path, payload: bytes) -> None:
    with atomic_open(target, "wb") as file:
        file.write(payload)


def count(context: Context) -> int:
    return 50 if context.quick else 500


def run(context: Context) -> list[Row]:
    directory = context.directory / "small"
    directory.mkdir()
    payload = os.urandom(SIZE)
    times = count(context)
    target = directory / "ours.bin"

    def ours() -> float:
        return timed(lambda: [ours_replace(target, payload) for _ in range(times)]) / times * 1e3

    def baseline() -> float:
        return timed(lambda: [raw_replace(directory, payload) for _ in range(times)]) / times * 1e3

    mine, theirs = alternate(context.rounds, ours, baseline)
    row = Row(f"4 KiB durable replace x{times}", "atomic_open", "raw 2-fsync protocol", "ms/op", mine, theirs, False)
    spread = max(relative_spread(mine), relative_spread(theirs))
    row.targets.append(
        ratio_target(
            row,
            1.10,
            at_least=False,
            what="time per op",
            why_not=(
                f"both sides are dominated by the two fsyncs; the run-to-run spread (IQR) was {spread:.0%}"
                " of the median, so a gap of this size is within the noise of this machine"
                if spread > abs(row.ratio - 1)
                else "see the analysis below"
            ),
        )
    )
    return [row]
