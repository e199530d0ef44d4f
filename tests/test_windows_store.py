"""CheckpointStore on local Windows paths, run on any platform against the fake kernel32 of
tests/test_windows.py: ``latest`` is a JSON file replaced by a write-through MoveFileExW,
retention renames a generation out of sight through kernel32, nothing opens a directory as a
file, and a writer killed around the pointer move (a real process) leaves the old latest."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import atomicwrite._strategy as strategy_registry
from atomicwrite import CheckpointStore, sweep
from atomicwrite._directories.staging import describe_files
from atomicwrite._local.windows import (
    ERROR_ACCESS_DENIED,
    MOVEFILE_REPLACE_EXISTING,
    MOVEFILE_WRITE_THROUGH,
    WindowsStrategy,
)
from atomicwrite._names import host_tag, parse_staging_name, parse_temp_name
from tests.test_windows import FakeKernel32

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _windows_os(monkeypatch: pytest.MonkeyPatch) -> None:
    """What Windows refuses and POSIX allows: os.kill(pid, 0) (it terminates the process),
    os.open of a directory, and symlinks (they need a privilege).  shutil.rmtree then walks by
    path, as it does on Windows."""

    def refuse_kill(*args: object) -> None:
        raise AssertionError(f"os.kill{args} called on the Windows path")

    real_open = os.open

    def open_no_directories(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if kwargs.get("dir_fd") is not None:
            raise AssertionError("dir_fd is not supported on Windows")
        if isinstance(path, str | os.PathLike) and os.path.isdir(path):
            raise PermissionError(errno.EACCES, "Access is denied", os.fspath(path))
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    def refuse_symlink(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EPERM, "A required privilege is not held by the client")

    monkeypatch.setattr(os, "kill", refuse_kill)
    monkeypatch.setattr(os, "open", open_no_directories)
    monkeypatch.setattr(os, "symlink", refuse_symlink)
    monkeypatch.setattr(shutil, "_use_fd_functions", False)


@pytest.fixture
def fake() -> FakeKernel32:
    return FakeKernel32()


@pytest.fixture
def work(tmp_path: Path, fake: FakeKernel32, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory whose paths all go through the Windows strategy over the fake kernel32."""
    chosen = WindowsStrategy(kernel32=fake, sleep=lambda _: None)
    for protocol in ("", "file", "local"):
        monkeypatch.setitem(strategy_registry._INSTANCES, protocol, chosen)
    directory = tmp_path / "work"
    directory.mkdir()
    return directory


def save(store: CheckpointStore, data: bytes, step: int | None = None) -> None:
    with store.save(step) as stage:
        Path(stage.path("model.bin")).write_bytes(data)


def pointer_file(root: Path) -> dict[str, object]:
    """The ``latest`` pointer as a reader finds it: a regular file holding JSON."""
    path = root / "latest"
    assert path.is_file()
    assert not path.is_symlink()
    record = json.loads(path.read_bytes())
    assert isinstance(record, dict)
    return record


def pointer_moves(fake: FakeKernel32, root: Path) -> list[tuple[object, ...]]:
    """The kernel32 calls that gave ``latest`` a new content."""
    latest = os.fspath(root / "latest")
    return [call for call in fake.calls if call[0] in ("MoveFileExW", "ReplaceFileW") and latest in call[1:3]]


def read_model(store: CheckpointStore) -> bytes:
    latest = store.latest()
    assert latest is not None
    with latest.open("model.bin") as file:
        return file.read()


# --- saving and the pointer file --------------------------------------------------------------


def test_saves_move_a_pointer_file_by_write_through_moves(work: Path, fake: FakeKernel32) -> None:
    root = work / "run"
    store = CheckpointStore(root)
    assert store.pointer() is None
    assert store.latest() is None
    save(store, b"one")
    # The first pointer is created exclusively: the move itself is the existence check.
    first = pointer_moves(fake, root)
    assert [(call[0], call[3]) for call in first] == [("MoveFileExW", MOVEFILE_WRITE_THROUGH)]
    assert parse_temp_name(os.path.basename(str(first[0][1]))) == (host_tag(), os.getpid())
    for data in (b"two", b"three"):
        save(store, data)
    moves = pointer_moves(fake, root)
    # Each later pointer replaces the old one in one write-through MoveFileExW, never by
    # ReplaceFileW (which cannot write through).
    assert [(call[0], call[3]) for call in moves[1:]] == [
        ("MoveFileExW", MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH)
    ] * 2
    assert pointer_file(root) == {"generation": "gen-00000003"}
    assert store.pointer() == "gen-00000003"
    assert read_model(store) == b"three"
    assert store.verify().ok
    assert store.generations() == ["gen-00000001", "gen-00000002", "gen-00000003"]
    # No temp left beside the pointer, no symlink anywhere.
    assert sorted(os.listdir(root)) == ["gen-00000001", "gen-00000002", "gen-00000003", "latest"]
    # Another store object (another process) resolves the same pointer file.
    assert CheckpointStore(root).pointer() == "gen-00000003"


