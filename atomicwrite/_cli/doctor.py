"""``atomicwrite doctor``: what [`atomic_open`][atomicwrite.atomic_open] guarantees at one location,
found by trying it there.

Every answer comes from a probe on the real location: scratch files in the target directory (or
scratch objects under the target prefix), written with the library's own strategy where it can
be, and with the raw system call where the question is about the system call.  Scratch entries
are named like the library's temp files (``.atomicwrite-doctor.aw{host}.{pid}.{random}.tmp``)
and removed before returning, whatever happens; the scratch files of a doctor killed mid-probe
are removed by [`sweep`][atomicwrite.sweep] (a scratch symlink or object is not).  Nothing here imports click or rich.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .._api import atomic_open
from .._directories.marker import renames_by_copying
from .._errors import (
    AtomicPermissionError,
    ConflictError,
    TargetExistsError,
    TargetNotFoundError,
    UnsupportedTargetError,
)
from .._local.base import LocalStrategy, mount_of, parse_mountinfo, statfs_magic
from .._names import temp_name
from .._result import CommitResult
from .._stores.base import ObjectStoreStrategy
from .._strategy import WriteOptions, resolve_target

__all__ = [
    "Check",
    "DoctorReport",
    "Guarantee",
    "diagnose",
    "filesystem_type",
    "mount_notes",
    "mount_options",
    "parse_mountinfo",
]

Status = Literal["yes", "no", "n/a", "info"]

_SCRATCH = "atomicwrite-doctor"
_FSYNC_SAMPLES = 5
_PAYLOAD = b"atomicwrite doctor\n" * 215  # about 4 KiB: one page

# statfs(2) f_type magic numbers (linux/magic.h and the file systems' own headers).
FS_MAGIC: dict[int, str] = {
    0xEF53: "ext2/ext3/ext4",
    0x58465342: "xfs",
    0x9123683E: "btrfs",
    0x2FC12FC1: "zfs",
    0xF2F52010: "f2fs",
    0x01021994: "tmpfs",
    0x858458F6: "ramfs",
    0x794C7630: "overlayfs",
    0x6969: "nfs",
    0xFF534D42: "cifs",
    0xFE534D42: "smb2",
    0x517B: "smbfs",
    0x65735546: "fuse",
    0x01021997: "9p",
    0x786F4256: "vboxsf",
    0x00C36400: "ceph",
    0x0BD00BD0: "lustre",
    0x01161970: "gfs2",
    0x4D44: "vfat",
    0x2011BAB0: "exfat",
    0x5346544E: "ntfs",
    0x73717368: "squashfs",
    0x5A3C69F0: "aufs",
    0x6E667364: "nfsd",
}
FUSE_SUPER_MAGIC = 0x65735546
_MEMORY_BACKED = {"tmpfs", "ramfs", "devtmpfs"}
_NETWORK = {"nfs", "nfs4", "cifs", "smb2", "smb3", "smbfs", "9p", "vboxsf", "ceph", "lustre", "gfs2", "drvfs"}


@dataclass(frozen=True)
class Check:
    """One probe: ``status`` is ``"yes"``, ``"no"``, ``"n/a"`` or ``"info"`` (a measurement)."""

    key: str
    label: str
    status: Status
    detail: str
    value: Any = None


@dataclass(frozen=True)
class Guarantee:
    """One column of the guarantee matrix at this location: ``holds`` is None when it cannot be
    confirmed from here."""

    key: str
    label: str
    holds: bool | None
    detail: str


@dataclass
class DoctorReport:
    """What `diagnose` found at one location."""

    target: str
    probed: str
    kind: Literal["local", "object store"]
    strategy: str
    checks: list[Check] = field(default_factory=list)
    guarantees: list[Guarantee] = field(default_factory=list)
    recommendations: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def full(self) -> bool:
        """Whether every guarantee holds here."""
        return bool(self.guarantees) and all(g.holds is True for g in self.guarantees)

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "probed": self.probed,
            "kind": self.kind,
            "strategy": self.strategy,
            "checks": {
                c.key: {"label": c.label, "status": c.status, "detail": c.detail, "value": c.value} for c in self.checks
            },
            "guarantees": {g.key: {"label": g.label, "holds": g.holds, "detail": g.detail} for g in self.guarantees},
            "recommended_options": self.options,
            "recommendations": self.recommendations,
            "full_guarantees": self.full,
        }


def diagnose(target: str, *, storage_options: Mapping[str, Any] | None = None, multipart: bool = True) -> DoctorReport:
    """Probe ``target`` (a directory, a file whose directory is probed, or a store URL/prefix)."""
    strategy, location = resolve_target(target)
    if isinstance(strategy, ObjectStoreStrategy):
        return _diagnose_store(target, strategy, location, dict(storage_options or {}), multipart=multipart)
    if isinstance(strategy, LocalStrategy):
        return _diagnose_local(target, strategy, location)
    raise UnsupportedTargetError(f"{target!r}: doctor knows local paths and object stores, not {strategy.name!r}")


# --- helpers -------------------------------------------------------------------------------


def _errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


class _Scratch:
    """Names of scratch entries in one directory; `cleanup` removes whichever exist."""

    def __init__(self, remove: Callable[[str], None]) -> None:
        self._remove = remove
        self.names: list[str] = []

    def new(self) -> str:
        name = temp_name(_SCRATCH)
        self.names.append(name)
        return name

    def cleanup(self) -> None:
        for name in reversed(self.names):
            with contextlib.suppress(FileNotFoundError, OSError):
                self._remove(name)


# --- local file systems ----------------------------------------------------------------------


def filesystem_type(path: str) -> dict[str, Any]:
    """``{"type", "magic", "mount_point", "source"}`` of the file system holding ``path``.

    ``magic`` is statfs(2)'s ``f_type`` (Linux); ``type`` is the mount table's name for it
    (``/proc/self/mountinfo``: "ext4" where the magic number only says ext2/3/4), else the name
    of the magic number.  Elsewhere both may be None.
    """
    info: dict[str, Any] = {"type": None, "magic": None, "mount_point": None, "source": None, "options": ""}
    if sys.platform == "linux":
        magic = _statfs_magic(path)
        if magic is not None:
            info["magic"] = f"0x{magic:x}"
            info["type"] = FS_MAGIC.get(magic)
        mount = mount_of(path)
        if mount is not None:
            info["mount_point"], fstype, info["source"], info["options"] = mount
            info["type"] = fstype
    return info


def _statfs_magic(path: str) -> int | None:
    try:
        fd = os.open(path, getattr(os, "O_PATH", os.O_RDONLY) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        return statfs_magic(fd)
    finally:
        os.close(fd)


# --- network and cluster file systems ---------------------------------------------------------


def mount_options(text: str) -> dict[str, str | None]:
    """``"rw,vers=3,nolock"`` -> ``{"rw": None, "vers": "3", "nolock": None}``."""
    options: dict[str, str | None] = {}
    for word in text.split(","):
        if word:
            name, has_value, value = word.partition("=")
            options[name] = value if has_value else None
    return options


@dataclass(frozen=True)
class _MountRule:
    fstypes: frozenset[str]
    applies: Callable[[Mapping[str, str | None]], bool]
    key: str
    label: str
    holds: bool | None
    detail: str


_NFS = frozenset({"nfs", "nfs4"})
_LUSTRE = frozenset({"lustre"})
_UNTESTED = " (not tested on a real server: what the protocol promises)"


def _always(options: Mapping[str, str | None]) -> bool:
    return True


def _local_only_locks(options: Mapping[str, str | None]) -> bool:
    return "nolock" in options or options.get("local_lock") in ("flock", "all")


def _nfs_v3(options: Mapping[str, str | None]) -> bool:
    return str(options.get("vers") or options.get("nfsvers") or "").split(".")[0] in ("2", "3")


# The first rule of each key that applies wins: specific cases come before the general one.
_MOUNT_RULES: tuple[_MountRule, ...] = (
    _MountRule(
        _NFS,
        _always,
        "nfs_commit",
        "NFS: durable at commit",
        None,
        "the temp file is fsynced (NFS COMMIT) before the rename, so errors the server defers to"
        " fsync or close (ENOSPC, EDQUOT) stop the write before anything is published; RENAME is one"
        " server operation, committed before it is answered unless the export is 'async'"
        " (exports(5)), which no client can see" + _UNTESTED,
    ),
    _MountRule(
        _NFS,
        lambda options: "nocto" in options,
        "nfs_visibility",
        "NFS: other clients read the new file",
        False,
        "nocto: readers on other clients may keep reading cached pages of the old file",
    ),
    _MountRule(
        _NFS,
        _always,
        "nfs_visibility",
        "NFS: other clients read the new file",
        None,
        "close-to-open: a reader on another client that opens the name after the rename gets the new"
        " file, but may see the old name until its lookup cache expires (actimeo, lookupcache)" + _UNTESTED,
    ),
    _MountRule(
        _NFS,
        _local_only_locks,
        "locks_across_hosts",
        "locks across hosts",
        False,
        "nolock / local_lock: flock is local to this client, so lock=True and sweep's liveness check"
        " do not see writers on other hosts",
    ),
    _MountRule(
        _NFS,
        _always,
        "locks_across_hosts",
        "locks across hosts",
        None,
        "flock goes to the server as a whole-file lock (NLM for NFSv3, NFSv4 locks)" + _UNTESTED,
    ),
    _MountRule(
        _NFS,
        _nfs_v3,
        "nfs_exclusive_create",
        "NFSv3: exclusive create",
        None,
        "made by link(2): LINK is atomic on the server, but a retransmitted LINK may answer EEXIST"
        " for a link it made" + _UNTESTED,
    ),
    _MountRule(
        _LUSTRE,
        lambda options: "noflock" in options,
        "locks_across_hosts",
        "locks across hosts",
        False,
        "noflock: flock is refused, so sweep falls back to pid and age",
    ),
    _MountRule(
        _LUSTRE,
        lambda options: "localflock" in options,
        "locks_across_hosts",
        "locks across hosts",
        False,
        "localflock: flock is local to this client; lock=True does not exclude writers on other clients",
    ),
    _MountRule(
        _LUSTRE,
        lambda options: "flock" in options,
        "locks_across_hosts",
        "locks across hosts",
        None,
        "flock: locks are coherent across clients" + _UNTESTED,
    ),
    _MountRule(
        _LUSTRE,
        _always,
        "locks_across_hosts",
        "locks across hosts",
        None,
        "no flock, localflock or noflock shown: the Lustre version's default decides (the flock probe"
        " above speaks for this client only)",
    ),
)


def mount_notes(fstype: str, options: Mapping[str, str | None]) -> list[Guarantee]:
    """What a network or cluster file system's type and mount options change in the guarantee
    matrix; empty for any other file system."""
    notes: dict[str, Guarantee] = {}
    for rule in _MOUNT_RULES:
        if fstype in rule.fstypes and rule.key not in notes and rule.applies(options):
            notes[rule.key] = Guarantee(rule.key, rule.label, rule.holds, rule.detail)
    return list(notes.values())


def _probe_directory(strategy: LocalStrategy, location: str, target: str) -> str:
    """The directory a write to ``location`` would use: the directory itself, or the parent of
    a file (through its symlinks)."""
    path = strategy.absolute(location)
    if os.path.isdir(path):
        return path
    directory = os.path.dirname(strategy.resolve(location, True))
    if not os.path.isdir(directory):
        raise TargetNotFoundError(errno.ENOENT, f"cannot probe {target!r}: no such directory", directory)
    return directory


def _diagnose_local(target: str, strategy: LocalStrategy, location: str) -> DoctorReport:
    directory = _probe_directory(strategy, location, target)
    report = DoctorReport(target=target, probed=directory, kind="local", strategy=strategy.name)
    scratch = _Scratch(lambda name: os.unlink(os.path.join(directory, name)))
    try:
        _probe_local(report, strategy, directory, scratch)
    finally:
        scratch.cleanup()
    return report


def _probe_local(report: DoctorReport, strategy: LocalStrategy, directory: str, scratch: _Scratch) -> None:
    add = report.checks.append
    fs = filesystem_type(directory)
    fstype = fs["type"] or "unknown"
    detail = fstype + (f" (statfs magic {fs['magic']})" if fs["magic"] else "")
    if fs["mount_point"]:
        detail += f", mounted on {fs['mount_point']}"
    add(Check("filesystem", "file system", "info", detail, fs))
    notes = mount_notes(fstype, mount_options(fs["options"]))
    if notes:
        add(
            Check("mount_options", "mount options", "info", fs["options"] or "none shown", mount_options(fs["options"]))
        )
    stuck = _probe_overlay(report, directory, fs) if _is_overlay(fs) else None

    # The real protocol first: everything else explains what it found.
    first = scratch.new()
    try:
        written = _atomic_write(os.path.join(directory, first), _PAYLOAD)
    except AtomicPermissionError as exc:
        raise AtomicPermissionError(exc.errno, f"cannot probe {directory!r}: {exc.strerror}", directory) from exc
    with open(os.path.join(directory, first), "rb") as check:
        intact = check.read() == _PAYLOAD
    add(
        Check(
            "atomic_write",
            "atomic_open round trip",
            "yes" if intact else "no",
            f"strategy {written.strategy!r}, durability achieved {written.durability!r}",
            {"strategy": written.strategy, "durability": written.durability},
        )
    )
    latencies = []
    for _ in range(_FSYNC_SAMPLES):
        started = time.perf_counter()
        _atomic_write(os.path.join(directory, first), _PAYLOAD)
        latencies.append(time.perf_counter() - started)
    latency = _ms(statistics.median(latencies))
    add(Check("atomic_write_latency_ms", "atomic 4 KiB write (median)", "info", f"{latency} ms", latency))

    second = scratch.new()
    with open(os.path.join(directory, second), "wb") as f:
        f.write(b"old")
    renamed = scratch.new()
    try:
        os.rename(os.path.join(directory, second), os.path.join(directory, renamed))
        with open(os.path.join(directory, renamed), "rb") as f:
            ok = f.read() == b"old"
        add(Check("rename", "same-directory rename", "yes" if ok else "no", "rename(2) within the directory"))
    except OSError as exc:
        add(Check("rename", "same-directory rename", "no", f"rename(2) failed: {_errno_name(exc)}"))

    if sys.platform == "win32":
        for key, label in (
            ("o_tmpfile", "O_TMPFILE"),
            ("rename_noreplace", "RENAME_NOREPLACE"),
            ("hard_links", "hard links"),
            ("fsync_latency_ms", "fsync latency"),
            ("dir_fsync", "directory fsync"),
            ("flock", "flock"),
        ):
            add(Check(key, label, "n/a", "POSIX only; Windows uses MoveFileExW write-through"))
    else:
        _probe_posix_calls(report, directory, scratch, renamed, first)

    link = scratch.new()
    try:
        os.symlink(first, os.path.join(directory, link))
        ok = os.readlink(os.path.join(directory, link)) == first
        add(Check("symlinks", "symlinks", "yes" if ok else "no", "written through to their target by default"))
    except (OSError, NotImplementedError) as exc:
        reason = _errno_name(exc) if isinstance(exc, OSError) else "not implemented"
        add(Check("symlinks", "symlinks", "no", f"symlink() refused: {reason}"))

    # Both conditions are checked when the write starts and again by the publishing call; the
    # probes let another writer win in between, so that the publishing call is what decides.
    contested = os.path.join(directory, scratch.new())
    add(_race_check("exclusive_create", "exclusive create (mode 'xb')", "file created", contested, None))
    current = _atomic_write(contested, _PAYLOAD).version
    add(_race_check("compare_and_swap", "compare-and-swap (if_match=)", "version written", contested, current))

    usage = shutil.disk_usage(directory)
    add(Check("free_space", "free space", "info", f"{_size(usage.free)} of {_size(usage.total)}", usage.free))
    local_locks = any(note.key == "locks_across_hosts" and note.holds is False for note in notes)
    _local_guarantees(report, strategy, fstype, written, local_locks=local_locks)
    report.guarantees.extend(notes)
    if local_locks:
        report.recommendations.append(
            "locks here are local to this host: let one host write each target, or mount with locking"
        )
    if stuck is not None:
        _overlay_guarantee(report, stuck)


# At most this many subdirectories are probed for a lower layer: each probe is a few calls.
_OVERLAY_SCAN = 200


def _is_overlay(fs: Mapping[str, Any]) -> bool:
    return fs["type"] in ("overlay", "overlayfs") or fs["magic"] == "0x794c7630"


def _probe_overlay(report: DoctorReport, directory: str, fs: Mapping[str, Any]) -> list[str]:
    """The directories at and right under ``directory`` that overlayfs cannot rename (they come
    from a lower layer and the mount lacks redirect_dir=on), so that `atomic_directory` cannot
    replace them; adds the check and the advice."""
    from .._directories.local import directory_can_move

    candidates = [] if fs["mount_point"] == directory else [directory]  # a mount point never moves
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if len(candidates) > _OVERLAY_SCAN:
                break
            if entry.is_dir(follow_symlinks=False) and not entry.name.startswith(".atomicwrite-doctor"):
                candidates.append(entry.path)
    stuck: list[str] = []
    for path in candidates:
        parent, name = os.path.split(path)
        try:
            parent_fd = os.open(parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            continue
        try:
            if not directory_can_move(parent, parent_fd, name):
                stuck.append(path)
        except (OSError, UnsupportedTargetError):
            continue  # a parent we may not write to: unknown, not claimed either way
        finally:
            os.close(parent_fd)
    label = "overlayfs: directories atomic_directory can replace"
    if stuck:
        shown = ", ".join(stuck[:5]) + (f" and {len(stuck) - 5} more" if len(stuck) > 5 else "")
        detail = f"{len(stuck)} of {len(candidates)} come from a lower layer and cannot be renamed (EXDEV): {shown}"
        report.checks.append(Check("overlay_directories", label, "no", detail, stuck))
        report.recommendations.append(
            "overlayfs renames a lower-layer directory only with redirect_dir=on: atomic_directory refuses to"
            " replace those listed (OverlayDirectoryError) but can create new ones; put checkpoints on a volume"
            " or bind mount (docker run -v HOST_DIR:DIR)"
        )
    else:
        detail = f"all {len(candidates)} probed can be renamed (upper layer, or redirect_dir=on)"
        report.checks.append(Check("overlay_directories", label, "yes", detail, stuck))
    return stuck


def _overlay_guarantee(report: DoctorReport, stuck: list[str]) -> None:
    detail = (
        f"not for the {len(stuck)} lower-layer directories listed above (refused before anything is written)"
        if stuck
        else "every directory probed can be swapped in one rename"
    )
    report.guarantees.append(Guarantee("directory_replace", "atomic_directory replace", not stuck, detail))


def _probe_posix_calls(report: DoctorReport, directory: str, scratch: _Scratch, existing: str, other: str) -> None:
    """The system calls the POSIX protocol relies on, each tried on scratch files."""
    if sys.platform == "win32":  # keeps mypy --platform win32 out of the POSIX calls
        return
    else:
        import fcntl

        from .._local.base import flush_to_disk
        from .._local.posix import NO_DIR_FSYNC, NO_TMPFILE, PosixStrategy

        strategy = PosixStrategy()

        add = report.checks.append
        dir_fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_CLOEXEC)
        try:
            if sys.platform == "linux":
                try:
                    os.close(os.open(".", os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600, dir_fd=dir_fd))
                    add(Check("o_tmpfile", "O_TMPFILE", "yes", "unnamed temp files: a killed writer leaves nothing"))
                except OSError as exc:
                    if exc.errno not in NO_TMPFILE:
                        raise
                    add(Check("o_tmpfile", "O_TMPFILE", "no", f"refused ({_errno_name(exc)}): temp files are named"))
            else:
                add(Check("o_tmpfile", "O_TMPFILE", "n/a", "Linux only: temp files are named"))

            fresh = scratch.new()
            code = strategy.rename_exclusive(dir_fd, existing, other)
            if code == 0:
                add(Check("rename_noreplace", "RENAME_NOREPLACE", "no", "replaced an existing name: not honoured"))
            elif code == errno.ENOSYS:
                add(
                    Check(
                        "rename_noreplace",
                        "RENAME_NOREPLACE",
                        "no",
                        "not in this C library or kernel, or refused by this file system: link() is used instead",
                    )
                )
            elif code != errno.EEXIST:
                reason = errno.errorcode.get(code, str(code))
                add(Check("rename_noreplace", "RENAME_NOREPLACE", "no", f"refused ({reason}): link() is used instead"))
            else:
                # The kernel refuses an existing name before the file system sees the call (FUSE
                # servers without the flag included): only a move to a new name tells.
                moved = strategy.rename_exclusive(dir_fd, existing, fresh)
                detail = "renameat2 refuses an existing name (EEXIST)"
                if moved == errno.ENOSYS:
                    detail = "refused by this file system for a new name: link() is used instead"
                elif moved != 0:
                    detail = f"renameat2 failed on a new name ({errno.errorcode.get(moved, str(moved))})"
                add(Check("rename_noreplace", "RENAME_NOREPLACE", "yes" if moved == 0 else "no", detail))
            hard = scratch.new()
            try:
                os.link(other, hard, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                add(Check("hard_links", "hard links", "yes", "link(2): the exclusive-create fallback, and O_TMPFILE's"))
            except OSError as exc:
                add(Check("hard_links", "hard links", "no", f"link(2) refused: {_errno_name(exc)}"))

            sample = scratch.new()
            fd = os.open(sample, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
            try:
                timings = []
                try:
                    for _ in range(_FSYNC_SAMPLES):
                        os.write(fd, _PAYLOAD)
                        started = time.perf_counter()
                        flush_to_disk(fd)
                        timings.append(time.perf_counter() - started)
                    median = _ms(statistics.median(timings))
                    add(Check("fsync_latency_ms", "fsync latency (4 KiB, median)", "info", f"{median} ms", median))
                except OSError as exc:
                    add(
                        Check(
                            "fsync_latency_ms",
                            "fsync latency (4 KiB, median)",
                            "no",
                            f"fsync failed: {_errno_name(exc)}",
                        )
                    )
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    add(Check("flock", "flock", "yes", "sweep tells a live writer's temp file by its lock"))
                except OSError as exc:
                    add(Check("flock", "flock", "no", f"refused ({_errno_name(exc)}): sweep falls back to pid and age"))
            finally:
                os.close(fd)
            try:
                flush_to_disk(dir_fd)
                if _statfs_magic(directory) == FUSE_SUPER_MAGIC:
                    # The kernel answers a directory fsync itself, with success, once the FUSE
                    # server has said it has no fsyncdir (sshfs, gcsfuse): success proves nothing.
                    detail = "accepted, but on FUSE that may be the kernel's no-op: the server decides"
                    add(Check("dir_fsync", "directory fsync", "info", detail))
                else:
                    detail = "accepted: the new name is flushed with its directory"
                    add(Check("dir_fsync", "directory fsync", "yes", detail))
            except OSError as exc:
                if exc.errno not in NO_DIR_FSYNC:
                    raise
                add(Check("dir_fsync", "directory fsync", "no", f"refused ({_errno_name(exc)})", _errno_name(exc)))
            add(_directory_rename_check(directory))
        finally:
            os.close(dir_fd)


def _directory_rename_check(directory: str) -> Check:
    """Rename a scratch directory holding one entry: what publishing an atomic_directory does
    (except where rename is a copy, which no probe can tell from a rename: known by mount type)."""
    copying = renames_by_copying(directory)
    if copying is not None:
        detail = f"{copying} renames a directory by copying every file, then deleting: not atomic, not used"
        return Check("dir_rename", "rename of a non-empty directory", "info", detail, copying)
    first, second = temp_name(_SCRATCH, ".stage"), temp_name(_SCRATCH, ".stage")
    os.mkdir(os.path.join(directory, first), 0o700)
    try:
        os.mkdir(os.path.join(directory, first, "occupied"), 0o700)
        try:
            os.rename(os.path.join(directory, first), os.path.join(directory, second))
        except OSError as exc:
            detail = f"refused ({_errno_name(exc)}): atomic_directory refuses before writing"
            return Check("dir_rename", "rename of a non-empty directory", "no", detail)
        return Check("dir_rename", "rename of a non-empty directory", "yes", "atomic_directory publishes by it")
    finally:
        for name in (first, second):
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


def _atomic_write(
    path: str, data: bytes, *, mode: Literal["wb", "xb"] = "wb", if_match: object | None = None
) -> CommitResult:
    with atomic_open(path, mode, accept_weaker_durability=True, if_match=if_match) as f:
        f.write(data)
    assert f.result is not None
    return f.result


def _race_check(key: str, label: str, theirs: str, path: str, if_match: object | None) -> Check:
    """The check of a conditional write (exclusive without ``if_match``) that another writer
    beats between its start and its commit: it holds if the other writer's ``theirs`` is kept."""
    if if_match is None:
        try:
            # A plain exclusive create first: without RENAME_NOREPLACE and link(2) it is refused.
            _atomic_write(path, _PAYLOAD, mode="xb")
        except UnsupportedTargetError:
            return Check(key, label, "no", "refused: neither RENAME_NOREPLACE nor link(2) here")
        os.unlink(path)
    held = _loses_race(path, "xb" if if_match is None else "wb", if_match)
    if held:
        return Check(key, label, "yes", f"refused at commit: a {theirs} meanwhile was kept")
    return Check(key, label, "no", f"a {theirs} meanwhile was replaced")


