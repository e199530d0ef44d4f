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
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

from ._checkpoints import CheckpointStore
from ._directory import (
    DirectoryCommitResult,
    DirectoryTransaction,
    FileEntry,
    StagingDirectory,
    begin_directory,
    describe_files,
)
from ._errors import AtomicWriteError, DistributedAbortError

__all__ = ["DistributedAbortError", "atomic_directory", "save"]


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
        dist.all_gather_object(gathered, [(e.name, e.size, e.sha256) for e in reports], group=group)
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
        for name, size, sha256 in entries:
            if name in merged and merged[name] != FileEntry(name, size, sha256):
                raise AtomicWriteError(
                    f"{name!r} was reported by ranks {owners[name]} and {rank} with different content"
                )
            merged[name] = FileEntry(name, size, sha256)
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
def save(store: CheckpointStore, step: int | None = None, *, group: Any = None) -> Iterator[StagingDirectory]:
    """[`CheckpointStore.save`][atomicwrite.CheckpointStore.save] across all ranks of ``group``:
    a new generation with every rank's files, then ``latest`` moves to it (on rank 0).

    Pass ``step`` (the same on every rank) or let rank 0 number the generation.
    """
    with _multi_rank(
        lambda: store.begin(step),
        store.finish,
        group=group,
        checksums=store.checksums,
        storage_options=store.storage_options,
    ) as stage:
        yield stage
