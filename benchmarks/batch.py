"""Group commit: 100 files of 4 KiB in one directory, with atomic_batch, against one commit per file.

Both replace the same 100 existing files at durability full; the batch flushes each file (on
worker threads, while the next is written), renames all, then flushes the directory once.
Twice the default rounds, since one sample is only 100 files.
"""

from __future__ import annotations

import os

from atomicwrite import atomic_batch, atomic_open

from ._harness import Context, Row, alternate, ratio_target, timed

NAME = "batch"
TITLE = "group commit"
FILES = 100
SIZE = 4096


def run(context: Context) -> list[Row]:
    directory = context.directory / "batch"
    directory.mkdir()
    payloads = [os.urandom(SIZE) for _ in range(FILES)]
    names = [directory / f"file-{index:03d}.bin" for index in range(FILES)]

    def batched() -> float:
        def write() -> None:
            with atomic_batch() as batch:
                for name, payload in zip(names, payloads, strict=False):
                    with batch.open(name, "wb") as file:
                        file.write(payload)

        return FILES / timed(write)

    def one_at_a_time() -> float:
        def write() -> None:
            for name, payload in zip(names, payloads, strict=False):
                with atomic_open(name, "wb") as file:
                    file.write(payload)

        return FILES / timed(write)

    rounds = context.rounds if context.quick else context.rounds * 2
    mine, theirs = alternate(rounds, batched, one_at_a_time)
    row = Row(
        f"4 KiB durable x{FILES} files, one dir",
        "atomic_batch",
        "atomic_open one at a time",
        "ops/s",
        mine,
        theirs,
        True,
    )
    row.targets.append(
        ratio_target(
            row,
            1.7,
            at_least=True,
            what="ops/s",
            why_not="the file fsyncs (one per file, as durability requires) dominate on this disk",
        )
    )
    return [row]
