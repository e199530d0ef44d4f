"""Group commit: 100 files of 4 KiB in one directory, with atomic_batch, against one commit per file.

Both replace the same 100 existing files at durability full; the batch starts each file's
writeback as it closes, flushes the files back to back in groups of 32, renames all, then
flushes the directory once.
Twice the default rounds, since one sample is only 100 files.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from atomicwrite import atomic_batch, atomic_open

from ._harness import Context, Row, alternate_many, median, ratio_target, timed

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

    def raw(flush_directory: bool) -> Callable[[], float]:
        """The same 100 replaces in plain os calls, with or without a directory fsync each: what
        the directory fsyncs a batch saves cost on this disk."""

        def write() -> None:
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                for index, payload in enumerate(payloads):
                    fd = os.open(".raw.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=dir_fd)
                    try:
                        os.write(fd, payload)
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                    os.rename(".raw.tmp", f"raw-{index:03d}.bin", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                    if flush_directory:
                        os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

        return lambda: FILES / timed(write)

    rounds = context.rounds if context.quick else context.rounds * 2
    samples = alternate_many(
        rounds,
        {"batch": batched, "single": one_at_a_time, "raw": raw(True), "raw, no dir fsync": raw(False)},
    )
    mine, theirs = samples["batch"], samples["single"]
    # The share of a one-at-a-time replace that the directory fsync takes, in plain os calls.
    saved = 1 - median(samples["raw"]) / median(samples["raw, no dir fsync"])
    ceiling = 1 / (1 - saved)
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
            why_not=(
                f"on this disk the directory fsync is only {saved:.0%} of a durable replace (plain os calls"
                f" with and without it), so sharing it can give at most {ceiling:.2f}x here; what the batch"
                " adds or loses against that is how many file flushes one journal commit serves"
                if ceiling < 1.7
                else "see the notes"
            ),
        )
    )
    row.notes.append(
        f"group commit: in plain os calls, 100 replaces ran at {median(samples['raw']):.0f} ops/s with a"
        f" directory fsync each and {median(samples['raw, no dir fsync']):.0f} ops/s without: the directory"
        f" fsyncs are {saved:.0%} of the time, a ceiling of {ceiling:.2f}x for sharing them alone"
    )
    return [row]
