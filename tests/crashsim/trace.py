"""Record: run a writer under ``strace -f -y -xx`` and turn its calls into logical operations.

Only what happens in one directory (the target's) is recorded.  File descriptors are mapped to
inodes as the trace goes: an ``O_TMPFILE`` file is an inode without a name until ``linkat`` gives
it one, a name opened again is the inode the name holds *at that point of the trace*.  The bytes
of each ``write`` come out of the trace itself (``-xx -s`` large: every string in hex, in full).

Anything the model does not understand (a subdirectory, ``RENAME_EXCHANGE``, ``fallocate``, a
second process, an interrupted call...) raises :class:`Unmodeled` rather than being skipped: a
recorder that silently drops an operation would make every protocol look safe.  Trees of
directories (subdirectories, ``RENAME_EXCHANGE``, symlinks, removal of a tree) are recorded by
:mod:`.tree`.  What both recorders share (running the writer under strace, reading its arguments,
descriptors, offsets and writes, the data operations) is in :mod:`.recorder`; this module adds
what a call means in one directory of files.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from tests.crashsim import writers
from tests.crashsim.recorder import (
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
from tests.test_syscalls import Call

# ----- logical operations ---------------------------------------------------------------------


@dataclass(frozen=True)
class Create:
    """A new inode; also a directory entry ``name`` unless it is an unnamed ``O_TMPFILE``."""

    ino: int
    mode: int
    name: str | None


@dataclass(frozen=True)
class Chmod:
    ino: int
    mode: int


@dataclass(frozen=True)
class Link:
    ino: int
    name: str


@dataclass(frozen=True)
class Rename:
    src: str
    dst: str
    ino: int  # the inode the source name held
    noreplace: bool = False  # renameat2(RENAME_NOREPLACE): the same effect once it succeeded


@dataclass(frozen=True)
class Unlink:
    name: str


@dataclass(frozen=True)
class Fsync:
    ino: int
    data_only: bool  # fdatasync: the data and size, not the mode


@dataclass(frozen=True)
class FsyncDir:
    pass


Op = Union[Create, Write, Truncate, Chmod, Link, Rename, Unlink, Fsync, FsyncDir, SyncAll]  # noqa: UP007  # py3.10 runtime alias
ENTRY_OPS = (Link, Rename, Unlink)  # plus a Create with a name


def is_entry_op(op: Op) -> bool:
    """Whether ``op`` changes a directory entry (what only a directory fsync makes durable)."""
    return isinstance(op, ENTRY_OPS) or (isinstance(op, Create) and op.name is not None)


def describe(op: Op) -> str:
    if isinstance(op, Create):
        return f"create(i{op.ino}, {op.name or 'O_TMPFILE'}, {op.mode:#o})"
    if isinstance(op, Chmod):
        return f"fchmod(i{op.ino}, {op.mode:#o})"
    if isinstance(op, Link):
        return f"link(i{op.ino} -> {op.name})"
    if isinstance(op, Rename):
        return f"rename{'(NOREPLACE)' if op.noreplace else ''}({op.src} -> {op.dst})"
    if isinstance(op, Unlink):
        return f"unlink({op.name})"
    if isinstance(op, Fsync):
        return f"{'fdatasync' if op.data_only else 'fsync'}(i{op.ino})"
    if isinstance(op, FsyncDir):
        return "fsync(dir)"
    return describe_shared(op)  # write, truncate, sync


@dataclass
class Recording:
    """A writer's logical operations on one directory, from a durable starting state."""

    directory: str
    initial: dict[str, int]  # name -> inode, all durable
    inodes: dict[int, tuple[bytes, int]]  # initial inodes: (content, mode)
    ops: list[Op] = field(default_factory=list)
    begun_at: int = -1  # ops completed when the write call began
    returned_at: int = -1  # ops completed when the write call returned

    def listing(self) -> list[str]:
        return [describe(op) for op in self.ops]


# ----- the recorder ---------------------------------------------------------------------------


