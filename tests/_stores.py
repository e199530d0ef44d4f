"""Object-store servers on loopback, started by session fixtures: moto's S3 server, ..."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's S3 server, in this process, on 127.0.0.1 and a free port."""
    server_module = pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install -e .[dev])")
    pytest.importorskip("s3fs", reason="s3fs is not installed (pip install -e .[s3])")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def s3_options(endpoint: str) -> dict[str, Any]:
    """storage_options for s3fs against the test server (dummy credentials)."""
    return {
        "key": "testing-key",
        "secret": "testing-secret-do-not-log",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
        "skip_instance_cache": False,
    }
