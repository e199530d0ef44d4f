"""atomic_directory on local Windows paths, run on any platform against the fake kernel32 of
tests/test_windows.py: the call sequence and flags, what readers find, crashes at every call
(real processes killed), and sweep."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import atomicwrite._strategy as strategy_registry
from atomicwrite import (
    AtomicPermissionError,
    TargetExistsError,
    TargetNotFoundError,
    UnsupportedTargetError,
    atomic_directory,
    open_directory,
    sweep,
    verify_directory,
)
from atomicwrite._directories.manifest import GENERATION_NAME, MANIFEST_NAME
from atomicwrite._local.windows import (
    ERROR_ACCESS_DENIED,
    ERROR_SHARING_VIOLATION,
    MOVEFILE_REPLACE_EXISTING,
    MOVEFILE_WRITE_THROUGH,
    WindowsStrategy,
)
from atomicwrite._names import host_tag, parse_staging_name, parse_temp_name
from tests.test_windows import FakeKernel32

ROOT = Path(__file__).resolve().parent.parent
OLD = {"model.bin": b"old model", "config.json": b"{}"}
NEW = {"model.bin": b"new model", "shards/0.bin": b"shard zero"}


@pytest.fixture(autouse=True)
def _never_kill(monkeypatch: pytest.MonkeyPatch) -> None:
    """os.kill(pid, 0) terminates the process on Windows: nothing here may call it."""

    def refuse(*args: object) -> None:
        raise AssertionError(f"os.kill{args} called on the Windows path")

    monkeypatch.setattr(os, "kill", refuse)


@pytest.fixture
def fake() -> FakeKernel32:
    return FakeKernel32()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def work(tmp_path: Path, fake: FakeKernel32, sleeps: list[float], monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory whose paths all go through the Windows strategy over the fake kernel32."""
    chosen = WindowsStrategy(kernel32=fake, sleep=sleeps.append)
    for protocol in ("", "file", "local"):
        monkeypatch.setitem(strategy_registry._INSTANCES, protocol, chosen)
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


def write(target: Path, files: dict[str, bytes], **options: object) -> object:
    with atomic_directory(target, **options) as stage:  # type: ignore[arg-type]
        fill(stage, files)
    return stage


