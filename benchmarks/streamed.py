"""A large file streamed in 1 MiB writes, durability full, against open+write+fsync of the same bytes."""

from __future__ import annotations

import os

from atomicwrite import atomic_open

from ._harness import Context, MiB, Row, alternate, ratio_target, relative_spread, timed

NAME = "stream"
TITLE = "streamed write"
CHUNK = MiB


def run(context: Context) -> list[Row]:
    directory = context.directory / "stream"
    directory.mkdir()
    size = context.stream_size
    chunk = os.urandom(CHUNK)
    chunks = size // CHUNK

    def ours() -> float:
        def write() -> None:
            with atomic_open(directory / "ours.bin", "wb") as file:
                for _ in range(chunks):
                    file.write(chunk)

        seconds = timed(write)
        os.unlink(directory / "ours.bin")
        return size / MiB / seconds

    def baseline() -> float:
        def write() -> None:
            with open(directory / "raw.bin", "wb") as file:
                for _ in range(chunks):
                    file.write(chunk)
                file.flush()
                os.fsync(file.fileno())

        seconds = timed(write)
        os.unlink(directory / "raw.bin")
        return size / MiB / seconds

    # Each side deletes its file after a round, so neither pays for freeing the other's blocks.
    mine, theirs = alternate(context.rounds, ours, baseline)
    row = Row(f"{size // MiB} MiB streamed, durable", "atomic_open", "open+write+fsync", "MiB/s", mine, theirs, True)
    spread = max(relative_spread(mine), relative_spread(theirs))
    row.targets.append(
        ratio_target(
            row,
            0.97,
            at_least=True,
            what="throughput",
            why_not=f"disk-bound on both sides; run-to-run spread (IQR) {spread:.0%} of the median",
        )
    )
    return [row]
