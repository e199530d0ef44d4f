"""The crash demo behind ``atomicwrite demo``: SIGKILL a writer mid-save, then look at the file.

A writer subprocess saves a multi-MB payload over and over; the parent kills it at a random
moment, N times, once for a writer that uses plain ``open(path, "wb")`` and once for one that
uses :func:`atomicwrite.atomic_open`.  Every payload carries a header with its length and its
SHA-256, so after each kill the target is classified as intact, torn (truncated or checksum
mismatch), empty or missing.  Leftover temp files are counted, then :func:`atomicwrite.sweep`
runs and what remains is counted again.

Each round waits until the writer has completed one save, so an old version is always on disk
when the kill comes, then kills it after a random fraction of that (calibration) save's
duration: the kill lands uniformly inside the next save.  Both methods get the same fractions.

This module is also the writer: ``python -m atomicwrite._demo PATH METHOD PAYLOAD...``.  It
imports no click; only :mod:`atomicwrite._cli` does.
"""

from __future__ import annotations

import hashlib
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
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from ._result import Durability

__all__ = ["DemoError", "MethodReport", "classify", "make_payload", "run_demo"]

MAGIC = b"AWDEMO01"
# magic, body length, SHA-256 of the body
HEADER = struct.Struct(">8sQ32s")
CHUNK = 1 << 20
TARGET = "state.bin"
METHODS = ("plain", "atomic")
LABELS = {"plain": 'open("wb")', "atomic": 'atomic_open("wb")'}
SAVED = b"saved"
# How long a writer may take for its first save before the demo gives up on it.
FIRST_SAVE_TIMEOUT = 120.0
OUTCOMES = ("intact", "torn", "empty", "missing")


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
    leftovers_before_sweep: int = 0
    leftovers_after_sweep: int = 0
    save_seconds: float = 0.0

    @property
    def label(self) -> str:
        return LABELS[self.method]

    @property
    def damaged(self) -> int:
        return self.torn + self.empty + self.missing

    def count(self, outcome: str) -> None:
        self.kills += 1
        setattr(self, outcome, getattr(self, outcome) + 1)


# --------------------------------------------------------------------------------------------
# The writer subprocess


def _save_plain(path: str, payload: memoryview, durability: str) -> None:
    # What most code does: truncate the file in place, then write.  It flushes like atomic_open
    # does (unless durability is "none"), so both methods do the same I/O.
    with open(path, "wb") as file:
        for start in range(0, len(payload), CHUNK):
            file.write(payload[start : start + CHUNK])
        if durability != "none":
            file.flush()
            os.fsync(file.fileno())


def _save_atomic(path: str, payload: memoryview, durability: str) -> None:
    from atomicwrite import atomic_open

    with atomic_open(path, "wb", durability=cast("Durability", durability), accept_weaker_durability=True) as file:
        for start in range(0, len(payload), CHUNK):
            file.write(payload[start : start + CHUNK])


def _use_named_temps() -> None:
    """Stage in named temp files even where O_TMPFILE exists, so that a kill leaves leftovers.

    Windows temps are always named; there is nothing to change."""
    if sys.platform != "win32":
        from atomicwrite import _strategy
        from atomicwrite._posix import PosixStrategy

        strategy = PosixStrategy(use_tmpfile=False)
        for protocol in ("", "file", "local"):
            _strategy._INSTANCES[protocol] = strategy


def _writer_main(argv: Sequence[str]) -> int:
    """``PATH METHOD DURABILITY NAMED PAYLOAD...``: save the payloads in turn, forever, printing
    ``saved SECONDS`` after each save."""
    path, method, durability, named, *payload_files = argv
    if method not in METHODS or not payload_files:
        print(
            f"usage: python -m atomicwrite._demo PATH {{{','.join(METHODS)}}} DURABILITY 0|1 PAYLOAD...",
            file=sys.stderr,
        )
        return 2
    if named == "1":
        _use_named_temps()
    payloads = []
    for name in payload_files:
        with open(name, "rb") as file:
            payloads.append(memoryview(file.read()))
    save = _save_plain if method == "plain" else _save_atomic
    out = sys.stdout.buffer
    saves = 0
    while True:
        started = time.perf_counter()
        save(path, payloads[saves % len(payloads)], durability)
        saves += 1
        # The parent kills us while the next save runs; a broken pipe (parent gone) ends us.
        out.write(b"%s %.6f\n" % (SAVED, time.perf_counter() - started))
        out.flush()


# --------------------------------------------------------------------------------------------
# The parent


