"""Timings in every commit result, and the ``on_commit`` callback."""

from __future__ import annotations

import errno
import os
import pickle
import stat
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from atomicwrite import (
    CheckpointStore,
    CommitCallbackError,
    CommitResult,
    DirectoryCommitResult,
    DirectoryManifest,
    DurabilityError,
    FileEntry,
    Serializer,
    UsageError,
    atomic_batch,
    atomic_directory,
    atomic_open,
    atomic_save,
    begin_directory,
    open_directory,
    verify_directory,
)
from tests._stores import moto_endpoint, s3_options

__all__ = ["moto_endpoint"]

BUCKET = "atomicwrite-telemetry"


def assert_timed_in_the_caller(result: CommitResult) -> None:
    """The relations every result of a write made in the caller's thread satisfies."""
    assert result.seconds > 0
    assert result.seconds_blocked == result.seconds
    assert result.seconds_background == 0
    assert result.throughput == result.bytes_written / result.seconds


def entries(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


# --- the fields ----------------------------------------------------------------------------------


def test_timings_stay_out_of_equality_and_hashing() -> None:
    plain = CommitResult("/t", "posix", "full", 10, None)
    assert (plain.seconds, plain.seconds_blocked, plain.seconds_background, plain.throughput) == (0, 0, 0, 0)
    timed = plain._timed(2.0, seconds_blocked=0.5, seconds_background=1.0)
    assert timed == plain
    assert hash(timed) == hash(plain)
    assert (timed.seconds, timed.seconds_blocked, timed.seconds_background) == (2.0, 0.5, 1.0)
    assert timed.throughput == 5.0
    assert "seconds=2.0" in repr(timed)
    assert "seconds_background=1.0" in repr(timed)
    assert pickle.loads(pickle.dumps(timed)).seconds == 2.0
    with pytest.raises(AttributeError):
        timed.seconds = 1.0  # type: ignore[misc]


def test_a_local_write_is_timed_from_open_to_commit(tmp_path: Path) -> None:
    before_open = time.perf_counter()
    with atomic_open(tmp_path / "a.bin", "wb") as file:
        after_open = time.perf_counter()
        file.write(b"x" * 1000)
        before_commit = time.perf_counter()
    after_commit = time.perf_counter()
    result = file.result
    assert result is not None
    assert_timed_in_the_caller(result)
    # Relations between clocks, not durations: the timing spans the write, and no more.
    assert before_commit - after_open <= result.seconds <= after_commit - before_open
    assert result.bytes_written == 1000


def test_text_and_atomic_save_results_are_timed(tmp_path: Path) -> None:
    with atomic_open(tmp_path / "a.txt", "w") as text:
        text.write("hello")
    assert text.result is not None
    assert_timed_in_the_caller(text.result)
    assert_timed_in_the_caller(atomic_save({"a": 1}, tmp_path / "a.json", "json"))


@pytest.mark.skipif(sys.platform == "win32", reason="the POSIX directory flush")
def test_a_durability_error_carries_a_timed_result_and_tells_no_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from atomicwrite._local import posix

    real_sync = posix._sync

    def refuse_directories(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        real_sync(fd)

    monkeypatch.setattr(posix, "_sync", refuse_directories)
    seen: list[CommitResult] = []
    with pytest.raises(DurabilityError) as caught:
        atomic_save(b"new", tmp_path / "a.bin", "bytes", on_commit=seen.append)
    assert caught.value.result.durability == "file"
    assert_timed_in_the_caller(caught.value.result)
    assert seen == []  # short of the durability asked for: not a successful commit


def test_batch_results_are_timed_and_told_after_every_file_is_published(tmp_path: Path) -> None:
    seen: list[tuple[str, list[str]]] = []

    def record(result: CommitResult) -> None:
        # By the time any callback runs, both files are in place.
        seen.append((os.path.basename(result.target), entries(tmp_path)))

    with atomic_batch() as batch:
        for name in ("a.bin", "b.bin"):
            with batch.open(tmp_path / name, "wb", on_commit=record) as file:
                file.write(name.encode())
    assert seen == [("a.bin", ["a.bin", "b.bin"]), ("b.bin", ["a.bin", "b.bin"])]
    for result in batch.results:
        assert_timed_in_the_caller(result)


def test_a_failing_batch_callback_does_not_stop_the_publishing(tmp_path: Path) -> None:
    def explode(result: CommitResult) -> None:
        raise RuntimeError("logger down")

    with pytest.raises(CommitCallbackError) as caught, atomic_batch() as batch:
        with batch.open(tmp_path / "a.bin", "wb", on_commit=explode) as first:
            first.write(b"a")
        with batch.open(tmp_path / "b.bin", "wb") as second:
            second.write(b"b")
    assert (tmp_path / "a.bin").read_bytes() == b"a"
    assert (tmp_path / "b.bin").read_bytes() == b"b"
    assert caught.value.result.target.endswith("a.bin")
    assert isinstance(caught.value.__cause__, RuntimeError)
    # The file after it was finished (its result recorded, its lock released) all the same.
    assert second.result is not None
    assert [os.path.basename(result.target) for result in batch.results] == ["a.bin", "b.bin"]


def test_an_object_store_write_is_timed() -> None:
    url = f"memory://atomicwrite-telemetry/{uuid.uuid4().hex}/a.bin"
    result = atomic_save(b"y" * 4096, url, "bytes")
    assert_timed_in_the_caller(result)
    assert result.bytes_written == 4096


def test_an_s3_write_is_timed_and_told(moto_endpoint: str) -> None:
    import fsspec

    options = s3_options(moto_endpoint)
    fs = fsspec.filesystem("s3", **options)
    if not fs.exists(BUCKET):
        fs.call_s3("create_bucket", Bucket=BUCKET)
    seen: list[CommitResult] = []
    url = f"s3://{BUCKET}/{uuid.uuid4().hex}/a.bin"
    result = atomic_save(b"z" * 2048, url, "bytes", storage_options=options, on_commit=seen.append)
    assert_timed_in_the_caller(result)
    assert seen == [result]
    assert seen[0].seconds == result.seconds
    assert fs.cat(url) == b"z" * 2048


# --- on_commit -----------------------------------------------------------------------------------


def test_on_commit_is_called_once_after_the_commit(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    seen: list[tuple[CommitResult, bytes]] = []
    with atomic_open(target, "wb", on_commit=lambda result: seen.append((result, target.read_bytes()))) as file:
        file.write(b"new")
    assert file.commit() is file.result  # committing again tells no one
    assert len(seen) == 1
    result, content_then = seen[0]
    assert content_then == b"new"  # the callback ran once the content was in place
    assert result is file.result
    assert_timed_in_the_caller(result)


def test_on_commit_is_not_called_for_a_discarded_write(tmp_path: Path) -> None:
    seen: list[CommitResult] = []
    with pytest.raises(KeyError), atomic_open(tmp_path / "a.bin", "wb", on_commit=seen.append) as file:
        file.write(b"half")
        raise KeyError("stop")
    assert seen == []
    assert entries(tmp_path) == []


def test_a_failing_on_commit_leaves_the_write_committed(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")

    def explode(result: CommitResult) -> None:
        raise ValueError("metrics sink down")

    with pytest.raises(CommitCallbackError, match="was committed") as caught:
        atomic_save(b"new", target, "bytes", on_commit=explode)
    assert target.read_bytes() == b"new"
    assert entries(tmp_path) == ["a.bin"]
    assert isinstance(caught.value.__cause__, ValueError)
    assert caught.value.result.bytes_written == 3


def test_a_callback_that_is_not_callable_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="on_commit"):
        atomic_open(tmp_path / "a.bin", "wb", on_commit="print")  # type: ignore[call-overload]
    assert entries(tmp_path) == []


# --- torch -----------------------------------------------------------------------------------------


class Gate:
    """Pickles (in the saver's worker) only once ``opened`` is set: a save held up on purpose."""

    def __init__(self) -> None:
        self.opened = threading.Event()

    def __reduce__(self) -> Any:
        assert self.opened.wait(60)
        return (dict, ())


def test_torch_save_is_timed_and_told(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    import atomicwrite.torch as awt

    seen: list[CommitResult] = []
    result = awt.save({"w": torch.ones(4)}, tmp_path / "a.pt", on_commit=seen.append)
    assert_timed_in_the_caller(result)
    assert seen == [result]


def test_async_save_times_the_caller_and_the_worker_apart(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    import atomicwrite.torch as awt

    gate = Gate()
    threads: list[str] = []
    seen: list[CommitResult] = []

    def record(result: CommitResult) -> None:
        threads.append(threading.current_thread().name)
        seen.append(result)

    with awt.AsyncSaver(on_commit=record) as saver:
        called = time.perf_counter()
        future = saver.save({"w": torch.ones(4), "gate": gate}, tmp_path / "a.pt")
        returned = time.perf_counter()
        gate.opened.set()
        result = future.result(timeout=60)
    assert result.seconds_blocked <= returned - called
    assert result.seconds_background > 0
    assert result.seconds_blocked + result.seconds_background <= result.seconds
    assert result.throughput == result.bytes_written / result.seconds
    assert seen == [result]
    assert seen[0].seconds_background == result.seconds_background
    assert threads == ["atomicwrite-saver"]


# --- directories ---------------------------------------------------------------------------------


def assert_directory_timed_in_the_caller(result: DirectoryCommitResult) -> None:
    assert result.seconds > 0
    assert result.seconds_blocked == result.seconds
    assert result.seconds_background == 0
    assert result.throughput == result.bytes_written / result.seconds


def test_directory_timings_stay_out_of_equality_and_hashing() -> None:
    manifest = DirectoryManifest("gen.1", (FileEntry("a", 6, None), FileEntry("b", 4, None)), created=1.0)
    plain = DirectoryCommitResult("/t", "posix", "full", manifest, replaced=False)
    assert (plain.seconds, plain.seconds_blocked, plain.seconds_background, plain.throughput) == (0, 0, 0, 0)
    assert plain.bytes_written == 10
    timed = plain._timed(2.0, seconds_blocked=0.5, seconds_background=1.0)
    assert timed == plain
    assert hash(timed) == hash(plain)
    assert (timed.seconds, timed.seconds_blocked, timed.seconds_background) == (2.0, 0.5, 1.0)
    assert timed.throughput == 5.0
    assert plain._timed(3.0).seconds_blocked == 3.0
    assert "seconds_background=1.0" in repr(timed)
    assert pickle.loads(pickle.dumps(timed)).seconds == 2.0
    with pytest.raises(AttributeError):
        timed.seconds = 1.0  # type: ignore[misc]


@pytest.fixture(params=["local", "memory", "s3"])
def directory_place(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, Any]]:
    """A base URL for directories, and its storage_options."""
    if request.param == "local":
        return str(tmp_path), {}
    if request.param == "memory":
        return f"memory://atomicwrite-telemetry/{uuid.uuid4().hex}", {}
    import fsspec

    options = s3_options(request.getfixturevalue("moto_endpoint"))
    fs = fsspec.filesystem("s3", **options)
    if not fs.exists(BUCKET):
        fs.call_s3("create_bucket", Bucket=BUCKET)
    return f"s3://{BUCKET}/{uuid.uuid4().hex}", options


def test_a_directory_is_timed_and_told_once_it_is_published(directory_place: tuple[str, dict[str, Any]]) -> None:
    base, options = directory_place
    target = f"{base}/ckpt"
    seen: list[tuple[DirectoryCommitResult, bytes]] = []

    def record(result: DirectoryCommitResult) -> None:
        # By the time the callback runs, the new directory is what readers get.
        with open_directory(target, storage_options=options).open("a.bin") as file:
            seen.append((result, file.read()))

    before = time.perf_counter()
    with atomic_directory(target, storage_options=options, on_commit=record) as stage:
        with stage.open("a.bin") as file:
            file.write(b"a" * 3000)
        with stage.open("b.bin") as file:
            file.write(b"b" * 1000)
    after = time.perf_counter()
    assert len(seen) == 1
    result, content_then = seen[0]
    assert content_then == b"a" * 3000
    assert_directory_timed_in_the_caller(result)
    assert result.seconds <= after - before
    assert result.bytes_written == 4000
    assert result.durability == ("none" if base.startswith("memory://") else "full")


def test_begin_directory_tells_on_commit_and_not_for_a_discard(tmp_path: Path) -> None:
    seen: list[DirectoryCommitResult] = []
    discarded = begin_directory(tmp_path / "gone", on_commit=seen.append)
    discarded.staging.open("a.bin").close()
    discarded.discard()
    assert seen == []
    transaction = begin_directory(tmp_path / "kept", on_commit=seen.append)
    with transaction.staging.open("a.bin") as file:
        file.write(b"abc")
    result = transaction.commit()
    assert seen == [result]
    assert_directory_timed_in_the_caller(result)
    assert entries(tmp_path) == ["kept"]


def test_a_failing_directory_callback_leaves_the_directory_published(tmp_path: Path) -> None:
    def explode(result: DirectoryCommitResult) -> None:
        raise ValueError("metrics sink down")

    with (
        pytest.raises(CommitCallbackError, match="was committed") as caught,
        atomic_directory(tmp_path / "ckpt", on_commit=explode) as stage,
    ):
        (Path(stage) / "a.bin").write_bytes(b"new")
    assert isinstance(caught.value.__cause__, ValueError)
    assert isinstance(caught.value.result, DirectoryCommitResult)
    assert caught.value.result.bytes_written == 3
    assert verify_directory(tmp_path / "ckpt").ok
    assert (tmp_path / "ckpt" / "a.bin").read_bytes() == b"new"
    assert entries(tmp_path) == ["ckpt"]  # no staging area left


def test_a_directory_callback_that_is_not_callable_is_refused_before_anything_is_staged(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="on_commit"):
        begin_directory(tmp_path / "ckpt", on_commit="print")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="on_commit"):
        CheckpointStore(tmp_path / "run", on_commit=42)  # type: ignore[arg-type]
    assert entries(tmp_path) == []


def test_a_store_save_is_told_after_latest_moved_and_retention_ran(
    directory_place: tuple[str, dict[str, Any]],
) -> None:
    base, options = directory_place
    seen: list[tuple[DirectoryCommitResult, str | None, list[str]]] = []

    def record(result: DirectoryCommitResult) -> None:
        seen.append((result, store.pointer(), store.generations()))

    store = CheckpointStore(f"{base}/run", keep_last=1, storage_options=options, on_commit=record)
    for step in (1, 2):
        before = time.perf_counter()
        with store.save(step) as stage, stage.open("model.bin") as file:
            file.write(b"m" * 100 * step)
        after = time.perf_counter()
        result = seen[-1][0]
        assert result.seconds <= after - before
    store.close()
    assert [(pointer, generations) for _, pointer, generations in seen] == [
        ("gen-00000001", ["gen-00000001"]),
        ("gen-00000002", ["gen-00000002"]),
    ]
    results = [result for result, _, _ in seen]
    for result in results:
        assert_directory_timed_in_the_caller(result)
    assert [result.bytes_written for result in results] == [100, 200]
    assert store.last_result is results[-1]


def test_a_failing_store_callback_leaves_the_save_published(tmp_path: Path) -> None:
    def explode(result: DirectoryCommitResult) -> None:
        raise ValueError("metrics sink down")

    store = CheckpointStore(tmp_path / "run", on_commit=explode)
    with (
        pytest.raises(CommitCallbackError, match="was committed") as caught,
        store.save(1) as stage,
        stage.open("model.bin") as file,
    ):
        file.write(b"weights")
    assert isinstance(caught.value.__cause__, ValueError)
    assert store.pointer() == "gen-00000001"
    assert store.verify().ok
    assert caught.value.result == store.last_result


def test_a_background_store_save_times_the_caller_and_the_worker_apart(tmp_path: Path) -> None:
    threads: list[str] = []
    seen: list[DirectoryCommitResult] = []

    def record(result: DirectoryCommitResult) -> None:
        threads.append(threading.current_thread().name)
        seen.append(result)

    held = threading.Event()

    def held_dump(obj: Any, file: Any) -> None:
        assert held.wait(60)
        file.write(obj)

    store = CheckpointStore(tmp_path / "run", on_commit=record)
    called = time.perf_counter()
    future = store.save_async(1, {"a.bin": b"x" * 5000}, serializer=Serializer("held", held_dump, snapshot=bytes))
    returned = time.perf_counter()
    held.set()
    result = future.result(timeout=60)
    store.close()
    assert result.seconds_blocked <= returned - called
    assert result.seconds_background > 0
    assert result.seconds_blocked + result.seconds_background <= result.seconds
    assert result.throughput == result.bytes_written / result.seconds
    assert result.bytes_written == 5000
    assert result.durability == "full"
    assert seen == [result]
    assert seen[0].seconds_background == result.seconds_background
    assert len(threads) == 1
    assert threads[0].startswith("atomicwrite-store")
