"""All-or-nothing directories: stage many files, list them in a manifest, publish them at once.

A checkpoint is rarely one file: sharded model and optimizer states, one per rank, plus
metadata.  [`atomic_directory`][atomicwrite.atomic_directory] gives such a directory the promise
a single file gets from [`atomic_open`][atomicwrite.atomic_open]:

**Local disks** (rename exists, `atomicwrite._directories.local`).  Files are staged in a hidden
sibling directory named like a temp file (``.{name}.aw{host}.{pid}.{random}.stage``), so it is
on the target's file system and [`sweep`][atomicwrite.sweep] recognises it after a crash.  At
the end of the block every file is fsynced and hashed, every directory fsynced, the manifest
written and fsynced *last*, then the staging directory is renamed into place and the parent
fsynced.  An existing target is swapped with ``renameat2(RENAME_EXCHANGE)`` on Linux, so its
name never stops naming a complete directory; the old one is then removed.  Where that call
does not exist (macOS, file systems without it), the old directory is first renamed aside,
then the new one renamed in: for that instant the target is *absent* (a reader gets
``FileNotFoundError``, never a partial directory), and after a crash in between the old one
remains under its temp name.

**Object stores** (no rename, `atomicwrite._directories.store`).  Files are written under a
fresh generation prefix inside the target (``{target}/gen.{time}.{host}.{pid}.{random}/``); the
manifest at ``{target}/.atomicwrite-manifest.json`` names that generation and is written after
every object, conditionally (``If-None-Match: *`` for a new directory, ``If-Match`` the previous
manifest's version for a replacement).  That one conditional write is the commit: a reader
resolves files through the manifest, so an unfinished generation is never seen, and of two
racing writers one wins and the other gets [`ConflictError`][atomicwrite.ConflictError].
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from .._callbacks import check_on_commit
from .._errors import (
    UnsupportedTargetError,
    UsageError,
)
from .._strategy import WriteOptions, resolve_target
from .manifest import DirectoryCommitCallback, Target
from .staging import DirectoryTransaction, StagingDirectory, TimedTransaction

__all__ = ["atomic_directory", "begin_directory"]


def begin_directory(
    target: Target,
    *,
    replace: bool = True,
    durability: Literal["none", "full"] = "full",
    checksums: bool = True,
    storage_options: Mapping[str, Any] | None = None,
    on_commit: DirectoryCommitCallback | None = None,
) -> DirectoryTransaction:
    """Start a directory write without a ``with`` block (see [`atomic_directory`][atomicwrite.atomic_directory])."""
    began = time.perf_counter()
    check_on_commit(on_commit, "DirectoryCommitResult")
    transaction = _begin_protocol(
        target, replace=replace, durability=durability, checksums=checksums, storage_options=storage_options
    )
    return TimedTransaction(transaction, began=began, on_commit=on_commit)


def _begin_protocol(
    target: Target,
    *,
    replace: bool,
    durability: Literal["none", "full"],
    checksums: bool,
    storage_options: Mapping[str, Any] | None,
) -> DirectoryTransaction:
    """The transaction of the protocol that publishes a directory at ``target``."""
    if durability not in ("none", "full"):
        raise UsageError(f"durability must be 'none' or 'full' for a directory, not {durability!r}")
    strategy, location = resolve_target(target)
    options = WriteOptions(storage_options=dict(storage_options or {}))
    from .._stores.base import ObjectStoreStrategy

    if isinstance(strategy, ObjectStoreStrategy):
        from .store import StoreTransaction

        return StoreTransaction(strategy, location, options, replace=replace, checksums=checksums)
    if sys.platform != "win32":  # an if of its own: mypy --platform win32 skips the POSIX code
        from .._local.posix import PosixStrategy

        if isinstance(strategy, PosixStrategy):
            from .local import LocalTransaction

            # A replace goes through a symlink to the directory it names (the link stays), under
            # the same rules as a file's; a create never does: the link is an existing name.
            path = strategy.resolve(
                os.path.normpath(strategy.absolute(location)), follow_symlinks=replace, directory=True
            )
            if os.path.basename(path) in ("", ".", ".."):
                raise UsageError(f"{location!r} does not name a directory entry that can be replaced")
            from .marker import MarkerTransaction, renames_by_copying

            if renames_by_copying(os.path.dirname(path)) is not None:
                # Renaming a directory there copies it: publish by a commit marker instead.
                return MarkerTransaction(location, path, replace=replace, durability=durability, checksums=checksums)
            return LocalTransaction(
                strategy, location, path, replace=replace, durability=durability, checksums=checksums
            )
    from .._local.windows import WindowsStrategy

    if isinstance(strategy, WindowsStrategy):
        from .windows import WindowsDirectoryTransaction

        return WindowsDirectoryTransaction(
            strategy, location, replace=replace, durability=durability, checksums=checksums
        )
    raise UnsupportedTargetError(f"atomic_directory does not support {location!r} ({strategy.name}) yet")


@contextlib.contextmanager
def atomic_directory(
    target: Target,
    *,
    replace: bool = True,
    durability: Literal["none", "full"] = "full",
    checksums: bool = True,
    storage_options: Mapping[str, Any] | None = None,
    on_commit: DirectoryCommitCallback | None = None,
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
    checksum, in a manifest that is written last; then the directory is published (a rename
    locally; the conditional manifest write on object stores).  An exception in the block
    discards everything; the target is untouched.

    Args:
        target: a local path, or an object-store URL (``s3://``, ``memory://``...).
        replace: replace an existing directory (atomically), through a symlink to it; if False,
            raise [`TargetExistsError`][atomicwrite.TargetExistsError] when anything has the
            name, a dangling symlink included.
        durability: ``"full"`` flushes every file and directory so the result survives a power
            loss; ``"none"`` is atomic against process crashes only.
        checksums: record each file's checksum (the fastest CRC installed, computed as the file
            is read back once while it is flushed, or the one its upload computed); False records
            sizes only.
        storage_options: for an object store's fsspec file system.
        on_commit: called with the [`DirectoryCommitResult`][atomicwrite.DirectoryCommitResult]
            once the directory is published; an exception from it is raised as a
            [`CommitCallbackError`][atomicwrite.CommitCallbackError], the directory staying
            published.
    """
    transaction = begin_directory(
        target,
        replace=replace,
        durability=durability,
        checksums=checksums,
        storage_options=storage_options,
        on_commit=on_commit,
    )
    try:
        yield transaction.staging
    except BaseException:
        transaction.discard()
        raise
    transaction.commit()
