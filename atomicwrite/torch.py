"""Crash-safe PyTorch checkpoints: save, validate, load, and find the newest good one.

```python
import atomicwrite.torch as awt

awt.save(model.state_dict(), "ckpt/step-1000.pt")          # or "s3://bucket/run/step-1000.pt"
state = awt.load(awt.latest_valid("ckpt/"), map_location="cpu")
future = awt.save(model.state_dict(), "ckpt/step-2000.pt", background=True)  # training goes on
```

`save` streams ``torch.save`` straight into an atomic write: no copy of the checkpoint is held
in memory (each tensor's storage is one write to the temp file or upload), and a save that fails,
or a process killed half way, leaves the previous checkpoint in place.  `validate` tells a
complete checkpoint from a torn (truncated) file and from the *footer-only* zip that
``torch.save`` leaves in a plain file when pickling raises.  `AsyncSaver` (or
``save(..., background=True)``) takes a CPU snapshot of the tensors and writes it in a worker
thread while training goes on.

torch is imported only when a function here is called, so ``import atomicwrite.torch`` works
without it.  The module also provides the ``"torch"``, ``"numpy"`` and ``"safetensors"``
serializers of [`atomic_save`][atomicwrite.atomic_save], registered as entry points; the last two
need numpy or safetensors only when used (``"safetensors"`` writes its format itself, streamed,
and needs the safetensors package only to load).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import copy
import ctypes
import errno
import fnmatch
import json
import os
import shutil
import struct
import sys
import tempfile
import threading
import time
import traceback
import weakref
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import IO, Any, Literal, TypeVar, overload

from ._api import CommitCallback, Target, atomic_open
from ._callbacks import check_on_commit, close_while_unwinding, notify
from ._errors import AtomicWriteError, CommitCallbackError, UsageError
from ._result import CommitResult, Durability
from ._serializers import Serializer
from ._strategy import WriteOptions, resolve_target, split_protocol

__all__ = [
    "DEFAULT_PATTERNS",
    "AsyncSaver",
    "CheckpointError",
    "DependencyFailedError",
    "ValidationResult",
    "latest_valid",
    "load",
    "numpy_serializer",
    "safetensors_serializer",
    "save",
    "serializer",
    "validate",
]

#: File names `latest_valid` considers checkpoints unless told otherwise.
DEFAULT_PATTERNS: tuple[str, ...] = ("*.pt", "*.pth", "*.ckpt")

_COPY_CHUNK = 8 << 20
_LOCAL_PROTOCOLS = ("", "file", "local")

#: Why a checkpoint is (not) valid: ``"ok"``; ``"missing"``: no such file or object;
#: ``"torn"``: it starts like a zip but has no intact central directory (cut short: a copy or
#: a non-atomic writer that died); ``"footer-only"``: a zip that torch.save finished without
#: ``data.pkl`` (pickling raised while saving into a plain file); ``"corrupt"``: a record's
#: CRC-32 does not match or a record cannot be read; ``"not-a-checkpoint"``: not a zip, or a zip
#: without torch's records (including the legacy pre-1.6 format); ``"unloadable"``: the
#: structure is sound but ``torch.load`` failed (``full=True`` only).
Reason = Literal["ok", "missing", "torn", "footer-only", "corrupt", "not-a-checkpoint", "unloadable"]


class CheckpointError(AtomicWriteError):
    """A checkpoint failed validation: ``reason`` (see `ValidationResult`) says how."""

    def __init__(self, message: str, *, result: ValidationResult) -> None:
        super().__init__(message)
        self.result = result
        self.reason: Reason = result.reason
        self.target = result.target


@dataclass(frozen=True)
class ValidationResult:
    """What `validate` found.  True in a boolean context exactly when the checkpoint is valid.

    Attributes:
        target: the path or URL checked.
        valid: whether it is a complete checkpoint.
        reason: ``"ok"`` or why not (see `Reason`).
        detail: a human-readable explanation.
        loaded: whether a full ``torch.load(weights_only=True)`` was run and succeeded
            (``full=True``; False when the checkpoint holds objects that weights-only loading
            refuses, in which case only its structure and CRCs were verified).
    """

    target: str
    valid: bool
    reason: Reason
    detail: str = ""
    loaded: bool = False

    def __bool__(self) -> bool:
        return self.valid


# --- save ---------------------------------------------------------------------------------

# The two overloads spell out the same keywords: only an overload can tie ``background``'s literal
# to the return type, and a TypedDict cannot carry the keywords beside ``**torch_save_kwargs``
# (that needs PEP 728's ``extra_items``, which mypy does not support).


@overload
def save(
    obj: Any,
    target: Target,
    *,
    storage_options: Mapping[str, Any] | None = ...,
    durability: Durability = ...,
    background: Literal[False] = ...,
    on_commit: CommitCallback | None = ...,
    **torch_save_kwargs: Any,
) -> CommitResult: ...


@overload
def save(
    obj: Any,
    target: Target,
    *,
    storage_options: Mapping[str, Any] | None = ...,
    durability: Durability = ...,
    background: Literal[True],
    on_commit: CommitCallback | None = ...,
    **torch_save_kwargs: Any,
) -> Future[CommitResult]: ...


def save(
    obj: Any,
    target: Target,
    *,
    storage_options: Mapping[str, Any] | None = None,
    durability: Durability = "full",
    background: bool = False,
    on_commit: CommitCallback | None = None,
    **torch_save_kwargs: Any,
) -> CommitResult | Future[CommitResult]:
    """``torch.save(obj, ...)`` into an all-or-nothing write of ``target`` (a path or URL).

    The checkpoint is streamed to the temp file (or the multipart upload): memory stays at
    about one storage's worth, never a second copy of the checkpoint.  If pickling raises, or
    the process dies, ``target`` keeps its previous content.  ``torch_save_kwargs`` go to
    ``torch.save`` (``pickle_module``, ``pickle_protocol``...); the legacy non-zip format
    (``_use_new_zipfile_serialization=False``) is refused, since `validate` cannot check it.

    With ``background=True`` the tensors are copied to CPU memory now and the write happens in
    the worker thread of a process-wide `AsyncSaver`: the call returns a
    ``concurrent.futures.Future`` of the `CommitResult` (see `AsyncSaver.save`).

    ``on_commit(result)`` is called once the checkpoint is committed, as by
    [`atomic_open`][atomicwrite.atomic_open] (in the worker thread for a background save).
    """
    _check_save_kwargs(torch_save_kwargs)
    if background:
        return _default_saver().save(
            obj,
            target,
            storage_options=storage_options,
            durability=durability,
            on_commit=on_commit,
            **torch_save_kwargs,
        )
    check_on_commit(on_commit)
    result = _save_now(obj, target, storage_options, durability, torch_save_kwargs)
    notify(on_commit, result)
    return result


def _check_save_kwargs(torch_save_kwargs: Mapping[str, Any]) -> None:
    if torch_save_kwargs.get("_use_new_zipfile_serialization", True) is False:
        raise UsageError(
            "atomicwrite.torch.save writes torch's zip format only (the one validate() can check);"
            " drop _use_new_zipfile_serialization=False"
        )


def _save_now(
    obj: Any,
    target: Target,
    storage_options: Mapping[str, Any] | None,
    durability: Durability,
    torch_save_kwargs: Mapping[str, Any],
) -> CommitResult:
    import torch

    with atomic_open(target, "wb", durability=durability, storage_options=storage_options) as file:
        torch.save(obj, file, **torch_save_kwargs)
    assert file.result is not None
    return file.result


# --- background saves ------------------------------------------------------------------------

_T = TypeVar("_T")


class DependencyFailedError(AtomicWriteError):
    """An action queued with `AsyncSaver.then` was not run: a save it waited for failed.

    ``__cause__`` is that save's exception.
    """


class _PinnedPool:
    """Page-locked CPU buffers for copies of GPU storages, reused from one snapshot to the next."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: dict[int, list[Any]] = collections.defaultdict(list)

    def take(self, nbytes: int) -> Any:
        with self._lock:
            free = self._free.get(nbytes)
            if free:
                return free.pop()
        import torch

        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True).untyped_storage()

    def give_back(self, buffers: Sequence[Any]) -> None:
        with self._lock:
            for buffer in buffers:
                self._free[buffer.nbytes()].append(buffer)


