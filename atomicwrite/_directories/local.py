"""Publishing a directory on a local disk: stage it in a hidden sibling, flush everything, write
the manifest last, then rename it into place (or swap it with the old one, where the system can).

The staging directory is named like a temp file (``.{name}.aw{host}.{pid}.{random}.stage``) and
stays locked while its writer lives, so that `remove_stale_staging` (which `atomicwrite.sweep`
calls) removes exactly the dead writers' ones.  The renames are the POSIX strategy's own calls.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

from .._errors import (
    AtomicWriteError,
    OverlayDirectoryError,
    TargetExistsError,
    UnsupportedTargetError,
    os_error,
)
from .._local.base import filesystem_type, flush_to_disk, statfs_magic
from .._names import FRESH_TEMP_GRACE, leftover_status, parse_staging_name, temp_name
from .manifest import (
    MANIFEST_NAME,
    DirectoryCommitResult,
    DirectoryManifest,
    FileEntry,
    manifest_algorithm,
    merge_reported,
    new_generation,
)
from .marker import FUSE_SUPER_MAGIC, remove_directory, renames_by_copying, sweep_marked
from .reading import verify_directory
from .staging import DirectoryTransaction, StagingDirectory, flush_and_describe

__all__ = [
    "DirectoryRenames",
    "LocalTransaction",
    "directory_can_move",
    "on_overlay",
    "remove_stale_staging",
    "remove_tree",
    "sweep_staging",
]

WriterAlive = Callable[[str, int], "bool | None"]


class DirectoryRenames(Protocol):
    """The two renames of the local strategy (`atomicwrite._local.posix.PosixStrategy`) that
    publishing a directory needs; each returns 0 or the errno, ENOSYS where it does not exist."""

    def rename_exclusive(self, dir_fd: int, source: str, destination: str) -> int: ...

    def exchange(self, dir_fd: int, first: str, second: str) -> int: ...


_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# statfs(2)'s f_type of an overlay mount (linux/magic.h).
OVERLAYFS_SUPER_MAGIC = 0x794C7630
# errnos by which a FUSE server refuses to rename a non-empty directory.
NO_DIRECTORY_RENAME = frozenset({errno.EXDEV, errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP})


class LocalTransaction(DirectoryTransaction):
    strategy_name = "posix"

    def __init__(
        self, strategy: DirectoryRenames, location: str, target: str, *, replace: bool, durability: str, checksums: bool
    ) -> None:
        self._strategy = strategy
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
            old = self._existing()
            self._check_target(old)
            magic = statfs_magic(self._dir_fd)
            if magic == OVERLAYFS_SUPER_MAGIC and old is not None and stat.S_ISDIR(old.st_mode):
                self._refuse_unmovable()
            elif magic == FUSE_SUPER_MAGIC:
                self._refuse_without_directory_rename()
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

    def _refuse_unmovable(self) -> None:
        """Raise `OverlayDirectoryError` if overlayfs cannot rename the existing directory (it
        comes from a lower layer and the mount lacks ``redirect_dir=on``): publishing would fail
        with EXDEV after the caller wrote everything."""
        assert self._dir_fd is not None
        try:
            movable = directory_can_move(self._parent, self._dir_fd, self._name)
        except OSError as exc:
            raise os_error(exc, self._location, "checking that overlayfs can rename the directory") from exc
        if not movable:
            raise self._unmovable()

    def _unmovable(self) -> OverlayDirectoryError:
        return OverlayDirectoryError(
            errno.EXDEV,
            f"cannot replace {self._location!r}: the directory comes from a lower layer of an overlayfs mount"
            " (a container image, for instance), and overlayfs renames such a directory only when mounted with"
            " redirect_dir=on; nothing was written. Put checkpoints on a volume or bind mount"
            " (docker run -v HOST_DIR:DIR), or mount the overlay with redirect_dir=on",
            self._location,
        )

    def _refuse_without_directory_rename(self) -> None:
        """Raise `UnsupportedTargetError` if this FUSE file system cannot rename a non-empty
        directory (gcsfuse and s3 mounts without it, some sshfs servers): publishing renames the
        staging directory, and would fail after the caller wrote everything.

        The probe renames a fresh directory holding one entry to another fresh name; where that
        works, publishing does too.
        """
        assert self._dir_fd is not None
        dir_fd = self._dir_fd
        moved = temp_name(self._name, ".stage")
        with _occupied_probe(self._parent, dir_fd, self._name) as probe:
            try:
                os.rename(probe, moved, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno not in NO_DIRECTORY_RENAME:
                    raise os_error(exc, self._location, "checking that the file system can rename a directory") from exc
                kind = filesystem_type(self._parent) or "FUSE"
                raise UnsupportedTargetError(
                    f"cannot publish a directory at {self._location!r}: its file system ({kind}) cannot"
                    f" rename a non-empty directory ({errno.errorcode.get(exc.errno or 0, exc.errno)}), and"
                    " publishing is that rename; nothing was written. Write checkpoints to a local disk or"
                    " a mount that renames directories, or to the object store directly"
                    " (s3://, gs://, az://), where a manifest publishes them"
                ) from exc
            remove_tree(self._parent, dir_fd, moved)

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

        # Listed through a descriptor opened now: btrfs lists only the entries a directory had
        # when its descriptor was opened (it keeps the last index from then), and the staging
        # directory's own descriptor was opened while it was empty.  By name, as the publishing
        # rename finds it.
        assert self._dir_fd is not None
        assert self._stage_name is not None
        top = os.open(self._stage_name, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC, dir_fd=self._dir_fd)
        try:
            visit(top, "")
        finally:
            os.close(top)
        return found

    def _open_staged(self, name: str) -> int:
        assert self._stage_fd is not None
        return os.open(name, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC, dir_fd=self._stage_fd)

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
        known = merge_reported(staged, reported, self._location)
        # A file reported by the process that wrote (and flushed) it is flushed here too: cheap
        # once its pages are clean, and it covers writers that did not.
        files = flush_and_describe(
            sorted(staged),
            self._open_staged,
            flush=self._durable,
            algorithm=manifest_algorithm() if self._checksums else None,
            known=known,
        )
        manifest = DirectoryManifest(
            generation=new_generation(), files=tuple(files), created=time.time(), metadata=dict(self.metadata)
        )
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
        while True:
            old = self._existing()
            self._check_target(old)
            if old is None:
                # No-replace, so that a directory (or a symlink) that appeared meanwhile is
                # never replaced by a create: the rename itself is the existence check.
                code = self._strategy.rename_exclusive(dir_fd, stage, name)
                if code == 0:
                    break
                if code == errno.EEXIST:
                    continue  # another writer published first: replace it (or refuse) above
                if code != errno.ENOSYS:
                    raise OSError(code, os.strerror(code), self._location)
                # No no-replace rename here (an old kernel, a file system without the flag): a
                # plain rename, which still refuses a file, a link or a non-empty directory that
                # appeared meanwhile (then decided above, as a create or a replace); only an
                # empty directory appearing in this instant would be replaced.
                try:
                    os.rename(stage, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                except OSError:
                    if self._existing() is not None:
                        continue
                    raise
                break
            code = self._strategy.exchange(dir_fd, stage, name)
            if code == errno.ENOENT:
                continue  # the old one vanished meanwhile
            if code == 0:
                # The old directory now sits under the staging name.
                self._finish(stage)
                return True
            if code == errno.EXDEV and on_overlay(dir_fd):
                # A lower-layer directory that appeared after the probe: refused all the same.
                raise self._unmovable()
            if code != errno.ENOSYS:
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
            remove_tree(self._parent, self._dir_fd, old)
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
                remove_tree(self._parent, self._dir_fd, stage)
        finally:
            self._close_parent()


def remove_tree(parent: str, dir_fd: int, name: str) -> None:
    """Remove a directory tree, out of sight first: renamed to a fresh temp name, so no reader
    ever finds a half-removed directory under a name it trusts.  Where a rename is a copy, its
    manifest goes first instead, then the rest in place (`atomicwrite._directories.marker`)."""
    if renames_by_copying(parent) is not None:
        remove_directory(os.path.join(parent, name))
        return
    # Trash, not a staging name: a sweep may publish a dead writer's complete staging
    # directory (see _finish_interrupted_replaces), and must never bring back a removed one.
    hidden = name if parse_staging_name(name) else temp_name(name, ".trash")
    with contextlib.suppress(OSError):
        if hidden != name:
            os.rename(name, hidden, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        shutil.rmtree(os.path.join(parent, hidden))


def directory_can_move(parent: str, dir_fd: int, name: str) -> bool:
    """Whether the directory ``name`` in ``dir_fd`` (the directory ``parent``) can be renamed;
    False where overlayfs refuses with EXDEV (a lower-layer directory without ``redirect_dir=on``).

    The probe renames the directory over a fresh non-empty one: overlayfs answers EXDEV for an
    unmovable directory before it changes anything, and the file system beneath answers
    ENOTEMPTY for a movable one, so nothing moves either way.
    """
    with _occupied_probe(parent, dir_fd, name) as probe:
        try:
            os.rename(name, probe, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                return False
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                return True
            raise
        # A non-empty directory was replaced, against POSIX: put the old one back at once.
        os.rename(probe, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        raise UnsupportedTargetError(f"{os.path.join(parent, name)!r}: this file system replaced a non-empty directory")


@contextlib.contextmanager
def _occupied_probe(parent: str, dir_fd: int, name: str) -> Iterator[str]:
    """A fresh staging directory beside ``name`` holding one entry, removed at the end: what the
    rename probes move or rename over, since a rename treats a non-empty directory differently
    from an empty one (it refuses to replace it; some FUSE servers refuse to move it)."""
    probe = temp_name(name, ".stage")
    os.mkdir(probe, 0o700, dir_fd=dir_fd)
    try:
        os.mkdir(os.path.join(probe, "occupied"), 0o700, dir_fd=dir_fd)
        yield probe
    finally:
        remove_tree(parent, dir_fd, probe)


def on_overlay(dir_fd: int) -> bool:
    """Whether ``dir_fd`` is a directory of an overlayfs mount (fstatfs(2), Linux only)."""
    return statfs_magic(dir_fd) == OVERLAYFS_SUPER_MAGIC


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


def sweep_staging(
    directory: str, older_than: float, dry_run: bool, writer_alive: WriterAlive, renames: DirectoryRenames
) -> list[str]:
    """Remove the staging directories and pointer temp links that dead writers left in a local
    ``directory``; return their paths.  ``writer_alive`` and ``renames`` are the local
    strategy's own; a replace that died between its two renames is finished first.  On a mount
    where rename copies, also the unmarked generations of dead writers (`sweep_marked`)."""
    cutoff = time.time() - older_than
    removed: list[str] = []
    try:
        entries = sorted(os.listdir(directory))
    except OSError:
        return removed  # removed since the strategy's sweep listed it: nothing left to sweep
    dead_stages = []
    for entry in entries:
        parsed = parse_staging_name(entry)
        if parsed is not None and parsed[2] == "stage" and writer_alive(parsed[0], parsed[1]) is False:
            dead_stages.append(entry)
    if not dry_run:
        _finish_interrupted_replaces(directory, dead_stages, renames)
    if renames_by_copying(directory) is not None:
        removed += sweep_marked(directory, older_than, dry_run)
    for entry in entries:
        parsed = parse_staging_name(entry)
        if parsed is None:
            continue
        host, pid, kind = parsed
        if remove_stale_staging(directory, entry, kind, alive=writer_alive(host, pid), cutoff=cutoff, dry_run=dry_run):
            removed.append(os.path.join(directory, entry))
    return removed


def _finish_interrupted_replaces(directory: str, dead_stages: list[str], renames: DirectoryRenames) -> None:
    """Move a complete new directory into place where a replace without RENAME_EXCHANGE died
    between its two renames (the old one parked, the new one not yet in): the target is then
    absent, and both halves are staging directories of a dead writer that would be removed.

    Of the candidates for an absent target, the one whose manifest verifies and is newest wins
    (the new one: a parked old directory is older, or has no manifest); the rest are then
    removed as usual.
    """
    candidates: dict[str, list[tuple[float, str]]] = {}
    for entry in dead_stages:
        name = entry[1:].rsplit(".aw", 1)[0]
        if os.path.lexists(os.path.join(directory, name)):
            continue
        with contextlib.suppress(OSError, AtomicWriteError):
            if leftover_status(os.path.join(directory, entry), stat.S_ISDIR) is None:
                continue  # a symlink or a file planted under a staging name: never moved
            verification = verify_directory(os.path.join(directory, entry))
            if verification.ok and verification.manifest is not None:
                candidates.setdefault(name, []).append((verification.manifest.created, entry))
    for name, found in candidates.items():
        entry = max(found)[1]
        with contextlib.suppress(OSError):
            dir_fd = os.open(directory, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
            try:
                # No-replace: whatever appeared at the name meanwhile (even an empty directory,
                # which a plain rename would replace) is the user's, and wins.
                code = renames.rename_exclusive(dir_fd, entry, name)
                if code == errno.ENOSYS and not os.path.lexists(os.path.join(directory, name)):
                    os.rename(entry, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                    code = 0
                if code == 0:
                    flush_to_disk(dir_fd)
            finally:
                os.close(dir_fd)


def remove_stale_staging(  # noqa: PLR0911 - one early return per reason to keep it
    directory: str, entry: str, kind: str, *, alive: bool | None, cutoff: float, dry_run: bool
) -> bool:
    """Remove a dead writer's staging directory (``kind`` "stage"), directory being removed
    ("trash") or pointer temp symlink ("link") from a local ``directory``; True if it was (or
    would be) removed.

    A staging directory stays locked (flock) while its writer lives; a symlink cannot be
    locked, so one goes only when its writer is known dead, or it is older than ``cutoff``
    and written on another host.  Nothing is ever followed.
    """
    path = os.path.join(directory, entry)
    if kind == "link":
        st = leftover_status(path, stat.S_ISLNK)
        if st is None:
            return False
        if alive or (alive is None and st.st_mtime >= cutoff):
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
        if alive is not False and not old_enough:
            return False
        if not dry_run:
            shutil.rmtree(path, ignore_errors=True)
        return True
    finally:
        os.close(fd)
