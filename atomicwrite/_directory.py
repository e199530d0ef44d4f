"""All-or-nothing directories: stage many files, list them in a manifest, publish them at once.

A checkpoint is rarely one file: sharded model and optimizer states, one per rank, plus
metadata.  [`atomic_directory`][atomicwrite.atomic_directory] gives such a directory the promise
a single file gets from [`atomic_open`][atomicwrite.atomic_open]:

**Local disks** (rename exists).  Files are staged in a hidden sibling directory named like a
temp file (``.{name}.aw{host}.{pid}.{random}.tmp``), so it is on the target's file system and
[`sweep`][atomicwrite.sweep] recognises it after a crash.  At the end of the block every file is
fsynced and hashed, every directory fsynced, the manifest written and fsynced *last*, then the
staging directory is renamed into place and the parent fsynced.  An existing target is swapped
with ``renameat2(RENAME_EXCHANGE)`` on Linux, so its name never stops naming a complete
directory; the old one is then removed.  Where that call does not exist (macOS, Windows, file
systems without it), the old directory is first renamed aside, then the new one renamed in: for
that instant the target is *absent* (a reader gets ``FileNotFoundError``, never a partial
directory), and after a crash in between the old one remains under its temp name.

**Object stores** (no rename).  Files are written under a fresh generation prefix inside the
target (``{target}/gen.{time}.{host}.{pid}.{random}/``); the manifest at
``{target}/.atomicwrite-manifest.json`` names that generation and is written after every object,
conditionally (``If-None-Match: *`` for a new directory, ``If-Match`` the previous manifest's
version for a replacement).  That one conditional write is the commit: a reader resolves files
through the manifest, so an unfinished generation is never seen, and of two racing writers one
wins and the other gets [`ConflictError`][atomicwrite.ConflictError].
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Literal

from ._errors import (
    AtomicWriteError,
    ConflictError,
    TargetExistsError,
    TargetNotFoundError,
    UnsupportedTargetError,
    UsageError,
    os_error,
)
from ._local import FRESH_TEMP_GRACE, flush_to_disk, host_tag, parse_staging_name, parse_temp_name, temp_name
from ._strategy import Strategy, WriteOptions, resolve_target

__all__ = [
    "MANIFEST_NAME",
    "DirectoryCommitResult",
    "DirectoryManifest",
    "DirectoryProblem",
    "DirectoryTransaction",
    "DirectoryVerification",
    "FileEntry",
    "PublishedDirectory",
    "StagingDirectory",
    "atomic_directory",
    "begin_directory",
    "describe_files",
    "open_directory",
    "remove_stale_staging",
    "sweep_generations",
    "verify_directory",
]

#: The manifest's name inside a published directory (a hidden file, written last).
MANIFEST_NAME = ".atomicwrite-manifest.json"
_FORMAT = "atomicwrite-directory/1"
_GENERATION = re.compile(r"^gen\.(?P<time>[0-9]+)\.(?P<host>[0-9a-f]{8})\.(?P<pid>[0-9]+)\.(?P<rand>[0-9a-f]{8})$")
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_RENAME_EXCHANGE = 2  # linux/fs.h
_CHUNK = 1 << 20

Target = str | os.PathLike[str]


# --- results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileEntry:
    """One file of a published directory, as its manifest lists it."""

    name: str
    size: int
    sha256: str | None


@dataclass(frozen=True)
class DirectoryManifest:
    """What a published directory holds: its generation and every file, with size and checksum."""

    generation: str
    files: tuple[FileEntry, ...]
    created: float

    def to_json(self) -> bytes:
        record = {
            "format": _FORMAT,
            "generation": self.generation,
            "created": self.created,
            "files": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in self.files],
        }
        return json.dumps(record, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> DirectoryManifest:
        """Parse a manifest; ValueError if it is not one of ours, or damaged."""
        record = json.loads(data)
        if not isinstance(record, dict) or record.get("format") != _FORMAT:
            raise ValueError("not an atomicwrite directory manifest")
        files = tuple(
            FileEntry(
                name=str(f["name"]), size=int(f["size"]), sha256=None if f["sha256"] is None else str(f["sha256"])
            )
            for f in record["files"]
        )
        return cls(generation=str(record["generation"]), files=files, created=float(record["created"]))

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class DirectoryCommitResult:
    """The outcome of a published directory.

    Attributes:
        target: the directory (path or URL) that now holds the new files.
        strategy: the strategy of the target's storage (``"posix"``, ``"s3"``, ...).
        durability: ``"full"`` when files, directories and the publishing rename were flushed
            (or the store acknowledges only durable writes), ``"none"`` otherwise.
        manifest: what was published.
        replaced: whether an existing directory was replaced.
    """

    target: str
    strategy: str
    durability: Literal["none", "full"]
    manifest: DirectoryManifest
    replaced: bool


ProblemKind = Literal["no-directory", "no-manifest", "bad-manifest", "missing", "size", "checksum", "unlisted"]


@dataclass(frozen=True)
class DirectoryProblem:
    """One thing wrong with a directory: ``kind`` says what, ``name`` names the file (or "")."""

    kind: ProblemKind
    name: str
    detail: str


@dataclass(frozen=True)
class DirectoryVerification:
    """What [`verify_directory`][atomicwrite.verify_directory] found; true when complete and intact."""

    target: str
    manifest: DirectoryManifest | None
    problems: tuple[DirectoryProblem, ...]
    checked_checksums: bool

    @property
    def ok(self) -> bool:
        return self.manifest is not None and not self.problems

    def __bool__(self) -> bool:
        return self.ok


# --- the staging location ------------------------------------------------------------------


def _check_name(name: str) -> str:
    """A relative, normalised file name with ``/`` separators, or UsageError."""
    if not isinstance(name, str) or not name:
        raise UsageError(f"a file name inside the directory must be a non-empty str, not {name!r}")
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or any(part in ("", ".", "..") for part in parts) or ":" in parts[0]:
        raise UsageError(f"{name!r} must be a relative path inside the directory, without '.' or '..'")
    if parts == [MANIFEST_NAME]:
        raise UsageError(f"{MANIFEST_NAME!r} is the manifest's name; it is written for you")
    return "/".join(parts)


class StagingDirectory:
    """Where the files of a directory being written go, until it is published.

    ``stage / "model.pt"`` (or ``stage.path("model.pt")``) is the path or URL to write that file
    at, with any library; [`open`][atomicwrite.StagingDirectory.open] opens one for writing.
    For a local target ``os.fspath(stage)`` is the staging directory itself, so libraries that
    want a directory (``FileSystemWriter``, ``save_pretrained``) can be handed ``stage``.
    Names handed out here are also the files this process declares as its own (see
    [`declared`][atomicwrite.StagingDirectory.declared]).
    """

    def __init__(self, location: str, *, local: bool, storage_options: Mapping[str, Any]) -> None:
        self.location = location
        self.local = local
        self.storage_options: dict[str, Any] = dict(storage_options)
        self._declared: set[str] = set()
        self._opened: dict[str, Any] = {}

    def path(self, name: str) -> str:
        """The path (or URL) of the file ``name`` inside the staging directory."""
        clean = _check_name(name)
        self._declared.add(clean)
        if self.local:
            return os.path.join(self.location, *clean.split("/"))
        return f"{self.location}/{clean}"

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
        from ._api import atomic_open

        location = self.path(name)
        if self.local:
            os.makedirs(os.path.dirname(location), exist_ok=True)
            options.setdefault("durability", "none")
        else:
            options.setdefault("storage_options", self.storage_options)
        file = atomic_open(location, mode, **options)
        self._opened[_check_name(name)] = file
        return file

    def declare(self, *names: str) -> None:
        """Declare files this process wrote into the staging directory by other means."""
        for name in names:
            self._declared.add(_check_name(name))

    @property
    def declared(self) -> frozenset[str]:
        """The files this process asked a path for, opened, or declared."""
        return frozenset(self._declared)

    def known_entry(self, name: str) -> FileEntry | None:
        """Size and checksum of a file committed through `open`, as its commit reported them."""
        file = self._opened.get(name)
        result = None if file is None else file.result
        if result is None or result.checksum is None or not str(result.checksum).startswith("sha256:"):
            return None
        return FileEntry(name, int(result.bytes_written), str(result.checksum).removeprefix("sha256:"))

    def __repr__(self) -> str:
        return f"<StagingDirectory {self.location!r}>"


# --- transactions --------------------------------------------------------------------------


class DirectoryTransaction:
    """One directory write: stage, then exactly one of `commit` or `discard`.

    [`atomic_directory`][atomicwrite.atomic_directory] drives one; the multi-process adapters
    split the steps between processes (each flushes and hashes its own files, one commits with
    what they reported).
    """

    strategy_name: str = ""
    staging: StagingDirectory

    def commit(self, reported: Mapping[str, FileEntry] | None = None) -> DirectoryCommitResult:
        """Publish.  ``reported``: entries other processes computed for their files; each must
        match what is staged (size), or the commit is refused."""
        raise NotImplementedError

    def discard(self) -> None:
        """Drop the staged files; the target stays as it was.  Safe to call more than once."""
        raise NotImplementedError


def _digest_fd(fd: int) -> str:
    digest = hashlib.sha256()
    while True:
        chunk = os.read(fd, _CHUNK)
        if not chunk:
            return digest.hexdigest()
        digest.update(chunk)


def _merge_reported(
    staged: dict[str, int], reported: Mapping[str, FileEntry] | None, location: str
) -> dict[str, FileEntry]:
    """The reported entries, after checking each against what is staged."""
    known: dict[str, FileEntry] = {}
    for name, entry in (reported or {}).items():
        size = staged.get(name)
        if size is None:
            raise AtomicWriteError(f"{location!r}: {name!r} was reported written but is not in the staging area")
        if size != entry.size:
            raise AtomicWriteError(f"{location!r}: {name!r} was reported with {entry.size} bytes but {size} are staged")
        known[name] = entry
    return known


class _LocalTransaction(DirectoryTransaction):
    strategy_name = "posix"

    def __init__(self, location: str, target: str, *, replace: bool, durability: str, checksums: bool) -> None:
        self._location = location
        self._target = target
        self._replace = replace
        self._durable = durability != "none"
        self._checksums = checksums
        parent, self._name = os.path.split(target)
        self._parent = parent
        try:
            self._dir_fd: int | None = os.open(parent, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
        except OSError as exc:
            raise os_error(exc, location, "opening the target's parent directory") from exc
        self._stage_fd: int | None = None
        self._stage_name: str | None = None
        try:
            self._check_target(self._existing())
            while True:
                candidate = temp_name(self._name, ".stage")
                try:
                    os.mkdir(candidate, 0o777, dir_fd=self._dir_fd)
                except FileExistsError:
                    continue
                self._stage_name = candidate
                break
            self._stage_fd = os.open(
                candidate, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC, dir_fd=self._dir_fd
            )
            # Held while this process lives: sweep() leaves a locked staging directory alone.
            _flock(self._stage_fd, blocking=True)
        except BaseException:
            self.discard()
            raise
        self.staging = StagingDirectory(os.path.join(parent, candidate), local=True, storage_options={})

    def _existing(self) -> os.stat_result | None:
        assert self._dir_fd is not None
        try:
            return os.stat(self._name, dir_fd=self._dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def _check_target(self, old: os.stat_result | None) -> None:
        if old is None:
            return
        if not self._replace:
            # Whatever the name holds (a directory, a file, a dangling symlink), it exists.
            raise TargetExistsError.at(self._location)
        if not stat.S_ISDIR(old.st_mode):
            raise UnsupportedTargetError(f"cannot publish a directory at {self._location!r}: a file is there")

    def _sync(self, fd: int) -> None:
        if self._durable:
            flush_to_disk(fd)

    def _walk(self) -> dict[str, int]:
        """Every staged file and its size; refuses what a manifest cannot vouch for."""
        assert self._stage_fd is not None
        found: dict[str, int] = {}

        def visit(fd: int, prefix: str) -> None:
            for entry in sorted(os.listdir(fd)):
                st = os.stat(entry, dir_fd=fd, follow_symlinks=False)
                name = prefix + entry
                if stat.S_ISDIR(st.st_mode):
                    sub = os.open(entry, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC, dir_fd=fd)
                    try:
                        visit(sub, name + "/")
                        self._sync(sub)
                    finally:
                        os.close(sub)
                elif stat.S_ISREG(st.st_mode):
                    if name != MANIFEST_NAME:
                        found[name] = st.st_size
                else:
                    raise UnsupportedTargetError(
                        f"{self._location!r}: {name!r} is a symlink or special file; a directory"
                        " manifest lists regular files only"
                    )

        visit(self._stage_fd, "")
        return found

    def _open_staged(self, name: str) -> int:
        assert self._stage_fd is not None
        return os.open(name, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC, dir_fd=self._stage_fd)

    def _entry(self, name: str) -> FileEntry:
        fd = self._open_staged(name)
        try:
            self._sync(fd)
            size = os.fstat(fd).st_size
            return FileEntry(name, size, _digest_fd(fd) if self._checksums else None)
        finally:
            os.close(fd)

    def commit(self, reported: Mapping[str, FileEntry] | None = None) -> DirectoryCommitResult:
        if self._stage_fd is None:
            raise AtomicWriteError(f"the write of {self._location!r} was already committed or discarded")
        try:
            return self._commit(reported)
        except BaseException as exc:
            self.discard()
            if isinstance(exc, OSError) and not isinstance(exc, AtomicWriteError):
                raise os_error(exc, self._location, "publishing the directory") from exc
            raise

    def _commit(self, reported: Mapping[str, FileEntry] | None) -> DirectoryCommitResult:
        assert self._stage_fd is not None
        assert self._dir_fd is not None
        assert self._stage_name is not None
        staged = self._walk()
        known = _merge_reported(staged, reported, self._location)
        files: list[FileEntry] = []
        for name in sorted(staged):
            entry = known.get(name)
            if entry is None or (entry.sha256 is None and self._checksums):
                entry = self._entry(name)
            elif self._durable:
                # Reported by the process that wrote (and flushed) it; flushing it here too is
                # cheap once its pages are clean, and covers writers that did not.
                fd = self._open_staged(name)
                try:
                    flush_to_disk(fd)
                finally:
                    os.close(fd)
            files.append(entry)
        manifest = DirectoryManifest(generation=_new_generation(), files=tuple(files), created=time.time())
        fd = os.open(
            MANIFEST_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC, 0o666, dir_fd=self._stage_fd
        )
        try:
            with open(fd, "wb", closefd=False) as out:
                out.write(manifest.to_json())
            self._sync(fd)
        finally:
            os.close(fd)
        self._sync(self._stage_fd)
        replaced = self._publish()
        return DirectoryCommitResult(
            target=self._location,
            strategy=self.strategy_name,
            durability="full" if self._durable else "none",
            manifest=manifest,
            replaced=replaced,
        )

    def _publish(self) -> bool:
        """Rename the staging directory into place; True if it replaced one."""
        assert self._dir_fd is not None
        assert self._stage_name is not None
        dir_fd, stage, name = self._dir_fd, self._stage_name, self._name
        renameat2 = _renameat2()
        while True:
            old = self._existing()
            self._check_target(old)
            if old is None:
                if renameat2 is None:
                    os.rename(stage, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                    break
                code = _call_renameat2(renameat2, dir_fd, stage, name, 1)  # RENAME_NOREPLACE
                if code == 0:
                    break
                if code == errno.EEXIST:
                    continue  # another writer published first: replace it (or refuse) above
                if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    os.rename(stage, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                    break
                raise OSError(code, os.strerror(code), self._location)
            code = (
                errno.ENOSYS if renameat2 is None else _call_renameat2(renameat2, dir_fd, stage, name, _RENAME_EXCHANGE)
            )
            if code == errno.ENOENT:
                continue  # the old one vanished meanwhile
            if code == 0:
                # The old directory now sits under the staging name.
                self._finish(stage)
                return True
            if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise OSError(code, os.strerror(code), self._location)
            # No exchange here: park the old one under a temp name, then move the new one in.
            # In between the target is absent, never partial; a crash there leaves the old one
            # under its temp name and the new one under the staging name, both intact.
            parked = temp_name(name, ".stage")
            os.rename(name, parked, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            os.rename(stage, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            self._finish(parked)
            return True
        self._finish(None)
        return False

    def _finish(self, old: str | None) -> None:
        assert self._dir_fd is not None
        self._stage_name = None  # published: the staging name is never removed again
        self._sync(self._dir_fd)
        self._close()
        if old is not None:
            _remove_tree(self._parent, self._dir_fd, old)
        self._close_parent()

    def _close(self) -> None:
        fd, self._stage_fd = self._stage_fd, None
        if fd is not None:
            os.close(fd)

    def _close_parent(self) -> None:
        fd, self._dir_fd = self._dir_fd, None
        if fd is not None:
            os.close(fd)

    def discard(self) -> None:
        self._close()
        stage, self._stage_name = self._stage_name, None
        try:
            if stage is not None and self._dir_fd is not None:
                _remove_tree(self._parent, self._dir_fd, stage)
        finally:
            self._close_parent()


def _remove_tree(parent: str, dir_fd: int, name: str) -> None:
    """Remove a directory tree, out of sight first: renamed to a fresh temp name, so no reader
    ever finds a half-removed directory under a name it trusts."""
    hidden = name if parse_staging_name(name) else temp_name(name, ".stage")
    with contextlib.suppress(OSError):
        if hidden != name:
            os.rename(name, hidden, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        shutil.rmtree(os.path.join(parent, hidden))


def _renameat2() -> Any:
    """libc's renameat2 on Linux, else None."""
    if sys.platform == "linux":
        from ._posix import _load_rename_exclusive

        function, _ = _load_rename_exclusive()
        return function
    return None


