"""Selectable checksums: computed once on the way out, sent where the store checks them, reported.

The S3 cases run against moto's server, which records the checksums it is sent (and combines a
multipart upload's CRCs into the whole object's), so a wrong digest or a missing header shows.
An S3-compatible server that refuses a checksum is stood in for by a proxy in front of moto that
answers any request carrying CRC64NVME the way such servers do (400 InvalidArgument).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import threading
import warnings
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from atomicwrite import UsageError, _checksums, atomic_directory, atomic_open, atomic_save, verify_directory
from atomicwrite._checksums import CHECKSUMS, new_digest
from tests._stores import moto_endpoint, s3_options

__all__ = ["moto_endpoint"]

BUCKET = "atomicwrite-checksums"
MiB = 1 << 20
# The standard check values: each algorithm over b"123456789".
CHECK_VALUES = {
    "crc64nvme": 0xAE8B14860A799888.to_bytes(8, "big"),
    "crc32c": 0xE3069283.to_bytes(4, "big"),
    "crc32": 0xCBF43926.to_bytes(4, "big"),
    "sha256": hashlib.sha256(b"123456789").digest(),
    "md5": hashlib.md5(b"123456789").digest(),
}


def checksum_of(algorithm: str, data: bytes) -> str:
    digest = new_digest(algorithm)
    digest.update(data)
    return f"{algorithm}:{digest.digest().hex()}"


# --- the algorithms ----------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", CHECKSUMS)
def test_each_algorithm_gives_its_standard_check_value_in_pieces(algorithm: str) -> None:
    digest = new_digest(algorithm)
    for piece in (b"1234", memoryview(b"56"), bytearray(b"789")):
        digest.update(piece)
    assert digest.digest() == CHECK_VALUES[algorithm]


def test_an_unknown_checksum_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    target = tmp_path / "kept.bin"
    target.write_bytes(b"old")
    with pytest.raises(UsageError, match="checksum must be one of"):
        atomic_save(b"new", target, "bytes", checksum="crc16")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["kept.bin"]


def test_a_checksum_whose_library_is_missing_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(_checksums._CRCS, "crc64nvme", None)
    target = tmp_path / "kept.bin"
    target.write_bytes(b"old")
    with pytest.raises(UsageError, match="awscrt"):
        atomic_save(b"new", target, "bytes", checksum="crc64nvme")
    assert target.read_bytes() == b"old"


# --- local files -------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", CHECKSUMS)
def test_a_local_write_reports_the_checksum_it_was_asked_for(tmp_path: Path, algorithm: str) -> None:
    data = os.urandom(3 * MiB + 17)
    with atomic_open(tmp_path / "f.bin", "wb", checksum=algorithm) as file:
        file.write(data[:1000])
        file.write(memoryview(data)[1000:])
    assert file.result is not None
    assert file.result.checksum == checksum_of(algorithm, data)


def test_a_local_write_hashes_nothing_by_default(tmp_path: Path) -> None:
    assert atomic_save(b"x", tmp_path / "f", "bytes").checksum is None
    assert atomic_save(b"x", tmp_path / "f", "bytes", checksum=None).checksum is None


# --- S3 ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3(moto_endpoint: str) -> Any:
    import fsspec

    fs = fsspec.filesystem("s3", **s3_options(moto_endpoint))
    if not fs.exists(BUCKET):
        fs.call_s3("create_bucket", Bucket=BUCKET)
    return fs


def _options(endpoint: str) -> dict[str, Any]:
    return {**s3_options(endpoint), "part_size": 5 * MiB, "parallel_parts": 2, "skip_instance_cache": True}


def _recorded(s3: Any, key: str) -> dict[str, str]:
    head = s3.call_s3("head_object", Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
    return {name: str(value) for name, value in head.items() if name.startswith("Checksum")}


@pytest.mark.parametrize("size", [1000, 11 * MiB + 5], ids=["put", "multipart"])
@pytest.mark.parametrize("algorithm", ["auto", *CHECKSUMS, None])
def test_s3_sends_and_reports_the_chosen_checksum(
    s3: Any, moto_endpoint: str, algorithm: str | None, size: int
) -> None:
    key = f"one/{algorithm}-{size}.bin"
    data = os.urandom(size)
    result = atomic_save(
        data,
        f"s3://{BUCKET}/{key}",
        "bytes",
        storage_options=_options(moto_endpoint),
        **({} if algorithm == "auto" else {"checksum": algorithm}),
    )
    assert s3.cat_file(f"{BUCKET}/{key}") == data
    chosen = "crc64nvme" if algorithm == "auto" else algorithm
    assert result.checksum == (None if chosen is None else checksum_of(chosen, data))
    recorded = _recorded(s3, key)
    if chosen in ("crc64nvme", "crc32c", "crc32"):
        # The whole object's CRC, as S3 keeps it: sent with the PUT, or combined from the parts
        # and compared with ours at completion (FULL_OBJECT).
        field = "Checksum" + chosen.upper()
        assert recorded[field] == base64.b64encode(new_digest_bytes(chosen, data)).decode()
        if size > 1000:
            assert recorded.get("ChecksumType") == "FULL_OBJECT"
    elif chosen == "sha256":
        value = recorded["ChecksumSHA256"]
        if size == 1000:
            assert value == base64.b64encode(hashlib.sha256(data).digest()).decode()
        else:
            # Composite: the SHA-256 of the parts' SHA-256s (S3 adds "-3", the part count).
            parts = [data[: 5 * MiB], data[5 * MiB : 10 * MiB], data[10 * MiB :]]
            composite = hashlib.sha256(b"".join(hashlib.sha256(part).digest() for part in parts)).digest()
            assert value.partition("-")[0] == base64.b64encode(composite).decode()
    elif chosen == "md5":
        # Content-MD5 is checked by S3 and not kept; the ETag of a single PUT is the MD5.
        if size == 1000:
            assert s3.info(f"{BUCKET}/{key}", refresh=True)["ETag"].strip('"') == hashlib.md5(data).hexdigest()
        assert "ChecksumCRC64NVME" not in recorded
        assert "ChecksumSHA256" not in recorded


def new_digest_bytes(algorithm: str, data: bytes) -> bytes:
    digest = new_digest(algorithm)
    digest.update(data)
    return digest.digest()


class _RefusingProxy(BaseHTTPRequestHandler):
    """Forwards to moto, but answers any request that carries CRC64NVME with 400
    InvalidArgument, as an S3-compatible server that predates the algorithm does."""

    upstream = ""
    refused: list[str] = []  # noqa: RUF012 - set per server in the fixture
    # HTTP/1.1 answers "Expect: 100-continue", which botocore sends before a body.
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if any("crc64nvme" in f"{name}:{value}".lower() for name, value in self.headers.items()):
            self.refused.append(f"{self.command} {self.path}")
            reply = (
                b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>InvalidArgument</Code>"
                b"<Message>x-amz-checksum-crc64nvme is not supported</Message></Error>"
            )
            self.send_response(400)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)
            return
        target = urlsplit(self.upstream)
        connection = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
        headers = {name: value for name, value in self.headers.items() if name.lower() != "host"}
        headers["Host"] = target.netloc
        connection.request(self.command, self.path, body=body, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        self.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        connection.close()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward


@pytest.fixture
def refusing_endpoint(moto_endpoint: str, s3: Any) -> Iterator[tuple[str, list[str]]]:
    handler = type("Handler", (_RefusingProxy,), {"upstream": moto_endpoint, "refused": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.refused
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("size", [1000, 11 * MiB + 5], ids=["put", "multipart"])
def test_a_server_that_refuses_the_checksum_gets_the_upload_without_it_and_says_so(
    s3: Any, refusing_endpoint: tuple[str, list[str]], size: int
) -> None:
    endpoint, refused = refusing_endpoint
    key = f"refused/{size}.bin"
    data = os.urandom(size)
    with pytest.warns(RuntimeWarning, match="refused the crc64nvme checksum"):
        result = atomic_save(data, f"s3://{BUCKET}/{key}", "bytes", storage_options=_options(endpoint))
    assert refused, "the proxy saw no CRC64NVME: the fallback was not exercised"
    assert s3.cat_file(f"{BUCKET}/{key}") == data
    assert result.checksum is None  # nothing was checked by the store: none is reported
    assert "ChecksumCRC64NVME" not in _recorded(s3, key)
    assert s3.call_s3("list_multipart_uploads", Bucket=BUCKET, Prefix="refused/").get("Uploads", []) == []


def test_a_refused_checksum_is_retried_once_not_for_every_part(
    s3: Any, refusing_endpoint: tuple[str, list[str]]
) -> None:
    endpoint, refused = refusing_endpoint
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        atomic_save(
            os.urandom(16 * MiB), f"s3://{BUCKET}/refused/once.bin", "bytes", storage_options=_options(endpoint)
        )
    assert len(refused) == 1
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1


def test_a_directory_on_s3_records_each_uploads_checksum_and_verifies_it(s3: Any, moto_endpoint: str) -> None:
    target = f"s3://{BUCKET}/dirs/ckpt"
    options = _options(moto_endpoint)
    files = {"a.bin": os.urandom(6 * MiB), "b.json": b'{"step": 1}'}
    with atomic_directory(target, storage_options=options) as stage:
        for name, data in files.items():
            with stage.open(name) as file:
                file.write(data)
    verification = verify_directory(target, storage_options=options)
    assert verification.ok, verification.problems
    assert verification.manifest is not None
    listed = {entry.name: entry.checksum for entry in verification.manifest.files}
    assert listed == {name: checksum_of("crc64nvme", data) for name, data in files.items()}
    # A changed byte is caught with the manifest's own algorithm.
    damaged = bytearray(files["a.bin"])
    damaged[-1] ^= 1
    s3.pipe_file(f"{BUCKET}/dirs/ckpt/{verification.manifest.generation}/a.bin", bytes(damaged))
    problems = verify_directory(target, storage_options=options).problems
    assert [(p.kind, p.name) for p in problems] == [("checksum", "a.bin")]
    assert "crc64nvme" in problems[0].detail


def test_crc32_needs_no_extra_library() -> None:
    assert _checksums.available("crc32")
    digest = new_digest("crc32")
    digest.update(b"abc")
    assert digest.digest() == zlib.crc32(b"abc").to_bytes(4, "big")