class _Snapshot:
    """A copy of a checkpoint whose tensors live in CPU memory the caller no longer touches.

    Containers (dicts, lists, tuples) are copied, tensors are copied storage by storage (so views
    that shared a storage still share one, as ``torch.save`` records them), numpy arrays and
    bytearrays are copied, and every other object is kept by reference (an object of another
    class that holds tensors is *not* snapshotted: changing its tensors before the write ends
    changes the checkpoint).
    """

    def __init__(self, pool: _PinnedPool) -> None:
        import torch

        self._torch = torch
        self._pool = pool
        self._storages: dict[tuple[str, int, int], Any] = {}
        self.pinned: list[Any] = []
        self.copy_done: Any = None  # a CUDA event the writer waits for, when GPU copies were queued

    def take(self, obj: Any) -> Any:  # noqa: PLR0911 - one return per container kind
        torch = self._torch
        if isinstance(obj, torch.Tensor):
            return self._tensor(obj)
        if isinstance(obj, Mapping) and isinstance(obj, dict):
            copied = copy.copy(obj)  # keeps the type and attributes (a state_dict's _metadata)
            for key, value in obj.items():
                copied[key] = self.take(value)
            return copied
        if isinstance(obj, list):
            items = [self.take(value) for value in obj]
            if type(obj) is list:
                return items
            copied_list = copy.copy(obj)
            copied_list[:] = items
            return copied_list
        if isinstance(obj, tuple):
            items = [self.take(value) for value in obj]
            if hasattr(obj, "_fields"):  # a namedtuple
                return type(obj)(*items)
            return type(obj)(items) if type(obj) is not tuple else tuple(items)
        if type(obj).__name__ == "ndarray" and type(obj).__module__ == "numpy":
            return obj.copy()  # numpy state (RNG states, metrics) can be changed in place too
        if isinstance(obj, bytearray):
            return bytearray(obj)
        return obj

    def _tensor(self, tensor: Any) -> Any:
        torch = self._torch
        plain = type(tensor) in (torch.Tensor, torch.nn.Parameter)
        strided = tensor.layout == torch.strided
        if not plain or not strided or tensor.is_quantized or tensor.device.type == "meta":
            # Sparse, quantized and subclassed tensors: one detached CPU copy each.
            return tensor.detach().to("cpu", copy=True)
        if tensor.is_conj() or tensor.is_neg():
            # A lazily conjugated or negated view: its storage alone does not hold its values.
            return tensor.detach().resolve_conj().resolve_neg().to("cpu", copy=True)
        storage = tensor.untyped_storage()
        key = (str(storage.device), storage.data_ptr(), storage.nbytes())
        copied = self._storages.get(key)
        if copied is None:
            copied = self._storages[key] = self._copy_storage(storage)
        result = torch.empty(0, dtype=tensor.dtype).set_(
            copied, tensor.storage_offset(), tensor.size(), tensor.stride()
        )
        if isinstance(tensor, torch.nn.Parameter):
            result = torch.nn.Parameter(result, requires_grad=tensor.requires_grad)
        return result

    def _copy_storage(self, storage: Any) -> Any:
        torch = self._torch
        if storage.device.type == "cpu":
            return storage.clone()
        if storage.device.type == "cuda":
            buffer = self._pool.take(storage.nbytes())
            self.pinned.append(buffer)
            buffer.copy_(storage, non_blocking=True)
            if self.copy_done is None:
                self.copy_done = torch.cuda.Event()
            self.copy_done.record(torch.cuda.current_stream(storage.device))
            return buffer
        return storage.cpu()