def _flock(fd: int, *, blocking: bool) -> bool:
    """Take the exclusive flock of ``fd``; False if ``blocking`` is off and another holds it."""
    if sys.platform == "win32":
        raise UnsupportedTargetError("atomic_directory does not support local Windows paths yet")
    else:  # the else keeps the POSIX import out of mypy --platform win32
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


def _call_renameat2(function: Any, dir_fd: int, source: str, destination: str, flags: int) -> int:
    """0 on success, else the errno."""
    import ctypes

    if function(dir_fd, os.fsencode(source), dir_fd, os.fsencode(destination), flags) == 0:
        return 0
    return ctypes.get_errno() or errno.EIO


# --- object stores -------------------------------------------------------------------------


def _new_generation() -> str:
    return f"gen.{time.time_ns()}.{host_tag()}.{os.getpid()}.{os.urandom(4).hex()}"


def _store_version(strategy: Strategy, fs: Any, path: str) -> object | None:
    """The version token of the object at ``path`` for ``if_match=``, None if it is absent."""
    if strategy.name == "memory":
        from ._memory import _GENERATIONS

        return _GENERATIONS.get(path) if fs.exists(path) else None
    if strategy.name == "s3":
        try:
            info: dict[str, Any] = fs.info(path, refresh=True)
        except FileNotFoundError:
            return None
        return info.get("ETag")
    if not fs.exists(path):
        return None
    raise UnsupportedTargetError(
        f"replacing a published directory on {strategy.name}:// is not supported yet (only creating one)"
    )


