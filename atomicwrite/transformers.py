"""Whole-or-nothing checkpoints for Hugging Face ``transformers`` and ``accelerate``.

```python
from atomicwrite.transformers import atomic_checkpoints

trainer = atomic_checkpoints(Trainer(model=model, args=args, train_dataset=data))
trainer.train(resume_from_checkpoint=True)
```

Every ``checkpoint-N`` directory the Trainer writes (weights, optimizer, scheduler, RNG states,
``trainer_state.json``, tokenizer) is written into a staging directory beside it and published
by [`atomic_directory`][atomicwrite.atomic_directory]: a manifest is written last, then one
rename makes it visible, whole.  The Trainer's own saving code runs unchanged; only the
directory it is told to write into differs.  On several processes the staging directory is
shared through `atomicwrite.distributed`: every process writes its
files, one process per file system publishes (global rank 0, or the first process of each node
with ``save_on_each_node``), and the others return once it did.

Old checkpoints are rotated only after the new one is published, each removed out of sight
first (renamed to a hidden name, then deleted), and never the best one or the one training
resumed from.  ``resume_from_checkpoint=True`` resumes from
[`last_complete_checkpoint`][atomicwrite.transformers.last_complete_checkpoint].

The same function adapts an ``accelerate.Accelerator``: ``save_state`` publishes each
``checkpoint_N`` the same way and rotates ``total_limit`` after publishing; ``load_state()``
without a directory loads the newest complete checkpoint and numbers the next save after it.

transformers, accelerate and torch are imported only when a function here is called.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from ._directories.api import atomic_directory, begin_directory
from ._directories.manifest import DirectoryCommitResult
from ._directories.reading import verify_directory
from ._errors import TargetExistsError, TargetNotFoundError, UsageError

__all__ = ["atomic_checkpoints", "last_complete_checkpoint", "save_pretrained"]

_Adapted = TypeVar("_Adapted")

#: ``checkpoint-N`` (the Trainer) and ``checkpoint_N`` (accelerate's automatic naming).
_TRAINER_CHECKPOINT: Final = re.compile(r"^checkpoint-(\d+)$")
_ACCELERATE_CHECKPOINT: Final = re.compile(r"^checkpoint_(\d+)$")
_ANY_CHECKPOINT: Final = re.compile(r"^checkpoint[-_](\d+)$")
_TRAINER_STATE: Final = "trainer_state.json"
_ADOPTED: Final = "_atomicwrite_adoption"


def last_complete_checkpoint(output_dir: str | os.PathLike[str], *, checksums: bool = True) -> str | None:
    """The newest ``checkpoint-N`` (or accelerate's ``checkpoint_N``) in ``output_dir`` that is
    complete, or None.

    Complete means: published with a manifest that [`verify_directory`][atomicwrite.verify_directory]
    accepts (every file present with its size and, if ``checksums``, its checksum; nothing
    unlisted), and every shard named by a weights index (``model.safetensors.index.json``,
    ``pytorch_model.bin.index.json``...) is one of its files.  A directory left by a crash, by a
    save that did not go through this module, or damaged later, is skipped.
    """
    root = os.fspath(output_dir)
    try:
        entries = os.listdir(root)
    except FileNotFoundError:
        return None
    numbered = [(int(match.group(1)), name) for name in entries if (match := _ANY_CHECKPOINT.match(name))]
    for _, name in sorted(numbered, reverse=True):
        path = os.path.join(root, name)
        if not os.path.islink(path) and os.path.isdir(path) and _complete(path, checksums=checksums):
            return path
    return None


def _complete(path: str, *, checksums: bool) -> bool:
    verification = verify_directory(path, checksums=checksums)
    if not verification or verification.manifest is None:
        return False
    listed = {entry.name for entry in verification.manifest.files}
    for name in listed:
        if not name.endswith(".index.json"):
            continue
        try:
            with open(os.path.join(path, name), "rb") as file:
                weight_map = json.load(file).get("weight_map", {})
        except (OSError, ValueError, AttributeError):
            return False
        folder = os.path.dirname(name)
        shards = {f"{folder}/{shard}" if folder else shard for shard in weight_map.values()}
        if not shards <= listed:
            return False
    return True


def save_pretrained(
    model_or_tokenizer: Any,
    target: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
    **save_options: Any,
) -> DirectoryCommitResult:
    """``model_or_tokenizer.save_pretrained(target, **save_options)``, published whole.

    Works for anything with ``save_pretrained`` (a ``PreTrainedModel``, a tokenizer, a
    processor, a config), sharded weights included.  A local ``target`` is staged beside itself
    and renamed into place (replacing an old one in one step where the system can); an
    object-store URL (``s3://``, ``gs://``, ``az://``, ``memory://``...) is saved to a local
    temporary directory, uploaded under a new generation prefix and published by the
    conditional manifest write, so a reader never sees a half-uploaded model.
    """
    if not callable(getattr(model_or_tokenizer, "save_pretrained", None)):
        raise UsageError(f"{type(model_or_tokenizer).__name__} has no save_pretrained method")
    transaction = begin_directory(target, storage_options=storage_options)
    try:
        stage = transaction.staging
        if stage.local:
            model_or_tokenizer.save_pretrained(os.fspath(stage), **save_options)
        else:
            with tempfile.TemporaryDirectory(prefix="atomicwrite-") as local:
                model_or_tokenizer.save_pretrained(local, **save_options)
                for folder, _, names in os.walk(local):
                    for name in names:
                        source = os.path.join(folder, name)
                        relative = os.path.relpath(source, local).replace(os.sep, "/")
                        with open(source, "rb") as reader, stage.open(relative) as writer:
                            shutil.copyfileobj(reader, writer, 1 << 20)
    except BaseException:
        transaction.discard()
        raise
    return transaction.commit()


def atomic_checkpoints(trainer_or_accelerator: _Adapted) -> _Adapted:
    """Make every checkpoint a ``transformers.Trainer`` or an ``accelerate.Accelerator`` saves
    appear whole or not at all; returns the same object, adapted.

    Call it once, on every process, before training.  For a Trainer: ``_save_checkpoint``
    writes into a staging directory that is published as ``checkpoint-N``; ``save_total_limit``
    rotation runs after publishing and keeps the best checkpoint and the one training resumed
    from; ``train(resume_from_checkpoint=True)`` resumes from `last_complete_checkpoint`.  For an
    Accelerator: ``save_state`` publishes ``output_dir`` (or, with automatic checkpoint naming,
    ``checkpoints/checkpoint_N``) the same way and then applies ``total_limit``; ``load_state()``
    without a directory loads `last_complete_checkpoint` and numbers the next save after it.
    """
    if getattr(trainer_or_accelerator, _ADOPTED, None) is not None:
        return trainer_or_accelerator
    if _is_instance(trainer_or_accelerator, "transformers", "Trainer"):
        _adapt_trainer(trainer_or_accelerator)
    elif _is_instance(trainer_or_accelerator, "accelerate", "Accelerator"):
        _adapt_accelerator(trainer_or_accelerator)
    else:
        raise UsageError(
            f"atomic_checkpoints takes a transformers.Trainer or an accelerate.Accelerator,"
            f" not {type(trainer_or_accelerator).__name__}"
        )
    return trainer_or_accelerator


def _is_instance(value: Any, package: str, name: str) -> bool:
    # An instance of the class means its package is imported already: no import here.
    module = sys.modules.get(package)
    cls = getattr(module, name, None) if module is not None else None
    return isinstance(cls, type) and isinstance(value, cls)


@dataclass
class _Adoption:
    """What the adapter remembers between saves of one Trainer or Accelerator."""

    resumed_from: str | None = None
    node_groups: dict[int, Any] = field(default_factory=dict)


# --- publishing, on one process or many ------------------------------------------------------


def _distributed() -> Any:
    """torch.distributed when a process group of more than one process is running, else None."""
    try:
        import torch.distributed as dist
    except ImportError:
        return None
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    return dist


def _node_group(dist: Any, adoption: _Adoption, node: int) -> Any:
    """The process group of the processes on this process's node (where ``save_on_each_node``
    gives each node its own file system), built once, on every process, in the same order."""
    key = dist.get_world_size()
    if key not in adoption.node_groups:
        nodes: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(nodes, node)
        mine = None
        for first in sorted(set(nodes)):
            ranks = [rank for rank, value in enumerate(nodes) if value == first]
            group = dist.new_group(ranks=ranks)
            if first == node:
                mine = group
        adoption.node_groups[key] = mine
    return adoption.node_groups[key]


@contextlib.contextmanager
def _publishing(
    target: str, *, adoption: _Adoption, node: int | None, own_files: Iterable[str], replace: bool
) -> Iterator[str]:
    """Yield the staging directory this process writes ``target``'s files into; at the end of
    the block the directory is published, by the first process of the group that shares it.

    ``node``: the node's first process index when each node saves to its own file system,
    None when all processes share one.  ``own_files``: the per-process files this process
    writes, flushed and hashed by it (the publisher flushes and hashes the rest).
    """
    dist = _distributed()
    if dist is None:
        with atomic_directory(target, replace=replace) as stage:
            yield os.fspath(stage)
        return
    from . import distributed as awd

    group = None if node is None else _node_group(dist, adoption, node)
    with awd.atomic_directory(target, group=group, replace=replace) as stage:
        yield os.fspath(stage)
        stage.declare(*(name for name in own_files if os.path.isfile(os.path.join(os.fspath(stage), name))))


def _rotate(root: str, pattern: re.Pattern[str], limit: int | None, protected: Iterable[str | None]) -> list[str]:
    """Remove the oldest published checkpoints of ``root`` beyond ``limit``, never one of
    ``protected``; each is renamed out of sight before it is deleted.  Returns the removed."""
    if limit is None or limit <= 0:
        return []
    from ._directories.local import remove_tree
    from ._directories.manifest import MANIFEST_NAME

    real_root = os.path.realpath(root)
    keep = {
        os.path.basename(os.path.normpath(path))
        for path in protected
        if path and os.path.realpath(os.path.dirname(os.path.normpath(path))) == real_root
    }
    published = sorted(
        (
            (int(match.group(1)), name)
            for name in os.listdir(root)
            if (match := pattern.match(name)) and os.path.isfile(os.path.join(root, name, MANIFEST_NAME))
        ),
        reverse=True,
    )
    keep &= {name for _, name in published}
    for _, name in published:
        if len(keep) >= limit:
            break
        keep.add(name)
    removed: list[str] = []
    dir_fd = os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        for _, name in published:
            if name not in keep:
                remove_tree(root, dir_fd, name)
                removed.append(os.path.join(root, name))
    finally:
        os.close(dir_fd)
    return removed


# --- transformers.Trainer --------------------------------------------------------------------


def _adapt_trainer(trainer: Any) -> None:
    adoption = _Adoption()
    setattr(trainer, _ADOPTED, adoption)
    save_checkpoint: Callable[..., None] = trainer._save_checkpoint
    train: Callable[..., Any] = trainer.train

    def atomic_save_checkpoint(model: Any, trial: Any = None, *args: Any, **kwargs: Any) -> None:
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        arguments = trainer.args
        run_dir = trainer._get_output_dir(trial=trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}"
        target = os.path.join(run_dir, name)
        os.makedirs(run_dir, exist_ok=True)
        index = arguments.process_index
        node = index - arguments.local_process_index if arguments.save_on_each_node else None
        with _publishing(
            target, adoption=adoption, node=node, own_files=(f"rng_state_{index}.pth",), replace=True
        ) as staging:
            # The Trainer builds its paths as run_dir/checkpoint-N: a hidden run directory
            # inside the staging one, whose checkpoint-N is a link back to it, takes every
            # write there, and is removed before the manifest lists the files.
            shadow = os.path.join(staging, f".atomicwrite-run-{index}")
            os.mkdir(shadow)
            staged = os.path.join(shadow, name)
            os.symlink(os.pardir, staged)
            trainer._get_output_dir = lambda trial=None: shadow
            try:
                save_checkpoint(model, trial, *args, **kwargs)
            finally:
                del trainer._get_output_dir
                os.unlink(staged)
                os.rmdir(shadow)
            if trainer.state.best_model_checkpoint == staged:
                # The Trainer recorded the best checkpoint under the staging name: every process
                # corrects its state, the one that wrote trainer_state.json rewrites it.
                trainer.state.best_model_checkpoint = target
                if arguments.should_save:
                    trainer.state.save_to_json(os.path.join(staging, _TRAINER_STATE))
        if arguments.should_save:
            _rotate(
                run_dir,
                _TRAINER_CHECKPOINT,
                _limit(trainer),
                (target, trainer.state.best_model_checkpoint, adoption.resumed_from),
            )

    def atomic_train(resume_from_checkpoint: Any = None, *args: Any, **kwargs: Any) -> Any:
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(trainer.args.output_dir)
            if resume_from_checkpoint is None:
                raise TargetNotFoundError(
                    2, f"no complete checkpoint to resume from in {trainer.args.output_dir!r}", trainer.args.output_dir
                )
        if isinstance(resume_from_checkpoint, str | os.PathLike):
            adoption.resumed_from = os.fspath(resume_from_checkpoint)
        # The Trainer's own rotation, and its clean-up when training ends, delete directories
        # with rmtree in place; with the limit hidden from it, only the rotation here runs.
        limit = trainer.args.save_total_limit
        trainer._atomicwrite_limit = limit
        trainer.args.save_total_limit = None
        try:
            output = train(resume_from_checkpoint, *args, **kwargs)
        finally:
            trainer.args.save_total_limit = limit
            del trainer._atomicwrite_limit
        best = trainer.state.best_model_checkpoint
        if limit == 1 and best is not None and trainer.args.should_save:
            # As the Trainer does when it ends: save_total_limit=1 keeps only the best one.
            _rotate(trainer._get_output_dir(trial=kwargs.get("trial")), _TRAINER_CHECKPOINT, 1, (best,))
        return output

    trainer._save_checkpoint = atomic_save_checkpoint
    trainer.train = atomic_train


def _limit(trainer: Any) -> int | None:
    limit: int | None = getattr(trainer, "_atomicwrite_limit", trainer.args.save_total_limit)
    return limit


# --- accelerate.Accelerator ------------------------------------------------------------------


def _adapt_accelerator(accelerator: Any) -> None:
    adoption = _Adoption()
    setattr(accelerator, _ADOPTED, adoption)
    save_state: Callable[..., Any] = accelerator.save_state
    load_state: Callable[..., Any] = accelerator.load_state

    def checkpoints_root() -> str:
        return os.path.join(accelerator.project_dir, "checkpoints")

    def atomic_save_state(output_dir: Any = None, safe_serialization: bool = True, **kwargs: Any) -> str:
        config = accelerator.project_configuration
        automatic = bool(config.automatic_checkpoint_naming)
        if automatic:
            target = os.path.join(checkpoints_root(), f"checkpoint_{config.iteration}")
            # As accelerate does, never overwrite a checkpoint: only a torn or damaged one, which
            # load_state skipped, is replaced.
            if os.path.isdir(target) and _complete(target, checksums=False):
                raise TargetExistsError.at(target)
        elif output_dir is None:
            raise UsageError("save_state needs an output_dir, or automatic_checkpoint_naming=True")
        else:
            target = os.path.abspath(os.path.expanduser(os.fspath(output_dir)))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        index = accelerator.process_index
        node = index - accelerator.local_process_index if config.save_on_each_node else None
        with _publishing(
            target,
            adoption=adoption,
            node=node,
            own_files=(f"random_states_{index}.pkl",),
            replace=True,
        ) as staging:
            config.automatic_checkpoint_naming = False
            try:
                save_state(staging, safe_serialization=safe_serialization, **kwargs)
            finally:
                config.automatic_checkpoint_naming = automatic
        publisher = accelerator.is_local_main_process if config.save_on_each_node else accelerator.is_main_process
        if automatic and publisher:
            _rotate(checkpoints_root(), _ACCELERATE_CHECKPOINT, config.total_limit, (target, adoption.resumed_from))
        return target

    def atomic_load_state(input_dir: Any = None, load_kwargs: Any = None, **kwargs: Any) -> Any:
        config = accelerator.project_configuration
        if input_dir is None and config.automatic_checkpoint_naming:
            input_dir = last_complete_checkpoint(checkpoints_root())
            if input_dir is None:
                raise TargetNotFoundError(
                    2, f"no complete checkpoint to load in {checkpoints_root()!r}", checkpoints_root()
                )
            match = _ACCELERATE_CHECKPOINT.match(os.path.basename(input_dir))
            if match is not None:
                config.iteration = int(match.group(1)) + 1
        output = load_state(input_dir, load_kwargs, **kwargs)
        if input_dir is not None:
            adoption.resumed_from = os.fspath(input_dir)
        return output

    accelerator.save_state = atomic_save_state
    accelerator.load_state = atomic_load_state
