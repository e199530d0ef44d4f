"""What the two recorders share: running a writer under ``strace -f -y -xx``, reading strace's
arguments, and following open descriptors, their offsets and what is written through them.

:mod:`.trace` records one directory of files, :mod:`.tree` a tree of directories.  Each subclasses
:class:`Recorder` with what it makes of opens, names, renames and flushes, and hands the calls
that both read alike (close, dup, write, sync, the copies the model refuses) to
:meth:`Recorder.shared`.  :func:`run_writer` runs the traced writer and feeds its calls to a
recorder; the data operations (:class:`Write`, :class:`Truncate`) and :class:`SyncAll` are the
same in both recordings.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

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
WRITES = ("write", "pwrite64", "writev")
# Calls that write a file without a plain write: the model refuses them on a traced file.
COPIES = ("fallocate", "copy_file_range", "sendfile", "splice", "pwritev", "pwritev2")


class Unmodeled(AssertionError):
    """The trace holds something the persistence model cannot represent."""


class StraceUnavailable(RuntimeError):
    """strace is missing, or may not trace here (ptrace refused)."""


# ----- the operations both recordings share ---------------------------------------------------


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
class SyncAll:
    """sync(2) / syncfs(2): everything before it is on disk."""


def describe_shared(op: object) -> str:
    """A shared operation (write, truncate, sync) as the listings show it."""
    if isinstance(op, Write):
        return f"write(i{op.ino}, @{op.offset}, {len(op.data)} B)"
    if isinstance(op, Truncate):
        return f"truncate(i{op.ino}, {op.size})"
    return "sync()"


# ----- strace output --------------------------------------------------------------------------

_HEX = r"(?:\\x[0-9a-f]{2})*"
_STRING = re.compile(rf'^"({_HEX})"(\.\.\.)?$')
_FD = re.compile(r"^(-?\d+|AT_FDCWD)(?:<(.*)>)?(?:\(deleted\))?$")
_PATH = re.compile(rf"^{_HEX}$")
_IOV_BASE = re.compile(rf'iov_base="({_HEX})"(\.\.\.)?')
_RESULT = re.compile(r"^(-?\d+)")


def _unhex(text: str) -> bytes:
    return bytes.fromhex(text.replace("\\x", ""))


def string_argument(arg: str) -> bytes:
    match = _STRING.match(arg)
    if match is None:
        raise Unmodeled(f"not a hex string argument: {arg!r}")
    if match[2]:
        raise Unmodeled("strace cut a string short (raise -s)")
    return _unhex(match[1])


def flag_names(arg: str) -> set[str]:
    return set(arg.split("|"))


def _written(call: Call) -> bytes:
    """The bytes a successful write, pwrite64 or writev wrote (cut to what it returned)."""
    if call.name == "writev":
        pieces = _IOV_BASE.findall(call.args[1])
        if any(cut for _, cut in pieces):
            raise Unmodeled("strace cut an iovec short (raise -s)")
        data = b"".join(_unhex(piece) for piece, _ in pieces)
    else:
        data = string_argument(call.args[1])
    return data[: int(call.result)]


# ----- the recorder ---------------------------------------------------------------------------


@dataclass
class Description:
    """An open file description: a file (an inode) with its offset, or a directory."""

    ino: int | None  # None: the traced directory of the flat recorder (its files have inodes)
    directory: bool = False
    offset: int = 0
    append: bool = False


class _Recording(Protocol):
    ops: list[Any]


class Recorder:
    """Follows descriptors and writes; subclasses add what a call means in what they trace."""

    scope = "directory"  # what is traced, for the messages
    recording: _Recording

    def __init__(self, directory: str, markers: str) -> None:
        self.directory = directory
        self.markers = markers
        self.sizes: dict[int, int] = {}  # inode -> size, for O_APPEND
        self.fds: dict[int, dict[int, Description]] = {}  # pid -> fd -> description

    def emit(self, op: object) -> None:
        self.recording.ops.append(op)

    def fd(self, pid: int, arg: str) -> tuple[Description | None, str | None]:
        """The description behind an fd argument (None if not ours) and strace's path for it."""
        match = _FD.match(arg)
        if match is None:
            raise Unmodeled(f"not a file descriptor argument: {arg!r}")
        # -y names every descriptor; -xx prints the name in hex (a socket's or pipe's too).
        path = os.fsdecode(_unhex(match[2])) if match[2] is not None and _PATH.match(match[2]) else None
        if match[1] == "AT_FDCWD":
            return None, path
        return self.fds.setdefault(pid, {}).get(int(match[1])), path

    def file(self, pid: int, arg: str, call: Call) -> Description | None:
        """The description of a traced *file* behind an fd argument (None if not ours)."""
        description, _ = self.fd(pid, arg)
        if description is not None and description.directory:
            raise Unmodeled(f"{call.name} on the directory descriptor: {call}")
        return description

    def bind(self, pid: int, result: str, description: Description | None) -> None:
        fd = int(_RESULT.match(result)[1])  # type: ignore[index]
        table = self.fds.setdefault(pid, {})
        if description is None:
            table.pop(fd, None)
        else:
            table[fd] = description

    def write(self, description: Description, data: bytes, offset: int | None) -> None:
        """``data`` written through ``description``: at ``offset`` (pwrite), else at its offset."""
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

    def shared(self, call: Call) -> bool:
        """Handle a call that both recorders read alike; False if ``call`` is not one of them."""
        name, args, pid = call.name, call.args, call.pid
        ok = not call.result.startswith("-")
        if name == "close":
            if ok:
                self.fds.setdefault(pid, {}).pop(int(_FD.match(args[0])[1]), None)  # type: ignore[index]
        elif name in ("dup", "dup2", "dup3") or (name == "fcntl" and args[1].startswith("F_DUPFD")):
            if ok:
                self.bind(pid, call.result, self.fd(pid, args[0])[0])
        elif name in WRITES:
            description = self.file(pid, args[0], call)
            if description is not None and ok:
                self.write(description, _written(call), int(args[3]) if name == "pwrite64" else None)
        elif name in ("sync", "syncfs"):
            if ok:
                self.emit(SyncAll())
        elif name == "sync_file_range":
            pass  # starts writeback, promises nothing: not a barrier
        elif name in COPIES:
            targets = (0, 2) if name in ("copy_file_range", "splice") else (0,)  # the written fds
            if any(self.fd(pid, args[i])[0] is not None for i in targets if i < len(args)):
                raise Unmodeled(f"{name} on a traced file: {call}")
        else:
            return False
        return True

    def handle(self, call: Call) -> None:
        raise NotImplementedError


