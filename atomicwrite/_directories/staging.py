"""The staging directory a caller writes a directory's files into, and the transaction that
publishes it: the part of a directory write that is the same on every kind of storage."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, Literal

from .._callbacks import notify
from .._errors import (
    UsageError,
    os_error,
)
from .._local.base import flush_to_disk, start_writeback
from .manifest import (
    DirectoryCommitCallback,
    DirectoryCommitResult,
    FileEntry,
    check_name,
    digest_fd,
    digest_stream,
    inside,
    manifest_algorithm,
)

__all__ = [
    "DirectoryTransaction",
    "StagingDirectory",
    "TimedTransaction",
    "describe_files",
    "flush_and_describe",
]

_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)

#: Staged files held open together while they are flushed: enough for the disk to work on many
#: small files at once, far below the usual limit of 1,024 descriptors per process.
_FLUSH_GROUP = 64


class StagingDirectory:
    """Where the files of a directory being written go, until it is published.

    ``stage / "model.pt"`` (or ``stage.path("model.pt")``) is the path or URL to write that file
    at, with any library; [`open`][atomicwrite.StagingDirectory.open] opens one for writing.
    For a local target ``os.fspath(stage)`` is the staging directory itself, so libraries that
    want a directory (``FileSystemWriter``, ``save_pretrained``) can be handed ``stage``.
    Names handed out here are also the files this process declares as its own (see
    [`declared`][atomicwrite.StagingDirectory.declared]).
    """

    def __init__(
        self, location: str, *, local: bool, storage_options: Mapping[str, Any], flush_needs_write: bool = False
    ) -> None:
        self.location = location
        self.local = local
        #: Whether a staged file must be opened for writing to be flushed (Windows:
        #: FlushFileBuffers refuses a handle without GENERIC_WRITE).
        self.flush_needs_write = flush_needs_write
        self.storage_options: dict[str, Any] = dict(storage_options)
        self._declared: set[str] = set()
        self._opened: dict[str, Any] = {}

    def path(self, name: str) -> str:
        """The path (or URL) of the file ``name`` inside the staging directory."""
        clean = check_name(name)
        self._declared.add(clean)
        return inside(self.location, clean, local=self.local)

    def __truediv__(self, name: str) -> str:
        return self.path(name)

    def __fspath__(self) -> str:
        if not self.local:
            raise UsageError(f"{self.location!r} is on an object store: use stage / name or stage.open(name)")
        return self.location

    def open(self, name: str, mode: Literal["wb", "w"] = "wb", **options: Any) -> Any:
        """Open ``name`` for writing, as an [`atomic_open`][atomicwrite.atomic_open] file
        (parent directories are created).  Local files are flushed when the directory is
        published, so each is written without its own fsync."""
        from .._api import atomic_open

        location = self.path(name)
        if self.local:
            os.makedirs(os.path.dirname(location), exist_ok=True)
            options.setdefault("durability", "none")
        else:
            options.setdefault("storage_options", self.storage_options)
        file = atomic_open(location, mode, **options)
        self._opened[check_name(name)] = file
        return file

    def declare(self, *names: str) -> None:
        """Declare files this process wrote into the staging directory by other means."""
        for name in names:
            self._declared.add(check_name(name))

    @property
    def declared(self) -> frozenset[str]:
        """The files this process asked a path for, opened, or declared."""
        return frozenset(self._declared)

    def known_entry(self, name: str) -> FileEntry | None:
        """Size and checksum of a file committed through `open`, as its commit reported them."""
        file = self._opened.get(name)
        result = None if file is None else file.result
        if result is None or result.checksum is None:
            return None
        return FileEntry(name, int(result.bytes_written), str(result.checksum))

    def __str__(self) -> str:
        # As pathlib.Path does: str() is the location itself, for messages and f-strings.
        return self.location

    def __repr__(self) -> str:
        return f"<StagingDirectory {self.location!r}>"


class DirectoryTransaction:
    """One directory write: stage, then exactly one of `commit` or `discard`.

    [`atomic_directory`][atomicwrite.atomic_directory] drives one; the multi-process adapters
    split the steps between processes (each flushes and hashes its own files, one commits with
    what they reported).
    """

    strategy_name: str = ""
    staging: StagingDirectory
    #: What the manifest records besides the files (a checkpoint's step, metrics, tags): JSON
    #: values, set before `commit`.
    metadata: Mapping[str, Any] = MappingProxyType({})

    def commit(self, reported: Mapping[str, FileEntry] | None = None) -> DirectoryCommitResult:
        """Publish.  ``reported``: entries other processes computed for their files; each must
        match what is staged (size), or the commit is refused."""
        raise NotImplementedError

    def discard(self) -> None:
        """Drop the staged files; the target stays as it was.  Safe to call more than once."""
        raise NotImplementedError


class TimedTransaction(DirectoryTransaction):
    """A directory write whose result is timed from ``began`` (a ``time.perf_counter()``) and
    told to ``on_commit``; the protocol's own transaction does the rest."""

    def __init__(
        self, inner: DirectoryTransaction, *, began: float, on_commit: DirectoryCommitCallback | None = None
    ) -> None:
        self._inner = inner
        self._began = began
        self._on_commit = on_commit
        self.staging = inner.staging
        self.strategy_name = inner.strategy_name

    @property  # the protocol's transaction reads it at commit
    def metadata(self) -> Mapping[str, Any]:
        return self._inner.metadata

    @metadata.setter
    def metadata(self, value: Mapping[str, Any]) -> None:
        self._inner.metadata = value

    def commit(self, reported: Mapping[str, FileEntry] | None = None) -> DirectoryCommitResult:
        result = self._inner.commit(reported)._timed(time.perf_counter() - self._began)
        notify(self._on_commit, result)
        return result

    def discard(self) -> None:
        self._inner.discard()


