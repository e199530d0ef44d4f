"""What the POSIX and Windows strategies share: target resolution and the symlink policy, the
temp file's stream, the pending write's state, the lock file, the checks before a replace, and
the sweep of a directory's temp files (temp names and writer liveness are in `atomicwrite._names`)."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import sys
import time
from abc import abstractmethod
from typing import TYPE_CHECKING, Any, NoReturn

from .._checksums import AUTO, Digest, new_digest
from .._errors import (
    AtomicPermissionError,
    AtomicWriteError,
    ConflictError,
    DurabilityError,
    TargetExistsError,
    TargetIsADirectoryError,
    UnsupportedTargetError,
    os_error,
)
from .._names import lock_name, parse_temp_name, temp_name, writer_alive
from .._result import CommitResult, Durability, LocalVersion
from .._strategy import PendingWrite, ProgressCallback, Strategy, TargetLock, WriteOptions

if TYPE_CHECKING:
    from typing_extensions import Buffer

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation
# How open(O_NOFOLLOW) refuses a symlink: ELOOP (Linux, macOS), EMLINK (FreeBSD, NetBSD).
_IS_A_LINK = frozenset({errno.ELOOP, errno.EMLINK})
# errnos by which flock(2) says "no locks on this file system" (FUSE servers that refuse them,
# NFS without a lock manager): a temp file's lock is then skipped (sweep() judges by age and
# pid), and lock=True is refused.
NO_FLOCK = frozenset({errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.ENOLCK, errno.EINVAL})

__all__ = [
    "NO_FLOCK",
    "LocalPendingWrite",
    "LocalStrategy",
    "TempFileStream",
    "filesystem_type",
    "flush_to_disk",
    "mount_of",
    "names_a_directory",
    "parse_mountinfo",
    "replace_symlink",
    "require_version",
    "start_writeback",
    "statfs_magic",
    "temp_stream",
]


def filesystem_type(path: str) -> str | None:
    """The type of the mount that holds ``path`` as /proc/self/mountinfo names it (``ext4``,
    ``overlay``, ``fuse.sshfs``...), or None where there is no such table (not Linux)."""
    mount = mount_of(path)
    return None if mount is None else mount[1]


def mount_of(path: str) -> tuple[str, str, str, str] | None:
    """``(mount point, type, source, options)`` of the mount that holds ``path``, from
    /proc/self/mountinfo: the entry of ``path``'s device that contains it, else (``path`` not
    there yet) the longest mount point that contains it; None where there is no such table."""
    if sys.platform == "win32":
        return None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as table:
            lines = table.read().splitlines()
    except OSError:
        return None
    try:
        device: int | None = os.stat(path).st_dev
    except OSError:
        device = None
    real = os.path.realpath(path)
    by_device: list[tuple[str, str, str, str]] = []
    by_prefix: list[tuple[str, str, str, str]] = []
    for line in lines:
        parsed = parse_mountinfo(line)
        if parsed is None or not _contains(parsed[1][0], real):
            continue
        (major, minor), entry = parsed
        if device is not None and (major, minor) == (os.major(device), os.minor(device)):
            by_device.append(entry)
        by_prefix.append(entry)
    # The longest mount point wins, and of equal ones the last mounted (it hides the others).
    for candidates in (by_device, by_prefix):
        if candidates:
            return max(enumerate(candidates), key=lambda item: (len(item[1][0]), item[0]))[1]
    return None


def parse_mountinfo(line: str) -> tuple[tuple[int, int], tuple[str, str, str, str]] | None:
    """One line of /proc/self/mountinfo (proc(5)) as ``((major, minor), (mount point, type,
    source, options))``, None if malformed.  ``options`` joins the mount's options and the file
    system's (where NFS keeps ``nolock``, ``local_lock=``, ``vers=``)."""
    left, sep, right = line.partition(" - ")
    fields, tail = left.split(), right.split()
    if not sep or len(fields) < 6 or len(tail) < 2:
        return None
    major, _, minor = fields[2].partition(":")
    if not (major.isdigit() and minor.isdigit()):
        return None
    point = fields[4].encode().decode("unicode_escape")  # \040 for spaces and the like
    options = ",".join([fields[5], *tail[2:3]])
    return (int(major), int(minor)), (point, tail[0], tail[1], options)


def _contains(mount_point: str, path: str) -> bool:
    return path == mount_point or path.startswith(mount_point.rstrip("/") + "/")


