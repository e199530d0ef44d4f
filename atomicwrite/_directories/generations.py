"""Generations of a checkpoint directory, a ``latest`` pointer that moves atomically, retention.

Layout under ``root`` (local or object store)::

    root/
      gen-00000001/        one published directory per save (atomic_directory, never replaced)
      gen-00000002/
      latest               -> gen-00000002 (a symlink locally; a small JSON object on stores)

A save publishes a new generation first and moves ``latest`` second, so ``latest`` only ever
names a complete generation; a crash between the two leaves ``latest`` on the previous one.
Locally the pointer is swapped by renaming a fresh symlink over it (never remove-then-create);
on an object store it is replaced conditionally (``If-Match``), and only ever forward.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any, Literal, cast

from .._errors import AtomicWriteError, ConflictError, TargetNotFoundError, UnsupportedTargetError, UsageError
from .._local.base import replace_symlink
from .._strategy import WriteOptions, resolve_target
from .api import begin_directory
from .local import remove_tree
from .manifest import MANIFEST_NAME, DirectoryCommitResult, DirectoryVerification
from .reading import PublishedDirectory, open_directory, verify_directory
from .staging import StagingDirectory
from .store import remove_prefix

__all__ = ["CheckpointStore", "Generation"]

POINTER_NAME = "latest"
_POINTER_RETRIES = 20


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


class CheckpointStore:
    """Numbered, all-or-nothing checkpoint directories under ``root`` with an atomic ``latest``.

    ```python
    store = CheckpointStore("checkpoints", keep_last=3)
    with store.save() as stage:
        torch.save(model.state_dict(), stage / "model.pt")
    newest = store.latest()  # the newest complete generation, verified
    ```

    One process saves into a store at a time (the rank that commits, in distributed
    training); any number may read.

    Args:
        root: a local directory (created if missing) or an object-store URL.
        keep_last: after each save, remove all but the newest ``keep_last`` generations.  The
            one ``latest`` names is never removed, nor one still being written.
        prefix: generation names are ``prefix`` + an 8-digit number.
        durability, checksums, storage_options: as for [`atomic_directory`][atomicwrite.atomic_directory].
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        keep_last: int | None = None,
        prefix: str = "gen-",
        durability: Literal["none", "full"] = "full",
        checksums: bool = True,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        if keep_last is not None and (not isinstance(keep_last, int) or keep_last < 1):
            raise UsageError(f"keep_last must be a positive int or None, not {keep_last!r}")
        if not re.fullmatch(r"[A-Za-z0-9_.-]*", prefix) or prefix.startswith("."):
            raise UsageError(f"prefix must be letters, digits, '_', '-' or '.', not starting with '.': {prefix!r}")
        self.keep_last = keep_last
        self.prefix = prefix
        self.durability: Literal["none", "full"] = durability
        self.checksums = checksums
        self.storage_options: dict[str, Any] = dict(storage_options or {})
        self._pattern = re.compile(re.escape(prefix) + r"(?P<number>[0-9]{8,})")
        strategy, location = resolve_target(root)
        from .._stores.base import ObjectStoreStrategy

        self._strategy: Any = cast(Any, strategy)
        self.local = not isinstance(strategy, ObjectStoreStrategy)
        if not self.local and strategy.name not in ("s3", "memory"):
            # The latest pointer is replaced by compare-and-swap, which needs the current
            # version of an object; that is read for S3 and memory:// so far.
            raise UnsupportedTargetError(f"CheckpointStore supports local paths, s3:// and memory://, not {root!r}")
        if self.local:
            self.root = os.path.abspath(os.path.expanduser(location))
            os.makedirs(self.root, exist_ok=True)
            self._fs: Any = None
        else:
            self.root = location.rstrip("/")
            self._fs = self._strategy.filesystem(WriteOptions(storage_options=self.storage_options))
        #: What the last save published.
        self.last_result: DirectoryCommitResult | None = None

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
            return {e: n for e in entries if (n := self._number(e)) is not None}
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
        if self.local:
            try:
                target = os.readlink(self._join(POINTER_NAME))
            except (FileNotFoundError, OSError):
                return None
            return target if self._number(target) is not None else None
        fs = self._fs
        try:
            record = json.loads(fs.cat_file(fs._strip_protocol(self._join(POINTER_NAME))))
        except (FileNotFoundError, ValueError):
            return None
        name = record.get("generation") if isinstance(record, dict) else None
        return name if isinstance(name, str) and self._number(name) is not None else None

    def _point_to(self, name: str) -> None:
        if self.local:
            self._swap_symlink(name)
        else:
            self._swap_pointer_object(name)

    def _swap_symlink(self, name: str) -> None:
        # "latest" always names a generation: the new link is renamed over the old one.
        replace_symlink(self.root, POINTER_NAME, name, durable=self.durability != "none")

    def _swap_pointer_object(self, name: str) -> None:
        from .._api import atomic_open

        fs = self._fs
        path = fs._strip_protocol(self._join(POINTER_NAME))
        number = self._number(name)
        assert number is not None
        for _ in range(_POINTER_RETRIES):
            version = self._strategy.version(path, WriteOptions(storage_options=self.storage_options))
            current = self.pointer() if version is not None else None
            current_number = None if current is None else self._number(current)
            if current_number is not None and current_number >= number:
                return  # never move backwards: a newer generation is already latest
            data = json.dumps({"generation": name}).encode()
            mode = "xb" if version is None else "wb"
            options: dict[str, Any] = {"storage_options": self.storage_options}
            if version is not None:
                options["if_match"] = version
            try:
                with atomic_open(self._strategy.url(path), mode, **options) as file:
                    file.write(data)  # type: ignore[arg-type]  # binary: mode is "xb" or "wb"
                return
            except (ConflictError, FileExistsError):
                continue
        raise ConflictError(
            f"{self._join(POINTER_NAME)!r} kept changing; it was not moved to {name!r}", expected=None, actual=None
        )

    # --- saving -------------------------------------------------------------------------

    def next_name(self, step: int | None = None) -> str:
        """The name the next save gets: ``step``'s, or one past the newest generation."""
        if step is None:
            numbers = self._names().values()
            step = max(numbers, default=0) + 1
        if not isinstance(step, int) or step < 0:
            raise UsageError(f"step must be a non-negative int, not {step!r}")
        return f"{self.prefix}{step:08d}"

    @contextlib.contextmanager
    def save(self, step: int | None = None) -> Iterator[StagingDirectory]:
        """Write a new generation (numbered ``step``, or the next number); on leaving the block
        it is published, ``latest`` moves to it, and old generations are pruned.  An exception
        in the block discards it and leaves ``latest`` where it was."""
        transaction = self.begin(step)
        try:
            yield transaction.staging
        except BaseException:
            transaction.discard()
            raise
        self.finish(transaction.commit())

    def begin(self, step: int | None = None) -> Any:
        """Start a save without a ``with`` block: a [`DirectoryTransaction`][atomicwrite.DirectoryTransaction]
        to commit, then pass its result to [`finish`][atomicwrite.CheckpointStore.finish]."""
        return begin_directory(
            self._join(self.next_name(step)),
            replace=False,
            durability=self.durability,
            checksums=self.checksums,
            storage_options=self.storage_options,
        )

    def finish(self, result: DirectoryCommitResult) -> None:
        """Move ``latest`` to the generation just published, then apply retention."""
        name = result.target.rstrip("/").replace("\\", "/").rpartition("/")[2]
        self._point_to(name)
        self.last_result = result
        if self.keep_last is not None:
            self.prune()

    # --- reading ------------------------------------------------------------------------

    def latest(self, *, checksums: bool = True) -> Generation | None:
        """The generation ``latest`` names, if it verifies; else the newest one that does
        (``latest`` missing or damaged by hand).  None if there is no complete generation."""
        named = self.pointer()
        if named is not None and self.verify(named, checksums=checksums):
            with contextlib.suppress(TargetNotFoundError, AtomicWriteError):
                return self._generation(named)
        for name in reversed(self.generations()):
            if name != named and self.verify(name, checksums=checksums):
                with contextlib.suppress(TargetNotFoundError, AtomicWriteError):
                    return self._generation(name)
        return None

    def get(self, name: str) -> Generation:
        """The published generation ``name`` (not verified)."""
        return self._generation(name)

    def verify(self, name: str | None = None, *, checksums: bool = True) -> DirectoryVerification:
        """Check generation ``name`` (default: the one ``latest`` names) against its manifest."""
        if name is None:
            name = self.pointer()
            if name is None:
                return verify_directory(self._join(POINTER_NAME), storage_options=self.storage_options)
        return verify_directory(self._join(name), checksums=checksums, storage_options=self.storage_options)

    # --- retention ----------------------------------------------------------------------

    def prune(self, keep_last: int | None = None) -> list[str]:
        """Remove all but the newest ``keep_last`` generations (default: the store's); never
        the one ``latest`` names, nor any newer than it.  Returns the names removed."""
        keep = self.keep_last if keep_last is None else keep_last
        if keep is None or keep < 1:
            raise UsageError(f"keep_last must be a positive int, not {keep!r}")
        names = self._names()
        named = self.pointer()
        if named is None:
            return []  # without a pointer nothing is known to be superseded
        ceiling = self._number(named)
        assert ceiling is not None
        ordered = sorted(names, key=names.__getitem__)
        kept = set(ordered[-keep:]) | {named}
        removed: list[str] = []
        for name in ordered:
            if name in kept or names[name] >= ceiling:
                continue
            self._remove(name)
            removed.append(name)
        return removed

    def _remove(self, name: str) -> None:
        if self.local:
            dir_fd = os.open(self.root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            try:
                remove_tree(self.root, dir_fd, name)
            finally:
                os.close(dir_fd)
            return
        fs = self._fs
        # The manifest first: from then on no reader trusts the generation's files.
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(fs._strip_protocol(f"{self.root}/{name}/{MANIFEST_NAME}"))
        remove_prefix(fs, fs._strip_protocol(f"{self.root}/{name}"))

    def __repr__(self) -> str:
        return f"<CheckpointStore {self.root!r}>"
