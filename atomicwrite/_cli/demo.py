"""The crash demo behind ``atomicwrite demo``: SIGKILL a writer mid-save, then look at the file.

A writer subprocess saves a multi-MB payload over and over; the parent kills it at a random
moment, N times, once for a writer that uses plain ``open(path, "wb")`` and once for one that
uses :func:`atomicwrite.atomic_open`.  Every payload carries a header with its length and its
SHA-256, so after each kill the target is classified as intact (the old or the new payload),
torn (truncated or checksum mismatch), empty or missing.  Leftover temp files are counted, then
:func:`atomicwrite.sweep` runs and what remains is counted again.

Each round waits until the writer has completed one save, so an old version is always on disk
when the kill comes, then kills it after a random fraction of that (calibration) save's
duration: the kill lands uniformly inside the next save.  Both methods get the same fractions.

The same loop then runs against an in-process S3 server (moto, on loopback): the naive fsspec
way, ``with fs.open(url, "wb")`` (s3fs), against ``atomic_open(url, "wb")`` with 5 MiB parts,
so that a payload of more than 5 MiB takes the multipart path.  There the leftovers are the
pending multipart uploads plus atomicwrite's marker objects.  Without moto or s3fs that part is
skipped, with one line that says how to install them.

This module is also the writer: ``python -m atomicwrite._cli.demo PATH METHOD PAYLOAD...`` (see
:func:`_writer_main`).  It imports no click; only :mod:`atomicwrite._cli.main` does.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from .children import child_env

if TYPE_CHECKING:
    from .._result import Durability

__all__ = ["DemoError", "MethodReport", "classify", "classify_data", "make_payload", "run_demo"]

MAGIC = b"AWDEMO01"
# magic, body length, SHA-256 of the body
HEADER = struct.Struct(">8sQ32s")
CHUNK = 1 << 20
TARGET = "state.bin"
METHODS = ("plain", "atomic")
S3_METHODS = ("s3-fsspec", "s3-atomic")
LABELS = {
    "plain": 'open("wb")',
    "atomic": 'atomic_open("wb")',
    "s3-fsspec": 's3 fs.open("wb")',
    "s3-atomic": 's3 atomic_open("wb")',
}
MiB = 1 << 20
# S3's smallest part: any payload above it takes the multipart path.  s3fs's block_size for the
# fs.open() writer is the same, so both upload the same parts (s3fs's default, 50 MiB, behaves
# the same way for objects above 50 MiB).
S3_PART_SIZE = 5 * MiB
S3_KEY = "demo/checkpoint.bin"
S3_BUCKETS = {"s3-fsspec": "atomicwrite-demo-fs-open", "s3-atomic": "atomicwrite-demo-atomic-open"}
# Each S3 round starts a writer that imports s3fs (about a second): fewer kills keep the demo short.
DEFAULT_S3_KILLS = 6
S3_INSTALL = "pip install 'atomicwrite[demo]'"
SAVED = b"saved"
# A writer prints READY once it has imported and connected, then waits for GO on stdin.
READY = b"ready"
GO = b"go\n"
# How long a writer may take to get ready and make its first save before the demo gives up on it.
FIRST_SAVE_TIMEOUT = 120.0
OUTCOMES = ("intact", "torn", "empty", "missing")
# Writer argv for S3: --s3 URL METHOD OPTIONS_JSON PAYLOAD...
S3_FLAG = "--s3"


class DemoError(Exception):
    """The demo itself could not run (a writer failed to start or to save)."""


def make_payload(rng: random.Random, size: int) -> bytes:
    """``size`` bytes (at least a header): a header with the body's length and SHA-256, then
    pseudo-random bytes."""
    body = rng.randbytes(max(size - HEADER.size, 0))
    return HEADER.pack(MAGIC, len(body), hashlib.sha256(body).digest()) + body


def classify(path: str) -> str:
    """``"intact"`` if ``path`` holds one complete payload, else ``"torn"``, ``"empty"`` or
    ``"missing"``."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        return "missing"
    return classify_data(data)


def classify_data(data: bytes | None) -> str:
    """:func:`classify` for content already read (None: there was no file or object)."""
    if data is None:
        return "missing"
    if not data:
        return "empty"
    if len(data) < HEADER.size:
        return "torn"
    magic, length, digest = HEADER.unpack_from(data)
    body = memoryview(data)[HEADER.size :]
    if magic != MAGIC or len(body) != length or hashlib.sha256(body).digest() != digest:
        return "torn"
    return "intact"


