"""What the POSIX and Windows strategies share: temp names, target resolution, locks, sweeping.

Temp names look like ``.{name}.aw{host}.{pid}.{random}.tmp``: hidden, beside the target, and
specific enough that [`sweep`][atomicwrite.sweep] never mistakes a user's own ``.x.tmp`` for one of
ours.  ``host`` (a CRC of the host name) and ``pid`` tell a sweep whether the writer can still be
alive; ``random`` makes names unguessable and unique.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import socket
import stat
import sys
import time
import zlib
from abc import abstractmethod
from typing import TYPE_CHECKING, Any

from ._errors import ConflictError, TargetExistsError, TargetIsADirectoryError, UnsupportedTargetError, os_error
from ._result import LocalVersion
from ._strategy import ProgressCallback, Strategy, TargetLock, WriteOptions

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = [
    "FRESH_TEMP_GRACE",
    "LocalStrategy",
    "TempFileStream",
    "host_tag",
    "lock_name",
    "parse_staging_name",
    "parse_temp_name",
    "temp_name",
    "temp_stream",
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
    r"^\.(?P<name>.+)\.aw(?P<host>[0-9a-f]{8})\.(?P<pid>[0-9]{1,10})\.(?P<rand>[0-9a-f]{8})\.(?P<kind>stage|link)$",
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
    directory and ``.link`` for a symlink about to replace another: sweep() removes only a
    regular file as a ``.tmp``, only a directory as a ``.stage``, only a symlink as a ``.link``.
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
    """``(host_tag, pid, kind)`` if ``entry`` names a staging directory (kind ``"stage"``) or a
    pointer's temp symlink (``"link"``), else None."""
    match = _STAGING_NAME.match(entry)
    if match is None:
        return None
    return match.group("host"), int(match.group("pid")), match.group("kind")


def flush_to_disk(fd: int) -> None:
    """Flush a file or directory to stable storage: what every durable step of every local
    protocol (files, directories, links) calls, so that none is weaker than the others."""
    if sys.platform == "darwin":
        import fcntl

        # macOS fsync only reaches the drive's cache; F_FULLFSYNC asks the drive to flush it.
        # Some file systems (network, FAT) refuse it: then plain fsync is the best there is.
        try:
            fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
            return
        except OSError:
            pass
    os.fsync(fd)


_sync_file_range: Any = None


def start_writeback(fd: int) -> None:
    """Start writing a file's dirty pages to storage without waiting (Linux; elsewhere nothing).

    A hint only, never a flush: ``sync_file_range`` promises nothing about metadata or the
    drive's cache.  Called on a file that will be flushed soon, it lets the flush find its data
    already on the way, and several files started together share the disk's work.
    """
    global _sync_file_range
    if _sync_file_range is None:
        _sync_file_range = False
        if sys.platform == "linux":
            import ctypes

            try:
                function = ctypes.CDLL(None, use_errno=True).sync_file_range
            except (OSError, AttributeError):
                pass
            else:
                function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
                function.restype = ctypes.c_int
                _sync_file_range = function
    if _sync_file_range:
        # offset 0, length 0: the whole file; SYNC_FILE_RANGE_WRITE (2): start, do not wait.
        # Its result is ignored: a hint that fails costs nothing, and the flush reports errors.
        _sync_file_range(fd, 0, 0, 2)


def replace_symlink(directory: str, name: str, points_to: str, *, durable: bool = True) -> None:
    """Make ``directory/name`` a symlink to ``points_to`` with no moment where it is missing.

    The new link is made under a ``.link`` temp name and renamed over the old one: rename()
    replaces a name in one step, so a reader (or a resume after a crash) finds the old link or
    the new one.  Removing the old link first and then linking leaves a window with neither.  A
    kill between the two calls leaves a ``.link`` temp, which sweep() removes.  With ``durable``,
    the directory fsync makes the new link survive a power cut.
    """
    dir_fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        while True:
            temp = temp_name(name, ".link")
            try:
                os.symlink(points_to, temp, dir_fd=dir_fd)
                break
            except FileExistsError:
                continue
        try:
            os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=dir_fd)
            raise
        if durable:
            flush_to_disk(dir_fd)
    finally:
        os.close(dir_fd)


