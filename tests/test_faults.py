"""Faults: a file too large, a full disk, no permission, wrong targets, interrupts, failing
serializers and flushes.  Each must leave the old file intact and no temp behind, and raise the
documented error (an ``OSError`` subclass with the right errno, naming the target)."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

import atomicwrite
import atomicwrite._local.posix as posix
from atomicwrite import (
    AtomicOSError,
    AtomicPermissionError,
    AtomicWriteError,
    DurabilityError,
    NoSpaceError,
    TargetIsADirectoryError,
    TargetNotFoundError,
    atomic_open,
    atomic_save,
)
from atomicwrite._names import parse_temp_name
from tests._workers import collect, spawn
from tests.conftest import listing

OLD = b"old content\n" * 10


def temps(directory: Path) -> list[str]:
    return [name for name in listing(directory) if parse_temp_name(name) is not None]


# --- a file too large (RLIMIT_FSIZE -> EFBIG) -------------------------------------------------


@pytest.mark.parametrize(
    ("chunk", "total"),
    [
        pytest.param(2 << 20, 2 << 20, id="one-large-write"),  # fails inside write()
        pytest.param(4096, 512 << 10, id="buffered-until-commit"),  # fails in the commit's flush
    ],
)
def test_file_size_limit_raises_no_space(workdir: Path, chunk: int, total: int) -> None:
    target = workdir / "target"
    target.write_bytes(OLD)
    report = collect(spawn("too-large", target, 64 << 10, chunk, total))
    assert report["raised"], report
    assert report["type"] == "NoSpaceError", report
    assert "OSError" in report["mro"], report
    assert "AtomicWriteError" in report["mro"], report
    assert report["errno"] == errno.EFBIG, report
    assert str(target) in report["message"], report
    assert target.read_bytes() == OLD
    assert listing(workdir) == ["target"]


# --- a full disk (a 1 MiB tmpfs -> ENOSPC) ----------------------------------------------------


@pytest.fixture
def tiny_fs(workdir: Path, tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, mounted for this test only (needs root)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a 1 MiB tmpfs for the ENOSPC test needs root")
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("mount/umount not installed: cannot make a tiny file system for the ENOSPC test")
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (a container without CAP_SYS_ADMIN?): {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, check=False)


def _free_blocks(directory: Path) -> int:
    return os.statvfs(directory).f_bfree


def test_full_disk_raises_no_space_and_keeps_the_old_file(tiny_fs: Path) -> None:
    target = tiny_fs / "target"
    target.write_bytes(OLD)
    free = _free_blocks(tiny_fs)
    with pytest.raises(NoSpaceError) as caught, atomic_open(target, "wb") as file:
        for _ in range(16):
            file.write(b"\xff" * (256 << 10))  # 4 MiB in all, on a 1 MiB file system
    error = caught.value
    assert isinstance(error, OSError)
    assert isinstance(error, AtomicWriteError)
    assert error.errno == errno.ENOSPC
    assert str(target) in str(error)
    assert target.read_bytes() == OLD
    assert listing(tiny_fs) == ["target"]
    # The temp's blocks were given back too: an unnamed temp still held open would keep them.
    assert _free_blocks(tiny_fs) == free


def test_full_disk_through_atomic_save_pickle(tiny_fs: Path) -> None:
    target = tiny_fs / "state.pkl"
    target.write_bytes(OLD)
    free = _free_blocks(tiny_fs)
    with pytest.raises(NoSpaceError) as caught:
        atomic_save({"weights": b"\x01" * (4 << 20)}, target, "pickle")
    assert caught.value.errno == errno.ENOSPC
    assert str(target) in str(caught.value)
    assert target.read_bytes() == OLD
    assert listing(tiny_fs) == ["state.pkl"]
    assert _free_blocks(tiny_fs) == free


def test_full_disk_new_target_is_not_created(tiny_fs: Path) -> None:
    target = tiny_fs / "new.bin"
    with pytest.raises(NoSpaceError) as caught, atomic_open(target, "xb") as file:
        file.write(b"\x00" * (4 << 20))
    assert caught.value.errno == errno.ENOSPC
    assert listing(tiny_fs) == []


# --- a read-only directory --------------------------------------------------------------------


@pytest.fixture
def read_only_dir(local_variant: str) -> Iterator[Path]:
    """A 0o555 directory holding one file, reachable by the unprivileged user the test runs as."""
    if not hasattr(os, "geteuid"):
        pytest.skip("no POSIX permissions here")
    base = Path(tempfile.mkdtemp(prefix="atomicwrite-ro-"))
    directory = base / "ro"
    try:
        base.chmod(0o755)  # nobody must be able to reach the directory
        directory.mkdir()
        (directory / "existing").write_bytes(OLD)
        (directory / "existing").chmod(0o666)  # writable file: only the directory says no
        directory.chmod(0o555)
        (base / "warmup").mkdir()
        yield directory
    finally:
        if directory.exists():
            directory.chmod(0o755)
        shutil.rmtree(base)


def test_read_only_directory_raises_permission_error(read_only_dir: Path) -> None:
    report = collect(spawn("read-only", read_only_dir, read_only_dir.parent / "warmup" / "w"))
    assert report["euid"] != 0, "the check must run without root's permission bypass"
    for name in ("new", "existing", "created"):
        outcome = report[name]
        assert outcome is not None, f"{name}: the write into a read-only directory succeeded"
        assert outcome["type"] == "AtomicPermissionError", (name, outcome)
        assert "PermissionError" in outcome["mro"], outcome
        assert "AtomicWriteError" in outcome["mro"], outcome
        assert outcome["errno"] in (errno.EACCES, errno.EPERM), outcome
        assert str(read_only_dir / name) in outcome["message"], outcome
    # Nothing was created, and the existing file was left as it was.
    assert listing(read_only_dir) == ["existing"]
    assert (read_only_dir / "existing").read_bytes() == OLD
    assert issubclass(AtomicPermissionError, PermissionError)


# --- wrong targets ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["wb", "xb", "w"])
def test_directory_as_target(workdir: Path, mode: str) -> None:
    (workdir / "sub").mkdir()
    (workdir / "sub" / "inside").write_bytes(b"keep")
    with pytest.raises(TargetIsADirectoryError) as caught:
        atomic_open(workdir / "sub", mode)
    assert isinstance(caught.value, IsADirectoryError)
    assert caught.value.errno == errno.EISDIR
    assert str(workdir / "sub") in str(caught.value)
    assert listing(workdir) == ["sub"]
    assert listing(workdir / "sub") == ["inside"]
    assert (workdir / "sub" / "inside").read_bytes() == b"keep"


def test_directory_with_trailing_slash_as_target(workdir: Path) -> None:
    (workdir / "sub").mkdir()
    target = str(workdir / "sub") + os.sep
    with pytest.raises(IsADirectoryError) as caught:
        atomic_save(b"x", target, "bytes")
    assert isinstance(caught.value, TargetIsADirectoryError)
    assert caught.value.errno == errno.EISDIR
    assert target in str(caught.value)
    assert listing(workdir) == ["sub"]
    assert listing(workdir / "sub") == []


@pytest.mark.parametrize("mode", ["wb", "xb"])
def test_missing_parent_directory(workdir: Path, mode: str) -> None:
    target = workdir / "missing" / "file.bin"
    with pytest.raises(FileNotFoundError) as caught:
        atomic_open(target, mode)
    assert isinstance(caught.value, TargetNotFoundError)
    assert caught.value.errno == errno.ENOENT
    assert str(target) in str(caught.value)
    assert listing(workdir) == []


# --- interrupts -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["wb", "w"])
def test_keyboard_interrupt_in_with_block(workdir: Path, local_variant: str, mode: str) -> None:
    target = workdir / "target"
    target.write_bytes(OLD)
    with pytest.raises(KeyboardInterrupt), atomic_open(target, mode) as file:
        file.write(b"new" * 100_000 if "b" in mode else "new" * 100_000)
        file.flush()
        # The new bytes really are in a temp (named or unnamed), not in the target.
        assert len(temps(workdir)) == (1 if local_variant == "named-temp" else 0)
        assert target.read_bytes() == OLD
        raise KeyboardInterrupt
    assert target.read_bytes() == OLD
    assert listing(workdir) == ["target"]


def test_keyboard_interrupt_on_new_target_creates_nothing(workdir: Path) -> None:
    with pytest.raises(KeyboardInterrupt), atomic_open(workdir / "new", "xb") as file:
        file.write(b"partial")
        raise KeyboardInterrupt
    assert listing(workdir) == []


def _open_temp_fds(pid: int, directory: Path) -> list[str]:
    """The files under ``directory`` that process ``pid`` holds open."""
    found = []
    fd_dir = Path(f"/proc/{pid}/fd")
    for entry in fd_dir.iterdir():
        try:
            link = os.readlink(entry)
        except OSError:
            continue
        if link.startswith(str(directory) + os.sep):
            found.append(link)
    return found


def test_sigint_while_writing(workdir: Path, local_variant: str) -> None:
    target = workdir / "target"
    target.write_bytes(OLD)
    proc = spawn("interruptible", target)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", (line, proc.stderr.read() if proc.stderr else "")
        # The writer is mid-write: its bytes are in a temp file beside the target.
        if local_variant == "named-temp":
            assert len(temps(workdir)) == 1
        elif os.path.isdir(f"/proc/{proc.pid}/fd"):
            held = _open_temp_fds(proc.pid, workdir)
            assert any("(deleted)" in link for link in held), held
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    # Python ends an unhandled KeyboardInterrupt by dying of SIGINT; the with block discarded.
    assert proc.returncode == -signal.SIGINT, (proc.returncode, out, err)
    assert "KeyboardInterrupt" in err
    assert "interrupted" not in out
    assert target.read_bytes() == OLD
    assert listing(workdir) == ["target"]


# --- a failing serializer ---------------------------------------------------------------------


class SerializerBoom(Exception):
    pass


class Unpicklable:
    raised: ClassVar[list[SerializerBoom]] = []

    def __reduce__(self) -> tuple[object, ...]:
        error = SerializerBoom("cannot pickle this")
        Unpicklable.raised.append(error)
        raise error


@pytest.mark.parametrize("existing", [True, False], ids=["replace", "create"])
def test_failing_serializer_propagates_and_leaves_target(workdir: Path, existing: bool) -> None:
    target = workdir / "state.pkl"
    if existing:
        target.write_bytes(OLD)
    Unpicklable.raised.clear()
    # 2 MiB go to the temp file before pickling fails: the failure comes mid-stream.
    with pytest.raises(SerializerBoom) as caught:
        atomic_save([b"\x07" * (2 << 20), Unpicklable()], target, "pickle")
    assert Unpicklable.raised == [caught.value], "the serializer's own exception, unchanged"
    assert type(caught.value) is SerializerBoom
    if existing:
        assert target.read_bytes() == OLD
        assert listing(workdir) == ["state.pkl"]
    else:
        assert listing(workdir) == []


# --- failing flushes --------------------------------------------------------------------------


def _failing_sync(monkeypatch: pytest.MonkeyPatch, *, directories: int | None, files: int | None) -> list[str]:
    """Make ``_sync`` fail with the given errno on directories and/or files; log every call."""
    real = posix._sync
    calls: list[str] = []

    def sync(fd: int) -> None:
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        calls.append(kind)
        code = directories if kind == "dir" else files
        if code is not None:
            raise OSError(code, os.strerror(code))
        real(fd)

    monkeypatch.setattr(posix, "_sync", sync)
    return calls


@pytest.mark.parametrize("mode", ["wb", "xb"])
def test_directory_fsync_einval_raises_durability_error(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    target = workdir / "target"
    if mode == "wb":
        target.write_bytes(OLD)
    calls = _failing_sync(monkeypatch, directories=errno.EINVAL, files=None)
    with pytest.raises(DurabilityError) as caught, atomic_open(target, mode) as file:
        file.write(b"new content")
    assert calls == ["file", "dir"]
    result = caught.value.result
    assert result.durability == "file"
    assert result.bytes_written == len(b"new content")
    assert result.target == str(target)
    assert str(target) in str(caught.value)
    assert file.result == result
    # The new content is published all the same: only its directory entry's flush failed.
    assert target.read_bytes() == b"new content"
    assert listing(workdir) == ["target"]


@pytest.mark.parametrize("mode", ["wb", "xb"])
def test_directory_fsync_einval_accepted(workdir: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    target = workdir / "target"
    if mode == "wb":
        target.write_bytes(OLD)
    calls = _failing_sync(monkeypatch, directories=errno.EINVAL, files=None)
    with atomic_open(target, mode, accept_weaker_durability=True) as file:
        file.write(b"new content")
    assert calls == ["file", "dir"]
    assert file.result is not None
    assert file.result.durability == "file"
    assert target.read_bytes() == b"new content"
    assert listing(workdir) == ["target"]
    # Through atomic_save too.
    result = atomic_save(b"again", target, "bytes", accept_weaker_durability=True, exclusive=False)
    assert result.durability == "file"
    assert target.read_bytes() == b"again"


def test_durability_file_never_flushes_the_directory(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = workdir / "target"
    calls = _failing_sync(monkeypatch, directories=errno.EINVAL, files=None)
    result = atomic_save(b"data", target, "bytes", durability="file")
    assert calls == ["file"]
    assert result.durability == "file"
    assert target.read_bytes() == b"data"
    assert listing(workdir) == ["target"]


@pytest.mark.parametrize("mode", ["wb", "xb"])
def test_file_fsync_eio_keeps_old_content(workdir: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    target = workdir / "target"
    if mode == "wb":
        target.write_bytes(OLD)
    calls = _failing_sync(monkeypatch, directories=None, files=errno.EIO)
    with pytest.raises(AtomicOSError) as caught, atomic_open(target, mode) as file:
        file.write(b"new content that never reached the disk")
    assert calls == ["file"]
    assert caught.value.errno == errno.EIO
    assert type(caught.value) is AtomicOSError
    assert str(target) in str(caught.value)
    assert file.result is None
    if mode == "wb":
        assert target.read_bytes() == OLD
        assert listing(workdir) == ["target"]
    else:
        assert listing(workdir) == []


def test_directory_fsync_eio_is_an_error_after_publishing(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EIO on the directory is a real I/O error, not "unsupported": raised, never downgraded."""
    target = workdir / "target"
    target.write_bytes(OLD)
    calls = _failing_sync(monkeypatch, directories=errno.EIO, files=None)
    with pytest.raises(AtomicOSError) as caught:
        atomic_save(b"new", target, "bytes", accept_weaker_durability=True)
    assert calls == ["file", "dir"]
    assert caught.value.errno == errno.EIO
    assert not isinstance(caught.value, DurabilityError)
    assert str(target) in str(caught.value)
    # Published before the flush failed; the temp name is never unlinked after that.
    assert target.read_bytes() == b"new"
    assert listing(workdir) == ["target"]


def test_errors_are_os_errors() -> None:
    for cls in (NoSpaceError, TargetIsADirectoryError, TargetNotFoundError, AtomicPermissionError):
        assert issubclass(cls, OSError)
        assert issubclass(cls, atomicwrite.AtomicWriteError)