@dataclass
class MethodReport:
    """What the kills did to one method's target."""

    method: str
    kills: int = 0
    intact: int = 0
    torn: int = 0
    empty: int = 0
    missing: int = 0
    # Of the intact ones: how many held the payload of the save that the kill interrupted (it
    # had published it, but not yet reported it); the others held the last reported save's.
    intact_new: int = 0
    leftovers_before_sweep: int = 0
    leftovers_after_sweep: int = 0
    # Of the leftovers (S3): pending multipart uploads; the others are marker objects.
    uploads_before_sweep: int = 0
    uploads_after_sweep: int = 0
    save_seconds: float = 0.0

    @property
    def label(self) -> str:
        return LABELS[self.method]

    @property
    def damaged(self) -> int:
        return self.torn + self.empty + self.missing

    def count(self, outcome: str, *, new: bool = False) -> None:
        self.kills += 1
        setattr(self, outcome, getattr(self, outcome) + 1)
        if outcome == "intact" and new:
            self.intact_new += 1


# --------------------------------------------------------------------------------------------
# The writer subprocess


def _write_chunks(file: Any, payload: memoryview) -> None:
    for start in range(0, len(payload), CHUNK):
        file.write(payload[start : start + CHUNK])


def _save_plain(path: str, payload: memoryview, durability: str) -> None:
    # What most code does: truncate the file in place, then write.  It flushes like atomic_open
    # does (unless durability is "none"), so both methods do the same I/O.
    with open(path, "wb") as file:
        _write_chunks(file, payload)
        if durability != "none":
            file.flush()
            os.fsync(file.fileno())


def _save_atomic(path: str, payload: memoryview, durability: str) -> None:
    from atomicwrite import atomic_open

    with atomic_open(path, "wb", durability=cast("Durability", durability), accept_weaker_durability=True) as file:
        _write_chunks(file, payload)


def _use_named_temps() -> None:
    """Stage in named temp files even where O_TMPFILE exists, so that a kill leaves leftovers.

    Windows temps are always named; there is nothing to change."""
    if sys.platform != "win32":
        from atomicwrite import _strategy
        from atomicwrite._local.posix import PosixStrategy

        strategy = PosixStrategy(use_tmpfile=False)
        for protocol in ("", "file", "local"):
            _strategy._INSTANCES[protocol] = strategy


def _s3_saver(url: str, method: str, options: dict[str, Any]) -> Callable[[memoryview], None]:
    """The save function of an S3 writer; it also makes the first request, so that connecting
    and loading botocore's models do not count in the calibration save."""
    import fsspec

    from atomicwrite import atomic_open

    fs_options = {key: value for key, value in options.items() if key not in ("part_size", "parallel_parts")}
    fs = fsspec.filesystem("s3", **fs_options)
    fs.exists(url)
    part_size = int(options.get("part_size", S3_PART_SIZE))

    def save_fsspec(payload: memoryview) -> None:
        # The naive way.  s3fs uploads a block whenever block_size bytes are buffered (a
        # multipart upload) and publishes at close(); closing on an exception, too, would
        # publish a partial object, but a SIGKILL never reaches close().
        with fs.open(url, "wb", block_size=part_size) as file:
            _write_chunks(file, payload)

    def save_atomic(payload: memoryview) -> None:
        with atomic_open(url, "wb", storage_options=options) as file:
            _write_chunks(file, payload)

    return save_fsspec if method == "s3-fsspec" else save_atomic


def _save_forever(save: Callable[[memoryview], None], payload_files: Sequence[str]) -> int:
    """Print ``ready``, wait for ``go`` on stdin, then save the payloads in turn, forever,
    printing ``saved SECONDS`` after each save."""
    payloads = []
    for name in payload_files:
        with open(name, "rb") as file:
            payloads.append(memoryview(file.read()))
    out = sys.stdout.buffer
    out.write(READY + b"\n")
    out.flush()
    if sys.stdin.buffer.readline() != GO:
        return 0  # the parent no longer needs us
    saves = 0
    while True:
        started = time.perf_counter()
        save(payloads[saves % len(payloads)])
        saves += 1
        # The parent kills us while the next save runs; a broken pipe (parent gone) ends us.
        out.write(b"%s %.6f\n" % (SAVED, time.perf_counter() - started))
        out.flush()


