"""Record: run a writer under ``strace -f -y -xx`` and turn its calls into logical operations.

Only what happens in one directory (the target's) is recorded.  File descriptors are mapped to
inodes as the trace goes: an ``O_TMPFILE`` file is an inode without a name until ``linkat`` gives
it one, a name opened again is the inode the name holds *at that point of the trace*.  The bytes
of each ``write`` come out of the trace itself (``-xx -s`` large: every string in hex, in full).

Anything the model does not understand (a subdirectory, ``RENAME_EXCHANGE``, ``fallocate``, a
second process, an interrupted call...) raises :class:`Unmodeled` rather than being skipped: a
recorder that silently drops an operation would make every protocol look safe.  Trees of
directories (subdirectories, ``RENAME_EXCHANGE``, symlinks, removal of a tree) are recorded by
:mod:`.tree`, which reuses this module's parsing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from tests.crashsim import writers
from tests.test_syscalls import Call, _parse

ROOT = Path(__file__).resolve().parents[2]

# Every call that can change a directory or a file's content, size, mode or durability, plus what
# moves a descriptor (dup, lseek) and what the model refuses (fallocate, mkdir...).  "?" lets a
# name that this architecture lacks (open, creat, rename... on arm64) pass silently.
TRACED = [
    *("openat", "?open", "?creat", "close", "dup", "?dup2", "dup3", "fcntl", "lseek"),
    *("write", "pwrite64", "writev", "pwritev", "pwritev2", "ftruncate", "truncate", "fallocate"),
    *("copy_file_range", "sendfile", "splice", "fchmod", "fchmodat", "?fchmodat2", "?chmod"),
    *("fsync", "fdatasync", "sync_file_range", "sync", "syncfs"),
    *("?rename", "renameat", "renameat2", "?link", "linkat", "?unlink", "unlinkat"),
    *("?symlink", "symlinkat", "?mkdir", "mkdirat", "?rmdir"),
]


class Unmodeled(AssertionError):
    """The trace holds something the persistence model cannot represent."""


class StraceUnavailable(RuntimeError):
    """strace is missing, or may not trace here (ptrace refused)."""


# ----- logical operations ---------------------------------------------------------------------


@dataclass(frozen=True)
class Create:
    """A new inode; also a directory entry ``name`` unless it is an unnamed ``O_TMPFILE``."""

    ino: int
    mode: int
    name: str | None


@dataclass(frozen=True)
class Write:
    ino: int
    offset: int
    data: bytes


@dataclass(frozen=True)
class Truncate:
    ino: int
    size: int


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


@dataclass(frozen=True)
class SyncAll:
    """sync(2) / syncfs(2): everything before it is on disk."""


Op = Union[Create, Write, Truncate, Chmod, Link, Rename, Unlink, Fsync, FsyncDir, SyncAll]  # noqa: UP007  # py3.10 runtime alias
ENTRY_OPS = (Link, Rename, Unlink)  # plus a Create with a name


def is_entry_op(op: Op) -> bool:
    """Whether ``op`` changes a directory entry (what only a directory fsync makes durable)."""
    return isinstance(op, ENTRY_OPS) or (isinstance(op, Create) and op.name is not None)


def describe(op: Op) -> str:
    if isinstance(op, Create):
        return f"create(i{op.ino}, {op.name or 'O_TMPFILE'}, {op.mode:#o})"
    if isinstance(op, Write):
        return f"write(i{op.ino}, @{op.offset}, {len(op.data)} B)"
    if isinstance(op, Truncate):
        return f"truncate(i{op.ino}, {op.size})"
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
    return "sync()"


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


# ----- strace output --------------------------------------------------------------------------

_HEX = r"(?:\\x[0-9a-f]{2})*"
_STRING = re.compile(rf'^"({_HEX})"(\.\.\.)?$')
_FD = re.compile(r"^(-?\d+|AT_FDCWD)(?:<(.*)>)?(?:\(deleted\))?$")
_PATH = re.compile(rf"^{_HEX}$")
_IOV_BASE = re.compile(rf'iov_base="({_HEX})"(\.\.\.)?')
_RESULT = re.compile(r"^(-?\d+)")


def _unhex(text: str) -> bytes:
    return bytes.fromhex(text.replace("\\x", ""))


def _string(arg: str) -> bytes:
    match = _STRING.match(arg)
    if match is None:
        raise Unmodeled(f"not a hex string argument: {arg!r}")
    if match[2]:
        raise Unmodeled("strace cut a string short (raise -s)")
    return _unhex(match[1])


def _flags(arg: str) -> set[str]:
    return set(arg.split("|"))


@dataclass
class _Description:
    """An open file description: the directory itself, or a file (an inode) with its offset."""

    ino: int | None  # None: the traced directory
    offset: int = 0
    append: bool = False


class _Recorder:
    def __init__(self, directory: str, markers: str, umask: int) -> None:
        self.directory = directory
        self.markers = markers
        self.umask = umask
        self.entries: dict[str, int] = {}
        self.sizes: dict[int, int] = {}
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
        self.recording = Recording(directory, dict(self.entries), dict(self.inodes))
        self.next_ino = len(self.inodes)
        self.fds: dict[int, dict[int, _Description]] = {}

    # -- helpers

    def inode(self, name: str, call: Call) -> int:
        if name not in self.entries:
            raise Unmodeled(f"a name the recorder does not know: {name!r} in {call}")
        return self.entries[name]

    def emit(self, op: Op) -> None:
        self.recording.ops.append(op)

    def fd(self, pid: int, arg: str) -> tuple[_Description | None, str | None]:
        """The description behind an fd argument (None if not ours) and strace's path for it."""
        match = _FD.match(arg)
        if match is None:
            raise Unmodeled(f"not a file descriptor argument: {arg!r}")
        # -y names every descriptor; -xx prints the name in hex (a socket's or pipe's too).
        path = os.fsdecode(_unhex(match[2])) if match[2] is not None and _PATH.match(match[2]) else None
        if match[1] == "AT_FDCWD":
            return None, path
        return self.fds.setdefault(pid, {}).get(int(match[1])), path

    def path(self, pid: int, dirfd: str | None, arg: str) -> str:
        """An absolute, normalized path for a path argument (relative to ``dirfd``, or the cwd)."""
        path = os.fsdecode(_string(arg))
        if not os.path.isabs(path):
            if dirfd is None:
                raise Unmodeled(f"relative path without a directory descriptor: {path!r}")
            description, base = self.fd(pid, dirfd)
            if description is not None and description.ino is None:
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

    def file(self, pid: int, arg: str, call: Call) -> _Description | None:
        description, _ = self.fd(pid, arg)
        if description is not None and description.ino is None:
            raise Unmodeled(f"{call.name} on the directory descriptor: {call}")
        return description

    def bind(self, pid: int, result: str, description: _Description | None) -> None:
        fd = int(_RESULT.match(result)[1])  # type: ignore[index]
        table = self.fds.setdefault(pid, {})
        if description is None:
            table.pop(fd, None)
        else:
            table[fd] = description

    def new_inode(self, mode: int, name: str | None) -> int:
        ino = self.next_ino
        self.next_ino += 1
        self.sizes[ino] = 0
        self.emit(Create(ino, mode & ~self.umask & 0o7777, name))
        return ino

    def write(self, description: _Description, data: bytes, offset: int | None) -> None:
        assert description.ino is not None
        ino = description.ino
        if offset is None:
            if description.append:
                description.offset = self.sizes[ino]
            offset = description.offset
            description.offset += len(data)
        if data:
            self.emit(Write(ino, offset, data))
            self.sizes[ino] = max(self.sizes[ino], offset + len(data))

    # -- the calls

    def handle(self, call: Call) -> None:
        name, args, pid = call.name, call.args, call.pid
        ok = not call.result.startswith("-")
        if name in ("openat", "open", "creat"):
            dirfd, rest = (args[0], args[1:]) if name == "openat" else ("AT_FDCWD", args)
            path = self.path(pid, dirfd, rest[0])
            if path in (os.path.join(self.markers, writers.BEGIN), os.path.join(self.markers, writers.RETURNED)):
                which = "begun_at" if path.endswith(writers.BEGIN) else "returned_at"
                setattr(self.recording, which, len(self.recording.ops))
                return
            if not ok:
                return
            flags = _flags(rest[1]) if name != "creat" else {"O_CREAT", "O_WRONLY", "O_TRUNC"}
            mode = int(rest[-1], 8) if rest[-1].startswith("0") and len(rest) > 1 else 0
            self.bind(pid, call.result, self.open(path, flags, mode, call))
        elif name == "close":
            if ok:
                self.fds.setdefault(pid, {}).pop(int(_FD.match(args[0])[1]), None)  # type: ignore[index]
        elif name in ("dup", "dup2", "dup3") or (name == "fcntl" and args[1].startswith("F_DUPFD")):
            if ok:
                self.bind(pid, call.result, self.fd(pid, args[0])[0])
        elif name == "lseek":
            description = self.file(pid, args[0], call)
            if description is not None and ok:
                description.offset = int(call.result)
        elif name in ("write", "pwrite64", "writev"):
            description = self.file(pid, args[0], call)
            if description is None or not ok:
                return
            if name == "writev":
                pieces = _IOV_BASE.findall(args[1])
                if any(cut for _, cut in pieces):
                    raise Unmodeled("strace cut an iovec short (raise -s)")
                data = b"".join(_unhex(piece) for piece, _ in pieces)
            else:
                data = _string(args[1])
            data = data[: int(call.result)]
            self.write(description, data, int(args[3]) if name == "pwrite64" else None)
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
                if description.ino is None:
                    self.emit(FsyncDir())
                else:
                    self.emit(Fsync(description.ino, data_only=name == "fdatasync"))
        elif name in ("sync", "syncfs"):
            if ok:
                self.emit(SyncAll())
        elif name == "sync_file_range":
            pass  # starts writeback, promises nothing: not a barrier
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
                src_fd, flags = args[0], _flags(args[4])
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
                description = None if old is None else _Description(self.inode(old, call))
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
        elif name in ("fallocate", "copy_file_range", "sendfile", "splice", "pwritev", "pwritev2"):
            targets = (0, 2) if name in ("copy_file_range", "splice") else (0,)  # the written fds
            if any(self.fd(pid, args[i])[0] is not None for i in targets if i < len(args)):
                raise Unmodeled(f"{name} on a traced file: {call}")
        elif name in ("symlink", "symlinkat", "mkdir", "mkdirat", "rmdir"):
            paths = [self.path(pid, "AT_FDCWD", arg) for arg in args if arg.startswith('"')]
            if any(self.name(path) is not None for path in paths):
                raise Unmodeled(f"{name} in the traced directory: {call}")

    def open(self, path: str, flags: set[str], mode: int, call: Call) -> _Description | None:
        if path == self.directory:
            if "O_TMPFILE" in flags:
                return _Description(self.new_inode(mode, None))
            return _Description(None)
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
        return _Description(ino, append="O_APPEND" in flags)


