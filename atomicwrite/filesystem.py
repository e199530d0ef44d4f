"""The ``atomic::`` fsspec protocol: every file written through it is an `atomic_open` write.

Prefix any fsspec URL with ``atomic::`` and whatever writes through fsspec (pandas, pyarrow,
zarr, Lightning, DCP's ``FsspecWriter``) writes all-or-nothing, without a code change:

```python
import fsspec

with fsspec.open("atomic::memory://reports/daily.csv", "w") as f:
    f.write("day,total\\n")
with fsspec.open("memory://reports/daily.csv") as f:
    assert f.read() == b"day,total\\n"
```

fsspec finds the protocol through the package's ``fsspec.specs`` entry point: nothing has to be
imported first.  Options of the inner file system are passed the fsspec way (``s3={...}``, or
``storage_options={"s3": {...}}`` in pandas); this layer's own options under ``atomic={...}``:
``durability`` (``"full"``, ``"file"`` or ``"none"``, as for `atomic_open`),
``accept_weaker_durability``, and for object stores ``part_size`` and ``parallel_parts``.

**Writes.**  A file opened for writing (``"wb"``, ``"w"``, ``"xb"``, ``"x"``) is an
[`atomic_open`][atomicwrite.atomic_open] of the inner URL.  Closing it publishes it, unless an
exception is propagating at that moment (a serializer failed inside a ``with`` block, or inside
a library's ``try``/``finally``): then, and when the file is garbage-collected without being
closed, the write is discarded and the old file stays as it was.  ``pipe_file``, ``put_file``,
``cp_file``, ``touch``, mapper writes (``fs.get_mapper``) and zarr's fsspec store go through
the same path.  Appending (``"ab"``) and updating in place (``"r+b"``) are
refused with [`UsageError`][atomicwrite.UsageError]: neither is a whole replacement.

**Renames.**  ``mv`` (and ``rename``) publish the destination as an ``atomic_open`` write of the
source's bytes, then remove the source: the destination holds its old content or the whole
source, never part of it, and it is flushed with the write's durability.  A crash between the two
steps leaves both names holding the complete content.

**Transactions.**  Inside ``with fs.transaction:`` (Lightning's ``ModelCheckpoint`` saves each
checkpoint in one), closing a file (or a ``pipe_file``) completes its upload or temp file but
publishes nothing; the end of the block publishes every file, or, if the block raised, discards
every file.  (``cp`` and ``mv`` publish at once: ``mv`` removes its source right after.)  A crash
before the end publishes nothing; a crash while the files are being published leaves each file
either old or new, never torn.  A transaction is therefore all-or-nothing across its files
against errors, and per file against a crash during its last step.

**Per-file, not whole-directory.**  None of the writers that produce many files (pyarrow
datasets, zarr, DCP's ``FsspecWriter``) tells its file system where a directory's write begins
and ends, so each file is atomic on its own: after a crash, a reader sees every file either old or complete, but a
directory may mix files of the old and new version, or miss the files not yet written.  For one
commit over a whole directory, write it inside [`atomic_directory`][atomicwrite.atomic_directory].

**Everything else passes through.**  Reads, listings, ``info``, ``exists``, ``rm`` and
``makedirs`` are the inner file system's, on the same paths.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

import fsspec
from fsspec.implementations.chained import ChainedFileSystem
from fsspec.utils import stringify_path

from ._api import AtomicBinaryFile, atomic_open
from ._errors import UsageError
from ._result import CommitResult, Durability
from ._strategy import split_protocol

__all__ = ["AtomicFile", "AtomicFileSystem"]

_PREFIXES = ("atomic::", "atomic://")
_LOCAL_PROTOCOLS = ("file", "local")
_COPY_CHUNK = 8 << 20
_WRITE_MODES: dict[str, Literal["wb", "xb"]] = {"wb": "wb", "bw": "wb", "xb": "xb", "bx": "xb"}


def _without_prefix(path: str) -> str:
    for prefix in _PREFIXES:
        if path.startswith(prefix):
            return path[len(prefix) :]
    return path


class AtomicFile(io.BufferedIOBase):
    """A file written through ``atomic::``: an [`atomic_open`][atomicwrite.atomic_open] write that
    closing publishes, as closing publishes any file written through fsspec.

    The difference from a plain fsspec file is what happens on the way out of a failure: a close
    while an exception propagates (from a ``with`` block, or a library's ``finally``) discards
    the write, and so does the garbage collector; an unpublished write never becomes visible.
    In an fsspec transaction, closing only completes the write, and the transaction's end
    publishes or discards it.
    """

    def __init__(
        self, file: AtomicBinaryFile, *, autocommit: bool, published: Callable[[], None] | None = None
    ) -> None:
        super().__init__()
        self._file = file
        self._autocommit = autocommit
        self._position = 0
        self._abandoned = False
        self._handling_at_open = sys.exc_info()[1]
        # Called once the write is published, so that cached listings learn of it.
        self._on_publish = published

    @property
    def result(self) -> CommitResult | None:
        """What the commit achieved; None until it succeeded."""
        return self._file.result

    @property
    def discarded(self) -> bool:
        """Whether the write was dropped."""
        return self._file.discarded

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError("write to a closed file")
        written = self._file.write(data)
        self._position += written
        return written

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        if not self.closed and not self._file.closed:
            self._file.flush()

    def fileno(self) -> int:
        return self._file.fileno()

    def commit(self) -> CommitResult:
        """Publish the write now (a transaction calls this at its end)."""
        if not self.closed:
            super().close()
        result = self._file.commit()
        if self._on_publish is not None:
            self._on_publish()
        return result

    def discard(self) -> None:
        """Drop the write; the target stays as it was.  Does nothing after a commit."""
        self._file.discard()
        if not self.closed:
            super().close()

    def close(self) -> None:
        if self.closed:
            return
        # An exception raised since the file was opened is propagating through the caller (a
        # with block's exit, a library's finally): the content is not complete.  One that was
        # already being handled when the file was opened (a write from an except block) is not
        # this write's failure.
        current = sys.exc_info()[1]
        self._finish(failed=self._abandoned or (current is not None and current is not self._handling_at_open))

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not self.closed:
            self._finish(failed=exc_type is not None)

    def _finish(self, *, failed: bool) -> None:
        if failed:
            self.discard()
        elif self._autocommit:
            self.commit()
        else:
            # In a transaction: complete the write now, publish it when the transaction ends.
            try:
                self._file.flush()
            except BaseException:
                self.discard()
                raise
            super().close()

    def _dealloc_warn(self, source: object) -> None:
        # A text wrapper being garbage-collected says so before it closes this file: that close
        # must discard, like the collection of this file itself.
        self._abandoned = True

    def __del__(self) -> None:
        # Never publish from the garbage collector: an unclosed file is an unfinished one.
        # Nothing can be raised from here; what a failed discard leaves, sweep() removes.
        with contextlib.suppress(Exception):
            self._file.discard()

    def __repr__(self) -> str:
        return f"<AtomicFile {self._file!r}>"


# A ChainedFileSystem is handed the inner path by fsspec's url_to_fs (fsspec 2025.10+).
class AtomicFileSystem(ChainedFileSystem):  # type: ignore[misc]  # fsspec is untyped
    """An fsspec file system over another one (the *inner* file system) whose every write is an
    [`atomic_open`][atomicwrite.atomic_open] of the inner URL.

    Registered as the ``atomic`` protocol: ``fsspec.open("atomic::s3://bucket/key", "wb",
    s3={...})``, ``df.to_parquet("atomic::file:///data/out.parquet")``.  Reads, listings,
    ``info``, ``exists`` and ``rm`` are the inner file system's.

    What each writer gets (see the module documentation for the details):

    - one file at a time (pandas ``to_parquet``/``to_csv``, ``torch.save`` through
      ``fsspec.open``, ``pipe``/``put``, DCP's ``.distcp`` files): the file is atomic; after a
      crash a reader sees the old file (or none) or the complete new one;
    - ``fs.transaction`` (Lightning's ``ModelCheckpoint``): nothing is published before the
      block ends, and an exception publishes nothing; a crash while publishing leaves each file
      old or new;
    - ``mv``/``rename`` (DCP's ``.metadata``): the destination is published atomically from
      the source's bytes, then the source removed;
    - many files of one directory (pyarrow datasets, zarr, DCP's whole checkpoint): each file is
      atomic, the directory is not; a crash can leave old and new files side by side, or some
      files missing.  Use [`atomic_directory`][atomicwrite.atomic_directory] for that.

    Args:
        target_protocol: the inner file system's protocol (set by fsspec from the URL).
        target_options: the inner file system's options (fsspec passes ``s3={...}`` here).
        fs: an inner file system instance, instead of the two above.
        durability, accept_weaker_durability: as for `atomic_open`.
        part_size, parallel_parts: upload tuning for object stores, as in `atomic_open`'s
            ``storage_options``.
        **kwargs: any other option is the inner file system's.
    """

    protocol = "atomic"
    root_marker = ""

    def __init__(
        self,
        target_protocol: str | None = None,
        target_options: Mapping[str, Any] | None = None,
        fs: Any = None,
        fo: str | None = None,
        *,
        durability: str = "full",
        accept_weaker_durability: bool = False,
        part_size: int | None = None,
        parallel_parts: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if durability not in ("full", "file", "none"):
            raise UsageError(f"durability must be 'full', 'file' or 'none', not {durability!r}")
        if fs is not None and (target_protocol is not None or target_options):
            raise UsageError("give either fs or target_protocol/target_options, not both")
        if fs is None:
            options = {**dict(target_options or {}), **kwargs}
            fs = fsspec.filesystem(target_protocol or "file", **options)
        else:
            options = {**dict(getattr(fs, "storage_options", {}) or {}), **kwargs}
        self.fs = fs
        self._inner_protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        self._durability: Durability = durability  # type: ignore[assignment]  # checked above
        self._accept_weaker_durability = accept_weaker_durability
        tuning = {
            name: value
            for name, value in (("part_size", part_size), ("parallel_parts", parallel_parts))
            if value is not None
        }
        self._storage_options: dict[str, Any] = {**options, **tuning}

    # -- paths ---------------------------------------------------------------------------------

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        text = _without_prefix(stringify_path(path))
        protocol = split_protocol(text)[0] if "://" in text else ""
        if protocol:
            return fsspec.get_filesystem_class(protocol)._strip_protocol(text)
        return text

    def _inner(self, path: Any) -> Any:
        """``path`` (an ``atomic::`` URL, an inner URL, or an inner path) as the inner file
        system names it."""
        if isinstance(path, list):
            return [self._inner(p) for p in path]
        return self.fs._strip_protocol(self._strip_protocol(path))

    def _target(self, path: str) -> str:
        """What `atomic_open` is given for the inner ``path``: a local path, or a URL."""
        if self._inner_protocol in _LOCAL_PROTOCOLS:
            return path
        url: str = self.fs.unstrip_protocol(path)
        return url

    def unstrip_protocol(self, name: str) -> str:
        return "atomic::" + str(self.fs.unstrip_protocol(self._inner(name)))

    # -- writes --------------------------------------------------------------------------------

    def _atomic_open(self, path: str, mode: Literal["wb", "xb"]) -> AtomicBinaryFile:
        if self._inner_protocol in _LOCAL_PROTOCOLS:
            # As on an object store, where a key needs no folder: zarr's and pyarrow's fsspec
            # stores write "a/b/c" without making "a/b" first.
            self.fs.makedirs(self.fs._parent(path), exist_ok=True)
        return atomic_open(
            self._target(path),
            mode,
            storage_options=None if self._inner_protocol in _LOCAL_PROTOCOLS else self._storage_options,
            durability=self._durability,
            accept_weaker_durability=self._accept_weaker_durability,
        )

    def _published(self, path: str) -> Callable[[], None]:
        def forget_listings() -> None:
            self.fs.invalidate_cache(path)

        return forget_listings

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        path = self._inner(path)
        if mode in ("rb", "br"):
            return self.fs._open(path, mode, block_size=block_size, cache_options=cache_options, **kwargs)
        if mode not in _WRITE_MODES:
            raise UsageError(
                f"atomic:: files are read whole or replaced whole: mode must be 'rb', 'wb' or 'xb'"
                f" (or their text forms), not {mode!r}; appending and updating in place are not atomic"
            )
        return AtomicFile(
            self._atomic_open(path, _WRITE_MODES[mode]), autocommit=autocommit, published=self._published(path)
        )

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        # Through open(), so that in a transaction the write waits for the transaction's end.
        with self.open(path, "xb" if mode == "create" else "wb") as file:
            file.write(value)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        # Published at once, even in a transaction: mv removes the source right after the copy,
        # and a copy still waiting for the transaction's end would then be the only one.
        source, destination = self._inner(path1), self._inner(path2)
        if self.fs.isdir(source):
            self.makedirs(destination, exist_ok=True)
            return
        with self.fs.open(source, "rb") as reader, self._atomic_open(destination, "wb") as writer:
            shutil.copyfileobj(reader, writer, _COPY_CHUNK)
        self.fs.invalidate_cache(destination)

    # mv and rename: AbstractFileSystem's copy (through cp_file above), then rm of the source.

    # -- everything else is the inner file system's -------------------------------------------

    def ls(self, path: str, **kwargs: Any) -> Any:
        # No default of our own for detail: each file system has its own (the local one lists
        # names, s3fs entries), and the inner one's is the one its users expect.
        return self.fs.ls(self._inner(path), **kwargs)

    def info(self, path: str, **kwargs: Any) -> Any:
        return self.fs.info(self._inner(path), **kwargs)

    def exists(self, path: str, **kwargs: Any) -> bool:
        return bool(self.fs.exists(self._inner(path), **kwargs))

    def isdir(self, path: str) -> bool:
        return bool(self.fs.isdir(self._inner(path)))

    def isfile(self, path: str) -> bool:
        return bool(self.fs.isfile(self._inner(path)))

    def find(
        self, path: str, maxdepth: int | None = None, withdirs: bool = False, detail: bool = False, **kwargs: Any
    ) -> Any:
        return self.fs.find(self._inner(path), maxdepth=maxdepth, withdirs=withdirs, detail=detail, **kwargs)

    def glob(self, path: str, maxdepth: int | None = None, **kwargs: Any) -> Any:
        return self.fs.glob(self._inner(path), maxdepth=maxdepth, **kwargs)

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> Any:
        return self.fs.cat_file(self._inner(path), start=start, end=end, **kwargs)

    def rm_file(self, path: str) -> None:
        self.fs.rm_file(self._inner(path))

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        self.fs.rm(self._inner(path), recursive=recursive, maxdepth=maxdepth)

    def rmdir(self, path: str) -> None:
        self.fs.rmdir(self._inner(path))

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        self.fs.mkdir(self._inner(path), create_parents=create_parents, **kwargs)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        self.fs.makedirs(self._inner(path), exist_ok=exist_ok)

    def modified(self, path: str) -> Any:
        return self.fs.modified(self._inner(path))

    def created(self, path: str) -> Any:
        return self.fs.created(self._inner(path))

    def invalidate_cache(self, path: str | None = None) -> None:
        self.fs.invalidate_cache(None if path is None else self._inner(path))

    def walk(self, path: str, maxdepth: int | None = None, topdown: bool = True, **kwargs: Any) -> Iterator[Any]:
        yield from self.fs.walk(self._inner(path), maxdepth=maxdepth, topdown=topdown, **kwargs)