def _writer_main(argv: Sequence[str]) -> int:
    """``PATH METHOD DURABILITY NAMED PAYLOAD...`` (local) or ``--s3 URL METHOD OPTIONS_JSON
    PAYLOAD...``: save the payloads in turn, forever, printing ``saved SECONDS`` after each save."""
    if argv[:1] == [S3_FLAG]:
        if len(argv) < 5 or argv[2] not in S3_METHODS:
            print(
                f"usage: python -m atomicwrite._cli.demo {S3_FLAG} URL {{{','.join(S3_METHODS)}}}"
                " OPTIONS_JSON PAYLOAD...",
                file=sys.stderr,
            )
            return 2
        url, method, options_json, *payload_files = argv[1:]
        return _save_forever(_s3_saver(url, method, json.loads(options_json)), payload_files)
    path, method, durability, named, *payload_files = argv
    if method not in METHODS or not payload_files:
        print(
            f"usage: python -m atomicwrite._cli.demo PATH {{{','.join(METHODS)}}} DURABILITY 0|1 PAYLOAD...",
            file=sys.stderr,
        )
        return 2
    if named == "1":
        _use_named_temps()
    save = _save_plain if method == "plain" else _save_atomic
    return _save_forever(lambda payload: save(path, payload, durability), payload_files)


# --------------------------------------------------------------------------------------------
# The parent


