"""The crash-state explorer for directory trees: the multi-file protocol of ``atomic_directory``
and ``CheckpointStore``.

The flat recorder of :mod:`.trace` follows one directory of files.  A directory publish needs a
tree: a staging directory with subdirectories is created, filled, flushed level by level,
renamed into place (``renameat2`` ``RENAME_NOREPLACE`` or ``RENAME_EXCHANGE``), and the replaced
tree is removed file by file; a checkpoint store also makes and renames symlinks.  This module
records those operations below one traced directory (inodes, not paths: a directory keeps its
inode when it is renamed), and enumerates the crash states with the persistence model of
:mod:`.model`, extended to many directories:

* each directory-entry operation (create, mkdir, symlink, rename, exchange, unlink, rmdir) belongs
  to the directory it changes, and only an fsync of *that* directory (or ``sync``) covers it;
  uncovered ones persist in any subset, applied in program order; directories are independent,
  so a file's entry may persist while its parent's own entry does not (then it is unreachable);
* file data as in :mod:`.model`: an uncovered write persists as a prefix cut at any write, with
  or without its data (zeros); a symlink's target is part of its creation.

File modes are not modelled here (the directory oracles do not read them); a ``chmod`` of a
traced file raises :class:`~.recorder.Unmodeled`, as does anything else the model cannot
represent.

Only what a reader can see is kept of each state (``project``): the target's subtree for
``atomic_directory``, the names not starting with "." for a store (its readers never open the
hidden staging directories and temp links).  Identical projections are merged, then each is
written to a scratch directory and judged with the library's own readers.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from tests.crashsim import writers
from tests.crashsim.model import data_images, entry_subsets, one_more, only_state
from tests.crashsim.recorder import (
    ROOT,
    Description,
    Recorder,
    SyncAll,
    Truncate,
    Unmodeled,
    Write,
    describe_shared,
    flag_names,
    run_writer,
    string_argument,
)
from tests.crashsim.replay import Counts, after, replayed
from tests.test_syscalls import Call

ROOT_INO = 0  # the traced directory


# ----- logical operations on a tree -----------------------------------------------------------


@dataclass(frozen=True)
class Make:
    """A new inode ``ino``, named ``name`` in directory ``parent``."""

    parent: int
    name: str
    ino: int


@dataclass(frozen=True)
class MakeFile(Make):
    pass


@dataclass(frozen=True)
class MakeDir(Make):
    pass


@dataclass(frozen=True)
class MakeSymlink(Make):
    points_to: str


@dataclass(frozen=True)
class Move:
    """rename/renameat2 inside one directory; ``exchange``: RENAME_EXCHANGE swaps the two."""

    parent: int
    src: str
    dst: str
    ino: int  # what the source name held
    other: int | None = None  # what the destination held (exchange only)
    exchange: bool = False
    noreplace: bool = False


@dataclass(frozen=True)
class Remove:
    """unlink or rmdir of a name."""

    parent: int
    name: str
    directory: bool


@dataclass(frozen=True)
class SyncFile:
    ino: int


@dataclass(frozen=True)
class SyncDir:
    ino: int


TreeOp = Union[MakeFile, MakeDir, MakeSymlink, Move, Remove, Write, Truncate, SyncFile, SyncDir, SyncAll]  # noqa: UP007
ENTRY_OPS = (Make, Move, Remove)


def describe(op: TreeOp) -> str:
    if isinstance(op, MakeFile):
        return f"create(d{op.parent}/{op.name} = i{op.ino})"
    if isinstance(op, MakeDir):
        return f"mkdir(d{op.parent}/{op.name} = d{op.ino})"
    if isinstance(op, MakeSymlink):
        return f"symlink(d{op.parent}/{op.name} -> {op.points_to})"
    if isinstance(op, Move):
        kind = "EXCHANGE" if op.exchange else "NOREPLACE" if op.noreplace else ""
        return f"rename{f'({kind})' if kind else ''}(d{op.parent}: {op.src} -> {op.dst})"
    if isinstance(op, Remove):
        return f"{'rmdir' if op.directory else 'unlink'}(d{op.parent}/{op.name})"
    if isinstance(op, SyncFile):
        return f"fsync(i{op.ino})"
    if isinstance(op, SyncDir):
        return f"fsync(d{op.ino})"
    return describe_shared(op)  # write, truncate, sync


@dataclass
class TreeRecording:
    directory: str
    ops: list[TreeOp] = field(default_factory=list)
    marks: dict[str, int] = field(default_factory=dict)  # marker name -> ops completed then

    def listing(self) -> list[str]:
        return [describe(op) for op in self.ops]


# ----- the recorder ---------------------------------------------------------------------------


class _TreeRecorder(Recorder):
    scope = "tree"

    def __init__(self, directory: str, markers: str) -> None:
        if os.listdir(directory):
            raise Unmodeled(f"the traced directory must start empty: {directory!r}")
        super().__init__(directory, markers)
        self.recording: TreeRecording = TreeRecording(directory)
        self.children: dict[int, dict[str, int]] = {ROOT_INO: {}}  # directory inode -> entries
        self.next_ino = ROOT_INO + 1

    def new_ino(self) -> int:
        self.next_ino += 1
        return self.next_ino - 1

    def locate(self, pid: int, dirfd: str, arg: str) -> tuple[int, str] | None:
        """``(parent directory inode, name)`` of a path argument, or None outside the tree."""
        path = os.fsdecode(string_argument(arg))
        if not os.path.isabs(path):
            description, base = self.fd(pid, dirfd)
            if description is not None:
                if not description.directory:
                    raise Unmodeled(f"a path relative to a file descriptor: {path!r}")
                return self.walk(description.ino, path)
            if base is None:
                if dirfd == "AT_FDCWD":
                    base = str(ROOT)  # the writer's working directory
                else:
                    raise Unmodeled(f"no path for directory descriptor {dirfd!r}")
            path = os.path.join(base, path)
        path = os.path.normpath(path)
        if path == self.directory:
            raise Unmodeled("an operation on the traced directory itself, by path")
        if not path.startswith(self.directory + os.sep):
            return None
        return self.walk(ROOT_INO, os.path.relpath(path, self.directory))

    def walk(self, start: int, relative: str) -> tuple[int, str]:
        *parts, name = os.path.normpath(relative).split(os.sep)
        ino = start
        for part in parts:
            if part in ("", ".", ".."):
                raise Unmodeled(f"an unusual path component: {relative!r}")
            child = self.children.get(ino, {}).get(part)
            if child is None or child not in self.children:
                raise Unmodeled(f"a path through a name that is no directory here: {relative!r}")
            ino = child
        return ino, name

    def handle(self, call: Call) -> None:
        name, args, pid = call.name, call.args, call.pid
        ok = not call.result.startswith("-")
        if name in ("openat", "open", "creat"):
            dirfd, rest = (args[0], args[1:]) if name == "openat" else ("AT_FDCWD", args)
            raw = os.fsdecode(string_argument(rest[0]))
            for marker in (writers.BEGIN, writers.PUBLISHED, writers.RETURNED):
                if raw == os.path.join(self.markers, marker):
                    self.recording.marks[marker] = len(self.recording.ops)
                    return
            if not ok:
                return
            flags = flag_names(rest[1]) if name != "creat" else {"O_CREAT", "O_WRONLY", "O_TRUNC"}
            if os.path.normpath(os.path.join(str(ROOT), raw)) == self.directory:
                self.bind(pid, call.result, Description(ROOT_INO, directory=True))
                return
            where = self.locate(pid, dirfd, rest[0])
            self.bind(pid, call.result, None if where is None else self.open(where, flags, call))
        elif not ok:
            return  # a failed call changed nothing (mkdir of an existing directory...)
        elif self.shared(call):
            return  # close, dup, write, sync and the refused copies
        elif name == "lseek":
            description = self.fd(pid, args[0])[0]
            if description is not None and not description.directory and ok:
                description.offset = int(call.result)
        elif name in ("ftruncate", "truncate", "fchmod", "fchmodat", "fchmodat2", "chmod"):
            description = self.fd(pid, args[0])[0] if name.startswith("f") and name != "fchmodat" else None
            if description is not None and ok:
                raise Unmodeled(f"{name} of a traced file: {call}")
            if name in ("truncate", "chmod", "fchmodat", "fchmodat2") and ok:
                dirfd, path_arg = (args[0], args[1]) if name.startswith("fchmodat") else ("AT_FDCWD", args[0])
                if self.locate(pid, dirfd, path_arg) is not None:
                    raise Unmodeled(f"{name} of a traced file: {call}")
        elif name in ("fsync", "fdatasync"):
            description = self.fd(pid, args[0])[0]
            if description is not None and ok:
                if description.directory:
                    self.emit(SyncDir(description.ino))
                elif name == "fdatasync":
                    raise Unmodeled(f"fdatasync in a tree (modes are not modelled): {call}")
                else:
                    self.emit(SyncFile(description.ino))
        elif name in ("mkdir", "mkdirat"):
            dirfd, path_arg = (args[0], args[1]) if name == "mkdirat" else ("AT_FDCWD", args[0])
            where = self.locate(pid, dirfd, path_arg)
            if where is not None and ok:
                parent, entry = where
                ino = self.new_ino()
                self.children[parent][entry] = ino
                self.children[ino] = {}
                self.emit(MakeDir(parent, entry, ino))
        elif name in ("symlink", "symlinkat"):
            points_to = os.fsdecode(string_argument(args[0]))
            dirfd, path_arg = (args[1], args[2]) if name == "symlinkat" else ("AT_FDCWD", args[1])
            where = self.locate(pid, dirfd, path_arg)
            if where is not None and ok:
                parent, entry = where
                ino = self.new_ino()
                self.children[parent][entry] = ino
                self.emit(MakeSymlink(parent, entry, ino, points_to))
        elif name in ("rename", "renameat", "renameat2"):
            if name == "rename":
                src, dst, how = self.locate(pid, "AT_FDCWD", args[0]), self.locate(pid, "AT_FDCWD", args[1]), ""
            else:
                src, dst = self.locate(pid, args[0], args[1]), self.locate(pid, args[2], args[3])
                how = args[4] if name == "renameat2" else ""
            if (src is None) != (dst is None):
                raise Unmodeled(f"a rename into or out of the traced tree: {call}")
            if src is None or dst is None or not ok:
                return
            if src[0] != dst[0]:
                raise Unmodeled(f"a rename between two directories of the tree: {call}")
            parent, entries = src[0], self.children[src[0]]
            ino = entries[src[1]]
            if "RENAME_EXCHANGE" in how:
                other = entries[dst[1]]
                entries[src[1]], entries[dst[1]] = other, ino
                self.emit(Move(parent, src[1], dst[1], ino, other, exchange=True))
            else:
                replaced = entries.get(dst[1])
                if replaced is not None and replaced in self.children:
                    raise Unmodeled(f"a rename over a directory: {call}")
                del entries[src[1]]
                entries[dst[1]] = ino
                self.emit(Move(parent, src[1], dst[1], ino, noreplace="RENAME_NOREPLACE" in how))
        elif name in ("unlink", "unlinkat", "rmdir"):
            dirfd, path_arg = ("AT_FDCWD", args[0]) if name != "unlinkat" else (args[0], args[1])
            where = self.locate(pid, dirfd, path_arg)
            if where is not None and ok:
                parent, entry = where
                directory = name == "rmdir" or (name == "unlinkat" and "AT_REMOVEDIR" in args[2])
                ino = self.children[parent].pop(entry)
                if directory and self.children.pop(ino):
                    raise Unmodeled(f"rmdir of a directory the recorder thinks is not empty: {call}")
                self.emit(Remove(parent, entry, directory))
        elif name in ("link", "linkat"):
            paths = [args[0], args[1]] if name == "link" else [args[3]]
            dirfds = ["AT_FDCWD", "AT_FDCWD"] if name == "link" else [args[2]]
            if any(self.locate(pid, d, p) is not None for d, p in zip(dirfds, paths, strict=True)):
                raise Unmodeled(f"a hard link in the traced tree: {call}")

    def open(self, where: tuple[int, str], flags: set[str], call: Call) -> Description:
        parent, entry = where
        if "O_TMPFILE" in flags:
            raise Unmodeled(f"O_TMPFILE in the traced tree: {call}")
        entries = self.children.get(parent)
        if entries is None:
            raise Unmodeled(f"an open below a non-directory: {call}")
        if entry in entries:
            ino = entries[entry]
            if ino in self.children:
                return Description(ino, directory=True)
            if "O_TRUNC" in flags and flags & {"O_WRONLY", "O_RDWR"}:
                raise Unmodeled(f"O_TRUNC of an existing traced file: {call}")
            return Description(ino, directory=False, append="O_APPEND" in flags)
        if "O_CREAT" not in flags:
            raise Unmodeled(f"opened a name the recorder does not know: {call}")
        ino = self.new_ino()
        entries[entry] = ino
        self.sizes[ino] = 0
        self.emit(MakeFile(parent, entry, ino))
        return Description(ino, directory=False, append="O_APPEND" in flags)


def record_tree(directory: Path, protocol: str, *options: str, timeout: float = 120) -> TreeRecording:
    """Run a tree writer of :mod:`.writers` under strace in the (empty) ``directory``."""
    recorder = run_writer(_TreeRecorder, directory, "target", protocol, options, variant=None, timeout=timeout)
    recording = recorder.recording
    if set(recording.marks) != {writers.BEGIN, writers.PUBLISHED, writers.RETURNED}:
        raise Unmodeled(f"markers missing from the trace: {recording.marks}")
    if recording.marks[writers.BEGIN] != 0:
        raise Unmodeled(f"operations before the call began: {recording.listing()[: recording.marks[writers.BEGIN]]}")
    return recording


# ----- the model ------------------------------------------------------------------------------

# A tree as a reader sees it: ("dir", ((name, node), ...)), ("file", content), ("link", target).
Node = tuple[str, object]
# Which names of the traced directory a state keeps (what the oracle's reader can see).
Projection = Callable[[str], bool]


@dataclass
class TreePoint:
    index: int
    combinations: int
    states: set[Node]


class _Point:
    """One crash point: the possible entries of each directory, the possible content of each
    file, and every tree they combine into."""

    def __init__(self, recording: TreeRecording, k: int) -> None:
        self.k = k
        self.ops = ops = recording.ops[:k]
        sync_all = max((i for i, op in enumerate(ops) if isinstance(op, SyncAll)), default=-1)
        self.sync_all = sync_all
        dir_sync: dict[int, int] = {}
        self.file_sync: dict[int, int] = {}
        self.kinds: dict[int, tuple[str, object]] = {ROOT_INO: ("dir", None)}
        by_directory: dict[int, list[int]] = {}
        for i, op in enumerate(ops):
            if isinstance(op, SyncDir):
                dir_sync[op.ino] = i
            elif isinstance(op, SyncFile):
                self.file_sync[op.ino] = i
            elif isinstance(op, MakeDir):
                self.kinds[op.ino] = ("dir", None)
            elif isinstance(op, MakeFile):
                self.kinds[op.ino] = ("file", None)
            elif isinstance(op, MakeSymlink):
                self.kinds[op.ino] = ("link", op.points_to)
            if isinstance(op, ENTRY_OPS):
                by_directory.setdefault(op.parent, []).append(i)
        self.dir_sync = dir_sync
        self.by_directory = by_directory
        self.combinations = 0
        self.nodes: dict[int, set[Node]] = {}

    def listings(self, ino: int) -> set[tuple[tuple[str, int], ...]]:
        """Every set of entries directory ``ino`` may hold: its covered operations, plus any
        subset of its uncovered ones, in program order.  A directory's entries depend on its own
        operations only, so each directory is enumerated on its own."""
        indices = self.by_directory.get(ino, [])
        barrier = max(self.dir_sync.get(ino, -1), self.sync_all)
        found = set()
        for persisted in entry_subsets(indices, barrier, f"operations in d{ino} at crash point {self.k}"):
            self.combinations += 1
            entries: dict[str, int] = {}
            for i in persisted:
                op = self.ops[i]
                if isinstance(op, Make):
                    entries[op.name] = op.ino
                elif isinstance(op, Move):
                    if op.exchange:
                        assert op.other is not None
                        entries[op.src], entries[op.dst] = op.other, op.ino
                    else:
                        entries.pop(op.src, None)
                        entries[op.dst] = op.ino
                elif isinstance(op, Remove):
                    entries.pop(op.name, None)
            found.add(tuple(sorted(entries.items())))
        return found

    def trees(self, ino: int, keep: Projection | None = None) -> set[Node]:
        """Every tree the inode may be on disk (for the root: only the names ``keep`` keeps)."""
        if keep is None and ino in self.nodes:
            return self.nodes[ino]
        kind, extra = self.kinds[ino]
        result: set[Node]
        if kind == "file":
            barrier = max(self.file_sync.get(ino, -1), self.sync_all)
            result = {("file", content) for content in data_images(b"", self.ops, ino, lambda i: i < barrier)}
        elif kind == "link":
            result = {("link", extra)}
        else:
            result = set()
            for listing in self.listings(ino):
                names = [(name, child) for name, child in listing if keep is None or keep(name)]
                options = [sorted(self.trees(child), key=repr) for _, child in names]
                for pick in itertools.product(*options):
                    self.combinations = one_more(self.combinations, self.k)
                    result.add(("dir", tuple((name, node) for (name, _), node in zip(names, pick, strict=True))))
        if keep is None:
            self.nodes[ino] = result
        return result


def tree_point(recording: TreeRecording, k: int, project: Projection) -> TreePoint:
    """Every state (of the traced directory, the names ``project`` keeps) a power loss after
    ``ops[:k]`` may leave on disk."""
    point = _Point(recording, k)
    states = point.trees(ROOT_INO, project)
    return TreePoint(k, point.combinations, states)


def subtree(name: str) -> Projection:
    """Keep one name: what a reader of ``name`` in the traced directory sees."""
    return lambda entry: entry == name


def visible(entry: str) -> bool:
    """Keep the names that are not hidden (a store's readers never open its staging
    directories and temp links)."""
    return not entry.startswith(".")


def project_tree(node: Node, project: Projection) -> Node:
    """A scanned tree of the traced directory, cut down like the states."""
    assert node[0] == "dir"
    assert isinstance(node[1], tuple)
    return ("dir", tuple((name, child) for name, child in node[1] if project(name)))


def final_tree(recording: TreeRecording, project: Projection) -> Node:
    synced = TreeRecording(recording.directory, [*recording.ops, SyncAll()], dict(recording.marks))
    return only_state(tree_point(synced, len(synced.ops), project).states)


def scan_tree(path: str) -> Node | None:
    """A real path in the same form (None if it does not exist)."""
    if os.path.islink(path):
        return ("link", os.readlink(path))
    if os.path.isdir(path):
        return ("dir", tuple(sorted((name, scan_tree(os.path.join(path, name))) for name in os.listdir(path))))
    if os.path.isfile(path):
        return ("file", Path(path).read_bytes())
    return None


def materialize_tree(node: Node, path: Path) -> None:
    kind, body = node
    if kind == "dir":
        assert isinstance(body, tuple)
        path.mkdir()
        for name, child in body:
            materialize_tree(child, path / name)
    elif kind == "file":
        assert isinstance(body, bytes)
        path.write_bytes(body)
    else:
        assert isinstance(body, str)
        path.symlink_to(body)


# ----- exploring ------------------------------------------------------------------------------


@dataclass
class TreeExploration(Counts):
    seen: set[str] = field(default_factory=set)  # what the reader found, in every violation

    def saw(self, oracle: str, found: str) -> None:
        self.seen.add(found)


# A reader: given the scratch copy of the traced directory, what it found ("old", "new",
# "missing", or a description of anything else).
Reader = Callable[[Path], str]


def explore_tree(
    recording: TreeRecording, project: Projection, reader: Reader, label: str, scratch: Path
) -> TreeExploration:
    """Judge every crash state: ``a`` -- the reader finds the old or the new generation, or
    nothing only before the first publish returned; ``b`` -- after the call returned, the new one.
    Each distinct state is written out as the scratch directory, for ``reader`` to judge."""
    result = TreeExploration(label, len(recording.ops), violations={"a": 0, "b": 0})
    published = recording.marks[writers.PUBLISHED]
    returned = recording.marks[writers.RETURNED]

    def replay(state: Node) -> str:
        if scratch.exists():
            shutil.rmtree(scratch)
        materialize_tree(state, scratch)
        return reader(scratch)

    points = (tree_point(recording, k, project) for k in range(len(recording.ops) + 1))
    for point, _, found in replayed(result, points, replay, scratch, repr):
        k = point.index
        failed = []
        if found not in ("old", "new", "missing") or (found == "missing" and k >= published):
            failed.append("a")
        if k >= returned and found != "new":
            failed.append("b")
        for oracle in failed:
            if result.violated(oracle, found):
                result.examples.append(f"[{oracle}] crash after #{k} {after(describe, recording.ops, k)}: {found}")
    return result
