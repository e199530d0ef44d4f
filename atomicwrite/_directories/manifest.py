"""What a published directory holds, as its manifest lists it, and the values that describe a
directory write: its files (name, size, checksum), the result of a commit, what verifying found."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Literal

from .._checksums import FASTEST_CRCS, first_available, new_digest
from .._errors import (
    AtomicWriteError,
    UsageError,
)
from .._names import host_tag

__all__ = [
    "CHUNK",
    "GENERATION_NAME",
    "MANIFEST_NAME",
    "DirectoryCommitCallback",
    "DirectoryCommitResult",
    "DirectoryManifest",
    "DirectoryProblem",
    "DirectoryVerification",
    "FileEntry",
    "check_name",
    "digest_fd",
    "digest_stream",
    "inside",
    "manifest_algorithm",
    "merge_reported",
    "new_generation",
]

#: The manifest's name inside a published directory (a hidden file, written last).
MANIFEST_NAME = ".atomicwrite-manifest.json"
FORMAT = "atomicwrite-directory/1"
# An object-store generation prefix: gen.{time_ns}.{host}.{pid}.{random}
GENERATION_NAME = re.compile(r"^gen\.(?P<time>[0-9]+)\.(?P<host>[0-9a-f]{8})\.(?P<pid>[0-9]+)\.(?P<rand>[0-9a-f]{8})$")
CHUNK = 1 << 20

Target = str | os.PathLike[str]


@dataclass(frozen=True)
class FileEntry:
    """One file of a published directory, as its manifest lists it."""

    name: str
    size: int
    #: ``"<algorithm>:<hex>"`` (``"sha256:..."``, ``"crc64nvme:..."``), or None when the writer
    #: recorded sizes only.
    checksum: str | None

    @property
    def sha256(self) -> str | None:
        """The hex SHA-256, where that is the recorded checksum."""
        if self.checksum is None or not self.checksum.startswith("sha256:"):
            return None
        return self.checksum.removeprefix("sha256:")


@dataclass(frozen=True)
class DirectoryManifest:
    """What a published directory holds: its generation and every file, with size and checksum."""

    generation: str
    files: tuple[FileEntry, ...]
    created: float
    #: What the writer recorded with the directory (a checkpoint's step, metrics, tags); JSON
    #: values.  Older manifests have none, and readers that predate it ignore the key.
    metadata: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def to_json(self) -> bytes:
        record: dict[str, Any] = {
            "format": FORMAT,
            "generation": self.generation,
            "created": self.created,
            "files": [_file_record(f) for f in self.files],
        }
        if self.metadata:
            record["metadata"] = dict(self.metadata)
        return json.dumps(record, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> DirectoryManifest:
        """Parse a manifest; ValueError if it is not one of ours, or damaged."""
        record = json.loads(data)
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise ValueError("not an atomicwrite directory manifest")
        files = tuple(FileEntry(str(f["name"]), int(f["size"]), _checksum_of(f)) for f in record["files"])
        metadata = record.get("metadata", {})
        if not isinstance(metadata, dict):
            raise ValueError("the manifest's metadata is not an object")
        return cls(
            generation=str(record["generation"]), files=files, created=float(record["created"]), metadata=metadata
        )

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def _file_record(entry: FileEntry) -> dict[str, Any]:
    # A SHA-256 keeps the key every reader knows; another algorithm gets its own key, so that a
    # reader that predates it sees no checksum rather than a wrong one.
    record: dict[str, Any] = {"name": entry.name, "size": entry.size, "sha256": entry.sha256}
    if entry.checksum is not None and entry.sha256 is None:
        record["checksum"] = entry.checksum
    return record


def _checksum_of(record: Mapping[str, Any]) -> str | None:
    if record.get("checksum") is not None:
        return str(record["checksum"])
    return None if record.get("sha256") is None else "sha256:" + str(record["sha256"])


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
        seconds: wall time from the start of the write to its publication (for a
            [`CheckpointStore`][atomicwrite.CheckpointStore] save, until ``latest`` names it;
            for a background save, from the ``save_async`` call).
        seconds_blocked: how long the caller was held up: ``seconds`` for a write made in the
            caller's thread; for a background save, the snapshot (and any wait for a free slot).
        seconds_background: time a worker thread spent writing and publishing it (0 for a
            write made in the caller's thread).

    As for [`CommitResult`][atomicwrite.CommitResult], the timings are telemetry, not identity:
    they are left out of equality and hashing.  A result built by hand has all three at 0.
    """

    target: str
    strategy: str
    durability: Literal["none", "full"]
    manifest: DirectoryManifest
    replaced: bool
    seconds: float = field(default=0.0, compare=False)
    seconds_blocked: float = field(default=0.0, compare=False)
    seconds_background: float = field(default=0.0, compare=False)

    @property
    def bytes_written(self) -> int:
        """The size of every file published, together (the manifest not counted)."""
        return self.manifest.total_bytes

    @property
    def throughput(self) -> float:
        """``bytes_written / seconds`` in bytes per second; 0.0 when no time was measured."""
        return self.bytes_written / self.seconds if self.seconds > 0 else 0.0

    def _timed(
        self, seconds: float, *, seconds_blocked: float | None = None, seconds_background: float = 0.0
    ) -> DirectoryCommitResult:
        """This result with its timings set (``seconds_blocked`` defaults to ``seconds``)."""
        return dataclasses.replace(
            self,
            seconds=seconds,
            seconds_blocked=seconds if seconds_blocked is None else seconds_blocked,
            seconds_background=seconds_background,
        )


