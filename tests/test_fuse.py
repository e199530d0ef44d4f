"""What the library does on FUSE mounts that lack a call it relies on.

Each test mounts the passthrough of ``tests/fusefs`` with one capability switched off, the way
real FUSE file systems lack it (sshfs, gcsfuse, s3fs, JuiceFS), and proves the library's
fallback there, or its clear refusal before anything is written:

==============  =====================================  ==============================================
switched off    how the mount answers                  what the library does
==============  =====================================  ==============================================
``tmpfile``     open(O_TMPFILE): EOPNOTSUPP            a named temp file, renamed over the target
``renameat2``   RENAME_NOREPLACE/EXCHANGE: EINVAL      exclusive create by link(2); directory
                                                       replace parks the old one, then renames
``link``        link(2): EPERM                         exclusive create by RENAME_NOREPLACE
both above      both refused                           exclusive create refused (UnsupportedTargetError)
``flock``       flock(2): EOPNOTSUPP                   writes go on unlocked, sweep judges by pid and
                                                       age, lock=True refused (UnsupportedTargetError)
``dirfsync``    fsync(dir): success, never sent on     nothing to detect; doctor says durability is
                                                       the server's (see test_power_loss for the cost)
``dirrename``   rename(non-empty dir): EXDEV           atomic_directory refused before the body runs
``atomicrename`` rename(dir): a copy, then deletes;    atomic_directory publishes by a commit marker
                the mount is typed ``fuse.gcsfuse``    (tests/test_commit_marker.py)
==============  =====================================  ==============================================

They need root and /dev/fuse, and run in the ``filesystems`` nox session.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from atomicwrite import (
    CheckpointStore,
    UnsupportedTargetError,
    atomic_directory,
    atomic_open,
    sweep,
)
from atomicwrite._cli.doctor import diagnose
from atomicwrite._local.base import filesystem_type
from atomicwrite._local.posix import PosixStrategy
from tests.fusefs import FuseMount, mount, unavailable_reason

pytestmark = [
    pytest.mark.filesystems,
    pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason())),
]

_RENAME_NOREPLACE = 1


@pytest.fixture
def backing(tmp_path: Path) -> Path:
    """The directory the mount serves, with an old file and an old checkpoint directory."""
    source = tmp_path / "backing"
    source.mkdir()
    (source / "old.txt").write_text("old")
    (source / "ckpt").mkdir()
    (source / "ckpt" / "weights").write_text("old weights")
    return source


def _mounted(backing: Path, *without: str) -> Iterator[FuseMount]:
    with mount(backing, backing.parent / "mnt", without=without) as live:
        yield live


def _entries(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def test_the_passthrough_is_a_fuse_mount_with_every_capability(backing: Path) -> None:
    for live in _mounted(backing):
        root = live.mountpoint
        assert filesystem_type(str(root)) == "fuse.passthrough"
        with atomic_open(root / "old.txt", "w") as f:
            f.write("new")
        assert f.result is not None
        assert f.result.durability == "full"
        assert (backing / "old.txt").read_text() == "new"
        # Every call the switches remove works here, through the daemon.
        os.link(root / "old.txt", root / "hard")
        dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        os.rename(root / "ckpt", root / "ckpt2")
        calls = live.calls()
        assert calls.get("link") == 1
        assert calls.get("fsyncdir", 0) >= 1


def test_without_tmpfile_a_named_temp_file_is_renamed_over_the_target(backing: Path) -> None:
    for live in _mounted(backing, "tmpfile"):
        root = live.mountpoint
        with pytest.raises(OSError, match=r"not supported|Is a directory") as refused:
            os.open(root, os.O_TMPFILE | os.O_WRONLY, 0o600)
        assert refused.value.errno in (errno.EOPNOTSUPP, errno.EISDIR)
        assert PosixStrategy().use_tmpfile  # the default tries O_TMPFILE first
        before = live.calls()
        with atomic_open(root / "old.txt", "w") as f:
            f.write("new")
        after = live.calls()
        # The temp file was created under a name (the daemon saw it) and renamed over the target.
        assert after.get("create", 0) - before.get("create", 0) == 1
        assert after.get("rename", 0) - before.get("rename", 0) == 1
        assert (root / "old.txt").read_text() == "new"
        assert _entries(root) == ["ckpt", "old.txt"]


def test_without_renameat2_exclusive_create_links_and_directories_are_parked(backing: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for live in _mounted(backing, "renameat2"):
        root = live.mountpoint
        (root / "a").write_text("a")
        result = libc.renameat2(-100, os.fsencode(root / "a"), -100, os.fsencode(root / "b"), _RENAME_NOREPLACE)
        assert result == -1
        assert ctypes.get_errno() == errno.EINVAL
        os.unlink(root / "a")

        links = live.calls().get("link", 0)
        with atomic_open(root / "new.txt", "x") as f:
            f.write("created")
        assert (root / "new.txt").read_text() == "created"
        assert live.calls().get("link", 0) == links + 1
        with pytest.raises(FileExistsError), atomic_open(root / "new.txt", "x") as f:
            f.write("must not land")
        assert (root / "new.txt").read_text() == "created"

        # No RENAME_EXCHANGE: the old directory is parked, the new one renamed in, the old removed.
        with atomic_directory(root / "ckpt") as staging:
            (Path(staging) / "weights").write_text("new weights")
        assert (root / "ckpt" / "weights").read_text() == "new weights"
        assert _entries(root) == ["ckpt", "new.txt", "old.txt"]


def test_without_link_exclusive_create_uses_rename_noreplace(backing: Path) -> None:
    for live in _mounted(backing, "link"):
        root = live.mountpoint
        with pytest.raises(PermissionError):
            os.link(root / "old.txt", root / "hard")
        with atomic_open(root / "new.txt", "x") as f:
            f.write("created")
        assert (root / "new.txt").read_text() == "created"
        assert "link" not in live.calls()
        with pytest.raises(FileExistsError), atomic_open(root / "old.txt", "x") as f:
            f.write("must not land")
        assert (root / "old.txt").read_text() == "old"
        assert _entries(root) == ["ckpt", "new.txt", "old.txt"]


def test_without_renameat2_or_link_exclusive_create_is_refused_and_leaves_nothing(backing: Path) -> None:
    for live in _mounted(backing, "renameat2", "link"):
        root = live.mountpoint
        with pytest.raises(UnsupportedTargetError, match="neither renameat2"), atomic_open(root / "new.txt", "x") as f:
            f.write("must not land")
        assert _entries(root) == ["ckpt", "old.txt"]
        # A replace needs neither call.
        with atomic_open(root / "old.txt", "w") as f:
            f.write("new")
        assert (root / "old.txt").read_text() == "new"
        report = diagnose(str(root))
        guarantees = {g.key: g for g in report.guarantees}
        assert guarantees["exclusive_create"].holds is False
        assert "UnsupportedTargetError" in guarantees["exclusive_create"].detail


def test_without_flock_writes_go_on_and_sweep_judges_by_pid(backing: Path) -> None:
    for live in _mounted(backing, "flock"):
        root = live.mountpoint
        with open(root / "old.txt", "rb") as probe, pytest.raises(OSError, match="not supported") as refused:
            fcntl.flock(probe.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert refused.value.errno == errno.EOPNOTSUPP

        with atomic_open(root / "old.txt", "w") as f:
            f.write("new")
        assert (root / "old.txt").read_text() == "new"

        # A writer killed with its temp file open leaves it; a live writer's temp stays.
        killed = subprocess.Popen(
            [sys.executable, "-c", _KILLED_WRITER, str(root / "victim.txt")],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert killed.stdout is not None
        assert killed.stdout.readline().strip() == "written"
        killed.kill()
        killed.wait()
        killed.stdout.close()
        live_writer = atomic_open(root / "live.txt", "w")
        try:
            live_writer.write("in progress")
            leftovers = [name for name in _entries(root) if name.endswith(".tmp")]
            assert len(leftovers) == 2
            removed = sweep(root, older_than=0)
            assert [os.path.basename(path) for path in removed] == [
                name for name in leftovers if name.startswith(".victim.txt")
            ]
            assert any(name.startswith(".live.txt") for name in _entries(root))
        finally:
            live_writer.discard()
        assert _entries(root) == ["ckpt", "old.txt"]

        with (
            pytest.raises(UnsupportedTargetError, match="no file locks"),
            atomic_open(root / "old.txt", "w", lock=True) as f,
        ):
            f.write("must not land")
        assert (root / "old.txt").read_text() == "new"


_KILLED_WRITER = """
import sys
import time
from atomicwrite import atomic_open
f = atomic_open(sys.argv[1], "w")
f.write("half")
f.flush()
print("written", flush=True)
time.sleep(600)
"""


def test_without_directory_fsync_the_kernel_answers_and_doctor_says_so(backing: Path) -> None:
    for live in _mounted(backing, "dirfsync"):
        root = live.mountpoint
        dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        with atomic_open(root / "old.txt", "w") as f:
            f.write("new")
        # Success without the server ever hearing of it: nothing in user space can tell.
        assert "fsyncdir" not in live.calls()
        report = diagnose(str(root))
        checks = {c.key: c for c in report.checks}
        guarantees = {g.key: g for g in report.guarantees}
        assert checks["dir_fsync"].status == "info"
        assert "no-op" in checks["dir_fsync"].detail
        assert guarantees["durable"].holds is None
        assert not report.full


def test_without_directory_rename_atomic_directory_refuses_before_writing(backing: Path) -> None:
    for live in _mounted(backing, "dirrename"):
        root = live.mountpoint
        (root / "d").mkdir()
        (root / "d" / "x").write_text("x")
        with pytest.raises(OSError, match="cross-device") as refused:
            os.rename(root / "d", root / "e")
        assert refused.value.errno == errno.EXDEV
        os.unlink(root / "d" / "x")
        os.rmdir(root / "d")

        for target in (root / "ckpt", root / "fresh"):
            body_ran = False
            refused = pytest.raises(UnsupportedTargetError, match=r"fuse\.passthrough.*nothing was written")
            with refused, atomic_directory(target) as staging:
                body_ran = True
                (Path(staging) / "weights").write_text("new weights")
            assert not body_ran
        assert (root / "ckpt" / "weights").read_text() == "old weights"
        assert _entries(root) == ["ckpt", "old.txt"]

        store = CheckpointStore(root / "run")
        body_ran = False
        with pytest.raises(UnsupportedTargetError, match="nothing was written"), store.save(step=1) as staging:
            body_ran = True
        assert not body_ran

        guarantees = {g.key: g for g in diagnose(str(root)).guarantees}
        assert guarantees["directories"].holds is False
        assert "before writing" in guarantees["directories"].detail
        # Single files need no directory rename.
        with atomic_open(root / "old.txt", "w") as f:
            f.write("new")
        assert (root / "old.txt").read_text() == "new"


def test_a_killed_process_does_not_wedge_the_mount(backing: Path) -> None:
    for live in _mounted(backing):
        root = live.mountpoint
        holder = subprocess.Popen(
            [sys.executable, "-c", _KILLED_WRITER, str(root / "victim.txt")], stdout=subprocess.PIPE, text=True
        )
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "written"
        holder.kill()
        holder.wait()
        holder.stdout.close()
        # The daemon lives in its own session: the kill reached only the writer.
        assert live.daemon.poll() is None
        assert (root / "old.txt").read_text() == "old"
        assert any(name.startswith(".victim.txt") for name in _entries(root))