def flush_and_describe(
    names: Iterable[str],
    open_file: Callable[[str], int | None],
    *,
    flush: bool,
    algorithm: str | None,
    known: Mapping[str, FileEntry] = MappingProxyType({}),
) -> list[FileEntry]:
    """Flush (if ``flush``) and describe the local files ``names``, each opened by ``open_file``
    (None: not a file, skipped).  An entry in ``known`` (reported by the process that wrote the
    file) is kept, and the file only flushed, unless it lacks a checksum that is wanted.

    The writeback of a group of files is started before the first of them is hashed or
    flushed: the disk then writes them all at once while this thread hashes (the CPU), and each
    fsync finds its data on the way instead of writing one file per call (1,000 small files
    flush about 2.5 times faster).  One thread, so the order of the calls stays the same from
    run to run, which the tests that kill a writer at each fsync rely on.
    """
    entries: list[FileEntry] = []
    ordered = list(names)
    for start in range(0, len(ordered), _FLUSH_GROUP):
        opened: list[tuple[str, int]] = []
        try:
            for name in ordered[start : start + _FLUSH_GROUP]:
                fd = open_file(name)
                if fd is not None:
                    opened.append((name, fd))
            if flush:
                for _, fd in opened:
                    start_writeback(fd)
            for name, fd in opened:
                entry = known.get(name)
                if entry is None or (algorithm is not None and entry.checksum is None):
                    checksum = None if algorithm is None else digest_fd(fd, algorithm)
                    entry = FileEntry(name, os.fstat(fd).st_size, checksum)
                if flush:
                    flush_to_disk(fd)
                entries.append(entry)
        finally:
            for _, fd in opened:
                os.close(fd)
    return entries


def describe_files(
    staging: StagingDirectory, names: frozenset[str] | set[str], *, checksums: bool = True
) -> list[FileEntry]:
    """Flush and describe (size, checksum) the files ``names`` of a staging directory, from the
    process that wrote them: what each rank reports in a multi-rank save."""
    if staging.local:
        access = os.O_RDWR if staging.flush_needs_write else os.O_RDONLY

        def open_file(name: str) -> int | None:
            path = inside(staging.location, name, local=True)
            try:
                fd = os.open(path, access | _O_NOFOLLOW | _O_CLOEXEC | _O_BINARY)
            except OSError as exc:
                if staging.flush_needs_write and os.path.isdir(path):
                    return None  # a directory cannot be opened for writing: skipped below otherwise
                raise os_error(exc, path, "flushing a staged file", verb="describe") from exc
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                os.close(fd)
                return None  # a name used as a directory (``stage / "shards"``), not a file
            return fd

        ordered = sorted(check_name(name) for name in names)
        return flush_and_describe(ordered, open_file, flush=True, algorithm=manifest_algorithm() if checksums else None)
    import fsspec

    entries: list[FileEntry] = []
    for name in sorted(names):
        clean = check_name(name)

        url = f"{staging.location}/{clean}"
        fs, path = fsspec.core.url_to_fs(url, **staging.storage_options)
        fs.invalidate_cache()
        info = fs.info(path)
        if info.get("type") == "directory":
            continue  # a prefix of other files, not a file
        size = int(info["size"])
        known = staging.known_entry(clean)
        if known is not None and known.size == size:
            entries.append(known)
        elif not checksums:
            entries.append(FileEntry(clean, size, None))
        else:
            with fs.open(path, "rb") as source:
                entries.append(FileEntry(clean, size, digest_stream(source, manifest_algorithm())))
    return entries
