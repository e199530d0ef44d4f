"""Multi-rank checkpoints on ``torch.distributed``: every rank writes its shard, one commit.

```python
import atomicwrite.distributed as awd

store = CheckpointStore("/shared/run1/checkpoints", keep_last=3)
with awd.save(store) as stage:              # on every rank
    torch.save(shard_state, stage / f"shard-{rank}.pt")
```

The protocol, on every rank of the group:

1. rank 0 starts the directory write (a staging directory beside the target, or a generation
   prefix on an object store) and broadcasts where it is;
2. each rank writes its files there (by any means) and, at the end of the block, flushes and
   hashes the files it declared (every name it got from ``stage / name``, ``stage.open`` or
   ``stage.declare``): the flushing is done by the process that wrote, as shared file systems
   require, and the hashing is spread over the ranks;
3. an all-reduce of a failure flag: if any rank failed (an exception in its block, a file it
   declared but did not write), every rank aborts and rank 0 discards the staging area;
4. an all-gather of the per-rank reports (names, sizes, SHA-256); rank 0 checks them against
   what is staged, writes the manifest and publishes (and moves a store's ``latest``);
5. rank 0 broadcasts the outcome, so every rank returns only once the checkpoint is published,
   or raises if it was not.

A rank killed mid-save makes the collectives of the others fail (gloo and NCCL report the lost
peer, or time out after the process group's ``timeout``): nothing is published, and the
previous checkpoint stays the latest.  torch is imported only when a function here is called.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

from ._directories.api import begin_directory
from ._directories.generations import CheckpointStore
from ._directories.manifest import DirectoryCommitResult, FileEntry
from ._directories.staging import DirectoryTransaction, StagingDirectory, describe_files
from ._errors import AtomicWriteError, DistributedAbortError, UnsupportedTargetError

__all__ = ["DistributedAbortError", "atomic_directory", "dcp_load", "dcp_reader", "dcp_save", "dcp_writer", "save"]


def _global_rank(dist: Any, group: Any, group_rank: int) -> int:
    if group is None:
        return group_rank
    return int(dist.get_global_rank(group, group_rank))


def _flag_device(dist: Any, group: Any) -> Any:
    import torch

    if str(dist.get_backend(group)) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@contextlib.contextmanager
def _multi_rank(
    begin: Callable[[], DirectoryTransaction],
    finish: Callable[[DirectoryCommitResult], None] | None,
    *,
    group: Any,
    checksums: bool,
    storage_options: Mapping[str, Any] | None,
) -> Iterator[StagingDirectory]:
    import torch
    import torch.distributed as dist

    rank = dist.get_rank(group)
    world = dist.get_world_size(group)
    root = _global_rank(dist, group, 0)
    transaction: DirectoryTransaction | None = None
    started: list[Any] = [None]
    if rank == 0:
        try:
            transaction = begin()
            started = [("ok", transaction.staging.location, transaction.staging.local)]
        except BaseException as exc:
            started = [("error", repr(exc), False)]
            dist.broadcast_object_list(started, src=root, group=group)
            raise
    dist.broadcast_object_list(started, src=root, group=group)
    state, location, local = started[0]
    if state != "ok":
        raise DistributedAbortError(f"rank 0 could not start the checkpoint: {location}")
    if transaction is not None:
        stage = transaction.staging
    else:
        stage = StagingDirectory(location, local=local, storage_options=storage_options or {})

    try:
        failure: BaseException | None = None
        try:
            yield stage
        except BaseException as exc:
            failure = exc
        reports: list[FileEntry] = []
        if failure is None:
            try:
                reports = describe_files(stage, stage.declared, checksums=checksums)
            except BaseException as exc:
                failure = exc
        flag = torch.tensor([0 if failure is None else 1], dtype=torch.int32, device=_flag_device(dist, group))
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        if int(flag.item()) != 0:
            if failure is not None:
                raise failure
            raise DistributedAbortError("another rank failed during the save; nothing was published")
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, [(e.name, e.size, e.checksum) for e in reports], group=group)
        outcome: list[Any] = [None]
        if rank == 0:
            assert transaction is not None
            try:
                result = transaction.commit(_merge_reports(gathered))
                if finish is not None:
                    finish(result)
                outcome = [("ok", result.target)]
            except BaseException as exc:
                outcome = [("error", repr(exc))]
                dist.broadcast_object_list(outcome, src=root, group=group)
                raise
        dist.broadcast_object_list(outcome, src=root, group=group)
        if outcome[0][0] != "ok":
            raise DistributedAbortError(f"rank 0 could not publish the checkpoint: {outcome[0][1]}")
    finally:
        # Does nothing after a commit; otherwise (a failed rank, a lost peer) drops the staging.
        if transaction is not None:
            transaction.discard()


def _merge_reports(gathered: list[Any]) -> dict[str, FileEntry]:
    merged: dict[str, FileEntry] = {}
    owners: dict[str, int] = {}
    for rank, entries in enumerate(gathered):
        for name, size, checksum in entries:
            if name in merged and merged[name] != FileEntry(name, size, checksum):
                raise AtomicWriteError(
                    f"{name!r} was reported by ranks {owners[name]} and {rank} with different content"
                )
            merged[name] = FileEntry(name, size, checksum)
            owners[name] = rank
    return merged


@contextlib.contextmanager
def atomic_directory(
    target: str,
    *,
    group: Any = None,
    replace: bool = True,
    durability: Literal["none", "full"] = "full",
    checksums: bool = True,
    storage_options: Mapping[str, Any] | None = None,
) -> Iterator[StagingDirectory]:
    """[`atomic_directory`][atomicwrite.atomic_directory] across all ranks of ``group``: call it
    on every rank, each writes its files into the yielded staging directory, and the directory
    is published once, by rank 0, after every rank finished; if any rank fails, none is."""
    with _multi_rank(
        lambda: begin_directory(
            target, replace=replace, durability=durability, checksums=checksums, storage_options=storage_options
        ),
        None,
        group=group,
        checksums=checksums,
        storage_options=storage_options,
    ) as stage:
        yield stage


@contextlib.contextmanager
def save(
    store: CheckpointStore,
    step: int | None = None,
    *,
    metrics: Mapping[str, float] | None = None,
    tags: Mapping[str, str] | None = None,
    group: Any = None,
) -> Iterator[StagingDirectory]:
    """[`CheckpointStore.save`][atomicwrite.CheckpointStore.save] across all ranks of ``group``:
    a new generation with every rank's files, then ``latest`` moves to it (on rank 0).

    Pass ``step`` (the same on every rank) or let rank 0 number the generation.  The generation
    records rank 0's ``metrics`` and ``tags`` (for retention by [`KeepBest`][atomicwrite.KeepBest]
    and for [`find`][atomicwrite.CheckpointStore.find]); the other ranks' are not read, so reduce
    a per-rank metric first (``all_reduce``) when it differs between ranks.  Metadata that rank 0
    refuses aborts the save on every rank before anything is written.
    """
    with _multi_rank(
        lambda: store.begin(step, metrics=metrics, tags=tags),
        store.finish,
        group=group,
        checksums=store.checksums,
        storage_options=store.storage_options,
    ) as stage:
        yield stage


# --- torch.distributed.checkpoint ------------------------------------------------------------


def _is_object_store(target: str) -> bool:
    """Whether ``target`` is an object-store URL (raises UnsupportedTargetError for a URL that
    no strategy writes)."""
    from ._stores.base import ObjectStoreStrategy
    from ._strategy import resolve_target

    return isinstance(resolve_target(target)[0], ObjectStoreStrategy)


def _writer_init(
    self: Any,
    target: str,
    *,
    replace: bool,
    checksums: bool,
    group: Any,
    storage_options: Mapping[str, Any] | None,
    **writer_options: Any,
) -> None:
    from torch.distributed.checkpoint.filesystem import FileSystemWriter

    target = os.fspath(target)
    on_store = _is_object_store(target)
    # sync_files: every rank flushes the files it wrote, before the coordinator publishes them.
    writer_options.setdefault("sync_files", True)
    FileSystemWriter.__init__(self, target, **writer_options)
    if on_store:
        from torch.distributed.checkpoint._fsspec_filesystem import FileSystem as FsspecFileSystem

        from ._stores.base import ObjectStoreStrategy
        from ._strategy import WriteOptions, resolve_target
        from .filesystem import AtomicFileSystem

        strategy = resolve_target(target)[0]
        assert isinstance(strategy, ObjectStoreStrategy)
        inner = strategy.filesystem(WriteOptions(storage_options=dict(storage_options or {})))
        # Every file DCP opens (each rank's shards, the coordinator's .metadata) is an upload of
        # ours: bounded memory, parallel parts, and the object appears only at a clean close.
        self.fs = FsspecFileSystem()
        self.fs.fs = AtomicFileSystem(fs=inner, **dict(storage_options or {}))
        # A store's object is durable once its upload's close returns, which happens before the
        # rank reports its writes: fsync has no file to act on, and os.sync() would only flush
        # this machine's unrelated files.
        self.sync_files = False
    self._atomic_target = target
    self._atomic_on_store = on_store
    self._atomic_storage_options = dict(storage_options or {})
    self._atomic_replace = replace
    self._atomic_checksums = checksums
    self._atomic_group = group
    self._atomic_transaction = None
    #: What the coordinator's publish achieved (None on the other ranks, and before it).
    self.result = None


def _writer_reset(self: Any, checkpoint_id: Any = None) -> None:
    from torch.distributed.checkpoint.filesystem import FileSystemWriter

    if checkpoint_id:
        if _is_object_store(os.fspath(checkpoint_id)) != self._atomic_on_store:
            raise UnsupportedTargetError(
                f"this writer was built for {self._atomic_target!r}; build another for {checkpoint_id!r}"
            )
        self._atomic_target = os.fspath(checkpoint_id)
    FileSystemWriter.reset(self, None)


def _writer_checkpoint_id(self: Any) -> Any:
    return self._atomic_target


def _writer_set_up(self: Any, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
    """Called on every rank before planning: the coordinator opens the staging directory and
    every rank learns where it is, so that all write their files there."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.filesystem import FileSystemWriter

    FileSystemWriter.set_up_storage_writer(self, is_coordinator, *args, **kwargs)
    self.discard()  # a save that failed earlier on this writer
    self.result = None
    location: tuple[str, str] | None = None
    failure: BaseException | None = None
    if is_coordinator:
        try:
            self._atomic_transaction = begin_directory(
                self._atomic_target,
                replace=self._atomic_replace,
                checksums=self._atomic_checksums,
                storage_options=self._atomic_storage_options,
            )
            location = ("ok", self._atomic_transaction.staging.location)
        except BaseException as exc:
            failure = exc
            location = ("error", repr(exc))
    collective = dist.is_available() and dist.is_initialized() and kwargs.get("use_collectives", True)
    if collective:
        everyone: list[Any] = [None] * dist.get_world_size(self._atomic_group)
        dist.all_gather_object(everyone, location, group=self._atomic_group)
        found = [entry for entry in everyone if entry is not None]
        if len(found) != 1:
            raise AtomicWriteError(f"expected one coordinator to start the checkpoint, found {len(found)}")
        location = found[0]
    if failure is not None:
        raise failure
    assert location is not None
    if location[0] != "ok":
        raise DistributedAbortError(f"the coordinator could not start the checkpoint: {location[1]}")
    # On a store the path is the generation prefix's URL, opened through the atomic file
    # system built at __init__ (fsspec's init_path would replace it by a plain one).
    self.path = location[1] if self._atomic_on_store else self.fs.init_path(location[1])