def statfs_magic(fd: int) -> int | None:
    """fstatfs(2)'s f_type of the file system that holds ``fd`` (linux/magic.h), or None where
    it cannot be read (not Linux)."""
    if sys.platform != "linux":
        return None
    import ctypes

    try:
        fstatfs = ctypes.CDLL(None, use_errno=True).fstatfs
    except (OSError, AttributeError):
        return None
    # struct statfs starts with f_type, a long on every Linux ABI; 256 bytes cover the rest.
    buffer = ctypes.create_string_buffer(256)
    fstatfs.argtypes = [ctypes.c_int, ctypes.c_void_p]
    fstatfs.restype = ctypes.c_int
    if fstatfs(fd, buffer) != 0:
        return None
    return ctypes.c_ulong.from_buffer(buffer).value & 0xFFFFFFFF


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
    _digest: Digest | None = None

    def write(self, data: Buffer, /) -> int:
        try:
            written = io.FileIO.write(self, data)
        except OSError as exc:
            raise os_error(exc, self._location, "writing the temp file") from exc
        if self._digest is not None and written:
            self._digest.update(memoryview(data).cast("B")[:written])
        if self._progress is not None and written:
            self._progress.relative_update(written)
        return written

    def checksum(self) -> str | None:
        """``"<algorithm>:<hex>"`` of what was written, if a checksum was asked for."""
        digest = self._digest
        return None if digest is None else f"{digest.name}:{digest.digest().hex()}"


def temp_stream(fd: int, location: str, options: WriteOptions) -> TempFileStream:
    """The raw stream over the temp file ``fd`` of a write to ``location``; ``fd`` stays open."""
    stream = TempFileStream(fd, "wb", closefd=False)
    stream._location = location
    if options.progress is not None:
        stream._progress = options.progress
    # "auto" hashes nothing here: no store checks a local file on arrival, and hashing would
    # cost more CPU than the write itself.
    if options.checksum not in (None, AUTO):
        stream._digest = new_digest(options.checksum)
    return stream