def fill(stage: os.PathLike[str], files: dict[str, bytes]) -> None:
    """Write files into a staging directory by plain means, as a library handed it would."""
    for name, data in files.items():
        path = Path(stage, *name.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def published(target: Path) -> dict[str, bytes]:
    """The files a reader finds through the manifest, checked against it."""
    directory = open_directory(target)
    verification = verify_directory(target)
    assert verification.ok, verification.problems
    contents: dict[str, bytes] = {}
    for entry in directory.manifest.files:
        with directory.open(entry.name) as file:
            contents[entry.name] = file.read()
    return contents


def listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def stages(directory: Path) -> list[str]:
    return [name for name in listing(directory) if parse_staging_name(name) is not None]


# --- create ------------------------------------------------------------------------------------


def test_create_is_one_exclusive_write_through_move(work: Path, fake: FakeKernel32, fsyncs: list[int]) -> None:
    target = work / "ckpt"
    with atomic_directory(target) as stage:
        assert fake.held == {os.fspath(stage)}  # held open from the start: sweep keeps away
        fill(stage, NEW)
        flushed_before_commit = len(fsyncs)
    assert fake.names() == ["HoldDirectory", "CloseHandle", "MoveFileExW"]
    _, source, destination, flags = fake.calls[2]
    assert parse_staging_name(os.path.basename(source)) == (host_tag(), os.getpid(), "stage")
    assert os.path.dirname(source) == os.fspath(work)
    assert destination == os.fspath(target)
    assert flags == MOVEFILE_WRITE_THROUGH  # never REPLACE_EXISTING: the move is the existence check
    assert not fake.held
    # Each file and the manifest flushed at the end (stage.open writes without its own flush).
    assert len(fsyncs) - flushed_before_commit == len(NEW) + 1
    assert listing(work) == ["ckpt"]
    assert published(target) == NEW
    assert (target / "model.bin").read_bytes() == NEW["model.bin"]  # plain layout after a create
    assert not open_directory(target).in_generation


def test_result_and_durability_none(work: Path, fake: FakeKernel32, fsyncs: list[int]) -> None:
    target = work / "ckpt"
    with atomic_directory(target, durability="none") as stage:
        (Path(stage) / "a.bin").write_bytes(b"a")
    result = open_directory(target)
    assert [entry.name for entry in result.manifest.files] == ["a.bin"]
    assert fake.calls[-1][3] == 0  # no write-through asked
    assert fsyncs == []


def test_create_refuses_an_existing_name_before_staging(work: Path, fake: FakeKernel32) -> None:
    (work / "ckpt").mkdir()
    os.symlink(work / "nowhere", work / "dangling")
    for name in ("ckpt", "dangling"):
        with pytest.raises(TargetExistsError), atomic_directory(work / name, replace=False):
            pytest.fail("the block must not run")
    assert fake.calls == []
    assert listing(work) == ["ckpt", "dangling"]


def test_create_loses_the_race_at_commit(work: Path, fake: FakeKernel32) -> None:
    target = work / "ckpt"

    def publish_first(source: str, destination: str, flags: int) -> None:
        # Another writer publishes between the last check and the move: the move refuses.
        target.mkdir()
        (target / "theirs").write_bytes(b"theirs")

    fake.hooks["MoveFileExW"] = publish_first
    with pytest.raises(TargetExistsError), atomic_directory(target, replace=False) as stage:
        (Path(stage) / "a.bin").write_bytes(b"mine")
    assert fake.names() == ["HoldDirectory", "CloseHandle", "MoveFileExW"]
    assert listing(work) == ["ckpt"]
    assert listing(target) == ["theirs"]


def test_a_directory_appearing_during_a_replacing_create_is_replaced(work: Path, fake: FakeKernel32) -> None:
    target = work / "ckpt"
    with atomic_directory(target) as stage:
        (Path(stage) / "a.bin").write_bytes(b"mine")
        target.mkdir()
        (target / "theirs").write_bytes(b"theirs")
    assert published(target) == {"a.bin": b"mine"}
    assert not (target / "theirs").exists()


def test_a_file_at_the_target_is_refused(work: Path, fake: FakeKernel32) -> None:
    (work / "ckpt").write_bytes(b"a file")
    with pytest.raises(UnsupportedTargetError), atomic_directory(work / "ckpt"):
        pytest.fail("the block must not run")
    assert (work / "ckpt").read_bytes() == b"a file"
    assert listing(work) == ["ckpt"]


def test_without_kernel32_nothing_is_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(strategy_registry._INSTANCES, "", WindowsStrategy())
    with pytest.raises(UnsupportedTargetError, match="kernel32"), atomic_directory(tmp_path / "ckpt"):
        pytest.fail("the block must not run")
    assert listing(tmp_path) == []


def test_refused_hold_leaves_nothing(work: Path, fake: FakeKernel32) -> None:
    fake.fail("HoldDirectory", ERROR_ACCESS_DENIED)
    with pytest.raises(AtomicPermissionError), atomic_directory(work / "ckpt"):
        pytest.fail("the block must not run")
    assert listing(work) == []


# --- replace -----------------------------------------------------------------------------------


def test_replace_moves_a_generation_in_then_replaces_the_pointer(work: Path, fake: FakeKernel32) -> None:
    target = work / "ckpt"
    write(target, OLD)
    fake.calls.clear()
    write(target, NEW)
    assert fake.names() == ["HoldDirectory", "CloseHandle", "MoveFileExW", "MoveFileExW"]
    generation = open_directory(target).manifest.generation
    _, stage, moved_to, flags = fake.calls[2]
    assert parse_staging_name(os.path.basename(stage)) is not None
    assert (moved_to, flags) == (os.path.join(target, generation), MOVEFILE_WRITE_THROUGH)
    _, temp, pointer, flags = fake.calls[3]
    assert os.path.dirname(temp) == os.fspath(target)
    assert parse_temp_name(os.path.basename(temp)) is not None
    assert (pointer, flags) == (os.path.join(target, MANIFEST_NAME), MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH)
    # The old version's plain files are gone; the new one lives in its generation.
    assert listing(target) == sorted([MANIFEST_NAME, generation])
    assert open_directory(target).in_generation
    assert published(target) == NEW
    assert listing(work) == ["ckpt"]

    write(target, OLD)  # generation over generation: the older one is removed
    assert published(target) == OLD
    newest = open_directory(target).manifest.generation
    assert listing(target) == sorted([MANIFEST_NAME, newest])


def test_replace_of_a_directory_never_written_by_us(work: Path, fake: FakeKernel32) -> None:
    target = work / "ckpt"
    (target / "nested").mkdir(parents=True)
    (target / "nested" / "old.txt").write_bytes(b"old")
    write(target, NEW)
    assert published(target) == NEW
    assert not (target / "nested").exists()


def test_replace_goes_through_a_symlink(work: Path, fake: FakeKernel32) -> None:
    real = work / "real"
    write(real, OLD)
    os.symlink("real", work / "link")
    write(work / "link", NEW)
    assert os.readlink(work / "link") == "real"
    assert published(real) == NEW


def test_exception_in_the_block_leaves_the_old_directory(work: Path, fake: FakeKernel32) -> None:
    target = work / "ckpt"
    write(target, OLD)
    before = listing(target)
    with pytest.raises(RuntimeError), atomic_directory(target) as stage:
        (Path(stage) / "model.bin").write_bytes(b"half")
        raise RuntimeError("training crashed")
    assert listing(work) == ["ckpt"]
    assert listing(target) == before
    assert published(target) == OLD
    assert not fake.held


def test_a_symlink_in_the_stage_is_refused(work: Path, fake: FakeKernel32) -> None:
    target = work / "ckpt"
    write(target, OLD)
    with pytest.raises(UnsupportedTargetError, match="symlink"), atomic_directory(target) as stage:
        os.symlink("/etc/passwd", Path(stage) / "escape")
    assert listing(work) == ["ckpt"]
    assert published(target) == OLD


def test_transient_refusals_of_the_moves_are_retried(work: Path, fake: FakeKernel32, sleeps: list[float]) -> None:
    target = work / "ckpt"
    write(target, OLD)
    fake.fail("MoveFileExW", ERROR_SHARING_VIOLATION, times=3)  # a scanner in the new files
    write(target, NEW)
    assert published(target) == NEW
    assert len(sleeps) == 3


def test_pointer_refused_for_good_keeps_the_old_version(work: Path, fake: FakeKernel32, sleeps: list[float]) -> None:
    target = work / "ckpt"
    write(target, OLD)
    before = listing(target)

    def refuse_pointer(source: str, destination: str, flags: int) -> int | None:
        # A reader holds the old manifest open without FILE_SHARE_DELETE, for good.
        return ERROR_ACCESS_DENIED if destination.endswith(MANIFEST_NAME) else None

    fake.hooks["MoveFileExW"] = refuse_pointer
    with pytest.raises(AtomicPermissionError, match="manifest"):
        write(target, NEW)
    assert published(target) == OLD
    assert listing(target) == before  # the unmarked generation and the pointer temp are gone
    assert listing(work) == ["ckpt"]


def test_move_refused_for_good_discards_the_stage(work: Path, fake: FakeKernel32, sleeps: list[float]) -> None:
    fake.fail("MoveFileExW", ERROR_ACCESS_DENIED, times=None)
    with pytest.raises(AtomicPermissionError):
        write(work / "ckpt", NEW)
    assert listing(work) == []


# --- sweep -------------------------------------------------------------------------------------


def _planted_stage(directory: Path, *, pid: int, age: float) -> Path:
    path = directory / f".ckpt.aw{host_tag()}.{pid}.0123abcd.stage"
    (path / "sub").mkdir(parents=True)
    (path / "sub" / "part.bin").write_bytes(b"partial")
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return path


def test_sweep_removes_a_dead_writers_stage_and_keeps_a_live_one(work: Path, fake: FakeKernel32) -> None:
    dead = _planted_stage(work, pid=4242, age=7200)
    young_dead = _planted_stage(work, pid=4243, age=0)
    not_a_directory = work / f".ckpt.aw{host_tag()}.4244.0123abcd.stage"
    not_a_directory.write_bytes(b"a user's file")
    with atomic_directory(work / "ckpt") as stage:
        (Path(stage) / "a.bin").write_bytes(b"a")
        live = Path(stage)
        old = time.time() - 7200
        os.utime(live, (old, old))  # old, and its pid taken for dead: only the hold keeps it
        assert sorted(sweep(work, dry_run=True)) == sorted([str(dead), str(young_dead)])
        assert dead.exists()
        assert sorted(sweep(work)) == sorted([str(dead), str(young_dead)])
        assert live.exists()
        assert ("CanDelete", os.fspath(live)) in fake.calls
    assert published(work / "ckpt") == {"a.bin": b"a"}
    assert listing(work) == sorted(["ckpt", not_a_directory.name])


def test_sweep_keeps_a_young_stage_of_a_live_writer(work: Path, fake: FakeKernel32) -> None:
    stage = _planted_stage(work, pid=4242, age=0)
    fake.alive.add(4242)
    assert sweep(work) == []
    assert stage.exists()


def test_sweep_removes_unmarked_generations_of_dead_writers(work: Path, fake: FakeKernel32) -> None:
    target = work / "ckpt"
    write(target, OLD)
    write(target, NEW)
    marked = open_directory(target).manifest.generation
    dead = target / f"gen.{time.time_ns()}.{host_tag()}.4242.0123abcd"
    live = target / f"gen.{time.time_ns()}.{host_tag()}.4343.0123abcd"
    for path in (dead, live):
        path.mkdir()
        (path / "model.bin").write_bytes(b"unmarked")
    fake.alive.add(4343)
    assert sweep(work) == [str(dead)]
    assert sorted(listing(target)) == sorted([MANIFEST_NAME, marked, live.name])
    assert published(target) == NEW


# --- crashes: a real process killed before and after each kernel32 call -------------------------

_CRASHING_WRITER = """
import os, sys
sys.path.insert(0, {root!r})
import atomicwrite._strategy as registry
from atomicwrite import atomic_directory
from atomicwrite._local.windows import WindowsStrategy
from tests.test_windows import FakeKernel32

target, at, after = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "after"

class Crashing(FakeKernel32):
    count = 0

    def _crash(self, call, *args):
        index, self.count = self.count, self.count + 1
        if index == at and not after:
            os._exit(9)
        result = call(*args)
        if index == at and after:
            os._exit(9)
        return result

    def hold_directory(self, *args):
        return self._crash(super().hold_directory, *args)

    def close_handle(self, *args):
        return self._crash(super().close_handle, *args)

    def move_file_ex(self, *args):
        return self._crash(super().move_file_ex, *args)

kernel32 = Crashing()
registry._INSTANCES[""] = WindowsStrategy(kernel32=kernel32)
with atomic_directory(target) as stage:
    for name, data in {new!r}.items():
        os.makedirs(os.path.dirname(os.path.join(stage, name)), exist_ok=True)
        with open(os.path.join(stage, name), "wb") as file:
            file.write(data)
print(kernel32.count)
"""


def _crash_writer(target: Path, at: int, after: bool) -> subprocess.CompletedProcess[str]:
    code = _CRASHING_WRITER.format(root=str(ROOT), new=NEW)
    return subprocess.run(
        [sys.executable, "-c", code, str(target), str(at), "after" if after else "before"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )


@pytest.mark.parametrize("existing", [False, True], ids=["create", "replace"])
def test_a_writer_killed_at_any_call_leaves_old_or_new(work: Path, fake: FakeKernel32, existing: bool) -> None:
    target = work / "ckpt"
    if existing:
        write(target, OLD)
    old = published(target) if existing else None
    probe = work.parent / "probe"
    probe.mkdir()
    if existing:
        write(probe / "ckpt", OLD)
    finished = _crash_writer(probe / "ckpt", -1, False)
    assert finished.returncode == 0, finished.stderr
    calls = int(finished.stdout)
    assert calls == (4 if existing else 3)
    seen = []
    for at in range(calls):
        for after in (False, True):
            if existing:
                write(target, OLD)
            elif target.exists():
                shutil.rmtree(target)
            killed = _crash_writer(target, at, after)
            assert killed.returncode == 9, killed.stderr
            try:
                found: dict[str, bytes] | None = published(target)
            except TargetNotFoundError:
                found = None
            assert found in (old, NEW), (at, after)
            # The dead writer's leftovers go, and nothing a reader finds changes.
            sweep(work)
            assert listing(work) == (["ckpt"] if found is not None else [])
            if found is not None:
                assert published(target) == found
                root = open_directory(target)
                extra = [n for n in listing(target) if GENERATION_NAME.match(n) and n != root.manifest.generation]
                assert extra == []
                assert [n for n in listing(target) if n.startswith("." + MANIFEST_NAME)] == []
            seen.append(found == NEW)
    # Killed after the last call (the publishing move), the new version is there; before the
    # first, the old one.
    assert seen[0] is False
    assert seen[-1] is True


def test_old_files_a_reader_holds_open_stay_until_sweep(
    work: Path, fake: FakeKernel32, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = work / "ckpt"
    write(target, OLD)
    write(target, OLD)  # now in a generation
    old_generation = open_directory(target).manifest.generation
    real_unlink = os.unlink

    def reader_holds_model(path: str, *args: object, **kwargs: object) -> None:
        # Windows refuses to delete a file that a reader opened without FILE_SHARE_DELETE.
        if os.path.basename(path) == "model.bin":
            raise PermissionError(13, "The process cannot access the file", path)
        real_unlink(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "unlink", reader_holds_model)
    write(target, NEW)
    monkeypatch.setattr(os, "unlink", real_unlink)
    assert published(target) == NEW  # the leftover is invisible through the manifest
    assert (target / old_generation / "model.bin").read_bytes() == OLD["model.bin"]
    # Once the writer is gone (this process, as far as the fake kernel32 tells), sweep takes it.
    assert sweep(work) == [str(target / old_generation)]
    assert published(target) == NEW
    assert listing(target) == sorted([MANIFEST_NAME, open_directory(target).manifest.generation])


def test_files_written_with_stage_open_and_reported_entries(work: Path, fake: FakeKernel32) -> None:
    from atomicwrite._directories.api import begin_directory
    from atomicwrite._directories.staging import describe_files

    target = work / "ckpt"
    write(target, OLD)
    transaction = begin_directory(target)
    with transaction.staging.open("rank0.bin") as file:  # the Windows single-file protocol, inside
        file.write(b"rank zero")
    Path(transaction.staging.path("rank1.bin")).write_bytes(b"rank one")
    reported = {entry.name: entry for entry in describe_files(transaction.staging, {"rank1.bin"})}
    result = transaction.commit(reported)
    assert result.strategy == "windows"
    assert result.replaced is True
    assert published(target) == {"rank0.bin": b"rank zero", "rank1.bin": b"rank one"}
