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
    from atomicwrite import _posix

    _posix._rename_exclusive = None  # as if libc had no renameat2
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


PROTOCOLS: dict[str, Callable[..., None]] = {
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
