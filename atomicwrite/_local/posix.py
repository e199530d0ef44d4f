"""The POSIX strategy (Linux, macOS, the BSDs): temp file beside the target, fsync, rename.

The protocol, step by step (each step's reason is in the code):

1. resolve a symlinked target to the file it names, so the link survives and the temp file lands
   on the real file's file system;
2. open the parent directory once and do every later call relative to that descriptor, so a
   parent renamed or swapped for a symlink mid-write cannot redirect the write;
3. create the temp file: unnamed with ``O_TMPFILE`` on Linux (a crash leaves nothing), else a
   hidden ``O_EXCL | O_NOFOLLOW`` name beside the target; give it its final mode and owner;
4. write, ``fsync`` (``F_FULLFSYNC`` on macOS), ``close`` and check each;
5. publish with ``rename`` (replace) or ``renameat2(RENAME_NOREPLACE)`` / ``linkat`` (exclusive);
6. ``fsync`` the directory so that the new name itself survives a power loss.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import stat
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .._errors import (
    AtomicPermissionError,
    AtomicWriteError,
    TargetExistsError,
    UnsupportedTargetError,
    os_error,
)
from .._names import FRESH_TEMP_GRACE, temp_name
from .._result import CommitResult, Durability, LocalVersion
from .._strategy import PendingWrite, WriteOptions
from .base import (
    NO_FLOCK,
    LocalPendingWrite,
    LocalStrategy,
    flush_to_disk,
    names_a_directory,
    require_version,
    start_writeback,
)

if TYPE_CHECKING:
    pass

# This module is for POSIX systems only; the assert tells type checkers so (mypy --platform win32).
assert sys.platform != "win32"

__all__ = ["NO_DIR_FSYNC", "NO_FLOCK", "NO_LINK", "NO_TMPFILE", "PosixPendingWrite", "PosixStrategy", "current_umask"]

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
# Opens a path without reading it (Linux): how a symlink itself is opened.
_O_PATH = getattr(os, "O_PATH", 0)
# errnos by which open(O_TMPFILE) says "not here": the file system lacks support (EOPNOTSUPP),
# or the kernel predates O_TMPFILE and sees only O_DIRECTORY (EISDIR) or rejects it (EINVAL).
NO_TMPFILE = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT})
# errnos by which a directory fsync says "not supported here" (CIFS, vboxsf, WSL DrvFs...).
NO_DIR_FSYNC = frozenset({errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EBADF, errno.EACCES})
# errnos by which link(2) says "no hard links here" (FUSE servers without a link operation).
NO_LINK = frozenset({errno.EPERM, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP})


_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux 4.7+)."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # Elsewhere the only portable way is to set it and put it back; the lock keeps our own
    # threads from seeing the temporary value.
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


_renameat2: Callable[[int, bytes, int, bytes, int], int] | bool | None = False
# The flag that makes libc's flagged rename refuse an existing name: Linux renameat2's
# RENAME_NOREPLACE (glibc 2.28+), macOS renameatx_np's RENAME_EXCL.
_NOREPLACE = {"linux": 1, "darwin": 4}.get(sys.platform, 0)
# ...and the one that swaps two names: renameat2's RENAME_EXCHANGE (Linux 3.15+).
_EXCHANGE = 2 if sys.platform == "linux" else 0


def _rename_with_flags(dir_fd: int, source: str, destination: str, flags: int) -> int:
    """libc's flagged rename within ``dir_fd``: 0, or the errno; ENOSYS wherever the call or the
    flag is missing (libc, kernel or file system), for the caller to fall back on."""
    global _renameat2
    if _renameat2 is False:
        symbol = {"linux": "renameat2", "darwin": "renameatx_np"}.get(sys.platform, "")
        function = None
        with contextlib.suppress(OSError, AttributeError):
            function = getattr(ctypes.CDLL(None, use_errno=True), symbol) if symbol else None
        if function is not None:
            function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            function.restype = ctypes.c_int
        _renameat2 = function
    if not callable(_renameat2) or not flags:
        return errno.ENOSYS
    if _renameat2(dir_fd, os.fsencode(source), dir_fd, os.fsencode(destination), flags) == 0:
        return 0
    code = ctypes.get_errno() or errno.EIO
    # An old kernel (ENOSYS) or a file system without the flag (EINVAL, EOPNOTSUPP): one answer,
    # so that every caller falls back the same way.
    return errno.ENOSYS if code in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP) else code


def _lock_named_temp(fd: int) -> None:
    """Lock a temp file before it gets a name in the directory, for as long as it stays open.

    Held for the writer's lifetime, released by the kernel when it dies: this is how sweep()
    tells a live writer's temp from a dead one's.  Blocking, because a sweep may hold it for an
    instant while it checks a brand-new temp.  An unnamed O_TMPFILE is locked only when it is
    about to be named: until then sweep cannot see it, and most writes are done by then.
    Where the file system has no locks, the temp stays unlocked: sweep() then spares it while
    it is fresh or its writer's pid lives.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as exc:
        if exc.errno not in NO_FLOCK:
            raise


