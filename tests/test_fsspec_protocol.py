"""The ``atomic::`` fsspec protocol (atomicwrite.filesystem), through the libraries that use it.

pandas, pyarrow, zarr, DCP's FsspecWriter and Lightning's ModelCheckpoint write through
``atomic::`` URLs to a local directory and to moto's S3 server on loopback.  Each failure is
injected for real (a serializer or writer raising midway, a storage write failing half way, a
SIGKILLed child process), and the test then checks the old object byte for byte and that the
inner listing shows no temp file, marker or pending upload (a writer killed mid-upload leaves
its upload and the marker naming it, which sweep() then removes).
"""

from __future__ import annotations

import errno
import gc
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest

from atomicwrite import TargetExistsError, UnsupportedTargetError, UsageError, sweep
from atomicwrite._names import parse_temp_name
from atomicwrite.filesystem import AtomicFile, AtomicFileSystem

from ._stores import moto_endpoint, s3_options
from ._workers import ROOT

__all__ = ["moto_endpoint"]

BUCKET = "atomicwrite-fsspec"


class Boom(Exception):
    """The failure a test injects."""


@pytest.fixture(scope="module")
def s3_config(moto_endpoint: str) -> Iterator[dict[str, Any]]:
    """s3fs options for the test server; also fsspec's default for "s3", for writers that take no
    options (Lightning's ModelCheckpoint)."""
    options = s3_options(moto_endpoint)
    fs = fsspec.filesystem("s3", **options)
    if not fs.exists(BUCKET):
        fs.call_s3("create_bucket", Bucket=BUCKET)
    saved = fsspec.config.conf.get("s3")
    fsspec.config.conf["s3"] = options
    try:
        yield options
    finally:
        if saved is None:
            fsspec.config.conf.pop("s3", None)
        else:
            fsspec.config.conf["s3"] = saved


@pytest.fixture
def s3_prefix(s3_config: dict[str, Any]) -> str:
    return f"{BUCKET}/{uuid.uuid4().hex[:12]}"


def s3_fs(options: dict[str, Any]) -> Any:
    return fsspec.filesystem("s3", **options)


def s3_objects(options: dict[str, Any], prefix: str) -> dict[str, bytes]:
    """Every object under ``prefix`` (hidden ones included), by key, and no upload pending."""
    fs = s3_fs(options)
    fs.invalidate_cache()
    bucket, _, key_prefix = prefix.partition("/")
    uploads = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=key_prefix).get("Uploads", [])
    assert uploads == [], f"uploads left pending: {uploads}"
    return {path: fs.cat_file(path) for path in fs.find(prefix)}


