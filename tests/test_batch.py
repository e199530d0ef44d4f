"""atomic_batch: many files flushed, then published, then one directory flush per directory.

The promise is per file (old or complete new content, whatever happens), plus: nothing is
published before every file is flushed, nothing at all if the block raises, and the flushes
really are shared (counted with strace).  A writer killed with SIGKILL at every rename and every
flush of a batch leaves each target old or new, and only leftovers that sweep() removes.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import atomicwrite
from atomicwrite import (
    AtomicBatch,
    BatchError,
    DurabilityError,
    TargetExistsError,
    UsageError,
    atomic_batch,
    atomic_open,
    sweep,
)
from tests._workers import ROOT
from tests.test_syscalls import _strace

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="strace is Linux's")


def _contents(directory: Path) -> dict[str, bytes]:
    return {entry.name: entry.read_bytes() for entry in sorted(directory.iterdir())}


def test_publishes_every_file_when_the_batch_ends(tmp_path: Path) -> None:
    (tmp_path / "old.bin").write_bytes(b"old")
    with atomic_batch() as batch:
        with batch.open(tmp_path / "old.bin", "wb") as first:
            first.write(b"new")
        with batch.open(tmp_path / "note.txt", "w", encoding="utf-8") as second:
            second.write("caf\u00e9")
        # Flushed and closed, but not published while the batch is open.
        assert (tmp_path / "old.bin").read_bytes() == b"old"
        assert not (tmp_path / "note.txt").exists()
        assert first.result is None
        assert "staged" in repr(first)
    assert _contents(tmp_path) == {"note.txt": "caf\u00e9".encode(), "old.bin": b"new"}
    results = batch.results
    assert [Path(result.target).name for result in results] == ["old.bin", "note.txt"]
    assert [result.durability for result in results] == ["full", "full"]
    assert [result.bytes_written for result in results] == [3, 5]
    assert first.result == results[0]
    assert second.result == results[1]
    assert "committed" in repr(batch)


def test_files_left_open_are_published_too(tmp_path: Path) -> None:
    with atomic_batch() as batch:
        file = batch.open(tmp_path / "a", "wb")
        file.write(b"payload")
    assert (tmp_path / "a").read_bytes() == b"payload"
    assert file.result is not None


def test_an_exception_in_the_block_publishes_nothing(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"old a")
    with pytest.raises(RuntimeError, match="stop"), atomic_batch() as batch:
        for name in ("a", "b", "c"):
            with batch.open(tmp_path / name, "wb") as file:
                file.write(b"new " + name.encode())
        raise RuntimeError("stop")
    assert _contents(tmp_path) == {"a": b"old a"}
    assert batch.results == []
    assert "discarded" in repr(batch)


def test_an_exception_in_one_file_discards_the_batch(tmp_path: Path) -> None:
    with pytest.raises(ZeroDivisionError), atomic_batch() as batch:
        with batch.open(tmp_path / "a", "wb") as file:
            file.write(b"a")
        with batch.open(tmp_path / "b", "wb") as file:
            file.write(b"partial")
            _ = 1 / 0
    assert _contents(tmp_path) == {}


def test_a_discarded_file_is_left_out(tmp_path: Path) -> None:
    with atomic_batch() as batch:
        with batch.open(tmp_path / "kept", "wb") as kept:
            kept.write(b"k")
        dropped = batch.open(tmp_path / "dropped", "wb")
        dropped.write(b"d")
        dropped.discard()
    assert _contents(tmp_path) == {"kept": b"k"}
    assert dropped.discarded
    assert len(batch.results) == 1


def test_a_failed_publish_names_what_was_and_was_not_published(tmp_path: Path) -> None:
    with pytest.raises(BatchError) as caught, atomic_batch() as batch:
        with batch.open(tmp_path / "first", "wb") as file:
            file.write(b"1")
        with batch.open(tmp_path / "taken", "xb") as file:
            file.write(b"2")
        with batch.open(tmp_path / "third", "wb") as file:
            file.write(b"3")
        # Another writer creates the exclusive target after it was opened.
        (tmp_path / "taken").write_bytes(b"theirs")
    error = caught.value
    assert isinstance(error.__cause__, TargetExistsError)
    assert [Path(result.target).name for result in error.published] == ["first"]
    assert error.failed is not None
    assert error.failed.endswith("taken")
    assert [Path(name).name for name in error.discarded] == ["third"]
    # The published file is in place and the others are untouched, with no temp left behind.
    assert _contents(tmp_path) == {"first": b"1", "taken": b"theirs"}


def test_misuse_gets_typed_errors(tmp_path: Path) -> None:
    with atomic_batch() as batch:
        file = batch.open(tmp_path / "a", "wb")
        with pytest.raises(UsageError, match="batch"):
            file.commit()
        with pytest.raises(UsageError, match="lock=True"):
            batch.open(tmp_path / "b", "wb", lock=True)
        with pytest.raises(UsageError, match="mode"):
            batch.open(tmp_path / "c", "ab")
    with pytest.raises(UsageError, match="committed"):
        batch.open(tmp_path / "d", "wb")
    assert _contents(tmp_path) == {"a": b""}


def test_options_per_file_override_the_batch(tmp_path: Path) -> None:
    with atomic_batch(durability="none") as batch:
        with batch.open(tmp_path / "fast", "wb") as file:
            file.write(b"f")
        with batch.open(tmp_path / "safe", "wb", durability="full", permissions=0o600) as file:
            file.write(b"s")
    assert [result.durability for result in batch.results] == ["none", "full"]
    assert (tmp_path / "safe").stat().st_mode & 0o777 == 0o600


def test_strategies_that_cannot_stage_commit_file_by_file() -> None:
    import fsspec

    memory = fsspec.filesystem("memory")
    with atomic_batch() as batch:
        for name in ("x", "y"):
            with batch.open(f"memory://batch-test/{name}", "wb") as file:
                file.write(name.encode())
    assert memory.cat("/batch-test/x") == b"x"
    assert memory.cat("/batch-test/y") == b"y"
    assert [result.strategy for result in batch.results] == ["memory", "memory"]
    memory.rm("/batch-test", recursive=True)


def test_a_directory_that_cannot_be_flushed_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from atomicwrite._local import posix as _posix

    real_sync = _posix._sync

    def refuse_directories(fd: int) -> None:
        import stat

        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        real_sync(fd)

    monkeypatch.setattr(_posix, "_sync", refuse_directories)
    with pytest.raises(DurabilityError) as caught, atomic_batch() as batch, batch.open(tmp_path / "a", "wb") as file:
        file.write(b"a")
    assert caught.value.result.durability == "file"
    assert (tmp_path / "a").read_bytes() == b"a"
    with atomic_batch(accept_weaker_durability=True) as batch, batch.open(tmp_path / "b", "wb") as file:
        file.write(b"b")
    assert [result.durability for result in batch.results] == ["file"]


def test_writing_after_the_files_block_fails_instead_of_being_lost(tmp_path: Path) -> None:
    with atomic_batch() as batch:
        with batch.open(tmp_path / "a", "wb") as file:
            file.write(b"kept")
        with pytest.raises(ValueError, match="closed"):
            file.write(b"late")
    assert (tmp_path / "a").read_bytes() == b"kept"


def test_discarding_a_handed_over_file_leaves_its_target(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"old")
    with atomic_batch() as batch:
        with batch.open(tmp_path / "a", "wb") as file:
            file.write(b"new")
        file.discard()
        with batch.open(tmp_path / "b", "wb") as other:
            other.write(b"b")
    assert _contents(tmp_path) == {"a": b"old", "b": b"b"}
    assert [Path(result.target).name for result in batch.results] == ["b"]


def _failing_call(number: int, real: Any, error: OSError) -> Any:
    """``real``, except that its ``number``-th call (counting from 1) raises ``error``."""
    calls = {"n": 0}

    def call(*args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == number:
            raise error
        return real(*args)

    return call


def _failed_batch(directory: Path, count: int, match: str) -> list[int]:
    """Replace ``count`` old files in one batch, which must fail with an AtomicOSError matching
    ``match``; check that every target is still old, no temp is left and nothing was reported
    published.  Returns the files whose own with block was left before the failure."""
    from atomicwrite import AtomicOSError

    for index in range(count):
        (directory / f"f{index}").write_bytes(b"old")
    written = []
    with pytest.raises(AtomicOSError, match=match), atomic_batch() as batch:
        for index in range(count):
            with batch.open(directory / f"f{index}", "wb") as file:
                file.write(b"new")
            written.append(index)
    assert _contents(directory) == {f"f{index}": b"old" for index in range(count)}
    assert batch.results == []
    return written


def test_a_failed_flush_publishes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from atomicwrite._local import posix as _posix

    monkeypatch.setattr(_posix, "_sync", _failing_call(3, _posix._sync, OSError(errno.EIO, "Input/output error")))
    # The third flush fails when the batch ends: every file had been handed over.
    assert _failed_batch(tmp_path, 5, "flushing the temp file") == [0, 1, 2, 3, 4]


def test_a_failed_flush_while_writing_publishes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from atomicwrite import _batch
    from atomicwrite._local import posix as _posix

    # Two files per group, each flushed in the background as the next group fills: the second
    # group's flush (files 2 and 3) fails, and the error is raised as the third group is handed
    # over, when the sixth file closes.
    monkeypatch.setattr(_batch, "_WINDOW", 2)
    monkeypatch.setattr(_posix, "_sync", _failing_call(4, _posix._sync, OSError(errno.EIO, "Input/output error")))
    assert _failed_batch(tmp_path, 6, "flushing the temp file") == [0, 1, 2, 3, 4]


@pytest.mark.skipif(sys.platform != "linux", reason="only an O_TMPFILE temp is named as its file closes")
def test_a_failure_naming_a_temp_publishes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The unnamed temp of a closing file gets its name right away (begin_stage); if that fails,
    the batch ends with the error, and the temps already named are removed with the rest."""
    from atomicwrite._local import posix as _posix

    link = _failing_call(3, _posix.PosixPendingWrite._link_tmpfile, OSError(errno.EMLINK, "Too many links"))
    monkeypatch.setattr(_posix.PosixPendingWrite, "_link_tmpfile", link)
    assert _failed_batch(tmp_path, 5, "naming the temp file") == [0, 1]


