"""S3 through s3fs, against moto's S3 server on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from atomicwrite import atomic_open, atomic_save, sweep
from atomicwrite._names import host_tag
from tests._stores import moto_endpoint, s3_options
from tests.objectstore_contract import MiB, ObjectStoreContract, StoreHandle, markers, unique_prefix

__all__ = ["moto_endpoint"]

BUCKET = "atomicwrite-tests"


@pytest.fixture(scope="module")
def s3(moto_endpoint: str) -> Any:
    import fsspec

    options = s3_options(moto_endpoint)
    fs = fsspec.filesystem("s3", **options)
    if not fs.exists(BUCKET):
        fs.call_s3("create_bucket", Bucket=BUCKET)
    return fs


@pytest.fixture
def store(s3: Any, moto_endpoint: str) -> StoreHandle:
    prefix = unique_prefix(f"s3://{BUCKET}")
    key_prefix = prefix.removeprefix(f"s3://{BUCKET}/")

    def pending() -> list[str]:
        uploads = s3.call_s3("list_multipart_uploads", Bucket=BUCKET, Prefix=key_prefix).get("Uploads", [])
        return sorted(upload["UploadId"] for upload in uploads)

    options = {**s3_options(moto_endpoint), "part_size": 5 * MiB, "parallel_parts": 3}
    return StoreHandle(
        strategy="s3",
        prefix=prefix,
        options=options,
        fs=s3,
        multipart_size=12 * MiB,
        pending_uploads=pending,
        extra={"secret": options["secret"]},
        racy_multipart_precondition=(
            "moto's server checks If-None-Match on CompleteMultipartUpload without atomicity, so"
            " racing completions can all pass there (S3 itself decides them atomically); what we"
            " send is checked by test_multipart_exclusive_sends_precondition"
        ),
    )


class TestS3(ObjectStoreContract):
    def test_parts_are_uploaded_while_writing(self, store: StoreHandle) -> None:
        """Full parts leave as soon as they are full: the pending upload has them before commit."""
        file = atomic_open(store.url("stream.bin"), "wb", storage_options=store.options)
        for _ in range(11):
            file.write(b"p" * MiB)
        file.flush()
        (upload_id,) = store.pending_uploads()
        key = store.url("stream.bin").removeprefix(f"s3://{BUCKET}/")
        # Two 5 MiB parts are full; give the three upload threads a moment to finish them.
        for _ in range(100):
            parts = store.fs.call_s3("list_parts", Bucket=BUCKET, Key=key, UploadId=upload_id).get("Parts", [])
            if len(parts) == 2:
                break
            import time

            time.sleep(0.05)
        assert [part["Size"] for part in parts] == [5 * MiB, 5 * MiB]
        file.commit()
        assert store.read("stream.bin") == b"p" * 11 * MiB

    def test_multipart_exclusive_sends_precondition(self, store: StoreHandle) -> None:
        """Exclusive multi-part writes publish with If-None-Match: * on the completion itself."""
        seen: list[tuple[str, str | None]] = []

        def record(request: Any, **_: Any) -> None:
            operation = request.context.get("operation_name") or request.url
            value = request.headers.get("If-None-Match")
            seen.append((str(operation), value.decode() if isinstance(value, bytes) else value))

        events = store.fs.s3.meta.events
        events.register("before-send.s3.CompleteMultipartUpload", record)
        events.register("before-send.s3.PutObject", record)
        try:
            with atomic_open(store.url("excl.bin"), "xb", storage_options=store.options) as file:
                file.write(b"m" * store.multipart_size)
            with atomic_open(store.url("excl-small.bin"), "xb", storage_options=store.options) as file:
                file.write(b"s")
        finally:
            events.unregister("before-send.s3.CompleteMultipartUpload", record)
            events.unregister("before-send.s3.PutObject", record)
        conditions = [header for _, header in seen]
        # The marker PUT carries no condition; the two publishing requests carry it.
        assert conditions.count("*") == 2, seen
        assert store.read("excl.bin") == b"m" * store.multipart_size

    @pytest.mark.parametrize("size", ["small", "multipart"])
    def test_compare_and_swap_on_a_deleted_key_is_a_conflict(self, store: StoreHandle, size: str) -> None:
        """S3 answers If-Match on a missing key with 404, not 412: still a lost race."""
        from atomicwrite import ConflictError, atomic_save

        first = atomic_save(b"v1", store.url("gone.bin"), "bytes", storage_options=store.options)
        store.fs.rm_file(store.url("gone.bin"))
        payload = b"v2" * (8 if size == "small" else store.multipart_size // 2)
        with pytest.raises(ConflictError):
            atomic_save(payload, store.url("gone.bin"), "bytes", storage_options=store.options, if_match=first.version)
        assert store.read("gone.bin") is None
        assert store.pending_uploads() == []
        assert store.names() == []

    @pytest.mark.slow
    @pytest.mark.skipif(sys.platform != "linux", reason="reads the peak from /proc/self/status")
    def test_memory_stays_bounded(self, store: StoreHandle) -> None:
        """256 MiB streamed to S3 costs about part_size x (parallel parts + 1), not the object."""
        # The peak is read from VmHWM, reset just before the upload (Linux 4.0+), so what the
        # imports and the client's first request held does not hide the upload's own.
        code = (
            "import json, os, sys\n"
            "from atomicwrite import atomic_open\n"
            "def status(key):\n"
            "    for line in open('/proc/self/status'):\n"
            "        if line.startswith(key + ':'): return int(line.split()[1])\n"
            "options = json.loads(sys.argv[2])\n"
            "chunk = os.urandom(1 << 20)\n"
            "with atomic_open(sys.argv[1] + '.warm', 'wb', storage_options=options) as f: f.write(b'x')\n"
            "open('/proc/self/clear_refs', 'w').write('5')\n"
            "base = status('VmRSS')\n"
            "with atomic_open(sys.argv[1], 'wb', storage_options=options) as f:\n"
            "    for _ in range(256): f.write(chunk)\n"
            "peak = status('VmHWM')\n"
            "print(json.dumps({'extra_kib': peak - base, 'size': f.result.bytes_written}))\n"
        )
        options = {**store.options, "part_size": 8 * MiB, "parallel_parts": 4}
        out = subprocess.run(
            [sys.executable, "-c", code, store.url("huge.bin"), json.dumps(options)],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
        report = json.loads(out.stdout.strip().splitlines()[-1])
        assert report["size"] == 256 * MiB
        # 8 MiB parts x 4 in flight + 32 MiB for the part filling, clients and threads: the HTTP
        # stack sends each part from its own buffer, with no copy of it.
        assert report["extra_kib"] * 1024 < 8 * MiB * 4 + 32 * MiB, report
        assert store.fs.info(store.url("huge.bin"))["size"] == 256 * MiB

    def test_writer_killed_before_naming_its_upload(self, store: StoreHandle) -> None:
        """SIGKILL after CreateMultipartUpload, before the marker names the upload: sweep still
        aborts that upload, and leaves alone one that it did not start."""
        atomic_save(b"old", store.url("ckpt.bin"), "bytes", storage_options=store.options)
        key = store.url("ckpt.bin").removeprefix(f"s3://{BUCKET}/")
        foreign = store.fs.call_s3("create_multipart_upload", Bucket=BUCKET, Key=key)["UploadId"]
        code = (
            "import json, os, sys, time\n"
            "from atomicwrite import atomic_open\n"
            "from atomicwrite._stores.s3 import S3Backend\n"
            "create = S3Backend.start\n"
            "def start_then_hang(self, **kwargs):\n"
            "    create(self, **kwargs)\n"
            "    print('created', flush=True)\n"
            "    time.sleep(600)\n"
            "S3Backend.start = start_then_hang\n"
            "f = atomic_open(sys.argv[1], 'wb', storage_options=json.loads(sys.argv[2]))\n"
            f"f.write(os.urandom({store.multipart_size}))\n"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", code, store.url("ckpt.bin"), json.dumps(store.options)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        try:
            assert proc.stdout.readline().strip() == "created"
        finally:
            proc.kill()
            proc.wait(timeout=30)
            proc.stdout.close()
        (left,) = markers(store)
        assert len(store.pending_uploads()) == 2
        assert sweep(store.prefix, storage_options=store.options) == [store.url(left)]
        assert store.pending_uploads() == [foreign]
        assert markers(store) == []
        assert store.read("ckpt.bin") == b"old"

    def test_unnamed_upload_waits_for_live_writers(self, store: StoreHandle) -> None:
        """While a live writer of the same object has not named its upload yet, a dead writer's
        unnamed upload cannot be told from the live one's: the sweep leaves both for later."""
        target = store.url("w.bin").removeprefix("s3://")
        key = target.removeprefix(f"{BUCKET}/")
        orphan = store.fs.call_s3("create_multipart_upload", Bucket=BUCKET, Key=key)["UploadId"]

        def marker(pid: int) -> str:
            name = f".w.bin.aw{host_tag()}.{pid}.{os.urandom(4).hex()}.tmp"
            record = {"target": target, "upload_id": None, "host": host_tag(), "pid": pid, "known_uploads": []}
            store.fs.pipe_file(store.url(name), json.dumps(record).encode())
            return name

        dead = marker(2**22 + 4321)
        live = marker(os.getpid())
        assert sweep(store.prefix, storage_options=store.options, older_than=0) == []
        assert store.pending_uploads() == [orphan]
        store.fs.rm_file(store.url(live))
        assert sweep(store.prefix, storage_options=store.options, older_than=0) == [store.url(dead)]
        assert store.pending_uploads() == []
        assert markers(store) == []