def lock_name(name: str) -> str:
    """The lock file that serializes writers of ``name`` (``lock=True``); it is never removed,
    since removing a lock file races with the next writer that opens it."""
    return "." + _fit(name, NAME_MAX - 6) + ".lock"


def names_a_directory(location: str) -> TargetIsADirectoryError:
    """The error for a target whose last component is empty, ``.`` or ``..``."""
    return TargetIsADirectoryError(errno.EISDIR, f"cannot write {location!r}: it names a directory", location)


def require_version(location: str, expected: object, current: LocalVersion | None) -> None:
    """Raise ConflictError unless the target is at the version a conditional write expects."""
    if current != expected:
        raise ConflictError(
            f"{location!r} changed since version {expected!r} (now {current!r}); it was left as it is",
            expected=expected,
            actual=current,
        )


class TempFileStream(io.FileIO):
    """A temp file's raw stream: a failed write (ENOSPC, EFBIG, EDQUOT, EIO...) raises the error
    hierarchy's OSError (NoSpaceError...) naming the target, like every other step.  Made by
    ``temp_stream``."""

    # Class defaults, set per stream by temp_stream: FileIO's own constructor builds the stream,
    # since a Python __init__ (through super()) cost every write about 2 us more.
    _location: str = ""
    _progress: ProgressCallback | None = None

    def write(self, data: Buffer, /) -> int:
        try:
            written = io.FileIO.write(self, data)
        except OSError as exc:
            raise os_error(exc, self._location, "writing the temp file") from exc
        if self._progress is not None and written:
            self._progress.relative_update(written)
        return written


def temp_stream(fd: int, location: str, progress: ProgressCallback | None) -> TempFileStream:
    """The raw stream over the temp file ``fd`` of a write to ``location``; ``fd`` stays open."""
    stream = TempFileStream(fd, "wb", closefd=False)
    stream._location = location
    if progress is not None:
        stream._progress = progress
    return stream


class _PortalockerLock(TargetLock):
    def __init__(self, handle: Any) -> None:
        self._handle: Any = handle

    def release(self) -> None:
        if self._handle is None:
            return
        import portalocker

        handle, self._handle = self._handle, None
        try:
            portalocker.unlock(handle)
        finally:
            handle.close()


