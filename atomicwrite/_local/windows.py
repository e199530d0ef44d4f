"""The Windows strategy: temp file beside the target, FlushFileBuffers, MoveFileExW / ReplaceFileW.

The protocol, step by step (each step's reason is in the code):

1. resolve a symlinked target to the file it names, so the link survives and the temp file lands
   on the real file's volume (a rename never crosses volumes);
2. look at the old target: refuse a directory, refuse any existing name for ``"x"`` modes, check
   ``if_match``;
3. create the temp file beside it with ``CREATE_NEW`` semantics (``O_CREAT | O_EXCL``).  The C
   runtime opens it without ``FILE_SHARE_DELETE``, so while its writer holds it nobody can delete
   or rename it: that is how `sweep` tells a live writer's temp from a dead
   one's, without ever touching a process;
4. write, ``FlushFileBuffers`` (``os.fsync``), close and check each;
5. publish in one call:

   * exclusive: ``MoveFileExW`` *without* ``MOVEFILE_REPLACE_EXISTING``: it fails with
     ``ERROR_ALREADY_EXISTS`` / ``ERROR_FILE_EXISTS`` if the name exists, atomically;
   * replace, keeping the old file's ACLs and attributes (``preserve_permissions`` and an existing
     regular file): ``ReplaceFileW``;
   * otherwise: ``MoveFileExW(MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH)`` (``os.replace``
     is the same call without ``MOVEFILE_WRITE_THROUGH``).

   Calls refused for a moment by another program (ACCESS_DENIED, SHARING_VIOLATION,
   LOCK_VIOLATION: antivirus scanners, the search indexer, a reader that opened the target without
   ``FILE_SHARE_DELETE``) are retried with a short bounded backoff.  The old file is never deleted
   first: the name always holds the old or the new content;
6. durability ``"full"``: Windows has no directory fsync.  ``MOVEFILE_WRITE_THROUGH`` makes
   MoveFileExW return only once the rename is on disk.  ``ReplaceFileW`` has no working
   write-through flag (``REPLACEFILE_WRITE_THROUGH`` is documented as unsupported), so after it
   the published file is opened and flushed (``FlushFileBuffers`` also commits the file system's
   metadata log that holds the rename, on NTFS).  If that flush is refused (a reader holds the
   file without sharing write access), ``"file"`` is reported, never ``"full"``.

Every Win32 call goes through `Kernel32`, so the call sequence and the error mapping are
tested on any platform against a fake (tests/test_windows.py).  This module imports everywhere
and never calls ``fcntl`` or ``os.kill`` (``os.kill`` *terminates* a process on Windows).
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, TypeVar

from .._errors import (
    AtomicOSError,
    TargetExistsError,
    UnsupportedTargetError,
    os_error,
)
from .._names import FRESH_TEMP_GRACE, host_tag, leftover_status, temp_name
from .._result import CommitResult, Durability, LocalVersion
from .._strategy import WriteOptions
from .base import LocalPendingWrite, LocalStrategy, require_version

if TYPE_CHECKING:
    pass

_T = TypeVar("_T")

__all__ = [
    "ERROR_ACCESS_DENIED",
    "ERROR_ALREADY_EXISTS",
    "ERROR_FILE_EXISTS",
    "ERROR_FILE_NOT_FOUND",
    "ERROR_LOCK_VIOLATION",
    "ERROR_PATH_NOT_FOUND",
    "ERROR_SHARING_VIOLATION",
    "ERROR_UNABLE_TO_MOVE_REPLACEMENT",
    "MOVEFILE_REPLACE_EXISTING",
    "MOVEFILE_WRITE_THROUGH",
    "REPLACEFILE_FLAGS",
    "RETRYABLE",
    "RETRY_ATTEMPTS",
    "Kernel32",
    "WindowsPendingWrite",
    "WindowsStrategy",
    "load_kernel32",
    "retry_delays",
    "winerror_error",
    "winerror_to_errno",
]

# --- Win32 constants (winbase.h, winerror.h) -----------------------------------------------------

MOVEFILE_REPLACE_EXISTING = 0x1
MOVEFILE_WRITE_THROUGH = 0x8
# Never MOVEFILE_COPY_ALLOWED: a copy across volumes is not atomic.

# ReplaceFileW flags.  REPLACEFILE_WRITE_THROUGH (0x1) is documented as "not supported": unused.
REPLACEFILE_IGNORE_MERGE_ERRORS = 0x2
REPLACEFILE_IGNORE_ACL_ERRORS = 0x4
# Carrying the old file's DACL, attributes and named streams over is best effort, as keeping the
# owner is on POSIX: on network shares and file systems where the caller may not set ACLs, failing
# the whole write for it would make files there unwritable.  Locally the merge practically never
# fails (the writer owns the new file, so it holds WRITE_DAC on it, and write access to the old
# one includes READ_CONTROL).  IGNORE_MERGE_ERRORS covers attributes and streams; Vista and later
# report ACL errors separately unless IGNORE_ACL_ERRORS is also given.
REPLACEFILE_FLAGS = REPLACEFILE_IGNORE_MERGE_ERRORS | REPLACEFILE_IGNORE_ACL_ERRORS

ERROR_INVALID_FUNCTION = 1
ERROR_FILE_NOT_FOUND = 2
ERROR_PATH_NOT_FOUND = 3
ERROR_ACCESS_DENIED = 5
ERROR_NOT_SAME_DEVICE = 17
ERROR_WRITE_PROTECT = 19
ERROR_SHARING_VIOLATION = 32
ERROR_LOCK_VIOLATION = 33
ERROR_HANDLE_DISK_FULL = 39
ERROR_NOT_SUPPORTED = 50
ERROR_FILE_EXISTS = 80
ERROR_INVALID_PARAMETER = 87
ERROR_DISK_FULL = 112
ERROR_ALREADY_EXISTS = 183
ERROR_FILENAME_EXCED_RANGE = 206
ERROR_UNABLE_TO_REMOVE_REPLACED = 1175
ERROR_UNABLE_TO_MOVE_REPLACEMENT = 1176
ERROR_DISK_QUOTA_EXCEEDED = 1295
# What Kernel32 returns for a call that failed without setting a last-error code.
ERROR_UNKNOWN = -1

# Refusals that pass once another program lets go of the file: retried.
RETRYABLE = frozenset({ERROR_ACCESS_DENIED, ERROR_SHARING_VIOLATION, ERROR_LOCK_VIOLATION})
# ReplaceFileW reports the same transient refusal on the old file as "could not remove the
# replaced file"; both files then keep their names, so it is retried too.
RETRYABLE_REPLACE = RETRYABLE | {ERROR_UNABLE_TO_REMOVE_REPLACED}
# ReplaceFileW is not implemented by this file system or redirector: MoveFileExW still publishes
# atomically (such file systems have no ACLs to carry over).
_NO_REPLACE_FILE = frozenset({ERROR_INVALID_FUNCTION, ERROR_NOT_SUPPORTED})

_ERRNO_BY_WINERROR: dict[int, int] = {
    ERROR_FILE_NOT_FOUND: errno.ENOENT,
    ERROR_PATH_NOT_FOUND: errno.ENOENT,
    ERROR_ACCESS_DENIED: errno.EACCES,
    ERROR_SHARING_VIOLATION: errno.EACCES,
    ERROR_LOCK_VIOLATION: errno.EACCES,
    ERROR_UNABLE_TO_REMOVE_REPLACED: errno.EACCES,
    ERROR_NOT_SAME_DEVICE: errno.EXDEV,
    ERROR_WRITE_PROTECT: errno.EROFS,
    ERROR_HANDLE_DISK_FULL: errno.ENOSPC,
    ERROR_DISK_FULL: errno.ENOSPC,
    ERROR_DISK_QUOTA_EXCEEDED: errno.EDQUOT,
    ERROR_FILE_EXISTS: errno.EEXIST,
    ERROR_ALREADY_EXISTS: errno.EEXIST,
    ERROR_FILENAME_EXCED_RANGE: errno.ENAMETOOLONG,
}

_NAMES: dict[int, str] = {
    ERROR_INVALID_FUNCTION: "ERROR_INVALID_FUNCTION",
    ERROR_FILE_NOT_FOUND: "ERROR_FILE_NOT_FOUND",
    ERROR_PATH_NOT_FOUND: "ERROR_PATH_NOT_FOUND",
    ERROR_ACCESS_DENIED: "ERROR_ACCESS_DENIED",
    ERROR_NOT_SAME_DEVICE: "ERROR_NOT_SAME_DEVICE",
    ERROR_WRITE_PROTECT: "ERROR_WRITE_PROTECT",
    ERROR_SHARING_VIOLATION: "ERROR_SHARING_VIOLATION",
    ERROR_LOCK_VIOLATION: "ERROR_LOCK_VIOLATION",
    ERROR_HANDLE_DISK_FULL: "ERROR_HANDLE_DISK_FULL",
    ERROR_NOT_SUPPORTED: "ERROR_NOT_SUPPORTED",
    ERROR_FILE_EXISTS: "ERROR_FILE_EXISTS",
    ERROR_INVALID_PARAMETER: "ERROR_INVALID_PARAMETER",
    ERROR_DISK_FULL: "ERROR_DISK_FULL",
    ERROR_ALREADY_EXISTS: "ERROR_ALREADY_EXISTS",
    ERROR_FILENAME_EXCED_RANGE: "ERROR_FILENAME_EXCED_RANGE",
    ERROR_UNABLE_TO_REMOVE_REPLACED: "ERROR_UNABLE_TO_REMOVE_REPLACED",
    ERROR_UNABLE_TO_MOVE_REPLACEMENT: "ERROR_UNABLE_TO_MOVE_REPLACEMENT",
    ERROR_DISK_QUOTA_EXCEEDED: "ERROR_DISK_QUOTA_EXCEEDED",
}

# --- retries ---------------------------------------------------------------------------------------

#: Tries of one refused call, the first included.
RETRY_ATTEMPTS = 10
_FIRST_DELAY = 0.001
_MAX_DELAY = 0.25


def retry_delays(attempts: int = RETRY_ATTEMPTS) -> list[float]:
    """The sleeps between ``attempts`` tries: 1, 2, 4... ms, each at most 250 ms.

    With the default 10 tries they add up to about half a second: long enough for a virus scanner
    to let go of a fresh file, short enough that a file held open for good fails promptly.
    """
    return [min(_FIRST_DELAY * 2**i, _MAX_DELAY) for i in range(max(attempts - 1, 0))]


def winerror_to_errno(code: int) -> int:
    """The errno matching a Win32 error code (0 when none does), for the error hierarchy."""
    return _ERRNO_BY_WINERROR.get(code, 0)


def winerror_error(code: int, location: str, action: str) -> AtomicOSError:
    """The error hierarchy's exception for a Win32 call that failed with ``code`` while
    ``action`` (``"publishing the directory"``...), its untranslated error attached."""
    number = winerror_to_errno(code)
    text = os.strerror(number) if number else "unexpected error"
    cause = OSError(number, f"{text} (Windows error {code}: {_NAMES.get(code, 'unknown')})", location)
    error = os_error(cause, location, action)
    error.__cause__ = cause
    return error


# --- the kernel32 calls ----------------------------------------------------------------------------


class Kernel32(ABC):
    """The Win32 calls this strategy makes.  Each returns 0 on success, else the Win32 error code.

    The real one wraps kernel32.dll through ctypes; tests inject a fake that records the calls.
    """

    @abstractmethod
    def move_file_ex(self, src: str, dst: str, flags: int) -> int:
        """``MoveFileExW(src, dst, flags)``."""

    @abstractmethod
    def replace_file(self, replaced: str, replacement: str, flags: int) -> int:
        """``ReplaceFileW(replaced, replacement, NULL, flags, NULL, NULL)``: no backup file."""

    @abstractmethod
    def can_delete(self, path: str) -> int:
        """Whether ``path`` could be deleted now, without deleting it: 0, or why not.

        ``ERROR_SHARING_VIOLATION`` means some handle to it does not share delete access.
        """

    @abstractmethod
    def delete_file(self, path: str) -> int:
        """``DeleteFileW(path)``: never follows a symlink, refuses a file open without
        ``FILE_SHARE_DELETE`` (``ERROR_SHARING_VIOLATION``)."""

    @abstractmethod
    def process_alive(self, pid: int) -> bool:
        """Whether a process with this id is running on this host (when unsure: True)."""

    @abstractmethod
    def hold_directory(self, path: str) -> tuple[int, int]:
        """Open the directory ``path`` sharing read and write access but not delete:
        ``(0, handle)``, or ``(error, 0)``.

        While the handle is open nobody, this process included, can delete or rename the
        directory (`can_delete` answers ``ERROR_SHARING_VIOLATION``); the files inside stay
        free to create, write and delete.  Never follows a link.
        """

    @abstractmethod
    def close_handle(self, handle: int) -> None:
        """``CloseHandle(handle)``, for a handle `hold_directory` returned."""


if sys.platform == "win32":
    import ctypes
    from ctypes import wintypes

    _DELETE = 0x00010000
    _FILE_SHARE_ALL = 0x1 | 0x2 | 0x4  # FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE
    _OPEN_EXISTING = 3
    _FILE_FLAG_OPEN_REPARSE_POINT = 0x00200000
    # Needed to open a directory at all.
    _FILE_FLAG_BACKUP_SEMANTICS = 0x02000000
    # FILE_READ_DATA on a directory: an access right that takes part in the share-mode check (an
    # open asking only for attributes does not, and would hold nothing).
    _FILE_LIST_DIRECTORY = 0x0001
    _FILE_SHARE_READ_WRITE = 0x1 | 0x2
    _PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
    _STILL_ACTIVE = 259
    _INVALID_HANDLE_VALUE = ctypes.c_void_p(-1).value

    def _declare(function: Any, result: Any, *arguments: Any) -> Any:
        """A kernel32 function with its C signature set: ctypes then converts and checks the
        arguments instead of guessing (a 64-bit HANDLE passed as a 32-bit int, say)."""
        function.argtypes = list(arguments)
        function.restype = result
        return function

    class _Win32Kernel32(Kernel32):
        """kernel32.dll through ctypes."""

        def __init__(self) -> None:
            # A private WinDLL (not ctypes.windll.kernel32, shared by every module of the process)
            # so our argtypes are ours alone; use_last_error keeps GetLastError safe from ctypes'
            # own calls between the failing call and the read.
            dll = ctypes.WinDLL("kernel32", use_last_error=True)
            text, flags, handle, boolean = wintypes.LPCWSTR, wintypes.DWORD, wintypes.HANDLE, wintypes.BOOL
            pointer = wintypes.LPVOID
            self._move_file_ex = _declare(dll.MoveFileExW, boolean, text, text, flags)
            self._replace_file = _declare(dll.ReplaceFileW, boolean, text, text, text, flags, pointer, pointer)
            self._delete_file = _declare(dll.DeleteFileW, boolean, text)
            self._create_file = _declare(dll.CreateFileW, handle, text, flags, flags, pointer, flags, flags, handle)
            self._close_handle = _declare(dll.CloseHandle, boolean, handle)
            self._open_process = _declare(dll.OpenProcess, handle, flags, boolean, flags)
            self._get_exit_code_process = _declare(dll.GetExitCodeProcess, boolean, handle, wintypes.LPDWORD)

        @staticmethod
        def _error() -> int:
            return ctypes.get_last_error() or ERROR_UNKNOWN

        def move_file_ex(self, src: str, dst: str, flags: int) -> int:
            return 0 if self._move_file_ex(src, dst, flags) else self._error()

        def replace_file(self, replaced: str, replacement: str, flags: int) -> int:
            return 0 if self._replace_file(replaced, replacement, None, flags, None, None) else self._error()

        def delete_file(self, path: str) -> int:
            return 0 if self._delete_file(path) else self._error()

        def can_delete(self, path: str) -> int:
            # Asking for DELETE access is exactly what a live writer's share mode refuses; sharing
            # everything ourselves disturbs nobody; OPEN_REPARSE_POINT never follows a link.
            # BACKUP_SEMANTICS: a staging directory is probed the same way as a temp file.
            handle = self._create_file(
                path,
                _DELETE,
                _FILE_SHARE_ALL,
                None,
                _OPEN_EXISTING,
                _FILE_FLAG_OPEN_REPARSE_POINT | _FILE_FLAG_BACKUP_SEMANTICS,
                None,
            )
            if handle is None or handle == _INVALID_HANDLE_VALUE:
                return self._error()
            self._close_handle(handle)
            return 0

        def hold_directory(self, path: str) -> tuple[int, int]:
            handle = self._create_file(
                path,
                _FILE_LIST_DIRECTORY,
                _FILE_SHARE_READ_WRITE,
                None,
                _OPEN_EXISTING,
                _FILE_FLAG_OPEN_REPARSE_POINT | _FILE_FLAG_BACKUP_SEMANTICS,
                None,
            )
            if handle is None or handle == _INVALID_HANDLE_VALUE:
                return self._error(), 0
            return 0, int(handle)

        def close_handle(self, handle: int) -> None:
            self._close_handle(handle)

        def process_alive(self, pid: int) -> bool:
            if not 0 < pid <= 0xFFFFFFFF:
                return False
            # The least access right there is, granted for nearly every process of any user.
            handle = self._open_process(_PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
            if not handle:
                # ERROR_INVALID_PARAMETER: no process has this id.  Anything else (access denied
                # to a protected process) means one exists.
                return ctypes.get_last_error() != ERROR_INVALID_PARAMETER
            try:
                code = wintypes.DWORD()
                # A process that exited but whose handle someone still holds can be opened too;
                # only STILL_ACTIVE means it runs.
                if not self._get_exit_code_process(handle, ctypes.byref(code)):
                    return True
                return code.value == _STILL_ACTIVE
            finally:
                self._close_handle(handle)


_kernel32: Kernel32 | None = None


def load_kernel32() -> Kernel32:
    """The real kernel32, loaded on first use; on other systems, UnsupportedTargetError."""
    global _kernel32
    if sys.platform == "win32":
        if _kernel32 is None:
            _kernel32 = _Win32Kernel32()
        return _kernel32
    raise UnsupportedTargetError(
        f"the Windows strategy needs kernel32.dll, which {sys.platform!r} lacks; pass kernel32= to run it elsewhere"
    )


# --- the strategy ----------------------------------------------------------------------------------


_O_BINARY = getattr(os, "O_BINARY", 0)
# Python makes every descriptor non-inheritable anyway (PEP 446); O_NOINHERIT says so at creation.
_O_NOINHERIT = getattr(os, "O_NOINHERIT", getattr(os, "O_CLOEXEC", 0))
# Only for the tests on POSIX: opening a FIFO planted at the target's name must not block.
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


def _strip_extended_prefix(link: str) -> str:
    r"""``\\?\C:\x`` -> ``C:\x`` and ``\\?\UNC\srv\share`` -> ``\\srv\share``, as os.readlink
    returns a link's substitute name; other forms, and paths too long without it, unchanged."""
    if link.startswith("\\\\?\\UNC\\"):
        plain = "\\\\" + link[8:]
    elif link.startswith("\\\\?\\") and link[5:7] == ":\\":
        plain = link[4:]
    else:
        return link
    return plain if len(plain) < 260 else link