_savers: weakref.WeakSet[AsyncSaver] = weakref.WeakSet()


class AsyncSaver:
    """Checkpoint saves that run in a worker thread while the caller goes on.

    ```python
    saver = AsyncSaver()
    future = saver.save(model.state_dict(), "ckpt/step-100.pt")  # returns at once
    ...                                                           # training goes on
    saver.wait()                                                  # all saves committed
    ```

    `save` copies every tensor to CPU memory before it returns (GPU tensors go through pinned
    buffers that are reused from one save to the next), so the caller may go on updating the
    model; the copy is then written with `atomicwrite.torch.save` semantics (all or nothing).
    Saves are written one after another, in the order they were made, so two saves of one
    target commit in that order.  At most ``max_pending`` snapshots wait in memory: a further
    `save` blocks until one is written.

    A failed save raises from its future and, once, from the next `save`, `then`, `wait` or
    `close` (so ``with AsyncSaver() as saver:`` raises it on leaving the block), so that an
    error cannot pass unnoticed; one that is still unreported when the interpreter exits is
    printed on stderr.  `then` queues an action (removing an old checkpoint, pointing a link at
    a new one) that runs only once the saves queued before it have committed with their
    durability, and never after one of them failed.  The worker thread is not a daemon: a
    process that exits normally finishes the saves it started.  ``on_commit(result)`` is called
    in the worker after each save commits (see `save`).
    """

    def __init__(
        self,
        *,
        max_pending: int = 2,
        durability: Durability = "full",
        storage_options: Mapping[str, Any] | None = None,
        on_commit: CommitCallback | None = None,
    ) -> None:
        if max_pending < 1:
            raise UsageError(f"max_pending must be at least 1, not {max_pending!r}")
        check_on_commit(on_commit)
        self.max_pending = max_pending
        self.on_commit = on_commit
        self.durability: Durability = durability
        self.storage_options = dict(storage_options or {})
        self._slots = threading.BoundedSemaphore(max_pending)
        self._lock = threading.Condition()
        self._queue: collections.deque[Callable[[], None]] = collections.deque()
        self._worker: threading.Thread | None = None
        self._in_flight: list[Future[Any]] = []  # saves queued or running, oldest first
        self._unreported: BaseException | None = None
        self._pool = _PinnedPool()
        self._closed = False
        _savers.add(self)

    @property
    def pending(self) -> int:
        """How many saves are queued or being written."""
        with self._lock:
            return len(self._in_flight)

    def save(
        self,
        obj: Any,
        target: Target,
        *,
        storage_options: Mapping[str, Any] | None = None,
        durability: Durability | None = None,
        on_commit: CommitCallback | None = None,
        **torch_save_kwargs: Any,
    ) -> Future[CommitResult]:
        """Snapshot ``obj``'s tensors to CPU now; write it to ``target`` in the worker.

        Returns a future of the `CommitResult`, whose ``seconds_blocked`` is the time this call
        took (the snapshot, and any wait for a free slot) and ``seconds_background`` the time
        the worker spent writing.  Raises here (before queueing anything) the error of an
        earlier save that was not reported yet.  ``storage_options``, ``durability`` and
        ``on_commit`` default to the saver's; ``on_commit`` runs in the worker thread, after the
        commit, and an exception from it is reported like a failed save (as a
        `atomicwrite.CommitCallbackError`), though the checkpoint stays committed and the
        future holds its result.
        """
        called = time.perf_counter()
        _check_save_kwargs(torch_save_kwargs)
        check_on_commit(on_commit)
        self._check_usable()
        self._raise_unreported()
        options = self.storage_options if storage_options is None else storage_options
        level: Durability = self.durability if durability is None else durability
        callback = self.on_commit if on_commit is None else on_commit
        self._slots.acquire()
        try:
            snapshot = _Snapshot(self._pool)
            copied = snapshot.take(obj)
        except BaseException:
            self._slots.release()
            raise
        future: Future[CommitResult] = Future()
        blocked = time.perf_counter() - called

        def write() -> None:
            started = time.perf_counter()
            try:
                if snapshot.copy_done is not None:
                    snapshot.copy_done.synchronize()
                written = _save_now(copied, target, options, level, torch_save_kwargs)
                finished = time.perf_counter()
                result = written._timed(
                    finished - called, seconds_blocked=blocked, seconds_background=finished - started
                )
            except BaseException as exc:
                self._failed(exc)
                future.set_exception(exc)
            else:
                try:
                    notify(callback, result)
                except CommitCallbackError as exc:
                    self._failed(exc)
                future.set_result(result)
            finally:
                self._pool.give_back(snapshot.pinned)
                self._slots.release()
                with self._lock:
                    self._in_flight.remove(future)

        with self._lock:
            self._in_flight.append(future)
        self._enqueue(write)
        return future

    def then(self, action: Callable[[], _T]) -> Future[_T]:
        """Run ``action()`` in the worker once every save queued before it has committed.

        If one of those saves failed, ``action`` is not run and the future raises
        `DependencyFailedError` (caused by that save's error).  Use it for what must not
        overtake a save: deleting the checkpoint a new one replaces, or moving a link to it.
        """
        self._check_usable()
        self._raise_unreported()
        with self._lock:
            awaited = list(self._in_flight)
        future: Future[_T] = Future()

        def run() -> None:
            for save_future in awaited:
                error = save_future.exception()
                if error is not None:
                    failure = DependencyFailedError(f"not run: a save it depends on failed: {error}")
                    failure.__cause__ = error
                    future.set_exception(failure)
                    return
            try:
                future.set_result(action())
            except BaseException as exc:
                self._failed(exc)
                future.set_exception(exc)

        self._enqueue(run)
        return future

    def wait(self) -> None:
        """Block until every queued save and action has run; raise the first unreported error."""
        if threading.current_thread() is self._worker:
            raise UsageError("AsyncSaver.wait() cannot be called from the saver's own worker")
        with self._lock:
            while self._queue or self._worker is not None:
                self._lock.wait()
        self._raise_unreported()

    def close(self) -> None:
        """Wait for the queued saves (raising an unreported error), then refuse new ones."""
        try:
            self.wait()
        finally:
            self._closed = True

    def __enter__(self) -> AsyncSaver:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            self.close()
            return
        close_while_unwinding(self.close, exc, "a background save")

    def _check_usable(self) -> None:
        if self._closed:
            raise UsageError("this AsyncSaver is closed")

    def _failed(self, error: BaseException) -> None:
        with self._lock:
            if self._unreported is None:
                self._unreported = error

    def _raise_unreported(self) -> None:
        with self._lock:
            error, self._unreported = self._unreported, None
        if error is not None:
            raise error

    def _enqueue(self, task: Callable[[], None]) -> None:
        with self._lock:
            self._queue.append(task)
            if self._worker is None:
                # Not a daemon: interpreter shutdown waits for the saves already queued.
                self._worker = threading.Thread(target=self._drain, name="atomicwrite-saver", daemon=False)
                self._worker.start()

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._worker = None
                    self._lock.notify_all()
                    return
                task = self._queue.popleft()
            task()


