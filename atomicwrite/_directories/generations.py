"""Generations of a checkpoint directory, a ``latest`` pointer that moves atomically, retention.

Layout under ``root`` (local or object store)::

    root/
      gen-00000001/        one published directory per save (atomic_directory, never replaced)
      gen-00000002/
      latest               -> gen-00000002 (a symlink locally; a small JSON file on Windows
                              and a small JSON object on stores)
      .atomicwrite-pins.json   the pinned generations (only once one was pinned)

A save publishes a new generation first and moves ``latest`` second, so ``latest`` only ever
names a complete generation; a crash between the two leaves ``latest`` on the previous one.
Locally the pointer is swapped by renaming a fresh symlink over it (never remove-then-create).
On Windows, where creating a symlink needs a privilege, it is a JSON file replaced by the
Windows file protocol (a flushed temp file, then one write-through ``MoveFileExW``), and on an
object store a JSON object replaced conditionally (``If-Match``); both only ever move forward.
Readers take either form wherever they find it.

Retention runs only after the pointer move returned, and keeps what any policy of
`atomicwrite._directories.retention` keeps plus what it must never delete: the generation
``latest`` names, the one this process resumed from, pinned ones, any newer than ``latest``,
and all of them while a save of this store is still open.  On an object store a removed
generation leaves the listing at once (its manifest goes first) and its objects are deleted in
a background thread, so a slow delete never holds up the next save.

A background save (``save_async``) snapshots what it writes before the call returns, then
writes, publishes, moves the pointer and applies retention in one worker thread per store, one
save after another in call order; its failure is kept until the next call to the store raises
it (and printed at interpreter exit if none does).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import json
import math
import os
import re
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any, Literal, NamedTuple, cast

from .._callbacks import check_on_commit, close_while_unwinding, notify
from .._errors import AtomicWriteError, ConflictError, TargetNotFoundError, UnsupportedTargetError, UsageError
from .._local.base import replace_symlink
from .._names import temp_name
from .._result import LocalVersion
from .._serializers import Serializer, freeze, get_serializer
from .._strategy import WriteOptions, resolve_target
from .api import begin_directory
from .local import remove_tree
from .manifest import (
    MANIFEST_NAME,
    DirectoryCommitCallback,
    DirectoryCommitResult,
    DirectoryVerification,
    FileEntry,
    check_name,
)
from .marker import renames_by_copying
from .reading import PublishedDirectory, open_directory, verify_directory
from .retention import GenerationInfo, KeepLatest, RetentionPolicy, judges, rank_by_metric
from .staging import DirectoryTransaction, StagingDirectory
from .store import remove_prefix

__all__ = ["CheckpointStore", "Generation"]

POINTER_NAME = "latest"
#: The pinned generations, under the root beside ``latest``.
PINS_NAME = ".atomicwrite-pins.json"
PINS_FORMAT = "atomicwrite-pins/1"
_POINTER_RETRIES = 20

#: How a file of a background save is serialized: a serializer's name, a
#: [`Serializer`][atomicwrite.Serializer], or a ``(obj, fileobj) -> None`` callable.
SerializerSpec = str | Serializer | Callable[[Any, IO[bytes]], None]


@dataclass(frozen=True)
class Generation:
    """One published generation of a [`CheckpointStore`][atomicwrite.CheckpointStore]."""

    name: str
    number: int
    directory: PublishedDirectory

    @property
    def location(self) -> str:
        """The generation's directory (a path, or a URL)."""
        return self.directory.target

    def path(self, name: str) -> str:
        """Where the file ``name`` of this generation is."""
        return self.directory.path(name)

    def __truediv__(self, name: str) -> str:
        return self.directory.path(name)

    def open(self, name: str) -> IO[bytes]:
        """Open the file ``name`` of this generation for reading."""
        return self.directory.open(name)

    @property
    def step(self) -> int:
        """The step it was saved at (its number)."""
        return self.number

    @property
    def timestamp(self) -> float:
        """Wall-clock time (Unix seconds) the save started; for generations saved before
        metadata was recorded, when it was published."""
        return _timestamp(self.directory.manifest.metadata, self.directory.manifest.created)

    @property
    def metrics(self) -> dict[str, float]:
        """The metrics given to ``save(metrics=...)``."""
        metrics = self.directory.manifest.metadata.get("metrics")
        return dict(metrics) if isinstance(metrics, dict) else {}

    @property
    def tags(self) -> dict[str, str]:
        """The tags given to ``save(tags=...)``."""
        tags = self.directory.manifest.metadata.get("tags")
        return dict(tags) if isinstance(tags, dict) else {}


def _timestamp(metadata: Mapping[str, Any], created: float) -> float:
    value = metadata.get("timestamp")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else created


