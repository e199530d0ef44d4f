"""Crash-safe checkpoints for Lightning's Trainer and Fabric: a `CheckpointIO` plugin and friends.

```python
from atomicwrite.lightning import AtomicCheckpointIO

trainer = Trainer(plugins=[AtomicCheckpointIO()])  # or Fabric(plugins=[AtomicCheckpointIO()])
```

Every checkpoint is streamed by `atomicwrite.torch.save` into an all-or-nothing write (local
paths and every object store `atomic_open` knows): a SIGKILL, an OOM kill or a full disk during
a save leaves the previous checkpoint in place, and no copy of the checkpoint is held in memory.

The classes are built the first time they are used, for the ``lightning`` package when it is
installed, else for the standalone ``pytorch_lightning`` / ``lightning_fabric`` packages (whose
``CheckpointIO`` is a different class, which ``Trainer`` checks).  `atomicwrite.pytorch_lightning`
always gives the standalone ones; `classes_for` gives either.

- `AtomicCheckpointIO`: saves with `atomicwrite.torch.save`, loads after validating, removes
  without minding a missing file; ``storage_options`` go to fsspec.
- `AtomicAsyncCheckpointIO`: the same, written in a worker thread from a CPU snapshot; a remove,
  or a ``last`` link, waits for the saves queued before it, so it never overtakes them.
- `AtomicModelCheckpoint`: a ``ModelCheckpoint`` whose ``save_last="link"`` link is replaced
  atomically (a temp symlink renamed over it), and whose ``ckpt_path="last"`` resolves to a
  checkpoint that validates.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from . import torch as _awt
from ._api import CommitCallback, atomic_open
from ._callbacks import check_on_commit
from ._errors import UsageError
from ._local.base import flush_to_disk, replace_symlink
from ._result import Durability

if TYPE_CHECKING:
    from concurrent.futures import Future

    # Built on first use by the module's __getattr__, for the package that is installed.
    AtomicCheckpointIO: type[Any]
    AtomicAsyncCheckpointIO: type[Any]
    AtomicModelCheckpoint: type[Any]

__all__ = [
    "AtomicAsyncCheckpointIO",
    "AtomicCheckpointIO",
    "AtomicModelCheckpoint",
    "LightningClasses",
    "Namespace",
    "classes_for",
    "default_namespace",
    "link_atomically",
    "remove_checkpoint",
]

#: ``"lightning"``: the unified package (``lightning.pytorch``, ``lightning.fabric``);
#: ``"pytorch_lightning"``: the standalone ``pytorch_lightning`` and ``lightning_fabric``.
Namespace = Literal["lightning", "pytorch_lightning"]

_FABRIC_PACKAGE = {"lightning": "lightning.fabric", "pytorch_lightning": "lightning_fabric"}
_TRAINER_PACKAGE = {"lightning": "lightning.pytorch", "pytorch_lightning": "pytorch_lightning"}
_COPY_CHUNK = 8 << 20

_T = TypeVar("_T")


def _is_local(path: str) -> bool:
    return _awt._is_local(path)


def _merge(base: Mapping[str, Any], extra: Any) -> dict[str, Any] | None:
    if extra is not None and not isinstance(extra, Mapping):
        raise UsageError(f"storage_options must be a mapping of fsspec options, not {type(extra).__name__}")
    merged = {**base, **(extra or {})}
    return merged or None


def _make_parent(path: str, storage_options: Mapping[str, Any] | None) -> None:
    """Create the checkpoint's directory, as Lightning's own plugin does (object stores need none)."""
    if _is_local(path):
        parent = os.path.dirname(os.path.abspath(_awt._local_path(path)))
        os.makedirs(parent, exist_ok=True)


def remove_checkpoint(path: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None) -> None:
    """Remove a checkpoint file (or a sharded checkpoint's directory); a missing one is fine."""
    text = os.fspath(path)
    if _is_local(text):
        local = _awt._local_path(text)
        try:
            if os.path.isdir(local) and not os.path.islink(local):
                shutil.rmtree(local)
            else:
                os.unlink(local)
        except FileNotFoundError:
            pass
        return
    fs, stripped = _awt._filesystem(text, storage_options)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(stripped, recursive=True)


def _fsync_directory(directory: str) -> None:
    if sys.platform == "win32":
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        # Some file systems (CIFS, vboxsf) refuse a directory fsync; the link is in place anyway.
        with contextlib.suppress(OSError):
            flush_to_disk(fd)
    finally:
        os.close(fd)


def _copy_atomically(source: str, target: str, storage_options: Mapping[str, Any] | None) -> None:
    if _is_local(source):
        opened = open(_awt._local_path(source), "rb")  # noqa: SIM115 - closed by the with below
    else:
        fs, stripped = _awt._filesystem(source, storage_options)
        opened = fs.open(stripped, "rb")
    with opened as reader, atomic_open(target, "wb", storage_options=storage_options) as writer:
        shutil.copyfileobj(reader, writer, _COPY_CHUNK)


def link_atomically(
    target: str | os.PathLike[str],
    link: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Point ``link`` at ``target`` (a relative symlink) with no moment where ``link`` is missing.

    A symlink is made under a temp name beside ``link`` and renamed over it, so a reader (or a
    resume after a crash) finds the old link or the new one, never nothing.  Where symlinks cannot
    be made (Windows without the privilege, a file system without them) or on an object store,
    ``link`` becomes an atomic copy of ``target`` instead.
    """
    target_text, link_text = os.fspath(target), os.fspath(link)
    if not (_is_local(target_text) and _is_local(link_text)):
        _copy_atomically(target_text, link_text, storage_options)
        return
    link_path = os.path.abspath(_awt._local_path(link_text))
    target_path = os.path.abspath(_awt._local_path(target_text))
    if link_path == target_path:
        return
    directory, name = os.path.split(link_path)
    if os.path.isdir(link_path) and not os.path.islink(link_path):
        shutil.rmtree(link_path)  # a sharded checkpoint saved under the link's name before
    try:
        replace_symlink(directory, name, os.path.relpath(target_path, directory), durable=False)
    except (OSError, NotImplementedError):
        _copy_atomically(target_path, link_path, None)
        return
    _fsync_directory(directory)


# --- the plugin's methods, shared by both namespaces ---------------------------------------------


class _AtomicCheckpointIOMethods:
    """What `AtomicCheckpointIO` does, whichever package's ``CheckpointIO`` it derives from."""

    def __init__(
        self,
        *,
        durability: Durability = "full",
        storage_options: Mapping[str, Any] | None = None,
        on_commit: CommitCallback | None = None,
    ) -> None:
        super().__init__()
        check_on_commit(on_commit)
        self.durability: Durability = durability
        self.storage_options: dict[str, Any] = dict(storage_options or {})
        self.on_commit = on_commit

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike[str], storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` to ``path`` all or nothing (``storage_options`` go to fsspec)."""
        text, options = self._prepare_save(path, storage_options)
        _awt.save(checkpoint, text, storage_options=options, durability=self.durability, on_commit=self.on_commit)

    def _prepare_save(
        self, path: str | os.PathLike[str], storage_options: Any | None
    ) -> tuple[str, dict[str, Any] | None]:
        """``path`` as text and the options to write it with, once its local directory exists.

        The sync and async plugins both start a save here, so that they merge the options the same
        way and, like Lightning's own plugin, never fail on a directory not made yet.
        """
        text = os.fspath(path)
        options = _merge(self.storage_options, storage_options)
        _make_parent(text, options)
        return text, options

    def load_checkpoint(
        self, path: str | os.PathLike[str], map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Validate, then ``torch.load`` the checkpoint (to CPU unless ``map_location`` says otherwise).

        A missing file raises ``FileNotFoundError``; a torn or footer-only one
        `atomicwrite.torch.CheckpointError`.
        """
        loaded: dict[str, Any] = _awt.load(
            path,
            map_location="cpu" if map_location is None else map_location,
            weights_only=weights_only,
            storage_options=self.storage_options or None,
        )
        return loaded

    def remove_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Remove the checkpoint; one that is already gone is fine."""
        remove_checkpoint(path, self.storage_options or None)


class _AtomicAsyncCheckpointIOMethods(_AtomicCheckpointIOMethods):
    """What `AtomicAsyncCheckpointIO` does: saves in a worker, removes and links queued behind them."""

    def __init__(
        self,
        *,
        max_pending: int = 2,
        durability: Durability = "full",
        storage_options: Mapping[str, Any] | None = None,
        on_commit: CommitCallback | None = None,
    ) -> None:
        super().__init__(durability=durability, storage_options=storage_options, on_commit=on_commit)
        self.saver = _awt.AsyncSaver(max_pending=max_pending, durability=durability, on_commit=on_commit)

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike[str], storage_options: Any | None = None
    ) -> None:
        """Snapshot ``checkpoint``'s tensors to CPU and queue the write; an earlier failure raises here."""
        text, options = self._prepare_save(path, storage_options)
        self.saver.save(checkpoint, text, storage_options=options or {})

    def remove_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Queue the removal behind the saves already queued (it is skipped if one of them fails)."""
        options = self.storage_options or None
        self.saver.then(lambda: remove_checkpoint(path, options))

    def load_checkpoint(
        self, path: str | os.PathLike[str], map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Wait for the queued saves, then load as `AtomicCheckpointIO` does."""
        self.saver.wait()
        return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)

    def then(self, action: Callable[[], _T]) -> Future[_T]:
        """Run ``action`` in the worker once the saves queued so far have committed."""
        return self.saver.then(action)

    def wait(self) -> None:
        """Block until every queued save and removal is done; raise an unreported failure."""
        self.saver.wait()

    def teardown(self) -> None:
        """Called by Lightning when fitting ends: the queued saves are finished, and a failed one
        (or a failed ``on_commit``) that was not reported yet raises here."""
        self.saver.wait()


class _AtomicModelCheckpointMethods:
    """What `AtomicModelCheckpoint` changes in ``ModelCheckpoint``."""

    def _generate_state_key(self, **kwargs: Any) -> str:
        # ModelCheckpoint's own key: a run saved with the stock callback resumes with this one
        # (and back) keeping its best-k bookkeeping and its last.ckpt name.
        return f"ModelCheckpoint{kwargs!r}"

    @staticmethod
    def _link_checkpoint(trainer: Any, filepath: str, linkpath: str) -> None:
        if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
            checkpoint_io = trainer.strategy.checkpoint_io
            if isinstance(checkpoint_io, _AtomicAsyncCheckpointIOMethods):
                # The checkpoint it points to may still be queued: link once it is committed.
                checkpoint_io.then(functools.partial(link_atomically, filepath, linkpath))
            else:
                link_atomically(filepath, linkpath)
        trainer.strategy.barrier()

    def _find_last_checkpoints(self, trainer: Any) -> set[str]:
        checkpoint_io = trainer.strategy.checkpoint_io
        if isinstance(checkpoint_io, _AtomicAsyncCheckpointIOMethods):
            checkpoint_io.wait()
        found: set[str] = super()._find_last_checkpoints(trainer)  # type: ignore[misc]
        valid = {path for path in found if _awt.validate(path)}
        if valid or self.dirpath is None:  # type: ignore[attr-defined]
            return valid
        # Every "last" checkpoint is torn or missing: resume from the newest one that is whole.
        newest = _awt.latest_valid(os.fspath(self.dirpath), "*" + self.FILE_EXTENSION)  # type: ignore[attr-defined]
        return {newest} if newest is not None else set()


# --- building the classes for one package --------------------------------------------------------


@dataclass(frozen=True)
class LightningClasses:
    """The three classes built for one namespace (see `classes_for`)."""

    namespace: Namespace
    checkpoint_io: type[Any]
    async_checkpoint_io: type[Any]
    model_checkpoint: type[Any]


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def default_namespace() -> Namespace:
    """``"lightning"`` if the unified package is installed, else ``"pytorch_lightning"``."""
    if _importable("lightning.fabric"):
        return "lightning"
    if _importable("lightning_fabric"):
        return "pytorch_lightning"
    raise ImportError("atomicwrite.lightning needs lightning (pip install lightning) or pytorch_lightning")


def _public_class(name: str, methods: type, base: type[Any], doc: str) -> type[Any]:
    # Named and placed as the public class, so that reprs and error messages name it rather than
    # the private methods class or the package's base.
    return type(name, (methods, base), {"__doc__": doc, "__module__": __name__})


@functools.cache
def _checkpoint_io_classes(namespace: Namespace) -> tuple[type[Any], type[Any]]:
    module = importlib.import_module(_FABRIC_PACKAGE[namespace] + ".plugins.io.checkpoint_io")
    sync = _public_class(
        "AtomicCheckpointIO",
        _AtomicCheckpointIOMethods,
        module.CheckpointIO,
        "A ``CheckpointIO`` whose saves are all or nothing (`atomicwrite.torch.save`).\n\n"
        "``AtomicCheckpointIO(durability='full', storage_options=None, on_commit=None)``: ``storage_options``\n"
        "(fsspec options of an object store) are merged with those given to each ``save_checkpoint``;\n"
        "``on_commit(result)`` is called with each save's ``CommitResult``.",
    )
    asynchronous = _public_class(
        "AtomicAsyncCheckpointIO",
        _AtomicAsyncCheckpointIOMethods,
        module.CheckpointIO,
        "`AtomicCheckpointIO` with its saves written in a worker thread from a CPU snapshot.\n\n"
        "``AtomicAsyncCheckpointIO(max_pending=2, durability='full', storage_options=None, on_commit=None)``:\n"
        "the checkpoint is snapshotted before ``save_checkpoint`` returns; removals (and ``AtomicModelCheckpoint``'s\n"
        "last links) run only once the saves queued before them committed, never after one failed; a failed save\n"
        "raises from the next save, removal or teardown; ``on_commit(result)`` runs in the worker thread.",
    )
    return sync, asynchronous


@functools.cache
def _model_checkpoint_class(namespace: Namespace) -> type[Any]:
    module = importlib.import_module(_TRAINER_PACKAGE[namespace] + ".callbacks")
    return _public_class(
        "AtomicModelCheckpoint",
        _AtomicModelCheckpointMethods,
        module.ModelCheckpoint,
        "A ``ModelCheckpoint`` with an atomic ``save_last='link'`` (temp symlink renamed over the old one) and a\n"
        "``ckpt_path='last'`` that only resolves to a checkpoint that validates.",
    )


class _LazyClasses:
    def __init__(self, namespace: Namespace) -> None:
        self.namespace: Namespace = namespace

    @property
    def checkpoint_io(self) -> type[Any]:
        return _checkpoint_io_classes(self.namespace)[0]

    @property
    def async_checkpoint_io(self) -> type[Any]:
        return _checkpoint_io_classes(self.namespace)[1]

    @property
    def model_checkpoint(self) -> type[Any]:
        return _model_checkpoint_class(self.namespace)


def classes_for(namespace: Namespace) -> LightningClasses:
    """The plugin classes for ``"lightning"`` or ``"pytorch_lightning"`` (importing that package)."""
    if namespace not in _FABRIC_PACKAGE:
        raise UsageError(f"namespace must be 'lightning' or 'pytorch_lightning', not {namespace!r}")
    sync, asynchronous = _checkpoint_io_classes(namespace)
    return LightningClasses(namespace, sync, asynchronous, _model_checkpoint_class(namespace))


_ATTRIBUTES = {
    "AtomicCheckpointIO": "checkpoint_io",
    "AtomicAsyncCheckpointIO": "async_checkpoint_io",
    "AtomicModelCheckpoint": "model_checkpoint",
}


def _lazy_attribute(namespace: Namespace | None, name: str, module: str) -> Any:
    attribute = _ATTRIBUTES.get(name)
    if attribute is None:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    # Only the classes asked for are built: Fabric users never import the Trainer's package.
    return getattr(_LazyClasses(namespace or default_namespace()), attribute)


def __getattr__(name: str) -> Any:
    return _lazy_attribute(None, name, __name__)