class _StoreTransaction(DirectoryTransaction):
    def __init__(self, strategy: Any, location: str, options: WriteOptions, *, replace: bool, checksums: bool) -> None:
        self._strategy = strategy
        self.strategy_name = strategy.name
        self._location = location.rstrip("/")
        self._options = options
        self._fs = strategy.filesystem(options)
        self._replace = replace
        self._checksums = checksums
        self._manifest_path = self._fs._strip_protocol(f"{self._location}/{MANIFEST_NAME}")
        # Version first, content second: if the manifest changes in between, the conditional
        # commit fails, so the old generation read here is the one the commit replaces.
        self._previous_version: object | None = None
        if replace:
            self._previous_version = _store_version(strategy, self._fs, self._manifest_path)
        else:
            with contextlib.suppress(FileNotFoundError):
                self._fs.invalidate_cache()
                if self._fs.exists(self._manifest_path):
                    raise TargetExistsError.at(self._location)
        self._previous: DirectoryManifest | None = None
        if self._previous_version is not None:
            with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
                self._previous = DirectoryManifest.from_json(self._fs.cat_file(self._manifest_path))
        self._generation: str | None = _new_generation()
        self._prefix = self._fs._strip_protocol(f"{self._location}/{self._generation}")
        self.staging = StagingDirectory(
            f"{self._location}/{self._generation}", local=False, storage_options=options.storage_options
        )

    def _listing(self) -> dict[str, int]:
        self._fs.invalidate_cache(self._prefix)
        try:
            found: dict[str, dict[str, Any]] = self._fs.find(self._prefix, detail=True)
        except FileNotFoundError:
            return {}
        staged: dict[str, int] = {}
        for path, info in found.items():
            name = path[len(self._prefix) + 1 :]
            if not name or parse_temp_name(name.rpartition("/")[2]) is not None:
                continue  # an upload's marker, not a file
            staged[name] = int(info.get("size") or 0)
        return staged

    def _entry(self, name: str, size: int) -> FileEntry:
        known = self.staging.known_entry(name)
        if known is not None and known.size == size:
            return known
        if not self._checksums:
            return FileEntry(name, size, None)
        digest = hashlib.sha256()
        with self._fs.open(f"{self._prefix}/{name}", "rb") as source:
            while chunk := source.read(_CHUNK):
                digest.update(chunk)
        return FileEntry(name, size, digest.hexdigest())

    def commit(self, reported: Mapping[str, FileEntry] | None = None) -> DirectoryCommitResult:
        from ._api import atomic_open

        if self._generation is None:
            raise AtomicWriteError(f"the write of {self._location!r} was already committed or discarded")
        try:
            staged = self._listing()
            known = _merge_reported(staged, reported, self._location)
            files = [known.get(name) or self._entry(name, size) for name, size in sorted(staged.items())]
            manifest = DirectoryManifest(generation=self._generation, files=tuple(files), created=time.time())
            url = self._strategy.url(self._manifest_path)
            if self._previous_version is None:
                file = atomic_open(url, "xb", storage_options=self._options.storage_options)
            else:
                file = atomic_open(
                    url, "wb", if_match=self._previous_version, storage_options=self._options.storage_options
                )
            with file:
                file.write(manifest.to_json())
        except BaseException as exc:
            self.discard()
            if isinstance(exc, TargetExistsError):
                raise ConflictError(
                    f"{self._location!r} was published by another writer meanwhile; this write was dropped",
                    expected=None,
                    actual="published",
                ) from exc
            raise
        self._generation = None
        replaced = self._previous is not None
        if self._previous is not None:
            # Readers that resolved the old manifest now find its files gone (FileNotFoundError),
            # never mixed with the new ones: every generation has its own prefix.
            _remove_prefix(self._fs, self._fs._strip_protocol(f"{self._location}/{self._previous.generation}"))
        return DirectoryCommitResult(
            target=self._location,
            strategy=self.strategy_name,
            durability="none" if self.strategy_name == "memory" else "full",
            manifest=manifest,
            replaced=replaced,
        )

    def discard(self) -> None:
        if self._generation is None:
            return
        self._generation = None
        for file in self.staging._opened.values():
            with contextlib.suppress(Exception):
                file.discard()
        _remove_prefix(self._fs, self._prefix)