def _check_metadata(metrics: Mapping[str, float] | None, tags: Mapping[str, str] | None) -> None:
    for given, what in ((metrics, "metrics"), (tags, "tags")):
        if given is not None and not isinstance(given, Mapping):
            raise UsageError(f"{what} must be a mapping, not {given!r}")
    for name, value in (metrics or {}).items():
        if not isinstance(name, str) or not name:
            raise UsageError(f"a metric's name must be a non-empty str, not {name!r}")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise UsageError(f"metric {name!r} must be a finite number, not {value!r}")
    for tag, text in (tags or {}).items():
        if not isinstance(tag, str) or not tag or not isinstance(text, str):
            raise UsageError(f"tags map non-empty str names to str values, not {tag!r}: {text!r}")


class _BackgroundTimes(NamedTuple):
    """``time.perf_counter()`` readings of a background save."""

    called: float  # save_async was called
    returned: float  # it returned: the snapshot was taken and the save queued
    started: float  # the worker took the save up


class _GenerationTransaction(DirectoryTransaction):
    """A directory transaction whose manifest carries the generation's metadata, and that
    tells its store when it is no longer open."""

    def __init__(
        self, inner: DirectoryTransaction, metadata: Mapping[str, Any], done: Callable[[], None], *, began: float
    ) -> None:
        self._inner = inner
        inner.metadata = self.metadata = dict(metadata)
        self._done = done
        #: ``time.perf_counter()`` when the save began: its result is timed from there.
        self.began = began
        self.staging = inner.staging
        self.strategy_name = inner.strategy_name

    def commit(self, reported: Mapping[str, FileEntry] | None = None) -> DirectoryCommitResult:
        try:
            return self._inner.commit(reported)
        except BaseException:
            self._done()
            raise

    def discard(self) -> None:
        try:
            self._inner.discard()
        finally:
            self._done()


