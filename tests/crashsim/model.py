"""The persistence model: what may a power loss leave on disk after a prefix of the operations?

THE MODEL -- explicit and conservative: roughly ext4 ``data=ordered`` *without* its extra
guarantees (no ``auto_da_alloc`` flush on rename-over or truncate, no "an fsync commits the whole
journal, other files' names included"), so a protocol that passes here does not lean on them.

* Start: the directory's initial content (the old target, if any) is on disk, fully durable.
* Crash points: after every prefix ``ops[:k]``, ``k = 0 .. len(ops)``.  A call in flight counts as
  not done.  ``k >= returned_at`` are the crash points after the write call returned.
* Barriers: an operation followed, inside the prefix, by a barrier that covers it IS on disk:
  - ``fsync(inode)`` covers that inode's writes, truncates and chmods (``fdatasync``: not chmods);
  - ``fsync(dir)`` covers the directory's entry operations: create-with-a-name, link, rename,
    unlink;
  - ``sync()``/``syncfs()`` cover everything.
  Nothing else is a barrier: ``fsync(file)`` does not make the file's *name* durable, ``close``
  flushes nothing, ``sync_file_range`` promises nothing.
* Operations not covered MAY each have reached the disk or not, independently:
  - a directory-entry operation persists entirely or not at all (a rename moves its name or it
    does not); any subset of them may persist, applied in program order;
  - an inode's uncovered data operations (writes, truncates) persist as a prefix cut at any
    operation boundary (none, the first, the first two, ..., all), or with their size but
    without their data (the written ranges read as zeros: the classic zero-filled file);
  - an uncovered chmod persists or not (the mode is the durable one or any uncovered one);
  - data and names are independent: a rename or link may persist before the data of the file it
    names, unless that data was fsynced first.
* An inode is on disk iff a persisted directory entry names it (its creation is journaled with
  the entry); a new inode starts empty, with the mode it was created with.

A crash point's states are: every subset of its uncovered entry operations x every data choice x
every mode choice of each inode the resulting entries name.  Identical states are merged.  The
enumeration is bounded and raises :class:`TooManyStates` rather than truncate silently.
"""

from __future__ import annotations

import itertools
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from tests.crashsim.recorder import SyncAll, Truncate, Write
from tests.crashsim.trace import Chmod, Create, Fsync, FsyncDir, Link, Op, Recording, Rename, Unlink, is_entry_op

MAX_LOOSE_ENTRY_OPS = 12  # 4096 subsets
MAX_COMBINATIONS = 200_000  # per crash point

# A state on disk: every file of the directory as (name, content, mode), sorted by name.
State = tuple[tuple[str, bytes, int], ...]


class TooManyStates(AssertionError):
    """The enumeration would exceed its bound: shorten the writer, do not cut the enumeration."""


@dataclass
class CrashPoint:
    index: int  # operations completed
    after_return: bool  # the write call had returned to its caller
    combinations: int  # choices enumerated (before merging identical states)
    states: set[State]


def _apply(content: bytes, op: Write | Truncate, zero: bool = False) -> bytes:
    buffer = bytearray(content)
    if isinstance(op, Write):
        if len(buffer) < op.offset:
            buffer.extend(bytes(op.offset - len(buffer)))
        buffer[op.offset : op.offset + len(op.data)] = bytes(len(op.data)) if zero else op.data
    else:
        del buffer[op.size :]
        buffer.extend(bytes(op.size - len(buffer)))
    return bytes(buffer)


def data_images(content: bytes, ops: Sequence[object], ino: int, covered: Callable[[int], bool]) -> list[bytes]:
    """Every content inode ``ino`` (``content`` before ``ops``) may have on disk after ``ops``:
    its covered writes and truncates applied, then its uncovered ones as a prefix cut at any
    operation, with or without their data (zeros)."""
    tail: list[Write | Truncate] = []
    for i, op in enumerate(ops):
        if isinstance(op, (Write, Truncate)) and op.ino == ino:
            if covered(i):
                assert not tail, "a covered data operation after an uncovered one"
                content = _apply(content, op)
            else:
                tail.append(op)
    contents = {content}
    applied, zeroed = content, content
    for op in tail:
        applied = _apply(applied, op)
        zeroed = _apply(zeroed, op, zero=True)
        contents.update((applied, zeroed))  # the first m operations, with or without data
    return sorted(contents)


def entry_subsets(indices: list[int], barrier: int, where: str) -> Iterator[list[int]]:
    """Every way the directory-entry operations ``indices`` (in program order) may have reached
    the disk: those before ``barrier`` (the last flush that covers them) always, any subset of the
    others; each way in program order."""
    covered = [i for i in indices if i < barrier]
    loose = [i for i in indices if i >= barrier]
    if len(loose) > MAX_LOOSE_ENTRY_OPS:
        raise TooManyStates(f"{len(loose)} uncovered {where}")
    for chosen in itertools.product((False, True), repeat=len(loose)):
        yield sorted(covered + [i for i, keep in zip(loose, chosen, strict=True) if keep])