class LocalPendingWrite(PendingWrite):
    """What a local write in flight holds on every OS: the temp file (descriptor, stream, name),
    the target, the options, whether it is done; and how it fails, discards and reports."""

    # Slots: one of these is built for every write (a batch holds thousands), each without a dict.
    __slots__ = ("_done", "_fd", "_location", "_options", "_step", "_stream", "_target", "_temp")

    def __init__(self, *, location: str, target: str, fd: int, temp: str | None, options: WriteOptions) -> None:
        self._location = location
        self._target = target
        self._fd: int | None = fd
        self._temp = temp
        self._options = options
        self._stream = temp_stream(fd, location, options)
        self._done = False

    @property
    def stream(self) -> io.RawIOBase:
        return self._stream

    def _refuse_if_done(self) -> None:
        if self._done:
            raise AtomicWriteError(f"write to {self._location!r} was already committed or discarded")

    def commit(self) -> CommitResult:
        self._refuse_if_done()
        # What the write is doing, named in the error if that fails; _publish_flushed moves it on.
        self._step = "flushing the temp file"
        try:
            return self._publish_flushed(self._flush_temp())
        except BaseException as exc:
            self._abort(exc, self._step)

    @abstractmethod
    def _flush(self, fd: int) -> None:
        """Flush the file or directory ``fd`` to stable storage, the way this OS needs."""

    @abstractmethod
    def _publish_flushed(self, fd: int) -> CommitResult:
        """Publish the flushed temp file ``fd`` and report; ``self._step`` names each step as it
        starts.  On failure raise: the caller discards."""

    def _abort(self, exc: BaseException, step: str) -> NoReturn:
        """Discard after ``exc`` (raised at ``step``), then raise it; a plain OSError is raised
        as the error hierarchy's, naming the target and the step."""
        self.discard()
        if isinstance(exc, OSError) and not isinstance(exc, AtomicWriteError):
            raise os_error(exc, self._location, step) from exc
        raise exc

    def _flush_temp(self) -> int:
        """Flush the temp file (unless durability is "none"); its fd.

        The data must be on stable storage before any name leads to it: a journaled rename of an
        unflushed file is how ext4, XFS and NTFS leave zero-length or zero-filled files after a
        power loss."""
        fd = self._fd
        assert fd is not None
        if self._options.durability != "none":
            self._flush(fd)
        return fd

    def _close_temp_checked(self, fd: int) -> None:
        """Close the temp file's descriptor, raising what close() reports: NFS, some FUSE file
        systems and SMB redirectors report deferred write errors only there."""
        self._fd = None
        self._stream.close()
        os.close(fd)

    def discard(self) -> None:
        if self._done:
            return
        self._done = True
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                self._stream.close()
                os.close(fd)
        temp, self._temp = self._temp, None
        self._drop_temp(temp)

    @abstractmethod
    def _drop_temp(self, temp: str | None) -> None:
        """For a discard: remove the unpublished temp name ``temp`` (None: it has none), best
        effort (`sweep` gets what this cannot), and release what else the write holds."""

    def _report(self, version: LocalVersion, achieved: Durability, strategy: str, why_weaker: str) -> CommitResult:
        """The result of a published write, or DurabilityError when less than asked was achieved
        and the caller did not accept that (``why_weaker`` says what the file system refused)."""
        options = self._options
        result = CommitResult(
            target=self._target,
            strategy=strategy,
            durability=achieved,
            bytes_written=version.size,
            version=version,
            checksum=self._stream.checksum(),
        )
        if achieved != options.durability and not options.accept_weaker_durability:
            raise DurabilityError(
                f"{self._location!r} was replaced, but {why_weaker}, so the new name may not survive a power"
                f" loss (durability achieved: {achieved!r}, asked: {options.durability!r}); pass"
                " accept_weaker_durability=True to accept this",
                result=result,
            )
        return result


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

    def resolve(self, location: str, follow_symlinks: bool, *, directory: bool = False) -> str:
        """The path whose directory entry will be replaced.

        With ``follow_symlinks``, a chain of symlinks in the last component is followed (also a
        dangling one, which then gets created, as ``open()`` does), so the link survives and the
        temp file lands in the directory of the real file, on its file system.  Each link must
        pass `read_link`'s checks.  A ``directory`` may be named by a link ending in a separator.
        """
        path = self.absolute(location)
        if follow_symlinks:
            for _ in range(40):
                link = self.read_link(path, location)
                if link is None:
                    break
                path = link if os.path.isabs(link) else os.path.join(os.path.dirname(path), link)
                if directory:
                    path = path.rstrip(os.sep) or os.sep
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
    def read_link(self, path: str, location: str) -> str | None:
        """Where the symlink ``path`` points, or None if ``path`` is not a symlink; raises
        AtomicPermissionError where following it could let another user choose what a write of
        ``location`` reaches (see the symlink policy in the guarantees)."""

    def read(self, location: str, options: WriteOptions) -> bytes | None:
        follow = options.follow_symlinks
        path = self.resolve(location, follow)
        try:
            # Not following means the link is not read through either: the content a link
            # would lend is some other file's, perhaps one its planter could not read.
            with open(os.open(path, os.O_RDONLY | (0 if follow else _O_NOFOLLOW) | _O_BINARY), "rb") as file:
                return file.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in _IS_A_LINK and not follow:
                raise UnsupportedTargetError(
                    f"cannot read {location!r}: it is a symlink, and follow_symlinks=False does not read"
                    " through it; follow it, or remove the link first"
                ) from exc
            raise os_error(exc, location, "reading the current content") from exc

    def lock(self, location: str, options: WriteOptions) -> TargetLock:
        import portalocker

        path = self.resolve(location, self.follows_symlinks(options))
        directory, name = os.path.split(path)
        lock_path = os.path.join(directory, lock_name(name))
        try:
            # O_NOFOLLOW: a link planted under the lock file's name (in /tmp, by anyone) must not
            # make this writer create or lock a file of the planter's choosing.
            fd = os.open(lock_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | _O_NOFOLLOW | _O_CLOEXEC, 0o666)
        except OSError as exc:
            if exc.errno in _IS_A_LINK:
                raise AtomicPermissionError(
                    errno.EACCES, f"cannot lock {location!r}: {lock_path!r} is a symlink, not a lock file", location
                ) from exc
            raise os_error(exc, location, "opening the lock file") from exc
        handle = open(fd, "a")  # noqa: SIM115 - held until release
        try:
            portalocker.lock(handle, portalocker.LockFlags.EXCLUSIVE)
        except BaseException as exc:
            handle.close()
            cause = exc.args[0] if isinstance(exc, portalocker.LockException) and exc.args else None
            if isinstance(cause, OSError) and cause.errno in NO_FLOCK:
                raise UnsupportedTargetError(
                    f"cannot lock {location!r}: its file system has no file locks"
                    f" ({errno.errorcode.get(cause.errno or 0, cause.errno)}), and lock=True serializes"
                    " writers with them; nothing was written. Write without lock=True (each write is"
                    " still atomic), or keep the file on a file system with locks"
                ) from exc
            raise
        return _PortalockerLock(handle)

    def sweep(self, location: str, older_than: float, dry_run: bool, options: WriteOptions) -> list[str]:
        """Remove the temp files of dead writers in the directory ``location`` (its staging
        directories and pointer links are the directory layer's, swept by `atomicwrite.sweep`)."""
        directory = self.sweep_directory(location)
        cutoff = time.time() - older_than
        removed: list[str] = []
        try:
            entries = sorted(os.listdir(directory))
        except OSError as exc:
            raise os_error(exc, location, "listing the directory", verb="sweep") from exc
        for entry in entries:
            parsed = parse_temp_name(entry)
            if parsed is not None and self.remove_if_stale(
                directory, entry, writer=parsed, cutoff=cutoff, dry_run=dry_run
            ):
                removed.append(os.path.join(directory, entry))
        return removed

    def sweep_directory(self, location: str) -> str:
        """The directory a sweep of ``location`` lists, lexically normalized ("./x/." -> "x") so
        that the paths reported back read as expected."""
        return os.path.normpath(self.absolute(location))

    def writer_alive(self, host: str, pid: int) -> bool | None:
        """Whether the writer ``(host, pid)`` of a leftover still runs; None where it cannot be
        known (see `atomicwrite._names.writer_alive`)."""
        return writer_alive(host, pid)

    @abstractmethod
    def remove_if_stale(
        self, directory: str, entry: str, *, writer: tuple[str, int], cutoff: float, dry_run: bool
    ) -> bool:
        """Remove the temp ``entry`` if its writer is gone; True if it was (or would be) removed.

        ``writer`` is the ``(host, pid)`` its name carries, for `writer_alive` (asked only when
        the answer matters).  ``cutoff`` is a time stamp: a temp last modified before it may be
        removed even when its writer's liveness cannot be known (another host, a reused pid).
        """