def local_files(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (hidden ones included), by relative path."""
    return {
        str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*")) if path.is_file()
    }


def inner_store(
    store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> tuple[str, dict[str, Any], Callable[[], dict[str, bytes]]]:
    """The inner URL base for ``store`` ("local" or "s3", moto's server), its storage options
    the fsspec way, and a function listing everything stored there with its bytes."""
    if store == "local":
        return f"file://{tmp_path}", {}, lambda: local_files(tmp_path)
    config = request.getfixturevalue("s3_config")
    prefix = request.getfixturevalue("s3_prefix")
    return f"s3://{prefix}", {"s3": config}, lambda: s3_objects(config, prefix)


def fail_storage_after(monkeypatch: Any, limit: int) -> None:
    """Make every atomic write fail with ENOSPC once it has taken ``limit`` bytes, as a full disk
    or a dropped connection would, half way through the file."""
    from atomicwrite._api import AtomicBinaryFile

    taken: dict[int, int] = {}
    real_write = AtomicBinaryFile.write

    def write(self: AtomicBinaryFile, data: Any) -> int:
        size = memoryview(data).nbytes
        if taken.get(id(self), 0) + size > limit:
            allowed = limit - taken.get(id(self), 0)
            if allowed > 0:
                real_write(self, memoryview(data).cast("B")[:allowed])
            taken[id(self)] = limit
            raise OSError(errno.ENOSPC, "injected: no space left on device")
        taken[id(self)] = taken.get(id(self), 0) + size
        return real_write(self, data)

    monkeypatch.setattr(AtomicBinaryFile, "write", write)


# --- the protocol itself --------------------------------------------------------------------


def kill_when_ready(ready: Path, worker: str, url: str, *arguments: str) -> None:
    """Run ``worker`` of tests/_fsspec_workers.py on ``url`` and SIGKILL it (TerminateProcess on
    Windows) once it creates ``ready``: in the middle of its write."""
    command = [sys.executable, "-m", "tests._fsspec_workers", worker, url, str(ready), *arguments]
    child = subprocess.Popen(command, cwd=ROOT)
    try:
        while not ready.exists():
            assert child.poll() is None, "the writer ended before it reached the point where it is killed"
            time.sleep(0.01)
    finally:
        child.kill()
        child.wait()


def test_a_fresh_interpreter_finds_the_protocol_without_importing_atomicwrite(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    script = textwrap.dedent(
        f"""
        import sys, fsspec
        assert "atomicwrite" not in sys.modules
        with fsspec.open("atomic::file://{target}", "w") as f:
            f.write("hello")
        fs, path = fsspec.core.url_to_fs("atomic::file://{target}")
        print(type(fs).__module__, type(fs).__name__, path, type(f.buffer).__name__)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert done.stdout.split() == ["atomicwrite.filesystem", "AtomicFileSystem", str(target), "AtomicFile"]
    assert target.read_text() == "hello"


@pytest.mark.parametrize("store", ["local", "s3"])
def test_writes_publish_at_close_and_the_rest_passes_through(
    store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if store == "local":
        options: dict[str, Any] = {}
        inner, base = fsspec.filesystem("file"), str(tmp_path)
    else:
        options = request.getfixturevalue("s3_config")
        inner, base = s3_fs(options), request.getfixturevalue("s3_prefix")
    protocol = "file" if store == "local" else "s3"
    url = f"atomic::{protocol}://{base}/sub/data.bin"
    with fsspec.open(url, "wb", **{protocol: options}) as f:
        f.write(b"first")
        inner.invalidate_cache()
        assert not inner.exists(f"{base}/sub/data.bin")
    fs, path = fsspec.core.url_to_fs(url, **{protocol: options})
    assert path == inner._strip_protocol(f"{base}/sub/data.bin")
    assert inner.cat_file(path) == b"first"
    assert fs.cat_file(url) == b"first"
    with fs.open(url, "rb") as reader:
        assert reader.read() == b"first"
    fs.pipe_file(f"{base}/sub/other.bin", b"second")
    # Listings, info and the rest are the inner file system's, given any form of the path.
    for directory in (f"{base}/sub", f"atomic::{protocol}://{base}/sub", f"{protocol}://{base}/sub"):
        assert fs.ls(directory) == inner.ls(f"{base}/sub")
        folder = path.rpartition("/")[0]
        assert fs.find(directory) == inner.find(f"{base}/sub") == [f"{folder}/data.bin", f"{folder}/other.bin"]
        assert fs.isdir(directory)
    assert fs.info(url) == inner.info(path)
    assert fs.exists(url)
    assert fs.isfile(url)
    assert fs.glob(f"{base}/sub/*.bin") == inner.glob(f"{base}/sub/*.bin")
    assert fs.unstrip_protocol(path) == f"atomic::{inner.unstrip_protocol(path)}"
    fs.rm(url)
    assert not fs.exists(url)
    assert not inner.exists(path)
    fs.rm(f"{base}/sub", recursive=True)
    inner.invalidate_cache()
    assert inner.find(base) == []


def test_a_store_without_an_atomic_strategy_is_refused_for_writes(tmp_path: Path) -> None:
    (tmp_path / "kept.txt").write_bytes(b"old")
    fs = AtomicFileSystem(fs=fsspec.filesystem("dir", path=str(tmp_path), fs=fsspec.filesystem("file")))
    assert fs.cat_file("kept.txt") == b"old"  # reads still pass through
    with pytest.raises(UnsupportedTargetError, match="dir"):
        fs.pipe_file("kept.txt", b"new")
    assert local_files(tmp_path) == {"kept.txt": b"old"}


def test_exclusive_create_and_refused_modes(tmp_path: Path) -> None:
    target = tmp_path / "once.txt"
    url = f"atomic::file://{target}"
    with fsspec.open(url, "x") as f:
        f.write("one")
    with pytest.raises(TargetExistsError), fsspec.open(url, "xb") as f:
        f.write(b"two")
    fs, _ = fsspec.core.url_to_fs(url)
    with pytest.raises(TargetExistsError):
        fs.pipe_file(url, b"two", mode="create")
    for mode in ("ab", "r+b"):
        with pytest.raises(UsageError, match="not atomic"):
            fs.open(url, mode)
    assert target.read_text() == "one"
    assert local_files(tmp_path) == {"once.txt": b"one"}


def test_our_options_go_under_atomic_and_the_inner_ones_under_their_protocol(s3_config: dict[str, Any]) -> None:
    fs, _ = fsspec.core.url_to_fs(
        f"atomic::s3://{BUCKET}/k", atomic={"durability": "none", "part_size": 5 << 20}, s3=s3_config
    )
    assert isinstance(fs, AtomicFileSystem)
    assert fs.fs.storage_options["client_kwargs"] == s3_config["client_kwargs"]
    with fs.open(f"{BUCKET}/options/k", "wb") as f:
        f.write(b"x")
    assert f.result is not None
    assert f.result.strategy == "s3"
    with pytest.raises(UsageError, match="durability"):
        fsspec.filesystem("atomic", target_protocol="memory", durability="always")


@pytest.mark.parametrize("mode", ["wb", "w"])
def test_an_exception_discards_and_the_collector_never_publishes(tmp_path: Path, mode: str) -> None:
    target = tmp_path / "kept.txt"
    target.write_bytes(b"old")
    url = f"atomic::file://{target}"
    with pytest.raises(Boom), fsspec.open(url, mode) as f:
        f.write("new" if mode == "w" else b"new")
        raise Boom
    # Abandoned unclosed, through fsspec.open's text wrapper or the file system's own.
    abandoned = fsspec.open(url, mode).open()
    abandoned.write("partial" if mode == "w" else b"partial")
    fs, _ = fsspec.core.url_to_fs(url)
    unclosed = fs.open(url, mode)
    unclosed.write("partial" if mode == "w" else b"partial")
    del abandoned, unclosed
    gc.collect()
    assert local_files(tmp_path) == {"kept.txt": b"old"}


def test_a_close_in_a_librarys_finally_discards_while_an_error_propagates(tmp_path: Path) -> None:
    (tmp_path / "kept.bin").write_bytes(b"old")
    fs, _ = fsspec.core.url_to_fs(f"atomic::file://{tmp_path}")
    handle = fs.open(str(tmp_path / "kept.bin"), "wb")
    with pytest.raises(Boom):
        try:
            handle.write(b"half of it")
            raise Boom
        finally:
            handle.close()
    assert isinstance(handle, AtomicFile)
    assert handle.discarded
    assert local_files(tmp_path) == {"kept.bin": b"old"}


def test_a_write_made_while_handling_an_error_is_published(tmp_path: Path) -> None:
    fs, _ = fsspec.core.url_to_fs(f"atomic::file://{tmp_path}")
    try:
        raise Boom
    except Boom:
        # Writing a report of the failure: the error being handled is not this write's.
        with fs.open(str(tmp_path / "with.txt"), "w") as f:
            f.write("reported")
        handle = fs.open(str(tmp_path / "closed.txt"), "wb")
        handle.write(b"reported")
        handle.close()
        # A second failure while writing is: that write is dropped.
        with pytest.raises(KeyError):
            try:
                failing = fs.open(str(tmp_path / "failed.txt"), "wb")
                failing.write(b"half")
                raise KeyError("second failure")
            finally:
                failing.close()
    assert local_files(tmp_path) == {"with.txt": b"reported", "closed.txt": b"reported"}


def test_put_touch_and_mapper_writes_are_atomic_too(tmp_path: Path, monkeypatch: Any) -> None:
    fs, _ = fsspec.core.url_to_fs(f"atomic::file://{tmp_path}/out")
    source = tmp_path / "source.bin"
    source.write_bytes(b"s" * 100_000)
    mapper = fs.get_mapper(f"atomic::file://{tmp_path}/out")
    fs.put_file(str(source), f"{tmp_path}/out/put.bin")
    fs.touch(f"{tmp_path}/out/empty")
    mapper["nested/key"] = b"value"
    expected = {
        "source.bin": b"s" * 100_000,
        "out/put.bin": b"s" * 100_000,
        "out/empty": b"",
        "out/nested/key": b"value",
    }
    assert local_files(tmp_path) == expected
    assert mapper["nested/key"] == b"value"
    with monkeypatch.context() as patch:
        fail_storage_after(patch, 10)
        with pytest.raises(OSError, match="injected"):
            fs.put_file(str(source), f"{tmp_path}/out/put.bin")
        with pytest.raises(OSError, match="injected"):
            mapper["nested/key"] = b"a longer value"
    assert local_files(tmp_path) == expected


def test_a_transaction_publishes_every_file_at_its_end_or_none(tmp_path: Path) -> None:
    fs, _ = fsspec.core.url_to_fs(f"atomic::file://{tmp_path}")
    (tmp_path / "a").write_bytes(b"old a")
    with pytest.raises(Boom), fs.transaction:
        with fs.open(str(tmp_path / "a"), "wb") as f:
            f.write(b"new a")
        with fs.open(str(tmp_path / "b"), "wb") as f:
            f.write(b"new b")
        assert local_files(tmp_path) == {"a": b"old a"}
        raise Boom
    assert local_files(tmp_path) == {"a": b"old a"}
    with fs.transaction:
        with fs.open(str(tmp_path / "a"), "wb") as f:
            f.write(b"new a")
        fs.pipe_file(str(tmp_path / "c"), b"piped")
        with fs.open(str(tmp_path / "b"), "w") as text:
            text.write("new b")
        assert local_files(tmp_path) == {"a": b"old a"}
    assert local_files(tmp_path) == {"a": b"new a", "b": b"new b", "c": b"piped"}
    # A later write on the same (cached) instance is not swallowed by a finished transaction.
    fs.pipe_file(str(tmp_path / "d"), b"later")
    assert (tmp_path / "d").read_bytes() == b"later"


def test_mv_publishes_the_destination_whole_then_removes_the_source(tmp_path: Path, monkeypatch: Any) -> None:
    fs, _ = fsspec.core.url_to_fs(f"atomic::file://{tmp_path}")
    (tmp_path / ".metadata").write_bytes(b"old metadata")
    (tmp_path / ".metadata.tmp").write_bytes(b"new metadata" * 100_000)
    source, destination = f"atomic::file://{tmp_path}/.metadata.tmp", f"atomic::file://{tmp_path}/.metadata"

    # The copy fails half way through the source: the destination keeps its old content.
    monkeypatch.setattr("atomicwrite.filesystem._COPY_CHUNK", 1 << 16)
    with monkeypatch.context() as patch:
        fail_storage_after(patch, 600_000)
        with pytest.raises(OSError, match="injected"):
            fs.mv(source, destination)
    assert (tmp_path / ".metadata").read_bytes() == b"old metadata"
    assert sorted(os.listdir(tmp_path)) == [".metadata", ".metadata.tmp"]

    fs.mv(source, destination)
    assert local_files(tmp_path) == {".metadata": b"new metadata" * 100_000}


# --- pandas and pyarrow ---------------------------------------------------------------------


class Unprintable:
    """A cell whose text raises, so that ``to_csv`` fails after writing earlier rows."""

    def __str__(self) -> str:
        raise Boom("this cell cannot be written")


def frame(rows: int, seed: int) -> Any:
    pd = pytest.importorskip("pandas")
    return pd.DataFrame({"step": range(seed, seed + rows), "loss": [seed / (i + 1) for i in range(rows)]})


def failing_parquet_writer(monkeypatch: Any) -> None:
    """pandas' parquet write streams the first row group, then fails: pyarrow's writer closes the
    file on its way out (footer and all), so a plain fsspec file would publish a valid, short
    table."""
    pq = pytest.importorskip("pyarrow.parquet")
    real_write_table = pq.write_table

    def write_table(table: Any, where: Any, filesystem: Any = None, **kwargs: Any) -> None:
        with pq.ParquetWriter(where, table.schema, filesystem=filesystem) as writer:
            writer.write_table(table.slice(0, 10))
            raise Boom("the second row group failed")

    monkeypatch.setattr(pq, "write_table", write_table)
    assert pq.write_table is not real_write_table


@pytest.mark.parametrize("store", ["local", "s3"])
def test_pandas_parquet_and_csv(store: str, tmp_path: Path, monkeypatch: Any, request: pytest.FixtureRequest) -> None:
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    base, options, snapshot = inner_store(store, tmp_path, request)
    parquet, csv = f"atomic::{base}/metrics.parquet", f"atomic::{base}/metrics.csv"
    old = frame(500, 0)
    old.to_parquet(parquet, storage_options=options)
    old.to_csv(csv, index=False, storage_options=options)
    pd.testing.assert_frame_equal(pd.read_parquet(parquet, storage_options=options), old)
    pd.testing.assert_frame_equal(pd.read_csv(csv, storage_options=options), old)
    before = snapshot()
    assert len(before) == 2

    new = frame(50_000, 7)
    with monkeypatch.context() as patch:
        failing_parquet_writer(patch)
        with pytest.raises(Boom):
            new.to_parquet(parquet, storage_options=options)
    broken = new.astype({"loss": object})
    broken.loc[40_000, "loss"] = Unprintable()
    with pytest.raises(Boom):
        broken.to_csv(csv, index=False, storage_options=options)
    assert snapshot() == before

    new.to_parquet(parquet, storage_options=options)
    new.to_csv(csv, index=False, storage_options=options)
    pd.testing.assert_frame_equal(pd.read_parquet(parquet, storage_options=options), new)
    pd.testing.assert_frame_equal(pd.read_csv(csv, storage_options=options), new)
    assert len(snapshot()) == 2


@pytest.mark.slow
def test_a_csv_upload_killed_mid_way_leaves_the_old_object(
    s3_config: dict[str, Any], s3_prefix: str, tmp_path: Path
) -> None:
    pytest.importorskip("pandas")
    from ._fsspec_workers import csv_frame

    url = f"atomic::s3://{s3_prefix}/table.csv"
    options = {"s3": s3_config, "atomic": {"part_size": 5 << 20}}
    csv_frame(0).to_csv(url, index=False, storage_options=options)
    before = s3_objects(s3_config, s3_prefix)
    assert len(before) == 1

    kill_when_ready(tmp_path / "ready", "csv", url, json.dumps(options))

    # The killed writer had uploaded parts: the old object is intact, and all that is left is
    # its multipart upload and the marker naming it, for sweep().
    fs = s3_fs(s3_config)
    bucket, _, key_prefix = s3_prefix.partition("/")
    uploads = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=key_prefix).get("Uploads", [])
    assert [upload["Key"] for upload in uploads] == [f"{key_prefix}/table.csv"]
    fs.invalidate_cache()
    left = {path: fs.cat_file(path) for path in fs.find(s3_prefix)}
    assert {path: left[path] for path in before} == before
    markers = sorted(set(left) - set(before))
    assert len(markers) == 1
    assert parse_temp_name(markers[0].rpartition("/")[2]) is not None
    assert sweep(f"s3://{s3_prefix}", older_than=0, storage_options=s3_config) == [f"s3://{markers[0]}"]
    assert s3_objects(s3_config, s3_prefix) == before


def test_a_partitioned_parquet_dataset_is_atomic_file_by_file(tmp_path: Path, monkeypatch: Any) -> None:
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    url = f"atomic::file://{tmp_path}/dataset"
    data = pd.DataFrame({"day": [1, 1, 2, 2, 3], "value": range(5)})
    data.to_parquet(url, partition_cols=["day"])
    files = local_files(tmp_path)
    assert sorted(name.split("/")[1] for name in files) == ["day=1", "day=2", "day=3"]
    assert pd.read_parquet(url)["value"].sort_values().tolist() == list(range(5))

    # The storage fails half way through one partition's file: that file is absent, never torn,
    # and the files written before it are complete (per-file atomicity, not whole-dataset).
    with monkeypatch.context() as patch:
        fail_storage_after(patch, 200)
        with pytest.raises(OSError, match="injected"):
            pd.DataFrame({"day": [4] * 1000, "value": range(1000)}).to_parquet(url, partition_cols=["day"])
    assert local_files(tmp_path) == files


# --- zarr -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_zarr_array_survives_a_writer_killed_mid_chunk(tmp_path: Path) -> None:
    zarr = pytest.importorskip("zarr")
    np = pytest.importorskip("numpy")
    from ._fsspec_workers import CHUNK, CHUNKS, new_values

    data = tmp_path / "data"
    url = f"atomic::file://{data}/array.zarr"
    array = zarr.open_array(url, mode="w", shape=(CHUNK * CHUNKS,), chunks=(CHUNK,), dtype="float64")
    array[:] = np.full(CHUNK * CHUNKS, -1.0)  # not the fill value: every chunk is stored
    before = local_files(data)
    assert len(before) == CHUNKS + 1  # zarr.json and one file per chunk

    kill_when_ready(tmp_path / "ready", "zarr", url)

    # The first chunk is new, the one being written when the writer died is old, like the rest.
    after = local_files(data)
    leftovers = sorted(set(after) - set(before))
    for leftover in leftovers:  # none with O_TMPFILE (Linux); a named temp elsewhere, for sweep()
        assert parse_temp_name(leftover.rpartition("/")[2]) is not None
        sweep(str(data / leftover.rpartition("/")[0]), older_than=0)
    after = local_files(data)
    assert sorted(after) == sorted(before)
    assert sorted(name for name in after if after[name] != before[name]) == ["array.zarr/c/0"]
    values = zarr.open_array(f"{data}/array.zarr", mode="r")[:]
    np.testing.assert_array_equal(values[:CHUNK], new_values()[:CHUNK])
    np.testing.assert_array_equal(values[CHUNK:], np.full(CHUNK * (CHUNKS - 1), -1.0))


# --- torch.distributed.checkpoint's FsspecWriter ---------------------------------------------


@pytest.mark.parametrize("store", ["local", "s3"])
def test_dcp_fsspec_writer(store: str, tmp_path: Path, monkeypatch: Any, request: pytest.FixtureRequest) -> None:
    torch = pytest.importorskip("torch")
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter
    from torch.distributed.checkpoint.api import CheckpointException

    base, options, snapshot = inner_store(store, tmp_path, request)
    warnings.filterwarnings("ignore", message=".*torch.distributed.*", category=UserWarning)

    def save(step: int, state: dict[str, Any]) -> None:
        dcp.save(state, storage_writer=FsspecWriter(f"atomic::{base}/step-{step}", **options))

    def load(step: int) -> Any:
        state = {"weights": torch.zeros(1 << 18)}
        dcp.load(state, storage_reader=FsspecReader(f"atomic::{base}/step-{step}", **options))
        return state["weights"]

    save(1, {"weights": torch.full((1 << 18,), 1.0)})
    before = snapshot()
    assert sorted(name.rpartition("/")[2] for name in before) == [".metadata", "__0_0.distcp"]
    assert torch.equal(load(1), torch.full((1 << 18,), 1.0))

    # Step 2's shard fails half way through its upload: nothing of step 2 is visible (no shard,
    # no .metadata, no .metadata.tmp, no temp), and step 1 is untouched.
    with monkeypatch.context() as patch:
        fail_storage_after(patch, 1 << 19)
        # DCP reports the rank's failure as its own error (torch.save's writer, whose write
        # failed, raises on the way out).
        with pytest.raises(CheckpointException):
            save(2, {"weights": torch.full((1 << 18,), 2.0)})
    assert snapshot() == before

    save(2, {"weights": torch.full((1 << 18,), 2.0)})
    assert torch.equal(load(2), torch.full((1 << 18,), 2.0))
    names = sorted(name.rpartition("/")[2] for name in snapshot())
    assert names == [".metadata", ".metadata", "__0_0.distcp", "__0_0.distcp"]


# --- Lightning's ModelCheckpoint --------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Checkpoint directory")
def test_lightning_model_checkpoint_on_s3(s3_config: dict[str, Any], s3_prefix: str, monkeypatch: Any) -> None:
    torch = pytest.importorskip("torch")
    pl = pytest.importorskip("lightning.pytorch")
    from ._lightning_workers import QUIET, loaders, make_model

    def fit(epochs: int) -> Any:
        checkpoint = pl.callbacks.ModelCheckpoint(
            dirpath=f"atomic::s3://{s3_prefix}",
            filename="epoch{epoch:02d}",
            auto_insert_metric_name=False,
            monitor="val_loss",
            save_top_k=2,
            save_last=True,
        )
        trainer = pl.Trainer(max_epochs=epochs, callbacks=[checkpoint], default_root_dir=os.getcwd(), **QUIET)
        train_loader, val_loader = loaders()
        trainer.fit(make_model(pl), train_loader, val_loader)
        return checkpoint

    checkpoint = fit(3)
    assert isinstance(checkpoint._fs, AtomicFileSystem)
    before = s3_objects(s3_config, s3_prefix)
    names = sorted(name.rpartition("/")[2] for name in before)
    assert "last.ckpt" in names
    assert len(names) == 3  # the top 2 and last: the removals ran
    assert checkpoint.best_model_path.startswith("atomic::s3://")

    # The next run's first save fails half way through its upload: every earlier checkpoint is
    # byte-identical, and nothing new (no object, no upload) is in the bucket.
    with monkeypatch.context() as patch:
        fail_storage_after(patch, 4096)
        with pytest.raises(OSError, match="injected"):
            fit(1)
    assert s3_objects(s3_config, s3_prefix) == before

    with fsspec.open(f"atomic::s3://{s3_prefix}/last.ckpt", "rb") as f:
        state = torch.load(f, weights_only=False)
    assert set(state["state_dict"]) == {"layer.weight", "layer.bias"}
