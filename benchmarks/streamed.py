"""A large file streamed in 1 MiB writes, durability full, against open+write+fsync of the same bytes.

Each side deletes its file after a sample, so neither pays for freeing the other's blocks.  A
third contender overwrites an existing file of the same size in place (``open(path, "wb")`` over
the old checkpoint, then fsync: what plain-open users do, and what loses the old file on a crash);
the old file is written and fsynced before its timer starts, so it pays for truncating (freeing)
the old blocks, as such a user does.
"""

from __future__ import annotations

import os
from pathlib import Path

from atomicwrite import atomic_open

from ._harness import Context, MiB, Row, alternate_many, noise_reason, ratio_target, same_code_gap, timed

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

    def baseline(name: str = "raw.bin") -> float:
        def write() -> None:
            with open(directory / name, "wb") as file:
                for _ in range(chunks):
                    file.write(chunk)
                file.flush()
                os.fsync(file.fileno())

        seconds = timed(write)
        os.unlink(directory / name)
        return size / MiB / seconds

    def overwrite() -> float:
        old = directory / "old.bin"
        _write_durably(old, chunk, chunks)

        def write() -> None:
            with open(old, "wb") as file:
                for _ in range(chunks):
                    file.write(chunk)
                file.flush()
                os.fsync(file.fileno())

        seconds = timed(write)
        os.unlink(old)
        return size / MiB / seconds

    # The baseline runs twice per round (A/A): how far apart identical code comes out here.
    samples = alternate_many(
        context.rounds,
        {"ours": ours, "raw": baseline, "raw again": lambda: baseline("raw-again.bin"), "overwrite": overwrite},
    )
    mine, theirs = samples["ours"], samples["raw"]
    row = Row(f"{size // MiB} MiB streamed, durable", "atomic_open", "open+write+fsync", "MiB/s", mine, theirs, True)
    gap = same_code_gap(theirs, samples["raw again"])
    row.targets.append(ratio_target(row, 0.97, at_least=True, what="throughput", why_not=noise_reason(row, gap)))
    row.notes.append(f"{size // MiB} MiB stream: the baseline against itself (A/A) came out {gap:.1%} apart")
    in_place = Row(
        f"{size // MiB} MiB streamed, durable, vs in-place overwrite",
        "atomic_open",
        'open(existing, "wb")+write+fsync',
        "MiB/s",
        mine,
        samples["overwrite"],
        True,
    )
    in_place.targets.append(
        ratio_target(in_place, 0.97, at_least=True, what="throughput", why_not=noise_reason(in_place, gap))
    )
    return [row, in_place]


def _write_durably(path: Path, chunk: bytes, chunks: int) -> None:
    with open(path, "wb") as file:
        for _ in range(chunks):
            file.write(chunk)
        file.flush()
        os.fsync(file.fileno())