class _Recorder(Recorder):
    def __init__(self, directory: str, markers: str, umask: int) -> None:
        super().__init__(directory, markers)
        self.umask = umask
        self.entries: dict[str, int] = {}
        self.inodes: dict[int, tuple[bytes, int]] = {}
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            st = os.lstat(path)
            if not os.path.isfile(path) or os.path.islink(path):
                raise Unmodeled(f"only regular files may be in the traced directory: {name!r}")
            ino = len(self.inodes)
            self.inodes[ino] = (Path(path).read_bytes(), st.st_mode & 0o7777)
            self.entries[name] = ino
            self.sizes[ino] = st.st_size
        self.recording: Recording = Recording(directory, dict(self.entries), dict(self.inodes))
        self.next_ino = len(self.inodes)

    # -- helpers

    def inode(self, name: str, call: Call) -> int:
        if name not in self.entries:
            raise Unmodeled(f"a name the recorder does not know: {name!r} in {call}")
        return self.entries[name]

    def path(self, pid: int, dirfd: str | None, arg: str) -> str:
        """An absolute, normalized path for a path argument (relative to ``dirfd``, or the cwd)."""
        path = os.fsdecode(string_argument(arg))
        if not os.path.isabs(path):
            if dirfd is None:
                raise Unmodeled(f"relative path without a directory descriptor: {path!r}")
            description, base = self.fd(pid, dirfd)
            if description is not None and description.directory:
                base = self.directory
            if base is None:
                raise Unmodeled(f"no path for directory descriptor {dirfd!r} (is strace -y on?)")
            path = os.path.join(base, path)
        return os.path.normpath(path)

    def name(self, path: str) -> str | None:
        """The entry name if ``path`` is in the traced directory; None if it is elsewhere."""
        if path == self.directory:
            raise Unmodeled(f"an operation on the traced directory itself, by path: {path!r}")
        if path.startswith(self.directory + os.sep):
            parent, name = os.path.split(path)
            if parent != self.directory:
                raise Unmodeled(f"a path below the traced directory: {path!r}")
            return name
        return None

    def new_inode(self, mode: int, name: str | None) -> int:
        ino = self.next_ino
        self.next_ino += 1
        self.sizes[ino] = 0
        self.emit(Create(ino, mode & ~self.umask & 0o7777, name))
        return ino

    # -- the calls (close, dup, write, sync and the refused copies: Recorder.shared)

    def handle(self, call: Call) -> None:
        name, args, pid = call.name, call.args, call.pid
        ok = not call.result.startswith("-")
        if self.shared(call):
            return
        if name in ("openat", "open", "creat"):
            dirfd, rest = (args[0], args[1:]) if name == "openat" else ("AT_FDCWD", args)
            path = self.path(pid, dirfd, rest[0])
            if path in (os.path.join(self.markers, writers.BEGIN), os.path.join(self.markers, writers.RETURNED)):
                which = "begun_at" if path.endswith(writers.BEGIN) else "returned_at"
                setattr(self.recording, which, len(self.recording.ops))
                return
            if not ok:
                return
            flags = flag_names(rest[1]) if name != "creat" else {"O_CREAT", "O_WRONLY", "O_TRUNC"}
            mode = int(rest[-1], 8) if rest[-1].startswith("0") and len(rest) > 1 else 0
            self.bind(pid, call.result, self.open(path, flags, mode, call))
        elif name == "lseek":
            description = self.file(pid, args[0], call)
            if description is not None and ok:
                description.offset = int(call.result)
        elif name in ("ftruncate", "truncate"):
            if name == "ftruncate":
                description = self.file(pid, args[0], call)
                ino = None if description is None else description.ino
            else:
                entry = self.name(self.path(pid, None, args[0]))
                ino = None if entry is None else self.inode(entry, call)
            if ino is not None and ok:
                self.sizes[ino] = int(args[1])
                self.emit(Truncate(ino, int(args[1])))
        elif name == "fchmod":
            description = self.file(pid, args[0], call)
            if description is not None and ok:
                assert description.ino is not None
                self.emit(Chmod(description.ino, int(args[1], 8)))
        elif name in ("fchmodat", "fchmodat2", "chmod"):
            dirfd, rest = (args[0], args[1:]) if name != "chmod" else ("AT_FDCWD", args)
            entry = self.name(self.path(pid, dirfd, rest[0]))
            if entry is not None and ok:
                self.emit(Chmod(self.inode(entry, call), int(rest[1], 8)))
        elif name in ("fsync", "fdatasync"):
            description, _ = self.fd(pid, args[0])
            if description is not None and ok:
                if description.directory:
                    self.emit(FsyncDir())
                else:
                    self.emit(Fsync(description.ino, data_only=name == "fdatasync"))
        elif name in ("rename", "renameat", "renameat2"):
            if name == "rename":
                src = self.path(pid, None, args[0])
                dst = self.path(pid, None, args[1])
            else:
                src = self.path(pid, args[0], args[1])
                dst = self.path(pid, args[2], args[3])
            if name == "renameat2" and "RENAME_EXCHANGE" in args[4]:
                raise Unmodeled(f"RENAME_EXCHANGE: {call}")
            old, new = self.name(src), self.name(dst)
            if (old is None) != (new is None):
                raise Unmodeled(f"a rename into or out of the traced directory: {call}")
            if old is not None and new is not None and ok:
                ino = self.inode(old, call)
                del self.entries[old]
                self.entries[new] = ino
                self.emit(Rename(old, new, ino, noreplace=name == "renameat2" and "RENAME_NOREPLACE" in args[4]))
        elif name in ("link", "linkat"):
            if name == "link":
                src_path, dst_path, flags = self.path(pid, None, args[0]), self.path(pid, None, args[1]), set()
                src_fd: str | None = None
            else:
                src_fd, flags = args[0], flag_names(args[4])
                dst_path = self.path(pid, args[2], args[3])
                src_path = "" if args[1] == '""' else self.path(pid, args[0], args[1])
            new = self.name(dst_path)
            if new is None or not ok:
                return
            proc = re.fullmatch(r"/proc/(?:self|\d+)/fd/(\d+)", src_path)
            if proc is not None and "AT_SYMLINK_FOLLOW" in flags:
                description = self.fds.setdefault(pid, {}).get(int(proc[1]))
            elif src_path == "" and "AT_EMPTY_PATH" in flags:
                description = self.fd(pid, src_fd or "")[0]
            else:
                old = self.name(src_path)
                description = None if old is None else Description(self.inode(old, call))
            if description is None or description.ino is None:
                raise Unmodeled(f"a link from outside the traced directory: {call}")
            self.entries[new] = description.ino
            self.emit(Link(description.ino, new))
        elif name in ("unlink", "unlinkat"):
            dirfd, path_arg = ("AT_FDCWD", args[0]) if name == "unlink" else (args[0], args[1])
            entry = self.name(self.path(pid, dirfd, path_arg))
            if entry is not None and ok:
                if name == "unlinkat" and "AT_REMOVEDIR" in args[2]:
                    raise Unmodeled(f"rmdir in the traced directory: {call}")
                self.inode(entry, call)
                del self.entries[entry]
                self.emit(Unlink(entry))
        elif name in ("symlink", "symlinkat", "mkdir", "mkdirat", "rmdir"):
            paths = [self.path(pid, "AT_FDCWD", arg) for arg in args if arg.startswith('"')]
            if any(self.name(path) is not None for path in paths):
                raise Unmodeled(f"{name} in the traced directory: {call}")

    def open(self, path: str, flags: set[str], mode: int, call: Call) -> Description | None:
        if path == self.directory:
            if "O_TMPFILE" in flags:
                return Description(self.new_inode(mode, None))
            return Description(None, directory=True)
        entry = self.name(path)
        if entry is None:
            return None
        if "O_TMPFILE" in flags:
            raise Unmodeled(f"O_TMPFILE below the traced directory: {call}")
        writable = bool(flags & {"O_WRONLY", "O_RDWR"})
        if entry in self.entries:
            if "O_CREAT" in flags and "O_EXCL" in flags:
                raise Unmodeled(f"O_EXCL open of an existing name succeeded: {call}")
            ino = self.entries[entry]
            if "O_TRUNC" in flags and writable:
                self.sizes[ino] = 0
                self.emit(Truncate(ino, 0))
        else:
            if "O_CREAT" not in flags:
                raise Unmodeled(f"opened a name the recorder does not know: {call}")
            ino = self.new_inode(mode, entry)
            self.entries[entry] = ino
        return Description(ino, append="O_APPEND" in flags)


def record(
    directory: Path, target: Path, protocol: str, *options: str, variant: str | None = None, timeout: float = 120
) -> Recording:
    """Run a writer (see :mod:`.writers`) on ``target`` under strace; the directory's current
    content is the durable starting state."""
    make = functools.partial(_Recorder, umask=writers.UMASK)
    recording = run_writer(make, directory, target.name, protocol, options, variant=variant, timeout=timeout).recording
    if recording.begun_at < 0 or recording.returned_at < 0:
        raise Unmodeled("the begin/returned markers are missing from the trace")
    if recording.begun_at != 0:
        raise Unmodeled(f"operations before the call began: {recording.listing()[: recording.begun_at]}")
    return recording
