"""The Windows strategy, run on any platform against a fake kernel32.

The fake records every Win32 call (name, arguments, flags) and carries it out on the real file
system with POSIX calls (``os.replace``, ``os.link`` + ``os.unlink``), so each test can check both
the call sequence and the real outcome: file contents, directory listings, what was left behind.
It can be scripted to fail a call with given Win32 error codes, a number of times or for good.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import atomicwrite
import atomicwrite._strategy as strategy_registry
from atomicwrite import (
    AtomicOSError,
    AtomicPermissionError,
    ConflictError,
    CrossDeviceError,
    DurabilityError,
    NoSpaceError,
    TargetExistsError,
    TargetIsADirectoryError,
    TargetNotFoundError,
    UnsupportedTargetError,
    atomic_open,
    atomic_save,
    atomic_update,
)
from atomicwrite._local.windows import (
    ERROR_ACCESS_DENIED,
    ERROR_ALREADY_EXISTS,
    ERROR_FILE_EXISTS,
    ERROR_FILE_NOT_FOUND,
    ERROR_LOCK_VIOLATION,
    ERROR_PATH_NOT_FOUND,
    ERROR_SHARING_VIOLATION,
    ERROR_UNABLE_TO_MOVE_REPLACEMENT,
    MOVEFILE_REPLACE_EXISTING,
    MOVEFILE_WRITE_THROUGH,
    REPLACEFILE_FLAGS,
    RETRY_ATTEMPTS,
    Kernel32,
    WindowsStrategy,
    _strip_extended_prefix,
    retry_delays,
)
from atomicwrite._names import host_tag, parse_temp_name
from atomicwrite._result import LocalVersion

ROOT = Path(__file__).resolve().parent.parent
REPLACE = MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH
ERROR_UNABLE_TO_REMOVE_REPLACED = 1175
ERROR_NOT_SUPPORTED = 50

Hook = Callable[..., "int | None"]


class FakeKernel32(Kernel32):
    """kernel32 as a recorder over the real (POSIX) file system.

    ``fail(name, code, times)`` makes the next ``times`` calls of ``name`` return ``code`` without
    doing anything (``times=None``: every call).  ``hooks[name]`` runs first with the call's
    arguments; a non-None return is the call's result.  ``held`` are paths some process keeps open
    without FILE_SHARE_DELETE (a live writer); ``alive`` the pids that run.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.queued: dict[str, list[int]] = {}
        self.forever: dict[str, int] = {}
        self.hooks: dict[str, Hook] = {}
        self.held: set[str] = set()
        self.alive: set[int] = set()
        self.handles = 0
        self.holding: dict[int, str] = {}

    def fail(self, name: str, code: int, times: int | None = 1) -> None:
        if times is None:
            self.forever[name] = code
        else:
            self.queued.setdefault(name, []).extend([code] * times)

    def names(self) -> list[str]:
        return [call[0] for call in self.calls]

    def _begin(self, name: str, *args: Any) -> int | None:
        self.calls.append((name, *args))
        queue = self.queued.get(name)
        if queue:
            return queue.pop(0)
        if name in self.forever:
            return self.forever[name]
        hook = self.hooks.get(name)
        return hook(*args) if hook is not None else None

    def move_file_ex(self, src: str, dst: str, flags: int) -> int:
        scripted = self._begin("MoveFileExW", src, dst, flags)
        if scripted is not None:
            return scripted
        if not os.path.lexists(src):
            return ERROR_FILE_NOT_FOUND
        if src in self.held or dst in self.held:
            return ERROR_SHARING_VIOLATION
        if os.path.isdir(src) and not os.path.islink(src):
            return self._move_directory(src, dst, flags)
        if os.path.isdir(dst) and not os.path.islink(dst):
            return ERROR_ACCESS_DENIED
        if flags & MOVEFILE_REPLACE_EXISTING:
            os.replace(src, dst)
            return 0
        try:
            os.link(src, dst, follow_symlinks=False)
        except FileExistsError:
            return ERROR_ALREADY_EXISTS
        os.unlink(src)
        return 0

    def _move_directory(self, src: str, dst: str, flags: int) -> int:
        """MoveFileExW on a directory: a rename on one volume, which never replaces anything (with
        REPLACE_EXISTING it is refused), and is refused while a handle inside is held."""
        if any(path.startswith(src + os.sep) for path in self.held):
            return ERROR_SHARING_VIOLATION
        if os.path.lexists(dst):
            return ERROR_ACCESS_DENIED if flags & MOVEFILE_REPLACE_EXISTING else ERROR_ALREADY_EXISTS
        if not os.path.isdir(os.path.dirname(dst)):
            return ERROR_PATH_NOT_FOUND
        os.rename(src, dst)
        return 0

    def replace_file(self, replaced: str, replacement: str, flags: int) -> int:
        scripted = self._begin("ReplaceFileW", replaced, replacement, flags)
        if scripted is not None:
            return scripted
        if not os.path.lexists(replaced) or not os.path.lexists(replacement):
            return ERROR_FILE_NOT_FOUND
        if replaced in self.held:
            return ERROR_UNABLE_TO_REMOVE_REPLACED
        if os.path.isdir(replaced):
            return ERROR_ACCESS_DENIED
        # What ReplaceFileW carries over from the old file, as far as POSIX can show it.
        shutil.copymode(replaced, replacement)
        os.replace(replacement, replaced)
        return 0

    def can_delete(self, path: str) -> int:
        scripted = self._begin("CanDelete", path)
        if scripted is not None:
            return scripted
        if path in self.held:
            return ERROR_SHARING_VIOLATION
        return 0 if os.path.lexists(path) else ERROR_FILE_NOT_FOUND

    def delete_file(self, path: str) -> int:
        scripted = self._begin("DeleteFileW", path)
        if scripted is not None:
            return scripted
        if path in self.held:
            return ERROR_SHARING_VIOLATION
        try:
            if not os.lstat(path).st_mode & stat.S_IWRITE:
                return ERROR_ACCESS_DENIED  # DeleteFileW refuses read-only files
            os.unlink(path)
        except FileNotFoundError:
            return ERROR_FILE_NOT_FOUND
        return 0

    def process_alive(self, pid: int) -> bool:
        self.calls.append(("IsAlive", pid))
        return pid in self.alive

    def hold_directory(self, path: str) -> tuple[int, int]:
        scripted = self._begin("HoldDirectory", path)
        if scripted is not None:
            return scripted, 0
        if not os.path.isdir(path) or os.path.islink(path):
            return ERROR_FILE_NOT_FOUND, 0
        self.handles += 1
        self.holding[self.handles] = path
        self.held.add(path)
        return 0, self.handles

    def close_handle(self, handle: int) -> None:
        self.calls.append(("CloseHandle", handle))
        self.held.discard(self.holding.pop(handle))