class WindowsPendingWrite(LocalPendingWrite):
    """A write in flight under the Windows protocol."""

    __slots__ = ("_keep_temp", "_kernel32", "_strategy", "_use_replace_file")

    def __init__(
        self,
        *,
        strategy: WindowsStrategy,
        kernel32: Kernel32,
        location: str,
        target: str,
        fd: int,
        temp: str,
        use_replace_file: bool,
        options: WriteOptions,
    ) -> None:
        super().__init__(location=location, target=target, fd=fd, temp=temp, options=options)
        self._strategy = strategy
        self._kernel32 = kernel32
        self._use_replace_file = use_replace_file
        # Set when ReplaceFileW may have removed the old file and the new content exists only
        # under the temp name: then a failure must keep the temp, never delete it.
        self._keep_temp = False

    def _flush(self, fd: int) -> None:
        os.fsync(fd)  # FlushFileBuffers

    def _publish_flushed(self, fd: int) -> CommitResult:
        temp = self._temp
        assert temp is not None
        options = self._options
        self._step = "closing the temp file"
        # Before publishing too: the handle does not share delete access, which a rename needs.
        self._close_temp_checked(fd)
        if options.permissions is not None:
            self._step = "setting the temp file's permissions"
            # On Windows a mode means only the read-only attribute (set when 0o200 is absent);
            # set on the closed temp, so it is right from the instant the file is published.
            os.chmod(temp, options.permissions)
        self._step = "reading the temp file's status"
        # After close: the file is complete and its times final.  A rename keeps both.
        version = LocalVersion.from_stat(os.lstat(temp))
        if options.if_match is not None:
            self._step = "checking the target's version"
            self._check_version()
        self._step = "publishing"
        used_replace_file = self._publish(temp)
        return self._after_publish(version, used_replace_file)

    def _check_version(self) -> None:
        try:
            current: LocalVersion | None = LocalVersion.from_stat(os.lstat(self._target))
        except FileNotFoundError:
            current = None
        require_version(self._location, self._options.if_match, current)

    def _publish(self, temp: str) -> bool:
        """Give the temp file the target's name; True if ReplaceFileW did it.  Raises on failure."""
        kernel32, target, options = self._kernel32, self._target, self._options
        # WRITE_THROUGH: return only once the rename is on disk (there is no directory fsync).
        through = MOVEFILE_WRITE_THROUGH if options.durability == "full" else 0
        retry = self._strategy.retry
        if options.exclusive:
            # Without REPLACE_EXISTING the existence check and the rename are one atomic call.
            code = retry(lambda: kernel32.move_file_ex(temp, target, through), RETRYABLE)
            if code in (ERROR_ALREADY_EXISTS, ERROR_FILE_EXISTS):
                raise TargetExistsError.at(self._location)
            if code:
                raise self._failure(code, "MoveFileExW (exclusive)", RETRYABLE)
            self._published()
            return False
        if self._use_replace_file:
            # ReplaceFileW gives the new file the old one's DACL, attributes, creation time and
            # named streams, then swaps the names; no backup name, so nothing else is left behind.
            code = retry(lambda: kernel32.replace_file(target, temp, REPLACEFILE_FLAGS), RETRYABLE_REPLACE)
            if code == 0:
                self._published()
                return True
            if code == ERROR_UNABLE_TO_MOVE_REPLACEMENT:
                # Documented: "the replaced file no longer exists and the replacement file exists
                # under its original name".  Give the target its name back at once; should that
                # fail, the temp is the only copy of the content, and is kept.
                self._keep_temp = True
            elif code in (ERROR_FILE_NOT_FOUND, ERROR_PATH_NOT_FOUND) and os.path.lexists(temp):
                pass  # the old target vanished since begin(): nothing left to preserve, so move
            elif code not in _NO_REPLACE_FILE:
                raise self._failure(code, "ReplaceFileW", RETRYABLE_REPLACE)
        # One rename that replaces the name if present: the name never stops existing.
        code = retry(lambda: kernel32.move_file_ex(temp, target, MOVEFILE_REPLACE_EXISTING | through), RETRYABLE)
        if code:
            raise self._failure(code, "MoveFileExW", RETRYABLE)
        self._published()
        return False

    def _published(self) -> None:
        """The temp file is the target now: never delete its old name again."""
        self._temp = None
        self._keep_temp = False
        self._done = True

    def _failure(self, code: int, call: str, retryable: Collection[int]) -> AtomicOSError:
        """The error hierarchy's exception for a failed publishing call."""
        number = winerror_to_errno(code)
        if number == errno.EACCES and os.path.isdir(self._target):
            number = errno.EISDIR  # MoveFileExW refuses to replace a directory with ACCESS_DENIED
        text = os.strerror(number) if number else "unexpected error"
        detail = f"{text} (Windows error {code}: {_NAMES.get(code, 'unknown')})"
        if code in retryable:
            attempts = self._strategy.attempts
            detail += (
                f", still after {attempts} tries over {sum(retry_delays(attempts)):.2f} s; another program (a"
                " virus scanner, an indexer, a reader without FILE_SHARE_DELETE) may hold the file open,"
                " or the target is read-only"
            )
        if self._keep_temp and self._temp is not None and not os.path.lexists(self._target):
            detail += f"; the old file is gone and the new content was kept in {self._temp!r}"
        else:
            self._keep_temp = False
        cause = OSError(number, detail, self._location)
        error = os_error(cause, self._location, f"publishing with {call}")
        # As ``raise error from cause`` would: the untranslated error stays attached.
        error.__cause__ = cause
        return error

    def _after_publish(self, version: LocalVersion, used_replace_file: bool) -> CommitResult:
        """Durability and the result.  The new content is published: never delete anything now."""
        options = self._options
        achieved: Durability = options.durability
        if used_replace_file:
            durable, version = self._settle_replaced(version)
            if not durable:
                achieved = "file"
        return self._report(
            version,
            achieved,
            self._strategy.name,
            "it could not be flushed after ReplaceFileW (another program holds it without sharing write access)",
        )

    def _settle_replaced(self, version: LocalVersion) -> tuple[bool, LocalVersion]:
        """After ReplaceFileW: flush the published file when ``"full"`` was asked, and read its
        version again (ReplaceFileW rewrites its times and attributes).  ``(durable, version)``:
        durable is False only when the flush that ``"full"`` needs was refused."""
        target = self._target
        durable = self._options.durability != "full"
        try:
            if durable:
                st = os.lstat(target)
            else:
                # Opened for writing (FlushFileBuffers needs GENERIC_WRITE), never created or
                # truncated; nothing is written through it.
                fd = self._strategy.retry_os(
                    lambda: os.open(target, os.O_WRONLY | _O_BINARY | _O_NOINHERIT | _O_NONBLOCK)
                )
                try:
                    # Flushes what ReplaceFileW merged into the file and, on NTFS, commits the
                    # metadata log that holds the rename: the write-through ReplaceFileW lacks.
                    os.fsync(fd)
                    durable = True
                    st = os.fstat(fd)
                finally:
                    os.close(fd)
        except OSError:
            return durable, version
        if (st.st_dev, st.st_ino) != (version.device, version.inode):
            return durable, version  # already replaced by another writer: ours is the older version
        return durable, LocalVersion.from_stat(st)

    def _drop_temp(self, temp: str | None) -> None:
        if temp is not None and not self._keep_temp:
            self._strategy.remove_temp(temp)


