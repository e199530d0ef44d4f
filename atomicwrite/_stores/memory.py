"""The ``memory://`` strategy: fsspec's in-process file system, handy in users' tests.

A memory file system lives and dies with its process, so there is nothing to sweep; what is left
to guarantee is that concurrent readers (threads) never see a partial object and that exclusive
creation and compare-and-swap are race-free among threads.  Parts are kept until the commit,
which stores the whole object with one assignment under a lock.  Results report durability
"none" (nothing here survives the process) without raising DurabilityError: memory:// stands in
for real storage in tests, where that is the point.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

from .._strategy import WriteOptions
from .base import MiB, ObjectStoreBackend, ObjectStoreStrategy, PreconditionFailed

__all__ = ["MemoryStrategy"]

# One lock for every memory:// commit: the check of a precondition and the store are one step.
_COMMIT_LOCK = threading.Lock()
# path -> generation of its current content; a generation is the version token of memory://.
_GENERATIONS: dict[str, int] = {}
_NEXT_GENERATION = itertools.count(1)


class MemoryBackend(ObjectStoreBackend):
    part_size = 64 * MiB
    parallel_parts = 1
    durability = "none"
    # An in-process upload cannot outlive its writer: nothing to mark, nothing to sweep.
    outlives_writer = False

    def __init__(self, fs: Any, path: str) -> None:
        self._fs = fs
        self._path = path
        self._parts: list[bytes] = []

    def put(self, data: bytes, *, exclusive: bool, if_match: object | None, digest: bytes | None) -> object:
        with _COMMIT_LOCK:
            exists = self._fs.exists(self._path)
            current = _GENERATIONS.get(self._path) if exists else None
            if exclusive and exists:
                raise PreconditionFailed(f"memory://{self._path} exists")
            if if_match is not None and current != if_match:
                raise PreconditionFailed(f"memory://{self._path} is at generation {current}")
            self._fs.pipe_file(self._path, data)
            generation = _GENERATIONS[self._path] = next(_NEXT_GENERATION)
        return generation

    def start(self, *, exclusive: bool, if_match: object | None) -> str:
        return "memory"

    def upload_part(self, number: int, data: bytes) -> None:
        self._parts.append(data)

    def complete(self, tail: bytes, *, exclusive: bool, if_match: object | None, digest: bytes | None) -> object:
        data = b"".join([*self._parts, tail])
        self._parts.clear()
        return self.put(data, exclusive=exclusive, if_match=if_match, digest=digest)

    def abort(self) -> None:
        self._parts.clear()


class MemoryStrategy(ObjectStoreStrategy):
    """``memory://`` paths."""

    name = "memory"
    protocol = "memory"

    def backend(self, location: str, options: WriteOptions) -> MemoryBackend:
        fs = self.filesystem(options)
        return MemoryBackend(fs, fs._strip_protocol(location))

    def version(self, path: str, options: WriteOptions) -> object | None:
        return _GENERATIONS.get(path) if self.filesystem(options).exists(path) else None

    def abort_upload(self, record: dict[str, Any], options: WriteOptions) -> None:
        """Never called: there are no markers to sweep."""