@pytest.fixture(autouse=True)
def _never_kill(monkeypatch: pytest.MonkeyPatch) -> None:
    """os.kill(pid, 0) terminates the process on Windows: the strategy must never call it."""

    def refuse(*args: object) -> None:
        raise AssertionError(f"os.kill{args} called by the Windows strategy")

    monkeypatch.setattr(os, "kill", refuse)


@pytest.fixture
def fake() -> FakeKernel32:
    return FakeKernel32()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def strategy(fake: FakeKernel32, sleeps: list[float], monkeypatch: pytest.MonkeyPatch) -> WindowsStrategy:
    """Route every local path through the Windows strategy over the fake kernel32."""
    chosen = WindowsStrategy(kernel32=fake, sleep=sleeps.append)
    for protocol in ("", "file", "local"):
        monkeypatch.setitem(strategy_registry._INSTANCES, protocol, chosen)
    return chosen


@pytest.fixture
def work(tmp_path: Path, strategy: WindowsStrategy) -> Path:
    directory = tmp_path / "work"
    directory.mkdir()
    return directory


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every os.fsync (FlushFileBuffers on Windows), still carried out."""
    calls: list[int] = []
    real = os.fsync

    def record(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", record)
    return calls


def listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def temps(directory: Path) -> list[str]:
    return [name for name in listing(directory) if parse_temp_name(name) is not None]


def only_temp(directory: Path) -> str:
    found = temps(directory)
    assert len(found) == 1, found
    return str(directory / found[0])


# --- publishing: which call, with which flags --------------------------------------------------


def test_new_target_is_moved_with_write_through(work: Path, fake: FakeKernel32, fsyncs: list[int]) -> None:
    target = work / "new.bin"
    with atomic_open(target, "wb") as f:
        f.write(b"fresh")
        temp = only_temp(work)
        assert fake.calls == []  # nothing is published before the commit
    assert fake.calls == [("MoveFileExW", temp, str(target), MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH)]
    assert target.read_bytes() == b"fresh"
    assert listing(work) == ["new.bin"]
    assert len(fsyncs) == 1  # the temp file, before the rename
    result = f.result
    assert result is not None
    assert (result.strategy, result.target, result.durability, result.bytes_written) == (
        "windows",
        str(target),
        "full",
        5,
    )
    assert result.version == LocalVersion.from_stat(os.lstat(target))


def test_existing_target_is_replaced_keeping_its_metadata(work: Path, fake: FakeKernel32, fsyncs: list[int]) -> None:
    target = work / "config.ini"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    with atomic_open(target, "wb") as f:
        f.write(b"new content")
        temp = only_temp(work)
    assert fake.calls == [("ReplaceFileW", str(target), temp, REPLACEFILE_FLAGS)]
    assert REPLACEFILE_FLAGS & 0x1 == 0  # REPLACEFILE_WRITE_THROUGH is documented as unsupported
    assert target.read_bytes() == b"new content"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert listing(work) == ["config.ini"]
    # The temp before publishing, then the published file: ReplaceFileW has no write-through.
    assert len(fsyncs) == 2
    assert f.result is not None
    assert f.result.durability == "full"
    assert f.result.version == LocalVersion.from_stat(os.lstat(target))


def test_preserve_permissions_off_moves_over_the_target(work: Path, fake: FakeKernel32) -> None:
    target = work / "data"
    target.write_bytes(b"old")
    with atomic_open(target, "wb", preserve_permissions=False) as f:
        f.write(b"new")
        temp = only_temp(work)
    assert fake.calls == [("MoveFileExW", temp, str(target), REPLACE)]
    assert target.read_bytes() == b"new"
    assert listing(work) == ["data"]


def test_explicit_permissions_move_and_set_the_read_only_bit_first(work: Path, fake: FakeKernel32) -> None:
    target = work / "secret"
    target.write_bytes(b"old")
    modes: list[int] = []

    def look(src: str, dst: str, flags: int) -> None:
        modes.append(stat.S_IMODE(os.lstat(src).st_mode))  # the temp's mode as it is published

    fake.hooks["MoveFileExW"] = look
    with atomic_open(target, "wb", permissions=0o444) as f:
        f.write(b"top secret")
        temp = only_temp(work)
    assert fake.calls == [("MoveFileExW", temp, str(target), REPLACE)]
    assert modes == [0o444]
    assert not target.stat().st_mode & stat.S_IWRITE
    assert target.read_bytes() == b"top secret"
    assert listing(work) == ["secret"]


def test_read_only_temp_is_still_discarded(work: Path, fake: FakeKernel32) -> None:
    target = work / "secret"
    target.write_bytes(b"old")
    fake.fail("MoveFileExW", ERROR_ACCESS_DENIED, times=None)
    with pytest.raises(AtomicPermissionError), atomic_open(target, "wb", permissions=0o400) as f:
        f.write(b"new")
    assert target.read_bytes() == b"old"
    assert listing(work) == ["secret"]


# --- exclusive creation ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["xb", "x"])
def test_exclusive_create_never_replaces(work: Path, fake: FakeKernel32, mode: str) -> None:
    target = work / "fresh.txt"
    with atomic_open(target, mode) as f:
        f.write(b"made" if "b" in mode else "made")  # type: ignore[arg-type]
        temp = only_temp(work)
    assert fake.calls == [("MoveFileExW", temp, str(target), MOVEFILE_WRITE_THROUGH)]
    assert target.read_bytes() == b"made"
    assert listing(work) == ["fresh.txt"]


def test_exclusive_refuses_an_existing_target_before_creating_anything(work: Path, fake: FakeKernel32) -> None:
    target = work / "there"
    target.write_bytes(b"old")
    with pytest.raises(TargetExistsError):
        atomic_open(target, "xb")
    assert fake.calls == []
    assert listing(work) == ["there"]


def test_exclusive_loses_the_race_at_commit(work: Path, fake: FakeKernel32) -> None:
    target = work / "race"
    with pytest.raises(TargetExistsError) as raised, atomic_open(target, "xb") as f:
        f.write(b"mine")
        temp = only_temp(work)
        target.write_bytes(b"theirs")  # another writer wins between open and commit
    assert isinstance(raised.value, FileExistsError)
    assert raised.value.errno == errno.EEXIST
    # ERROR_ALREADY_EXISTS is final: one call, no retry.
    assert fake.calls == [("MoveFileExW", temp, str(target), MOVEFILE_WRITE_THROUGH)]
    assert target.read_bytes() == b"theirs"
    assert listing(work) == ["race"]


@pytest.mark.parametrize("points_to", ["missing", "real"])
def test_exclusive_refuses_a_symlink_at_the_name(work: Path, fake: FakeKernel32, points_to: str) -> None:
    """A symlink is a name, dangling or not: "x" never creates or touches the file it names."""
    (work / "real").write_bytes(b"old")
    link = work / "link"
    link.symlink_to(points_to)
    with pytest.raises(TargetExistsError):
        atomic_open(link, "xb")
    assert fake.calls == []
    assert listing(work) == ["link", "real"]
    assert (work / "real").read_bytes() == b"old"


def test_exclusive_loses_to_a_symlink_planted_at_commit(work: Path, fake: FakeKernel32) -> None:
    target = work / "race"
    with pytest.raises(TargetExistsError), atomic_open(target, "xb") as f:
        f.write(b"mine")
        temp = only_temp(work)
        target.symlink_to("missing")
    assert fake.calls == [("MoveFileExW", temp, str(target), MOVEFILE_WRITE_THROUGH)]
    assert listing(work) == ["race"]
    assert target.is_symlink()


@pytest.mark.parametrize("code", [ERROR_ALREADY_EXISTS, ERROR_FILE_EXISTS])
def test_exclusive_maps_both_exists_codes(work: Path, fake: FakeKernel32, sleeps: list[float], code: int) -> None:
    target = work / "t"
    fake.fail("MoveFileExW", code)
    with pytest.raises(TargetExistsError), atomic_open(target, "xb") as f:
        f.write(b"x")
    assert fake.names() == ["MoveFileExW"]
    assert sleeps == []
    assert listing(work) == []


# --- retries and error mapping -----------------------------------------------------------------


@pytest.mark.parametrize("code", [ERROR_SHARING_VIOLATION, ERROR_ACCESS_DENIED, ERROR_LOCK_VIOLATION])
def test_transient_refusals_are_retried(work: Path, fake: FakeKernel32, sleeps: list[float], code: int) -> None:
    target = work / "busy"
    fake.fail("MoveFileExW", code, times=3)
    with atomic_open(target, "wb") as f:
        f.write(b"eventually")
        temp = only_temp(work)
    assert fake.calls == [("MoveFileExW", temp, str(target), REPLACE)] * 4
    assert sleeps == [0.001, 0.002, 0.004]
    assert target.read_bytes() == b"eventually"
    assert listing(work) == ["busy"]


def test_access_denied_for_good_gives_up_after_bounded_tries(
    work: Path, fake: FakeKernel32, sleeps: list[float]
) -> None:
    target = work / "locked"
    target.write_bytes(b"old")
    fake.fail("MoveFileExW", ERROR_ACCESS_DENIED, times=None)
    with pytest.raises(AtomicPermissionError) as raised, atomic_open(target, "wb", preserve_permissions=False) as f:
        f.write(b"new")
    error = raised.value
    assert isinstance(error, PermissionError)
    assert error.errno == errno.EACCES
    assert error.filename == str(target)
    assert str(target) in str(error)
    assert "MoveFileExW" in str(error)
    assert "Windows error 5" in str(error)
    assert isinstance(error.__cause__, OSError)
    assert fake.names() == ["MoveFileExW"] * RETRY_ATTEMPTS
    assert sleeps == retry_delays()
    assert len(sleeps) == RETRY_ATTEMPTS - 1
    assert sum(sleeps) < 1.0
    assert target.read_bytes() == b"old"
    assert listing(work) == ["locked"]


def test_retry_schedule_is_bounded() -> None:
    delays = retry_delays()
    assert delays[:4] == [0.001, 0.002, 0.004, 0.008]
    assert delays == sorted(delays)
    assert max(delays) <= 0.25
    assert 0.1 < sum(delays) < 1.0
    assert retry_delays(1) == []


def test_attempts_are_configurable(tmp_path: Path, fake: FakeKernel32, monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    chosen = WindowsStrategy(kernel32=fake, sleep=slept.append, attempts=3)
    monkeypatch.setitem(strategy_registry._INSTANCES, "", chosen)
    fake.fail("MoveFileExW", ERROR_SHARING_VIOLATION, times=None)
    with pytest.raises(AtomicPermissionError, match="after 3 tries"), atomic_open(tmp_path / "t", "wb") as f:
        f.write(b"x")
    assert fake.names() == ["MoveFileExW"] * 3
    assert slept == [0.001, 0.002]
    assert listing(tmp_path) == []


@pytest.mark.parametrize(
    ("code", "error", "number", "tries"),
    [
        (ERROR_SHARING_VIOLATION, AtomicPermissionError, errno.EACCES, RETRY_ATTEMPTS),
        (ERROR_LOCK_VIOLATION, AtomicPermissionError, errno.EACCES, RETRY_ATTEMPTS),
        (3, TargetNotFoundError, errno.ENOENT, 1),  # ERROR_PATH_NOT_FOUND
        (17, CrossDeviceError, errno.EXDEV, 1),  # ERROR_NOT_SAME_DEVICE
        (19, AtomicPermissionError, errno.EROFS, 1),  # ERROR_WRITE_PROTECT
        (112, NoSpaceError, errno.ENOSPC, 1),  # ERROR_DISK_FULL
        (1295, NoSpaceError, errno.EDQUOT, 1),  # ERROR_DISK_QUOTA_EXCEEDED
        (4321, AtomicOSError, 0, 1),  # anything else
    ],
)
def test_error_mapping(
    work: Path, fake: FakeKernel32, code: int, error: type[AtomicOSError], number: int, tries: int
) -> None:
    target = work / "t"
    target.write_bytes(b"old")
    fake.fail("MoveFileExW", code, times=None)
    with pytest.raises(error) as raised, atomic_open(target, "wb", preserve_permissions=False) as f:
        f.write(b"new")
    assert type(raised.value) is error
    assert raised.value.errno == number
    assert f"Windows error {code}" in str(raised.value)
    assert fake.names() == ["MoveFileExW"] * tries
    assert target.read_bytes() == b"old"
    assert listing(work) == ["t"]


def test_directory_appearing_at_the_target_is_reported_as_such(work: Path, fake: FakeKernel32) -> None:
    target = work / "d"
    with pytest.raises(TargetIsADirectoryError), atomic_open(target, "wb") as f:
        f.write(b"x")
        target.mkdir()
    assert fake.names() == ["MoveFileExW"] * RETRY_ATTEMPTS
    assert listing(work) == ["d"]
    assert target.is_dir()


def test_directory_target_is_refused_before_anything(work: Path, fake: FakeKernel32) -> None:
    (work / "d").mkdir()
    with pytest.raises(TargetIsADirectoryError):
        atomic_open(work / "d", "wb")
    assert fake.calls == []
    assert listing(work) == ["d"]


# --- ReplaceFileW's own failure modes ----------------------------------------------------------


def test_replace_file_retries_a_busy_old_file(work: Path, fake: FakeKernel32, sleeps: list[float]) -> None:
    target = work / "t"
    target.write_bytes(b"old")
    fake.fail("ReplaceFileW", ERROR_UNABLE_TO_REMOVE_REPLACED, times=2)
    with atomic_open(target, "wb") as f:
        f.write(b"new")
        temp = only_temp(work)
    assert fake.calls == [("ReplaceFileW", str(target), temp, REPLACEFILE_FLAGS)] * 3
    assert sleeps == [0.001, 0.002]
    assert target.read_bytes() == b"new"
    assert listing(work) == ["t"]


def test_replace_file_target_gone_falls_back_to_move(work: Path, fake: FakeKernel32) -> None:
    target = work / "t"
    target.write_bytes(b"old")
    with atomic_open(target, "wb") as f:
        f.write(b"new")
        temp = only_temp(work)
        target.unlink()  # someone removed it since the open: ReplaceFileW finds no file to replace
    assert fake.calls == [
        ("ReplaceFileW", str(target), temp, REPLACEFILE_FLAGS),
        ("MoveFileExW", temp, str(target), REPLACE),
    ]
    assert target.read_bytes() == b"new"
    assert listing(work) == ["t"]


def test_replace_file_unsupported_falls_back_to_move(work: Path, fake: FakeKernel32) -> None:
    target = work / "t"
    target.write_bytes(b"old")
    fake.fail("ReplaceFileW", ERROR_NOT_SUPPORTED)
    with atomic_open(target, "wb") as f:
        f.write(b"new")
    assert fake.names() == ["ReplaceFileW", "MoveFileExW"]
    assert target.read_bytes() == b"new"
    assert listing(work) == ["t"]


def test_replace_file_with_vanished_temp_fails_without_touching_the_target(work: Path, fake: FakeKernel32) -> None:
    target = work / "t"
    target.write_bytes(b"old")

    def temp_swept(replaced: str, replacement: str, flags: int) -> int:
        os.unlink(replacement)
        return ERROR_FILE_NOT_FOUND

    fake.hooks["ReplaceFileW"] = temp_swept
    with pytest.raises(TargetNotFoundError, match="ReplaceFileW"), atomic_open(target, "wb") as f:
        f.write(b"new")
    assert fake.names() == ["ReplaceFileW"]
    assert target.read_bytes() == b"old"
    assert listing(work) == ["t"]


def test_replace_file_losing_the_old_name_is_repaired_at_once(work: Path, fake: FakeKernel32) -> None:
    """ERROR_UNABLE_TO_MOVE_REPLACEMENT: "the replaced file no longer exists"; the temp is moved in."""
    target = work / "t"
    target.write_bytes(b"old")

    def lose_old(replaced: str, replacement: str, flags: int) -> int:
        os.unlink(replaced)
        return ERROR_UNABLE_TO_MOVE_REPLACEMENT

    fake.hooks["ReplaceFileW"] = lose_old
    with atomic_open(target, "wb") as f:
        f.write(b"new")
        temp = only_temp(work)
    assert fake.calls == [
        ("ReplaceFileW", str(target), temp, REPLACEFILE_FLAGS),
        ("MoveFileExW", temp, str(target), REPLACE),
    ]
    assert target.read_bytes() == b"new"
    assert listing(work) == ["t"]


def test_replace_file_losing_the_old_name_keeps_the_only_copy(work: Path, fake: FakeKernel32) -> None:
    target = work / "t"
    target.write_bytes(b"old")

    def lose_old(replaced: str, replacement: str, flags: int) -> int:
        os.unlink(replaced)
        return ERROR_UNABLE_TO_MOVE_REPLACEMENT

    fake.hooks["ReplaceFileW"] = lose_old
    fake.fail("MoveFileExW", ERROR_ACCESS_DENIED, times=None)
    with pytest.raises(AtomicPermissionError) as raised, atomic_open(target, "wb") as f:
        f.write(b"new")
        temp = only_temp(work)
    assert fake.names() == ["ReplaceFileW"] + ["MoveFileExW"] * RETRY_ATTEMPTS
    assert repr(temp) in str(raised.value)  # the message says where the content is
    assert listing(work) == [os.path.basename(temp)]
    assert Path(temp).read_bytes() == b"new"


def test_replace_file_losing_the_old_name_when_it_is_back_after_all(work: Path, fake: FakeKernel32) -> None:
    """If the old file is still there after all, a failed repair is an ordinary failure."""
    target = work / "t"
    target.write_bytes(b"old")
    fake.fail("ReplaceFileW", ERROR_UNABLE_TO_MOVE_REPLACEMENT)
    fake.fail("MoveFileExW", 112, times=None)
    with pytest.raises(NoSpaceError) as raised, atomic_open(target, "wb") as f:
        f.write(b"new")
    assert "kept" not in str(raised.value)
    assert target.read_bytes() == b"old"
    assert listing(work) == ["t"]


def test_replace_file_hard_failure_is_mapped(work: Path, fake: FakeKernel32, sleeps: list[float]) -> None:
    target = work / "t"
    target.write_bytes(b"old")
    fake.fail("ReplaceFileW", ERROR_SHARING_VIOLATION, times=None)
    with pytest.raises(AtomicPermissionError, match="ReplaceFileW"), atomic_open(target, "wb") as f:
        f.write(b"new")
    assert fake.names() == ["ReplaceFileW"] * RETRY_ATTEMPTS
    assert len(sleeps) == RETRY_ATTEMPTS - 1
    assert target.read_bytes() == b"old"
    assert listing(work) == ["t"]


# --- discarding --------------------------------------------------------------------------------


@pytest.mark.parametrize("exception", [ValueError, KeyboardInterrupt])
def test_exception_inside_with_discards_without_kernel32(
    work: Path, fake: FakeKernel32, fsyncs: list[int], exception: type[BaseException]
) -> None:
    target = work / "t"
    target.write_bytes(b"old")
    with pytest.raises(exception), atomic_open(target, "wb") as f:
        f.write(b"half")
        assert len(temps(work)) == 1
        raise exception
    assert fake.calls == []
    assert fsyncs == []
    assert target.read_bytes() == b"old"
    assert listing(work) == ["t"]


def test_explicit_discard_and_close(work: Path, fake: FakeKernel32) -> None:
    first = atomic_open(work / "a", "wb")
    first.write(b"x")
    first.discard()
    first.discard()  # twice is fine
    second = atomic_open(work / "b", "w")
    second.write("y")
    second.close()  # closing without commit discards
    assert fake.calls == []
    assert listing(work) == []
    with pytest.raises(atomicwrite.AtomicWriteError):
        first.commit()


def test_keyboard_interrupt_during_retries_discards(work: Path, fake: FakeKernel32, strategy: WindowsStrategy) -> None:
    target = work / "t"
    target.write_bytes(b"old")
    fake.fail("ReplaceFileW", ERROR_SHARING_VIOLATION, times=None)

    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    strategy._sleep = interrupted
    with pytest.raises(KeyboardInterrupt), atomic_open(target, "wb") as f:
        f.write(b"new")
    assert fake.names() == ["ReplaceFileW"]
    assert target.read_bytes() == b"old"
    assert listing(work) == ["t"]


def test_failing_serializer_leaves_target(work: Path, fake: FakeKernel32) -> None:
    target = work / "t.json"
    target.write_text('{"ok": 1}')
    with pytest.raises(TypeError):
        atomic_save({"bad": object()}, target, "json")
    assert fake.calls == []
    assert target.read_text() == '{"ok": 1}'
    assert listing(work) == ["t.json"]


# --- durability --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "flags", "flushes"),
    [("none", MOVEFILE_REPLACE_EXISTING, 0), ("file", MOVEFILE_REPLACE_EXISTING, 1), ("full", REPLACE, 1)],
)
def test_durability_on_the_move_path(
    work: Path, fake: FakeKernel32, fsyncs: list[int], level: str, flags: int, flushes: int
) -> None:
    target = work / "t"
    with atomic_open(target, "wb", durability=level) as f:  # type: ignore[call-overload]
        f.write(b"x")
    assert [call[3] for call in fake.calls] == [flags]
    assert len(fsyncs) == flushes
    assert f.result.durability == level
    assert target.read_bytes() == b"x"


@pytest.mark.parametrize(("level", "flushes"), [("none", 0), ("file", 1), ("full", 2)])
def test_durability_on_the_replace_file_path(
    work: Path, fake: FakeKernel32, fsyncs: list[int], level: str, flushes: int
) -> None:
    target = work / "t"
    target.write_bytes(b"old")
    with atomic_open(target, "wb", durability=level) as f:  # type: ignore[call-overload]
        f.write(b"new")
    assert fake.names() == ["ReplaceFileW"]
    assert len(fsyncs) == flushes
    assert f.result.durability == level
    assert target.read_bytes() == b"new"


def test_refused_flush_after_replace_file_is_reported(
    work: Path, fake: FakeKernel32, sleeps: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that does not share write access blocks the flush: the write is published, but
    only "file" durability is reported, and DurabilityError raised unless that is accepted."""
    target = work / "t"
    target.write_bytes(b"old")
    real_open = os.open

    def reader_holds_it(path: str, flags: int, *args: Any, **kwargs: Any) -> int:
        if path == str(target) and not flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "sharing violation", path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", reader_holds_it)
    with pytest.raises(DurabilityError) as raised, atomic_open(target, "wb") as f:
        f.write(b"new")
    assert raised.value.result.durability == "file"
    assert f.result is not None
    assert f.result.durability == "file"
    assert target.read_bytes() == b"new"
    assert listing(work) == ["t"]
    assert len(sleeps) == RETRY_ATTEMPTS - 1  # the flush was retried before giving up

    with atomic_open(target, "wb", accept_weaker_durability=True) as g:
        g.write(b"newer")
    assert g.result is not None
    assert g.result.durability == "file"
    assert target.read_bytes() == b"newer"


