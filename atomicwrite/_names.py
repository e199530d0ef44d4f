"""The names this library gives what it leaves on storage, and who may still be writing them.

Temp names look like ``.{name}.aw{host}.{pid}.{random}.tmp``: hidden, beside the target, and
specific enough that [`sweep`][atomicwrite.sweep] never mistakes a user's own ``.x.tmp`` for one of
ours.  ``host`` (a CRC of the host name) and ``pid`` tell a sweep whether the writer can still be
alive; ``random`` makes names unguessable and unique.  Staging directories (``.stage``), pointer
temp links (``.link``), object-store upload markers and generation prefixes carry the same host
and pid, and `writer_alive` is the one answer to "is that writer still running?" for all of them.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import zlib
from collections.abc import Callable

__all__ = [
    "FRESH_TEMP_GRACE",
    "NAME_MAX",
    "host_tag",
    "leftover_status",
    "lock_name",
    "parse_staging_name",
    "parse_temp_name",
    "pid_alive",
    "temp_name",
    "writer_alive",
]

# The longest file name most file systems accept (ext4, XFS, APFS, NTFS: 255).
NAME_MAX = 255
_SUFFIX = ".tmp"
# A temp younger than this is never swept while its writer may be alive: it covers the instant
# between a writer creating its temp and locking (or opening) it.
FRESH_TEMP_GRACE = 10.0
_TEMP_NAME = re.compile(
    r"^\.(?P<name>.+)\.aw(?P<host>[0-9a-f]{8})\.(?P<pid>[0-9]{1,10})\.(?P<rand>[0-9a-f]{8})\.tmp$", re.DOTALL
)

_STAGING_NAME = re.compile(
    r"^\.(?P<name>.+)\.aw(?P<host>[0-9a-f]{8})\.(?P<pid>[0-9]{1,10})\.(?P<rand>[0-9a-f]{8})\.(?P<kind>stage|trash|link)$",
    re.DOTALL,
)

_host_tag: str | None = None


def host_tag() -> str:
    """Eight hex digits that identify this host in temp names."""
    global _host_tag
    if _host_tag is None:
        _host_tag = format(zlib.crc32(socket.gethostname().encode("utf-8", "surrogateescape")), "08x")
    return _host_tag


# ".aw{host}.{pid}." of this process, built once: os.getpid() is a system call each time, and
# every replace makes a temp name.  A forked child builds its own.
_process_tag: str | None = None


def _forked() -> None:
    global _process_tag
    _process_tag = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def _fit(name: str, room: int) -> str:
    """``name`` cut to at most ``room`` bytes of UTF-8, never splitting a character."""
    encoded = name.encode("utf-8", "surrogateescape")
    if len(encoded) <= room:
        return name
    return encoded[:room].decode("utf-8", "ignore")


def temp_name(name: str, suffix: str = _SUFFIX) -> str:
    """A fresh temp name for a write to ``name``, at most NAME_MAX bytes long.

    ``suffix`` is ``.tmp`` for a temp file, ``.stage`` for an atomic_directory's staging
    directory, ``.trash`` for a directory renamed out of sight to be removed and ``.link`` for a
    symlink about to replace another: sweep() removes only a regular file as a ``.tmp``, only a
    directory as a ``.stage`` or a ``.trash``, only a symlink as a ``.link``.
    """
    global _process_tag
    if _process_tag is None:
        _process_tag = f".aw{host_tag()}.{os.getpid()}."
    tail = f"{_process_tag}{os.urandom(4).hex()}{suffix}"
    room = NAME_MAX - 1 - len(tail)
    # A character is at most four bytes of UTF-8: most names fit without being encoded.
    return "." + (name if len(name) * 4 <= room else _fit(name, room)) + tail


def parse_temp_name(entry: str) -> tuple[str, int] | None:
    """``(host_tag, pid)`` if ``entry`` is one of our temp names, else None."""
    match = _TEMP_NAME.match(entry)
    if match is None:
        return None
    return match.group("host"), int(match.group("pid"))


def parse_staging_name(entry: str) -> tuple[str, int, str] | None:
    """``(host_tag, pid, kind)`` if ``entry`` names a staging directory (kind ``"stage"``), a
    directory being removed (``"trash"``) or a pointer's temp symlink (``"link"``), else None."""
    match = _STAGING_NAME.match(entry)
    if match is None:
        return None
    return match.group("host"), int(match.group("pid")), match.group("kind")


def lock_name(name: str) -> str:
    """The lock file that serializes writers of ``name`` (``lock=True``); it is never removed,
    since removing a lock file races with the next writer that opens it."""
    return "." + _fit(name, NAME_MAX - 6) + ".lock"


def leftover_status(path: str, is_kind: Callable[[int], bool]) -> os.stat_result | None:
    """The status of ``path`` if it is of the kind this library leaves under such a name
    (``stat.S_ISREG`` for a temp file, ``stat.S_ISLNK`` for a pointer's temp link), read without
    following a link; None for anything else, or nothing.  A sweep removes only what passes."""
    try:
        status = os.lstat(path)
    except OSError:
        return None
    return status if is_kind(status.st_mode) else None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (a reused pid counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def writer_alive(host: str, pid: int) -> bool | None:
    """Whether the writer ``(host, pid)`` named in a leftover still runs: None where that cannot
    be known (another host; Windows, where ``os.kill`` would terminate the process), and only its
    age may then tell.  A reused pid counts as alive: it only delays a sweep."""
    if host != host_tag() or sys.platform == "win32":
        return None
    return pid_alive(pid)
