"""Azurite, Microsoft's Azure Storage emulator (npm ``azurite``), on loopback for a test session.

Found as ``$AZURITE_BLOB`` (the path of ``azurite-blob``), else in ``tests/.azurite`` (where
``npm install --prefix tests/.azurite azurite@3`` puts it), ``node_modules`` at the repository
root, or on PATH.  Without it (or adlfs and azure-storage-blob) the Azure tests skip, unless
``ATOMICWRITE_REQUIRE_AZURITE=1`` (CI) makes that a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

ROOT = Path(__file__).resolve().parent.parent
INSTALL_HINT = "npm install --prefix tests/.azurite azurite@3 (Node 18+)"
#: The emulator's well-known development account and key (public, documented by Microsoft).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("ATOMICWRITE_REQUIRE_AZURITE") == "1":
        pytest.fail(f"{reason}; ATOMICWRITE_REQUIRE_AZURITE=1 requires it")
    pytest.skip(reason)


def find_azurite() -> str | None:
    """The ``azurite-blob`` executable, or None."""
    candidates = [
        os.environ.get("AZURITE_BLOB"),
        str(ROOT / "tests" / ".azurite" / "node_modules" / ".bin" / "azurite-blob"),
        str(ROOT / "node_modules" / ".bin" / "azurite-blob"),
        shutil.which("azurite-blob"),
    ]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def connection_string(endpoint: str) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint={endpoint}/{ACCOUNT};"
    )


def azure_options(endpoint: str) -> dict[str, Any]:
    """storage_options for adlfs (and atomicwrite) against the emulator."""
    return {"connection_string": connection_string(endpoint)}


@pytest.fixture(scope="session")
def azurite_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Azurite's blob service on 127.0.0.1 and a free port, in memory; stopped at the end."""
    for module in ("adlfs", "azure.storage.blob"):
        try:
            __import__(module)
        except ImportError:
            _unavailable(f"{module} is not installed (pip install -e .[azure])")
    executable = find_azurite()
    if executable is None:
        _unavailable(f"Azurite is not installed: {INSTALL_HINT}, or set AZURITE_BLOB")
    workdir = tmp_path_factory.mktemp("azurite")
    log_path = workdir / "azurite.log"
    port = _free_port()
    command = [
        executable,
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
        "--skipApiVersionCheck",  # the SDK may be newer than the emulator
        "--disableTelemetry",
        "--inMemoryPersistence",
        "--silent",
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not _answers(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                output = log_path.read_text(errors="replace")[-2000:]
                _unavailable(f"Azurite did not start ({executable}, exit status {proc.poll()}): {output}")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