_default: AsyncSaver | None = None
_default_lock = threading.Lock()


def _default_saver() -> AsyncSaver:
    global _default
    with _default_lock:
        if _default is None:
            _default = AsyncSaver()
        return _default


@atexit.register
def _finish_saves() -> None:
    # Non-daemon workers have finished by now (the interpreter joins them before atexit runs);
    # what is left to do is to make an error nobody collected visible.  An atexit handler cannot
    # change the exit status, and ending the process from here would skip the handlers of other
    # libraries (log flushing, coverage), so the error goes to stderr.
    for saver in list(_savers):
        try:
            saver.wait()
        except BaseException as exc:
            print(
                "atomicwrite: a background checkpoint save failed and its error was never collected"
                " (call AsyncSaver.wait() or close() to raise it):",
                file=sys.stderr,
            )
            traceback.print_exception(exc, file=sys.stderr)


# --- where a target lives -------------------------------------------------------------------


def _is_local(target: Target) -> bool:
    protocol, _ = split_protocol(os.fspath(target))
    return protocol in _LOCAL_PROTOCOLS


def _local_path(target: Target) -> str:
    _, location = resolve_target(target)
    return location


def _filesystem(target: Target, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    """The fsspec file system of a URL and the path on it."""
    from ._stores.base import ObjectStoreStrategy

    strategy, location = resolve_target(target)
    if isinstance(strategy, ObjectStoreStrategy):
        fs = strategy.filesystem(WriteOptions(storage_options=dict(storage_options or {})))
    else:
        from fsspec.core import url_to_fs

        fs, _ = url_to_fs(location, **dict(storage_options or {}))
    return fs, fs._strip_protocol(location)


@contextlib.contextmanager
def _local_copy(target: Target, storage_options: Mapping[str, Any] | None) -> Iterator[str]:
    """A local path holding ``target``: the path itself, or a temp copy of an object, streamed."""
    if _is_local(target):
        yield _local_path(target)
        return
    fs, path = _filesystem(target, storage_options)
    name = path.rpartition("/")[2] or "checkpoint"
    fd, temp = tempfile.mkstemp(prefix=".atomicwrite-torch-", suffix="-" + name[-64:])
    try:
        with os.fdopen(fd, "wb") as out, fs.open(path, "rb") as source:
            shutil.copyfileobj(source, out, _COPY_CHUNK)
        yield temp
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp)


# --- validate ------------------------------------------------------------------------------


def _torch_records(names: Sequence[str]) -> bool:
    """Whether a zip's record names look like torch.save's (``<archive>/version`` etc.)."""
    return any(name.count("/") >= 1 and name.split("/", 1)[1] in ("version", "byteorder") for name in names)


