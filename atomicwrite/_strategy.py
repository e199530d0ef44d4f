"""The strategy interface and the one place where a strategy is chosen for a target.

A *strategy* knows how to make a write all-or-nothing on one kind of storage: the POSIX
protocol, the Windows one, an object store.  Strategies are registered by protocol, the way
fsspec registers its file systems, and imported only when a target of theirs is first written.
"""

from __future__ import annotations

import importlib
import io
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, Protocol

from ._errors import UnsupportedTargetError, UsageError
from ._record import Record
from ._result import CommitResult, Durability

__all__ = [
    "PendingWrite",
    "ProgressCallback",
    "Strategy",
    "TargetLock",
    "WriteOptions",
    "register_strategy",
    "resolve_target",
    "split_protocol",
]


class ProgressCallback(Protocol):
    """Told how many more bytes reached the storage: ``fsspec.callbacks.Callback`` fits (and so
    ``fsspec.callbacks.TqdmCallback`` for a progress bar)."""

    def relative_update(self, inc: int = 1) -> Any: ...


class WriteOptions(Record):
    """Everything a strategy needs to know about one write, validated by the public API."""

    exclusive: bool
    durability: Durability
    accept_weaker_durability: bool
    preserve_permissions: bool
    permissions: int | None
    follow_symlinks: bool
    if_match: object | None
    storage_options: Mapping[str, Any]
    progress: ProgressCallback | None
    #: The algorithm to hash the content with (one of ``_checksums.CHECKSUMS``), ``"auto"`` for
    #: the strategy's default, or None for no checksum.
    checksum: str | None
    _fields = (
        "exclusive",
        "durability",
        "accept_weaker_durability",
        "preserve_permissions",
        "permissions",
        "follow_symlinks",
        "if_match",
        "storage_options",
        "progress",
        "checksum",
    )

    def __init__(  # noqa: PLR0917 - positional, like the dataclass it was
        self,
        exclusive: bool = False,
        durability: Durability = "full",
        accept_weaker_durability: bool = False,
        preserve_permissions: bool = True,
        permissions: int | None = None,
        follow_symlinks: bool = True,
        if_match: object | None = None,
        storage_options: Mapping[str, Any] | None = None,
        progress: ProgressCallback | None = None,
        checksum: str | None = "auto",
    ) -> None:
        self.__dict__.update(
            exclusive=exclusive,
            durability=durability,
            accept_weaker_durability=accept_weaker_durability,
            preserve_permissions=preserve_permissions,
            permissions=permissions,
            follow_symlinks=follow_symlinks,
            if_match=if_match,
            storage_options={} if storage_options is None else storage_options,
            progress=progress,
            checksum=checksum,
        )

    def __hash__(self) -> int:
        # storage_options is a dict: options are compared, never used as keys.
        raise TypeError("WriteOptions is not hashable")


class PendingWrite(ABC):
    """One write in flight: bytes go to `stream`; then exactly one of commit or discard."""

    __slots__ = ()

    @property
    @abstractmethod
    def stream(self) -> io.RawIOBase:
        """The unbuffered stream the new content is written to (a temp file, an upload...)."""

    @abstractmethod
    def commit(self) -> CommitResult:
        """Publish the new content atomically.  On failure, discard and raise."""

    @abstractmethod
    def discard(self) -> None:
        """Drop the new content; the target is left as it was.  Safe to call more than once."""

    #: Whether `commit` splits into `stage`, `publish_staged` and `finish_staged`, which lets
    #: [`atomic_batch`][atomicwrite.atomic_batch] flush each directory once for many files.  A
    #: strategy that cannot split is committed whole, file by file, in the batch's publish step.
    can_stage: bool = False

    def stage(self) -> None:
        """Flush the content to storage without publishing it.  On failure, discard and raise."""
        raise NotImplementedError

    def begin_stage(self) -> None:
        """Prepare `stage` without waiting, as soon as the content is complete: a batch calls it
        for each file as it is finished and `stage` later, for several files in a row.  May do
        nothing; on failure, discard and raise."""
        return

    def start_flush(self) -> None:
        """Start writing the content to storage without waiting (a hint, never a flush): a
        batch calls it for every file of a group, then `stage` for each.  May do nothing."""
        return

    def publish_staged(self, previous: PendingWrite | None = None) -> str | None:
        """Publish a staged write; return the directory whose flush is still due (None: none is).

        ``previous`` is the write published just before this one, whose open handles (a
        directory's descriptor) this one may take over.  On failure, discard and raise."""
        raise NotImplementedError

    def flush_directory(self) -> bool:
        """Flush the directory named by `publish_staged` (False: the file system cannot)."""
        raise NotImplementedError

    def finish_staged(self, directory_flushed: bool) -> CommitResult:
        """Release what a published write still holds and report what it achieved."""
        raise NotImplementedError


