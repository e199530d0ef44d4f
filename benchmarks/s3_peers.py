"""Objects of 4 KiB, 64 MiB and 1 GiB (4 KiB, 64 MiB with --quick) uploaded to S3 (moto's server on
loopback), each contender in a fresh process: throughput and peak extra RSS, ours against obstore
and boto3; then what each checksum costs per GiB.

The payload is a local file (in the page cache).  Ours: ``atomic_open("s3://...", "wb")`` at its
defaults (8 MiB parts, 4 in flight, a single PUT below one part), fed 1 MiB reads of the file.
obstore: ``obstore.put`` of the file, as one PUT (``use_multipart=False``) and as a multipart
upload with ours' part size and concurrency.  boto3: ``upload_fileobj`` (s3transfer) at its defaults
(8 MiB parts, 10 threads).  Each makes its client and uploads one byte before the timer starts.
A 4 KiB sample is 50 uploads in a row.  The checksum rows time each algorithm over 256 MiB in this
process, against SHA-256 (hashlib), the checksum S3 writes defaulted to before CRC64NVME.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

from ._harness import Context, GiB, MiB, Row, Target, alternate_many, median, probe, timed
from .s3_upload import BUCKET, OURS_CHECKSUMS, moto_server

NAME = "s3peers"
TITLE = "S3 upload against obstore and boto3"
SMALL_REPEATS = 50
PART_SIZE = 8 * MiB  # ours' default part size: smaller objects go in one PUT

PROBE = rf"""
import os, sys

contender, endpoint, size, source, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
key, secret, region = "bench-key", "bench-secret", "us-east-1"
name = contender.replace(" ", "-")
import boto3
from botocore.config import Config

client = boto3.client(
    "s3", endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret, region_name=region,
)
try:
    client.create_bucket(Bucket="{BUCKET}")
except client.exceptions.BucketAlreadyOwnedByYou:
    pass

if contender == "ours":
    from atomicwrite import atomic_open

    options = {{"key": key, "secret": secret, "client_kwargs": {{"endpoint_url": endpoint, "region_name": region}}}}

    def once(url):
        with atomic_open(url, "wb", storage_options=options) as file, open(source, "rb") as payload:
            while chunk := payload.read(1 << 20):
                file.write(chunk)

    with atomic_open("s3://{BUCKET}/warm-" + name, "wb", storage_options=options) as file:
        file.write(b"x")
    upload = lambda: once("s3://{BUCKET}/" + name)
elif contender.startswith("obstore"):
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        "{BUCKET}", endpoint=endpoint, access_key_id=key, secret_access_key=secret, region=region,
        client_options={{"allow_http": True}},
    )
    multipart = contender == "obstore multipart"
    obstore.put(store, "warm-" + name, b"x")
    if multipart:
        upload = lambda: obstore.put(
            store, name, open(source, "rb"), use_multipart=True, chunk_size=8 << 20, max_concurrency=4
        )
    else:
        upload = lambda: obstore.put(store, name, open(source, "rb"), use_multipart=False)
else:
    client.put_object(Bucket="{BUCKET}", Key="warm-" + name, Body=b"x")

    def upload():
        with open(source, "rb") as payload:
            client.upload_fileobj(payload, "{BUCKET}", name)

