"""Group commit: 100 files of 4 KiB in one directory, with atomic_batch, against one commit per file.

Both replace the same 100 existing files at durability full; the batch flushes the files in
groups of 32 (the group's writeback started together, then the fsyncs back to back; each full
group in a background thread while the next files are written), renames all, then flushes the
directory once.
Twice the default rounds, since one sample is only 100 files.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from atomicwrite import atomic_batch, atomic_open
from atomicwrite._local import base as _local

from ._harness import Context, Row, alternate_many, median, ratio_target, timed

NAME = "batch"
TITLE = "group commit"
FILES = 100
SIZE = 4096
GROUP = 32  # files flushed back to back, as atomic_batch does


def creation_cost(directory: Path, count: int = 50) -> float:
    """Microseconds to create one empty file in ``directory`` in plain calls (the probes are
    removed afterwards)."""
    dir_fd = os.open(directory, os.O_RDONLY)
    names = [f".probe-{index:02d}" for index in range(count)]
    try:
        start = time.perf_counter()
        for name in names:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dir_fd))
        elapsed = time.perf_counter() - start
        for name in names:
            os.unlink(name, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    return elapsed / count * 1e6


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

    def raw_single() -> float:
        """One durable replace after another in plain os calls: temp, write, fsync, rename,
        directory fsync."""

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
                    os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

        return FILES / timed(write)

    def raw_group() -> float:
        """The batch's protocol in plain os calls, in one thread: each file written under a temp
        name, then in groups of 32 the writeback started (on Linux, as the batch does) and the
        fsyncs back to back, all renames, one directory fsync."""
        start_writeback = getattr(_local, "start_writeback", None)

        def write() -> None:
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                waiting: list[int] = []

                def flush() -> None:
                    if start_writeback is not None:
                        for fd in waiting:
                            start_writeback(fd)
                    for fd in waiting:
                        os.fsync(fd)
                    for fd in waiting:
                        os.close(fd)
                    waiting.clear()

                for index, payload in enumerate(payloads):
                    fd = os.open(f".group-{index:03d}.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=dir_fd)
                    os.write(fd, payload)
                    waiting.append(fd)
                    if len(waiting) == GROUP:
                        flush()
                flush()
                for index in range(FILES):
                    os.rename(f".group-{index:03d}.tmp", f"group-{index:03d}.bin", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

        return FILES / timed(write)

    creating_before = creation_cost(directory)
    rounds = context.rounds if context.quick else context.rounds * 2
    samples = alternate_many(
        rounds, {"batch": batched, "single": one_at_a_time, "raw single": raw_single, "raw group": raw_group}
    )
    creating_after = creation_cost(directory)
    mine, theirs = samples["batch"], samples["single"]
    # What the protocol itself gives on this disk, apart from our code: the same two ways of
    # committing, in plain os calls.
    disk = median(samples["raw group"]) / median(samples["raw single"])

    def extra(ours: list[float], plain: str) -> float:
        """Microseconds per file that ``ours`` (ops/s) spends over the plain-call side ``plain``."""
        return 1e6 / median(ours) - 1e6 / median(samples[plain])

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
                f"in plain os calls the same group commit gave {disk:.2f}x over one replace at a time on this"
                " disk in this run; "
                + (
                    "the disk, not our code, sets the ceiling here"
                    if disk < 1.7
                    else "what a file costs in our code beyond plain calls (its lstat, mode, lock, unnamed temp"
                    " and the Python around them) weighs more once the flushes are shared:"
                    f" {extra(mine, 'raw group'):.0f} us per file over the plain group commit, against"
                    f" {extra(theirs, 'raw single'):.0f} us one at a time"
                )
            ),
        )
    )
    row.notes.append(
        f"group commit: creating an empty file in the row's directory took {creating_before:.0f} us at the"
        f" row's start and {creating_after:.0f} us at its end; every file of both sides pays this, so the more"
        " it costs, the less a shared flush can gain (ext4 without a journal skips the inodes freed in the"
        " last minute or more when it allocates one, so each replace slows the next ones)"
    )
    row.notes.append(
        f"group commit: in plain os calls, 100 replaces ran at {median(samples['raw single']):.0f} ops/s one"
        f" at a time and {median(samples['raw group']):.0f} ops/s as a group commit ({disk:.2f}x); ours"
        f" {median(theirs):.0f} and {median(mine):.0f} ops/s ({row.ratio:.2f}x)"
    )
    return [row]