class TargetLock(ABC):
    """An exclusive lock on one target, shared by every writer that asks for it."""

    @abstractmethod
    def release(self) -> None:
        """Release the lock.  Safe to call more than once."""


class Strategy(ABC):
    """How to write atomically to one kind of storage."""

    #: Short name, reported in [`CommitResult`][atomicwrite.CommitResult].
    name: str = ""

    @abstractmethod
    def begin(self, location: str, options: WriteOptions) -> PendingWrite:
        """Start a write to ``location`` (a path or URI, as given by the caller)."""

    @abstractmethod
    def read(self, location: str, options: WriteOptions) -> bytes | None:
        """The current content of ``location``, or None if it does not exist."""

    @abstractmethod
    def lock(self, location: str, options: WriteOptions) -> TargetLock:
        """Block until this process holds the exclusive lock of ``location``."""

    @abstractmethod
    def sweep(self, location: str, older_than: float, dry_run: bool, options: WriteOptions) -> list[str]:
        """Remove what dead writers left under ``location``; return what was (or would be) removed."""


# protocol -> "module:attribute" naming a Strategy subclass; imported on first use.
_REGISTRY: dict[str, str] = {}
_INSTANCES: dict[str, Strategy] = {}

_LOCAL_STRATEGY = (
    "atomicwrite._local.windows:WindowsStrategy"
    if sys.platform == "win32"
    else "atomicwrite._local.posix:PosixStrategy"
)


def register_strategy(protocols: str | tuple[str, ...], implementation: str, *, replace: bool = False) -> None:
    """Register a strategy (``"package.module:ClassName"``) for one or more URL protocols."""
    for protocol in (protocols,) if isinstance(protocols, str) else protocols:
        if protocol in _REGISTRY and not replace and _REGISTRY[protocol] != implementation:
            raise UsageError(f"protocol {protocol!r} already has a strategy: {_REGISTRY[protocol]}")
        _REGISTRY[protocol] = implementation
        _INSTANCES.pop(protocol, None)


register_strategy(("", "file", "local"), _LOCAL_STRATEGY)
register_strategy(("s3", "s3a"), "atomicwrite._stores.s3:S3Strategy")
register_strategy(("gs", "gcs"), "atomicwrite._stores.gcs:GCSStrategy")
register_strategy(("az", "abfs", "abfss"), "atomicwrite._stores.azure:AzureStrategy")
register_strategy("memory", "atomicwrite._stores.memory:MemoryStrategy")


def split_protocol(target: str) -> tuple[str, str]:
    """Split ``"s3://bucket/key"`` into ``("s3", "bucket/key")``; a plain path has protocol ``""``.

    Only ``scheme://`` counts as a protocol, so a Windows drive (``C:\\data``) stays a path.
    """
    scheme, sep, rest = target.partition("://")
    if sep and scheme and scheme.replace("+", "").replace("-", "").replace(".", "").isalnum() and len(scheme) > 1:
        return scheme.lower(), rest
    return "", target


def resolve_target(target: str | os.PathLike[str]) -> tuple[Strategy, str]:
    """Choose the strategy for ``target`` and return it with the location it should be given."""
    # os.fspath, not isinstance(target, os.PathLike): the ABC check costs a Path target more.
    try:
        text = os.fspath(target)
    except TypeError as exc:  # chained: a path-like object's own __fspath__ may have failed
        raise UsageError(f"target must be a str or os.PathLike[str], not {type(target).__name__}") from exc
    if not isinstance(text, str):
        raise UsageError(f"target must be a str path, not {type(text).__name__}")
    if not text:
        raise UsageError("target is an empty path")
    # A plain path (most targets) skips the parsing.
    protocol, rest = split_protocol(text) if "://" in text else ("", text)
    strategy = _INSTANCES.get(protocol)
    if strategy is None:
        if protocol not in _REGISTRY:
            raise UnsupportedTargetError(
                f"no atomic strategy for {protocol!r} URLs ({text!r}); registered: "
                + ", ".join(sorted(p for p in _REGISTRY if p))
            )
        module_name, _, attribute = _REGISTRY[protocol].partition(":")
        strategy_class = getattr(importlib.import_module(module_name), attribute)
        strategy = _INSTANCES[protocol] = strategy_class()
    location = rest if protocol in ("file", "local") else text
    return strategy, location