def record(
    directory: Path, target: Path, protocol: str, *options: str, variant: str | None = None, timeout: float = 120
) -> Recording:
    """Run a writer (see :mod:`.writers`) on ``target`` under strace; the directory's current
    content is the durable starting state."""
    strace = shutil.which("strace")
    if strace is None:
        raise StraceUnavailable("strace not installed (apt-get install strace)")
    directory_path = os.path.realpath(directory)
    markers = os.path.realpath(directory.parent)
    recorder = _Recorder(directory_path, markers, writers.UMASK)
    log = directory.parent / f"strace.{protocol}.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.pop("ATOMICWRITE_TEST_VARIANT", None)
    if variant is not None:
        env["ATOMICWRITE_TEST_VARIANT"] = variant
    command = [strace, "-f", "-y", "-qq", "-xx", "-s", str(1 << 20), "-e", f"trace={','.join(TRACED)}"]
    command += ["-e", "signal=none", "-o", str(log), sys.executable, "-m", "tests.crashsim.writers"]
    command += [protocol, os.path.join(directory_path, target.name), markers, *options]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0 and "ptrace" in done.stderr.lower():
        raise StraceUnavailable(f"strace cannot trace here: {done.stderr.strip()}")
    if done.returncode != 0:
        raise RuntimeError(f"traced writer failed ({done.returncode}): {done.stderr[-3000:]}")
    text = log.read_text()
    for line in text.splitlines():
        if "resumed>" in line or "<unfinished" in line:
            raise Unmodeled(f"an interrupted call (a second thread or process?): {line}")
    pids = set()
    for call in _parse(text):
        before = len(recorder.recording.ops)
        recorder.handle(call)
        if len(recorder.recording.ops) != before:
            pids.add(call.pid)
    if len(pids) > 1:
        raise Unmodeled(f"more than one process changed the traced directory: {sorted(pids)}")
    recording = recorder.recording
    if recording.begun_at < 0 or recording.returned_at < 0:
        raise Unmodeled("the begin/returned markers are missing from the trace")
    if recording.begun_at != 0:
        raise Unmodeled(f"operations before the call began: {recording.listing()[: recording.begun_at]}")
    return recording