def _remove_prefix(fs: Any, prefix: str) -> None:
    with contextlib.suppress(FileNotFoundError, OSError):
        fs.invalidate_cache(prefix)
        paths = list(fs.find(prefix))
        if paths:
            fs.rm(paths)


def describe_files(
    staging: StagingDirectory, names: frozenset[str] | set[str], *, checksums: bool = True
) -> list[FileEntry]:
    """Flush and describe (size, SHA-256) the files ``names`` of a staging directory, from the
    process that wrote them: what each rank reports in a multi-rank save."""
    entries: list[FileEntry] = []
    for name in sorted(names):
        clean = _check_name(name)
        if staging.local:
            path = os.path.join(staging.location, *clean.split("/"))
            try:
                fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC)
            except OSError as exc:
                raise os_error(exc, path, "flushing a staged file", verb="describe") from exc
            try:
                st = os.fstat(fd)
                if stat.S_ISDIR(st.st_mode):
                    continue  # a name used as a directory (``stage / "shards"``), not a file
                flush_to_disk(fd)
                entries.append(FileEntry(clean, st.st_size, _digest_fd(fd) if checksums else None))
            finally:
                os.close(fd)
            continue
        import fsspec

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
            digest = hashlib.sha256()
            with fs.open(path, "rb") as source:
                while chunk := source.read(_CHUNK):
                    digest.update(chunk)
            entries.append(FileEntry(clean, size, digest.hexdigest()))
    return entries