# --- versions, links, the public API -----------------------------------------------------------


def test_if_match_compare_and_swap(work: Path, fake: FakeKernel32) -> None:
    target = work / "state"
    first = atomic_save(b"v1", target, "bytes")
    second = atomic_save(b"v2", target, "bytes", if_match=first.version)
    assert target.read_bytes() == b"v2"
    calls = len(fake.calls)
    with pytest.raises(ConflictError):
        atomic_save(b"v3", target, "bytes", if_match=first.version)
    with pytest.raises(ConflictError), atomic_open(target, "wb", if_match=second.version) as f:
        f.write(b"v3")
        target.write_bytes(b"changed behind our back")
    assert len(fake.calls) == calls  # a lost compare-and-swap publishes nothing
    assert target.read_bytes() == b"changed behind our back"
    assert listing(work) == ["state"]


def test_symlink_is_written_through(work: Path, fake: FakeKernel32) -> None:
    real = work / "real"
    real.write_bytes(b"old")
    link = work / "link"
    link.symlink_to("real")
    with atomic_open(link, "wb") as f:
        f.write(b"new")
        temp = only_temp(work)
    assert fake.calls == [("ReplaceFileW", str(real), temp, REPLACEFILE_FLAGS)]
    assert link.is_symlink()
    assert real.read_bytes() == b"new"
    assert f.result is not None
    assert f.result.target == str(real)
    assert listing(work) == ["link", "real"]