R = TypeVar("R", bound=Recorder)


def run_writer(
    make: Callable[[str, str], R],
    directory: Path,
    target: str,
    protocol: str,
    options: tuple[str, ...],
    *,
    variant: str | None,
    timeout: float,
) -> R:
    """Run the writer ``protocol`` of :mod:`.writers` on ``directory/target`` under strace, and
    feed its calls to the recorder ``make(directory, markers)`` builds (the directory's current
    content is the durable starting state)."""
    strace = shutil.which("strace")
    if strace is None:
        raise StraceUnavailable("strace not installed (apt-get install strace)")
    directory_path = os.path.realpath(directory)
    markers = os.path.realpath(directory.parent)
    recorder = make(directory_path, markers)
    log = directory.parent / f"strace.{protocol}.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.pop("ATOMICWRITE_TEST_VARIANT", None)
    if variant is not None:
        env["ATOMICWRITE_TEST_VARIANT"] = variant
    command = [strace, "-f", "-y", "-qq", "-xx", "-s", str(1 << 20), "-e", f"trace={','.join(TRACED)}"]
    command += ["-e", "signal=none", "-o", str(log), sys.executable, "-m", "tests.crashsim.writers"]
    command += [protocol, os.path.join(directory_path, target), markers, *options]
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
        raise Unmodeled(f"more than one process changed the traced {recorder.scope}: {sorted(pids)}")
    return recorder