@pytest.mark.skipif(sys.platform == "win32", reason="the POSIX strategy stages; Windows commits file by file")
def test_full_groups_are_flushed_in_the_background_before_anything_is_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from atomicwrite import _batch
    from atomicwrite._local import posix as _posix

    events: list[tuple[str, str]] = []
    stage, publish = _posix.PosixPendingWrite.stage, _posix.PosixPendingWrite.publish_staged

    def recording_stage(self: _posix.PosixPendingWrite) -> None:
        events.append(("flush", threading.current_thread().name))
        stage(self)

    def recording_publish(self: _posix.PosixPendingWrite, previous: Any = None) -> str | None:
        events.append(("publish", threading.current_thread().name))
        return publish(self, previous)

    monkeypatch.setattr(_batch, "_WINDOW", 2)
    monkeypatch.setattr(_posix.PosixPendingWrite, "stage", recording_stage)
    monkeypatch.setattr(_posix.PosixPendingWrite, "publish_staged", recording_publish)
    with atomic_batch() as batch:
        for index in range(7):
            with batch.open(tmp_path / f"f{index}", "wb") as file:
                file.write(b"new")
    main = threading.current_thread().name
    # Three full groups flushed beside the writing, the last file when the batch ends, and only
    # then the renames.
    assert events == [("flush", "atomicwrite-batch-flush")] * 6 + [("flush", main)] + [("publish", main)] * 7
    assert _contents(tmp_path) == {f"f{index}": b"new" for index in range(7)}
    assert not any(thread.name == "atomicwrite-batch-flush" for thread in threading.enumerate())


