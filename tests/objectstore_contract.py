"""The contract every object-store strategy keeps, run against a real server per store.

A store's test module subclasses :class:`ObjectStoreContract` (as ``TestS3`` etc.) and provides a
``store`` fixture returning a :class:`StoreHandle`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from atomicwrite import (
    AtomicWriteError,
    ConflictError,
    TargetExistsError,
    UnsupportedTargetError,
    atomic_open,
    atomic_save,
    atomic_update,
    sweep,
)
from atomicwrite._checksums import first_available, new_digest
from atomicwrite._names import parse_temp_name
from atomicwrite._stores.base import ObjectStoreStrategy
from atomicwrite._strategy import WriteOptions, resolve_target

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20


@dataclass
class StoreHandle:
    """What the contract needs to know about one store under test."""

    strategy: str
    #: The URL prefix of a fresh, empty "directory" for this test, without a trailing slash.
    prefix: str
    options: dict[str, Any]
    fs: Any
    #: Bytes that certainly take the multi-part path (more than one part).
    multipart_size: int
    #: Upload ids (or equivalents) that are still pending under the prefix.
    pending_uploads: Callable[[], list[str]]
    #: Whether a writer in another process can reach the store (not memory://).
    cross_process: bool = True
    #: Durability the store reports.
    durability: str = "full"
    #: Why the server under test cannot decide a race between conditional multi-part
    #: completions atomically (the real store can); None when it can.
    racy_multipart_precondition: str | None = None
    #: Whether the first path component is a bucket (or container), which is not an object.
    has_buckets: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def url(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def read(self, name: str) -> bytes | None:
        try:
            data: bytes = self.fs.cat_file(self.url(name))
        except FileNotFoundError:
            return None
        return data

    def names(self) -> list[str]:
        """Every object under the prefix (markers included), by name."""
        try:
            found = self.fs.find(self.prefix)
        except FileNotFoundError:
            return []
        return sorted(path.rpartition("/")[2] for path in found)


def unique_prefix(root: str) -> str:
    return f"{root}/t-{uuid.uuid4().hex[:12]}"


def markers(store: StoreHandle) -> list[str]:
    return [name for name in store.names() if parse_temp_name(name) is not None]


def write_in_chunks(file: Any, data: bytes, chunk: int = MiB) -> None:
    for start in range(0, len(data), chunk):
        file.write(data[start : start + chunk])


def default_checksum(store: StoreHandle, data: bytes) -> str:
    """``"algorithm:hex"`` of ``data``, in the checksum a write to ``store`` makes by default."""
    strategy, location = resolve_target(store.url("probe"))
    assert isinstance(strategy, ObjectStoreStrategy)
    backend = strategy.backend(location, WriteOptions(storage_options=store.options))
    algorithm = first_available(backend.default_checksums)
    digest = new_digest(algorithm)
    digest.update(data)
    return f"{algorithm}:{digest.digest().hex()}"


class ObjectStoreContract:
    """Behaviour shared by every object store.  Subclasses provide the ``store`` fixture."""

    def test_small_write(self, store: StoreHandle) -> None:
        with atomic_open(store.url("small.bin"), "wb", storage_options=store.options) as file:
            file.write(b"hello ")
            file.write(b"world")
        assert store.read("small.bin") == b"hello world"
        result = file.result
        assert result is not None
        assert result.strategy == store.strategy
        assert result.bytes_written == 11
        assert result.checksum == default_checksum(store, b"hello world")
        assert result.durability == store.durability
        assert result.version is not None
        assert store.names() == ["small.bin"]

    def test_multipart_invisible_until_commit(self, store: StoreHandle) -> None:
        old = b"old content"
        atomic_save(old, store.url("big.bin"), "bytes", storage_options=store.options)
        data = os.urandom(store.multipart_size)
        file = atomic_open(store.url("big.bin"), "wb", storage_options=store.options)
        write_in_chunks(file, data)
        file.flush()
        # Parts are out; the object is still the old one.
        assert store.read("big.bin") == old
        result = file.commit()
        assert store.read("big.bin") == data
        assert result.bytes_written == len(data)
        assert result.checksum == default_checksum(store, data)
        assert store.pending_uploads() == []
        assert markers(store) == []

    @pytest.mark.parametrize("size", ["small", "multipart"])
    def test_exception_aborts(self, store: StoreHandle, size: str) -> None:
        atomic_save(b"old", store.url("keep.bin"), "bytes", storage_options=store.options)
        payload = b"x" * (100 if size == "small" else store.multipart_size)
        with (
            pytest.raises(KeyboardInterrupt),
            atomic_open(store.url("keep.bin"), "wb", storage_options=store.options) as f,
        ):
            write_in_chunks(f, payload)
            raise KeyboardInterrupt
        assert store.read("keep.bin") == b"old"
        assert store.pending_uploads() == []
        assert store.names() == ["keep.bin"]

    def test_new_object_not_created_on_failure(self, store: StoreHandle) -> None:
        with pytest.raises(RuntimeError), atomic_open(store.url("never.bin"), "wb", storage_options=store.options) as f:
            write_in_chunks(f, b"y" * store.multipart_size)
            raise RuntimeError("serializer failed")
        assert store.read("never.bin") is None
        assert store.names() == []
        assert store.pending_uploads() == []

    @pytest.mark.parametrize("size", ["small", "multipart"])
    def test_exclusive_create(self, store: StoreHandle, size: str) -> None:
        payload = b"z" * (10 if size == "small" else store.multipart_size)
        with atomic_open(store.url("x.bin"), "xb", storage_options=store.options) as file:
            write_in_chunks(file, payload)
        assert store.read("x.bin") == payload
        other = b"w" * len(payload)
        file = atomic_open(store.url("x.bin"), "xb", storage_options=store.options)
        with pytest.raises(FileExistsError) as raised, file:
            write_in_chunks(file, other)
        assert isinstance(raised.value, TargetExistsError)
        assert store.read("x.bin") == payload
        assert store.pending_uploads() == []
        assert store.names() == ["x.bin"]

    @pytest.mark.parametrize("size", ["small", "multipart"])
    def test_exclusive_race_has_one_winner(self, store: StoreHandle, size: str) -> None:
        """Eight writers create the same object at once: the store's precondition picks one."""
        if size == "multipart" and store.racy_multipart_precondition:
            pytest.skip(store.racy_multipart_precondition)
        length = 64 if size == "small" else store.multipart_size
        barrier = threading.Barrier(8)
        outcomes: dict[int, str] = {}

        def writer(index: int) -> None:
            payload = bytes([index]) * length
            try:
                file = atomic_open(store.url("race.bin"), "xb", storage_options=store.options)
                write_in_chunks(file, payload)
                barrier.wait(timeout=60)
                file.commit()
                outcomes[index] = "won"
            except FileExistsError:
                outcomes[index] = "lost"
            except Exception as exc:  # pragma: no cover - reported by the assertion below
                outcomes[index] = repr(exc)

        threads = [threading.Thread(target=writer, args=(index,)) for index in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert sorted(outcomes.values()) == ["lost"] * 7 + ["won"], outcomes
        winner = next(index for index, outcome in outcomes.items() if outcome == "won")
        assert store.read("race.bin") == bytes([winner]) * length
        assert store.pending_uploads() == []

    @pytest.mark.parametrize("size", ["small", "multipart"])
    def test_compare_and_swap(self, store: StoreHandle, size: str) -> None:
        length = 16 if size == "small" else store.multipart_size
        first = atomic_save(b"1" * length, store.url("cas.bin"), "bytes", storage_options=store.options)
        second = atomic_save(
            b"2" * length, store.url("cas.bin"), "bytes", storage_options=store.options, if_match=first.version
        )
        assert store.read("cas.bin") == b"2" * length
        with pytest.raises(ConflictError):
            atomic_save(
                b"3" * length, store.url("cas.bin"), "bytes", storage_options=store.options, if_match=first.version
            )
        assert store.read("cas.bin") == b"2" * length
        assert second.version != first.version
        assert store.pending_uploads() == []
        assert store.names() == ["cas.bin"]

    def test_progress_reports_uploaded_bytes(self, store: StoreHandle) -> None:
        from fsspec.callbacks import Callback

        progress = Callback()
        file = atomic_open(store.url("progress.bin"), "wb", storage_options=store.options, progress=progress)
        write_in_chunks(file, b"p" * (store.multipart_size + 12345))
        file.commit()
        assert progress.value == store.multipart_size + 12345

    def test_text_and_serializers(self, store: StoreHandle) -> None:
        with atomic_open(store.url("notes.txt"), "w", encoding="utf-16", storage_options=store.options) as file:
            file.write("caf\u00e9\n")
        assert store.read("notes.txt") == "caf\u00e9\n".encode("utf-16")
        atomic_save({"epoch": 3}, store.url("state.json"), "json", storage_options=store.options)
        assert json.loads(store.read("state.json") or b"") == {"epoch": 3}

    def test_locks_are_refused_clearly(self, store: StoreHandle) -> None:
        with pytest.raises(UnsupportedTargetError, match="if_match"):
            atomic_open(store.url("l.bin"), "wb", lock=True, storage_options=store.options)
        with pytest.raises(UnsupportedTargetError):
            atomic_update(store.url("l.bin"), lambda old: b"new", storage_options=store.options)
        assert store.names() == []

    def test_directories_and_buckets_are_not_objects(self, store: StoreHandle) -> None:
        scheme, _, path = store.prefix.partition("://")
        targets = [store.url("")] + ([f"{scheme}://{path.partition('/')[0]}"] if store.has_buckets else [])
        for target in targets:
            with pytest.raises(AtomicWriteError, match="not an object"):
                atomic_open(target, "wb", storage_options=store.options)
        assert store.names() == []

    def test_killed_writer_leaves_nothing_visible(self, store: StoreHandle) -> None:
        """SIGKILL mid-upload: no object appears, and sweep aborts exactly that upload."""
        if not store.cross_process:
            pytest.skip("this store lives inside one process: a killed writer takes it along")
        atomic_save(b"old", store.url("ckpt.bin"), "bytes", storage_options=store.options)
        code = (
            "import json, os, sys\n"
            "from atomicwrite import atomic_open\n"
            "options = json.loads(sys.argv[2])\n"
            "f = atomic_open(sys.argv[1], 'wb', storage_options=options)\n"
            f"for _ in range({store.multipart_size // MiB}): f.write(os.urandom(1 << 20))\n"
            "f.flush()\n"
            "print('uploading', flush=True)\n"
            "sys.stdin.read()\n"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", code, store.url("ckpt.bin"), json.dumps(store.options)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **store.extra.get("env", {})},
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "uploading"
        proc.kill()
        proc.wait(timeout=30)
        assert proc.stdin is not None
        proc.stdin.close()
        proc.stdout.close()
        assert store.read("ckpt.bin") == b"old"
        left = markers(store)
        assert len(left) == 1
        assert len(store.pending_uploads()) == 1
        # A user's own look-alike is never touched.
        store.fs.pipe_file(store.url(".ckpt.bin.tmp"), b"mine")
        assert sweep(store.prefix, storage_options=store.options, dry_run=True) == [store.url(left[0])]
        assert len(store.pending_uploads()) == 1
        assert sweep(store.prefix, storage_options=store.options) == [store.url(left[0])]
        assert store.pending_uploads() == []
        assert store.names() == [".ckpt.bin.tmp", "ckpt.bin"]
        assert store.read("ckpt.bin") == b"old"

    def test_live_writer_survives_sweep(self, store: StoreHandle) -> None:
        file = atomic_open(store.url("live.bin"), "wb", storage_options=store.options)
        write_in_chunks(file, b"q" * store.multipart_size)
        file.flush()
        assert sweep(store.prefix, storage_options=store.options, older_than=0) == []
        file.commit()
        assert store.read("live.bin") == b"q" * store.multipart_size
        assert store.pending_uploads() == []

    def test_credentials_never_in_errors(self, store: StoreHandle) -> None:
        secret = store.extra.get("secret")
        if not secret:
            pytest.skip("this store takes no secret")
        atomic_save(b"a", store.url("c.bin"), "bytes", storage_options=store.options)
        with pytest.raises(TargetExistsError) as raised:
            atomic_save(b"b", store.url("c.bin"), "bytes", storage_options=store.options, exclusive=True)
        assert secret not in str(raised.value)
        assert secret not in repr(raised.value)
