"""The public API of single-file writes: atomic_open, atomic_save, atomic_update."""

from __future__ import annotations

import codecs
import functools
import io
import itertools
import os
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import IO, Any, Literal, Protocol, overload

from ._callbacks import check_on_commit, notify
from ._checksums import AUTO, ChecksumChoice, check_choice
from ._errors import AtomicWriteError, DurabilityError, UsageError
from ._result import CommitResult, Durability
from ._serializers import Serializer, get_serializer
from ._strategy import PendingWrite, ProgressCallback, Strategy, TargetLock, WriteOptions, resolve_target

__all__ = ["AtomicBinaryFile", "AtomicTextFile", "atomic_open", "atomic_save", "atomic_update"]

Target = str | os.PathLike[str]
BinaryMode = Literal["wb", "xb", "bw", "bx"]
#: Called with the `CommitResult` once a write has committed (see ``on_commit`` of `atomic_open`).
CommitCallback = Callable[[CommitResult], object]
TextMode = Literal["w", "x", "wt", "xt", "tw", "tx"]

# Writes smaller than this are gathered before they reach the temp file; larger ones go straight
# through.  256 KiB keeps the syscall count low for chatty writers (pickle, json) at little
# memory, and stays below the 1 MiB chunks streaming writers use: a write that fits the buffer
# is copied into it first, which cost 3% of a 1 GiB stream's throughput at 1 MiB.
_BUFFER_SIZE = 1 << 18
_DURABILITY = ("none", "file", "full")


class _Batch(Protocol):
    """What an [`atomic_batch`][atomicwrite.atomic_batch] is to a file it publishes: told when
    the file is complete, or when it was discarded.  (A protocol, so that this module does not
    import the batch module, which is built on it.)"""

    def _stage(self, file: AtomicBinaryFile) -> None: ...

    def _settle(self, pending: PendingWrite) -> None: ...