class LocalStrategy(Strategy):
    """Base of the local-disk strategies."""

    def absolute(self, location: str) -> str:
        """``location`` with ``~`` expanded and made absolute, without resolving ``..`` lexically."""
        path = os.path.expanduser(location)
        if not os.path.isabs(path):
            path = os.path.join(os.getcwd(), path)
        return path

    @staticmethod
    def follows_symlinks(options: WriteOptions) -> bool:
        """Whether a write with these options goes through a symlink at the target's name.

        Never for an exclusive create: a symlink is a name, and ``"x"`` promises the name did
        not exist.  Following a dangling link there would create a file wherever whoever planted
        the link chose; refusing it leaves the publishing call (which never follows) as the one
        existence check.
        """
        return options.follow_symlinks and not options.exclusive

    def resolve(self, location: str, follow_symlinks: bool) -> str:
        """The path whose directory entry will be replaced.

        With ``follow_symlinks``, a chain of symlinks in the last component is followed (also a
        dangling one, which then gets created, as ``open()`` does), so the link survives and the
        temp file lands in the directory of the real file, on its file system.  Each link must
        pass `vet_link` first.
        """
        path = self.absolute(location)
        if follow_symlinks:
            for _ in range(40):
                link = self.read_link(path)
                if link is None:
                    break
                self.vet_link(path, location)
                path = link if os.path.isabs(link) else os.path.join(os.path.dirname(path), link)
            else:
                raise os_error(OSError(errno.ELOOP, os.strerror(errno.ELOOP), path), location, "resolving symlinks")
        if os.path.basename(path) in ("", ".", ".."):
            raise names_a_directory(location)
        return path

    @staticmethod
    def vet_existing(old: os.stat_result | None, location: str, options: WriteOptions) -> None:
        """Refuse to replace what must not be (a directory, a device; anything, when exclusive),
        and check ``if_match`` against the current target's status (``old``, None if absent).

        PosixStrategy.begin skips the call where it has nothing to do (a new or regular target,
        neither exclusive nor if_match): a check added here must be reflected there.
        """
        if old is not None:
            if stat.S_ISDIR(old.st_mode):
                raise TargetIsADirectoryError(errno.EISDIR, f"cannot write {location!r}: it is a directory", location)
            if options.exclusive:
                raise TargetExistsError.at(location)
            if not stat.S_ISREG(old.st_mode) and not stat.S_ISLNK(old.st_mode):
                raise UnsupportedTargetError(
                    f"cannot replace {location!r}: it is not a regular file (a device, FIFO or socket)"
                )
        if options.if_match is not None:
            require_version(location, options.if_match, None if old is None else LocalVersion.from_stat(old))

    @abstractmethod
    def read_link(self, path: str) -> str | None:
        """Where the symlink ``path`` points, or None if ``path`` is not a symlink."""

    def vet_link(self, path: str, location: str) -> None:
        """Refuse to follow the symlink ``path`` where following it could redirect the write to a
        place another user chose.  Nothing to refuse by default (Windows has no sticky bit)."""
        return

    def read(self, location: str, options: WriteOptions) -> bytes | None:
        path = self.resolve(location, options.follow_symlinks)
        try:
            with open(path, "rb") as file:
                return file.read()
        except FileNotFoundError:
            return None
        except IsADirectoryError as exc:
            raise os_error(exc, location, "reading the current content") from exc

    def lock(self, location: str, options: WriteOptions) -> TargetLock:
        import portalocker

        path = self.resolve(location, self.follows_symlinks(options))
        directory, name = os.path.split(path)
        try:
            handle = open(os.path.join(directory, lock_name(name)), "a")  # noqa: SIM115 - held until release
        except OSError as exc:
            raise os_error(exc, location, "opening the lock file") from exc
        try:
            portalocker.lock(handle, portalocker.LockFlags.EXCLUSIVE)
        except BaseException:
            handle.close()
            raise
        return _PortalockerLock(handle)

    def sweep(self, location: str, older_than: float, dry_run: bool, options: WriteOptions) -> list[str]:
        # Lexically normalized ("./x/." -> "x") so the paths reported back read as expected.
        directory = os.path.normpath(self.absolute(location))
        now = time.time()
        removed: list[str] = []
        try:
            entries = sorted(os.listdir(directory))
        except OSError as exc:
            raise os_error(exc, location, "listing the directory", verb="sweep") from exc
        for entry in entries:
            parsed = parse_temp_name(entry)
            if parsed is None:
                staged = parse_staging_name(entry)
                if staged is not None and sys.platform != "win32":
                    from ._directory import remove_stale_staging

                    host, pid, kind = staged
                    if remove_stale_staging(
                        directory,
                        entry,
                        kind,
                        same_host=host == host_tag(),
                        pid=pid,
                        cutoff=now - older_than,
                        dry_run=dry_run,
                    ):
                        removed.append(os.path.join(directory, entry))
                continue
            host, pid = parsed
            stale = self.remove_if_stale(
                directory, entry, same_host=host == host_tag(), pid=pid, cutoff=now - older_than, dry_run=dry_run
            )
            if stale:
                removed.append(os.path.join(directory, entry))
        return removed

    @abstractmethod
    def remove_if_stale(
        self, directory: str, entry: str, *, same_host: bool, pid: int, cutoff: float, dry_run: bool
    ) -> bool:
        """Remove the temp ``entry`` if its writer is gone; True if it was (or would be) removed.

        ``cutoff`` is a time stamp: a temp last modified before it may be removed even when its
        writer's liveness cannot be known (another host, a reused pid).
        """