def _loses_race(path: str, mode: Literal["wb", "xb"], if_match: object | None) -> bool:
    """Start a conditional write, let another writer publish first, then commit: whether the
    commit was refused (TargetExistsError or ConflictError) and the other writer's file kept."""
    file = atomic_open(path, mode, accept_weaker_durability=True, if_match=if_match)
    try:
        file.write(b"the write that must lose")
        _atomic_write(path, b"the writer that won")
        try:
            file.commit()
        except (TargetExistsError, ConflictError):
            return _unchanged(path, b"the writer that won")
        return False
    finally:
        file.discard()


def _expect(action: Callable[[], object], error: type[BaseException]) -> bool:
    """Whether ``action`` raised ``error`` (any other error propagates)."""
    try:
        action()
    except error:
        return True
    return False


def _unchanged(path: str, expected: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read() == expected


def _status(report: DoctorReport, key: str) -> Status | None:
    found = [c.status for c in report.checks if c.key == key]
    return found[0] if found else None


_MARKER_DETAIL = (
    "commit marker (rename copies here): files are written in place under a gen.* directory inside the"
    " target and the manifest, written last, names it; open_directory, verify_directory and CheckpointStore"
    " see the old directory or the new one, never a mix. A plain reader (ls, open by path) sees the gen.*"
    " directories, an unfinished one included, and during a replace the old files until they are removed"
)


def _local_guarantees(
    report: DoctorReport, strategy: LocalStrategy, fstype: str, written: CommitResult, *, local_locks: bool
) -> None:
    def yes(key: str) -> bool:
        return _status(report, key) == "yes"

    add, advise = report.guarantees.append, report.recommendations.append
    fuse = fstype == "fuse" or fstype.startswith("fuse.")
    atomic = yes("rename") and yes("atomic_write")
    if fuse:
        add(Guarantee("atomic", "atomic", None, f"{fstype}: rename's atomicity is up to the FUSE daemon"))
        advise(
            "FUSE mounts of object stores (s3fs-fuse, gcsfuse...) rename by copying: write to the store's URL instead"
        )
    else:
        add(Guarantee("atomic", "atomic", atomic, "rename(2) in the target's directory" if atomic else "rename failed"))

    memory = fstype in _MEMORY_BACKED
    if memory:
        add(Guarantee("durable", "durable", False, f"{fstype} lives in memory: nothing here survives a reboot"))
        advise(
            f"{fstype} is memory-backed: durability='none' costs nothing more here;"
            " keep checkpoints on persistent storage"
        )
        report.options["durability"] = "none"
    elif written.durability == "full" and _status(report, "dir_fsync") == "info":
        detail = f"{fstype}: file fsync, and a directory fsync the FUSE server may ignore (sshfs, gcsfuse)"
        add(Guarantee("durable", "durable", None, detail))
    elif written.durability == "full":
        add(Guarantee("durable", "durable", True, "file and directory fsync"))
    else:
        add(Guarantee("durable", "durable", False, f"{written.durability!r} only: the directory fsync is refused"))
        advise("the directory cannot be flushed: pass accept_weaker_durability=True (or expect DurabilityError)")
        report.options["accept_weaker_durability"] = True

    exclusive = yes("exclusive_create")
    how = "renameat2(RENAME_NOREPLACE)" if yes("rename_noreplace") else "link(2)"
    if yes("o_tmpfile") and sys.platform == "linux":
        how = "linkat(2) of the O_TMPFILE"
    if not exclusive and not yes("rename_noreplace") and not yes("hard_links"):
        how = "refused (UnsupportedTargetError): neither RENAME_NOREPLACE nor link(2) here"
    elif not exclusive:
        how = "not honoured here"
    add(Guarantee("exclusive_create", "exclusive create", exclusive, how))
    if _status(report, "dir_rename") == "info":
        add(Guarantee("directories", "atomic_directory", True, _MARKER_DETAIL))
        advise(
            "atomic_directory and CheckpointStore publish by a commit marker here: read the directories"
            " through open_directory, verify_directory or CheckpointStore, not by listing them"
        )
    elif _status(report, "dir_rename") is not None:
        renames = yes("dir_rename")
        detail = "published by renaming the staging directory"
        if not renames:
            detail = "refused before writing (UnsupportedTargetError): no rename of a non-empty directory"
            advise("atomic_directory and CheckpointStore need a directory rename: use a local disk or the store's URL")
        add(Guarantee("directories", "atomic_directory", renames, detail))
    cas = yes("compare_and_swap")
    if not cas:
        cas_detail = "a stale version was accepted"
    elif not (yes("flock") or sys.platform == "win32"):
        cas_detail = "checked; no locks here"
    elif local_locks:
        # The probe's flock worked, but only among this client's processes (NFS nolock, Lustre
        # localflock): the check and the rename of two hosts' writers can still interleave.
        cas_detail = "race-free with lock=True among this host's writers only: locks do not reach other hosts"
    else:
        cas_detail = "race-free with lock=True"
    add(Guarantee("compare_and_swap", "compare-and-swap", cas, cas_detail))
    add(Guarantee("streaming", "streaming memory", True, "1 MiB buffer, whatever the file size"))
    if yes("o_tmpfile") and getattr(strategy, "use_tmpfile", False):
        add(Guarantee("cleanup", "cleanup", True, "O_TMPFILE: a killed writer leaves nothing"))
    elif yes("flock") or sys.platform == "win32":
        add(Guarantee("cleanup", "cleanup", True, "named temp files; sweep removes dead writers' leftovers"))
        advise(f"run `atomicwrite sweep {report.probed}` after crashes to remove killed writers' temp files")
    else:
        add(Guarantee("cleanup", "cleanup", False, "no locks: sweep can only judge leftovers by pid and age"))
    if fstype in _NETWORK:
        advise(
            f"{fstype} is a network file system: readers on other machines may see the old file until their"
            " attribute cache expires, and lock=True relies on the server's locking"
        )
    if not report.recommendations:
        advise("the defaults (durability='full') give every guarantee here")


# --- object stores ---------------------------------------------------------------------------


# Per protocol: (smallest part, largest part, most parts) of a multi-part upload, or None.
def _part_limits(strategy: ObjectStoreStrategy) -> tuple[int, int | None, int | None] | None:
    if strategy.protocol == "s3":
        from .._stores.s3 import MAX_PARTS, MIN_PART

        return MIN_PART, 5 << 30, MAX_PARTS
    if strategy.protocol == "gs":
        from .._stores.gcs import CHUNK_QUANTUM

        return CHUNK_QUANTUM, None, None
    if strategy.protocol == "az":
        from .._stores.azure import MAX_BLOCKS, MAX_PART, MIN_PART

        return MIN_PART, MAX_PART, MAX_BLOCKS
    return None


# The largest single object each store accepts.
_MAX_OBJECT = {"s3": 5 << 40, "gs": 5 << 40, "az": 190_700 << 30}


def _diagnose_store(
    target: str, strategy: ObjectStoreStrategy, location: str, storage: dict[str, Any], *, multipart: bool
) -> DoctorReport:
    fs = strategy.filesystem(WriteOptions(storage_options=storage))
    prefix = location.rstrip("/")
    with contextlib.suppress(FileNotFoundError):
        if fs.isfile(prefix):
            prefix = prefix.rpartition("/")[0]
    if not fs._strip_protocol(prefix).strip("/"):
        raise UnsupportedTargetError(f"{target!r}: name a bucket or a prefix in it")
    report = DoctorReport(target=target, probed=prefix + "/", kind="object store", strategy=strategy.name)
    scratch = _Scratch(lambda name: fs.rm_file(f"{prefix}/{name}"))
    try:
        _probe_store(
            report, strategy=strategy, fs=fs, prefix=prefix, storage=storage, scratch=scratch, multipart=multipart
        )
    finally:
        scratch.cleanup()
    return report


def _probe_store(
    report: DoctorReport,
    *,
    strategy: ObjectStoreStrategy,
    fs: Any,
    prefix: str,
    storage: dict[str, Any],
    scratch: _Scratch,
    multipart: bool,
) -> None:
    add = report.checks.append
    endpoint = (storage.get("client_kwargs") or {}).get("endpoint_url") or storage.get("endpoint_url")
    add(Check("store", "store", "info", f"{strategy.protocol}://" + (f" at {endpoint}" if endpoint else ""), endpoint))

    def write(
        key: str, data: bytes, *, mode: Literal["wb", "xb"] = "wb", part_size: int | None = None, **kwargs: Any
    ) -> CommitResult:
        options = dict(storage)
        if part_size is not None:
            options["part_size"] = part_size
        with atomic_open(f"{prefix}/{key}", mode, storage_options=options, **kwargs) as f:
            f.write(data)
        result: CommitResult | None = f.result
        assert result is not None
        return result

    def content(key: str) -> bytes:
        data: bytes = fs.cat_file(f"{prefix}/{key}")
        return data

    key = scratch.new()
    started = time.perf_counter()
    first = write(key, _PAYLOAD)
    elapsed = _ms(time.perf_counter() - started)
    intact = content(key) == _PAYLOAD
    add(
        Check(
            "atomic_write",
            "single-request write",
            "yes" if intact else "no",
            f"{elapsed} ms, durability {first.durability!r}, version {first.version!r}",
            {"latency_ms": elapsed, "durability": first.durability},
        )
    )
    create = _expect(lambda: write(key, b"x", mode="xb"), TargetExistsError) and content(key) == _PAYLOAD
    add(_conditional_check("conditional_create", "conditional create (If-None-Match)", create))
    # Other bytes: S3's ETag is the content's MD5, so rewriting the same bytes keeps the version.
    second = write(key, _PAYLOAD + b"2")
    cas = _expect(lambda: write(key, b"x", if_match=first.version), ConflictError) and content(key) == _PAYLOAD + b"2"
    cas = cas and write(key, _PAYLOAD, if_match=second.version).bytes_written == len(_PAYLOAD)
    add(_conditional_check("compare_and_swap", "compare-and-swap (If-Match)", cas))

    limits = _part_limits(strategy)
    # The part size and parallelism a write here would use, as the strategy settles them.
    backend = strategy.backend(f"{prefix}/{key}", WriteOptions(storage_options=storage))
    part_size, parallel = backend.part_size, backend.parallel_parts
    multipart_ok: bool | None = None
    if limits is None:
        add(Check("multipart", "multi-part upload", "n/a", "not probed: parts stay in this process"))
    else:
        smallest, largest, most = limits
        ceiling = _MAX_OBJECT.get(strategy.protocol)
        biggest = min(part_size * most, ceiling or part_size * most) if most else ceiling
        text = f"parts of {_size(smallest)}" + (f" to {_size(largest)}" if largest else "")
        text += f", at most {most:,} parts" if most else ", any number of chunks"
        if biggest:
            text += f"; with part_size={_size(part_size)} the largest object is {_size(biggest)}"
        add(
            Check(
                "multipart_limits",
                "multi-part limits",
                "info",
                text,
                {
                    "min_part": smallest,
                    "max_part": largest,
                    "max_parts": most,
                    "part_size": part_size,
                    "largest_object": biggest,
                },
            )
        )
        if most and biggest is not None and ceiling and biggest < ceiling:
            report.recommendations.append(
                f"objects above {_size(biggest)} need a larger part_size (storage option): size / {most:,}"
            )
        if multipart:
            multipart_ok = _probe_multipart(
                report,
                write=write,
                content=content,
                scratch=scratch,
                part_size=smallest,
                fs=fs,
                prefix=prefix,
                strategy=strategy,
                storage=storage,
            )
    _store_guarantees(
        report,
        strategy=strategy,
        first=first,
        create=create,
        cas=cas,
        multipart_ok=multipart_ok,
        part_size=part_size,
        parallel=parallel,
    )


def _conditional_check(key: str, label: str, honoured: bool) -> Check:
    detail = "honoured: the store refused the stale request" if honoured else "IGNORED: the store published anyway"
    return Check(key, label, "yes" if honoured else "no", detail)


def _probe_multipart(
    report: DoctorReport,
    *,
    write: Callable[..., CommitResult],
    content: Callable[[str], bytes],
    scratch: _Scratch,
    part_size: int,
    fs: Any,
    prefix: str,
    strategy: ObjectStoreStrategy,
    storage: dict[str, Any],
) -> bool:
    """A two-part write, conditional ones on it, and one discarded: whether all behaved."""
    add = report.checks.append
    data = os.urandom(1024) * (part_size // 1024) + b"tail"
    key = scratch.new()
    started = time.perf_counter()
    first = write(key, data, part_size=part_size)
    elapsed = _ms(time.perf_counter() - started)
    ok = content(key) == data
    add(Check("multipart", "multi-part write", "yes" if ok else "no", f"{_size(len(data))} in 2 parts, {elapsed} ms"))
    create = _expect(lambda: write(key, data, part_size=part_size, mode="xb"), TargetExistsError)
    add(_conditional_check("multipart_conditional_create", "conditional create, multi-part", create))
    changed = data[:-4] + b"TAIL"
    write(key, changed, part_size=part_size)
    cas = _expect(lambda: write(key, data, part_size=part_size, if_match=first.version), ConflictError)
    cas = cas and content(key) == changed
    add(_conditional_check("multipart_compare_and_swap", "compare-and-swap, multi-part", cas))

    aborted = scratch.new()
    with (
        contextlib.suppress(_ProbeAbort),
        atomic_open(f"{prefix}/{aborted}", "wb", storage_options={**storage, "part_size": part_size}) as f,
    ):
        f.write(data)
        raise _ProbeAbort
    left = fs.exists(f"{prefix}/{aborted}")
    pending: list[str] = []
    if strategy.protocol == "s3":
        from .._stores.s3 import pending_uploads

        bucket, path, _ = fs.split_path(f"{prefix}/{aborted}")
        pending = pending_uploads(fs, bucket, path)
    clean = not left and not pending
    detail = "nothing published, the upload aborted" if clean else f"published: {left}, uploads left: {len(pending)}"
    add(Check("abort", "failed write cleans up", "yes" if clean else "no", detail))
    return ok and create and cas and clean


class _ProbeAbort(Exception):
    """Raised inside a probe's with block to see what a failed write leaves."""


def _store_guarantees(
    report: DoctorReport,
    *,
    strategy: ObjectStoreStrategy,
    first: CommitResult,
    create: bool,
    cas: bool,
    multipart_ok: bool | None,
    part_size: int,
    parallel: int,
) -> None:
    add, advise = report.guarantees.append, report.recommendations.append

    def yes(key: str) -> bool:
        return _status(report, key) == "yes"

    atomic = yes("atomic_write") and _status(report, "multipart") in (None, "yes", "n/a")
    atomic = atomic and _status(report, "abort") in (None, "yes")
    add(Guarantee("atomic", "atomic", atomic, "one publishing request; nothing visible before it"))
    durable = first.durability == "full"
    add(
        Guarantee(
            "durable",
            "durable",
            durable,
            "the store acknowledges only stored objects"
            if durable
            else f"{first.durability!r}: not persistent storage",
        )
    )
    multi_create = _status(report, "multipart_conditional_create") in (None, "yes")
    multi_cas = _status(report, "multipart_compare_and_swap") in (None, "yes")
    add(
        Guarantee(
            "exclusive_create", "exclusive create", create and multi_create, "If-None-Match on the publishing request"
        )
    )
    add(Guarantee("compare_and_swap", "compare-and-swap", cas and multi_cas, "If-Match on the publishing request"))
    if not (create and multi_create and cas and multi_cas):
        advise("this endpoint ignores preconditions: do not rely on 'x' modes or if_match= here")
    memory = part_size * (parallel + 1)
    add(Guarantee("streaming", "streaming memory", True, f"about part_size x (parallel_parts + 1) = {_size(memory)}"))
    if strategy.protocol == "memory":
        add(Guarantee("cleanup", "cleanup", True, "in-process: nothing outlives the writer"))
        advise("memory:// lives in this process only: use it in tests, not for data")
    else:
        clean = _status(report, "abort") in (None, "yes")
        add(Guarantee("cleanup", "cleanup", clean, "abort on failure; markers let sweep abort killed writers' uploads"))
        advise(f"run `atomicwrite sweep {report.probed}` after crashes to abort killed writers' uploads")
    if not multipart_ok and multipart_ok is not None:
        advise("multi-part writes misbehaved here: see the checks above")