# --- public entry points -------------------------------------------------------------------


def begin_directory(
    target: Target,
    *,
    replace: bool = True,
    durability: Literal["none", "full"] = "full",
    checksums: bool = True,
    storage_options: Mapping[str, Any] | None = None,
) -> DirectoryTransaction:
    """Start a directory write without a ``with`` block (see [`atomic_directory`][atomicwrite.atomic_directory])."""
    if durability not in ("none", "full"):
        raise UsageError(f"durability must be 'none' or 'full' for a directory, not {durability!r}")
    strategy, location = resolve_target(target)
    options = WriteOptions(storage_options=dict(storage_options or {}))
    from ._local import LocalStrategy
    from ._objectstore import ObjectStoreStrategy

    if isinstance(strategy, ObjectStoreStrategy):
        return _StoreTransaction(strategy, location, options, replace=replace, checksums=checksums)
    if isinstance(strategy, LocalStrategy) and sys.platform != "win32":
        # A replace goes through a symlink to the directory it names (the link stays), under the
        # same rules as a file's; a create never does: the link is an existing name.
        path = strategy.resolve(os.path.normpath(strategy.absolute(location)), follow_symlinks=replace)
        if os.path.basename(path) in ("", ".", ".."):
            raise UsageError(f"{location!r} does not name a directory entry that can be replaced")
        return _LocalTransaction(location, path, replace=replace, durability=durability, checksums=checksums)
    raise UnsupportedTargetError(f"atomic_directory does not support {location!r} ({strategy.name}) yet")


