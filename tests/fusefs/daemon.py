"""The FUSE daemon behind ``tests.fusefs.mount``: a passthrough of a backing directory.

Run as ``python -m tests.fusefs.daemon SOURCE MOUNTPOINT CONTROL_SOCKET [--without a,b]
[--power-loss]``; it serves in the foreground, single-threaded, so that the operations it sees
are numbered in the order the kernel sent them.

Switches (``--without``) remove what real FUSE file systems lack, each the way such a file system
answers:

- ``tmpfile``: ``open(O_TMPFILE)`` fails.  libfuse's high-level API has no tmpfile operation, so
  the kernel answers EOPNOTSUPP on this passthrough whether or not the switch is given.
- ``renameat2``: a rename with flags (``RENAME_NOREPLACE``, ``RENAME_EXCHANGE``) fails with
  EINVAL, as the kernel answers for a FUSE server without rename2.
- ``link``: no link operation (sshfs without ``-o hardlink``, gcsfuse); libfuse answers EPERM.
- ``dirfsync``: no fsyncdir operation; the kernel then turns ``fsync`` on a directory into a
  silent success, as on sshfs and gcsfuse.
- ``flock``: ``flock`` fails with EOPNOTSUPP (the daemon claims flock locks, then refuses them).
  The other real behaviour, a flock that succeeds without excluding other machines (NFS with
  ``nolock``), is what every FUSE server without a flock operation gets, this passthrough with
  the switch on included: the kernel keeps the locks locally.
- ``dirrename``: renaming a non-empty directory fails with EXDEV (overlayfs without
  ``redirect_dir``, bucket mounts without directory rename).
- ``atomicrename``: renaming a directory copies it, file by file, to the new name, then removes
  the original, as gcsfuse and s3 mounts do (an existing non-empty destination: ENOTEMPTY).  The
  mount then calls itself ``fuse.gcsfuse`` in the mount table, since the library knows such mounts
  by their type (a copy returns what a rename returns); its source still reads
  ``atomicwrite-passthrough``.  Served as one request here, so the copy is not observable half
  done; the tests count the copies instead (``rename-copy`` in the daemon's calls).

With ``--power-loss`` the daemon also keeps the durable state in memory (see
``tests/test_power_loss.py`` for the model) and, on command, drops everything else.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import socket
import stat
import sys
import threading
from typing import Any

import mfusepy

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
_AT_FDCWD = -100


def _renameat2(old: str, new: str, flags: int) -> None:
    if _libc.renameat2(_AT_FDCWD, os.fsencode(old), _AT_FDCWD, os.fsencode(new), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


class _FuseWithRenameFlags(mfusepy.FUSE):  # type: ignore[misc]
    # mfusepy drops rename's flags, which would turn RENAME_NOREPLACE into a plain replace.
    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        result: int = self.operations.rename(
            old.decode(self.encoding, self.errors), new.decode(self.encoding, self.errors), flags
        )
        return result


class PowerLossState:
    """What a power cut would keep: file contents as of their last fsync, directory entries as of
    their directory's last fsync.  Inodes are those of the backing directory, pinned open so that
    a number is never reused for another file while the daemon remembers it."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.pins: dict[int, int] = {}
        self.kinds: dict[int, str] = {}
        self.modes: dict[int, int] = {}
        self.link_targets: dict[int, str] = {}
        self.files: dict[int, bytes] = {}
        # The smallest size a truncate gave each file since its last fsync.
        self.shrunk: dict[int, int] = {}
        self.directories: dict[int, dict[str, int]] = {}
        self.root_inode = 0
        self.scan()

    def close(self) -> None:
        for fd in self.pins.values():
            os.close(fd)
        self.pins.clear()

    def pin(self, path: str) -> int:
        status = os.lstat(path)
        inode = status.st_ino
        if inode not in self.pins:
            self.pins[inode] = os.open(path, os.O_PATH | os.O_NOFOLLOW)
            self.modes[inode] = stat.S_IMODE(status.st_mode)
            if stat.S_ISDIR(status.st_mode):
                self.kinds[inode] = "d"
            elif stat.S_ISLNK(status.st_mode):
                self.kinds[inode] = "l"
                self.link_targets[inode] = os.readlink(path)
            else:
                self.kinds[inode] = "f"
        return inode

    def scan(self) -> None:
        """Everything in the backing directory now is durable (a fresh mount of a clean disk)."""
        self.close()
        for table in (self.kinds, self.modes, self.link_targets, self.files, self.directories, self.shrunk):
            table.clear()
        self.root_inode = self.pin(self.root)
        pending = [self.root]
        while pending:
            directory = pending.pop()
            self.sync_directory(directory)
            for name, inode in self.directories[self.pin(directory)].items():
                path = os.path.join(directory, name)
                if self.kinds[inode] == "d":
                    pending.append(path)
                elif self.kinds[inode] == "f":
                    self.sync_file(inode)

    def truncated(self, inode: int, length: int) -> None:
        self.shrunk[inode] = min(length, self.shrunk.get(inode, length))

    def sync_file(self, inode: int) -> None:
        with open(f"/proc/self/fd/{self.pins[inode]}", "rb") as reader:
            self.files[inode] = reader.read()
        self.shrunk.pop(inode, None)
        self.modes[inode] = stat.S_IMODE(os.fstat(self.pins[inode]).st_mode)

    def sync_directory(self, path: str) -> None:
        entries = {}
        for name in os.listdir(path):
            entries[name] = self.pin(os.path.join(path, name))
        self.directories[self.pin(path)] = entries

    def materialize_journaled(self) -> None:
        """The other cut: every name and size change reached the disk (a journal commit), file
        data did not.  Each file keeps the content of its last fsync (a new one: nothing), cut
        to the smallest size a truncate gave it since."""
        pending = [self.root]
        while pending:
            directory = pending.pop()
            for name in os.listdir(directory):
                path = os.path.join(directory, name)
                status = os.lstat(path)
                if stat.S_ISDIR(status.st_mode):
                    pending.append(path)
                elif stat.S_ISREG(status.st_mode):
                    inode = self.pin(path)
                    content = self.files.get(inode, b"")
                    content = content[: self.shrunk.get(inode, len(content))]
                    with open(path, "wb") as writer:
                        writer.write(content)
        self.scan()

    def materialize(self) -> None:
        """Replace the backing directory's content by the durable state, then take it as the new
        state (pins, inodes and all)."""
        for name in os.listdir(self.root):
            path = os.path.join(self.root, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        placed: dict[int, str] = {}

        def build(directory_inode: int, path: str) -> None:
            for name, inode in sorted(self.directories.get(directory_inode, {}).items()):
                target = os.path.join(path, name)
                kind = self.kinds[inode]
                if inode in placed:
                    if kind == "f":
                        os.link(placed[inode], target)
                    # A directory cannot have two names: the first one found keeps it.
                    continue
                placed[inode] = target
                if kind == "d":
                    os.mkdir(target, self.modes[inode])
                    build(inode, target)
                elif kind == "l":
                    os.symlink(self.link_targets[inode], target)
                else:
                    # A file whose data was never flushed comes back empty (strict POSIX).
                    with open(target, "wb") as writer:
                        writer.write(self.files.get(inode, b""))
                    os.chmod(target, self.modes[inode])

        build(self.root_inode, self.root)
        self.scan()


class Passthrough(mfusepy.Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(self, root: str, without: frozenset[str], power_loss: bool) -> None:
        self.root = os.path.realpath(root)
        self.without = without
        # Not "lock": mfusepy registers every attribute named after a FUSE operation, and "lock"
        # is the one for POSIX record locks.
        self.mutex = threading.RLock()
        self.operations = 0
        self.calls: dict[str, int] = {}
        self.cut_at: int | None = None
        self.journaled = False
        self.cuts_fired = 0
        self.frozen = False
        self.power = PowerLossState(self.root) if power_loss else None
        # Descriptors opened before a cut point at files that no longer exist: they answer EIO.
        self.dead: set[int] = set()
        self.open_files: set[int] = set()
        if "link" in without:
            self.link = None
        if "dirfsync" in without:
            self.fsyncdir = None
        if "flock" not in without:
            self.flock = None

    # -- bookkeeping --------------------------------------------------------------------------

    def _path(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def _enter(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.frozen:
            raise OSError(errno.EIO, "the power is off")

    def _counted(self, name: str) -> None:
        """An operation that changes the state or its durability just completed: numbered, and
        the power is cut after it if a cut is armed for that number."""
        self.operations += 1
        if self.power is not None and self.cut_at is not None and self.operations >= self.cut_at:
            self.cut_at = None
            self.cuts_fired += 1
            self._drop_power()
            self.frozen = True

    def _drop_power(self) -> None:
        assert self.power is not None
        if self.journaled:
            self.power.materialize_journaled()
        else:
            self.power.materialize()
        self.dead |= self.open_files

    def _check_fh(self, fh: int | None) -> None:
        if fh is not None and fh in self.dead:
            raise OSError(errno.EIO, "opened before the power cut")

    def control(self, command: dict[str, Any]) -> dict[str, Any]:
        with self.mutex:
            action = command["action"]
            if action == "stats":
                return {"operations": self.operations, "calls": dict(self.calls), "cuts_fired": self.cuts_fired}
            if self.power is None:
                raise ValueError("not a power-loss mount")
            if action == "arm":
                self.cut_at = self.operations + int(command["after"])
                self.journaled = bool(command["journaled"])
                return {"armed": self.cut_at}
            if action == "cut":
                fired = self.frozen
                if not fired:
                    self.cut_at = None
                    self.journaled = bool(command["journaled"])
                    self._drop_power()
                self.frozen = False
                return {"fired": fired}
            if action == "rescan":
                if self.frozen or self.open_files - self.dead:
                    raise ValueError("rescan needs a quiet mount: power on, no file open")
                self.power.scan()
                return {}
            raise ValueError(f"unknown action {action!r}")

    # -- operations -----------------------------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        with self.mutex:
            self._enter("getattr")
            self._check_fh(fh)
            status = os.fstat(fh) if fh is not None else os.lstat(self._path(path))
            keys = ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks", "st_blksize")
            result: dict[str, Any] = {key: getattr(status, key) for key in keys}
            result.update(st_atime=status.st_atime_ns, st_mtime=status.st_mtime_ns, st_ctime=status.st_ctime_ns)
            return result

    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
        with self.mutex:
            self._enter("readdir")
            full = self._path(path)
            # Each entry with its inode: readdir(3) skips entries whose inode number is 0.
            entries = [(".", os.lstat(full)), ("..", os.lstat(os.path.join(full, "..")))]
            with os.scandir(full) as listing:
                entries += [(entry.name, entry.stat(follow_symlinks=False)) for entry in listing]
            return [(name, {"st_mode": status.st_mode, "st_ino": status.st_ino}, 0) for name, status in entries]

    def readlink(self, path: str) -> str:
        with self.mutex:
            self._enter("readlink")
            return os.readlink(self._path(path))

    def access(self, path: str, amode: int) -> int:
        with self.mutex:
            self._enter("access")
            if not os.access(self._path(path), amode):
                raise OSError(errno.EACCES, "")
            return 0

    def statfs(self, path: str) -> dict[str, Any]:
        with self.mutex:
            self._enter("statfs")
            status = os.statvfs(self._path(path))
            keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files", "f_frsize")
            return {key: getattr(status, key) for key in keys} | {"f_namemax": status.f_namemax}

    def open(self, path: str, flags: int) -> int:
        with self.mutex:
            self._enter("open")
            fd = os.open(self._path(path), flags & ~os.O_CREAT)
            self.open_files.add(fd)
            if flags & os.O_TRUNC:
                if self.power is not None:
                    self.power.truncated(os.fstat(fd).st_ino, 0)
                self._counted("truncate")
            return fd

    def create(self, path: str, mode: int, flags: int) -> int:
        with self.mutex:
            self._enter("create")
            full = self._path(path)
            fd = os.open(full, flags | os.O_CREAT, mode)
            self.open_files.add(fd)
            if self.power is not None:
                self.power.pin(full)
            self._counted("create")
            return fd

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self.mutex:
            self._enter("read")
            self._check_fh(fh)
            return os.pread(fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        with self.mutex:
            self._enter("write")
            self._check_fh(fh)
            written = os.pwrite(fh, data, offset)
            self._counted("write")
            return written

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        with self.mutex:
            self._enter("truncate")
            self._check_fh(fh)
            if fh is not None:
                os.ftruncate(fh, length)
                inode = os.fstat(fh).st_ino
            else:
                os.truncate(self._path(path or "/"), length)
                inode = os.lstat(self._path(path or "/")).st_ino
            if self.power is not None:
                self.power.truncated(inode, length)
            self._counted("truncate")
            return 0

    def flush(self, path: str, fh: int) -> int:
        with self.mutex:
            self._enter("flush")
            self._check_fh(fh)
            return 0

    def release(self, path: str, fh: int) -> int:
        with self.mutex:
            self.dead.discard(fh)
            self.open_files.discard(fh)
            os.close(fh)
            return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        with self.mutex:
            self._enter("fsync")
            self._check_fh(fh)
            if self.power is None:
                os.fsync(fh)
            else:
                self.power.sync_file(os.fstat(fh).st_ino)
            self._counted("fsync")
            return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        with self.mutex:
            self._enter("fsyncdir")
            full = self._path(path)
            if self.power is None:
                fd = os.open(full, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            else:
                self.power.sync_directory(full)
            self._counted("fsyncdir")
            return 0

    def flock(self, path: str, fh: int, op: int) -> int:
        with self.mutex:
            self._enter("flock")
            raise OSError(errno.EOPNOTSUPP, "no flock here")

    def mkdir(self, path: str, mode: int) -> int:
        with self.mutex:
            self._enter("mkdir")
            full = self._path(path)
            os.mkdir(full, mode)
            if self.power is not None:
                self.power.pin(full)
            self._counted("mkdir")
            return 0

    def rmdir(self, path: str) -> int:
        with self.mutex:
            self._enter("rmdir")
            os.rmdir(self._path(path))
            self._counted("rmdir")
            return 0

    def unlink(self, path: str) -> int:
        with self.mutex:
            self._enter("unlink")
            os.unlink(self._path(path))
            self._counted("unlink")
            return 0

    def symlink(self, target: str, source: str) -> int:
        with self.mutex:
            self._enter("symlink")
            full = self._path(target)
            os.symlink(source, full)
            if self.power is not None:
                self.power.pin(full)
            self._counted("symlink")
            return 0

    def link(self, target: str, source: str) -> int:
        with self.mutex:
            self._enter("link")
            os.link(self._path(source), self._path(target))
            self._counted("link")
            return 0

    def rename(self, old: str, new: str, flags: int = 0) -> int:
        with self.mutex:
            self._enter("rename")
            source, destination = self._path(old), self._path(new)
            if flags and "renameat2" in self.without:
                raise OSError(errno.EINVAL, "no rename flags here")
            moves_a_directory = os.path.isdir(source) and not os.path.islink(source)
            if "dirrename" in self.without and moves_a_directory and os.listdir(source):
                raise OSError(errno.EXDEV, "no directory rename here")
            if "atomicrename" in self.without and moves_a_directory:
                if flags:
                    raise OSError(errno.EINVAL, "no rename flags for directories here")
                self._copy_then_remove(source, destination)
                self.calls["rename-copy"] = self.calls.get("rename-copy", 0) + 1
            elif flags:
                _renameat2(source, destination, flags)
            else:
                os.rename(source, destination)
            self._counted("rename")
            return 0

    @staticmethod
    def _copy_then_remove(source: str, destination: str) -> None:
        """A bucket mount's directory "rename": every file copied to the new name, then the
        originals deleted (neither step atomic on a real mount)."""
        if os.path.lexists(destination):
            if not os.path.isdir(destination) or os.path.islink(destination):
                raise OSError(errno.ENOTDIR, "not a directory")
            if os.listdir(destination):
                raise OSError(errno.ENOTEMPTY, "directory not empty")
            os.rmdir(destination)
        shutil.copytree(source, destination, symlinks=True)
        shutil.rmtree(source)

    def chmod(self, path: str | None, mode: int) -> int:
        with self.mutex:
            self._enter("chmod")
            os.chmod(self._path(path or "/"), mode)
            self._counted("chmod")
            return 0

    def chown(self, path: str | None, uid: int, gid: int) -> int:
        with self.mutex:
            self._enter("chown")
            os.chown(self._path(path or "/"), uid, gid, follow_symlinks=False)
            self._counted("chown")
            return 0

    def utimens(self, path: str | None, times: tuple[int, int] | None = None) -> int:
        with self.mutex:
            self._enter("utimens")
            if times is None:
                os.utime(self._path(path or "/"), follow_symlinks=False)
            else:
                os.utime(self._path(path or "/"), ns=times, follow_symlinks=False)
            self._counted("utimens")
            return 0


def _serve_control(filesystem: Passthrough, server: socket.socket) -> None:
    while True:
        connection, _ = server.accept()
        with connection, connection.makefile("rwb") as stream:
            for line in stream:
                try:
                    reply = {"ok": True, **filesystem.control(json.loads(line))}
                except Exception as exc:  # reported to the test, which fails on it
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                stream.write(json.dumps(reply).encode() + b"\n")
                stream.flush()


def main(argv: list[str]) -> None:
    source, mountpoint, control_path, *rest = argv
    without: frozenset[str] = frozenset()
    power_loss = False
    for argument in rest:
        if argument.startswith("--without="):
            without = frozenset(filter(None, argument.split("=", 1)[1].split(",")))
        elif argument == "--power-loss":
            power_loss = True
    filesystem = Passthrough(source, without, power_loss)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(control_path)
    server.listen(4)
    threading.Thread(target=_serve_control, args=(filesystem, server), daemon=True).start()
    options: dict[str, Any] = {
        "foreground": True,
        "nothreads": True,
        "fsname": "atomicwrite-passthrough",
        "subtype": "gcsfuse" if "atomicrename" in without else "passthrough",
        "allow_other": True,
        "default_permissions": True,
        "use_ino": True,
        "hard_remove": True,
        "entry_timeout": 0,
        "attr_timeout": 0,
        "negative_timeout": 0,
    }
    try:
        _FuseWithRenameFlags(filesystem, mountpoint, **options)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(control_path)


if __name__ == "__main__":
    main(sys.argv[1:])