def one_more(combinations: int, k: int) -> int:
    """Count one more combination at crash point ``k``, within the bound."""
    combinations += 1
    if combinations > MAX_COMBINATIONS:
        raise TooManyStates(f"more than {MAX_COMBINATIONS} combinations at crash point {k}")
    return combinations


S = TypeVar("S")


def only_state(states: set[S]) -> S:
    """The one state of a crash point with everything synced (the recorder's self-check)."""
    assert len(states) == 1, "everything synced, yet more than one state"
    return next(iter(states))


class _Prefix:
    """Coverage facts for one prefix ``ops[:k]``."""

    def __init__(self, recording: Recording, k: int) -> None:
        self.recording = recording
        self.ops: list[Op] = recording.ops[:k]
        self.sync_all = -1
        self.dir_sync = -1
        self.data_sync: dict[int, int] = {}  # fsync or fdatasync: data and size
        self.full_sync: dict[int, int] = {}  # fsync only: also the mode
        for i, op in enumerate(self.ops):
            if isinstance(op, SyncAll):
                self.sync_all = i
            elif isinstance(op, FsyncDir):
                self.dir_sync = i
            elif isinstance(op, Fsync):
                self.data_sync[op.ino] = i
                if not op.data_only:
                    self.full_sync[op.ino] = i

    @property
    def entry_barrier(self) -> int:
        """The entry operations before this index are covered (a directory fsync or a sync)."""
        return max(self.dir_sync, self.sync_all)

    def data_covered(self, i: int, ino: int) -> bool:
        return i < max(self.data_sync.get(ino, -1), self.sync_all)

    def mode_covered(self, i: int, ino: int) -> bool:
        return i < max(self.full_sync.get(ino, -1), self.sync_all)

    def images(self, ino: int) -> list[tuple[bytes, int]]:
        """Every (content, mode) the inode may have on disk at this crash point."""
        if ino in self.recording.inodes:
            content, mode = self.recording.inodes[ino]
        else:
            content, mode = b"", -1
        modes: set[int] = set()
        for i, op in enumerate(self.ops):
            if isinstance(op, Create) and op.ino == ino:
                mode = op.mode
            elif isinstance(op, Chmod) and op.ino == ino:
                if self.mode_covered(i, ino):
                    assert not modes, "a covered chmod after an uncovered one"
                    mode = op.mode
                else:
                    modes.add(op.mode)
        assert mode >= 0, f"inode {ino} was never created"
        contents = data_images(content, self.ops, ino, lambda i: self.data_covered(i, ino))
        modes.add(mode)
        return sorted(itertools.product(contents, sorted(modes)))


def _entries(recording: Recording, ops: list[Op], persisted: list[int]) -> dict[str, int]:
    entries = dict(recording.initial)
    for i in persisted:
        op = ops[i]
        if isinstance(op, (Create, Link)):
            assert op.name is not None
            entries[op.name] = op.ino
        elif isinstance(op, Rename):
            entries.pop(op.src, None)
            entries[op.dst] = op.ino
        elif isinstance(op, Unlink):
            entries.pop(op.name, None)
    return entries


def crash_point(recording: Recording, k: int) -> CrashPoint:
    """Every state a power loss after ``ops[:k]`` may leave on disk (see the module docstring)."""
    prefix = _Prefix(recording, k)
    entry_ops = [i for i, op in enumerate(prefix.ops) if is_entry_op(op)]
    images: dict[int, list[tuple[bytes, int]]] = {}
    states: set[State] = set()
    combinations = 0
    where = f"directory operations at crash point {k}"
    for persisted in entry_subsets(entry_ops, prefix.entry_barrier, where):
        entries = _entries(recording, prefix.ops, persisted)
        inodes = sorted(set(entries.values()))
        for ino in inodes:
            if ino not in images:
                images[ino] = prefix.images(ino)
        for pick in itertools.product(*(images[ino] for ino in inodes)):
            combinations = one_more(combinations, k)
            image = dict(zip(inodes, pick, strict=True))
            # Two names of one inode (a hard link) share its one image.
            states.add(tuple(sorted((name, *image[ino]) for name, ino in entries.items())))
    return CrashPoint(k, k >= recording.returned_at, combinations, states)


def crash_points(recording: Recording) -> list[CrashPoint]:
    """The states of every crash point, from before the first operation to after the last."""
    return [crash_point(recording, k) for k in range(len(recording.ops) + 1)]


def final_state(recording: Recording) -> State:
    """The state with every operation on disk: what the directory really holds after the run
    (the recorder's self-check: a mis-parsed trace shows up as a difference)."""
    synced = Recording(recording.directory, recording.initial, recording.inodes, [*recording.ops, SyncAll()])
    synced.returned_at = recording.returned_at
    return only_state(crash_point(synced, len(synced.ops)).states)


def scan(directory: str) -> State:
    """The state a real directory is in, in the same form."""
    files = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        with open(path, "rb") as file:
            files.append((name, file.read(), stat.S_IMODE(os.fstat(file.fileno()).st_mode)))
    return tuple(files)