@contextlib.contextmanager
def atomic_directory(
    target: Target,
    *,
    replace: bool = True,
    durability: Literal["none", "full"] = "full",
    checksums: bool = True,
    storage_options: Mapping[str, Any] | None = None,
) -> Iterator[StagingDirectory]:
    """Write a whole directory of files, published all at once when the block ends.

    ```python
    with atomic_directory("checkpoint-100") as stage:
        (Path(stage) / "model.bin").write_bytes(model_bytes)
        with stage.open("config.json", "w") as f:
            f.write("{}")
    # readers saw the old checkpoint-100 (or none) until here, the complete new one from here on
    ```

    Files may be written into the staging directory by any means (plain ``open``, a library
    given ``os.fspath(stage)``); at the end each is flushed and listed, with its size and
    SHA-256, in a manifest that is written last; then the directory is published (a rename
    locally; the conditional manifest write on object stores).  An exception in the block
    discards everything; the target is untouched.

    Args:
        target: a local path, or an object-store URL (``s3://``, ``memory://``...).
        replace: replace an existing directory (atomically), through a symlink to it; if False,
            raise [`TargetExistsError`][atomicwrite.TargetExistsError] when anything has the
            name, a dangling symlink included.
        durability: ``"full"`` flushes every file and directory so the result survives a power
            loss; ``"none"`` is atomic against process crashes only.
        checksums: record each file's SHA-256 (read back once); False records sizes only.
        storage_options: for an object store's fsspec file system.
    """
    transaction = begin_directory(
        target, replace=replace, durability=durability, checksums=checksums, storage_options=storage_options
    )
    try:
        yield transaction.staging
    except BaseException:
        transaction.discard()
        raise
    transaction.commit()