class AtomicBinaryFile(io.BufferedWriter):
    """A binary file whose content replaces the target only when it is committed.

    Leaving a ``with`` block normally commits; leaving it by an exception (KeyboardInterrupt
    included) discards.  Without ``with``, call `commit` or `discard`.  Closing a file
    that was not committed discards it, like closing a database transaction without a commit, so
    a file abandoned to the garbage collector never publishes a partial write.
    """

    def __init__(
        self,
        pending: PendingWrite,
        lock: TargetLock | None,
        *,
        opened: float | None = None,
        on_commit: CommitCallback | None = None,
    ) -> None:
        super().__init__(pending.stream, _BUFFER_SIZE)
        self._pending = pending
        self._lock = lock
        # perf_counter() when the write was opened: a result's ``seconds`` run from there.
        self._opened = time.perf_counter() if opened is None else opened
        self._on_commit = on_commit
        self._result: CommitResult | None = None
        self._finished = False
        # Set while the file belongs to an atomic_batch, which publishes it.
        self._batch: _Batch | None = None
        self._staged = False

    @property
    def result(self) -> CommitResult | None:
        """What the commit achieved; None until it succeeded."""
        return self._result

    def commit(self) -> CommitResult:
        """Publish the content written so far, atomically; the file is closed afterwards."""
        if self._result is not None:
            return self._result
        if self._finished:
            raise AtomicWriteError("this write was discarded; it cannot be committed")
        if self._batch is not None:
            raise UsageError(
                "this file belongs to an atomic_batch, which publishes it when the batch ends;"
                " leave the file's with block (or just the batch's) instead of calling commit()"
            )
        try:
            self.flush()
        except BaseException:
            self.discard()
            raise
        self._finished = True
        try:
            self._result = self._timed(self._pending.commit())
        except DurabilityError as exc:
            exc.result = self._result = self._timed(exc.result)
            raise
        finally:
            if self._lock is not None:
                self._release()
        notify(self._on_commit, self._result)
        return self._result

    def _timed(self, result: CommitResult) -> CommitResult:
        return result._timed(time.perf_counter() - self._opened)

    def _stage(self) -> None:
        """In a batch: hand what was written to the batch, which flushes it to storage."""
        if self._staged or self._finished:
            return
        try:
            self.flush()
        except BaseException:
            self.discard()
            raise
        self._staged = True
        if self._batch is not None:
            self._batch._stage(self)

    def _published(self, result: CommitResult) -> CommitResult:
        """In a batch: the batch published this write (or found it could not flush enough).

        Returns the result with its timings; the batch tells ``on_commit`` once every file of
        it is published (see `atomicwrite._callbacks.notify`)."""
        self._finished = True
        self._result = self._timed(result)
        self._release()
        return self._result

    def discard(self) -> None:
        """Drop everything written; the target stays as it was.  Does nothing after a commit."""
        if self._finished:
            return
        if self._batch is not None:
            self._batch._settle(self._pending)
        self._finished = True
        try:
            self._pending.discard()
        finally:
            self._release()

    def close(self) -> None:
        """Discard unless committed (see the class documentation)."""
        self.discard()

    def _release(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            _discard_after(self, exc)
        elif not self._finished:
            if self._batch is None:
                self.commit()
            else:
                self._stage()

    @property
    def discarded(self) -> bool:
        """Whether the write was dropped (explicitly, by an error, or by closing it)."""
        return self._finished and self._result is None

    def __repr__(self) -> str:
        state = "committed" if self._result else "discarded" if self._finished else "staged" if self._staged else "open"
        return f"<{type(self).__name__} {state}>"


def _discard_after(file: AtomicBinaryFile | AtomicTextFile, error: BaseException | None) -> None:
    """Discard because ``error`` left the with block; a failing cleanup must not replace it."""
    if error is None:
        file.discard()
        return
    try:
        file.discard()
    except Exception as cleanup_error:
        # Whatever the discard left behind is recognisable, and sweep() removes it; the error
        # that stopped the write is the one the caller needs to see.
        _note_cleanup_failure(error, cleanup_error, "the write")


def _note_cleanup_failure(error: BaseException, cleanup_error: Exception, what: str) -> None:
    """Tell, on ``error``, that discarding ``what`` after it failed too (Python 3.11+ notes)."""
    add_note = getattr(error, "add_note", None)
    if add_note is not None:
        add_note(f"atomicwrite: discarding {what} also failed ({cleanup_error!r}); sweep() cleans up")


class AtomicTextFile(io.TextIOWrapper):
    """The text-mode counterpart of [`AtomicBinaryFile`][atomicwrite.AtomicBinaryFile], with the same commit rules."""

    def __init__(self, binary: AtomicBinaryFile, encoding: str | None, errors: str | None, newline: str | None) -> None:
        super().__init__(binary, encoding=encoding, errors=errors, newline=newline)
        self._binary = binary
        if not binary.seekable():
            # TextIOWrapper writes a byte-order mark (utf-16, utf-32, utf-8-sig) only to streams
            # it can see are at their start, i.e. seekable ones; an upload is not, yet it always
            # starts a new object, so the mark is written here.
            binary.write(_missing_byte_order_mark(self.encoding, errors))

    @property
    def result(self) -> CommitResult | None:
        """What the commit achieved; None until it succeeded."""
        return self._binary.result

    def commit(self) -> CommitResult:
        """Publish the text written so far, atomically; the file is closed afterwards."""
        if self._binary.result is None and not self._binary.closed:
            try:
                self.flush()
            except BaseException:
                self._binary.discard()
                raise
        return self._binary.commit()

    def discard(self) -> None:
        """Drop everything written; the target stays as it was.  Does nothing after a commit."""
        self._binary.discard()

    def close(self) -> None:
        """Discard unless committed (see [`AtomicBinaryFile`][atomicwrite.AtomicBinaryFile])."""
        self._binary.discard()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None and not self._binary.discarded:
            if self._binary._batch is None:
                self.commit()
            else:
                self._stage()
        else:
            _discard_after(self, exc)

    def _stage(self) -> None:
        binary = self._binary
        if not binary._staged and not binary.closed:
            try:
                self.flush()
            except BaseException:
                binary.discard()
                raise
        binary._stage()

    @property
    def discarded(self) -> bool:
        """Whether the write was dropped (explicitly, by an error, or by closing it)."""
        return self._binary.discarded

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._binary!r}>"


