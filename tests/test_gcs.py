"""GCS through gcsfs, against fake-gcs-server on loopback (behind a recording proxy).

See tests/_gcs_server.py for the server and the proxy.  Where the emulator does not honour what
GCS does (preconditions on resumable sessions, cancelling a session, checksum validation), the
probe at start says so, the contract test that needs it is skipped with the reason, and a test
here checks what the client sends instead.  (With fake-gcs-server 1.54, the sequential exclusive
and compare-and-swap contract tests on the multi-part path pass through the library's own look
at the object's generation before the final chunk: the server ignores the precondition there.)
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest

from atomicwrite import (
    ConflictError,
    TargetExistsError,
    UnsupportedTargetError,
    UsageError,
    atomic_open,
    atomic_save,
    sweep,
)
from atomicwrite._names import host_tag
from atomicwrite._stores.gcs import CHUNK_QUANTUM, GCSBackend, GCSStrategy
from atomicwrite._strategy import WriteOptions, resolve_target
from tests import _gcs_server  # sets GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false before gcsfs is imported
from tests._gcs_server import BUCKET, GCSServer, Recorded, gcs_server
from tests.objectstore_contract import MiB, ObjectStoreContract, StoreHandle, markers, unique_prefix, write_in_chunks

__all__ = ["gcs_server"]

PART = MiB  # a multiple of 256 KiB
# More than one part, and not a whole number of them: the final request carries bytes.
MULTIPART = 5 * MiB + 12345

SESSION_PRECONDITION_GAP = (
    "fake-gcs-server {version} (the binary in {wrapper}) ignores ifGenerationMatch on resumable"
    " sessions, at initiation and at finalization, so racing exclusive sessions all pass it (only"
    " the library's non-atomic look before the final chunk stands between them there); GCS checks"
    " the precondition atomically as the final chunk arrives. What we send is checked by"
    " test_preconditions_are_sent"
)


@pytest.fixture
def store(gcs_server: GCSServer) -> StoreHandle:
    import fsspec

    prefix = unique_prefix(f"gs://{BUCKET}")
    key_prefix = prefix.removeprefix(f"gs://{BUCKET}/") + "/"
    caps = gcs_server.capabilities
    return StoreHandle(
        strategy="gcs",
        prefix=prefix,
        options={**gcs_server.options(), "part_size": PART},
        fs=fsspec.filesystem("gs", **gcs_server.options()),
        multipart_size=MULTIPART,
        # The emulator cannot list sessions: the proxy follows them (opened, then finalized or
        # cancelled), for writers in this process and in others alike.
        pending_uploads=lambda: gcs_server.proxy.open_sessions(BUCKET, key_prefix),
        racy_multipart_precondition=(
            None
            if caps.session_preconditions
            else SESSION_PRECONDITION_GAP.format(version=caps.version, wrapper=_gcs_server.WRAPPER)
        ),
        extra={"env": {"GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}, "server": gcs_server},
    )


def _server(store: StoreHandle) -> GCSServer:
    server: GCSServer = store.extra["server"]
    return server


def _key(store: StoreHandle, name: str) -> str:
    return store.url(name).removeprefix(f"gs://{BUCKET}/")


def _object_requests(records: list[Recorded], key: str) -> list[Recorded]:
    """The upload requests for ``key`` (initiation, chunks, simple uploads), markers excluded."""
    sessions = {
        r.location
        for r in records
        if r.query.get("uploadType") == "resumable" and r.query.get("name") == key and r.location
    }
    out = []
    for r in records:
        if r.upload_id is not None:
            if any(r.upload_id in (s or "") for s in sessions):
                out.append(r)
        elif r.query.get("name") == key or (r.query.get("uploadType") == "multipart" and _multipart_name(r) == key):
            out.append(r)
    return out


def _multipart_name(record: Recorded) -> str | None:
    """The object name in a multipart upload's JSON part."""
    head = record.body_head
    start = head.find(b"{")
    end = head.find(b"}", start)
    if start < 0 or end < 0:
        return None
    try:
        name: str = json.loads(head[start : end + 1])["name"]
    except (ValueError, KeyError):
        return None
    return name