# --- reading -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishedDirectory:
    """A published directory as a reader finds it through its manifest."""

    target: str
    manifest: DirectoryManifest
    local: bool
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    def path(self, name: str) -> str:
        """Where the file ``name`` of this version is (a path, or a URL)."""
        clean = _check_name(name)
        if self.local:
            return os.path.join(self.target, *clean.split("/"))
        return f"{self.target}/{self.manifest.generation}/{clean}"

    def __truediv__(self, name: str) -> str:
        return self.path(name)

    def open(self, name: str) -> IO[bytes]:
        """Open the file ``name`` of this version for reading."""
        if self.local:
            return open(self.path(name), "rb")
        import fsspec

        opened: IO[bytes] = fsspec.open(self.path(name), "rb", **self.storage_options).open()
        return opened


def _read_manifest(target: Target, storage_options: Mapping[str, Any] | None) -> tuple[str, bool, Any, bytes]:
    """``(location, local, fs, manifest bytes)``; FileNotFoundError if there is no manifest."""
    strategy, location = resolve_target(target)
    from ._objectstore import ObjectStoreStrategy

    if isinstance(strategy, ObjectStoreStrategy):
        fs = strategy.filesystem(WriteOptions(storage_options=dict(storage_options or {})))
        location = location.rstrip("/")
        fs.invalidate_cache()
        data: bytes = fs.cat_file(fs._strip_protocol(f"{location}/{MANIFEST_NAME}"))
        return location, False, fs, data
    path = os.path.join(os.path.expanduser(location), MANIFEST_NAME)
    with open(path, "rb") as file:
        return location, True, None, file.read()


def open_directory(target: Target, *, storage_options: Mapping[str, Any] | None = None) -> PublishedDirectory:
    """The published directory at ``target``, resolved through its manifest (not verified:
    [`verify_directory`][atomicwrite.verify_directory] does that).

    Raises [`TargetNotFoundError`][atomicwrite.TargetNotFoundError] if nothing was published there.
    """
    try:
        location, local, _, data = _read_manifest(target, storage_options)
    except FileNotFoundError as exc:
        raise TargetNotFoundError(
            errno.ENOENT, f"no published directory at {os.fspath(target)!r}", str(target)
        ) from exc
    try:
        manifest = DirectoryManifest.from_json(data)
    except (ValueError, KeyError, TypeError) as exc:
        raise AtomicWriteError(f"{os.fspath(target)!r}: its manifest is damaged ({exc})") from exc
    return PublishedDirectory(location, manifest, local, dict(storage_options or {}))