def test_no_follow_replaces_the_link_itself_by_a_move(work: Path, fake: FakeKernel32) -> None:
    real = work / "real"
    real.write_bytes(b"old")
    link = work / "link"
    link.symlink_to("real")
    with atomic_open(link, "wb", follow_symlinks=False) as f:
        f.write(b"new")
        temp = only_temp(work)
    assert fake.calls == [("MoveFileExW", temp, str(link), REPLACE)]
    assert not link.is_symlink()
    assert link.read_bytes() == b"new"
    assert real.read_bytes() == b"old"


def test_text_mode_and_atomic_update(work: Path, fake: FakeKernel32) -> None:
    target = work / "counter.json"
    with atomic_open(target, "w", encoding="utf-8") as f:
        f.write("0")
    for _ in range(3):
        atomic_update(target, lambda n: n + 1, serializer="json")
    assert json.loads(target.read_text()) == 3
    assert fake.names() == ["MoveFileExW"] + ["ReplaceFileW"] * 3
    assert sorted(set(listing(work)) - {".counter.json.lock"}) == ["counter.json"]


def test_missing_directory(tmp_path: Path, strategy: WindowsStrategy, fake: FakeKernel32) -> None:
    with pytest.raises(TargetNotFoundError):
        atomic_open(tmp_path / "absent" / "t", "wb")
    assert fake.calls == []


