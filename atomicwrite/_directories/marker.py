"""Publishing a local directory where renaming a directory is a copy: FUSE mounts of object
stores (gcsfuse, s3fs-fuse, rclone, goofys...) "rename" a directory by copying every object to
the new name and deleting the old ones, which is neither atomic nor fast.

There the object-store protocol (`atomicwrite._directories.store`) is used on the mount's
paths, with the same layout and the same reader:

    target/
      gen.{time}.{host}.{pid}.{random}/   the files of one write, written in place
      .atomicwrite-manifest.json          names the published generation: the commit marker

Files go straight into a fresh generation directory inside the target; every file and directory
is flushed, then the manifest is written last, as a temp file renamed over the old manifest (a
single file, which such mounts replace whole: one object copy).  Readers that resolve files
through the manifest (`open_directory`, `verify_directory`, `CheckpointStore`) see only marked
generations: the old one until the manifest is replaced, the new one after.  Only once the new
manifest is durable is the old generation (or an older directory's plain files) removed.  A
writer killed at any point leaves the old directory or the new one readable through the
manifest; [`sweep`][atomicwrite.sweep] removes the generations that dead writers left unmarked.

A reader that does not use the manifest (``ls``, a plain ``open``) sees the generation
directories, an unfinished one included, and during a replace the old files beside them until
they are removed.

Which mounts rename by copying is known by their type (``fuse.gcsfuse``...): such a copy cannot
be told from a rename by what it returns.  The protocol is correct on any file system; a
mount taken for a copying one only gets this layout instead of a renamed directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import sys
import time
from collections.abc import Mapping

from .._errors import (
    AtomicWriteError,
    TargetExistsError,
    UnsupportedTargetError,
    os_error,
)
from .._local.base import filesystem_type, flush_to_disk, statfs_magic
from .._names import FRESH_TEMP_GRACE, host_tag, parse_temp_name, writer_alive
from .manifest import (
    GENERATION_NAME,
    MANIFEST_NAME,
    DirectoryCommitResult,
    DirectoryManifest,
    FileEntry,
    manifest_algorithm,
    merge_reported,
    new_generation,
)
from .staging import DirectoryTransaction, StagingDirectory, flush_and_describe

__all__ = [
    "COPYING_RENAMES",
    "FUSE_SUPER_MAGIC",
    "MarkerTransaction",
    "remove_directory",
    "remove_marked",
    "renames_by_copying",
    "sweep_marked",
]

#: Mount types (/proc/self/mountinfo) whose rename of a directory copies every file, then
#: deletes the originals.  (mountpoint-s3 is not here: it renames nothing, and cannot replace
#: the manifest.)
COPYING_RENAMES = frozenset(
    {"fuse.gcsfuse", "fuse.s3fs", "fuse.rclone", "fuse.goofys", "fuse.geesefs", "fuse.blobfuse2"}
)

_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# statfs(2)'s f_type of a FUSE mount (linux/magic.h): sshfs, gcsfuse, s3fs, JuiceFS...
FUSE_SUPER_MAGIC = 0x65735546


def renames_by_copying(path: str) -> str | None:
    """The mount type of ``path`` if renaming a directory there is a copy (see `COPYING_RENAMES`),
    else None."""
    if sys.platform != "linux":
        return None
    try:
        fd = os.open(path, getattr(os, "O_PATH", os.O_RDONLY) | _O_CLOEXEC)
    except OSError:
        return None
    try:
        # Only FUSE mounts copy; fstatfs says so without reading the whole mount table.
        if statfs_magic(fd) != FUSE_SUPER_MAGIC:
            return None
    finally:
        os.close(fd)
    kind = filesystem_type(path)
    return kind if kind in COPYING_RENAMES else None


def _read_manifest(target: str) -> DirectoryManifest | None:
    with (
        contextlib.suppress(OSError, ValueError, KeyError, TypeError),
        open(os.path.join(target, MANIFEST_NAME), "rb") as file,
    ):
        return DirectoryManifest.from_json(file.read())
    return None


def _flush_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
    try:
        flush_to_disk(fd)
    finally:
        os.close(fd)


class MarkerTransaction(DirectoryTransaction):
    """One directory write on a mount where rename copies (see the module's docstring)."""

    strategy_name = "posix"

    def __init__(self, location: str, target: str, *, replace: bool, durability: str, checksums: bool) -> None:
        self._location = location
        self._target = target
        self._replace = replace
        self._durable = durability != "none"
        self._checksums = checksums
        self._created = False
        self._previous: DirectoryManifest | None = None
        try:
            old = os.stat(target, follow_symlinks=False)
        except FileNotFoundError:
            old = None
        if old is not None and not replace:
            raise TargetExistsError.at(location)
        if old is not None and not stat.S_ISDIR(old.st_mode):
            raise UnsupportedTargetError(f"cannot publish a directory at {location!r}: a file is there")
        try:
            if old is None:
                try:
                    os.mkdir(target, 0o777)
                    self._created = True
                except FileExistsError:
                    if not replace:
                        raise TargetExistsError.at(location) from None
            self._generation: str | None = new_generation()
            os.mkdir(os.path.join(target, self._generation), 0o777)
        except OSError as exc:
            if self._created:
                with contextlib.suppress(OSError):
                    os.rmdir(target)
            if isinstance(exc, AtomicWriteError):
                raise
            raise os_error(exc, location, "creating the generation directory") from exc
        self.staging = StagingDirectory(os.path.join(target, self._generation), local=True, storage_options={})

    def _sync(self, path: str) -> None:
        if self._durable:
            _flush_path(path)

    def _walk(self, root: str) -> dict[str, int]:
        """Every written file and its size; subdirectories are flushed on the way."""
        found: dict[str, int] = {}
        for directory, subdirectories, names in os.walk(root):
            subdirectories.sort()
            for name in sorted(names):
                path = os.path.join(directory, name)
                st = os.stat(path, follow_symlinks=False)
                relative = os.path.relpath(path, root).replace(os.sep, "/")
                if not stat.S_ISREG(st.st_mode):
                    raise UnsupportedTargetError(
                        f"{self._location!r}: {relative!r} is a symlink or special file; a directory"
                        " manifest lists regular files only"
                    )
                found[relative] = st.st_size
            for name in subdirectories:
                if os.path.islink(os.path.join(directory, name)):
                    raise UnsupportedTargetError(
                        f"{self._location!r}: {name!r} is a symlink; a directory manifest lists regular files only"
                    )
        return found

    def commit(self, reported: Mapping[str, FileEntry] | None = None) -> DirectoryCommitResult:
        if self._generation is None:
            raise AtomicWriteError(f"the write of {self._location!r} was already committed or discarded")
        try:
            manifest = self._mark(self._generation, reported)
        except BaseException as exc:
            self.discard()
            if isinstance(exc, OSError) and not isinstance(exc, AtomicWriteError):
                raise os_error(exc, self._location, "publishing the directory") from exc
            raise
        self._generation = None
        # Only now that the new marker is durable: what the old one named goes.
        remove_marked(self._target, keep=manifest.generation, previous=self._previous)
        return DirectoryCommitResult(
            target=self._location,
            strategy=self.strategy_name,
            durability="full" if self._durable else "none",
            manifest=manifest,
            replaced=self._previous is not None or not self._created,
        )

    def _mark(self, generation: str, reported: Mapping[str, FileEntry] | None) -> DirectoryManifest:
        from .._api import atomic_open

        root = os.path.join(self._target, generation)
        staged = self._walk(root)
        known = merge_reported(staged, reported, self._location)
        files = flush_and_describe(
            sorted(staged),
            lambda name: os.open(os.path.join(root, *name.split("/")), os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC),
            flush=self._durable,
            algorithm=manifest_algorithm() if self._checksums else None,
            known=known,
        )
        if self._durable:
            for directory, _, _ in os.walk(root, topdown=False):
                _flush_path(directory)
            _flush_path(self._target)  # the generation's own entry
            if self._created:
                _flush_path(os.path.dirname(self._target))  # and the target's, made for it
        manifest = DirectoryManifest(
            generation=generation, files=tuple(files), created=time.time(), metadata=dict(self.metadata)
        )
        # What the marker names now is what this one supersedes (another writer may have
        # published since this write began): removed once this one is durable.
        self._previous = _read_manifest(self._target)
        # The marker: one file, replaced whole by a rename (a single object's copy on these mounts).
        with atomic_open(
            os.path.join(self._target, MANIFEST_NAME), "wb", durability="full" if self._durable else "none"
        ) as file:
            file.write(manifest.to_json())
        return manifest

    def discard(self) -> None:
        generation, self._generation = self._generation, None
        if generation is None:
            return
        shutil.rmtree(os.path.join(self._target, generation), ignore_errors=True)
        if self._created:
            with contextlib.suppress(OSError):
                os.rmdir(self._target)


def remove_marked(target: str, *, keep: str, previous: DirectoryManifest | None) -> None:
    """After the manifest naming ``keep`` is durable: remove the generation ``previous`` named
    and every plain entry an older directory left (its files, an old manifest's layout), but not
    the generations of other writers (still writing, or for `sweep_marked` to judge)."""
    try:
        entries = os.listdir(target)
    except OSError:
        return
    for entry in entries:
        if entry in (MANIFEST_NAME, keep) or parse_temp_name(entry) is not None:
            continue  # the marker, or a temp file of a writer's marker: for `sweep` to judge
        if GENERATION_NAME.match(entry) and (previous is None or entry != previous.generation):
            continue
        path = os.path.join(target, entry)
        with contextlib.suppress(OSError):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)