def _multipart_metadata(record: Recorded) -> dict[str, Any]:
    head = record.body_head
    start = head.find(b"{")
    metadata: dict[str, Any] = json.loads(head[start : head.find(b"}", start) + 1])
    return metadata


def _crc32c(data: bytes) -> str:
    import google_crc32c

    digest: bytes = google_crc32c.Checksum(data).digest()  # type: ignore[no-untyped-call]
    return base64.b64encode(digest).decode()


def _wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    return int(proc.stdout)


class TestGCS(ObjectStoreContract):
    # --- registration and options (no request needed) -----------------------------------

    def test_registered_for_gs_and_gcs(self) -> None:
        for url in ("gs://bucket/key", "gcs://bucket/key"):
            strategy, location = resolve_target(url)
            assert isinstance(strategy, GCSStrategy)
            assert location == url

    def test_chunk_size_is_a_multiple_of_256k_and_chunks_go_in_order(self) -> None:
        assert GCSBackend(None, "b", "k", location="gs://b/k").part_size == 8 * MiB
        assert GCSBackend(None, "b", "k", location="gs://b/k", part_size=1_000_000).part_size == 3 * CHUNK_QUANTUM
        assert GCSBackend(None, "b", "k", location="gs://b/k", part_size=1).part_size == CHUNK_QUANTUM
        assert GCSBackend.parallel_parts == 1

    def test_gcs_scheme_writes_too(self, store: StoreHandle) -> None:
        url = store.url("alias.bin").replace("gs://", "gcs://", 1)
        result = atomic_save(b"via gcs://", url, "bytes", storage_options=store.options)
        assert result.strategy == "gcs"
        assert store.read("alias.bin") == b"via gcs://"

    def test_if_match_must_be_a_generation(self, store: StoreHandle) -> None:
        mark = _server(store).proxy.mark()
        with pytest.raises(UsageError, match="generation"):
            atomic_save(b"x", store.url("g.bin"), "bytes", storage_options=store.options, if_match='"an-etag"')
        assert _server(store).proxy.since(mark) == []

    def test_version_is_the_generation(self, store: StoreHandle) -> None:
        small = atomic_save(b"s", store.url("small.bin"), "bytes", storage_options=store.options)
        large = atomic_save(b"L" * MULTIPART, store.url("large.bin"), "bytes", storage_options=store.options)
        for result, name in ((small, "small.bin"), (large, "large.bin")):
            assert isinstance(result.version, str)
            assert result.version == str(store.fs.info(store.url(name))["generation"])

    # --- the resumable session ------------------------------------------------------------

    def test_chunks_leave_while_writing_and_only_commit_finalizes(self, store: StoreHandle) -> None:
        proxy = _server(store).proxy
        key = _key(store, "stream.bin")
        data = os.urandom(2 * PART + 100_000)
        mark = proxy.mark()
        file = atomic_open(store.url("stream.bin"), "wb", storage_options=store.options)
        write_in_chunks(file, data)
        file.flush()

        def chunks() -> list[Recorded]:
            return [r for r in _object_requests(proxy.since(mark), key) if r.method == "PUT"]

        _wait_for(lambda: len(chunks()) == 2)
        assert [r.headers["content-range"] for r in chunks()] == [
            f"bytes 0-{PART - 1}/*",
            f"bytes {PART}-{2 * PART - 1}/*",
        ]
        assert all(r.body_size % CHUNK_QUANTUM == 0 and r.status == 308 for r in chunks())
        assert store.read("stream.bin") is None  # nothing visible before the final request
        assert len(store.pending_uploads()) == 1
        file.commit()
        final = chunks()[-1]
        assert final.headers["content-range"] == f"bytes {2 * PART}-{len(data) - 1}/{len(data)}"
        assert final.status == 200
        assert store.read("stream.bin") == data
        assert store.pending_uploads() == []
        assert markers(store) == []

    def test_empty_tail_finalizes_with_the_total_alone(self, store: StoreHandle) -> None:
        proxy = _server(store).proxy
        data = os.urandom(3 * PART)
        mark = proxy.mark()
        atomic_save(data, store.url("whole.bin"), "bytes", storage_options=store.options)
        puts = [r for r in _object_requests(proxy.since(mark), _key(store, "whole.bin")) if r.method == "PUT"]
        assert [r.headers["content-range"] for r in puts] == [
            f"bytes 0-{PART - 1}/*",
            f"bytes {PART}-{2 * PART - 1}/*",
            f"bytes {2 * PART}-{3 * PART - 1}/*",
            f"bytes */{3 * PART}",
        ]
        assert puts[-1].body_size == 0
        assert store.read("whole.bin") == data

    def test_preconditions_are_sent(self, store: StoreHandle) -> None:
        """ifGenerationMatch rides on the publishing requests (not on the marker)."""
        proxy = _server(store).proxy

        def conditions(mark: int, name: str) -> list[str | None]:
            return [
                r.query.get("ifGenerationMatch")
                for r in _object_requests(proxy.since(mark), _key(store, name))
                if r.method == "POST"
            ]

        mark = proxy.mark()
        atomic_save(b"s", store.url("small.bin"), "bytes", storage_options=store.options, exclusive=True)
        assert conditions(mark, "small.bin") == ["0"]
        mark = proxy.mark()
        first = atomic_save(
            b"L" * MULTIPART, store.url("large.bin"), "bytes", storage_options=store.options, exclusive=True
        )
        assert conditions(mark, "large.bin") == ["0"]  # on the session's initiation
        # The marker is an ordinary upload, without condition.
        marker_uploads = [r for r in proxy.since(mark) if r.method == "POST" and ".tmp" in (_multipart_name(r) or "")]
        assert len(marker_uploads) == 1
        assert "ifGenerationMatch" not in marker_uploads[0].query
        mark = proxy.mark()
        atomic_save(
            b"M" * MULTIPART, store.url("large.bin"), "bytes", storage_options=store.options, if_match=first.version
        )
        assert conditions(mark, "large.bin") == [first.version]
        small = store.fs.info(store.url("small.bin"))["generation"]
        mark = proxy.mark()
        atomic_save(b"t", store.url("small.bin"), "bytes", storage_options=store.options, if_match=small)
        assert conditions(mark, "small.bin") == [str(small)]

    def test_checksums_are_sent(self, store: StoreHandle) -> None:
        """The simple upload declares the CRC32C; the final request of a session sends X-Goog-Hash."""
        pytest.importorskip("google_crc32c")
        proxy = _server(store).proxy
        mark = proxy.mark()
        atomic_save(b"checked", store.url("small.bin"), "bytes", storage_options=store.options)
        (upload,) = _object_requests(proxy.since(mark), _key(store, "small.bin"))
        assert _multipart_metadata(upload)["crc32c"] == _crc32c(b"checked")
        data = os.urandom(MULTIPART)
        mark = proxy.mark()
        atomic_save(data, store.url("large.bin"), "bytes", storage_options=store.options)
        puts = [r for r in _object_requests(proxy.since(mark), _key(store, "large.bin")) if r.method == "PUT"]
        assert puts[-1].headers["x-goog-hash"] == f"crc32c={_crc32c(data)}"
        assert all("x-goog-hash" not in r.headers for r in puts[:-1])
        assert store.fs.info(store.url("large.bin"))["crc32c"] == _crc32c(data)

    def test_corrupted_upload_is_refused(self, store: StoreHandle) -> None:
        """A byte flipped in transit (by the proxy) fails the declared checksum: nothing changes."""
        caps = _server(store).capabilities
        if not caps.validates_checksums:
            pytest.skip(
                f"fake-gcs-server {caps.version} does not validate declared checksums (GCS does);"
                " test_checksums_are_sent checks what we declare"
            )
        atomic_save(b"old", store.url("c.bin"), "bytes", storage_options=store.options)
        key = _key(store, "c.bin")
        _server(store).proxy.inject(
            lambda method, path, query, headers: method == "POST" and query.get("uploadType") == "multipart",
            corrupt=True,
        )
        with pytest.raises(Exception):  # noqa: B017, PT011 - gcsfs raises ValueError or HttpError for a 400
            atomic_save(b"new content " * 100, store.url("c.bin"), "bytes", storage_options=store.options)
        assert store.read("c.bin") == b"old", key

    def test_abort_cancels_the_session_the_marker_names(self, store: StoreHandle) -> None:
        server = _server(store)
        atomic_save(b"old", store.url("keep.bin"), "bytes", storage_options=store.options)
        mark = server.proxy.mark()
        file = atomic_open(store.url("keep.bin"), "wb", storage_options=store.options)
        write_in_chunks(file, b"a" * (2 * PART))
        file.flush()
        (session,) = store.pending_uploads()
        (marker,) = markers(store)
        record = json.loads(store.fs.cat_file(store.url(marker)))
        assert record["upload_id"] == session
        assert set(record) == {"target", "upload_id", "host", "pid", "started"}
        assert "token" not in session.lower()
        assert "authorization" not in json.dumps(record).lower()
        file.discard()
        deletes = [r for r in server.proxy.since(mark) if r.method == "DELETE" and r.upload_id]
        assert len(deletes) == 1
        assert session.endswith(f"upload_id={deletes[0].upload_id}")
        assert deletes[0].status == 499  # GCS's answer for a cancelled session
        assert server.proxy.session_state(session) == "cancelled"
        finals = [
            r
            for r in server.proxy.since(mark)
            if r.upload_id == deletes[0].upload_id and not r.headers.get("content-range", "").endswith("/*")
        ]
        assert [r.method for r in finals] == ["DELETE"]  # no request ever gave the total
        assert store.read("keep.bin") == b"old"
        assert store.names() == ["keep.bin"]
        if server.capabilities.session_delete_cancels:
            with pytest.raises(Exception) as raised:  # noqa: PT011 - 404 or 410, as gcsfs maps them
                store.fs.call("PUT", session, headers={"Content-Range": "bytes */0"}, data=b"")
            assert isinstance(raised.value, FileNotFoundError) or getattr(raised.value, "code", None) == 410
            # (fake-gcs-server 1.54 answers DELETE with 499 but keeps the session usable; then the
            # recorded DELETE above is the proof.)

    @pytest.mark.parametrize("condition", ["exclusive", "if_match"])
    def test_refusal_at_session_start_is_typed(self, store: StoreHandle, condition: str) -> None:
        """GCS checks a session's precondition when it opens: simulated here by the proxy's 412."""
        proxy = _server(store).proxy
        first = atomic_save(b"old", store.url("t.bin"), "bytes", storage_options=store.options)
        proxy.inject(
            lambda method, path, query, headers: method == "POST" and query.get("uploadType") == "resumable",
            status=412,
        )
        kwargs: dict[str, Any] = {"exclusive": True} if condition == "exclusive" else {"if_match": first.version}
        expected = TargetExistsError if condition == "exclusive" else ConflictError
        try:
            with pytest.raises(expected):
                atomic_save(b"n" * MULTIPART, store.url("t.bin"), "bytes", storage_options=store.options, **kwargs)
        finally:
            proxy.clear_injections()
        assert store.read("t.bin") == b"old"
        assert store.names() == ["t.bin"]
        assert store.pending_uploads() == []

    def test_refusal_at_finalization_cancels_the_session(self, store: StoreHandle) -> None:
        """A race lost at the final chunk (GCS's 412 there, simulated by the proxy): typed error,
        session cancelled, marker gone, nothing created."""
        proxy = _server(store).proxy
        proxy.inject(
            lambda method, path, query, headers: (
                method == "PUT" and "upload_id" in query and not headers.get("content-range", "").endswith("/*")
            ),
            status=412,
        )
        try:
            with pytest.raises(TargetExistsError):
                atomic_save(
                    b"r" * MULTIPART, store.url("new.bin"), "bytes", storage_options=store.options, exclusive=True
                )
        finally:
            proxy.clear_injections()
        assert store.read("new.bin") is None
        assert store.names() == []
        assert store.pending_uploads() == []

    def test_sweep_sends_nothing_to_a_foreign_session_uri(self, store: StoreHandle) -> None:
        """A marker is data anyone with write access could plant: sweep only cancels session URIs
        on the configured endpoint, for the marker's own bucket and object."""
        server = _server(store)
        elsewhere = _gcs_server.RecordingProxy(server.upstream)
        elsewhere.start()
        try:
            pid = _dead_pid()
            planted = {
                "foreign-host": f"{elsewhere.url}/upload/storage/v1/b/{BUCKET}/o?uploadType=resumable&upload_id=x",
                "other-bucket": f"{server.url}/upload/storage/v1/b/other/o?uploadType=resumable&upload_id=y",
                "not-a-session": f"{server.url}/storage/v1/b/{BUCKET}/o/victim",
            }
            for index, (name, uri) in enumerate(planted.items()):
                marker = store.url(f".{name}.aw{host_tag()}.{pid}.{index:08x}.tmp")
                record = {"target": store.url(name), "upload_id": uri, "host": host_tag(), "pid": pid, "started": 0}
                store.fs.pipe_file(marker, json.dumps(record).encode())
            mark = server.proxy.mark()
            removed = sweep(store.prefix, storage_options=store.options)
            assert len(removed) == 3
            assert elsewhere.since(0) == []
            assert [r for r in server.proxy.since(mark) if r.method == "DELETE" and "/upload/" in r.path] == []
            assert markers(store) == []
        finally:
            elsewhere.stop()

    def test_strategy_backend_refuses_buckets_without_requests(self) -> None:
        pytest.importorskip("gcsfs", reason="gcsfs is not installed (pip install -e .[gcs])")
        strategy = GCSStrategy()
        options = WriteOptions(storage_options={"token": "anon", "endpoint_url": "http://127.0.0.1:9"})
        with pytest.raises(UnsupportedTargetError, match="not an object"):
            strategy.backend("gs://just-a-bucket", options)

    @pytest.mark.slow
    def test_memory_stays_bounded(self, store: StoreHandle) -> None:
        """128 MiB streamed to GCS costs about two chunks, not the object."""
        code = (
            "import json, os, resource, sys\n"
            "from atomicwrite import atomic_open\n"
            "options = json.loads(sys.argv[2])\n"
            "chunk = os.urandom(1 << 20)\n"
            "import atomicwrite._stores.gcs, fsspec, gcsfs\n"
            "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "with atomic_open(sys.argv[1], 'wb', storage_options=options) as f:\n"
            "    for _ in range(128): f.write(chunk)\n"
            "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "print(json.dumps({'extra_kib': peak - base, 'size': f.result.bytes_written}))\n"
        )
        options = {**store.options, "part_size": 8 * MiB}
        out = subprocess.run(
            [sys.executable, "-c", code, store.url("huge.bin"), json.dumps(options)],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
            env={**os.environ, **store.extra["env"]},
        )
        report = json.loads(out.stdout.strip().splitlines()[-1])
        assert report["size"] == 128 * MiB
        # 8 MiB chunks x (1 in flight + 1 filling + 1 being copied + 1 in the HTTP client) + 32 MiB.
        assert report["extra_kib"] * 1024 < 8 * MiB * 4 + 32 * MiB, report
        assert store.fs.info(store.url("huge.bin"))["size"] == 128 * MiB