def test_durability_none_moves_without_write_through(work: Path, fake: FakeKernel32) -> None:
    root = work / "run"
    store = CheckpointStore(root, durability="none")
    save(store, b"one")
    save(store, b"two")
    assert [call[3] for call in pointer_moves(fake, root)] == [0, MOVEFILE_REPLACE_EXISTING]
    assert store.pointer() == "gen-00000002"


def test_an_older_step_never_moves_latest_back(work: Path, fake: FakeKernel32) -> None:
    root = work / "run"
    store = CheckpointStore(root)
    save(store, b"ten", step=10)
    moved = len(pointer_moves(fake, root))
    save(store, b"five", step=5)
    # Published, but latest stays on the newer step: the pointer file was not even rewritten.
    assert store.generations() == ["gen-00000005", "gen-00000010"]
    assert len(pointer_moves(fake, root)) == moved
    assert pointer_file(root) == {"generation": "gen-00000010"}
    assert read_model(store) == b"ten"


def test_save_async_moves_the_pointer_file(work: Path, fake: FakeKernel32) -> None:
    root = work / "run"
    with CheckpointStore(root, keep_last=1) as store:
        first = store.save_async(None, {"model.bin": b"one"}, serializer="bytes")
        second = store.save_async(None, {"model.bin": b"two"}, serializer="bytes")
        store.wait()
        assert first.result().manifest.files[0].name == "model.bin"
        assert second.done()
    assert pointer_file(root) == {"generation": "gen-00000002"}
    assert read_model(store) == b"two"
    assert store.generations() == ["gen-00000002"]


def test_a_pointer_move_refused_keeps_the_old_latest(work: Path, fake: FakeKernel32) -> None:
    root = work / "run"
    store = CheckpointStore(root, keep_last=1)
    save(store, b"one")
    latest = os.fspath(root / "latest")

    def refuse_pointer(source: str, destination: str, flags: int) -> int | None:
        return ERROR_ACCESS_DENIED if destination == latest else None

    fake.hooks["MoveFileExW"] = refuse_pointer
    with pytest.raises(PermissionError):
        save(store, b"two")
    # The generation is published, but latest still names the old one, which retention kept.
    assert store.generations() == ["gen-00000001", "gen-00000002"]
    assert pointer_file(root) == {"generation": "gen-00000001"}
    assert read_model(store) == b"one"
    assert sorted(os.listdir(root)) == ["gen-00000001", "gen-00000002", "latest"]  # temp removed
    del fake.hooks["MoveFileExW"]
    save(store, b"three")
    assert read_model(store) == b"three"
    # gen-00000002 is superseded; gen-00000001 stays only as the one this process resumed from.
    assert store.generations() == ["gen-00000001", "gen-00000003"]


def test_a_damaged_pointer_file_falls_back_to_the_newest_generation(work: Path, fake: FakeKernel32) -> None:
    root = work / "run"
    store = CheckpointStore(root)
    save(store, b"one")
    save(store, b"two")
    (root / "latest").write_bytes(b"{not json")
    assert store.pointer() is None
    assert read_model(store) == b"two"
    # The next save replaces the damaged pointer (no version is trusted from it but its own).
    save(store, b"three")
    assert pointer_file(root) == {"generation": "gen-00000003"}