def _check_zip(file: IO[bytes], target: str) -> ValidationResult:  # noqa: PLR0911 - one return per verdict
    head = file.read(4)
    file.seek(0)
    if not head:
        return ValidationResult(target, False, "torn", "the file is empty")
    try:
        archive = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, struct.error) as exc:
        if head == b"PK\x03\x04":
            return ValidationResult(target, False, "torn", f"no intact zip central directory (truncated?): {exc}")
        return ValidationResult(target, False, "not-a-checkpoint", f"not a zip file: {exc}")
    with archive:
        names = archive.namelist()
        if not any(name.count("/") == 1 and name.endswith("/data.pkl") for name in names):
            if _torch_records(names):
                return ValidationResult(
                    target,
                    False,
                    "footer-only",
                    "a torch zip without data.pkl: torch.save raised while pickling and wrote only its footer",
                )
            return ValidationResult(target, False, "not-a-checkpoint", "a zip file without torch's data.pkl record")
        try:
            bad = archive.testzip()
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, struct.error, zlib.error) as exc:
            return ValidationResult(target, False, "corrupt", f"a record cannot be read: {exc}")
        if bad is not None:
            return ValidationResult(target, False, "corrupt", f"record {bad!r} fails its CRC-32 check")
    return ValidationResult(target, True, "ok", "zip directory, data.pkl and every record's CRC-32 verified")


def _full_load(path: str, result: ValidationResult) -> ValidationResult:
    import pickle

    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc) or "Weights only" in str(exc):
            # Objects torch will not load without running arbitrary code: the structure and
            # CRCs were verified, the pickle itself cannot be, safely.
            return ValidationResult(result.target, True, "ok", result.detail + "; not weights-only loadable")
        return ValidationResult(result.target, False, "unloadable", f"torch.load failed: {exc}")
    except Exception as exc:  # any failure to load is the answer
        return ValidationResult(result.target, False, "unloadable", f"torch.load failed: {type(exc).__name__}: {exc}")
    return ValidationResult(result.target, True, "ok", result.detail + "; torch.load(weights_only=True) ok", True)


def _validate_local(path: str, target: str, full: bool) -> ValidationResult:
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed just below
    except FileNotFoundError:
        return ValidationResult(target, False, "missing", "no such file")
    except IsADirectoryError:
        return ValidationResult(target, False, "not-a-checkpoint", "a directory, not a file")
    with file:
        result = _check_zip(file, target)
    if full and result.valid:
        result = _full_load(path, result)
    return result


def validate(
    target: Target, *, full: bool = False, storage_options: Mapping[str, Any] | None = None
) -> ValidationResult:
    """Check that ``target`` holds a complete torch checkpoint, without unpickling anything.

    Checks that the zip central directory is present and parseable, that a ``<archive>/data.pkl``
    record exists, and that every record's CRC-32 matches (this reads the whole file).  With
    ``full=True`` it also runs ``torch.load(weights_only=True, mmap=True)`` (a URL is first
    copied to a local temp file).  Returns a `ValidationResult`, true exactly when the
    checkpoint is valid, whose ``reason`` tells a torn file from a footer-only one.
    """
    text = os.fspath(target)
    if _is_local(target):
        return _validate_local(_local_path(target), text, full)
    if full:
        try:
            with _local_copy(target, storage_options) as path:
                return _validate_local(path, text, full)
        except FileNotFoundError:
            return ValidationResult(text, False, "missing", "no such object")
    fs, path = _filesystem(target, storage_options)
    try:
        file = fs.open(path, "rb")
    except FileNotFoundError:
        return ValidationResult(text, False, "missing", "no such object")
    with file:
        return _check_zip(file, text)


# --- load ----------------------------------------------------------------------------------


def load(
    target: Target,
    *,
    map_location: Any = None,
    weights_only: bool | None = None,
    mmap: bool | None = None,
    verify: bool = True,
    storage_options: Mapping[str, Any] | None = None,
) -> Any:
    """``torch.load`` a checkpoint from a path or URL, after checking it is complete.

    A local file is loaded from its path, so ``mmap=True`` works.  An object (``s3://``...) is
    streamed to a temp file in the local temp directory, loaded from there and deleted, so it
    never sits in memory as a whole.  With ``verify`` (the default) `validate` runs first and a
    torn, footer-only or corrupt checkpoint raises `CheckpointError` instead of a confusing
    unpickling error; a missing one raises ``FileNotFoundError``.  ``map_location``,
    ``weights_only`` and ``mmap`` are passed to ``torch.load`` when given (torch's defaults
    otherwise: ``weights_only=True`` since torch 2.6).
    """
    if mmap and not _is_local(target) and sys.platform == "win32":
        raise UsageError("mmap=True on a URL needs a temp file that can be deleted while mapped (not on Windows)")
    import torch

    kwargs: dict[str, Any] = {}
    if map_location is not None:
        kwargs["map_location"] = map_location
    if weights_only is not None:
        kwargs["weights_only"] = weights_only
    if mmap is not None:
        kwargs["mmap"] = mmap
    text = os.fspath(target)
    try:
        with _local_copy(target, storage_options) as path:
            if verify:
                result = _validate_local(path, text, full=False)
                if result.reason == "missing":
                    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), text)
                if not result.valid:
                    raise CheckpointError(
                        f"{text!r} is not a complete checkpoint ({result.reason}): {result.detail}", result=result
                    )
            return torch.load(path, **kwargs)
    except FileNotFoundError as exc:
        if exc.filename is None:
            exc.filename = text
        raise


# --- latest_valid ---------------------------------------------------------------------------


def _patterns(pattern: str | Sequence[str]) -> tuple[str, ...]:
    items = pattern.split("|") if isinstance(pattern, str) else list(pattern)
    found = tuple(item.strip() for item in items if item.strip())
    if not found:
        raise UsageError(f"pattern must name at least one glob pattern, not {pattern!r}")
    return found


