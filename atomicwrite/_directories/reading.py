"""Reading a published directory: resolved through its manifest, and verified against it."""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from .._checksums import available
from .._errors import (
    AtomicWriteError,
    TargetNotFoundError,
)
from .._strategy import WriteOptions, resolve_target
from .manifest import (
    GENERATION_NAME,
    MANIFEST_NAME,
    DirectoryManifest,
    DirectoryProblem,
    DirectoryVerification,
    ProblemKind,
    Target,
    check_name,
    digest_stream,
    inside,
)

__all__ = ["PublishedDirectory", "open_directory", "verify_directory"]


@dataclass(frozen=True)
class PublishedDirectory:
    """A published directory as a reader finds it through its manifest."""

    target: str
    manifest: DirectoryManifest
    local: bool
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    #: Whether a local directory's files are under its manifest's generation, as on a mount where
    #: rename copies (`atomicwrite._directories.marker`), rather than directly in ``target``.
    in_generation: bool = False

    @property
    def files_root(self) -> str:
        """The directory (or prefix) that holds this version's files."""
        if self.local and not self.in_generation:
            return self.target
        if self.local:
            return os.path.join(self.target, self.manifest.generation)
        return f"{self.target}/{self.manifest.generation}"

    def path(self, name: str) -> str:
        """Where the file ``name`` of this version is (a path, or a URL)."""
        clean = check_name(name)
        return inside(self.files_root, clean, local=self.local)

    def __truediv__(self, name: str) -> str:
        return self.path(name)

    def __str__(self) -> str:
        # As pathlib.Path does: str() is the directory's path or URL; repr() keeps the manifest.
        return self.target

    def open(self, name: str) -> IO[bytes]:
        """Open the file ``name`` of this version for reading."""
        if self.local:
            return open(self.path(name), "rb")
        import fsspec

        # part_size and parallel_parts tune uploads; the file system itself does not take them.
        options = {k: v for k, v in self.storage_options.items() if k not in ("part_size", "parallel_parts")}
        opened: IO[bytes] = fsspec.open(self.path(name), "rb", **options).open()
        return opened


def _published(
    location: str, local: bool, manifest: DirectoryManifest, options: Mapping[str, Any] | None
) -> PublishedDirectory:
    # A generation directory of the manifest's own name holds the files where rename copies; a
    # renamed directory never has one (the name is drawn when the manifest is written).  Only a
    # name of ours: a manifest never points a reader outside its directory.
    in_generation = (
        local
        and GENERATION_NAME.match(manifest.generation) is not None
        and os.path.isdir(os.path.join(os.path.expanduser(location), manifest.generation))
    )
    return PublishedDirectory(location, manifest, local, dict(options or {}), in_generation)


def _read_manifest(target: Target, storage_options: Mapping[str, Any] | None) -> tuple[str, bool, Any, bytes]:
    """``(location, local, fs, manifest bytes)``; FileNotFoundError if there is no manifest."""
    strategy, location = resolve_target(target)
    from .._stores.base import ObjectStoreStrategy

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
    return _published(location, local, manifest, storage_options)


def verify_directory(
    target: Target, *, checksums: bool = True, storage_options: Mapping[str, Any] | None = None
) -> DirectoryVerification:
    """Check a published directory against its manifest: every file present, with its size and
    (if ``checksums``) its checksum, and no file the manifest does not list.

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
    published = _published(location, local, manifest, storage_options)
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
        if checksums and entry.checksum is not None:
            algorithm = entry.checksum.partition(":")[0]
            if not available(algorithm):
                detail = f"the manifest's {algorithm} cannot be computed here: install its library"
                problems.append(DirectoryProblem("checksum", entry.name, detail))
                continue
            with published.open(entry.name) as source:
                digest = digest_stream(source, algorithm)
            if digest != entry.checksum:
                detail = f"content differs from the manifest's {algorithm} checksum"
                problems.append(DirectoryProblem("checksum", entry.name, detail))
    if local:
        root = published.files_root
        for directory, subdirectories, names in os.walk(root):
            if directory == root and not published.in_generation:
                # Another writer's unfinished generation, where rename copies: not this version's.
                subdirectories[:] = [name for name in subdirectories if not GENERATION_NAME.match(name)]
            for name in names:
                relative = os.path.relpath(os.path.join(directory, name), root).replace(os.sep, "/")
                if relative != MANIFEST_NAME and relative not in listed:
                    problems.append(DirectoryProblem("unlisted", relative, "present but not in the manifest"))
    return DirectoryVerification(text, manifest, tuple(problems), checksums)
