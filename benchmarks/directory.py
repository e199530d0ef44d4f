"""Multi-file checkpoint: 16 files of 4 MiB (256 KiB with --quick) published as one directory.

atomic_directory stages the files beside the target, fsyncs each, writes the manifest (sizes and
the fastest installed CRC, or sizes only) and renames the directory into place.  The baseline replaces the same
files one by one in plain os calls (temp, write, fsync, rename) with one directory fsync at the
end: each file is atomic, but a crash can leave a mix of old and new files, which is what the
directory protocol removes.  No target is set: the row shows what all-or-nothing across files
and the checksums cost.
"""

from __future__ import annotations

import os
from pathlib import Path

from atomicwrite import atomic_directory

from ._harness import Context, Row, alternate, fsync_directory, timed

NAME = "directory"
TITLE = "multi-file checkpoint"
FILES = 16


def run(context: Context) -> list[Row]:
    size = (256 if context.quick else 4096) * 1024
    payloads = [os.urandom(size) for _ in range(FILES)]
    rows = []
    for checksums in (True, False):
        target = context.directory / f"ckpt-{checksums}"
        plain = context.directory / f"plain-{checksums}"
        plain.mkdir()

        def ours(target: Path = target, checksums: bool = checksums) -> float:
            def write() -> None:
                with atomic_directory(target, checksums=checksums) as stage:
                    for index, payload in enumerate(payloads):
                        with open(stage / f"shard-{index}.bin", "wb") as file:
                            file.write(payload)

            return timed(write) * 1e3

        def baseline(plain: Path = plain) -> float:
            def write() -> None:
                for index, payload in enumerate(payloads):
                    temp = plain / f".shard-{index}.tmp"
                    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    try:
                        os.write(fd, payload)
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                    os.rename(temp, plain / f"shard-{index}.bin")
                fsync_directory(plain)

            return timed(write) * 1e3

        mine, theirs = alternate(context.rounds, ours, baseline)
        label = f"{FILES} x {size // 1024} KiB as one directory" + ("" if checksums else ", no checksums")
        rows.append(Row(label, "atomic_directory", "per-file replace, 1 dir fsync", "ms", mine, theirs, False))
    return rows
