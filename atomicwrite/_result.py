"""What a commit reports."""

from __future__ import annotations

import os
from typing import Literal

from ._record import Record

__all__ = ["CommitResult", "Durability", "LocalVersion", "durability_rank"]

#: ``"none"``: atomic against process crashes only; ``"file"``: the file's data was flushed to
#: stable storage; ``"full"``: the file and the directory entry that names it were flushed.
Durability = Literal["none", "file", "full"]

_RANK: dict[str, int] = {"none": 0, "file": 1, "full": 2}


def durability_rank(level: str) -> int:
    """Order durability levels so that they can be compared: none < file < full."""
    return _RANK[level]


class LocalVersion(Record):
    """Identifies one version of a local file, for compare-and-swap (``if_match=``).

    A replace publishes a new inode, so two versions never share ``(device, inode, mtime_ns,
    size)`` while the old one is still referenced; comparing all four also catches a file that
    was rewritten in place by a program that does not use atomicwrite.
    """

    device: int
    inode: int
    mtime_ns: int
    size: int
    _fields = ("device", "inode", "mtime_ns", "size")

    def __init__(self, device: int, inode: int, mtime_ns: int, size: int) -> None:
        self.__dict__.update(device=device, inode=inode, mtime_ns=mtime_ns, size=size)

    @classmethod
    def from_stat(cls, st: os.stat_result) -> LocalVersion:
        return cls(st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


class CommitResult(Record):
    """The outcome of a successful commit.

    Attributes:
        target: the path (or URI) that now holds the new content; for a symlinked target, the
            file the link points to.
        strategy: the name of the strategy that wrote it (``"posix"``, ``"windows"``, ...).
        durability: what was actually achieved, which can be weaker than what was asked only
            when ``accept_weaker_durability=True``.
        bytes_written: the size of the new content.
        version: a token for a later conditional write (``if_match=``).
        checksum: ``"sha256:<hex>"`` of the content, where the strategy computes one on the way
            (object stores do; local writes do not, to stay at disk speed).
        seconds: wall time from opening the write to the commit's return (for a background
            save, from the ``save`` call to its commit).
        seconds_blocked: how long the caller was held up: the same as ``seconds`` for a write
            made in the caller's thread; for a background save, the snapshot (and any wait for
            a free slot).
        seconds_background: time spent in a worker thread writing it (0 for a write made in the
            caller's thread).

    The three timings are telemetry, not identity: they are left out of equality, hashing and
    ``repr``'s identity part, so two results of the same commit compare equal however long they
    took.  A result built by hand has all three at 0.
    """

    target: str
    strategy: str
    durability: Durability
    bytes_written: int
    version: object
    checksum: str | None
    seconds: float
    seconds_blocked: float
    seconds_background: float
    _fields = ("target", "strategy", "durability", "bytes_written", "version", "checksum")

    def __init__(  # noqa: PLR0917 - positional, like the dataclass it was
        self,
        target: str,
        strategy: str,
        durability: Durability,
        bytes_written: int,
        version: object,
        checksum: str | None = None,
        *,
        seconds: float = 0.0,
        seconds_blocked: float | None = None,
        seconds_background: float = 0.0,
    ) -> None:
        self.__dict__.update(
            target=target,
            strategy=strategy,
            durability=durability,
            bytes_written=bytes_written,
            version=version,
            checksum=checksum,
            seconds=seconds,
            seconds_blocked=seconds if seconds_blocked is None else seconds_blocked,
            seconds_background=seconds_background,
        )

    @property
    def throughput(self) -> float:
        """``bytes_written / seconds`` in bytes per second; 0.0 when no time was measured."""
        return self.bytes_written / self.seconds if self.seconds > 0 else 0.0

    def _timed(
        self, seconds: float, *, seconds_blocked: float | None = None, seconds_background: float = 0.0
    ) -> CommitResult:
        """This result with its timings set (results are immutable: a new one is returned)."""
        return CommitResult(
            *self._values(),
            seconds=seconds,
            seconds_blocked=seconds_blocked,
            seconds_background=seconds_background,
        )

    def __repr__(self) -> str:
        timings = (
            f"seconds={self.seconds!r}, seconds_blocked={self.seconds_blocked!r},"
            f" seconds_background={self.seconds_background!r}"
        )
        return f"{super().__repr__()[:-1]}, {timings})"