def _is_temp(name: str) -> bool:
    from ._names import parse_temp_name

    return name.startswith(".atomicwrite-torch-") or parse_temp_name(name) is not None


def _local_candidates(location: str, patterns: tuple[str, ...]) -> list[tuple[float, str, str]]:
    if os.path.isdir(location):
        directory, prefix = location, ""
    else:
        directory, prefix = os.path.split(location)
        directory = directory or "."
    found: list[tuple[float, str, str]] = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        name = entry.name
        if not name.startswith(prefix) or _is_temp(name) or not any(fnmatch.fnmatch(name, p) for p in patterns):
            continue
        try:
            if not entry.is_file():
                continue
            mtime = entry.stat().st_mtime_ns / 1e9
        except FileNotFoundError:
            continue
        found.append((mtime, name, entry.path))
    return found


def _remote_candidates(
    target: str, patterns: tuple[str, ...], storage_options: Mapping[str, Any] | None
) -> list[tuple[float, str, str]]:
    from ._stores.base import _modified

    fs, path = _filesystem(target, storage_options)
    stripped = path.rstrip("/")
    if target.endswith("/") or fs.isdir(stripped):
        directory, prefix, base = stripped, "", target.rstrip("/")
    else:
        directory, _, prefix = stripped.rpartition("/")
        base = target.rpartition("/")[0]
    try:
        listing: list[dict[str, Any]] = fs.ls(directory, detail=True)
    except FileNotFoundError:
        return []
    found: list[tuple[float, str, str]] = []
    for info in listing:
        if info.get("type", "file") != "file":
            continue
        key = str(info["name"]).rstrip("/")
        name = key.rpartition("/")[2]
        if not name.startswith(prefix) or _is_temp(name) or not any(fnmatch.fnmatch(name, p) for p in patterns):
            continue
        found.append((_modified(info), name, f"{base}/{name}"))
    return found