#: ``on_commit`` of a directory write: called with its result once it is published.
DirectoryCommitCallback = Callable[[DirectoryCommitResult], object]

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


def check_name(name: str) -> str:
    """A relative, normalised file name with ``/`` separators, or UsageError."""
    if not isinstance(name, str) or not name:
        raise UsageError(f"a file name inside the directory must be a non-empty str, not {name!r}")
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or any(part in ("", ".", "..") for part in parts) or ":" in parts[0]:
        raise UsageError(f"{name!r} must be a relative path inside the directory, without '.' or '..'")
    if parts == [MANIFEST_NAME]:
        raise UsageError(f"{MANIFEST_NAME!r} is the manifest's name; it is written for you")
    return "/".join(parts)


def inside(directory: str, clean: str, *, local: bool) -> str:
    """Where the file ``clean`` (a name `check_name` returned) of ``directory`` is: a path with
    the OS's separators on a local disk, a ``/``-joined URL on a store."""
    return os.path.join(directory, *clean.split("/")) if local else f"{directory}/{clean}"


def manifest_algorithm() -> str:
    """The algorithm a manifest records for the files it hashes itself: the fastest CRC installed,
    what ``checksum="auto"`` records where no store validates one.  A CRC finds the torn, short
    or bit-flipped file a manifest is checked for, at a tenth of SHA-256's CPU."""
    return first_available(FASTEST_CRCS)


def digest_fd(fd: int, algorithm: str) -> str:
    """``"<algorithm>:<hex>"`` of what is left to read from the file ``fd``."""
    digest = new_digest(algorithm)
    while chunk := os.read(fd, CHUNK):
        digest.update(chunk)
    return f"{algorithm}:{digest.digest().hex()}"


def digest_stream(source: IO[bytes], algorithm: str) -> str:
    """``"<algorithm>:<hex>"`` of what is left to read from ``source``, a chunk at a time."""
    digest = new_digest(algorithm)
    while chunk := source.read(CHUNK):
        digest.update(chunk)
    return f"{algorithm}:{digest.digest().hex()}"


def merge_reported(
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


def new_generation() -> str:
    return f"gen.{time.time_ns()}.{host_tag()}.{os.getpid()}.{os.urandom(4).hex()}"