class CheckpointStore:
    """Numbered, all-or-nothing checkpoint directories under ``root`` with an atomic ``latest``.

    ```python
    store = CheckpointStore("checkpoints", keep_last=3)
    with store.save() as stage:
        torch.save(model.state_dict(), stage / "model.pt")
    newest = store.latest()  # the newest complete generation, verified
    ```

    One process saves into a store at a time (the rank that commits, in distributed
    training); any number may read.  [`save_async`][atomicwrite.CheckpointStore.save_async]
    saves in the background while training goes on.

    Args:
        root: a local directory (created if missing) or an object-store URL.
        keep: retention policies ([`KeepLatest`][atomicwrite.KeepLatest],
            [`KeepEvery`][atomicwrite.KeepEvery], [`KeepBest`][atomicwrite.KeepBest]), one or a
            list; after each save a generation is removed when no policy keeps it.  Never
            removed: the one ``latest`` names, the one this process resumed from, pinned ones,
            any newer than ``latest``.
        keep_last: shorthand for ``KeepLatest(keep_last)`` (added to ``keep``).
        prefix: generation names are ``prefix`` + an 8-digit number.
        durability, checksums, storage_options: as for [`atomic_directory`][atomicwrite.atomic_directory].
        on_commit: called with each save's
            [`DirectoryCommitResult`][atomicwrite.DirectoryCommitResult] once ``latest`` names
            the new generation and retention has run (in the worker thread, for a background
            save); an exception from it is raised as a
            [`CommitCallbackError`][atomicwrite.CommitCallbackError], the save staying published.
        max_pending: how many background saves (each holding its snapshot in memory) may be
            queued or being written at once; a further `save_async` waits for the oldest.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        keep: RetentionPolicy | Sequence[RetentionPolicy] | None = None,
        keep_last: int | None = None,
        prefix: str = "gen-",
        durability: Literal["none", "full"] = "full",
        checksums: bool = True,
        storage_options: Mapping[str, Any] | None = None,
        on_commit: DirectoryCommitCallback | None = None,
        max_pending: int = 2,
    ) -> None:
        check_on_commit(on_commit, "DirectoryCommitResult")
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            raise UsageError(f"max_pending must be a positive int, not {max_pending!r}")
        if keep_last is not None and (not isinstance(keep_last, int) or keep_last < 1):
            raise UsageError(f"keep_last must be a positive int or None, not {keep_last!r}")
        if not re.fullmatch(r"[A-Za-z0-9_.-]*", prefix) or prefix.startswith("."):
            raise UsageError(f"prefix must be letters, digits, '_', '-' or '.', not starting with '.': {prefix!r}")
        policies = [keep] if isinstance(keep, RetentionPolicy) else list(keep or ())
        for policy in policies:
            if not isinstance(policy, RetentionPolicy):
                raise UsageError(f"keep takes retention policies (KeepLatest, KeepEvery, KeepBest), not {policy!r}")
        if keep_last is not None:
            policies.append(KeepLatest(keep_last))
        self.keep_last = keep_last
        #: The retention policies applied after each save.
        self.policies: tuple[RetentionPolicy, ...] = tuple(policies)
        self.prefix = prefix
        self.durability: Literal["none", "full"] = durability
        self.checksums = checksums
        self.storage_options: dict[str, Any] = dict(storage_options or {})
        self.on_commit = on_commit
        self.max_pending = max_pending
        self._pattern = re.compile(re.escape(prefix) + r"(?P<number>[0-9]{8,})")
        strategy, location = resolve_target(root)
        from .._stores.base import ObjectStoreStrategy

        self._strategy: Any = cast(Any, strategy)
        from .._local.windows import WindowsStrategy

        self.local = not isinstance(strategy, ObjectStoreStrategy)
        # Windows: symlinks need a privilege, and directories cannot be opened as files.
        self._windows = isinstance(strategy, WindowsStrategy)
        if not self.local and strategy.name not in ("s3", "gcs", "azure", "memory"):
            # The latest pointer is replaced by compare-and-swap, which needs the current
            # version of an object: a store must read one before it can hold a CheckpointStore.
            raise UnsupportedTargetError(
                f"CheckpointStore supports local paths, s3://, gs://, az:// and memory://, not {root!r}"
            )
        if self.local:
            self.root = os.path.abspath(os.path.expanduser(location))
            os.makedirs(self.root, exist_ok=True)
            self._fs: Any = None
        else:
            self.root = location.rstrip("/")
            self._fs = self._strategy.filesystem(WriteOptions(storage_options=self.storage_options))
        #: What the last save published.
        self.last_result: DirectoryCommitResult | None = None
        self._resumed_from: str | None = None
        self._open_saves = 0
        self._open: dict[str, _GenerationTransaction] = {}  # saves begun and not yet closed
        self._lock = threading.Lock()
        self._deleter: ThreadPoolExecutor | None = None
        self._deletions: list[Future[None]] = []
        # Background saves: one worker, so they are written and published in call order.
        self._saver: ThreadPoolExecutor | None = None
        self._saver_thread: threading.Thread | None = None
        self._saves: list[Future[DirectoryCommitResult]] = []  # queued or being written, oldest first
        self._slots = threading.BoundedSemaphore(max_pending)
        self._unreported: BaseException | None = None

    # --- names --------------------------------------------------------------------------

    def _join(self, name: str) -> str:
        return os.path.join(self.root, name) if self.local else f"{self.root}/{name}"

    def _number(self, name: str) -> int | None:
        match = self._pattern.fullmatch(name)
        return None if match is None else int(match.group("number"))

    def _names(self) -> dict[str, int]:
        """Every published generation's name and number (an object store's only with a manifest)."""
        if self.local:
            try:
                entries = os.listdir(self.root)
            except FileNotFoundError:
                return {}
            numbered = {e: n for e in entries if (n := self._number(e)) is not None}
            if renames_by_copying(self.root) is None:
                return numbered
            # Written in place there (see marker.py): only its manifest makes one published.
            return {e: n for e, n in numbered.items() if os.path.isfile(os.path.join(self.root, e, MANIFEST_NAME))}
        fs = self._fs
        fs.invalidate_cache(self.root)
        try:
            children = [
                str(p).rstrip("/").rpartition("/")[2] for p in fs.ls(fs._strip_protocol(self.root), detail=False)
            ]
        except FileNotFoundError:
            return {}
        found: dict[str, int] = {}
        for entry in children:
            number = self._number(entry)
            if number is not None and fs.exists(fs._strip_protocol(f"{self.root}/{entry}/{MANIFEST_NAME}")):
                found[entry] = number
        return found

    def generations(self) -> list[str]:
        """The published generations' names, oldest first."""
        return [name for name, _ in sorted(self._names().items(), key=lambda item: item[1])]

    def _generation(self, name: str) -> Generation:
        number = self._number(name)
        if number is None:
            raise UsageError(f"{name!r} is not a generation of this store (prefix {self.prefix!r})")
        directory = open_directory(self._join(name), storage_options=self.storage_options)
        return Generation(name, number, directory)

    # --- the pointer --------------------------------------------------------------------

    def pointer(self) -> str | None:
        """The generation ``latest`` names, or None if it names none yet."""
        path = self._join(POINTER_NAME)
        # Locally any unreadable pointer counts as none, as an unreadable symlink always did; a
        # store's errors other than a missing object are raised, as before.
        unreadable = OSError if self.local else FileNotFoundError
        try:
            if self.local and os.path.islink(path):
                target = os.readlink(path)
                return target if self._number(target) is not None else None
            if self.local:
                # The pointer file of a store written on Windows, wherever it is read.
                with open(path, "rb") as file:
                    data = file.read()
            else:
                data = self._fs.cat_file(self._fs._strip_protocol(path))
            record = json.loads(data)
        except (unreadable, ValueError):
            return None
        name = record.get("generation") if isinstance(record, dict) else None
        return name if isinstance(name, str) and self._number(name) is not None else None

    def _point_to(self, name: str) -> None:
        if self.local and not self._windows:
            self._swap_symlink(name)
        else:
            self._swap_pointer_record(name)

    def _swap_symlink(self, name: str) -> None:
        # "latest" always names a generation: the new link is renamed over the old one.
        replace_symlink(self.root, POINTER_NAME, name, durable=self.durability != "none")

    def _swap_pointer_record(self, name: str) -> None:
        """Replace the JSON pointer (an object on a store, a file on Windows) by a conditional
        write, only ever forward."""
        from .._api import atomic_open

        number = self._number(name)
        assert number is not None
        options: dict[str, Any]
        if self.local:
            url = path = self._join(POINTER_NAME)
            # Never ReplaceFileW (it cannot write through): one write-through MoveFileExW.
            options = {"durability": self.durability, "preserve_permissions": False}
        else:
            path = self._fs._strip_protocol(self._join(POINTER_NAME))
            url = self._strategy.url(path)
            options = {"storage_options": self.storage_options}
        for _ in range(_POINTER_RETRIES):
            version = self._pointer_version(path)
            current = self.pointer() if version is not None else None
            current_number = None if current is None else self._number(current)
            if current_number is not None and current_number >= number:
                return  # never move backwards: a newer generation is already latest
            data = json.dumps({"generation": name}).encode()
            mode = "xb" if version is None else "wb"
            options.pop("if_match", None)
            if version is not None:
                options["if_match"] = version
            try:
                with atomic_open(url, mode, **options) as file:
                    file.write(data)  # type: ignore[arg-type]  # binary: mode is "xb" or "wb"
                return
            except (ConflictError, FileExistsError):
                continue
        raise ConflictError(
            f"{self._join(POINTER_NAME)!r} kept changing; it was not moved to {name!r}", expected=None, actual=None
        )

    def _pointer_version(self, path: str) -> object | None:
        """The pointer's current version (what ``if_match`` takes), None if there is none."""
        if not self.local:
            version: object | None = self._strategy.version(path, WriteOptions(storage_options=self.storage_options))
            return version
        try:
            return LocalVersion.from_stat(os.lstat(path))
        except FileNotFoundError:
            return None

    # --- saving -------------------------------------------------------------------------

    def next_name(self, step: int | None = None) -> str:
        """The name the next save gets: ``step``'s, or one past the newest generation (or save
        of this process still in progress)."""
        if step is None:
            with self._lock:
                open_numbers = [self._number(name) or 0 for name in self._open]
            step = max([*self._names().values(), *open_numbers], default=0) + 1
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise UsageError(f"step must be a non-negative int, not {step!r}")
        return f"{self.prefix}{step:08d}"

    @contextlib.contextmanager
    def save(
        self,
        step: int | None = None,
        *,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> Iterator[StagingDirectory]:
        """Write a new generation (numbered ``step``, or the next number); on leaving the block
        it is published, ``latest`` moves to it, and old generations are pruned.  An exception
        in the block discards it and leaves ``latest`` where it was.

        The generation's manifest records its step, the wall-clock time the save started,
        ``metrics`` (names to finite numbers, for [`KeepBest`][atomicwrite.KeepBest] and
        [`find`][atomicwrite.CheckpointStore.find]) and ``tags`` (names to strings).

        Background saves still queued are published first; the error of one that failed is
        raised here, before anything is written."""
        transaction = self.begin(step, metrics=metrics, tags=tags)
        try:
            yield transaction.staging
        except BaseException:
            transaction.discard()
            raise
        self.finish(transaction.commit())

    def begin(
        self,
        step: int | None = None,
        *,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> Any:
        """Start a save without a ``with`` block: a [`DirectoryTransaction`][atomicwrite.DirectoryTransaction]
        to commit, then pass its result to [`finish`][atomicwrite.CheckpointStore.finish]
        (or to discard).  Waits for the background saves first, and raises the error of one
        that failed."""
        self._refuse_in_worker("begin a save")
        self._wait_for_saves()
        self._raise_unreported()
        return self._begin(step, metrics, tags)

    def _begin(
        self, step: int | None, metrics: Mapping[str, float] | None, tags: Mapping[str, str] | None
    ) -> _GenerationTransaction:
        began = time.perf_counter()
        _check_metadata(metrics, tags)
        name = self.next_name(step)
        with self._lock:
            if name in self._open:
                raise UsageError(f"a save of {name!r} is still in progress in this store")
        metadata = {
            "step": self._number(name),
            "timestamp": time.time(),
            "metrics": dict(metrics or {}),
            "tags": dict(tags or {}),
        }
        inner = begin_directory(
            self._join(name),
            replace=False,
            durability=self.durability,
            checksums=self.checksums,
            storage_options=self.storage_options,
        )
        closed = threading.Event()

        def done() -> None:
            if not closed.is_set():
                closed.set()
                with self._lock:
                    self._open_saves -= 1
                    self._open.pop(name, None)

        transaction = _GenerationTransaction(inner, metadata, done, began=began)
        with self._lock:
            self._open_saves += 1
            self._open[name] = transaction
        return transaction

    def finish(self, result: DirectoryCommitResult) -> None:
        """Move ``latest`` to the generation just published, then apply retention (only once
        the pointer move returned: durable, with ``durability="full"``), then tell ``on_commit``.

        ``last_result`` is the result, timed from the save's start to the pointer move."""
        timed = self._point_latest(result)
        self._retain()
        notify(self.on_commit, timed)

    def _point_latest(
        self, result: DirectoryCommitResult, background: _BackgroundTimes | None = None
    ) -> DirectoryCommitResult:
        """Move ``latest`` to ``result``'s generation; the result timed until then (from the
        save's start, or as ``background`` says for a background save)."""
        name = result.target.rstrip("/").replace("\\", "/").rpartition("/")[2]
        with self._lock:
            transaction = self._open.get(name)
        try:
            self._point_to(name)
        finally:
            if transaction is not None:
                transaction._done()
        moved = time.perf_counter()
        if background is not None:
            timed = result._timed(
                moved - background.called,
                seconds_blocked=background.returned - background.called,
                seconds_background=moved - background.started,
            )
        elif transaction is not None:
            timed = result._timed(moved - transaction.began)
        else:  # a result this store did not begin: its own timing stands
            timed = result
        self.last_result = timed
        return timed

    def _retain(self) -> None:
        if self.policies:
            self.prune()

    # --- saving in the background ------------------------------------------------------

    def save_async(
        self,
        step: int | None,
        files: Mapping[str, Any],
        *,
        serializer: SerializerSpec | Mapping[str, SerializerSpec] = "pickle",
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> Future[DirectoryCommitResult]:
        """Save a generation in the background: ``files`` maps file names inside it to objects,
        each written by ``serializer`` (one for all, or a mapping from file name to serializer);
        returns a ``concurrent.futures.Future`` of its
        [`DirectoryCommitResult`][atomicwrite.DirectoryCommitResult].

        ```python
        future = store.save_async(step, {"model.pt": model.state_dict()}, serializer="torch")
        ...  # training goes on, changing the model
        store.wait()  # or future.result(): published, and latest names it
        ```

        Before the call returns, every object is snapshotted: with the serializer's
        ``snapshot`` hook where it has one (``"torch"`` and ``"safetensors"`` copy each tensor
        to CPU memory, as ``atomicwrite.torch.AsyncSaver`` does; ``"bytes"`` and ``"text"``
        keep an immutable value as it is), else by serializing it to bytes now (``"json"``,
        ``"pickle"``); so the caller may change them at once.  One worker per store then writes,
        publishes, moves ``latest`` and applies retention, a save at a time, in call order;
        ``latest`` and retention move only once the generation is durable.  At most
        ``max_pending`` saves wait in memory: a further call blocks until the oldest is
        published.  A step left None is one past the newest generation or pending save.

        Raises here, before anything is queued: bad arguments (``UsageError``), and the error
        of an earlier background save that was not reported yet.  A failure of this save sets
        the future's exception and is raised, once, by the next call to `save`, `begin`,
        `save_async`, [`wait`][atomicwrite.CheckpointStore.wait] or
        [`close`][atomicwrite.CheckpointStore.close] (or on leaving ``with store:``); one
        still unreported at interpreter exit is printed on stderr.  So is an exception from
        ``on_commit``, though then the save stands and the future holds its result.
        """
        called = time.perf_counter()
        self._refuse_in_worker("save")
        self._raise_unreported()
        plan = _plan(files, serializer)
        _check_metadata(metrics, tags)
        self._slots.acquire()
        transaction: _GenerationTransaction | None = None
        try:
            transaction = self._begin(step, metrics, tags)
            frozen = [(name, *freeze(chosen, obj)) for name, chosen, obj in plan]
            future: Future[DirectoryCommitResult] = Future()
            returned = time.perf_counter()
            with self._lock:
                if self._saver is None:
                    self._saver = ThreadPoolExecutor(max_workers=1, thread_name_prefix="atomicwrite-store")
                self._saves.append(future)
                try:
                    self._saver.submit(self._write_in_background, transaction, frozen, future, called, returned)
                except BaseException:  # the interpreter is shutting down
                    self._saves.remove(future)
                    raise
        except BaseException:
            if transaction is not None:
                transaction.discard()
            self._slots.release()
            raise
        return future

    def _write_in_background(
        self,
        transaction: _GenerationTransaction,
        frozen: list[tuple[str, Serializer, Any]],
        future: Future[DirectoryCommitResult],
        called: float,
        returned: float,
    ) -> None:
        self._saver_thread = threading.current_thread()
        started = time.perf_counter()
        try:
            try:
                for name, chosen, value in frozen:
                    _write_file(transaction.staging, name, chosen, value)
                result = transaction.commit()
            except BaseException:
                transaction.discard()
                raise
            timed = self._point_latest(result, _BackgroundTimes(called, returned, started))
        except BaseException as exc:
            self._failed(exc)
            future.set_exception(exc)
        else:
            # Published and pointed to: the save stands whatever retention or the callback do,
            # so their errors are reported like a failed save's, and the future has its result.
            try:
                self._retain()
                notify(self.on_commit, timed)
            except BaseException as exc:
                self._failed(exc)
            future.set_result(timed)
        finally:
            with self._lock:
                self._saves.remove(future)
            self._slots.release()

    def _refuse_in_worker(self, what: str) -> None:
        if threading.current_thread() is self._saver_thread:
            raise UsageError(f"cannot {what} from this store's background-save thread (an on_commit callback)")

    def _wait_for_saves(self) -> None:
        with self._lock:
            pending = list(self._saves)
        concurrent.futures.wait(pending)

    def _failed(self, error: BaseException) -> None:
        with self._lock:
            if self._unreported is None:
                self._unreported = error
        with _uncollected_lock:
            _uncollected.add(self)

    def _raise_unreported(self) -> None:
        with self._lock:
            error, self._unreported = self._unreported, None
        if error is not None:
            with _uncollected_lock:
                _uncollected.discard(self)
            raise error

    # --- reading ------------------------------------------------------------------------

    def latest(self, *, checksums: bool = True) -> Generation | None:
        """The generation ``latest`` names, if it verifies; else the newest one that does
        (``latest`` missing or damaged by hand).  None if there is no complete generation."""
        named = self.pointer()
        if named is not None and self.verify(named, checksums=checksums):
            with contextlib.suppress(TargetNotFoundError, AtomicWriteError):
                return self._resumed(self._generation(named))
        for name in reversed(self.generations()):
            if name != named and self.verify(name, checksums=checksums):
                with contextlib.suppress(TargetNotFoundError, AtomicWriteError):
                    return self._resumed(self._generation(name))
        return None

    def latest_valid(self, *, checksums: bool = True) -> Generation | None:
        """The newest generation that verifies, whether or not ``latest`` names it yet: torn,
        corrupt or unreadable generations are skipped.  None if no generation verifies."""
        for name in reversed(self.generations()):
            if self.verify(name, checksums=checksums):
                with contextlib.suppress(TargetNotFoundError, AtomicWriteError):
                    return self._resumed(self._generation(name))
        return None

    def find(
        self,
        *,
        step: int | None = None,
        best: str | None = None,
        mode: Literal["min", "max"] = "min",
        tags: Mapping[str, str] | None = None,
        checksums: bool = True,
    ) -> Generation | None:
        """A generation chosen by its metadata, verified: the one saved at ``step``, or the
        one with the best value of the metric ``best`` (lowest for ``mode="min"``, highest for
        ``"max"``; of equal values the older), or else the newest; among those whose ``tags``
        include the given ones.  A candidate that does not verify is passed over for the next
        best.  None if nothing matches."""
        if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
            raise UsageError(f"step must be a non-negative int, not {step!r}")
        if best is not None and (not isinstance(best, str) or not best):
            raise UsageError(f"best must name a metric, not {best!r}")
        if mode not in ("min", "max"):
            raise UsageError(f"mode must be 'min' or 'max', not {mode!r}")
        _check_metadata(None, tags)
        candidates = [
            g
            for g in self._readable()
            if (step is None or g.step == step) and all(g.tags.get(k) == v for k, v in (tags or {}).items())
        ]
        if best is not None:
            by_name = {g.name: g for g in candidates}
            ordered = [by_name[info.name] for info in rank_by_metric([_info(g) for g in candidates], best, mode)]
        else:
            ordered = list(reversed(candidates))
        for generation in ordered:
            if self.verify(generation.name, checksums=checksums):
                return self._resumed(generation)
        return None

    def get(self, name: str) -> Generation:
        """The published generation ``name`` (not verified)."""
        return self._resumed(self._generation(name))

    @property
    def resumed_from(self) -> str | None:
        """The generation the last of `latest`, `latest_valid`, `find` or `get` returned to
        this process: retention never removes it."""
        return self._resumed_from

    def _resumed(self, generation: Generation) -> Generation:
        self._resumed_from = generation.name
        return generation

    def _readable(self) -> list[Generation]:
        """The generations whose manifest can be read, oldest first."""
        found = []
        for name in self.generations():
            with contextlib.suppress(TargetNotFoundError, AtomicWriteError):
                found.append(self._generation(name))
        return found

    def verify(self, name: str | None = None, *, checksums: bool = True) -> DirectoryVerification:
        """Check generation ``name`` (default: the one ``latest`` names) against its manifest."""
        if name is None:
            name = self.pointer()
            if name is None:
                return verify_directory(self._join(POINTER_NAME), storage_options=self.storage_options)
        return verify_directory(self._join(name), checksums=checksums, storage_options=self.storage_options)

    # --- pins ---------------------------------------------------------------------------

    def pinned(self) -> list[str]:
        """The pinned generations' names (retention never removes them), oldest first."""
        if self.local:
            try:
                with open(self._join(PINS_NAME), "rb") as file:
                    data = file.read()
            except FileNotFoundError:
                return []
        else:
            fs = self._fs
            try:
                data = fs.cat_file(fs._strip_protocol(self._join(PINS_NAME)))
            except FileNotFoundError:
                return []
        try:
            record = json.loads(data)
        except ValueError as exc:
            raise AtomicWriteError(f"{self._join(PINS_NAME)!r} is damaged ({exc})") from exc
        names = record.get("pinned") if isinstance(record, dict) and record.get("format") == PINS_FORMAT else None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise AtomicWriteError(f"{self._join(PINS_NAME)!r} is not a list of pinned generations")
        return sorted(set(names), key=lambda n: (self._number(n) or 0, n))

    def pin(self, name: str) -> None:
        """Keep generation ``name`` whatever the retention policies say, until
        [`unpin`][atomicwrite.CheckpointStore.unpin]; recorded under the root, so it holds
        across restarts."""
        if self._number(name) is None:
            raise UsageError(f"{name!r} is not a generation of this store (prefix {self.prefix!r})")
        if name not in self._names():
            raise TargetNotFoundError(2, f"no generation {name!r} in {self.root!r}", self._join(name))
        self._write_pins({*self.pinned(), name})

    def unpin(self, name: str) -> None:
        """Let retention decide about ``name`` again (nothing happens if it was not pinned)."""
        pins = set(self.pinned())
        if name in pins:
            self._write_pins(pins - {name})

    def _write_pins(self, names: set[str]) -> None:
        from .._api import atomic_open

        data = json.dumps({"format": PINS_FORMAT, "pinned": sorted(names)}, indent=1).encode()
        if self.local:
            with atomic_open(self._join(PINS_NAME), "wb", durability=self.durability) as file:
                file.write(data)
        else:
            url = self._strategy.url(self._fs._strip_protocol(self._join(PINS_NAME)))
            with atomic_open(url, "wb", storage_options=self.storage_options) as file:
                file.write(data)

    # --- retention ----------------------------------------------------------------------

    def prune(self, keep_last: int | None = None) -> list[str]:
        """Remove the generations no retention policy keeps (or, with ``keep_last``, all but
        the newest ``keep_last``).  Never removed: the one ``latest`` names, any newer than it,
        the one this process resumed from, pinned ones; and nothing while a save of this store
        is open.  Returns the names removed."""
        if keep_last is not None:
            policies: tuple[RetentionPolicy, ...] = (KeepLatest(keep_last),)
        elif self.policies:
            policies = self.policies
        else:
            raise UsageError(f"{self!r} has no retention policy: give keep= or keep_last=, or prune(keep_last=N)")
        with self._lock:
            if self._open_saves:
                return []  # a newer save is not published yet: nothing is superseded for sure
        names = self._names()
        named = self.pointer()
        if named is None:
            return []  # without a pointer nothing is known to be superseded
        ceiling = self._number(named)
        assert ceiling is not None
        infos = [self._info(name, number) for name, number in sorted(names.items(), key=lambda item: item[1])]
        kept: set[str] = {named, *self.pinned()}
        if self._resumed_from is not None:
            kept.add(self._resumed_from)
        for policy in policies:
            kept |= policy.select(infos)
        removed: list[str] = []
        for info in infos:
            if info.name in kept or info.step >= ceiling or not any(judges(p, info) for p in policies):
                continue
            if self._remove(info.name):
                removed.append(info.name)
        return removed

    def _info(self, name: str, number: int) -> GenerationInfo:
        try:
            generation = self._generation(name)
        except (TargetNotFoundError, AtomicWriteError):
            # Torn or damaged: no metadata, so only policies that go by step alone keep it.
            return GenerationInfo(name, number, None, {})
        return _info(generation)

    def _remove(self, name: str) -> bool:
        """Retire generation ``name``; False where it must stay for now (Windows: a reader
        holds one of its files), to be retired by a later prune."""
        if self._windows:
            return self._remove_on_windows(name)
        if self.local:
            dir_fd = os.open(self.root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            try:
                remove_tree(self.root, dir_fd, name)
            finally:
                os.close(dir_fd)
            return True
        fs = self._fs
        # The manifest first: from then on the generation is not listed, and no reader trusts
        # its files; the objects go in the background, so a slow delete never holds up a save.
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(fs._strip_protocol(f"{self.root}/{name}/{MANIFEST_NAME}"))
        with self._lock:
            if self._deleter is None:
                self._deleter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="atomicwrite-prune")
            self._deletions = [f for f in self._deletions if not f.done()]
            self._deletions.append(self._deleter.submit(remove_prefix, fs, fs._strip_protocol(f"{self.root}/{name}")))
        return True

    def _remove_on_windows(self, name: str) -> bool:
        from .._local.windows import RETRYABLE

        # Out of sight in one rename first, as remove_tree does (Windows cannot open the root
        # for a dir_fd).  Windows refuses to rename a directory while a file in it is open: the
        # generation then stays whole and listed, never half deleted under its name.
        kernel32 = self._strategy.kernel32
        source = self._join(name)
        hidden = self._join(temp_name(name, ".trash"))
        if self._strategy.retry(lambda: kernel32.move_file_ex(source, hidden, 0), RETRYABLE):
            return False
        # Best effort: what a reader still holds stays, and sweep() removes it later.
        shutil.rmtree(hidden, ignore_errors=True)
        return True

    def wait(self) -> None:
        """Wait until the background saves are published and the background deletions of
        pruned generations are done; raise the first error not reported yet."""
        self._refuse_in_worker("wait")
        self._wait_for_saves()
        self._raise_unreported()
        with self._lock:
            pending = list(self._deletions)
        for future in pending:
            future.result()

    def close(self) -> None:
        """Wait for the background saves and deletions (raising an error not reported yet),
        then release the threads that run them.  The store stays usable."""
        try:
            self.wait()
        finally:
            with self._lock:
                threads = [self._saver, self._deleter]
                self._saver = self._deleter = None
                self._saver_thread = None
            for executor in threads:
                if executor is not None:
                    executor.shutdown(wait=True)

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            self.close()
            return
        close_while_unwinding(self.close, exc, f"a background save of {self.root!r}")

    def __repr__(self) -> str:
        return f"<CheckpointStore {self.root!r}>"


def _info(generation: Generation) -> GenerationInfo:
    return GenerationInfo(generation.name, generation.number, generation.timestamp, generation.metrics)


def _plan(
    files: Mapping[str, Any], serializer: SerializerSpec | Mapping[str, SerializerSpec]
) -> list[tuple[str, Serializer, Any]]:
    """Each file of a background save: its checked name, its serializer, its object."""
    if not isinstance(files, Mapping):
        raise UsageError(f"files must map file names to objects, not {type(files).__name__}")
    per_file = serializer if isinstance(serializer, Mapping) else None
    plan: list[tuple[str, Serializer, Any]] = []
    seen: set[str] = set()
    for name, obj in files.items():
        clean = check_name(name)
        if clean in seen:
            raise UsageError(f"{name!r} names the same file as another entry of files")
        seen.add(clean)
        if per_file is None:
            spec = cast("SerializerSpec", serializer)
        elif name in per_file:
            spec = per_file[name]
        else:
            raise UsageError(f"serializer gives no serializer for {name!r} (it names {sorted(per_file)})")
        plan.append((clean, get_serializer(spec), obj))
    return plan


def _write_file(staging: StagingDirectory, name: str, chosen: Serializer, value: Any) -> None:
    if chosen.binary:
        with staging.open(name, "wb") as file:
            chosen.dump(value, file)
    else:
        with staging.open(name, "w", encoding=chosen.encoding) as file:
            chosen.dump(value, file)


# Stores with a background save's error that no call has raised yet: kept alive until then, so
# that an error is printed at exit even when its store was dropped.
_uncollected: set[CheckpointStore] = set()
_uncollected_lock = threading.Lock()


@atexit.register
def _report_uncollected() -> None:
    # The stores' worker threads were joined before atexit handlers run (as the interpreter
    # does for every executor), so every error a save will have is recorded by now.  A handler
    # cannot change the exit status, so the error goes to stderr.
    with _uncollected_lock:
        stores = list(_uncollected)
    for store in stores:
        with store._lock:
            error, store._unreported = store._unreported, None
        if error is not None:
            print(
                f"atomicwrite: a background save of {store.root!r} failed and its error was never"
                " collected (call CheckpointStore.wait() or close() to raise it):",
                file=sys.stderr,
            )
            traceback.print_exception(error, file=sys.stderr)