def _writer_finish(self: Any, metadata: Any, results: Any) -> None:
    """On the coordinator, after every rank wrote: DCP's metadata, then the manifest and the
    publishing rename.  DCP tells the other ranks only after this returns."""
    from torch.distributed.checkpoint.filesystem import FileSystemWriter

    FileSystemWriter.finish(self, metadata, results)
    transaction, self._atomic_transaction = self._atomic_transaction, None
    if transaction is None:
        raise AtomicWriteError("finish() without set_up_storage_writer() on the coordinator")
    self.result = transaction.commit()


def _writer_discard(self: Any) -> None:
    """Drop the staging directory of a save that did not finish (safe to call any time)."""
    transaction, self._atomic_transaction = self._atomic_transaction, None
    if transaction is not None:
        transaction.discard()


_WRITER_CLASS: Any = None


def _writer_class() -> Any:
    global _WRITER_CLASS
    if _WRITER_CLASS is None:
        from torch.distributed.checkpoint.filesystem import FileSystemWriter

        # Built at first use, so that importing this module does not import torch.
        _WRITER_CLASS = type(
            "AtomicFileSystemWriter",
            (FileSystemWriter,),
            {
                "__init__": _writer_init,
                "__doc__": "A FileSystemWriter whose checkpoint appears all at once (see dcp_writer).",
                "__module__": __name__,
                "reset": _writer_reset,
                "checkpoint_id": property(_writer_checkpoint_id),
                "set_up_storage_writer": _writer_set_up,
                "finish": _writer_finish,
                "discard": _writer_discard,
            },
        )
    return _WRITER_CLASS