def _writer_env() -> dict[str, str]:
    """The environment for a writer: this copy of atomicwrite first on its path."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _kill_round(argv: list[str], env: dict[str, str], fraction: float) -> float:
    """Start a writer, wait for its first complete save, kill it ``fraction`` of a save later;
    return that first save's duration."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    assert proc.stderr is not None
    watchdog = threading.Timer(FIRST_SAVE_TIMEOUT, proc.kill)
    watchdog.daemon = True
    killed = False
    try:
        watchdog.start()
        line = proc.stdout.readline()
        watchdog.cancel()
        fields = line.split()
        if len(fields) != 2 or fields[0] != SAVED:
            proc.kill()
            proc.wait()
            error = proc.stderr.read().decode(errors="replace").strip().splitlines()
            reason = error[-1] if error else f"no save within {FIRST_SAVE_TIMEOUT:.0f} s"
            raise DemoError(f"the demo writer failed (exit status {proc.returncode}): {reason}")
        duration = float(fields[1])
        time.sleep(fraction * duration)
        proc.kill()  # SIGKILL on POSIX: no handler, no flush, no cleanup
        killed = True
        proc.wait()
        if sys.platform != "win32" and proc.returncode != -9:
            error = proc.stderr.read().decode(errors="replace").strip().splitlines()
            raise DemoError(
                f"the demo writer ended by itself (exit status {proc.returncode}) before it was killed"
                + (f": {error[-1]}" if error else "")
            )
        return duration
    finally:
        watchdog.cancel()
        if not killed and proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def _leftovers(directory: str) -> list[str]:
    return sorted(entry for entry in os.listdir(directory) if entry != TARGET)


def _run_method(
    *,
    method: str,
    directory: str,
    payload_files: list[str],
    fractions: list[float],
    durability: str,
    named_temps: bool,
) -> MethodReport:
    from atomicwrite import sweep

    os.mkdir(directory)
    target = os.path.join(directory, TARGET)
    argv = [sys.executable, "-m", "atomicwrite._demo", target, method, durability, "1" if named_temps else "0"]
    argv += payload_files
    env = _writer_env()
    report = MethodReport(method)
    durations = []
    for fraction in fractions:
        durations.append(_kill_round(argv, env, fraction))
        report.count(classify(target))
    report.leftovers_before_sweep = len(_leftovers(directory))
    sweep(directory, older_than=0)
    report.leftovers_after_sweep = len(_leftovers(directory))
    report.save_seconds = sorted(durations)[len(durations) // 2]
    return report


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


def run_demo(
    *,
    kills: int = 20,
    size_mb: float = 8.0,
    seed: int | None = None,
    directory: str | None = None,
    keep: bool = False,
    durability: str = "full",
    named_temps: bool = False,
    echo: Callable[[str], object] = print,
) -> int:
    """Run the demo, print the table through ``echo``; 0 if atomic_open never left a damaged
    file (and sweep left nothing behind), 1 otherwise."""
    if kills < 1:
        raise ValueError("kills must be at least 1")
    if durability not in ("none", "file", "full"):
        raise ValueError(f"durability must be 'none', 'file' or 'full', not {durability!r}")
    if seed is None:
        seed = random.SystemRandom().randrange(1 << 32)
    size = max(int(size_mb * (1 << 20)), HEADER.size)
    if directory is not None:
        os.makedirs(directory, exist_ok=True)
    base = tempfile.mkdtemp(prefix="atomicwrite-demo-", dir=directory)
    started = time.perf_counter()
    try:
        echo(
            f"atomicwrite demo: {kills} SIGKILLs per method, {size / (1 << 20):g} MiB payload,"
            f" durability={durability!r}, seed={seed}"
        )
        echo(f"directory: {base}")
        rng = random.Random(seed)  # noqa: S311 - test data and timing, not secrets
        payload_dir = os.path.join(base, "payloads")
        os.mkdir(payload_dir)
        payload_files = []
        for index in range(2):
            name = os.path.join(payload_dir, f"payload{index}.bin")
            with open(name, "wb") as file:
                file.write(make_payload(rng, size))
            payload_files.append(name)
        # The same kill moments, as fractions of a save, for both methods.
        fractions = [rng.random() for _ in range(kills)]
        reports = [
            _run_method(
                method=method,
                directory=os.path.join(base, method),
                payload_files=payload_files,
                fractions=fractions,
                durability=durability,
                named_temps=named_temps,
            )
            for method in METHODS
        ]
        echo("")
        for text in format_table(reports):
            echo(text)
        echo("")
        for report in reports:
            echo(f"{report.label}: a save took {report.save_seconds * 1000:.0f} ms (median of the calibration saves)")
        plain, atomic = reports
        echo(
            f"{plain.label}: {plain.damaged} of {plain.kills} kills left a torn, empty or missing file"
            + (" (no kill happened to land inside a write this time)" if plain.damaged == 0 else "")
        )
        failed = atomic.damaged > 0 or atomic.leftovers_after_sweep > 0
        if atomic.damaged:
            echo(f"BUG: {atomic.label} left {atomic.damaged} damaged file(s); it must leave none")
        if atomic.leftovers_after_sweep:
            echo(f"BUG: sweep() left {atomic.leftovers_after_sweep} leftover(s) of killed writers")
        if not failed:
            echo(
                f"{atomic.label}: every kill left the old or the new file intact; sweep() removed"
                f" {atomic.leftovers_before_sweep} leftover temp file(s)"
            )
        echo(f"finished in {time.perf_counter() - started:.1f} s" + (f"; kept {base}" if keep else ""))
        return 1 if failed else 0
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(_writer_main(sys.argv[1:]))