def verify_directory(
    target: Target, *, checksums: bool = True, storage_options: Mapping[str, Any] | None = None
) -> DirectoryVerification:
    """Check a published directory against its manifest: every file present, with its size and
    (if ``checksums``) its SHA-256, and no file the manifest does not list.

    Never raises for what it finds: the result lists the problems, and is true only when there
    are none.
    """
    text = os.fspath(target)
    problems: list[DirectoryProblem] = []
    try:
        location, local, fs, data = _read_manifest(target, storage_options)
    except (FileNotFoundError, NotADirectoryError) as exc:
        _, location = resolve_target(target)
        exists = os.path.isdir(os.path.expanduser(location)) if not text.partition("://")[1] else False
        kind: ProblemKind = "no-manifest" if exists else "no-directory"
        if exists:
            detail = "no manifest: not published by atomic_directory, or damaged"
        else:
            detail = "not a directory" if isinstance(exc, NotADirectoryError) else "does not exist"
        return DirectoryVerification(text, None, (DirectoryProblem(kind, "", detail),), checksums)
    try:
        manifest = DirectoryManifest.from_json(data)
    except (ValueError, KeyError, TypeError) as exc:
        return DirectoryVerification(text, None, (DirectoryProblem("bad-manifest", "", str(exc)),), checksums)
    published = PublishedDirectory(location, manifest, local, dict(storage_options or {}))
    listed = {entry.name for entry in manifest.files}
    for entry in manifest.files:
        try:
            if local:
                size = os.stat(published.path(entry.name), follow_symlinks=False).st_size
            else:
                size = int(fs.info(fs._strip_protocol(published.path(entry.name)))["size"])
        except FileNotFoundError:
            problems.append(DirectoryProblem("missing", entry.name, "listed in the manifest but absent"))
            continue
        if size != entry.size:
            problems.append(DirectoryProblem("size", entry.name, f"{size} bytes, the manifest says {entry.size}"))
            continue
        if checksums and entry.sha256 is not None:
            digest = hashlib.sha256()
            with published.open(entry.name) as source:
                while chunk := source.read(_CHUNK):
                    digest.update(chunk)
            if digest.hexdigest() != entry.sha256:
                problems.append(DirectoryProblem("checksum", entry.name, "content differs from the manifest's SHA-256"))
    if local:
        for directory, _, names in os.walk(location):
            for name in names:
                relative = os.path.relpath(os.path.join(directory, name), location).replace(os.sep, "/")
                if relative != MANIFEST_NAME and relative not in listed:
                    problems.append(DirectoryProblem("unlisted", relative, "present but not in the manifest"))
    return DirectoryVerification(text, manifest, tuple(problems), checksums)


def sweep_generations(fs: Any, location: str, older_than: float, dry_run: bool, url: Any) -> list[str]:
    """Remove the generation prefixes under an object-store directory that no manifest names
    and whose writer is gone (this host, dead pid) or that are older than ``older_than``."""
    from ._objectstore import _pid_alive

    location = location.rstrip("/")
    try:
        fs.invalidate_cache(location)
        children = [str(path).rstrip("/") for path in fs.ls(location, detail=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    current: str | None = None
    with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
        current = DirectoryManifest.from_json(fs.cat_file(f"{location}/{MANIFEST_NAME}")).generation
    removed: list[str] = []
    now = time.time_ns()
    for child in children:
        name = child.rpartition("/")[2]
        match = _GENERATION.match(name)
        if match is None or name == current:
            continue
        age = (now - int(match.group("time"))) / 1e9
        pid = int(match.group("pid"))
        alive = _pid_alive(pid) if match.group("host") == host_tag() else None
        # A writer on this host is alive exactly while its pid is; elsewhere only age tells.
        if (alive is None or pid == os.getpid()) and age < max(older_than, FRESH_TEMP_GRACE):
            continue
        if alive and pid != os.getpid():
            continue
        if not dry_run:
            _remove_prefix(fs, child)
        removed.append(url(child))
    return removed


def remove_stale_staging(  # noqa: PLR0911 - one early return per reason to keep it
    directory: str, entry: str, kind: str, *, same_host: bool, pid: int, cutoff: float, dry_run: bool
) -> bool:
    """Remove a dead writer's staging directory (``kind`` "stage") or pointer temp symlink
    ("link") from a local ``directory``; True if it was (or would be) removed.

    A staging directory stays locked (flock) while its writer lives; a symlink cannot be
    locked, so one goes only when its writer is known dead, or it is older than ``cutoff``
    and written on another host.  Nothing is ever followed.
    """
    path = os.path.join(directory, entry)
    if kind == "link":
        try:
            st = os.lstat(path)
        except OSError:
            return False
        if not stat.S_ISLNK(st.st_mode):
            return False
        if (same_host and _pid_alive_here(pid)) or (not same_host and st.st_mtime >= cutoff):
            return False
        if not dry_run:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        return True
    try:
        fd = os.open(path, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC)
    except OSError:
        return False  # not a directory, or a symlink planted under the name
    try:
        st = os.fstat(fd)
        if not _flock(fd, blocking=False):
            return False  # its writer is alive
        old_enough = st.st_mtime < cutoff and st.st_mtime < time.time() - FRESH_TEMP_GRACE
        if (not same_host or _pid_alive_here(pid)) and not old_enough:
            return False
        if not dry_run:
            shutil.rmtree(path, ignore_errors=True)
        return True
    finally:
        os.close(fd)


def _pid_alive_here(pid: int) -> bool:
    from ._objectstore import _pid_alive

    return _pid_alive(pid) is not False