def dcp_writer(
    target: str | os.PathLike[str],
    *,
    replace: bool = True,
    checksums: bool = True,
    process_group: Any = None,
    storage_options: Mapping[str, Any] | None = None,
    **writer_options: Any,
) -> Any:
    """A ``torch.distributed.checkpoint`` StorageWriter that publishes ``target`` atomically.

    It is a ``FileSystemWriter`` (``writer_options`` are its own: ``thread_count``...).  On a
    local or shared file system its files go to a staging directory beside ``target``; the
    coordinator writes DCP's ``.metadata``, then the manifest, then renames the directory into
    place (replacing an old checkpoint with ``RENAME_EXCHANGE``).  On an object store
    (``s3://``, ``gs://``, ``az://``, ``memory://``...; ``storage_options`` are the store's)
    every rank uploads its files under a fresh generation prefix of ``target``, each file an
    atomic upload that appears only when complete; the coordinator writes ``.metadata``, then
    the manifest, whose one conditional write publishes the checkpoint.  Only then does
    ``dcp.save`` return on any rank.  A failed or killed save publishes nothing, so ``dcp.load``
    (through `dcp_reader`) never meets a half-written checkpoint.  Build it on every rank, with
    the ``process_group`` given to ``dcp.save``; after a failed save call ``writer.discard()`` on
    the coordinator (or use `dcp_save`); what a killed coordinator leaves,
    [`sweep`][atomicwrite.sweep] removes.
    """
    return _writer_class()(
        target,
        replace=replace,
        checksums=checksums,
        group=process_group,
        storage_options=storage_options,
        **writer_options,
    )