def _slow_background_flushes(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Two files per group, and each flush in the background thread takes 0.2 s more; the event
    returned is set as the first of them starts."""
    from atomicwrite import _batch
    from atomicwrite._local import posix as _posix

    flushing = threading.Event()
    sync = _posix._sync

    def slow_sync(fd: int) -> None:
        if threading.current_thread().name == "atomicwrite-batch-flush":
            flushing.set()
            time.sleep(0.2)
        sync(fd)

    monkeypatch.setattr(_batch, "_WINDOW", 2)
    monkeypatch.setattr(_posix, "_sync", slow_sync)
    return flushing


@pytest.mark.skipif(sys.platform == "win32", reason="the POSIX strategy stages; Windows commits file by file")
def test_discarding_a_file_being_flushed_waits_for_its_flush(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file discarded while the background flush has it must not be closed under the flush."""
    flushing = _slow_background_flushes(monkeypatch)
    (tmp_path / "f0").write_bytes(b"old")
    with atomic_batch() as batch:
        files = []
        for index in range(2):
            with batch.open(tmp_path / f"f{index}", "wb") as file:
                file.write(b"new")
            files.append(file)
        # f1's close handed the group (f0, f1) to the flusher, which is now inside f0's flush.
        assert flushing.wait(5)
        files[0].discard()
    assert _contents(tmp_path) == {"f0": b"old", "f1": b"new"}
    assert [Path(result.target).name for result in batch.results] == ["f1"]


@pytest.mark.skipif(sys.platform == "win32", reason="the POSIX strategy stages; Windows commits file by file")
def test_an_exception_during_a_background_flush_discards_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The block raises while a group is being flushed: the batch waits for that flush, then
    discards every file; nothing is published and no temp is left."""
    flushing = _slow_background_flushes(monkeypatch)
    for index in range(3):
        (tmp_path / f"f{index}").write_bytes(b"old")
    with pytest.raises(RuntimeError, match="stop"), atomic_batch() as batch:
        for index in range(3):
            with batch.open(tmp_path / f"f{index}", "wb") as file:
                file.write(b"new")
        assert flushing.wait(5)
        raise RuntimeError("stop")
    assert _contents(tmp_path) == {f"f{index}": b"old" for index in range(3)}
    assert batch.results == []


@pytest.mark.skipif(sys.platform == "win32", reason="the POSIX strategy stages; Windows commits file by file")
def test_a_background_flush_error_discards_the_whole_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Caught and ignored, the error of a background flush still leaves every target old: the
    batch is discarded as the error is raised, and refuses new files and its commit."""
    from atomicwrite import AtomicOSError, AtomicWriteError, _batch
    from atomicwrite._local import posix as _posix

    monkeypatch.setattr(_batch, "_WINDOW", 2)
    monkeypatch.setattr(_posix, "_sync", _failing_call(1, _posix._sync, OSError(errno.EIO, "Input/output error")))
    for index in range(4):
        (tmp_path / f"f{index}").write_bytes(b"old")
    caught = []
    with pytest.raises(AtomicWriteError, match="discarded"), atomic_batch() as batch:
        for index in range(4):
            try:
                with batch.open(tmp_path / f"f{index}", "wb") as file:
                    file.write(b"new")
            except AtomicOSError as exc:
                # The first group's flush failed in the background; the second's hand-over says so.
                caught.append((index, str(exc)))
        with pytest.raises(UsageError, match="discarded"):
            batch.open(tmp_path / "late", "wb")
    assert [index for index, _ in caught] == [3]
    assert "flushing the temp file" in caught[0][1]
    assert _contents(tmp_path) == {f"f{index}": b"old" for index in range(4)}
    assert batch.results == []


@pytest.mark.skipif(sys.platform == "win32", reason="the POSIX strategy stages; Windows commits file by file")
def test_an_interrupt_while_the_flusher_starts_never_lets_it_touch_discarded_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C lands inside Thread.start(): the thread exists but runs late, after the batch has
    discarded its files.  The group goes to whoever takes it first, so the late thread finds
    nothing to do instead of flushing descriptors that were closed (or reused) meanwhile."""
    from atomicwrite import _batch

    flush_handed_over = _batch.AtomicBatch._flush_handed_over
    start = threading.Thread.start
    late: list[threading.Thread] = []
    failures: list[BaseException | None] = []

    def late_flush(self: _batch.AtomicBatch) -> None:
        if threading.current_thread().name == "atomicwrite-batch-flush":
            time.sleep(0.1)
        flush_handed_over(self)
        failures.append(self._flush_error)

    def interrupted_start(self: threading.Thread) -> None:
        start(self)
        late.append(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(_batch, "_WINDOW", 2)
    monkeypatch.setattr(_batch.AtomicBatch, "_flush_handed_over", late_flush)
    monkeypatch.setattr(threading.Thread, "start", interrupted_start)
    for index in range(2):
        (tmp_path / f"f{index}").write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), atomic_batch() as batch:
        for index in range(2):
            with batch.open(tmp_path / f"f{index}", "wb") as file:
                file.write(b"new")
    for thread in late:
        thread.join(5)
    assert failures == [None, None]
    assert _contents(tmp_path) == {f"f{index}": b"old" for index in range(2)}


@pytest.mark.skipif(sys.platform == "win32", reason="the POSIX strategy stages; Windows commits file by file")
def test_without_a_thread_the_groups_are_flushed_in_the_caller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process at its thread limit still gets its batch: each group is flushed as it fills."""
    from atomicwrite import _batch

    def no_thread(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(_batch, "_WINDOW", 2)
    monkeypatch.setattr(threading.Thread, "start", no_thread)
    with atomic_batch() as batch:
        for index in range(5):
            with batch.open(tmp_path / f"f{index}", "wb") as file:
                file.write(b"new")
            if index in (1, 3):
                # The group just filled was flushed before the file's block ended.
                assert all(file._pending._fd is None for file in batch._files)
    assert _contents(tmp_path) == {f"f{index}": b"new" for index in range(5)}
    assert len(batch.results) == 5


@linux_only
def test_descriptors_held_are_bounded_by_the_group(tmp_path: Path) -> None:
    from atomicwrite import _batch

    def open_descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_descriptors()
    most = 0
    count = 5 * _batch._WINDOW + 5
    with atomic_batch() as batch:
        for index in range(count):
            with batch.open(tmp_path / f"f{index}", "wb") as file:
                file.write(b"x")
            most = max(most, open_descriptors() - before)
    # A finished file holds its temp and its directory open until it is flushed: at most one
    # group fills while the one before it is flushed, however many files the batch writes.
    assert most <= 4 * _batch._WINDOW
    assert open_descriptors() == before
    assert len(batch.results) == count
    assert _contents(tmp_path) == {f"f{index}": b"x" for index in range(count)}


def test_a_handed_over_file_frees_its_write_buffer(tmp_path: Path) -> None:
    """Each file's write buffer (256 KiB) goes when the batch takes the file, not when the batch
    ends: a batch of thousands of files must not hold a buffer for each."""
    import tracemalloc

    from atomicwrite import _api

    count = 40
    tracemalloc.start()
    try:
        with atomic_batch() as batch:
            before = tracemalloc.get_traced_memory()[0]
            for index in range(count):
                with batch.open(tmp_path / f"f{index}", "wb") as file:
                    file.write(b"x" * 100)
            held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # Forty buffers would be 10 MiB; what stays per file is its objects, a few KiB.
    assert held < count * _api._BUFFER_SIZE // 8
    assert _contents(tmp_path) == {f"f{index}": b"x" * 100 for index in range(count)}


@pytest.mark.skipif(sys.platform == "win32", reason="sweep tells a live writer by its flock on POSIX")
def test_a_handed_over_file_waiting_for_its_flush_is_never_swept(tmp_path: Path) -> None:
    """A file handed to the batch is named in its directory, and stays open until its group is
    flushed.  A sweep that finds it then, however old it looks, must leave it to its live
    writer: the lock on it, not its age, tells that writer is alive.  (Once flushed and closed,
    only its age protects it; atomic_batch's documentation says so.)"""
    (tmp_path / "data.bin").write_bytes(b"old")
    with atomic_batch() as batch:
        with batch.open(tmp_path / "data.bin", "wb") as file:
            file.write(b"new")
        (temp,) = [entry for entry in os.listdir(tmp_path) if entry != "data.bin"]
        day_ago = time.time() - 86_400
        os.utime(tmp_path / temp, (day_ago, day_ago))
        assert sweep(tmp_path, older_than=0) == []
    assert _contents(tmp_path) == {"data.bin": b"new"}


def test_a_directory_swapped_during_the_batch_is_refused(tmp_path: Path) -> None:
    """Staged files close their directory until they publish; the one reopened must be the same."""
    directory = tmp_path / "data"
    directory.mkdir()
    with pytest.raises(BatchError) as caught, atomic_batch() as batch:
        with batch.open(directory / "a", "wb") as file:
            file.write(b"new")
        directory.rename(tmp_path / "moved")
        directory.mkdir()
    assert "moved or replaced" in str(caught.value.__cause__)
    assert caught.value.failed == str(directory / "a")
    assert list(directory.iterdir()) == []
    assert batch.results == []


def test_is_exported() -> None:
    assert {"atomic_batch", "AtomicBatch", "BatchError"} <= set(atomicwrite.__all__)
    assert isinstance(atomic_batch(), AtomicBatch)


WRITER = textwrap.dedent(
    """
    import sys
    from atomicwrite import atomic_batch

    directory, count = sys.argv[1], int(sys.argv[2])
    with atomic_batch() as batch:
        for index in range(count):
            with batch.open(f"{directory}/f{index}", "wb") as file:
                file.write(f"new {index} ".encode() * 1000)
    print("done", flush=True)
    """
)
COUNT = 4


def _old(index: int) -> bytes:
    return f"old {index} ".encode() * 700


def _new(index: int) -> bytes:
    return f"new {index} ".encode() * 1000


def _prepare(directory: Path) -> None:
    directory.mkdir()
    for index in range(COUNT):
        (directory / f"f{index}").write_bytes(_old(index))


def _run(directory: Path, *strace_args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", WRITER, str(directory), str(COUNT)]
    if strace_args:
        command = [_strace(), "-f", "-qq", "-e", "signal=none", *strace_args, *command]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)


@linux_only
def test_flushes_each_file_once_and_the_directory_once(tmp_path: Path) -> None:
    work = tmp_path / "work"
    _prepare(work)
    log = tmp_path / "trace"
    done = _run(work, "-e", "trace=fsync,fdatasync,sync_file_range,rename,renameat,renameat2", "-o", str(log))
    assert done.returncode == 0, done.stderr
    calls = [line.split("(")[0].split()[-1] for line in log.read_text().splitlines() if "(" in line]
    # The flushes come once all are written: the group's writeback is started, then each is flushed.
    assert calls == ["sync_file_range"] * COUNT + ["fsync"] * COUNT + ["renameat"] * COUNT + ["fsync"]
    assert _contents(work) == {f"f{index}": _new(index) for index in range(COUNT)}


@linux_only
def test_publishes_through_one_directory_descriptor(tmp_path: Path) -> None:
    """The files of one directory are renamed, and the directory flushed, through one descriptor:
    opened once for the publish step, not once per file."""
    work = tmp_path / "work"
    _prepare(work)
    log = tmp_path / "trace"
    done = _run(work, "-e", "trace=openat,renameat,fsync", "-o", str(log))
    assert done.returncode == 0, done.stderr
    # strace -f starts each line with the pid.
    lines = [line.split(maxsplit=1)[1] if line[:1].isdigit() else line for line in log.read_text().splitlines()]
    directory_opens = [line for line in lines if f'"{work}"' in line and "O_DIRECTORY" in line]
    # One per file as it begins (its temp is created there), one for the whole publish step.
    assert len(directory_opens) == COUNT + 1
    publish_fd = directory_opens[-1].rsplit("=", 1)[1].strip()
    renames = [line for line in lines if line.startswith("renameat(")]
    assert [line.split("(")[1].split(",")[0] for line in renames] == [publish_fd] * COUNT
    assert lines[-1].startswith(f"fsync({publish_fd})")
    assert _contents(work) == {f"f{index}": _new(index) for index in range(COUNT)}


@pytest.mark.skipif(sys.platform == "win32", reason="the POSIX strategy's descriptors")
def test_files_in_several_directories_hold_one_directory_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files interleaved over directories: a directory stays open only while the next file to
    publish is in it, so the publish step holds one directory at a time, whatever the batch."""
    from atomicwrite._local import posix as _posix

    directories = [tmp_path / f"d{index}" for index in range(3)]
    for directory in directories:
        directory.mkdir()

    def open_descriptors() -> int:
        return len(os.listdir("/dev/fd"))

    held_at_flush: list[int] = []
    flush_directory = _posix.PosixPendingWrite.flush_directory

    def counting_flush(self: _posix.PosixPendingWrite) -> bool:
        held_at_flush.append(open_descriptors() - before)
        return flush_directory(self)

    monkeypatch.setattr(_posix.PosixPendingWrite, "flush_directory", counting_flush)
    before = open_descriptors()
    order = [0, 0, 1, 2, 2, 0, 1]
    with atomic_batch() as batch:
        for index, which in enumerate(order):
            with batch.open(directories[which] / f"f{index}", "wb") as file:
                file.write(f"{index}".encode())
    # Published: only the last file's directory is still open; each other one is reopened.
    assert held_at_flush == [1, 1, 1]
    assert open_descriptors() == before
    assert [result.durability for result in batch.results] == ["full"] * len(order)
    for index, which in enumerate(order):
        assert (directories[which] / f"f{index}").read_bytes() == f"{index}".encode()


@linux_only
@pytest.mark.parametrize(
    ("call", "nth"),
    [("fsync", n) for n in range(1, COUNT + 1)] + [("renameat", n) for n in range(1, COUNT + 1)],
)
def test_sigkill_at_every_flush_and_rename(tmp_path: Path, call: str, nth: int) -> None:
    """Killed at each file's fsync and at each rename.  A kill at
    the directory's fsync leaves what the finished run leaves, on disk as the process saw it."""
    work = tmp_path / "work"
    _prepare(work)
    done = _run(work, "-e", f"inject={call}:signal=KILL:when={nth}")
    assert done.returncode == -signal.SIGKILL or done.returncode == 137, (done.returncode, done.stderr)
    assert "done" not in done.stdout
    renamed = 0 if call == "fsync" else nth - 1
    seen = _contents(work)
    targets = {name: content for name, content in seen.items() if not name.startswith(".")}
    # Each target is whole: old, or complete new (the first `renamed` of them, in order).
    assert targets == {f"f{index}": _new(index) if index < renamed else _old(index) for index in range(COUNT)}
    # What the dead writer left is recognisable, and sweep() removes exactly that.
    leftovers = sorted(name for name in seen if name.startswith("."))
    removed = sweep(work, older_than=0)
    assert sorted(Path(path).name for path in removed) == leftovers
    assert sorted(path.name for path in work.iterdir()) == [f"f{index}" for index in range(COUNT)]


LOOPING_WRITER = textwrap.dedent(
    """
    import sys
    from atomicwrite import atomic_batch

    directory, count = sys.argv[1], int(sys.argv[2])
    round = 0
    while True:
        round += 1
        with atomic_batch() as batch:
            for index in range(count):
                with batch.open(f"{directory}/f{index}", "wb") as file:
                    # A version is "round:index:" repeated; a torn file would not parse back.
                    file.write(f"{round}:{index}:".encode() * (200 + round % 50))
        print(round, flush=True)
    """
)


@pytest.mark.slow
def test_sigkill_at_random_moments_leaves_every_file_whole(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for attempt in range(6):
        writer = subprocess.Popen(
            [sys.executable, "-c", LOOPING_WRITER, str(work), str(COUNT)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert writer.stdout is not None
        writer.stdout.readline()  # at least one batch is complete
        time.sleep(0.01 + 0.013 * attempt)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
        for index in range(COUNT):
            content = (work / f"f{index}").read_bytes()
            unit = content.split(b":", 2)
            version = f"{int(unit[0])}:{index}:".encode()
            assert content == version * (200 + int(unit[0]) % 50), f"f{index} is torn after kill {attempt}"
        sweep(work, older_than=0)
        assert sorted(path.name for path in work.iterdir()) == [f"f{index}" for index in range(COUNT)]


def test_atomic_open_outside_a_batch_is_unchanged(tmp_path: Path) -> None:
    with atomic_open(tmp_path / "plain", "wb") as file:
        file.write(b"p")
    assert file.result is not None
    assert file.result.durability == "full"


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes are Python 3.11+")
def test_a_failing_cleanup_is_noted_on_the_error_that_stopped_the_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from atomicwrite import _batch

    def failing_discard(self: AtomicBatch) -> None:
        raise OSError(errno.EIO, "cleanup failed")

    monkeypatch.setattr(_batch.AtomicBatch, "discard", failing_discard)
    with pytest.raises(RuntimeError, match="stop") as caught, atomic_batch() as batch:
        with batch.open(tmp_path / "a", "wb") as file:
            file.write(b"new")
        raise RuntimeError("stop")
    assert any("discarding the batch also failed" in note for note in getattr(caught.value, "__notes__", []))
    monkeypatch.undo()
    batch.discard()
    assert list(tmp_path.iterdir()) == []
