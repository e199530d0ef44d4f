"""The writers the crash-state tests trace, run as a subprocess::

    python -m tests.crashsim.writers PROTOCOL TARGET MARKERS [MODE DURABILITY]

``atomicwrite`` is the library itself (the strategy variant comes from ``ATOMICWRITE_TEST_VARIANT``,
see tests/_variant.py); the others are small protocols in plain ``os`` calls, known good or known
bad, that give the explorer something to catch.  Every writer writes :data:`NEW` in
:data:`CHUNKS` separate ``write`` calls, so that a torn file can stop at any write boundary.

``MARKERS`` is a directory outside the traced one: the writer opens two names there that do not
exist, ``begin`` just before the write call and ``returned`` just after it returned.  The
recorder sees the two failed ``openat`` calls in the trace and knows which operations happened
inside the call, and from where on the caller was told "done".
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable

from tests._workers import INITIAL_WRITER, payload

OLD = payload(INITIAL_WRITER, 0, 5_000)  # the target's content before the write (if it exists)
NEW = payload(1, 1, 9_000)  # what every writer writes
CHUNKS = 3
OLD_MODE = 0o640  # the mode of the existing target
UMASK = 0o022  # set by the writer, so a new file's mode is known: 0o666 & ~UMASK
BEGIN = "crashsim-begin"
RETURNED = "crashsim-returned"
PUBLISHED = "crashsim-published"  # tree writers: between the first publish and the second

# The two generations the directory writers publish, one after the other: the first creates the
# target, the second replaces it (a changed file of the same size, a grown one, a new one in a
# subdirectory, so neither sizes nor names alone tell them apart).
GENERATIONS: tuple[dict[str, bytes], ...] = (
    {"model.bin": payload(2, 1, 3_000), "config.json": b'{"step": 1}', "shards/part-0.bin": payload(2, 2, 700)},
    {
        "model.bin": payload(3, 1, 3_000),
        "config.json": b'{"step": 2, "lr": 0.1}',
        "shards/part-0.bin": payload(3, 2, 900),
        "shards/part-1.bin": payload(3, 3, 500),
    },
)


def chunks(data: bytes = NEW, count: int = CHUNKS) -> list[bytes]:
    step = -(-len(data) // count)
    return [data[i : i + step] for i in range(0, len(data), step)]


def _mark(markers: str, name: str) -> None:
    # A failed open of a name that does not exist: a marker in the trace, and nothing on disk.
    with contextlib.suppress(FileNotFoundError):
        os.close(os.open(os.path.join(markers, name), os.O_RDONLY))
        raise AssertionError(f"marker {name!r} exists in {markers!r}")


def _write_all(fd: int) -> None:
    for chunk in chunks():
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]


def _fsync_dir(directory: str) -> None:
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _temp(target: str) -> str:
    directory, name = os.path.split(target)
    return os.path.join(directory, f".{name}.plain.tmp")


def atomicwrite_writer(target: str, mode: str = "wb", durability: str = "full") -> None:
    from atomicwrite import atomic_open

    with atomic_open(target, mode, durability=durability) as file:  # type: ignore[call-overload]
        for chunk in chunks():
            file.write(chunk)
            file.flush()  # one write(2) per chunk


def atomicwrite_link_fallback(target: str, durability: str = "full") -> None:
    """Exclusive create where renameat2(RENAME_NOREPLACE) is missing: link(2) + unlink(2)."""
    from atomicwrite._local import posix as _posix

    _posix._renameat2 = None  # as if libc had no renameat2
    atomicwrite_writer(target, "xb", durability)


def in_place(target: str) -> None:
    """Known bad: truncate the target and write into it (a crash leaves it empty or torn)."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, OLD_MODE)
    try:
        _write_all(fd)
        os.fsync(fd)
    finally:
        os.close(fd)


def rename_without_fsync(target: str) -> None:
    """Known bad: temp + rename (+ directory fsync), but the temp's data is never flushed."""
    temp = _temp(target)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, OLD_MODE)
    try:
        _write_all(fd)
    finally:
        os.close(fd)
    os.rename(temp, target)
    _fsync_dir(os.path.dirname(target))


def rename_without_dir_fsync(target: str) -> None:
    """Known bad for "full" durability: temp + fsync + rename, but no directory fsync."""
    temp = _temp(target)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, OLD_MODE)
    try:
        _write_all(fd)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temp, target)


def plain_correct(target: str) -> None:
    """The textbook protocol in plain calls: temp, write, fsync, rename, directory fsync."""
    rename_without_dir_fsync(target)
    _fsync_dir(os.path.dirname(target))