def latest_valid(
    directory_or_prefix: Target,
    pattern: str | Sequence[str] = DEFAULT_PATTERNS,
    *,
    full: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> str | None:
    """The newest checkpoint under ``directory_or_prefix`` that `validate` accepts, or None.

    ``directory_or_prefix`` is a directory (``"ckpt/"``, ``"s3://bucket/run/"``) or a name
    prefix in one (``"ckpt/step-"``).  ``pattern`` is a glob or several (a sequence, or one
    string joined by ``|``: ``"*.ckpt|*.pt"``) that file names must match.  Candidates are tried
    newest first, by modification time (``LastModified`` on object stores), and torn,
    footer-only or corrupt ones are skipped.  Temp files of writes in progress are never
    candidates.  Returns a path for a local location, a URL for an object store.
    """
    patterns = _patterns(pattern)
    text = os.fspath(directory_or_prefix)
    if _is_local(text):
        candidates = _local_candidates(_local_path(text), patterns)
    else:
        candidates = _remote_candidates(text, patterns, storage_options)
    for _, _, location in sorted(candidates, reverse=True):
        if validate(location, full=full, storage_options=storage_options):
            return location
    return None


# --- serializers for atomic_save -------------------------------------------------------------


class _TakenSnapshot:
    """What the ``"torch"`` and ``"safetensors"`` serializers' snapshot hook returns, for a write
    made later in another thread: an `AsyncSaver`-style CPU copy of the object's tensors, which
    their ``dump`` writes once the GPU copies it queued have landed; its pinned buffers then go
    back to the pool for the next snapshot."""

    def __init__(self, obj: Any) -> None:
        self._snapshot = _Snapshot(_serializer_pool)
        self._copied = self._snapshot.take(obj)
        self._written = False

    @contextlib.contextmanager
    def ready(self) -> Iterator[Any]:
        """The copy, complete; written once (its pinned buffers are reused afterwards)."""
        if self._written:
            raise UsageError("this snapshot was written already; take a new one")
        self._written = True
        try:
            if self._snapshot.copy_done is not None:
                self._snapshot.copy_done.synchronize()
            yield self._copied
        finally:
            _serializer_pool.give_back(self._snapshot.pinned)
            self._snapshot.pinned = []


_serializer_pool = _PinnedPool()


def _snapshot_tensors(obj: Any) -> _TakenSnapshot:
    return _TakenSnapshot(obj)


@contextlib.contextmanager
def _snapshotted(obj: Any) -> Iterator[Any]:
    """``obj`` itself, or the complete copy if it is a snapshot the hook took."""
    if isinstance(obj, _TakenSnapshot):
        with obj.ready() as copied:
            yield copied
    else:
        yield obj


def _dump_torch(obj: Any, file: IO[Any]) -> None:
    import torch

    with _snapshotted(obj) as value:
        torch.save(value, file)


def _load_torch(file: IO[Any]) -> Any:
    import torch

    return torch.load(file)


def _dump_numpy(obj: Any, file: IO[Any]) -> None:
    import numpy as np

    np.save(file, obj, allow_pickle=False)


def _load_numpy(file: IO[Any]) -> Any:
    import numpy as np

    return np.load(file, allow_pickle=False)


def _is_torch_tensor(value: Any) -> bool:
    module = type(value).__module__
    return module == "torch" or module.startswith("torch.")


def _copy_array(obj: Any) -> Any:
    import numpy as np

    return np.array(obj, copy=True)


def _check_safetensors(obj: Any) -> None:
    if not isinstance(obj, Mapping) or not obj:
        raise UsageError("the 'safetensors' serializer needs a non-empty dict of name -> tensor (or numpy array)")


def _snapshot_safetensors(obj: Any) -> _TakenSnapshot:
    # Refused now, not later in the thread that writes it; and checked on the caller's tensors,
    # since the copy would no longer show which of them share memory.
    _check_safetensors(obj)
    _plan_safetensors(obj)
    return _TakenSnapshot(obj)


def _dump_safetensors(obj: Any, file: IO[Any]) -> None:
    with _snapshotted(obj) as value:
        _dump_safetensors_now(value, file)


# The safetensors format, written here rather than by safetensors itself: its writers either build
# the whole file as one bytes object (save) or want a path (save_file), and the file this writes
# into may be an upload.  A file is an 8-byte little-endian header length, a JSON header padded
# with spaces to a multiple of 8 bytes, then every tensor's little-endian bytes back to back.
# Tensors are laid out as safetensors lays them out (widest dtype first, then by name), so a
# file here is byte for byte the one safetensors.torch.save / safetensors.numpy.save would give.

#: safetensors' dtype codes, narrowest first: the order its writer sorts tensors by (descending).
_SAFETENSORS_DTYPE_ORDER = (
    "BOOL",
    "F4",
    "F6_E2M3",
    "F6_E3M2",
    "U8",
    "I8",
    "F8_E5M2",
    "F8_E4M3",
    "F8_E8M0",
    "F8_E4M3FNUZ",
    "F8_E5M2FNUZ",
    "I16",
    "U16",
    "F16",
    "BF16",
    "I32",
    "U32",
    "F32",
    "C64",
    "F64",
    "I64",
    "U64",
)
_SAFETENSORS_DTYPE_RANK = {code: rank for rank, code in enumerate(_SAFETENSORS_DTYPE_ORDER)}

#: The code of each torch or numpy dtype (by its name) that safetensors can store.
_SAFETENSORS_DTYPE_CODES = {
    "bool": "BOOL",
    "uint8": "U8",
    "int8": "I8",
    "int16": "I16",
    "uint16": "U16",
    "int32": "I32",
    "uint32": "U32",
    "int64": "I64",
    "uint64": "U64",
    "float16": "F16",
    "bfloat16": "BF16",
    "float32": "F32",
    "float64": "F64",
    "complex64": "C64",
    "float8_e5m2": "F8_E5M2",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e4m3fnuz": "F8_E4M3FNUZ",
    "float8_e5m2fnuz": "F8_E5M2FNUZ",
    "float8_e8m0fnu": "F8_E8M0",
    "float4_e2m1fn_x2": "F4",
}


@dataclass(frozen=True)
class _PlannedTensor:
    """One tensor of a safetensors file, checked, with where its bytes go."""

    name: str
    code: str
    shape: list[int]
    nbytes: int
    value: Any
    #: Width of the units to byte-swap when the bytes in memory are big-endian; 1: none.
    swap_unit: int


def _dump_safetensors_now(obj: Any, file: IO[Any]) -> None:
    _check_safetensors(obj)
    planned = _plan_safetensors(obj)  # every refusal happens here, before the first byte
    file.write(_safetensors_header(planned))
    for tensor in planned:
        _write_tensor_bytes(tensor, file)


def _plan_safetensors(obj: Mapping[Any, Any]) -> list[_PlannedTensor]:
    planned: list[_PlannedTensor] = []
    for name, value in obj.items():
        if not isinstance(name, str):
            raise UsageError(f"safetensors names must be str, not {type(name).__name__} ({name!r})")
        if name == "__metadata__":
            raise UsageError("'__metadata__' is reserved by the safetensors format; it cannot name a tensor")
        try:
            name.encode("utf-8")  # the header is UTF-8: a lone surrogate cannot be written
        except UnicodeEncodeError as exc:
            raise UsageError(f"the tensor name {name!r} is not valid text: {exc}") from exc
        if _is_torch_tensor(value):
            planned.append(_plan_torch_tensor(name, value))
        elif _is_numpy_array(value):
            planned.append(_plan_numpy_array(name, value))
        else:
            raise UsageError(
                f"the 'safetensors' serializer stores torch tensors and numpy arrays;"
                f" {name!r} is a {type(value).__name__}"
            )
    _refuse_shared_memory(planned)
    planned.sort(key=lambda tensor: (-_SAFETENSORS_DTYPE_RANK[tensor.code], tensor.name))
    return planned


def _safetensors_code(name: str, dtype_name: str) -> str:
    code = _SAFETENSORS_DTYPE_CODES.get(dtype_name)
    if code is None:
        raise UsageError(f"safetensors has no dtype for {name!r} ({dtype_name})")
    return code


def _plan_torch_tensor(name: str, tensor: Any) -> _PlannedTensor:
    import torch

    if not isinstance(tensor, torch.Tensor):
        raise UsageError(f"{name!r} is a {type(tensor).__name__}, not a tensor")
    if tensor.layout != torch.strided or tensor.is_nested:
        raise UsageError(f"{name!r} is a {tensor.layout} tensor; safetensors stores dense ones (call .to_dense())")
    if tensor.device.type == "meta":
        raise UsageError(f"{name!r} is on the meta device: it has no data to save")
    code = _safetensors_code(name, str(tensor.dtype).rpartition(".")[2])
    if not tensor.is_contiguous():
        raise UsageError(f"{name!r} is not contiguous; safetensors stores contiguous tensors (call .contiguous())")
    shape = list(tensor.shape)
    if code == "F4" and shape:
        shape[-1] *= 2  # two 4-bit values per stored element: the header counts values
    size = tensor.element_size()
    swap_unit = 1 if sys.byteorder == "little" else size // 2 if tensor.is_complex() else size
    return _PlannedTensor(name, code, shape, tensor.numel() * size, tensor, swap_unit)


def _is_numpy_array(value: Any) -> bool:
    numpy = sys.modules.get("numpy")  # an array exists only once numpy is imported
    return numpy is not None and isinstance(value, numpy.ndarray)


def _plan_numpy_array(name: str, array: Any) -> _PlannedTensor:
    code = _safetensors_code(name, array.dtype.name)
    if not array.flags.c_contiguous:
        raise UsageError(
            f"{name!r} is not C-contiguous; safetensors stores contiguous arrays (call np.ascontiguousarray)"
        )
    big_endian = array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and sys.byteorder == "big")
    size = array.dtype.itemsize
    swap_unit = (size // 2 if array.dtype.kind == "c" else size) if big_endian else 1
    return _PlannedTensor(name, code, list(array.shape), array.nbytes, array, swap_unit)


def _refuse_shared_memory(planned: list[_PlannedTensor]) -> None:
    """Tensors whose bytes overlap would be stored twice and load back unshared: refused, as
    safetensors refuses them (``save_model`` in safetensors dedupes them first)."""
    by_device: dict[Any, list[tuple[int, int, str]]] = collections.defaultdict(list)
    for tensor in planned:
        if tensor.nbytes and _is_torch_tensor(tensor.value):
            start = tensor.value.data_ptr()
            by_device[tensor.value.device].append((start, start + tensor.nbytes, tensor.name))
    for areas in by_device.values():
        areas.sort()
        reach, holder = -1, ""
        for start, stop, name in areas:
            if start < reach:
                raise UsageError(
                    f"{holder!r} and {name!r} share memory; safetensors stores each tensor once"
                    " (save one of them, or clone it)"
                )
            if stop > reach:
                reach, holder = stop, name


def _safetensors_header(planned: list[_PlannedTensor]) -> bytes:
    entries: dict[str, dict[str, Any]] = {}
    offset = 0
    for tensor in planned:
        entries[tensor.name] = {
            "dtype": tensor.code,
            "shape": tensor.shape,
            "data_offsets": [offset, offset + tensor.nbytes],
        }
        offset += tensor.nbytes
    text = json.dumps(entries, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text


def _write_tensor_bytes(tensor: _PlannedTensor, file: IO[Any]) -> None:
    if not tensor.nbytes:
        return
    value = tensor.value
    if _is_torch_tensor(value):
        # One tensor at a time on the host, never the whole dict; conjugate and negative views are
        # resolved (a copy of this tensor) so the bytes are the values, not the lazy base.
        value = value.detach().to("cpu").resolve_conj().resolve_neg()
        start = value.data_ptr()
    else:
        start = value.ctypes.data
    # A view of the tensor's own memory, not a copy; ``value`` keeps that memory alive.
    data = memoryview((ctypes.c_ubyte * tensor.nbytes).from_address(start)).cast("B")
    for begin in range(0, tensor.nbytes, _COPY_CHUNK):  # a huge tensor goes out in slices
        piece = data[begin : begin + _COPY_CHUNK]
        file.write(piece if tensor.swap_unit == 1 else _little_endian(piece, tensor.swap_unit))


def _little_endian(piece: memoryview, unit: int) -> bytes:
    """``piece``, big-endian units of ``unit`` bytes, rewritten little-endian (one slice's copy)."""
    import numpy as np

    swapped: bytes = np.frombuffer(piece, dtype=f">u{unit}").astype(f"<u{unit}").tobytes()
    return swapped


def _load_safetensors(file: IO[Any]) -> Any:
    data = file.read()
    try:
        import torch  # noqa: F401 - chooses the tensor type
    except ImportError:
        from safetensors.numpy import load as load_numpy

        return load_numpy(data)
    from safetensors.torch import load as load_torch

    return load_torch(data)


#: ``atomic_save(obj, path, "torch")``: ``torch.save``, streamed; read back with torch's default
#: ``torch.load`` (``weights_only=True`` since torch 2.6).
#: Its snapshot (for background saves) is the CPU copy `AsyncSaver` takes.
serializer = Serializer("torch", _dump_torch, _load_torch, binary=True, snapshot=_snapshot_tensors)

#: ``atomic_save(array, path, "numpy")``: ``np.save`` / ``np.load`` with ``allow_pickle=False``.
numpy_serializer = Serializer("numpy", _dump_numpy, _load_numpy, binary=True, snapshot=_copy_array)

#: ``atomic_save(tensors, path, "safetensors")``: a dict of torch tensors or numpy arrays in the
#: safetensors format, byte for byte what ``safetensors.torch.save`` (or ``.numpy.save``) gives,
#: but streamed: the header, then each tensor from its own memory, one tensor at a time on the host
#: (GPU tensors included), so no copy of the file is held.  Writing needs no safetensors package;
#: loading does (read back as torch tensors when torch is installed).  What safetensors refuses
#: (values that are not tensors or arrays, sparse or non-contiguous tensors, tensors sharing
#: memory, dtypes it has no name for) is a `UsageError` before the first byte is written.
safetensors_serializer = Serializer(
    "safetensors", _dump_safetensors, _load_safetensors, binary=True, snapshot=_snapshot_safetensors
)