# Every flush goes through one name; tests replace _sync here to fail or count them.  On Linux
# it is os.fsync itself: flush_to_disk differs from it only on macOS, and a replace makes two
# flushes, each through a call less.
_sync = os.fsync if sys.platform == "linux" else flush_to_disk


class PosixPendingWrite(LocalPendingWrite):
    """A write in flight under the POSIX protocol."""

    __slots__ = ("_dir_fd", "_directory", "_directory_identity", "_name", "_strategy_name", "_version")

    def __init__(
        self,
        *,
        location: str,
        target: str,
        directory: str,
        dir_fd: int,
        name: str,
        fd: int,
        temp: str | None,
        options: WriteOptions,
        strategy_name: str,
    ) -> None:
        # ``temp``: the temp file's name in the directory, or None while it is an unnamed O_TMPFILE.
        super().__init__(location=location, target=target, fd=fd, temp=temp, options=options)
        self._directory = directory
        self._dir_fd: int | None = dir_fd
        self._name = name
        self._strategy_name = strategy_name
        self._version: LocalVersion | None = None
        # A staged write closes its directory until it publishes (a batch may stage thousands of
        # files); this (device, inode) makes sure it reopens the same directory, not a swapped one.
        self._directory_identity: tuple[int, int] | None = None

    def _flush(self, fd: int) -> None:
        _sync(fd)

    def _publish_flushed(self, fd: int) -> CommitResult:
        dir_fd = self._dir_fd
        assert dir_fd is not None
        options = self._options
        self._step = "reading the temp file's status"
        version = LocalVersion.from_stat(os.fstat(fd))
        if self._temp is None:
            self._step = "naming the temp file"
            if options.exclusive:
                # linkat fails with EEXIST if the name exists: publishing and the existence
                # check are one atomic call, and nothing but the target ever gets a name.
                try:
                    self._link_tmpfile(fd, self._name)
                except FileExistsError:
                    raise TargetExistsError.at(self._location) from None
                self._finish_publish(fd)
                return self._after_publish(version)
            self._temp = self._link_tmpfile_to_temp_name(fd)
        self._step = "closing the temp file"
        self._close_temp_checked(fd)
        if options.if_match is not None:
            self._step = "checking the target's version"
            self._check_version(dir_fd)
        self._step = "publishing"
        if options.exclusive:
            self._rename_noreplace(dir_fd, self._temp, self._name)
        else:
            # rename(2) replaces the name in one step: readers see the old or the new file.
            os.rename(self._temp, self._name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        self._temp = None
        self._done = True
        return self._after_publish(version)

    def _finish_publish(self, fd: int) -> None:
        """Close the O_TMPFILE descriptor after it was linked straight to the target name."""
        self._fd = None
        self._temp = None
        self._done = True
        self._stream.close()
        # The target is published: a failing close cannot take that back, so it must not be
        # reported as a failed write (the data is in place, and flushed unless durability="none").
        with contextlib.suppress(OSError):
            os.close(fd)

    def _after_publish(self, version: LocalVersion) -> CommitResult:
        """The directory fsync and the result.  The new content is published: never unlink now."""
        flushed = True
        try:
            if self._options.durability == "full":
                assert self._dir_fd is not None
                flushed = self._sync_directory(self._dir_fd)
        finally:
            self._close_directory()
        return self._result(version, flushed)

    def flush_directory(self) -> bool:
        dir_fd = self._dir_fd
        if dir_fd is not None:
            return self._sync_directory(dir_fd)
        dir_fd = self._reopen_directory("flushing the directory")
        try:
            return self._sync_directory(dir_fd)
        finally:
            os.close(dir_fd)

    def _sync_directory(self, dir_fd: int) -> bool:
        """Flush the directory; False where its file system cannot (CIFS, vboxsf...)."""
        try:
            # The rename lives in the directory; until the directory is flushed a power loss can
            # bring back the old name (or, for a new file, no name at all).
            _sync(dir_fd)
        except OSError as exc:
            if exc.errno not in NO_DIR_FSYNC:
                raise os_error(exc, self._location, "flushing the directory") from exc
            return False
        return True

    def _reopen_directory(self, step: str) -> int:
        """Open the directory a staged write closed, refusing one that is not the same directory."""
        assert self._directory_identity is not None
        try:
            dir_fd = os.open(self._directory, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
            status = os.fstat(dir_fd)
        except OSError as exc:
            raise os_error(exc, self._location, step) from exc
        if (status.st_dev, status.st_ino) != self._directory_identity:
            os.close(dir_fd)
            raise AtomicWriteError(
                f"cannot write {self._location!r}: its directory was moved or replaced while the write was"
                f" staged ({step})"
            )
        return dir_fd

    def _close_directory(self) -> None:
        dir_fd, self._dir_fd = self._dir_fd, None
        if dir_fd is not None:
            # Published already: closing the directory's descriptor says nothing about the data,
            # and its failure must not turn a published write into an error.  (try/except, not
            # contextlib.suppress: this runs on every commit, and suppress costs three calls.)
            try:  # noqa: SIM105
                os.close(dir_fd)
            except OSError:
                pass

    def _result(self, version: LocalVersion, directory_flushed: bool) -> CommitResult:
        achieved: Durability = self._options.durability
        if achieved == "full" and not directory_flushed:
            achieved = "file"
        return self._report(
            version, achieved, self._strategy_name, "its directory cannot be flushed on this file system"
        )

    can_stage = True

    def stage(self) -> None:
        self._refuse_if_done()
        step = "flushing the temp file"
        try:
            fd = self._flush_temp()
            step = "reading the temp file's status"
            self._version = LocalVersion.from_stat(os.fstat(fd))
            if self._temp is None:
                # Named now but published later, so that publishing is one rename per file; an
                # exclusive write then publishes with the same no-replace rename as a named temp.
                step = "naming the temp file"
                self._temp = self._link_tmpfile_to_temp_name(fd)
            step = "closing the temp file"
            self._close_temp_checked(fd)
            step = "closing the directory"
            dir_fd, self._dir_fd = self._dir_fd, None
            assert dir_fd is not None
            try:
                status = os.fstat(dir_fd)
                self._directory_identity = (status.st_dev, status.st_ino)
            finally:
                os.close(dir_fd)
        except BaseException as exc:
            self._abort(exc, step)

    def begin_stage(self) -> None:
        fd = self._fd
        assert fd is not None
        try:
            if self._temp is None:
                # Named now rather than in stage(): a directory change between two flushes makes
                # the second commit the file system's journal again, so a group's own names are
                # made before its run of flushes, not between them.
                self._temp = self._link_tmpfile_to_temp_name(fd)
        except BaseException as exc:
            self._abort(exc, "naming the temp file")

    def start_flush(self) -> None:
        fd = self._fd
        if fd is not None and self._options.durability != "none":
            start_writeback(fd)

    def publish_staged(self, previous: PendingWrite | None = None) -> str | None:
        temp = self._temp
        assert temp is not None
        assert self._fd is None, "stage() first"
        step = "publishing"
        try:
            self._dir_fd = dir_fd = self._take_directory(previous)
            if self._options.if_match is not None:
                step = "checking the target's version"
                self._check_version(dir_fd)
                step = "publishing"
            if self._options.exclusive:
                self._rename_noreplace(dir_fd, temp, self._name)
            else:
                os.rename(temp, self._name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            self._temp = None
        except BaseException as exc:
            self._abort(exc, step)
        self._done = True
        # The directory stays open for the next file to publish (or for its flush), and is
        # closed by finish_staged at the latest.
        return self._directory if self._options.durability == "full" else None

    def _take_directory(self, previous: PendingWrite | None) -> int:
        """The staged write's directory, open: the one ``previous`` (published just before this
        write) still holds if it is the same directory, else reopened and checked."""
        if isinstance(previous, PosixPendingWrite) and previous._dir_fd is not None:
            if previous._directory_identity == self._directory_identity:
                # Most batches write into one directory: one open for all its files, not one each.
                # The descriptor was checked to be this (device, inode) when it was reopened.
                dir_fd, previous._dir_fd = previous._dir_fd, None
                return dir_fd
            # Another directory: closed now, so that a batch holds one directory open at a time.
            previous._close_directory()
        return self._reopen_directory("reopening the directory")

    def finish_staged(self, directory_flushed: bool) -> CommitResult:
        assert self._version is not None
        self._close_directory()
        return self._result(self._version, directory_flushed)

    def _link_tmpfile(self, fd: int, name: str) -> None:
        # linkat(AT_FDCWD, "/proc/self/fd/N", dir_fd, name, AT_SYMLINK_FOLLOW) gives the unnamed
        # file a name; unlike AT_EMPTY_PATH it needs no CAP_DAC_READ_SEARCH.
        os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=self._dir_fd, follow_symlinks=True)

    def _link_tmpfile_to_temp_name(self, fd: int) -> str:
        _lock_named_temp(fd)
        while True:
            candidate = temp_name(self._name)
            try:
                self._link_tmpfile(fd, candidate)
            except FileExistsError:
                continue
            return candidate

    def _check_version(self, dir_fd: int) -> None:
        try:
            current: LocalVersion | None = LocalVersion.from_stat(
                os.stat(self._name, dir_fd=dir_fd, follow_symlinks=False)
            )
        except FileNotFoundError:
            current = None
        require_version(self._location, self._options.if_match, current)

    def _rename_noreplace(self, dir_fd: int, temp: str, name: str) -> None:
        code = _rename_with_flags(dir_fd, temp, name, _NOREPLACE)
        if code == 0:
            return
        if code == errno.EEXIST:
            raise TargetExistsError.at(self._location)
        if code != errno.ENOSYS:
            raise OSError(code, os.strerror(code), self._location)
        # No RENAME_NOREPLACE here: link(2) also refuses an existing name atomically.  The temp
        # name is then a second link to the published file; dropping it is safe (and if a crash
        # comes first, sweep() drops it).
        try:
            os.link(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        except FileExistsError as exc:
            raise TargetExistsError.at(self._location) from exc
        except OSError as exc:
            if exc.errno not in NO_LINK:
                raise
            # Neither call exists here (some FUSE mounts): any other way of creating the name
            # either replaces a file that appeared meanwhile or shows a reader an empty one.
            raise UnsupportedTargetError(
                f"cannot create {self._location!r} exclusively: its file system has neither"
                " renameat2(RENAME_NOREPLACE) nor link(2), so no call creates a name only if it is"
                " free; nothing was written. Write without exclusive creation, or to another file system"
            ) from exc
        self._temp = None
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=dir_fd)

    def _drop_temp(self, temp: str | None) -> None:
        dir_fd, self._dir_fd = self._dir_fd, None
        try:
            if temp is not None and dir_fd is None and self._directory_identity is not None:
                # A staged write: its temp is named in a directory it closed.
                dir_fd = self._reopen_directory("removing the temp file")
            if temp is not None and dir_fd is not None:
                os.unlink(temp, dir_fd=dir_fd)
        except (OSError, AtomicWriteError):
            pass
        finally:
            if dir_fd is not None:
                os.close(dir_fd)


class PosixStrategy(LocalStrategy):
    """Local files on POSIX systems."""

    name = "posix"

    def __init__(self, *, use_tmpfile: bool | None = None) -> None:
        # O_TMPFILE needs Linux and /proc (the commit names the file through /proc/self/fd).
        if use_tmpfile is None:
            use_tmpfile = sys.platform == "linux" and os.path.isdir("/proc/self/fd")
        self.use_tmpfile = use_tmpfile

    def read_link(self, path: str, location: str) -> str | None:
        try:
            # Most paths are no link: one readlink says so (EINVAL), or that nothing is there.
            os.readlink(path)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOENT):
                return None
            raise os_error(exc, path, "reading the symlink") from exc
        # A link: opened itself (O_PATH | O_NOFOLLOW, Linux), so that its owner and its text are
        # read from one inode; a link swapped between two calls by path could otherwise pass the
        # owner check with one inode and redirect the write with another.  Elsewhere: lstat,
        # readlink, lstat, and the two lstats must agree.
        try:
            if _O_PATH:
                fd = os.open(path, _O_PATH | _O_NOFOLLOW | _O_CLOEXEC)
                try:
                    status = os.fstat(fd)
                    text = os.readlink("", dir_fd=fd) if stat.S_ISLNK(status.st_mode) else None
                finally:
                    os.close(fd)
            else:
                status = os.lstat(path)
                text = os.readlink(path) if stat.S_ISLNK(status.st_mode) else None
                again = os.lstat(path)
                if (again.st_dev, again.st_ino) != (status.st_dev, status.st_ino):
                    raise AtomicWriteError(f"cannot write {location!r}: the symlink {path!r} changed while it was read")
        except FileNotFoundError:
            return None  # removed meanwhile: nothing there (yet), so path is the target
        except OSError as exc:
            raise os_error(exc, path, "reading the symlink") from exc
        if text is not None:
            self._vet_link(path, location, status)
        return text

    @staticmethod
    def _vet_link(path: str, location: str, link: os.stat_result) -> None:
        # The kernel's protected_symlinks rule, applied whatever the sysctl says (and on macOS,
        # which has no such rule): in a sticky world-writable directory (/tmp, a shared scratch
        # space) a link is followed only if the writer or the directory's owner owns it.  Anyone
        # may plant a link there; following a stranger's would let them choose which file a
        # privileged writer creates or replaces.  The kernel applies it to root too, and so do we.
        try:
            directory = os.stat(os.path.dirname(path))
        except OSError as exc:
            raise os_error(exc, location, "checking the symlink's owner") from exc
        sticky_and_shared = directory.st_mode & stat.S_ISVTX and directory.st_mode & stat.S_IWOTH
        if sticky_and_shared and link.st_uid not in (os.geteuid(), directory.st_uid):
            raise AtomicPermissionError(
                errno.EACCES,
                f"cannot write {location!r}: {path!r} is a symlink owned by uid {link.st_uid} in a sticky"
                f" world-writable directory, and following it could let that user choose which file is"
                f" written (the kernel's protected_symlinks rule); write the file it names directly",
                location,
            )

    def rename_exclusive(self, dir_fd: int, source: str, destination: str) -> int:
        """Rename ``source`` to ``destination`` in ``dir_fd`` only if no entry has that name (a
        dangling symlink included), in one call: 0, or the errno (EEXIST: the name exists;
        ENOSYS: no such call here, and the caller needs another way)."""
        return _rename_with_flags(dir_fd, source, destination, _NOREPLACE)

    def exchange(self, dir_fd: int, first: str, second: str) -> int:
        """Swap two existing names in ``dir_fd`` in one call, so that neither is ever missing:
        0, or the errno (ENOSYS: no such call here)."""
        return _rename_with_flags(dir_fd, first, second, _EXCHANGE)

    def begin(self, location: str, options: WriteOptions) -> PosixPendingWrite:
        target = location if location.startswith("/") else self.absolute(location)
        directory, dir_fd, name, old = self._open_directory(target, location)
        if old is not None and stat.S_ISLNK(old.st_mode) and self.follows_symlinks(options):
            # A symlink: the write goes to the file at the end of its chain, in that file's
            # directory.  (Most targets are not links; they cost no readlink.)  An exclusive
            # write never gets here: the link is an existing name, refused below.
            os.close(dir_fd)
            target = self.resolve(location, follow_symlinks=True)
            directory, dir_fd, name, old = self._open_directory(target, location)
        try:
            if not (old is None or stat.S_ISREG(old.st_mode)) or options.exclusive or options.if_match is not None:
                # Most writes create a file or replace a regular one, with nothing to compare.
                self.vet_existing(old, location, options)
            fd, temp = self._create_temp(dir_fd, name, location)
            try:
                self._set_owner_and_mode(fd, old, options)
                if temp is not None:
                    _lock_named_temp(fd)
            except BaseException:
                os.close(fd)
                if temp is not None:
                    os.unlink(temp, dir_fd=dir_fd)
                raise
        except BaseException as exc:
            os.close(dir_fd)
            if isinstance(exc, OSError) and not isinstance(exc, AtomicWriteError):
                raise os_error(exc, location, "creating the temp file") from exc
            raise
        return PosixPendingWrite(
            location=location,
            target=target,
            directory=directory,
            dir_fd=dir_fd,
            name=name,
            fd=fd,
            temp=temp,
            options=options,
            strategy_name=self.name,
        )

    def _open_directory(self, target: str, location: str) -> tuple[str, int, str, os.stat_result | None]:
        """Open the directory of ``target``: ``(its path, dir_fd, name, status of the name or None)``."""
        # os.path.split() costs a few microseconds on every write; the target is absolute here.
        head, _, name = target.rpartition("/")
        parent = head or "/"
        if name in ("", ".", ".."):
            raise names_a_directory(location)
        try:
            dir_fd = os.open(parent, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
        except OSError as exc:
            raise os_error(exc, location, "opening the target's directory") from exc
        try:
            return parent, dir_fd, name, os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return parent, dir_fd, name, None
        except BaseException as exc:
            # Not only OSError: a name the file system encoding cannot encode (a lone surrogate)
            # raises UnicodeEncodeError here, and the directory must not leak with it.
            os.close(dir_fd)
            if isinstance(exc, OSError):
                raise os_error(exc, location, "reading the target's status") from exc
            raise

    def _create_temp(self, dir_fd: int, name: str, location: str) -> tuple[int, str | None]:
        """Open a new temp file in the directory: ``(fd, name)``, name None for O_TMPFILE."""
        if self.use_tmpfile and sys.platform == "linux":
            try:
                # Unnamed until commit: a crash at any point before it leaves nothing behind.
                return os.open(".", os.O_TMPFILE | os.O_WRONLY | _O_CLOEXEC, 0o600, dir_fd=dir_fd), None
            except OSError as exc:
                if exc.errno not in NO_TMPFILE:
                    raise
        while True:
            candidate = temp_name(name)
            try:
                # O_EXCL: never reuse or follow anything already there (a planted symlink, a
                # stale temp); O_NOFOLLOW for the same reason on systems where O_EXCL is lax.
                # 0o600: nobody else reads the content before its final mode is set.
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC
                return os.open(candidate, flags, 0o600, dir_fd=dir_fd), candidate
            except FileExistsError:
                continue

    def _set_owner_and_mode(self, fd: int, old: os.stat_result | None, options: WriteOptions) -> None:
        """Give the temp file its final owner and mode before any byte of it is published."""
        preserve = old is not None and options.preserve_permissions and stat.S_ISREG(old.st_mode)
        if preserve and old is not None and (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
            try:
                os.fchown(fd, old.st_uid, old.st_gid)
            except PermissionError:
                # Only root may give a file away; keep at least the group where we are a member.
                with contextlib.suppress(PermissionError):
                    os.fchown(fd, -1, old.st_gid)
        if options.permissions is not None:
            mode = options.permissions
        elif preserve and old is not None:
            mode = stat.S_IMODE(old.st_mode)
        else:
            # What open() would give a new file.
            mode = 0o666 & ~current_umask()
        # After fchown, which clears the setuid and setgid bits.
        os.fchmod(fd, mode)

    def remove_if_stale(
        self, directory: str, entry: str, *, writer: tuple[str, int], cutoff: float, dry_run: bool
    ) -> bool:
        try:
            # O_NOFOLLOW: a symlink planted under a temp-like name is never followed (or ours).
            fd = os.open(os.path.join(directory, entry), os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return False
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # a live writer holds it
            except OSError as exc:
                # No locks on this file system: no writer holds one, so age and pid decide.
                if exc.errno not in NO_FLOCK:
                    raise
            old_enough = st.st_mtime < cutoff and st.st_mtime < time.time() - FRESH_TEMP_GRACE
            if not old_enough and self.writer_alive(*writer) is not False:
                # Unlocked, but the writer may live: on another host (whose locks may not reach
                # us), or with a live pid here (reused, or between creating and locking its temp).
                return False
            if not dry_run:
                os.unlink(os.path.join(directory, entry))
            return True
        finally:
            os.close(fd)
