"""A large object streamed to S3 (moto's server on loopback) in 1 MiB writes, each in a fresh
process: throughput and peak extra RSS, ours against s3fs's own writers at their defaults.

The server runs in its own process.  Each client first makes its client (ours writes a 1-byte
object), so only the upload is measured.  ``put_file`` uploads a local file of the same size
(in the page cache).  Ours uses its defaults: 8 MiB parts, 4 in flight.
"""

from __future__ import annotations

import contextlib
import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from atomicwrite._checksums import first_available
from atomicwrite._stores.s3 import S3Backend

from ._harness import ROOT, Context, MiB, Row, Target, alternate_many, median, probe

#: What our S3 writes hash, per byte, at their default (``checksum="auto"``).
OURS_CHECKSUMS = (
    f"ours computes a {first_available(S3Backend.default_checksums).upper()} of the object, which S3 checks"
    " at completion, and botocore one per part, which S3 checks on arrival"
)

NAME = "s3"
TITLE = "S3 upload"
BUCKET = "atomicwrite-bench"
# atomicwrite's upload defaults (see atomic_open's storage_options): 8 MiB parts, 4 in flight.
PART_SIZE = 8 * MiB
PARALLEL_PARTS = 4

SERVER = r"""
import sys
from moto.server import ThreadedMotoServer

server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
host, port = server.get_host_and_port()
print(f"http://{host}:{port}", flush=True)
sys.stdin.read()
server.stop()
"""

PROBE = rf"""
import os, sys

contender, endpoint, size, source = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
options = {{
    "key": "bench-key",
    "secret": "bench-secret",
    "client_kwargs": {{"endpoint_url": endpoint, "region_name": "us-east-1"}},
}}
import s3fs

fs = s3fs.S3FileSystem(**options)
if not fs.exists("{BUCKET}"):
    fs.call_s3("create_bucket", Bucket="{BUCKET}")
chunk = os.urandom(1 << 20)
path = "{BUCKET}/" + contender
if contender == "ours":
    from atomicwrite import atomic_open

    # Warm, as the baselines' fs is: a client made and its service model loaded once per process.
    with atomic_open("s3://{BUCKET}/warm-up", "wb", storage_options=options) as file:
        file.write(b"x")

    def upload():
        with atomic_open("s3://" + path, "wb", storage_options=options) as file:
            for _ in range(size >> 20):
                file.write(chunk)
elif contender == "open":
    def upload():
        with fs.open(path, "wb") as file:
            for _ in range(size >> 20):
                file.write(chunk)
else:
    upload = lambda: fs.put_file(source, path)
measure(upload)
assert fs.info(path)["size"] == size, fs.info(path)
fs.rm(path)
"""


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # its request log
        text=True,
        cwd=ROOT,
    )
    try:
        assert server.stdout is not None
        yield server.stdout.readline().strip()
    finally:
        assert server.stdin is not None
        server.stdin.close()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if server.stdout is not None:
            server.stdout.close()


def run(context: Context) -> list[Row]:
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("s3fs") is None:
        row = Row("S3 upload", "atomic_open s3://", "s3fs", "MiB/s", [1.0], [1.0], True)
        row.targets.append(Target(">= s3fs throughput", "moto[server] or s3fs not installed", None))
        return [row]
    size = context.s3_size
    source = context.directory / "s3-source.bin"
    _write_source(source, size)
    with moto_server() as endpoint:

        def contender(name: str) -> dict[str, float]:
            return probe(PROBE, name, endpoint, str(size), str(source))

        samples = alternate_many(
            2 if context.quick else 3, {name: (lambda name=name: contender(name)) for name in ("ours", "open", "put")}
        )
    source.unlink()
    throughput = {name: [size / MiB / sample["seconds"] for sample in runs] for name, runs in samples.items()}
    extra = {name: median([sample["extra_rss"] / MiB for sample in runs]) for name, runs in samples.items()}
    cpu = {name: median([sample["cpu"] for sample in runs]) for name, runs in samples.items()}
    bound = PART_SIZE * PARALLEL_PARTS / MiB + 32
    rows = []
    for key, label in (("open", 's3fs open("wb") defaults'), ("put", "s3fs put_file defaults")):
        row = Row(
            f"{size // MiB} MiB to S3 (moto) vs {key}",
            "atomic_open s3://",
            label,
            "MiB/s",
            throughput["ours"],
            throughput[key],
            True,
        )
        met = row.ratio >= 1
        row.targets.append(
            Target(
                ">= its throughput",
                f"{row.ratio:.3f}x",
                met,
                ""
                if met
                else f"CPU-bound on a machine shared with the server: ours used {cpu['ours']:.1f} CPU-s"
                f" ({OURS_CHECKSUMS}), {key} {cpu[key]:.1f} CPU-s",
            )
        )
        row.targets.append(
            Target(
                f"peak extra RSS <= {bound:.0f} MiB",
                f"ours +{extra['ours']:.0f} MiB, {key} +{extra[key]:.0f} MiB",
                extra["ours"] <= bound,
                ""
                if extra["ours"] <= bound
                else f"more than the {PARALLEL_PARTS} parts in flight and the one filling are held: a copy of"
                " a part somewhere in the HTTP stack",
            )
        )
        rows.append(row)
    return rows


def _write_source(path: Path, size: int) -> None:
    chunk = bytes(range(256)) * (MiB // 256)
    with open(path, "wb") as file:
        for _ in range(size // MiB):
            file.write(chunk)
