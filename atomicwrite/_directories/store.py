"""Publishing a directory on an object store, where no rename exists: every file goes under a
fresh generation prefix, then one conditional write of the manifest (``If-None-Match: *`` for a
new directory, ``If-Match`` the previous manifest's version for a replacement) is the commit.
Readers resolve files through the manifest, so an unfinished generation is never seen."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from typing import Any

from .._errors import (
    AtomicWriteError,
    ConflictError,
    TargetExistsError,
)
from .._names import FRESH_TEMP_GRACE, parse_temp_name, writer_alive
from .._stores.base import ObjectStoreStrategy
from .._strategy import WriteOptions
from .manifest import (
    GENERATION_NAME,
    MANIFEST_NAME,
    DirectoryCommitResult,
    DirectoryManifest,
    FileEntry,
    digest_stream,
    manifest_algorithm,
    merge_reported,
    new_generation,
)
from .staging import DirectoryTransaction, StagingDirectory

__all__ = ["StoreTransaction", "remove_prefix", "sweep_generations"]


class StoreTransaction(DirectoryTransaction):
    def __init__(
        self, strategy: ObjectStoreStrategy, location: str, options: WriteOptions, *, replace: bool, checksums: bool
    ) -> None:
        self._strategy = strategy
        self.strategy_name = strategy.name
        self._location = location.rstrip("/")
        self._options = options
        self._fs = strategy.filesystem(options)
        self._replace = replace
        self._checksums = checksums
        self._manifest_path = self._fs._strip_protocol(f"{self._location}/{MANIFEST_NAME}")
        # Version first, content second: if the manifest changes in between, the conditional
        # commit fails, so the old generation read here is the one the commit replaces.
        self._previous_version: object | None = None
        if replace:
            self._previous_version = strategy.version(self._manifest_path, options)
        else:
            with contextlib.suppress(FileNotFoundError):
                self._fs.invalidate_cache()
                if self._fs.exists(self._manifest_path):
                    raise TargetExistsError.at(self._location)
        self._previous: DirectoryManifest | None = None
        if self._previous_version is not None:
            with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
                self._previous = DirectoryManifest.from_json(self._fs.cat_file(self._manifest_path))
        self._generation: str | None = new_generation()
        self._prefix = self._fs._strip_protocol(f"{self._location}/{self._generation}")
        self.staging = StagingDirectory(
            f"{self._location}/{self._generation}", local=False, storage_options=options.storage_options
        )

    def _listing(self) -> dict[str, int]:
        self._fs.invalidate_cache(self._prefix)
        try:
            found: dict[str, dict[str, Any]] = self._fs.find(self._prefix, detail=True)
        except FileNotFoundError:
            return {}
        staged: dict[str, int] = {}
        for path, info in found.items():
            name = path[len(self._prefix) + 1 :]
            if not name or parse_temp_name(name.rpartition("/")[2]) is not None:
                continue  # an upload's marker, not a file
            staged[name] = int(info.get("size") or 0)
        return staged

    def _entry(self, name: str, size: int) -> FileEntry:
        known = self.staging.known_entry(name)
        if known is not None and known.size == size:
            return known
        if not self._checksums:
            return FileEntry(name, size, None)
        with self._fs.open(f"{self._prefix}/{name}", "rb") as source:
            return FileEntry(name, size, digest_stream(source, manifest_algorithm()))

    def commit(self, reported: Mapping[str, FileEntry] | None = None) -> DirectoryCommitResult:
        from .._api import atomic_open

        if self._generation is None:
            raise AtomicWriteError(f"the write of {self._location!r} was already committed or discarded")
        try:
            staged = self._listing()
            known = merge_reported(staged, reported, self._location)
            files = [known.get(name) or self._entry(name, size) for name, size in sorted(staged.items())]
            manifest = DirectoryManifest(
                generation=self._generation, files=tuple(files), created=time.time(), metadata=dict(self.metadata)
            )
            url = self._strategy.url(self._manifest_path)
            if self._previous_version is None:
                file = atomic_open(url, "xb", storage_options=self._options.storage_options)
            else:
                file = atomic_open(
                    url, "wb", if_match=self._previous_version, storage_options=self._options.storage_options
                )
            with file:
                file.write(manifest.to_json())
        except BaseException as exc:
            self.discard()
            if isinstance(exc, TargetExistsError):
                raise ConflictError(
                    f"{self._location!r} was published by another writer meanwhile; this write was dropped",
                    expected=None,
                    actual="published",
                ) from exc
            raise
        self._generation = None
        replaced = self._previous is not None
        if self._previous is not None:
            # Readers that resolved the old manifest now find its files gone (FileNotFoundError),
            # never mixed with the new ones: every generation has its own prefix.
            remove_prefix(self._fs, self._fs._strip_protocol(f"{self._location}/{self._previous.generation}"))
        return DirectoryCommitResult(
            target=self._location,
            strategy=self.strategy_name,
            durability="none" if self.strategy_name == "memory" else "full",
            manifest=manifest,
            replaced=replaced,
        )

    def discard(self) -> None:
        if self._generation is None:
            return
        self._generation = None
        for file in self.staging._opened.values():
            with contextlib.suppress(Exception):
                file.discard()
        remove_prefix(self._fs, self._prefix)


def remove_prefix(fs: Any, prefix: str) -> None:
    with contextlib.suppress(FileNotFoundError, OSError):
        fs.invalidate_cache(prefix)
        paths = list(fs.find(prefix))
        if paths:
            fs.rm(paths)


def sweep_generations(fs: Any, location: str, older_than: float, dry_run: bool, url: Any) -> list[str]:
    """Remove the generation prefixes under an object-store directory that no manifest names
    and whose writer is gone (this host, dead pid) or that are older than ``older_than``."""
    location = location.rstrip("/")
    try:
        fs.invalidate_cache(location)
        children = [str(path).rstrip("/") for path in fs.ls(location, detail=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    current: str | None = None
    with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
        current = DirectoryManifest.from_json(fs.cat_file(f"{location}/{MANIFEST_NAME}")).generation
    removed: list[str] = []
    now = time.time_ns()
    for child in children:
        name = child.rpartition("/")[2]
        match = GENERATION_NAME.match(name)
        if match is None or name == current:
            continue
        age = (now - int(match.group("time"))) / 1e9
        pid = int(match.group("pid"))
        # A writer on this host is alive exactly while its pid is; elsewhere only age tells.
        alive = writer_alive(match.group("host"), pid)
        if (alive is None or pid == os.getpid()) and age < max(older_than, FRESH_TEMP_GRACE):
            continue
        if alive and pid != os.getpid():
            continue
        if not dry_run:
            remove_prefix(fs, child)
        removed.append(url(child))
    return removed
