"""The error hierarchy.

Every error this library raises derives from [`AtomicWriteError`][atomicwrite.AtomicWriteError].
Errors that come from the operating system also derive from the matching builtin
(``FileExistsError``, ``PermissionError``, ``IsADirectoryError``, ``FileNotFoundError``...), so
``except FileExistsError`` keeps working, and they keep ``errno`` and ``filename``.
"""

from __future__ import annotations

import errno as _errno
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from ._result import CommitResult

_Result = TypeVar("_Result")

__all__ = [
    "AtomicOSError",
    "AtomicPermissionError",
    "AtomicWriteError",
    "CommitCallbackError",
    "ConflictError",
    "CrossDeviceError",
    "DistributedAbortError",
    "DurabilityError",
    "NoSpaceError",
    "OverlayDirectoryError",
    "SerializerNotFoundError",
    "TargetExistsError",
    "TargetIsADirectoryError",
    "TargetNotFoundError",
    "UnsupportedTargetError",
    "UsageError",
]


class AtomicWriteError(Exception):
    """Root of every error raised by atomicwrite."""


class UsageError(AtomicWriteError, ValueError):
    """An argument is invalid (unknown mode, durability level, ...).  Nothing was touched."""


class SerializerNotFoundError(AtomicWriteError, LookupError):
    """No serializer is registered under that name (builtin or entry point)."""


class UnsupportedTargetError(AtomicWriteError, ValueError):
    """The target cannot be written atomically: unknown protocol, or not a regular file."""


class ConflictError(AtomicWriteError):
    """A conditional write lost: the target's version is not the one given in ``if_match``.

    The target was left as it was; ``expected`` and ``actual`` hold the two versions.
    """

    def __init__(self, message: str, *, expected: object, actual: object) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class DurabilityError(AtomicWriteError):
    """The write was published, but the durability asked for could not be reached.

    The new content *is* in place (atomically); what failed is the flush that makes it survive
    a power loss, e.g. a directory fsync refused with EINVAL on CIFS, vboxsf or WSL DrvFs.
    ``result`` is the commit result, whose ``durability`` says what was achieved.  Pass
    ``accept_weaker_durability=True`` to get the result instead of this error.
    """

    def __init__(self, message: str, *, result: CommitResult) -> None:
        super().__init__(message)
        self.result = result


class CommitCallbackError(AtomicWriteError, Generic[_Result]):
    """A write committed, then its ``on_commit`` callback raised (that exception is ``__cause__``).

    The new content *is* in place, with the durability ``result`` reports (a `CommitResult`, or
    a `DirectoryCommitResult` for a directory): this is not a failed write, and nothing was
    rolled back.
    """

    def __init__(self, message: str, *, result: _Result) -> None:
        super().__init__(message)
        self.result = result


class DistributedAbortError(AtomicWriteError):
    """Another rank failed during a multi-rank save (``atomicwrite.distributed``), so nothing
    was published.  The rank that failed raises its own error; the others raise this one."""


class AtomicOSError(AtomicWriteError, OSError):
    """An operating-system call of the write protocol failed.  Keeps ``errno`` and ``filename``."""


class TargetExistsError(AtomicOSError, FileExistsError):
    """Exclusive creation (mode ``"x"``) found the target already there."""

    @classmethod
    def at(cls, target: str) -> TargetExistsError:
        """The error for ``target``, as every strategy reports it."""
        return cls(_errno.EEXIST, f"cannot create {target!r}: it already exists", target)


class TargetNotFoundError(AtomicOSError, FileNotFoundError):
    """The target's directory does not exist (or vanished during the write)."""


class AtomicPermissionError(AtomicOSError, PermissionError):
    """The operating system refused the write (read-only directory, no permission...)."""


class TargetIsADirectoryError(AtomicOSError, IsADirectoryError):
    """The target is a directory; only files are replaced."""


class NoSpaceError(AtomicOSError):
    """The file system is full, a quota is exhausted, or the file grew past a size limit."""


class CrossDeviceError(AtomicOSError):
    """The temporary file and the target are on different file systems.

    atomicwrite never falls back to a copy across file systems: a copy is not atomic.
    """


class OverlayDirectoryError(CrossDeviceError):
    """The directory to replace comes from a lower layer of an overlayfs mount (a container
    image's layer, for instance), and overlayfs renames such a directory only when mounted with
    ``redirect_dir=on``.  Raised by [`atomic_directory`][atomicwrite.atomic_directory] before
    anything is written: the old directory is untouched.
    """


_BY_ERRNO: dict[int, type[AtomicOSError]] = {
    _errno.EEXIST: TargetExistsError,
    _errno.ENOENT: TargetNotFoundError,
    _errno.EACCES: AtomicPermissionError,
    _errno.EPERM: AtomicPermissionError,
    _errno.EROFS: AtomicPermissionError,
    _errno.EISDIR: TargetIsADirectoryError,
    _errno.ENOSPC: NoSpaceError,
    _errno.EDQUOT: NoSpaceError,
    _errno.EFBIG: NoSpaceError,
    _errno.EXDEV: CrossDeviceError,
}


def os_error(exc: OSError, target: str, action: str, *, verb: str = "write") -> AtomicOSError:
    """Translate ``exc`` into the matching [`AtomicOSError`][atomicwrite.AtomicOSError], naming the target and the step.

    Raise it ``from exc``, so the original error stays attached as the cause.
    """
    cls = _BY_ERRNO.get(exc.errno or 0, AtomicOSError)
    cause = exc.strerror or str(exc)
    message = f"cannot {verb} {target!r}: {action} failed: {cause}"
    return cls(exc.errno or 0, message, exc.filename if exc.filename is not None else target)