def test_a_posix_symlink_pointer_is_still_read(work: Path, fake: FakeKernel32, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store root copied from POSIX keeps its ``latest`` symlink: readers follow it."""
    root = work / "run"
    store = CheckpointStore(root)
    save(store, b"one")
    save(store, b"two")
    (root / "latest").unlink()
    monkeypatch.undo()  # os.symlink, to plant the link
    os.symlink("gen-00000001", root / "latest")
    assert CheckpointStore(root).pointer() == "gen-00000001"


# --- retention ---------------------------------------------------------------------------------


def test_retention_renames_generations_out_of_sight_through_kernel32(work: Path, fake: FakeKernel32) -> None:
    root = work / "run"
    store = CheckpointStore(root, keep_last=2)
    for data in (b"one", b"two", b"three", b"four"):
        save(store, data)
    assert store.generations() == ["gen-00000003", "gen-00000004"]
    assert sorted(os.listdir(root)) == ["gen-00000003", "gen-00000004", "latest"]
    retired = [
        (os.path.basename(call[1]), parse_staging_name(os.path.basename(call[2])))
        for call in fake.calls
        if call[0] == "MoveFileExW" and parse_staging_name(os.path.basename(call[2]))
    ]
    assert retired == [(name, (host_tag(), os.getpid(), "trash")) for name in ("gen-00000001", "gen-00000002")]
    assert read_model(store) == b"four"
    assert store.prune(keep_last=1) == ["gen-00000003"]
    assert store.generations() == ["gen-00000004"]


def test_a_generation_a_reader_holds_stays_whole_until_a_later_prune(work: Path, fake: FakeKernel32) -> None:
    root = work / "run"
    store = CheckpointStore(root, keep_last=1)
    save(store, b"one")
    held = os.fspath(root / "gen-00000001" / "model.bin")
    fake.held.add(held)  # a reader has it open: Windows refuses to rename the directory
    save(store, b"two")
    assert store.generations() == ["gen-00000001", "gen-00000002"]
    assert store.verify("gen-00000001").ok  # not half deleted
    assert read_model(store) == b"two"
    fake.held.discard(held)
    assert store.prune() == ["gen-00000001"]
    assert store.generations() == ["gen-00000002"]


# --- sweep -------------------------------------------------------------------------------------


def test_sweep_removes_dead_writers_leftovers_and_keeps_the_store(work: Path, fake: FakeKernel32) -> None:
    root = work / "run"
    store = CheckpointStore(root)
    save(store, b"one")
    save(store, b"two")
    old = time.time() - 7200
    stage = root / f".gen-00000003.aw{host_tag()}.4242.0123abcd.stage"
    trash = root / f".gen-00000001.aw{host_tag()}.4242.0123abcd.trash"
    for directory in (stage, trash):
        directory.mkdir()
        (directory / "model.bin").write_bytes(b"partial")
        os.utime(directory, (old, old))
    temp = root / f".latest.aw{host_tag()}.4242.0123abcd.tmp"
    temp.write_bytes(b'{"generation": "gen-00000003"}')
    os.utime(temp, (old, old))
    assert sorted(sweep(root)) == sorted(map(str, (stage, trash, temp)))
    assert sorted(os.listdir(root)) == ["gen-00000001", "gen-00000002", "latest"]
    assert pointer_file(root) == {"generation": "gen-00000002"}
    assert read_model(store) == b"two"


# --- describe_files ----------------------------------------------------------------------------


def test_describe_files_flushes_through_a_writable_handle(
    work: Path, fake: FakeKernel32, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FlushFileBuffers needs GENERIC_WRITE: a read-only fd is refused, as Windows does."""
    flushed: list[int] = []
    real_fsync = os.fsync

    def flush_file_buffers(fd: int) -> None:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            raise PermissionError(errno.EACCES, "Access is denied")
        flushed.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", flush_file_buffers)
    store = CheckpointStore(work / "run")
    transaction = store.begin()
    stage = transaction.staging
    Path(stage.path("model.bin")).write_bytes(b"weights")
    shard = Path(stage.path("shards/0.bin"))
    shard.parent.mkdir()
    shard.write_bytes(b"shard")
    entries = describe_files(stage, {"model.bin", "shards", "shards/0.bin"})
    assert [(entry.name, entry.size) for entry in entries] == [("model.bin", 7), ("shards/0.bin", 5)]
    assert len(flushed) == 2
    store.finish(transaction.commit({entry.name: entry for entry in entries}))
    assert read_model(store) == b"weights"


# --- crashes: a real process killed around the pointer move -------------------------------------

_CRASHING_SAVER = """
import os, sys
sys.path.insert(0, {root!r})
import atomicwrite._strategy as registry
from atomicwrite import CheckpointStore
from atomicwrite._local.windows import WindowsStrategy
from tests.test_windows import FakeKernel32

root, when = sys.argv[1], sys.argv[2]
latest = os.path.join(root, "latest")

class Crashing(FakeKernel32):
    def move_file_ex(self, source, destination, flags):
        if destination == latest and when == "before":
            os._exit(9)
        result = super().move_file_ex(source, destination, flags)
        if destination == latest and when == "after":
            os._exit(9)
        return result

registry._INSTANCES[""] = WindowsStrategy(kernel32=Crashing())
store = CheckpointStore(root, keep_last=1)
with store.save() as stage:
    with open(stage / "model.bin", "wb") as file:
        file.write(b"new")
"""


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_saver_killed_around_the_pointer_move_leaves_a_complete_latest(
    work: Path, fake: FakeKernel32, when: str
) -> None:
    root = work / "run"
    store = CheckpointStore(root)
    save(store, b"old")
    killed = subprocess.run(
        [sys.executable, "-c", _CRASHING_SAVER.format(root=str(ROOT)), str(root), when],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert killed.returncode == 9, killed.stderr
    # The generation was published before the pointer moved; latest names one or the other.
    assert store.generations() == ["gen-00000001", "gen-00000002"]
    expected = b"old" if when == "before" else b"new"
    assert read_model(store) == expected
    assert store.verify().ok
    # The dead writer's pointer temp (killed before its move) is swept; nothing else changes.
    leftovers = [name for name in os.listdir(root) if name.startswith(".latest")]
    assert len(leftovers) == (1 if when == "before" else 0)
    assert sweep(root) == [str(root / name) for name in leftovers]
    assert sorted(os.listdir(root)) == ["gen-00000001", "gen-00000002", "latest"]
    assert read_model(store) == expected
