"""Publishing a directory on a local Windows disk.

Windows cannot do what the POSIX protocol (`atomicwrite._directories.local`) does last:
``MoveFileExW`` with ``MOVEFILE_REPLACE_EXISTING`` refuses to replace a directory, there is no
``RENAME_EXCHANGE``, and renaming a directory fails while any file inside it is open in another
process, so a replace by renames would fail (or, renaming the old one aside first, leave the
target absent) whenever a reader is busy with the old version.  The protocol here:

1. **Stage** the files in a hidden sibling, ``.{name}.aw{host}.{pid}.{random}.stage``, on the
   target's volume.  The writer holds the staging directory open without
   ``FILE_SHARE_DELETE`` (`Kernel32.hold_directory`) for as long as it writes: Windows itself
   then refuses to delete or rename it, which is how [`sweep`][atomicwrite.sweep] tells a live
   writer's staging directory from a dead one's (there is no ``flock``), as it does for a single
   file's temp.
2. At the end of the block every file is flushed (``FlushFileBuffers``) and hashed, and the
   manifest is written and flushed *last*.  Windows has no directory flush; on NTFS a file
   flush commits the metadata log up to it, the staged directory entries included, and the
   publishing moves below are write-through.
3. **Create** (no target): one ``MoveFileExW(stage, target, MOVEFILE_WRITE_THROUGH)``, without
   ``MOVEFILE_REPLACE_EXISTING``: it fails if the name exists, so the existence check and the
   publish are one atomic call.  The directory then has the same layout as on POSIX: the files
   directly in it, beside its manifest.
4. **Replace** (a directory is there): a generation plus a pointer file, as on object stores and
   on mounts where rename copies (`atomicwrite._directories.marker`), with the same layout and
   the same reader.  The staging directory is moved *into* the target under the manifest's
   generation name (``target\\gen.{time}.{host}.{pid}.{random}``, write-through); then the
   manifest, the pointer, is written to a temp file in the target, flushed, and moved over
   ``target\\.atomicwrite-manifest.json`` with ``MOVEFILE_REPLACE_EXISTING |
   MOVEFILE_WRITE_THROUGH``: that one file replace is the commit.  Only then is what the old
   manifest named removed (the old generation, or an older directory's plain files); a file a
   reader still holds open cannot be deleted on Windows, so it stays, unnamed by the manifest,
   until `sweep` removes it once the process that wrote it has exited.

   Chosen over renaming the old directory aside and the new one in: that leaves the target
   *absent* for an instant (and, after a crash in between, only under a temp name), and its
   first rename fails outright while any reader has a file of the old version open.  Here the
   target's name never stops naming a complete directory, and busy readers block nothing.

What a reader sees: through the manifest ([`open_directory`][atomicwrite.open_directory],
[`verify_directory`][atomicwrite.verify_directory]) the old version until the pointer is
replaced, the new one after, never a mix.  A reader that does not use the manifest (``dir``, a
plain ``open(target\\model.bin)``) finds the files of a replaced directory under its generation
subdirectory, and may see an unfinished generation or the old files beside it for a moment.

A writer killed at any point leaves the old directory (or, for a create, none) or the new one,
readable through the manifest; what it left besides (its staging directory, an unmarked
generation, a pointer temp file) is removed by `sweep` once its process is gone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import time
from collections.abc import Mapping

from .._errors import (
    AtomicWriteError,
    TargetExistsError,
    UnsupportedTargetError,
    os_error,
)
from .._local.windows import (
    ERROR_ALREADY_EXISTS,
    ERROR_FILE_EXISTS,
    MOVEFILE_REPLACE_EXISTING,
    MOVEFILE_WRITE_THROUGH,
    RETRYABLE,
    WindowsStrategy,
    winerror_error,
)
from .._names import FRESH_TEMP_GRACE, leftover_status, parse_staging_name, parse_temp_name, temp_name
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
from .marker import remove_marked
from .staging import DirectoryTransaction, StagingDirectory, flush_and_describe

__all__ = ["WindowsDirectoryTransaction", "sweep_windows_staging"]

_O_BINARY = getattr(os, "O_BINARY", 0)
_O_NOINHERIT = getattr(os, "O_NOINHERIT", getattr(os, "O_CLOEXEC", 0))
_EXISTS = (ERROR_ALREADY_EXISTS, ERROR_FILE_EXISTS)


def _is_link(path: str) -> bool:
    """A symlink or a junction: never listed, followed or removed through."""
    isjunction = getattr(os.path, "isjunction", None)  # Python 3.12+
    return os.path.islink(path) or (isjunction is not None and bool(isjunction(path)))


def _read_manifest(target: str) -> DirectoryManifest | None:
    with (
        contextlib.suppress(OSError, ValueError, KeyError, TypeError),
        open(os.path.join(target, MANIFEST_NAME), "rb") as file,
    ):
        return DirectoryManifest.from_json(file.read())
    return None


class WindowsDirectoryTransaction(DirectoryTransaction):
    """One directory write on a local Windows path (see the module's docstring)."""

    strategy_name = "windows"

    def __init__(
        self, strategy: WindowsStrategy, location: str, *, replace: bool, durability: str, checksums: bool
    ) -> None:
        self._kernel32 = strategy.kernel32  # first: without kernel32 nothing gets created
        self._strategy = strategy
        self._location = location
        self._replace = replace
        self._durable = durability != "none"
        self._checksums = checksums
        # A replace goes through a symlink to the directory (the link stays); a create never
        # does: the link is an existing name.
        self._target = strategy.resolve(
            os.path.normpath(strategy.absolute(location)), follow_symlinks=replace, directory=True
        )
        parent, name = os.path.split(self._target)
        self._check_target(self._existing())
        self._stage: str | None = None
        self._handle: int | None = None
        # A generation moved into the target but not yet named by its manifest.
        self._unmarked: str | None = None
        try:
            while True:
                candidate = os.path.join(parent, temp_name(name, ".stage"))
                try:
                    os.mkdir(candidate, 0o777)
                except FileExistsError:
                    continue
                break
            self._stage = candidate
            code, handle = self._kernel32.hold_directory(candidate)
            if code:
                raise winerror_error(code, location, "holding the staging directory open")
            self._handle = handle
        except BaseException as exc:
            self.discard()
            if isinstance(exc, OSError) and not isinstance(exc, AtomicWriteError):
                raise os_error(exc, location, "creating the staging directory") from exc
            raise
        self.staging = StagingDirectory(candidate, local=True, storage_options={}, flush_needs_write=True)

    def _existing(self) -> os.stat_result | None:
        try:
            return os.lstat(self._target)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise os_error(exc, self._location, "reading the target's status") from exc

    def _check_target(self, old: os.stat_result | None) -> None:
        if old is None:
            return
        if not self._replace:
            raise TargetExistsError.at(self._location)
        if not stat.S_ISDIR(old.st_mode) or _is_link(self._target):
            raise UnsupportedTargetError(
                f"cannot publish a directory at {self._location!r}: a file or link that is not a directory is there"
            )

    def _walk(self, root: str) -> dict[str, int]:
        """Every staged file and its size; refuses what a manifest cannot vouch for."""
        found: dict[str, int] = {}
        for directory, subdirectories, names in os.walk(root):
            subdirectories.sort()
            for entry in subdirectories:
                if _is_link(os.path.join(directory, entry)):
                    raise UnsupportedTargetError(
                        f"{self._location!r}: {entry!r} is a symlink or junction; a directory manifest"
                        " lists regular files only"
                    )
            for entry in sorted(names):
                path = os.path.join(directory, entry)
                relative = os.path.relpath(path, root).replace(os.sep, "/")
                if not stat.S_ISREG(os.lstat(path).st_mode):
                    raise UnsupportedTargetError(
                        f"{self._location!r}: {relative!r} is a symlink or special file; a directory"
                        " manifest lists regular files only"
                    )
                if relative != MANIFEST_NAME:
                    found[relative] = os.lstat(path).st_size
        return found

    def _write_new_file(self, path: str, data: bytes) -> None:
        """Create ``path`` (never reusing anything there), write ``data``, flush it if durable."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY | _O_NOINHERIT, 0o666)
        try:
            with open(fd, "wb", closefd=False) as out:
                out.write(data)
            if self._durable:
                os.fsync(fd)
        finally:
            os.close(fd)

    def commit(self, reported: Mapping[str, FileEntry] | None = None) -> DirectoryCommitResult:
        if self._stage is None:
            raise AtomicWriteError(f"the write of {self._location!r} was already committed or discarded")
        try:
            manifest, replaced = self._commit(self._stage, reported)
        except BaseException as exc:
            self.discard()
            if isinstance(exc, OSError) and not isinstance(exc, AtomicWriteError):
                raise os_error(exc, self._location, "publishing the directory") from exc
            raise
        return DirectoryCommitResult(
            target=self._location,
            strategy=self.strategy_name,
            durability="full" if self._durable else "none",
            manifest=manifest,
            replaced=replaced,
        )

    def _commit(self, stage: str, reported: Mapping[str, FileEntry] | None) -> tuple[DirectoryManifest, bool]:
        staged = self._walk(stage)
        known = merge_reported(staged, reported, self._location)
        # FlushFileBuffers needs a handle with write access.
        access = os.O_RDWR if self._durable else os.O_RDONLY
        files = flush_and_describe(
            sorted(staged),
            lambda name: os.open(os.path.join(stage, *name.split("/")), access | _O_BINARY | _O_NOINHERIT),
            flush=self._durable,
            algorithm=manifest_algorithm() if self._checksums else None,
            known=known,
        )
        manifest = DirectoryManifest(
            generation=new_generation(), files=tuple(files), created=time.time(), metadata=dict(self.metadata)
        )
        # Last: a staged directory with a manifest is complete.
        self._write_new_file(os.path.join(stage, MANIFEST_NAME), manifest.to_json())
        return manifest, self._publish(stage, manifest)

    def _move(self, source: str, destination: str, flags: int) -> int:
        kernel32 = self._kernel32
        return self._strategy.retry(lambda: kernel32.move_file_ex(source, destination, flags), RETRYABLE)

    def _publish(self, stage: str, manifest: DirectoryManifest) -> bool:
        """Move the staging directory into place; True if it replaced a directory."""
        through = MOVEFILE_WRITE_THROUGH if self._durable else 0
        # The hold refuses our own move too.  From here on the staging directory's fresh
        # modification time (the manifest was just written into it) and this live process keep
        # a sweep away.
        self._release()
        while True:
            old = self._existing()
            self._check_target(old)
            if old is None:
                code = self._move(stage, self._target, through)
                if code == 0:
                    self._stage = None
                    return False
                if code in _EXISTS and self._existing() is not None:
                    continue  # a directory appeared meanwhile: replace it, or refuse, above
                raise winerror_error(code, self._location, "publishing the directory with MoveFileExW")
            previous = _read_manifest(self._target)
            generation = os.path.join(self._target, manifest.generation)
            code = self._move(stage, generation, through)
            if code and self._existing() is None:
                continue  # the old directory vanished meanwhile: create instead
            if code:
                raise winerror_error(code, self._location, "moving the new generation into the directory")
            self._stage, self._unmarked = None, generation
            self._point_to(manifest, through)
            self._unmarked = None
            # Only now that the pointer names the new generation: what the old one named goes.
            remove_marked(self._target, keep=manifest.generation, previous=previous)
            return True

    def _point_to(self, manifest: DirectoryManifest, through: int) -> None:
        """Replace the target's manifest with ``manifest``, in one write-through file replace."""
        while True:
            temp = os.path.join(self._target, temp_name(MANIFEST_NAME))
            try:
                self._write_new_file(temp, manifest.to_json())
            except FileExistsError:
                continue
            break
        code = self._move(temp, os.path.join(self._target, MANIFEST_NAME), MOVEFILE_REPLACE_EXISTING | through)
        if code:
            self._strategy.remove_temp(temp)
            raise winerror_error(code, self._location, "replacing the directory's manifest with MoveFileExW")

    def _release(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            self._kernel32.close_handle(handle)

    def discard(self) -> None:
        self._release()
        stage, self._stage = self._stage, None
        unmarked, self._unmarked = self._unmarked, None
        for path in (stage, unmarked):
            if path is not None:
                # Best effort: a scanner may hold a file a moment; sweep() gets what is left.
                shutil.rmtree(path, ignore_errors=True)


def sweep_windows_staging(directory: str, older_than: float, dry_run: bool, strategy: WindowsStrategy) -> list[str]:
    """Remove what dead directory writers left in a local Windows ``directory``: their staging
    directories and trash (a `CheckpointStore` generation being retired), and in each directory
    under it (a target, or a `CheckpointStore` root's generation), unmarked generations and
    pointer temp files.  Returns their paths."""
    cutoff = time.time() - older_than
    removed: list[str] = []
    try:
        entries = sorted(os.listdir(directory))
    except OSError:
        return removed
    for entry in entries:
        parsed = parse_staging_name(entry)
        # A staging directory, or a CheckpointStore generation being removed (its rmtree was
        # killed, or a reader held a file of it).
        if parsed is not None and parsed[2] in ("stage", "trash"):
            path = os.path.join(directory, entry)
            if _remove_stale_stage(path, parsed[:2], cutoff, dry_run, strategy):
                removed.append(path)
    targets = [directory]
    targets += [
        os.path.join(directory, entry)
        for entry in entries
        if parse_staging_name(entry) is None
        and not GENERATION_NAME.match(entry)
        and os.path.isdir(os.path.join(directory, entry))
        and not _is_link(os.path.join(directory, entry))
    ]
    for target in targets:
        removed += _sweep_target(target, older_than, cutoff, dry_run, strategy, temps=target != directory)
    return removed


def _remove_stale_stage(
    path: str, writer: tuple[str, int], cutoff: float, dry_run: bool, strategy: WindowsStrategy
) -> bool:
    """The rule of `WindowsStrategy.remove_if_stale`, for a staging directory: only a real
    directory; one whose writer may be alive is kept unless old; one its writer still holds open
    (Windows refuses to let it be deleted) is kept however old."""
    st = leftover_status(path, stat.S_ISDIR)
    if st is None or _is_link(path):
        return False
    old_enough = st.st_mtime < cutoff and st.st_mtime < time.time() - FRESH_TEMP_GRACE
    if not old_enough and strategy.writer_alive(*writer) is not False:
        return False
    if strategy.kernel32.can_delete(path) != 0:
        return False
    if not dry_run:
        shutil.rmtree(path, ignore_errors=True)
    return True


def _sweep_target(
    target: str, older_than: float, cutoff: float, dry_run: bool, strategy: WindowsStrategy, *, temps: bool
) -> list[str]:
    """In one target: generations that no manifest names, of writers that are gone (a replace
    killed before its pointer moved, or an old generation a reader kept from being removed),
    and, with ``temps``, dead writers' pointer temp files."""
    try:
        entries = sorted(os.listdir(target))
    except OSError:
        return []
    marked = _read_manifest(target)
    removed: list[str] = []
    now = time.time_ns()
    for entry in entries:
        path = os.path.join(target, entry)
        if temps and entry.startswith("." + MANIFEST_NAME):
            writer = parse_temp_name(entry)
            if writer is not None and strategy.remove_if_stale(
                target, entry, writer=writer, cutoff=cutoff, dry_run=dry_run
            ):
                removed.append(path)
            continue
        match = GENERATION_NAME.match(entry)
        if match is None or (marked is not None and entry == marked.generation):
            continue
        if leftover_status(path, stat.S_ISDIR) is None or _is_link(path):
            continue
        alive = strategy.writer_alive(match.group("host"), int(match.group("pid")))
        age = (now - int(match.group("time"))) / 1e9
        if alive or (alive is None and age < max(older_than, FRESH_TEMP_GRACE)):
            continue
        if not dry_run:
            shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed
