"""What every object-store strategy shares: parts uploaded while the caller writes, one commit.

Object stores have no rename, but each has a call that makes a whole object appear at once:
S3's ``PutObject`` and ``CompleteMultipartUpload``, the final chunk of a GCS resumable session,
Azure's ``Put Block List``.  Nothing is visible under the target before that call, so the
protocol is: stream the bytes out as parts (in parallel where the store allows) while the
caller keeps writing, then make the one publishing call at commit, with the store's own
precondition for exclusive creation or compare-and-swap.  Small writes skip the parts and use
one conditional PUT.  A failure, or a discard, aborts the upload: the old object stays.

Peak memory is bounded by ``part_size * (parallel_parts + 1)``, whatever the object's size.

A write that uses parts leaves a *marker* object beside the target, named like a local temp
file (``.{name}.aw{host}.{pid}.{random}.tmp``) and holding the upload's id, until it commits or
aborts.  A writer killed mid-upload leaves its marker, and [`sweep`][atomicwrite.sweep] aborts
exactly the uploads its markers name: never an upload this library did not start.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NoReturn

from .._checksums import AUTO, FASTEST_CRCS, Digest, first_available, new_digest
from .._errors import AtomicWriteError, ConflictError, TargetExistsError, UnsupportedTargetError, UsageError, os_error
from .._names import FRESH_TEMP_GRACE, host_tag, parse_temp_name, temp_name, writer_alive
from .._result import CommitResult, Durability
from .._strategy import PendingWrite, Strategy, TargetLock, WriteOptions

__all__ = ["ObjectStoreBackend", "ObjectStorePendingWrite", "ObjectStoreStrategy", "PreconditionFailed"]

MiB = 1 << 20


class PreconditionFailed(Exception):
    """Raised by a backend when the store refused a conditional request (HTTP 412)."""


class ObjectStoreBackend(ABC):
    """One store's primitives for one write to one object.

    The pending write calls, in order: either `put` once; or `start`, then
    `upload_part` for each part (from worker threads, up to ``parallel_parts`` at once,
    or strictly in order when it is 1), then `complete` with the tail that is left; and
    `abort` on any failure after `start`.
    """

    #: Each part but the last has exactly this many bytes.
    part_size: int = 8 * MiB
    #: Parts in flight at once (1 for stores that need them in order, like GCS).
    parallel_parts: int = 4
    #: What a committed write survives: the real stores acknowledge only durable writes.
    durability: Durability = "full"
    #: Whether :meth:`start` has the store create the upload and name it (S3).  A writer killed
    #: between that request and storing its marker would leave an upload nothing names, so such
    #: a write stores its marker first (with :meth:`known_uploads`), then again with the id.
    creates_upload: bool = False
    #: Whether an upload outlives a writer killed mid-upload, as it does in a real store: such a
    #: write leaves a marker for sweep().  memory://'s parts die with their process.
    outlives_writer: bool = True
    #: The checksums ``checksum="auto"`` chooses from, fastest first: the first one installed.
    #: Stores that validate a whole-object checksum list those; the others, the cheapest CRCs.
    default_checksums: tuple[str, ...] = FASTEST_CRCS
    #: The algorithm this write hashes with (set by the pending write before any request), or None.
    checksum: str | None = None
    #: Set by a backend whose server refused the checksum with the request: it was sent again
    #: without, and the store validated nothing.
    checksum_refused: bool = False

    def known_uploads(self) -> list[str]:
        """The ids of the uploads already pending for the object, before :meth:`start`."""
        return []

    def _conditions(self, exclusive: bool, if_match: object | None) -> dict[str, Any]:
        """The arguments that carry the write's precondition on a publishing request: the store
        checks it there, atomically, where a look beforehand would race."""
        if exclusive:
            return self._precondition(None)
        if if_match is not None:
            return self._precondition(str(if_match))
        return {}

    def _precondition(self, version: str | None) -> dict[str, Any]:
        """The store's request arguments for "only if the object is at ``version``" or, for None,
        "only if there is no object"."""
        raise NotImplementedError(f"{type(self).__name__} sends no conditional requests")

    def _refused(self, exc: BaseException, if_match: object | None) -> bool:
        """Whether ``exc``, from a request sent with ``if_match``, is the store refusing the
        request's precondition.  ``if_match`` matters where the store answers an If-Match on an
        object that is gone with "not found" rather than 412."""
        return False

    @contextlib.contextmanager
    def _refusals(self, if_match: object | None = None) -> Iterator[None]:
        """Raise the store's refusal of a precondition as PreconditionFailed: each client library
        reports one its own way, and the pending write turns it into the caller's error."""
        try:
            yield
        except Exception as exc:
            if self._refused(exc, if_match):
                raise PreconditionFailed(str(exc)) from exc
            raise

    @abstractmethod
    def put(self, data: bytes, *, exclusive: bool, if_match: object | None, digest: bytes | None) -> object:
        """Create or replace the object in one request; return its version token.  ``digest`` is
        ``data``'s checksum (of algorithm `checksum`), for the store to validate."""

    @abstractmethod
    def start(self, *, exclusive: bool, if_match: object | None) -> str:
        """Begin a multi-part upload; return its id (recorded in the marker for sweeping)."""

    @abstractmethod
    def upload_part(self, number: int, data: bytes) -> None:
        """Upload part ``number`` (1-based); nothing becomes visible."""

    @abstractmethod
    def complete(self, tail: bytes, *, exclusive: bool, if_match: object | None, digest: bytes | None) -> object:
        """Upload the ``tail`` (possibly empty) and publish the object; return its version.
        ``digest`` is the whole object's checksum (of algorithm `checksum`)."""

    @abstractmethod
    def abort(self) -> None:
        """Drop the upload and every part of it.  Must be safe to call after a failed start."""


class _PartStream(io.RawIOBase):
    """Cuts the written bytes into parts and hands full ones to the pending write."""

    def __init__(self, owner: ObjectStorePendingWrite) -> None:
        self._owner = owner

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return self._owner.accept(data)


class ObjectStorePendingWrite(PendingWrite):
    """A write in flight to an object store."""

    def __init__(
        self,
        *,
        location: str,
        backend: ObjectStoreBackend,
        options: WriteOptions,
        strategy: ObjectStoreStrategy,
        marker: str,
    ) -> None:
        self._location = location
        self._backend = backend
        self._options = options
        self._strategy = strategy
        self._marker = marker
        self._marker_written = False
        self._stream = _PartStream(self)
        self._part = io.BytesIO()
        self._digest = _choose_digest(backend, options.checksum)
        self._size = 0
        self._parts_sent = 0
        self._started = False
        self._inflight: deque[Future[None]] = deque()
        self._pool: ThreadPoolExecutor | None = None
        self._done = False
        self._lock = threading.Lock()

    @property
    def stream(self) -> io.RawIOBase:
        return self._stream

    # --- writing ------------------------------------------------------------------------

    def accept(self, data: Any) -> int:
        """Take bytes from the caller; ship every full part."""
        if self._done:
            raise ValueError("write to a committed or discarded file")
        view = memoryview(data).cast("B")
        if self._digest is not None:
            self._digest.update(view)
        self._size += len(view)
        part_size = self._backend.part_size
        offset = 0
        while offset < len(view):
            room = part_size - self._part.tell()
            self._part.write(view[offset : offset + room])
            offset += room
            if self._part.tell() >= part_size:
                # Handed over, not copied: getvalue() gives the part's own buffer.  A new one
                # takes the next bytes before waiting for a slot, so no more than
                # parallel_parts + 1 parts are ever held.
                part = self._part.getvalue()
                self._part = io.BytesIO()
                try:
                    self._ship(part)
                except BaseException as exc:
                    self._fail(exc)
        return len(view)

    def _ship(self, part: bytes) -> None:
        if not self._started:
            self._start()
        self._parts_sent += 1
        assert self._pool is not None
        # Wait for the oldest part first, so at most parallel_parts are in flight (and in RAM).
        while len(self._inflight) >= self._backend.parallel_parts:
            # Left in the queue while waiting: if the wait is interrupted, discard() must still
            # see this part and wait for it before aborting the upload.
            self._inflight[0].result()
            self._inflight.popleft()
        self._inflight.append(self._pool.submit(self._upload_part, self._parts_sent, part))

    def _upload_part(self, number: int, part: bytes) -> None:
        self._backend.upload_part(number, part)
        if self._options.progress is not None:
            self._options.progress.relative_update(len(part))

    def _start(self) -> None:
        options = self._options
        marked = self._backend.outlives_writer
        if marked and self._backend.creates_upload:
            # Killed after the store created the upload but before the marker below named it,
            # this writer still leaves this marker: sweep() finds the upload by elimination.
            known = self._backend.known_uploads()
            self._strategy.write_marker(self._marker, self._location, None, options, known_uploads=known)
            self._marker_written = True
        upload_id = self._backend.start(exclusive=options.exclusive, if_match=options.if_match)
        self._started = True
        if marked:
            self._strategy.write_marker(self._marker, self._location, upload_id, options)
            self._marker_written = True
        self._pool = ThreadPoolExecutor(self._backend.parallel_parts, thread_name_prefix="atomicwrite-part")

    # --- commit and discard -------------------------------------------------------------

    def commit(self) -> CommitResult:
        if self._done:
            raise AtomicWriteError(f"write to {self._location!r} was already committed or discarded")
        options = self._options
        digest = None if self._digest is None else self._digest.digest()
        try:
            if not self._started:
                version = self._backend.put(
                    self._part.getvalue(), exclusive=options.exclusive, if_match=options.if_match, digest=digest
                )
            else:
                while self._inflight:
                    self._inflight[0].result()
                    self._inflight.popleft()
                version = self._backend.complete(
                    self._part.getvalue(), exclusive=options.exclusive, if_match=options.if_match, digest=digest
                )
        except BaseException as exc:
            self._fail(exc)
        # Published: from here on nothing may fail the commit or undo the cleanup.  A digest the
        # store was asked to check and refused is not reported as checked.
        checksum = None
        if digest is not None and not self._backend.checksum_refused:
            checksum = f"{self._backend.checksum}:{digest.hex()}"
        tail = self._part.tell()
        self._done = True
        self._cleanup()
        if options.progress is not None and tail:
            with contextlib.suppress(Exception):
                options.progress.relative_update(tail)
        return CommitResult(
            target=self._location,
            strategy=self._strategy.name,
            # What the store gives, whatever was asked: never less than asked for the real stores,
            # and "none" for memory://, which does not outlive its process by design.
            durability=self._backend.durability,
            bytes_written=self._size,
            version=version,
            checksum=checksum,
        )

    def _fail(self, exc: BaseException) -> NoReturn:
        """Discard after ``exc``, then raise it, typed; a failing cleanup never hides it."""
        with contextlib.suppress(Exception):
            self.discard()
        translated = self._translate(exc)
        if translated is exc:
            raise exc
        raise translated from exc

    def _translate(self, exc: BaseException) -> BaseException:
        if isinstance(exc, PreconditionFailed):
            if self._options.exclusive:
                return TargetExistsError.at(self._location)
            return ConflictError(
                f"{self._location!r} is no longer at version {self._options.if_match!r}; it was left as it is",
                expected=self._options.if_match,
                actual=None,
            )
        if isinstance(exc, OSError) and not isinstance(exc, AtomicWriteError):
            return os_error(exc, self._location, "uploading")
        return exc

    def discard(self) -> None:
        if self._done:
            return
        self._done = True
        for future in self._inflight:
            future.cancel()
        aborted = not self._started
        try:
            for future in self._inflight:
                if not future.cancelled():
                    with contextlib.suppress(Exception):  # the upload is being aborted anyway
                        future.result()
            self._inflight.clear()
            if self._started:
                self._backend.abort()
                aborted = True
        finally:
            if not aborted:
                # The upload may still exist: keep its marker, so that sweep() can abort it.
                self._marker_written = False
            self._cleanup()

    def _cleanup(self) -> None:
        self._part = io.BytesIO()
        # Closed, so that a write after the commit or discard fails instead of vanishing.
        self._stream.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
        if self._marker_written:
            self._marker_written = False
            self._strategy.remove_marker(self._marker, self._options)


def _choose_digest(backend: ObjectStoreBackend, choice: str | None) -> Digest | None:
    """The running checksum of one write, its algorithm also set on ``backend``."""
    if choice is None:
        return None
    name = first_available(backend.default_checksums) if choice == AUTO else choice
    backend.checksum = name
    return new_digest(name)


def b64(digest: bytes) -> str:
    """A digest as the stores' checksum headers carry it."""
    return base64.b64encode(digest).decode("ascii")


class ObjectStoreStrategy(Strategy):
    """Base of the object-store strategies: markers, sweeping, reading, and refusing locks."""

    #: The URL scheme the strategy's file system is registered under in fsspec.
    protocol: str = ""
    #: storage_options keys that tune the upload rather than configure the file system.
    UPLOAD_OPTIONS = ("part_size", "parallel_parts")
    #: What the store calls the level above objects, which holds them but is not one.
    bucket_noun = "bucket"

    def filesystem(self, options: WriteOptions) -> Any:
        """The fsspec file system for ``options.storage_options`` (fsspec caches instances)."""
        import fsspec

        storage = {k: v for k, v in options.storage_options.items() if k not in self.UPLOAD_OPTIONS}
        return fsspec.filesystem(self.protocol, **storage)

    def url(self, path: str) -> str:
        return f"{self.protocol}://{path}"

    def split_object(self, fs: Any, location: str) -> tuple[str, str, Any]:
        """The bucket, key and version (None unless ``location`` names one) of the object at
        ``location``, which must not be a bucket."""
        bucket, key, version = fs.split_path(location)
        if not bucket or not key:
            raise UnsupportedTargetError(f"{location!r} names a {self.bucket_noun}, not an object")
        return bucket, key, version

    def upload_tuning(self, options: WriteOptions) -> tuple[int, int]:
        """The part size and parallelism that storage_options ask for (see ``UPLOAD_OPTIONS``),
        else the defaults; each backend clamps them to its store's limits."""
        storage = options.storage_options
        return (
            int(storage.get("part_size", ObjectStoreBackend.part_size)),
            int(storage.get("parallel_parts", ObjectStoreBackend.parallel_parts)),
        )

    @abstractmethod
    def backend(self, location: str, options: WriteOptions) -> ObjectStoreBackend:
        """A backend for one write to ``location``."""

    @abstractmethod
    def abort_upload(self, record: dict[str, Any], options: WriteOptions) -> None:
        """Abort the upload a marker names (no error if it is already gone)."""

    def abort_unnamed_upload(
        self, record: dict[str, Any], options: WriteOptions, may_be_live: Callable[[str, dict[str, Any]], bool]
    ) -> bool:
        """Abort the upload of a writer killed before its marker named it (``record`` has no
        ``upload_id``); False to keep the marker for a later sweep.  ``may_be_live(path, info)``
        tells whether the writer of another marker may still be running.

        Only stores whose backends have ``creates_upload`` write such markers."""
        return True

    def begin(self, location: str, options: WriteOptions) -> ObjectStorePendingWrite:
        backend = self.backend(location, options)
        directory, _, name = location.rpartition("/")
        if not name or not directory:
            raise UsageError(f"{location!r} names a bucket or a directory, not an object")
        marker = f"{directory}/{temp_name(name)}"
        return ObjectStorePendingWrite(
            location=location, backend=backend, options=options, strategy=self, marker=marker
        )

    def read(self, location: str, options: WriteOptions) -> bytes | None:
        try:
            data: bytes = self.filesystem(options).cat_file(location)
        except FileNotFoundError:
            return None
        return data

    def version(self, path: str, options: WriteOptions) -> object | None:
        """The version token of the object at ``path`` (as the file system names it), the value a
        compare-and-swap passes as ``if_match=``; None if there is no such object.

        Stores that cannot read one refuse to replace (a directory's manifest, a pointer): only
        creating is possible there."""
        if not self.filesystem(options).exists(path):
            return None
        raise UnsupportedTargetError(
            f"replacing {self.url(path)!r} (a published directory's manifest, or a checkpoint pointer) needs"
            f" its version, which is not read on {self.name}:// yet: only creating one works there"
        )

    def lock(self, location: str, options: WriteOptions) -> TargetLock:
        raise UnsupportedTargetError(
            f"{location!r}: object stores have no locks; use if_match= (compare-and-swap) to detect"
            " concurrent writers instead"
        )

    # --- markers ------------------------------------------------------------------------

    def write_marker(
        self,
        marker: str,
        location: str,
        upload_id: str | None,
        options: WriteOptions,
        *,
        known_uploads: list[str] | None = None,
    ) -> None:
        """Store the marker that lets sweep() abort this upload if the writer dies."""
        self.filesystem(options).pipe_file(marker, marker_record(location, upload_id, known_uploads=known_uploads))

    def remove_marker(self, marker: str, options: WriteOptions) -> None:
        """Delete a marker once its upload completed or was aborted."""
        with contextlib.suppress(FileNotFoundError):
            self.filesystem(options).rm_file(marker)

    def sweep(self, location: str, older_than: float, dry_run: bool, options: WriteOptions) -> list[str]:
        fs = self.filesystem(options)
        try:
            entries: dict[str, dict[str, Any]] = fs.find(location, detail=True)
        except FileNotFoundError:
            return []
        now = time.time()

        def may_be_live(path: str, info: dict[str, Any]) -> bool:
            """Whether the writer of the marker at ``path`` may still be running."""
            parsed = parse_temp_name(path.rpartition("/")[2])
            if parsed is None:
                return False
            host, pid = parsed
            alive = writer_alive(host, pid)
            if alive is not None:
                # A writer on this host is alive exactly while its pid is (a reused pid only
                # delays the sweep).
                return alive
            # Another host's writer, or a pid that cannot be checked here: only age can tell.
            return not now - _modified(info) >= max(older_than, FRESH_TEMP_GRACE)

        removed: list[str] = []
        for path, info in sorted(entries.items()):
            if parse_temp_name(path.rpartition("/")[2]) is None or may_be_live(path, info):
                continue
            try:
                record: dict[str, Any] = json.loads(fs.cat_file(path))
            except (FileNotFoundError, ValueError):
                continue
            target = fs._strip_protocol(str(record.get("target", "")))
            if target.rpartition("/")[0] != path.rpartition("/")[0]:
                continue  # not a marker this library wrote: ours sit beside their target
            if not dry_run:
                if record.get("upload_id") is None:
                    if not self.abort_unnamed_upload(record, options, may_be_live):
                        continue
                else:
                    self.abort_upload(record, options)
                self.remove_marker(path, options)
            removed.append(self.url(path))
        return removed


def _modified(info: dict[str, Any]) -> float:
    """An fsspec listing entry's modification time as a timestamp (0 if unknown)."""
    for key in ("LastModified", "updated", "mtime", "last_modified", "created"):
        value: Any = info.get(key)
        if isinstance(value, (int, float)):
            return float(value)
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
        if isinstance(value, str):
            from datetime import datetime

            with contextlib.suppress(ValueError):
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return 0.0


def marker_record(location: str, upload_id: str | None, *, known_uploads: list[str] | None = None) -> bytes:
    """The content of a marker object: ``upload_id`` is None until the store has named the
    upload, and then ``known_uploads`` lists the uploads that were pending before it."""
    record: dict[str, Any] = {
        "target": location,
        "upload_id": upload_id,
        "host": host_tag(),
        "pid": os.getpid(),
        "started": time.time(),
    }
    if known_uploads is not None:
        record["known_uploads"] = known_uploads
    return json.dumps(record).encode()