def dcp_save(
    state_dict: Any,
    target: str | os.PathLike[str],
    *,
    process_group: Any = None,
    replace: bool = True,
    checksums: bool = True,
    storage_options: Mapping[str, Any] | None = None,
    **writer_options: Any,
) -> DirectoryCommitResult | None:
    """``dcp.save(state_dict)`` into ``target`` (a path or an object-store URL), published
    atomically through `dcp_writer`; a failure discards the staging directory or generation.
    Returns the publish's result on the coordinator, None on the other ranks."""
    from torch.distributed.checkpoint.state_dict_saver import save as dcp_save_state

    writer = dcp_writer(
        target,
        replace=replace,
        checksums=checksums,
        process_group=process_group,
        storage_options=storage_options,
        **writer_options,
    )
    try:
        dcp_save_state(state_dict, storage_writer=writer, process_group=process_group)
    except BaseException:
        writer.discard()
        raise
    result: DirectoryCommitResult | None = writer.result
    return result


def dcp_reader(target: str | os.PathLike[str], *, storage_options: Mapping[str, Any] | None = None) -> Any:
    """A ``torch.distributed.checkpoint`` StorageReader for a checkpoint `dcp_writer` published.

    The checkpoint is resolved through its manifest when the reader is built, so it reads the
    published version's files (on an object store, its generation prefix), never those of a
    save still under way.  A local checkpoint is read with a ``FileSystemReader``, one on an
    object store through fsspec (``FsspecReader``, given ``storage_options``).  Raises
    [`TargetNotFoundError`][atomicwrite.TargetNotFoundError] if nothing was published there.
    """
    from ._directories.reading import open_directory

    published = open_directory(target, storage_options=storage_options)
    if published.local:
        from torch.distributed.checkpoint.filesystem import FileSystemReader

        return FileSystemReader(published.files_root)
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

    return FsspecReader(published.files_root, **dict(storage_options or {}))


def dcp_load(
    state_dict: Any,
    target: str | os.PathLike[str],
    *,
    process_group: Any = None,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """``dcp.load(state_dict)`` (in place) from the checkpoint published at ``target``, through
    `dcp_reader`.  Each rank resolves the manifest itself: do not replace the checkpoint while
    the ranks load it."""
    from torch.distributed.checkpoint.state_dict_loader import load as dcp_load_state

    reader = dcp_reader(target, storage_options=storage_options)
    dcp_load_state(state_dict, storage_reader=reader, process_group=process_group)