def remove_directory(path: str) -> None:
    """Remove a published directory in place, marker first: a reader then finds no generation
    instead of a half-removed one (a rename aside would copy every file)."""
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(path, MANIFEST_NAME))
    shutil.rmtree(path, ignore_errors=True)


def sweep_marked(directory: str, older_than: float, dry_run: bool) -> list[str]:
    """Remove the unmarked generations that dead writers left in ``directory`` and in each
    directory directly under it (a `CheckpointStore` root's generations); return their paths.

    A generation is a dead writer's when it is named like one of ours, no manifest names it,
    and its writer (this host) is gone, or, written on another host, it is older than
    ``older_than``.  A dead writer's unfinished marker (its temp file) goes too, and so does a
    target that a dead create made and left empty.
    """
    removed: list[str] = []
    targets = [directory]
    with contextlib.suppress(OSError):
        targets += [
            os.path.join(directory, entry)
            for entry in sorted(os.listdir(directory))
            if not GENERATION_NAME.match(entry)
            and os.path.isdir(os.path.join(directory, entry))
            and not os.path.islink(os.path.join(directory, entry))  # a pointer: its target is listed
        ]
    now = time.time_ns()
    for target in targets:
        try:
            entries = sorted(os.listdir(target))
        except OSError:
            continue
        marked = _read_manifest(target)
        swept = False
        for entry in entries:
            temp = parse_temp_name(entry)
            if temp is not None and entry.startswith(f".{MANIFEST_NAME}.") and writer_alive(*temp) is False:
                # A killed writer's unfinished marker (its writer on this host is gone).
                if not dry_run:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(target, entry))
                removed.append(os.path.join(target, entry))
                continue
            match = GENERATION_NAME.match(entry)
            if match is None or (marked is not None and entry == marked.generation):
                continue
            pid = int(match.group("pid"))
            if match.group("host") == host_tag() and pid == os.getpid():
                continue  # this process's own write, still open
            alive = writer_alive(match.group("host"), pid)
            age = (now - int(match.group("time"))) / 1e9
            if alive or (alive is None and age < max(older_than, FRESH_TEMP_GRACE)):
                continue
            if not dry_run:
                shutil.rmtree(os.path.join(target, entry), ignore_errors=True)
            removed.append(os.path.join(target, entry))
            swept = True
        if swept and marked is None and not dry_run:
            with contextlib.suppress(OSError):
                os.rmdir(target)  # only if empty: what a killed create made
    return removed