# ----- directory writers (the traced directory is the target's parent, or the store's root) ----


def _fill(stage: str, files: dict[str, bytes]) -> None:
    """Write the files into a staging directory with plain calls, one write(2) each."""
    for relative, data in sorted(files.items()):
        path = os.path.join(stage, *relative.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)


def _markers(target: str) -> str:
    return os.path.dirname(os.path.dirname(target))


def atomicwrite_directory(target: str) -> None:
    """atomic_directory twice: create the target, then replace it."""
    from atomicwrite import atomic_directory

    for number, files in enumerate(GENERATIONS):
        with atomic_directory(target) as stage:
            _fill(os.fspath(stage), files)
        if number == 0:
            _mark(_markers(target), PUBLISHED)


def atomicwrite_checkpoints(target: str) -> None:
    """Two saves of a CheckpointStore rooted at the traced directory (``latest`` moves twice)."""
    from atomicwrite import CheckpointStore

    store = CheckpointStore(os.path.dirname(target))
    for number, files in enumerate(GENERATIONS):
        with store.save() as stage:
            _fill(os.fspath(stage), files)
        if number == 0:
            _mark(_markers(target), PUBLISHED)


def _plain_stage(target: str, files: dict[str, bytes], *, flush: bool) -> str:
    """A staging directory with a manifest, in plain calls; every file and directory flushed
    only if ``flush``."""
    import hashlib
    import time
    import uuid

    from atomicwrite import DirectoryManifest, FileEntry
    from atomicwrite._directories.manifest import MANIFEST_NAME

    parent, name = os.path.split(target)
    stage = os.path.join(parent, f".{name}.plain.stage")
    os.mkdir(stage)
    _fill(stage, files)
    entries = tuple(
        FileEntry(rel, len(data), "sha256:" + hashlib.sha256(data).hexdigest()) for rel, data in sorted(files.items())
    )
    manifest = DirectoryManifest(generation=uuid.uuid4().hex, files=entries, created=time.time())
    fd = os.open(os.path.join(stage, MANIFEST_NAME), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, manifest.to_json())
    finally:
        os.close(fd)
    if flush:
        for rel in [*sorted(files), MANIFEST_NAME]:
            fd = os.open(os.path.join(stage, *rel.split("/")), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for directory in sorted({os.path.dirname(rel) for rel in files}, reverse=True):
            _fsync_dir(os.path.join(stage, *directory.split("/")) if directory else stage)
    return stage


def directory_without_fsync(target: str) -> None:
    """Known bad: stage, park the old tree, rename the stage in, flush the parent -- but the
    files and the staging directory are never flushed."""
    import shutil

    for number, files in enumerate(GENERATIONS):
        stage = _plain_stage(target, files, flush=False)
        parked = None
        if os.path.exists(target):
            parked = target + ".old"
            os.rename(target, parked)
        os.rename(stage, target)
        _fsync_dir(os.path.dirname(target))
        if parked is not None:
            shutil.rmtree(parked)
        if number == 0:
            _mark(_markers(target), PUBLISHED)


def directory_remove_then_rename(target: str) -> None:
    """Known bad: everything flushed, but the old tree is removed before the new one is renamed
    in (a crash in between leaves no target, or a half-removed one)."""
    import shutil

    for number, files in enumerate(GENERATIONS):
        stage = _plain_stage(target, files, flush=True)
        if os.path.exists(target):
            shutil.rmtree(target)
        os.rename(stage, target)
        _fsync_dir(os.path.dirname(target))
        if number == 0:
            _mark(_markers(target), PUBLISHED)


PROTOCOLS: dict[str, Callable[..., None]] = {
    "atomicwrite-directory": atomicwrite_directory,
    "atomicwrite-checkpoints": atomicwrite_checkpoints,
    "directory-without-fsync": directory_without_fsync,
    "directory-remove-then-rename": directory_remove_then_rename,
    "atomicwrite": atomicwrite_writer,
    "atomicwrite-link-fallback": atomicwrite_link_fallback,
    "in-place": in_place,
    "rename-without-fsync": rename_without_fsync,
    "rename-without-dir-fsync": rename_without_dir_fsync,
    "plain-correct": plain_correct,
}


def main(argv: list[str]) -> None:
    protocol, target, markers, *options = argv
    os.umask(UMASK)
    from tests import _variant

    _variant.apply()
    import atomicwrite  # noqa: F401  # imported before the call, so the trace of the call is short

    _mark(markers, BEGIN)
    PROTOCOLS[protocol](target, *options)
    _mark(markers, RETURNED)


if __name__ == "__main__":
    main(sys.argv[1:])
