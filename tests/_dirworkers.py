"""Worker processes for the directory and checkpoint-store tests.

Run as ``python -m tests._dirworkers ROLE ARGS...`` with the repository root on ``PYTHONPATH``.
``OPTIONS`` is a JSON object of storage_options (``{}`` for local and memory targets).  Every
file of version ``seq`` starts with ``v{seq:08d}|``, so a reader can tell a mixed directory.
"""

from __future__ import annotations

import errno
import json
import os
import random
import sys
import time
import zlib
from pathlib import Path
from typing import Any

from atomicwrite import CheckpointStore, atomic_directory, open_directory
from atomicwrite._checksums import new_digest
from atomicwrite._directories.manifest import MANIFEST_NAME, DirectoryManifest

FILES = ("model.bin", "optim.bin", "meta/config.json")


def content(seq: int, name: str) -> bytes:
    rng = random.Random(zlib.crc32(f"{seq}/{name}".encode()))
    return f"v{seq:08d}|{name}|".encode() + rng.randbytes(rng.randrange(0, 50_000))


def write_version(stage: Any, seq: int) -> None:
    for name in FILES:
        with stage.open(name) as file:
            data = content(seq, name)
            half = len(data) // 2
            file.write(data[:half])
            file.write(data[half:])


def report(result: object) -> None:
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def check_files(read: Any, manifest: DirectoryManifest) -> int:
    """The version every file of ``manifest`` belongs to; ValueError if mixed or damaged."""
    names = sorted(entry.name for entry in manifest.files)
    if names != sorted(FILES):
        raise ValueError(f"files {names}, expected {sorted(FILES)}")
    versions = set()
    for entry in manifest.files:
        data = read(entry.name)
        algorithm = str(entry.checksum).partition(":")[0]
        digest = new_digest(algorithm)
        digest.update(data)
        if len(data) != entry.size or f"{algorithm}:{digest.digest().hex()}" != entry.checksum:
            raise ValueError(f"{entry.name}: content does not match the manifest")
        versions.add(data.split(b"|", 1)[0])
    if len(versions) != 1:
        raise ValueError(f"mixed versions {sorted(versions)}")
    return int(versions.pop()[1:])


# --- roles ---------------------------------------------------------------------------------


def replacer(target: str, count: str, options: str, progress: str) -> None:
    """Replace the directory ``target`` ``count`` times (0: until killed)."""
    storage = json.loads(options)
    seq = 0
    while int(count) == 0 or seq < int(count):
        seq += 1
        with atomic_directory(target, storage_options=storage) as stage:
            write_version(stage, seq)
        Path(progress).write_text(str(seq))
    report({"saves": seq})


def stager(target: str, ready: str) -> None:
    """Stage a directory, say so, and wait to be killed inside the block."""
    with atomic_directory(target) as stage:
        write_version(stage, 1)
        Path(ready).touch()
        time.sleep(600)


def saver(root: str, count: str, options: str, progress: str) -> None:
    """Save ``count`` generations into a CheckpointStore at ``root`` (0: until killed)."""
    store = CheckpointStore(root, keep_last=3, storage_options=json.loads(options))
    saves = 0
    while int(count) == 0 or saves < int(count):
        saves += 1
        with store.save() as stage:
            write_version(stage, saves)
        Path(progress).write_text(str(saves))
    report({"saves": saves})


def store_stager(root: str, options: str, ready: str) -> None:
    """Save into the object-store CheckpointStore at ``root`` and wait to be killed inside the
    save: the version's files are written, and one more file is half way through a multi-part
    upload (its marker stored, its first parts sent).  ``options`` may tune ``part_size``."""
    storage = json.loads(options)
    store = CheckpointStore(root, storage_options=storage)
    with store.save() as stage:
        write_version(stage, 99)
        big = stage.open("big.bin")
        big.write(os.urandom(2 * int(storage.get("part_size", 8 << 20)) + 1))
        big.flush()
        Path(ready).touch()
        time.sleep(600)


def dir_reader(target: str, stop: str, ready: str, options: str) -> None:
    """Read the directory ``target`` until ``stop`` appears; every read must be one version."""
    storage = json.loads(options)
    local = "://" not in target
    Path(ready).touch()
    reads = consistent = vanished = 0
    errors: list[str] = []
    seen_one = False
    while True:
        stopping = os.path.exists(stop)
        reads += 1
        try:
            if local:
                _read_local(target)
            else:
                directory = open_directory(target, storage_options=storage)
                import fsspec

                def read(name: str, directory: Any = directory) -> bytes:
                    with fsspec.open(directory.path(name), "rb", **storage) as file:
                        data: bytes = file.read()
                    return data

                check_files(read, directory.manifest)
            consistent += 1
            seen_one = True
        except _Vanished:
            vanished += 1
        except FileNotFoundError as exc:
            if seen_one and local:
                errors.append(f"read {reads}: the directory was missing: {exc}")
            else:
                vanished += 1
        except Exception as exc:
            if type(exc).__name__ == "ResourceNotFoundError" and not local:
                # adlfs translates a missing blob at open, not one deleted under a read already
                # open: the replaced generation was retired mid-read, which is a vanish too.
                vanished += 1
            else:
                errors.append(f"read {reads}: {type(exc).__name__}: {exc}")
        if stopping:
            break
    report(
        {"reads": reads, "consistent": consistent, "vanished": vanished, "errors": errors[:20], "count": len(errors)}
    )


def _read_all(generation: Any, name: str) -> bytes:
    with generation.open(name) as file:
        data: bytes = file.read()
    return data


class _Vanished(Exception):
    """The version being read was replaced and removed under the reader: retry, not an error."""


def _read_local(target: str) -> int:
    # One descriptor for the whole read: later renames cannot mix two versions into one read.
    dir_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    try:

        def read(name: str) -> bytes:
            try:
                fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
            except FileNotFoundError as exc:
                raise _Vanished from exc
            try:
                with open(fd, "rb") as file:
                    return file.read()
            except OSError as exc:
                # A network or FUSE file system answers ESTALE where a local one keeps serving
                # an open file that was removed: the version being read is gone, not torn.
                if exc.errno == errno.ESTALE:
                    raise _Vanished from exc
                raise

        try:
            manifest = DirectoryManifest.from_json(read(MANIFEST_NAME))
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise _Vanished from exc
            raise
        return check_files(read, manifest)
    finally:
        os.close(dir_fd)


def store_reader(root: str, stop: str, ready: str, options: str) -> None:
    """Ask a CheckpointStore for its latest generation until ``stop``; each must be complete."""
    store = CheckpointStore(root, storage_options=json.loads(options))
    Path(ready).touch()
    reads = consistent = vanished = 0
    errors: list[str] = []
    last = 0
    while True:
        stopping = os.path.exists(stop)
        reads += 1
        generation = store.latest(checksums=False)
        if generation is None:
            errors.append(f"read {reads}: no latest generation")
        else:
            try:
                seq = check_files(lambda n, g=generation: _read_all(g, n), generation.directory.manifest)
            except FileNotFoundError:
                vanished += 1  # pruned while being read: the next latest() is newer
            except Exception as exc:
                errors.append(f"read {reads}: {type(exc).__name__}: {exc}")
            else:
                consistent += 1
                if seq < last:
                    errors.append(f"read {reads}: latest went back from {last} to {seq}")
                last = seq
        if stopping:
            break
        time.sleep(0.001)
    report(
        {"reads": reads, "consistent": consistent, "vanished": vanished, "errors": errors[:20], "count": len(errors)}
    )


if __name__ == "__main__":
    role, *arguments = sys.argv[1:]
    globals()[role](*arguments)