@pytest.mark.skipif(sys.platform == "win32", reason="checks the behaviour where kernel32 does not exist")
def test_without_kernel32_nothing_is_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(strategy_registry._INSTANCES, "", WindowsStrategy())
    with pytest.raises(UnsupportedTargetError, match="kernel32"):
        atomic_open(tmp_path / "t", "wb")
    assert listing(tmp_path) == []


def test_module_needs_no_fcntl(tmp_path: Path) -> None:
    """The module imports, and writes, where fcntl does not exist (as on Windows)."""
    code = (
        "import os, sys\n"
        "sys.modules['fcntl'] = None\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from atomicwrite._local.windows import Kernel32, WindowsStrategy\n"
        "import atomicwrite._strategy as registry\n"
        "class K(Kernel32):\n"
        "    def move_file_ex(self, src, dst, flags): os.replace(src, dst); return 0\n"
        "    def replace_file(self, replaced, replacement, flags): os.replace(replacement, replaced); return 0\n"
        "    def can_delete(self, path): return 0\n"
        "    def delete_file(self, path): os.unlink(path); return 0\n"
        "    def process_alive(self, pid): return False\n"
        "    def hold_directory(self, path): return 0, 1\n"
        "    def close_handle(self, handle): pass\n"
        "registry._INSTANCES[''] = WindowsStrategy(kernel32=K())\n"
        "from atomicwrite import atomic_open, sweep\n"
        "with atomic_open(sys.argv[1], 'wb') as f:\n"
        "    f.write(b'no fcntl')\n"
        "print(f.result.strategy, sorted(sweep(os.path.dirname(sys.argv[1]))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "t")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["windows", "[]"]
    assert (tmp_path / "t").read_bytes() == b"no fcntl"
    assert listing(tmp_path) == ["t"]


# --- sweep -------------------------------------------------------------------------------------


def _leftover(directory: Path, *, host: str, pid: int, age: float = 0.0, tag: str = "0123abcd") -> Path:
    path = directory / f".data.aw{host}.{pid}.{tag}.tmp"
    path.write_bytes(b"leftover")
    if age:
        when = time.time() - age
        os.utime(path, (when, when))
    return path


@pytest.fixture
def leftovers(work: Path, fake: FakeKernel32) -> dict[str, Path]:
    here = host_tag()
    other = "deadbeef" if here != "deadbeef" else "feedface"
    fake.alive.add(4242)
    made = {
        "dead": _leftover(work, host=here, pid=999_001, tag="00000001"),
        "alive_fresh": _leftover(work, host=here, pid=4242, tag="00000002"),
        "alive_old": _leftover(work, host=here, pid=4242, age=7200, tag="00000003"),
        "foreign_fresh": _leftover(work, host=other, pid=999_002, tag="00000004"),
        "foreign_old": _leftover(work, host=other, pid=999_002, age=7200, tag="00000005"),
        "held_old": _leftover(work, host=here, pid=999_003, age=7200, tag="00000006"),
        "read_only": _leftover(work, host=here, pid=999_004, tag="00000007"),
    }
    fake.held.add(str(made["held_old"]))  # a live writer's handle, without FILE_SHARE_DELETE
    os.chmod(made["read_only"], 0o444)
    (work / ".data.tmp").write_bytes(b"user's own")
    (work / "data").write_bytes(b"target")
    return made


STALE = ("dead", "alive_old", "foreign_old", "read_only")
KEPT = ("alive_fresh", "foreign_fresh", "held_old")


def test_sweep_removes_exactly_the_dead_writers_temps(
    work: Path, fake: FakeKernel32, leftovers: dict[str, Path]
) -> None:
    removed = atomicwrite.sweep(work)
    assert removed == sorted(str(leftovers[name]) for name in STALE)
    for name in KEPT:
        assert leftovers[name].read_bytes() == b"leftover", name
    assert (work / ".data.tmp").read_bytes() == b"user's own"
    assert (work / "data").read_bytes() == b"target"
    assert sorted(call[1] for call in fake.calls if call[0] == "IsAlive") == [4242, 999_001, 999_004]
    deleted = [call[1] for call in fake.calls if call[0] == "DeleteFileW"]
    assert str(leftovers["held_old"]) in deleted  # tried: Windows refused, the writer lives
    assert str(leftovers["alive_fresh"]) not in deleted
    assert str(leftovers["foreign_fresh"]) not in deleted


def test_sweep_dry_run_probes_without_deleting(work: Path, fake: FakeKernel32, leftovers: dict[str, Path]) -> None:
    before = listing(work)
    assert atomicwrite.sweep(work, dry_run=True) == sorted(str(leftovers[name]) for name in STALE)
    assert listing(work) == before
    assert "DeleteFileW" not in fake.names()
    assert "CanDelete" in fake.names()


def test_sweep_age_limit(work: Path, leftovers: dict[str, Path]) -> None:
    removed = atomicwrite.sweep(work, older_than=3 * 3600)  # nothing is older than three hours
    assert removed == sorted(str(leftovers[name]) for name in ("dead", "read_only"))


def test_sweep_never_follows_planted_links(work: Path, fake: FakeKernel32) -> None:
    victim = work / "victim"
    victim.write_bytes(b"precious")
    planted = work / ".data.awdeadbeef.12345.0123abcd.tmp"
    planted.symlink_to(victim)
    old = time.time() - 7200
    os.utime(planted, (old, old), follow_symlinks=False)
    (work / ".x.aw00000000.1.00000000.tmp").mkdir()
    assert atomicwrite.sweep(work, older_than=0) == []
    assert victim.read_bytes() == b"precious"
    assert planted.is_symlink()
    assert fake.calls == []


def test_sweep_keeps_a_live_writers_temp(work: Path, fake: FakeKernel32) -> None:
    target = work / "t"
    live = atomic_open(target, "wb")
    live.write(b"in progress")
    live.flush()
    temp = only_temp(work)
    fake.held.add(temp)  # what the C runtime's share mode does on Windows
    old = time.time() - 7200
    os.utime(temp, (old, old))
    assert atomicwrite.sweep(work, older_than=0) == []
    assert temps(work) == [os.path.basename(temp)]
    fake.held.clear()
    live.commit()
    assert target.read_bytes() == b"in progress"
    assert listing(work) == ["t"]


@pytest.mark.parametrize("level", ["full", "file"])
def test_version_is_read_again_after_replace_file(work: Path, fake: FakeKernel32, level: str) -> None:
    """ReplaceFileW rewrites the new file's times: the reported version is the published file's,
    so a conditional write with it succeeds."""
    target = work / "t"
    target.write_bytes(b"old")

    def replace_and_touch(replaced: str, replacement: str, flags: int) -> int:
        os.replace(replacement, replaced)
        os.utime(replaced, ns=(1_000_000_000, 2_000_000_000))
        return 0

    fake.hooks["ReplaceFileW"] = replace_and_touch
    with atomic_open(target, "wb", durability=level) as f:  # type: ignore[call-overload]
        f.write(b"new")
    assert f.result.version == LocalVersion.from_stat(os.lstat(target))
    assert f.result.version.mtime_ns == 2_000_000_000
    fake.hooks.clear()
    atomic_save(b"newer", target, "bytes", if_match=f.result.version)
    assert target.read_bytes() == b"newer"


@pytest.mark.parametrize(
    ("link", "expected"),
    [
        ("\\\\?\\C:\\data\\file", "C:\\data\\file"),
        ("\\\\?\\UNC\\server\\share\\file", "\\\\server\\share\\file"),
        ("relative\\file", "relative\\file"),
        ("\\\\?\\Volume{1234}\\file", "\\\\?\\Volume{1234}\\file"),
        ("\\\\?\\C:\\" + "x" * 300, "\\\\?\\C:\\" + "x" * 300),  # too long without the prefix
    ],
)
def test_extended_prefix_of_link_targets(link: str, expected: str) -> None:
    assert _strip_extended_prefix(link) == expected


# --- the ctypes glue, against a stub kernel32.dll ----------------------------------------------


class _StubFunction:
    def __init__(self, log: list[tuple[Any, ...]], name: str) -> None:
        self.log, self.name = log, name
        self.result: Any = 1
        self.argtypes: Any = None
        self.restype: Any = None
        self.effect: Callable[..., None] | None = None

    def __call__(self, *args: Any) -> Any:
        self.log.append((self.name, *args))
        if self.effect is not None:
            self.effect(*args)
        return self.result


def test_real_kernel32_glue(monkeypatch: pytest.MonkeyPatch) -> None:
    """Load the win32-only half of the module with sys.platform faked and kernel32.dll stubbed:
    argument types are declared, success is 0, failure is GetLastError, handles are closed."""
    import ctypes
    import importlib.util

    log: list[tuple[Any, ...]] = []
    functions: dict[str, _StubFunction] = {}
    last_error = [0]

    class StubDll:
        def __getattr__(self, name: str) -> _StubFunction:
            return functions.setdefault(name, _StubFunction(log, name))

    def last_call() -> tuple[Any, ...]:
        return log[-1]

    opened: list[tuple[str, bool]] = []

    def load_dll(name: str, use_last_error: bool = False) -> StubDll:
        opened.append((name, use_last_error))
        return StubDll()

    monkeypatch.setattr(ctypes, "WinDLL", load_dll, raising=False)
    monkeypatch.setattr(ctypes, "get_last_error", lambda: last_error[0], raising=False)
    monkeypatch.setattr(sys, "platform", "win32")
    spec = importlib.util.spec_from_file_location(
        "atomicwrite._local.windows_as_win32", ROOT / "atomicwrite" / "_local" / "windows.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    kernel32 = module.load_kernel32()
    assert module.load_kernel32() is kernel32  # loaded once
    assert opened == [("kernel32", True)]
    for name in ("MoveFileExW", "ReplaceFileW", "DeleteFileW", "CreateFileW", "OpenProcess", "GetExitCodeProcess"):
        assert functions[name].argtypes is not None, name
        assert functions[name].restype is not None, name
    assert len(functions["ReplaceFileW"].argtypes) == 6

    assert kernel32.move_file_ex("a", "b", 9) == 0
    functions["MoveFileExW"].result = 0
    last_error[0] = ERROR_SHARING_VIOLATION
    assert kernel32.move_file_ex("a", "b", 9) == ERROR_SHARING_VIOLATION
    last_error[0] = 0
    assert kernel32.move_file_ex("a", "b", 9) == module.ERROR_UNKNOWN  # failed, yet no code: still nonzero
    assert kernel32.replace_file("old", "new", REPLACEFILE_FLAGS) == 0
    assert last_call() == ("ReplaceFileW", "old", "new", None, REPLACEFILE_FLAGS, None, None)  # no backup file
    assert kernel32.delete_file("x") == 0

    invalid = ctypes.c_void_p(-1).value
    functions["CreateFileW"].result = invalid
    last_error[0] = ERROR_SHARING_VIOLATION
    assert kernel32.can_delete("x") == ERROR_SHARING_VIOLATION
    functions["CreateFileW"].result = 1234
    assert kernel32.can_delete("x") == 0
    assert last_call() == ("CloseHandle", 1234)
    assert log[-2][6] & 0x02000000  # FILE_FLAG_BACKUP_SEMANTICS: a staging directory is probed too

    functions["CreateFileW"].result = invalid
    last_error[0] = ERROR_ACCESS_DENIED
    assert kernel32.hold_directory("d") == (ERROR_ACCESS_DENIED, 0)
    functions["CreateFileW"].result = 4321
    assert kernel32.hold_directory("d") == (0, 4321)
    _, path, access, share, _, disposition, flags, _ = last_call()
    assert (path, access, disposition) == ("d", 0x1, 3)  # FILE_LIST_DIRECTORY, OPEN_EXISTING
    assert share == 0x1 | 0x2  # read and write shared, delete not: nobody removes or renames it
    assert flags == 0x02000000 | 0x00200000  # a directory handle, never through a link
    kernel32.close_handle(4321)
    assert last_call() == ("CloseHandle", 4321)

    functions["OpenProcess"].result = None
    last_error[0] = 87  # ERROR_INVALID_PARAMETER: no such process
    assert kernel32.process_alive(4242) is False
    last_error[0] = ERROR_ACCESS_DENIED  # a protected process: it exists
    assert kernel32.process_alive(4242) is True
    functions["OpenProcess"].result = 77
    functions["GetExitCodeProcess"].effect = lambda handle, code: setattr(code._obj, "value", 259)
    assert kernel32.process_alive(4242) is True  # STILL_ACTIVE
    assert last_call() == ("CloseHandle", 77)
    functions["GetExitCodeProcess"].effect = lambda handle, code: setattr(code._obj, "value", 0)
    assert kernel32.process_alive(4242) is False  # exited, a handle still open somewhere
    calls = len(log)
    assert kernel32.process_alive(0) is False
    assert kernel32.process_alive(2**40) is False
    assert len(log) == calls  # impossible pids are not even asked about
