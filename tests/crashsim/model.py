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
from dataclasses import dataclass

from tests.crashsim.trace import (
    Chmod,
    Create,
    Fsync,
    FsyncDir,
    Link,
    Op,
    Recording,
    Rename,
    SyncAll,
    Truncate,
    Unlink,
    Write,
    is_entry_op,
)

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

    def entry_covered(self, i: int) -> bool:
        return i < max(self.dir_sync, self.sync_all)

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
        tail: list[Write | Truncate] = []
        modes: set[int] = set()
        for i, op in enumerate(self.ops):
            if isinstance(op, Create) and op.ino == ino:
                mode = op.mode
            elif isinstance(op, (Write, Truncate)) and op.ino == ino:
                if self.data_covered(i, ino):
                    assert not tail, "a covered data operation after an uncovered one"
                    content = _apply(content, op)
                else:
                    tail.append(op)
            elif isinstance(op, Chmod) and op.ino == ino:
                if self.mode_covered(i, ino):
                    assert not modes, "a covered chmod after an uncovered one"
                    mode = op.mode
                else:
                    modes.add(op.mode)
        assert mode >= 0, f"inode {ino} was never created"
        contents = {content}
        applied, zeroed = content, content
        for op in tail:
            applied = _apply(applied, op)
            zeroed = _apply(zeroed, op, zero=True)
            contents.update((applied, zeroed))  # the first m operations, with or without data
        modes.add(mode)
        return sorted(itertools.product(sorted(contents), sorted(modes)))


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
    covered = [i for i in entry_ops if prefix.entry_covered(i)]
    loose = [i for i in entry_ops if not prefix.entry_covered(i)]
    if len(loose) > MAX_LOOSE_ENTRY_OPS:
        raise TooManyStates(f"{len(loose)} uncovered directory operations at crash point {k}")
    images: dict[int, list[tuple[bytes, int]]] = {}
    states: set[State] = set()
    combinations = 0
    for chosen in itertools.product((False, True), repeat=len(loose)):
        persisted = sorted(covered + [i for i, keep in zip(loose, chosen, strict=True) if keep])
        entries = _entries(recording, prefix.ops, persisted)
        inodes = sorted(set(entries.values()))
        for ino in inodes:
            if ino not in images:
                images[ino] = prefix.images(ino)
        for pick in itertools.product(*(images[ino] for ino in inodes)):
            combinations += 1
            if combinations > MAX_COMBINATIONS:
                raise TooManyStates(f"more than {MAX_COMBINATIONS} combinations at crash point {k}")
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
    point = crash_point(synced, len(synced.ops))
    assert len(point.states) == 1, "everything synced, yet more than one state"
    return next(iter(point.states))


def scan(directory: str) -> State:
    """The state a real directory is in, in the same form."""
    files = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        with open(path, "rb") as file:
            files.append((name, file.read(), stat.S_IMODE(os.fstat(file.fileno()).st_mode)))
    return tuple(files)