class WindowsStrategy(LocalStrategy):
    """Local files on Windows.

    ``kernel32`` replaces the real kernel32.dll (tests); ``sleep`` and ``attempts`` shape the
    retries of calls that another program refuses for a moment.
    """

    name = "windows"

    def __init__(
        self,
        *,
        kernel32: Kernel32 | None = None,
        sleep: Callable[[float], None] = time.sleep,
        attempts: int = RETRY_ATTEMPTS,
    ) -> None:
        self._kernel32 = kernel32
        self._sleep = sleep
        self.attempts = max(attempts, 1)

    @property
    def kernel32(self) -> Kernel32:
        if self._kernel32 is None:
            self._kernel32 = load_kernel32()
        return self._kernel32

    def retry(self, call: Callable[[], int], retryable: Collection[int]) -> int:
        """Run a Win32 call until it succeeds, fails for good, or its tries are spent."""
        code = call()
        for delay in retry_delays(self.attempts):
            if code not in retryable:
                break
            self._sleep(delay)
            code = call()
        return code

    def retry_os(self, call: Callable[[], _T]) -> _T:
        """Run an ``os`` call, retrying PermissionError (how the C runtime reports a sharing
        violation) like `retry`."""
        for delay in retry_delays(self.attempts):
            try:
                return call()
            except PermissionError:
                self._sleep(delay)
        return call()

    def remove_temp(self, temp: str) -> None:
        """Delete an unpublished temp file, best effort: sweep() gets what this cannot."""
        try:
            # A mode without 0o200 made it read-only, which DeleteFileW refuses: clear that first.
            if not os.lstat(temp).st_mode & stat.S_IWRITE:
                os.chmod(temp, stat.S_IREAD | stat.S_IWRITE)
            # DeleteFileW; a scanner that just opened the fresh file refuses it for a moment.
            self.retry_os(lambda: os.unlink(temp))
        except OSError:
            pass

    def read_link(self, path: str, location: str) -> str | None:
        # No sticky directories on Windows: who owns a link does not decide whether to follow it.
        # islink: only true symlinks count (a junction is a directory here, and is refused).
        if not os.path.islink(path):
            return None
        try:
            return _strip_extended_prefix(os.readlink(path))
        except FileNotFoundError:
            return None  # removed since islink: path names nothing, so it is the target
        except OSError as exc:
            raise os_error(exc, path, "reading the symlink") from exc

    def begin(self, location: str, options: WriteOptions) -> WindowsPendingWrite:
        # Loaded first: on a system without kernel32 nothing gets created.
        kernel32 = self.kernel32
        target = self.resolve(location, self.follows_symlinks(options))
        old = self._existing(target, location, options)
        # ReplaceFileW only for a regular file whose metadata is to be kept: an explicit mode wins
        # over the old file's, and ReplaceFileW would follow a symlink that is to be replaced.
        use_replace_file = (
            old is not None
            and stat.S_ISREG(old.st_mode)
            and options.preserve_permissions
            and options.permissions is None
            and not options.exclusive
        )
        fd, temp = self._create_temp(target, location)
        try:
            return WindowsPendingWrite(
                strategy=self,
                kernel32=kernel32,
                location=location,
                target=target,
                fd=fd,
                temp=temp,
                use_replace_file=use_replace_file,
                options=options,
            )
        except BaseException:
            os.close(fd)
            self.remove_temp(temp)
            raise

    def _existing(self, target: str, location: str, options: WriteOptions) -> os.stat_result | None:
        """The current target's status (None if absent), refusing what must not be replaced."""
        try:
            # lstat: a symlink still here was not to be followed, and is itself replaced.
            old = os.lstat(target)
        except FileNotFoundError:
            old = None
        except OSError as exc:
            raise os_error(exc, location, "reading the target's status") from exc
        self.vet_existing(old, location, options)
        return old

    def _create_temp(self, target: str, location: str) -> tuple[int, str]:
        """Create and open a new temp file beside ``target``: ``(fd, path)``."""
        parent, name = os.path.split(target)
        while True:
            candidate = os.path.join(parent, temp_name(name))
            try:
                # O_EXCL is CREATE_NEW: never reuse or open anything already there (a planted
                # link, a stale temp).  O_BINARY: no newline translation.  0o600 has the write
                # bit, so the temp is not read-only; its ACL is inherited from the directory,
                # like any new file's.  The CRT opens it without FILE_SHARE_DELETE: the liveness
                # mark sweep() relies on, held from this instant until commit.
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY | _O_NOINHERIT
                return os.open(candidate, flags, 0o600), candidate
            except FileExistsError:
                continue
            except OSError as exc:
                raise os_error(exc, location, "creating the temp file") from exc

    def writer_alive(self, host: str, pid: int) -> bool | None:
        # OpenProcess, never os.kill, which terminates the process on Windows.
        return self.kernel32.process_alive(pid) if host == host_tag() else None

    def remove_if_stale(
        self, directory: str, entry: str, *, writer: tuple[str, int], cutoff: float, dry_run: bool
    ) -> bool:
        """The Windows rule, one test after another:

        1. only regular files (never a link or a directory under a temp-like name);
        2. a temp whose writer may be alive (another host, or a running pid here) is kept unless
           it was last modified before ``cutoff`` and more than FRESH_TEMP_GRACE ago;
        3. a live writer holds its temp open without FILE_SHARE_DELETE, so Windows itself
           refuses to delete it (ERROR_SHARING_VIOLATION): such a temp is kept, however old.

        Liveness comes from OpenProcess, never from ``os.kill``, which terminates the process.
        """
        path = os.path.join(directory, entry)
        st = leftover_status(path, stat.S_ISREG)
        if st is None:
            return False
        old_enough = st.st_mtime < cutoff and st.st_mtime < time.time() - FRESH_TEMP_GRACE
        if not old_enough and self.writer_alive(*writer) is not False:
            return False
        if dry_run:
            # Open for DELETE access, the one thing a live writer's share mode refuses.
            return self.kernel32.can_delete(path) == 0
        code = self.kernel32.delete_file(path)
        if code == ERROR_ACCESS_DENIED and not st.st_mode & stat.S_IWRITE:
            # Left read-only by a writer that died between setting the mode and publishing.
            try:
                os.chmod(path, stat.S_IREAD | stat.S_IWRITE)
            except OSError:
                return False
            code = self.kernel32.delete_file(path)
        return code == 0