measure(lambda: [upload() for _ in range(repeats)])
assert client.head_object(Bucket="{BUCKET}", Key=name)["ContentLength"] == size
client.delete_object(Bucket="{BUCKET}", Key=name)
"""

CONTENDERS = ("ours", "obstore put", "obstore multipart", "boto3")
LABELS = {
    "ours": "atomic_open s3://",
    "obstore put": "obstore put (one PUT)",
    "obstore multipart": "obstore put multipart (8 MiB x 4)",
    "boto3": "boto3 upload_fileobj (s3transfer)",
}


def sizes(quick: bool) -> tuple[int, ...]:
    return (4 << 10, 64 * MiB) if quick else (4 << 10, 64 * MiB, GiB)


def _size_label(size: int) -> str:
    return f"{size // GiB} GiB" if size >= GiB else f"{size // MiB} MiB" if size >= MiB else f"{size >> 10} KiB"


def run(context: Context) -> list[Row]:
    missing = [name for name in ("moto", "obstore", "boto3") if importlib.util.find_spec(name) is None]
    if missing:
        row = Row("S3 upload vs obstore, boto3", "atomic_open s3://", "boto3", "MiB/s", [1.0], [1.0], True)
        row.targets.append(Target(">= peers' throughput", f"{', '.join(missing)} not installed", None))
        return [row, *checksums(context)]
    directory = context.directory / "s3peers"
    directory.mkdir()
    rows = []
    with moto_server() as endpoint:
        for size in sizes(context.quick):
            source = directory / "payload.bin"
            source.write_bytes(os.urandom(size))
            repeats = SMALL_REPEATS if size < MiB else 1

            def contender(
                name: str, size: int = size, repeats: int = repeats, source: Path = source
            ) -> dict[str, float]:
                return probe(PROBE, name, endpoint, str(size), str(source), str(repeats))

            rounds = 1 if context.quick or size >= GiB else 3
            samples = alternate_many(
                rounds, {name: (lambda name=name: contender(name)) for name in CONTENDERS}, warmup=False
            )
            source.unlink()
            rows += _rows(size, repeats, samples)
    return rows + checksums(context)


def _rows(size: int, repeats: int, samples: dict[str, list[dict[str, float]]]) -> list[Row]:
    throughput = {name: [size * repeats / MiB / sample["seconds"] for sample in runs] for name, runs in samples.items()}
    memory = {name: [sample["extra_rss"] / MiB for sample in runs] for name, runs in samples.items()}
    cpu = {name: median([sample["cpu"] / repeats for sample in runs]) for name, runs in samples.items()}
    label = _size_label(size) + (f" x{repeats}" if repeats > 1 else "")
    peers = [name for name in CONTENDERS if name not in ("ours", "boto3")]
    speed = Row(
        f"{label} to S3 (moto): throughput",
        LABELS["ours"],
        LABELS["boto3"],
        "MiB/s",
        throughput["ours"],
        throughput["boto3"],
        True,
        chart="s3-throughput",
        x=float(size),
        others={LABELS[name]: throughput[name] for name in peers},
    )
    for name in ("boto3", *peers):
        ratio = median(throughput["ours"]) / median(throughput[name])
        met = ratio >= 1
        why_not = (
            f"ours used {cpu['ours']:.2f} CPU-s per upload, {name} {cpu[name]:.2f} ({OURS_CHECKSUMS}), on"
            f" {os.cpu_count()} cores shared with the server"
        )
        if name == "boto3" and size > PART_SIZE:
            why_not += (
                "; s3transfer sends up to 10 parts at once through botocore's threads, ours 4 through s3fs"
                " (aiobotocore: one event loop sends every part)"
            )
        elif size <= PART_SIZE:
            why_not += "; one PUT each: the difference is each client's own work per request"
        speed.targets.append(Target(f">= {LABELS[name]} throughput", f"{ratio:.3f}x", met, "" if met else why_not))
    rss = Row(
        f"{label} to S3 (moto): peak extra RSS",
        LABELS["ours"],
        LABELS["boto3"],
        "MiB",
        memory["ours"],
        memory["boto3"],
        False,
        chart="s3-memory",
        x=float(size),
        others={LABELS[name]: memory[name] for name in peers},
    )
    # Ours holds the part being filled and the parts in flight: 5 x 8 MiB, and some slack.
    bound = 5 * 8 + 32
    ours_rss = median(memory["ours"])
    rss.targets.append(
        Target(
            f"<= {bound} MiB",
            f"+{ours_rss:.0f} MiB (" + ", ".join(f"{name} +{median(memory[name]):.0f}" for name in peers) + ")",
            ours_rss <= bound,
            "" if ours_rss <= bound else "more than the parts in flight are held",
        )
    )
    return [speed, rss]


def _hashers() -> dict[str, Callable[[bytes], object]]:
    """ "ALGORITHM (library)" -> a function over a buffer, for the libraries installed."""
    found: dict[str, Callable[[bytes], object]] = {"SHA-256 (hashlib)": lambda data: hashlib.sha256(data).digest()}
    if importlib.util.find_spec("awscrt") is not None:
        from awscrt import checksums as crt

        found |= {"CRC64NVME (awscrt)": crt.crc64nvme, "CRC32C (awscrt)": crt.crc32c, "CRC32 (awscrt)": crt.crc32}
    if importlib.util.find_spec("google_crc32c") is not None:
        import google_crc32c

        found[f"CRC32C (google-crc32c, {google_crc32c.implementation})"] = google_crc32c.value
    return found


def checksums(context: Context) -> list[Row]:
    """Seconds per GiB of each checksum, each against SHA-256 (alternated)."""
    data = os.urandom((16 if context.quick else 256) * MiB)
    scale = GiB / len(data)
    hashers = _hashers()

    def cost(function: Callable[[bytes], object]) -> Callable[[], float]:
        return lambda: timed(lambda: function(data)) * scale

    contenders = {name: cost(function) for name, function in hashers.items()}
    samples = alternate_many(context.rounds, contenders)
    sha256 = samples.pop("SHA-256 (hashlib)")
    rows = [
        Row(f"checksum per GiB: {name}", "SHA-256 (hashlib)", name, "s/GiB", sha256, values, False)
        for name, values in samples.items()
    ]
    if not rows:
        rows.append(
            Row("checksum per GiB: SHA-256", "SHA-256 (hashlib)", "SHA-256 (hashlib)", "s/GiB", sha256, sha256, False)
        )
    rows[0].notes.append(
        f"checksums: per byte uploaded to S3, {OURS_CHECKSUMS}; per GiB in one thread, SHA-256"
        f" {median(sha256):.3f} s, " + ", ".join(f"{name} {median(values):.3f} s" for name, values in samples.items())
    )
    return rows