class _Sink(io.RawIOBase):
    """A non-seekable stream that keeps what is written to it."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.data += data
        return len(data)


@functools.lru_cache(maxsize=32)
def _missing_byte_order_mark(encoding: str, errors: str | None) -> bytes:
    """The byte-order mark TextIOWrapper leaves out on a non-seekable stream (b"" for most)."""
    sink = _Sink()
    probe = io.TextIOWrapper(io.BufferedWriter(sink), encoding=encoding, errors=errors)
    probe.write("a")
    probe.flush()
    expected = codecs.lookup(encoding).incrementalencoder(errors or "strict").encode("a")
    return expected[: len(expected) - len(sink.data)]


# Every mode atomic_open accepts, in any letter order: (exclusive, binary).
_MODES = {
    "".join(letters): (create == "x", kind == "b")
    for create in "wx"
    for kind in ("b", "t", "")
    for letters in itertools.permutations(create + kind)
}


def _parse_mode(mode: str) -> tuple[bool, bool]:
    """``(exclusive, binary)`` for a mode string, or UsageError."""
    parsed = _MODES.get(mode) if isinstance(mode, str) else None
    if parsed is None:
        raise UsageError(
            f"atomic_open writes whole files: mode must be 'w', 'wb', 'x' or 'xb' (optionally with"
            f" 't'), not {mode!r}; appending and reading are not atomic replacements"
        )
    return parsed


def _options(
    *,
    exclusive: bool,
    durability: str,
    accept_weaker_durability: bool,
    preserve_permissions: bool,
    permissions: int | None,
    follow_symlinks: bool,
    if_match: object | None,
    storage_options: Mapping[str, Any] | None,
    progress: ProgressCallback | None = None,
    checksum: ChecksumChoice | None = AUTO,
) -> WriteOptions:
    plain = if_match is None and storage_options is None and progress is None
    if plain:
        # Most writes pass a handful of flags and nothing else: their options are built (and
        # checked) once.  WriteOptions is immutable, so every such write can share them.
        key = (
            exclusive,
            durability,
            accept_weaker_durability,
            preserve_permissions,
            permissions,
            follow_symlinks,
            checksum,
        )
        try:
            cached = _PLAIN_OPTIONS.get(key)
        except TypeError:  # an unhashable argument: the checks below name it
            cached = None
        if cached is not None:
            return cached
    if durability not in _DURABILITY:
        raise UsageError(f"durability must be one of {', '.join(map(repr, _DURABILITY))}, not {durability!r}")
    if permissions is not None and (not isinstance(permissions, int) or not 0 <= permissions <= 0o7777):
        raise UsageError(f"permissions must be a mode between 0 and 0o7777, not {permissions!r}")
    if exclusive and if_match is not None:
        raise UsageError("if_match replaces a known version; it cannot be combined with exclusive creation")
    level: Durability = durability  # type: ignore[assignment]  # checked just above
    options = WriteOptions(
        checksum=check_choice(checksum),
        exclusive=exclusive,
        durability=level,
        accept_weaker_durability=accept_weaker_durability,
        preserve_permissions=preserve_permissions,
        permissions=permissions,
        follow_symlinks=follow_symlinks,
        if_match=if_match,
        storage_options=dict(storage_options or {}),
        progress=progress,
    )
    if plain and len(_PLAIN_OPTIONS) < 64:
        _PLAIN_OPTIONS[key] = options
    return options


# Options without storage_options, if_match or progress, by their flags; see _options.
_PLAIN_OPTIONS: dict[tuple[object, ...], WriteOptions] = {}


def _open(
    strategy: Strategy,
    location: str,
    options: WriteOptions,
    *,
    binary: bool,
    lock: bool,
    encoding: str | None,
    errors: str | None,
    newline: str | None,
    on_commit: CommitCallback | None = None,
) -> AtomicBinaryFile | AtomicTextFile:
    opened = time.perf_counter()
    check_on_commit(on_commit)
    if binary and (encoding is not None or errors is not None or newline is not None):
        raise UsageError("encoding, errors and newline are for text modes, not binary ones")
    if not binary:
        if encoding is not None:
            codecs.lookup(encoding)  # an unknown encoding fails here, before anything is created
        if newline not in (None, "", "\n", "\r", "\r\n"):
            raise UsageError(f"illegal newline value: {newline!r}")
    held = strategy.lock(location, options) if lock else None
    try:
        pending = strategy.begin(location, options)
    except BaseException:
        if held is not None:
            held.release()
        raise
    file = AtomicBinaryFile(pending, held, opened=opened, on_commit=on_commit)
    if binary:
        return file
    return AtomicTextFile(file, encoding, errors, newline)


@overload
def atomic_open(
    target: Target,
    mode: BinaryMode = ...,
    *,
    durability: Durability = ...,
    accept_weaker_durability: bool = ...,
    preserve_permissions: bool = ...,
    permissions: int | None = ...,
    follow_symlinks: bool = ...,
    encoding: None = ...,
    errors: None = ...,
    newline: None = ...,
    if_match: object | None = ...,
    lock: bool = ...,
    storage_options: Mapping[str, Any] | None = ...,
    progress: ProgressCallback | None = ...,
    on_commit: CommitCallback | None = ...,
    checksum: ChecksumChoice | None = ...,
) -> AtomicBinaryFile: ...


@overload
def atomic_open(
    target: Target,
    mode: TextMode,
    *,
    durability: Durability = ...,
    accept_weaker_durability: bool = ...,
    preserve_permissions: bool = ...,
    permissions: int | None = ...,
    follow_symlinks: bool = ...,
    encoding: str | None = ...,
    errors: str | None = ...,
    newline: str | None = ...,
    if_match: object | None = ...,
    lock: bool = ...,
    storage_options: Mapping[str, Any] | None = ...,
    progress: ProgressCallback | None = ...,
    on_commit: CommitCallback | None = ...,
    checksum: ChecksumChoice | None = ...,
) -> AtomicTextFile: ...


@overload
def atomic_open(
    target: Target,
    mode: str,
    *,
    durability: Durability = ...,
    accept_weaker_durability: bool = ...,
    preserve_permissions: bool = ...,
    permissions: int | None = ...,
    follow_symlinks: bool = ...,
    encoding: str | None = ...,
    errors: str | None = ...,
    newline: str | None = ...,
    if_match: object | None = ...,
    lock: bool = ...,
    storage_options: Mapping[str, Any] | None = ...,
    progress: ProgressCallback | None = ...,
    on_commit: CommitCallback | None = ...,
    checksum: ChecksumChoice | None = ...,
) -> AtomicBinaryFile | AtomicTextFile: ...


def atomic_open(
    target: Target,
    mode: str = "wb",
    *,
    durability: Durability = "full",
    accept_weaker_durability: bool = False,
    preserve_permissions: bool = True,
    permissions: int | None = None,
    follow_symlinks: bool = True,
    encoding: str | None = None,
    errors: str | None = None,
    newline: str | None = None,
    if_match: object | None = None,
    lock: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    on_commit: CommitCallback | None = None,
    checksum: ChecksumChoice | None = AUTO,
) -> AtomicBinaryFile | AtomicTextFile:
    """Open ``target`` for an all-or-nothing write.

    ```python
    with atomic_open("model.bin", "wb") as f:
        f.write(payload)
    # a reader saw the old file until here, and the complete new one from here on
    ```

    Args:
        target: a path, or a URL whose protocol has a registered strategy.
        mode: ``"wb"``/``"w"`` replace the target; ``"xb"``/``"x"`` create it only if it does not
            exist, raising [`TargetExistsError`][atomicwrite.TargetExistsError] (a ``FileExistsError``) otherwise.
        durability: ``"full"`` flushes the file and its directory, so the new content survives
            a power loss once the commit returns; ``"file"`` flushes the file only; ``"none"``
            stays atomic against process crashes, but not power loss.  On Windows, "full" renames
            with ``MOVEFILE_WRITE_THROUGH`` (or flushes the file after ``ReplaceFileW``).
        accept_weaker_durability: where the storage refuses part of the flush (a directory
            fsync on CIFS, say), report the weaker level in the result instead of raising
            [`DurabilityError`][atomicwrite.DurabilityError].
        preserve_permissions: give the new file the old one's mode (and owner, where allowed).
            A new file gets ``0o666 & ~umask``, like ``open()``.  On Windows, the old file's
            ACLs and attributes are kept through ``ReplaceFileW``.
        permissions: the new file's mode, whatever the old one had (e.g. ``0o600`` for secrets);
            it is set before any byte is published.  On Windows only the read-only attribute
            (no ``0o200`` bit) applies.
        follow_symlinks: if the target is a symlink, replace the file it points to and keep the
            link (default); if False, replace the link itself with a regular file.  An ``"x"``
            mode never follows: a symlink, even a dangling one, is an existing name.  A stranger's
            link in a sticky world-writable directory is never followed (see the guarantees).
        encoding, errors, newline: as for ``open()``, in text modes.
        if_match: commit only if the target is still at this version (the ``version`` of an
            earlier [`CommitResult`][atomicwrite.CommitResult]), else raise
            [`ConflictError`][atomicwrite.ConflictError].  Race-free among writers that also
            pass ``lock=True``.
        lock: hold an exclusive lock on the target (a lock file beside it) from open to commit,
            so cooperating writers take turns.
        storage_options: passed to the fsspec file system of an object store (credentials,
            ``endpoint_url``...), except two that tune uploads: ``part_size`` (bytes per part,
            default 8 MiB) and ``parallel_parts`` (parts in flight at once, default 4).  Peak
            memory is about ``part_size * (parallel_parts + 1)`` whatever the object's size.
        progress: told how many bytes reached the storage as they do (an fsspec ``Callback``,
            e.g. ``TqdmCallback`` for a progress bar).
        on_commit: called once with the [`CommitResult`][atomicwrite.CommitResult] after the
            commit succeeded (not after a discard or a
            [`DurabilityError`][atomicwrite.DurabilityError]), in the thread that commits.  An
            exception from it is raised as
            [`CommitCallbackError`][atomicwrite.CommitCallbackError]: the write stays committed.
        checksum: the algorithm the content is hashed with on the way out: ``"crc64nvme"``,
            ``"crc32c"``, ``"crc32"``, ``"sha256"`` or ``"md5"``.  An object store that validates
            it is sent the digest with the publishing request and refuses a corrupted upload;
            the digest is in the result's ``checksum``.  ``"auto"`` (the default) picks the
            fastest one the store validates (S3: CRC64NVME; GCS: CRC32C; see the guarantees
            page), and hashes nothing for a local file; None hashes nothing anywhere.

    Returns:
        [`AtomicBinaryFile`][atomicwrite.AtomicBinaryFile] or
        [`AtomicTextFile`][atomicwrite.AtomicTextFile]: a writable file that is also a context
        manager, with [`commit`][atomicwrite.AtomicBinaryFile.commit],
        [`discard`][atomicwrite.AtomicBinaryFile.discard] and
        [`result`][atomicwrite.AtomicBinaryFile.result].
    """
    exclusive, binary = _parse_mode(mode)
    options = _options(
        exclusive=exclusive,
        durability=durability,
        accept_weaker_durability=accept_weaker_durability,
        preserve_permissions=preserve_permissions,
        permissions=permissions,
        follow_symlinks=follow_symlinks,
        if_match=if_match,
        storage_options=storage_options,
        progress=progress,
        checksum=checksum,
    )
    strategy, location = resolve_target(target)
    return _open(
        strategy,
        location,
        options,
        binary=binary,
        lock=lock,
        encoding=encoding,
        errors=errors,
        newline=newline,
        on_commit=on_commit,
    )


def atomic_save(
    obj: Any,
    target: Target,
    serializer: str | Serializer | Callable[[Any, IO[bytes]], None] = "pickle",
    *,
    exclusive: bool = False,
    encoding: str | None = None,
    **options: Any,
) -> CommitResult:
    """Serialize ``obj`` straight into an atomic write of ``target`` and commit it.

    ``serializer`` is a name (``"bytes"``, ``"text"``, ``"json"``, ``"pickle"``, or one added by
    an installed package), a [`Serializer`][atomicwrite.Serializer], or a callable ``(obj, fileobj) -> None`` that
    writes to a binary file.  The object is streamed to the temp file, never held as a whole
    in memory.  If the serializer raises, the target is left as it was.  ``options`` are those of
    [`atomic_open`][atomicwrite.atomic_open] (``on_commit`` included).
    """
    chosen = get_serializer(serializer)
    mode = ("x" if exclusive else "w") + ("b" if chosen.binary else "")
    if not chosen.binary:
        options["encoding"] = encoding or chosen.encoding
    elif encoding is not None:
        raise UsageError(f"the {chosen.name!r} serializer writes bytes; it takes no encoding")
    with atomic_open(target, mode, **options) as file:
        chosen.dump(obj, file)
    assert file.result is not None
    return file.result


def atomic_update(
    target: Target,
    update: Callable[[Any], Any],
    serializer: str | Serializer = "bytes",
    *,
    encoding: str | None = None,
    **options: Any,
) -> CommitResult:
    """Read-modify-write ``target`` under its lock, so that concurrent updates are never lost.

    ``update`` gets the current content, loaded by ``serializer`` (None if the target does not
    exist yet), and returns the new content, which is written atomically.  Every process that
    updates the same target this way takes its turn:

    ```python
    atomic_update("counter.json", lambda n: (n or 0) + 1, serializer="json")
    ```
    """
    chosen = get_serializer(serializer)
    load = chosen.load
    if load is None:
        raise UsageError(f"the {chosen.name!r} serializer cannot read content back, so it cannot update")
    if "lock" in options or "if_match" in options:
        raise UsageError("atomic_update always locks the target; lock and if_match are not options here")
    strategy, location = resolve_target(target)
    binary = chosen.binary
    text_encoding = None if binary else (encoding or chosen.encoding)
    write_options = _options(
        exclusive=False,
        durability=options.pop("durability", "full"),
        accept_weaker_durability=options.pop("accept_weaker_durability", False),
        preserve_permissions=options.pop("preserve_permissions", True),
        permissions=options.pop("permissions", None),
        follow_symlinks=options.pop("follow_symlinks", True),
        if_match=None,
        storage_options=options.pop("storage_options", None),
        checksum=options.pop("checksum", AUTO),
    )
    if options:
        raise UsageError(f"unexpected options for atomic_update: {', '.join(sorted(options))}")
    held = strategy.lock(location, write_options)
    try:
        raw = strategy.read(location, write_options)
        if raw is None:
            old = None
        elif binary:
            old = load(io.BytesIO(raw))
        else:
            old = load(io.StringIO(raw.decode(text_encoding or "utf-8")))
        new = update(old)
        file = _open(
            strategy,
            location,
            write_options,
            binary=binary,
            lock=False,
            encoding=text_encoding,
            errors=None,
            newline=None,
        )
        with file:
            chosen.dump(new, file)
        assert file.result is not None
        return file.result
    finally:
        held.release()