def _start_writer(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def _stop_writer(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def _failed_writer(proc: subprocess.Popen[bytes], what: str) -> DemoError:
    assert proc.stderr is not None
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    error = proc.stderr.read().decode(errors="replace").strip().splitlines()
    reason = error[-1] if error else what
    return DemoError(f"the demo writer failed (exit status {proc.returncode}): {reason}")


def _kill_round(proc: subprocess.Popen[bytes], fraction: float, when_ready: Callable[[], object]) -> tuple[float, int]:
    """Let a started writer save, wait for its first complete save, kill it ``fraction`` of a
    save later; return that first save's duration and how many saves the writer reported in all.

    ``when_ready`` runs once the writer is ready, before its first save."""
    assert proc.stdin is not None
    assert proc.stdout is not None
    assert proc.stderr is not None
    watchdog = threading.Timer(FIRST_SAVE_TIMEOUT, proc.kill)
    watchdog.daemon = True
    try:
        watchdog.start()
        if proc.stdout.readline().strip() != READY:
            raise _failed_writer(proc, f"not ready within {FIRST_SAVE_TIMEOUT:.0f} s")
        when_ready()
        proc.stdin.write(GO)
        proc.stdin.flush()
        fields = proc.stdout.readline().split()
        watchdog.cancel()
        if len(fields) != 2 or fields[0] != SAVED:
            raise _failed_writer(proc, f"no save within {FIRST_SAVE_TIMEOUT:.0f} s")
        duration = float(fields[1])
        time.sleep(fraction * duration)
        proc.kill()  # SIGKILL on POSIX: no handler, no flush, no cleanup
        proc.wait()
        if sys.platform != "win32" and proc.returncode != -9:
            error = proc.stderr.read().decode(errors="replace").strip().splitlines()
            raise DemoError(
                f"the demo writer ended by itself (exit status {proc.returncode}) before it was killed"
                + (f": {error[-1]}" if error else "")
            )
        # Saves that completed while we slept (the writer flushed each line before the kill).
        saves = 1 + sum(1 for rest in proc.stdout.read().splitlines() if rest.startswith(SAVED))
        return duration, saves
    finally:
        watchdog.cancel()
        _stop_writer(proc)


def _kill_rounds(
    argv: list[str],
    env: dict[str, str],
    fractions: Sequence[float],
    after_kill: Callable[[int], object],
    *,
    overlap: bool,
) -> list[float]:
    """One :func:`_kill_round` per fraction, ``after_kill(saves)`` after each; return the
    calibration saves' durations.

    With ``overlap``, each next writer starts while the current one saves, so that its imports
    (s3fs takes about a second) do not add to the demo's time."""
    durations = []
    upcoming: subprocess.Popen[bytes] | None = None
    try:
        for index, fraction in enumerate(fractions):
            proc = upcoming if upcoming is not None else _start_writer(argv, env)
            upcoming = None

            def start_next(index: int = index) -> None:
                nonlocal upcoming
                if overlap and index + 1 < len(fractions):
                    upcoming = _start_writer(argv, env)

            duration, saves = _kill_round(proc, fraction, start_next)
            durations.append(duration)
            after_kill(saves)
    finally:
        if upcoming is not None:
            _stop_writer(upcoming)
    return durations


def _count(report: MethodReport, data: bytes | None, digests: Sequence[bytes], saves: int) -> None:
    """Count one kill's outcome: ``data`` is the target's content, None if it is missing."""
    outcome = classify_data(data)
    # The writer saves the payloads in turn: after ``saves`` reported saves, it was writing this one.
    new = outcome == "intact" and data is not None and HEADER.unpack_from(data)[2] == digests[saves % len(digests)]
    report.count(outcome, new=new)


def _median(values: Sequence[float]) -> float:
    return sorted(values)[len(values) // 2]


def _leftovers(directory: str) -> list[str]:
    return sorted(entry for entry in os.listdir(directory) if entry != TARGET)


def _run_method(
    *,
    method: str,
    directory: str,
    payload_files: list[str],
    digests: list[bytes],
    fractions: list[float],
    durability: str,
    named_temps: bool,
) -> MethodReport:
    from atomicwrite import sweep

    os.mkdir(directory)
    target = os.path.join(directory, TARGET)
    argv = [sys.executable, "-m", "atomicwrite._cli.demo", target, method, durability, "1" if named_temps else "0"]
    argv += payload_files
    env = child_env()
    report = MethodReport(method)

    def after_kill(saves: int) -> None:
        try:
            with open(target, "rb") as file:
                data: bytes | None = file.read()
        except FileNotFoundError:
            data = None
        _count(report, data, digests, saves)

    # No overlap: a writer that starts while another saves would slow that save (by more than
    # a local save takes), and local writers start fast anyway.
    durations = _kill_rounds(argv, env, fractions, after_kill, overlap=False)
    report.leftovers_before_sweep = len(_leftovers(directory))
    sweep(directory, older_than=0)
    report.leftovers_after_sweep = len(_leftovers(directory))
    report.save_seconds = _median(durations)
    return report


# --- S3 -------------------------------------------------------------------------------------


def s3_unavailable() -> str | None:
    """Why the S3 part cannot run here (a missing package), or None if it can."""
    for module in ("s3fs", "moto.server"):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            return str(exc)
    return None


class _S3Server:
    """moto's S3 server, in this process, on 127.0.0.1 and a free port."""

    def __init__(self) -> None:
        # Killed writers drop their connections mid-request: werkzeug would log each one.
        logging.getLogger("werkzeug").disabled = True
        server_module: Any = importlib.import_module("moto.server")
        self._server: Any = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        # Dummy credentials: moto accepts any.
        self.options: dict[str, Any] = {
            "key": "atomicwrite-demo",
            "secret": "atomicwrite-demo",
            "client_kwargs": {"endpoint_url": self.endpoint, "region_name": "us-east-1"},
        }
        import fsspec

        self.fs: Any = fsspec.filesystem("s3", **self.options)

    def stop(self) -> None:
        self._server.stop()

    def read(self, url: str) -> bytes | None:
        try:
            data: bytes = self.fs.cat_file(url)
        except FileNotFoundError:
            return None
        return data

    def pending_uploads(self, bucket: str, prefix: str) -> int:
        response = self.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix)
        return len(response.get("Uploads", []))

    def markers(self, directory: str) -> int:
        from .._names import parse_temp_name

        self.fs.invalidate_cache()
        try:
            paths: list[str] = self.fs.find(directory)
        except FileNotFoundError:
            return 0
        return sum(1 for path in paths if parse_temp_name(path.rpartition("/")[2]) is not None)


def _run_s3_method(
    *,
    method: str,
    server: _S3Server,
    payload_files: list[str],
    digests: list[bytes],
    fractions: list[float],
) -> MethodReport:
    from atomicwrite import sweep

    bucket = S3_BUCKETS[method]
    server.fs.call_s3("create_bucket", Bucket=bucket)
    url = f"s3://{bucket}/{S3_KEY}"
    directory, _, _ = url.rpartition("/")
    key_prefix = S3_KEY.rpartition("/")[0] + "/"
    options = {**server.options, "part_size": S3_PART_SIZE}
    argv = [sys.executable, "-m", "atomicwrite._cli.demo", S3_FLAG, url, method, json.dumps(options), *payload_files]
    env = child_env()
    report = MethodReport(method)
    durations = _kill_rounds(
        argv, env, fractions, lambda saves: _count(report, server.read(url), digests, saves), overlap=True
    )

    def leftovers() -> tuple[int, int]:
        uploads = server.pending_uploads(bucket, key_prefix)
        return uploads + server.markers(directory), uploads

    report.leftovers_before_sweep, report.uploads_before_sweep = leftovers()
    sweep(directory, older_than=0, storage_options=options)
    report.leftovers_after_sweep, report.uploads_after_sweep = leftovers()
    report.save_seconds = _median(durations)
    return report


def _run_s3(
    *, rng: random.Random, kills: int, size: int, payload_dir: str, echo: Callable[[str], object]
) -> list[MethodReport]:
    """The S3 rows, or none (with one line saying why) where moto or s3fs is missing."""
    missing = s3_unavailable()
    if missing is not None:
        echo(f"s3: skipped, it needs moto[server] and s3fs ({missing}): {S3_INSTALL}")
        return []
    payload_files, digests = _write_payloads(rng, size, payload_dir, "s3-payload")
    fractions = [rng.random() for _ in range(kills)]
    server = _S3Server()
    try:
        echo(
            f"s3: in-process moto server at {server.endpoint}, s3://<a bucket per method>/{S3_KEY},"
            f" {kills} SIGKILLs per method, {size / MiB:g} MiB payload, {S3_PART_SIZE // MiB} MiB parts"
        )
        return [
            _run_s3_method(
                method=method, server=server, payload_files=payload_files, digests=digests, fractions=fractions
            )
            for method in S3_METHODS
        ]
    finally:
        server.stop()


def _write_payloads(rng: random.Random, size: int, directory: str, stem: str) -> tuple[list[str], list[bytes]]:
    """Two payload files in ``directory``, and the SHA-256 digests their headers carry."""
    files, digests = [], []
    for index in range(2):
        payload = make_payload(rng, size)
        name = os.path.join(directory, f"{stem}{index}.bin")
        with open(name, "wb") as file:
            file.write(payload)
        files.append(name)
        digests.append(HEADER.unpack_from(payload)[2])
    return files, digests


def format_table(reports: Sequence[MethodReport]) -> list[str]:
    """The result table, one string per line."""
    headers = ("method", "kills", "intact", "torn/empty/missing", "leftovers before sweep", "leftovers after sweep")
    rows = [
        (
            r.label,
            str(r.kills),
            str(r.intact),
            f"{r.torn}/{r.empty}/{r.missing}",
            str(r.leftovers_before_sweep),
            str(r.leftovers_after_sweep),
        )
        for r in reports
    ]
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join(
            [first, *(cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))]
        ).rstrip()

    return [line(headers), line(["-" * width for width in widths]), *(line(row) for row in rows)]


def _verdict(plain: MethodReport, atomic: MethodReport, echo: Callable[[str], object]) -> bool:
    """Print what one pair of methods showed; True if atomic_open failed its promise."""
    s3 = atomic.method in S3_METHODS
    thing = "object" if s3 else "file"
    plain_line = f"{plain.label}: {plain.damaged} of {plain.kills} kills left a torn, empty or missing {thing}"
    if plain.damaged == 0:
        plain_line += (
            " (s3fs publishes only at close(), which a SIGKILL never reaches; an exception inside"
            " the with block does reach it, and publishes the partial object)"
            if s3
            else " (no kill happened to land inside a write this time)"
        )
    echo(plain_line)
    if s3 and plain.uploads_after_sweep:
        echo(
            f"{plain.label}: {plain.uploads_after_sweep} multipart upload(s) of killed writers are still pending:"
            " nothing records them, so sweep() cannot tell them from a live writer's, and S3 keeps"
            " (and bills) their parts until they are aborted"
        )
    failed = atomic.damaged > 0 or atomic.leftovers_after_sweep > 0
    if atomic.damaged:
        echo(f"BUG: {atomic.label} left {atomic.damaged} damaged {thing}(s); it must leave none")
    if atomic.leftovers_after_sweep:
        what = (
            f"{atomic.uploads_after_sweep} pending upload(s) and"
            f" {atomic.leftovers_after_sweep - atomic.uploads_after_sweep} marker(s)"
            if s3
            else f"{atomic.leftovers_after_sweep} leftover(s)"
        )
        echo(f"BUG: sweep() left {what} of killed {atomic.label} writers")
    if not failed:
        if s3:
            markers = atomic.leftovers_before_sweep - atomic.uploads_before_sweep
            swept = f"aborted {atomic.uploads_before_sweep} pending upload(s) and removed {markers} marker(s)"
        else:
            swept = f"removed {atomic.leftovers_before_sweep} leftover temp file(s)"
        echo(f"{atomic.label}: every kill left the old or the new {thing} intact; sweep() {swept}")
    return failed


def _run_training(base: str, rng: random.Random, echo: Callable[[str], object]) -> bool:
    """The training part; True if it failed."""
    from .demo_lightning import run_training_demo, training_unavailable

    missing = training_unavailable()
    if missing is not None:
        echo("")
        echo(f"Lightning: skipped, {missing}")
        return False
    return not run_training_demo(base, rng, echo)


def run_demo(
    *,
    kills: int = 20,
    size_mb: float = 8.0,
    seed: int | None = None,
    directory: str | None = None,
    keep: bool = False,
    durability: str = "full",
    named_temps: bool = False,
    s3: bool = True,
    s3_kills: int | None = None,
    s3_size_mb: float = 16.0,
    training: bool = True,
    echo: Callable[[str], object] = print,
) -> int:
    """Run the demo, print the table through ``echo``; 0 if atomic_open never left a damaged
    file or object (and sweep left nothing behind), 1 otherwise.

    ``s3_kills`` defaults to ``kills``, at most :data:`DEFAULT_S3_KILLS`; ``s3=False`` skips
    the S3 part.  ``training`` adds a Lightning training run killed mid-save and resumed (where
    torch and lightning are installed)."""
    if kills < 1:
        raise ValueError("kills must be at least 1")
    if s3_kills is None:
        s3_kills = min(kills, DEFAULT_S3_KILLS)
    if s3_kills < 1:
        raise ValueError("s3_kills must be at least 1")
    if durability not in ("none", "file", "full"):
        raise ValueError(f"durability must be 'none', 'file' or 'full', not {durability!r}")
    if seed is None:
        seed = random.SystemRandom().randrange(1 << 32)
    size = max(int(size_mb * MiB), HEADER.size)
    s3_size = max(int(s3_size_mb * MiB), HEADER.size)
    if directory is not None:
        os.makedirs(directory, exist_ok=True)
    base = tempfile.mkdtemp(prefix="atomicwrite-demo-", dir=directory)
    started = time.perf_counter()
    try:
        echo(
            f"atomicwrite demo: {kills} SIGKILLs per method, {size / MiB:g} MiB payload,"
            f" durability={durability!r}, seed={seed}"
        )
        echo(f"directory: {base}")
        rng = random.Random(seed)  # noqa: S311 - test data and timing, not secrets
        payload_dir = os.path.join(base, "payloads")
        os.mkdir(payload_dir)
        payload_files, digests = _write_payloads(rng, size, payload_dir, "payload")
        # The same kill moments, as fractions of a save, for both methods.
        fractions = [rng.random() for _ in range(kills)]
        reports = [
            _run_method(
                method=method,
                directory=os.path.join(base, method),
                payload_files=payload_files,
                digests=digests,
                fractions=fractions,
                durability=durability,
                named_temps=named_temps,
            )
            for method in METHODS
        ]
        timings = f"local disk {time.perf_counter() - started:.1f} s"
        if s3:
            s3_started = time.perf_counter()
            s3_reports = _run_s3(rng=rng, kills=s3_kills, size=s3_size, payload_dir=payload_dir, echo=echo)
            if s3_reports:
                reports += s3_reports
                timings += f", S3 {time.perf_counter() - s3_started:.1f} s"
        echo("")
        for text in format_table(reports):
            echo(text)
        echo("")
        for report in reports:
            echo(
                f"{report.label}: a save took {report.save_seconds * 1000:.0f} ms (median of the calibration"
                f" saves); intact after a kill: {report.intact - report.intact_new} old, {report.intact_new} new"
            )
        if len(reports) > len(METHODS):
            echo(
                "s3 leftovers: pending multipart uploads plus atomicwrite's marker objects; s3fs's"
                f" block_size was {S3_PART_SIZE // MiB} MiB, atomic_open's part_size too"
            )
        failed = False
        for index in range(0, len(reports), 2):
            failed = _verdict(reports[index], reports[index + 1], echo) or failed
        if training:
            failed = _run_training(base, rng, echo) or failed
        echo(f"finished in {time.perf_counter() - started:.1f} s ({timings})" + (f"; kept {base}" if keep else ""))
        return 1 if failed else 0
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(_writer_main(sys.argv[1:]))
