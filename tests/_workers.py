"""Worker processes for the concurrency, fault and syscall tests.

Run as ``python -m tests._workers ROLE ARGS...`` with the repository root on ``PYTHONPATH``.  Every
worker applies the strategy variant of the parent test first (see tests/_variant.py), and prints
one JSON line on stdout as its last act: what it saw, for the parent test to check.

Payloads written by the writers are self-describing, so that a torn or mixed read shows::

    magic (4) | writer id (2) | sequence (4) | body length (4) | body | sha256 of all before (32)
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import atomicwrite
from atomicwrite import atomic_open, atomic_update

ROOT = Path(__file__).resolve().parent.parent

MAGIC = b"AWt1"
HEADER = struct.Struct(">4sHII")
DIGEST_SIZE = 32
INITIAL_WRITER = 0xFFFF  # the writer id of the version a parent test puts in place first


def payload(writer: int, seq: int, size: int | None = None) -> bytes:
    """A complete, verifiable version; its size varies between writes unless given."""
    rng = random.Random(writer * 1_000_003 + seq)
    if size is None:
        size = rng.choice((rng.randrange(0, 600), rng.randrange(4_000, 70_000), rng.randrange(150_000, 400_000)))
    head = HEADER.pack(MAGIC, writer, seq, size) + rng.randbytes(size)
    return head + hashlib.sha256(head).digest()


def verify(data: bytes) -> tuple[int, int]:
    """``(writer, seq)`` of a complete version, else ValueError saying what is wrong."""
    if len(data) < HEADER.size + DIGEST_SIZE:
        raise ValueError(f"short read: {len(data)} bytes")
    magic, writer, seq, size = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ValueError(f"bad magic {magic!r}")
    expected = HEADER.size + size + DIGEST_SIZE
    if len(data) != expected:
        raise ValueError(f"torn read: {len(data)} bytes, version ({writer}, {seq}) has {expected}")
    if hashlib.sha256(data[:-DIGEST_SIZE]).digest() != data[-DIGEST_SIZE:]:
        raise ValueError(f"checksum mismatch in version ({writer}, {seq})")
    return writer, seq


def touch(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))


def wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout} s")
        time.sleep(0.0005)


def barrier(sync: Path, name: str, worker: int) -> None:
    """Say this worker is ready for ``name``, then wait until the parent says go."""
    touch(sync / f"ready.{name}.{worker}")
    wait_for(sync / f"go.{name}")


def describe(exc: BaseException) -> dict[str, Any]:
    return {
        "type": type(exc).__name__,
        "mro": [cls.__name__ for cls in type(exc).__mro__],
        "errno": getattr(exc, "errno", None),
        "filename": getattr(exc, "filename", None),
        "message": str(exc),
    }


def report(result: object) -> None:
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


# --- roles ---------------------------------------------------------------------------------


def writer(target: str, worker: str, count: str, durability: str, sync: str) -> None:
    """Replace ``target`` ``count`` times with this writer's versions, streaming each in chunks."""
    wid = int(worker)
    barrier(Path(sync), "writers", wid)
    for seq in range(int(count)):
        data = payload(wid, seq)
        with atomic_open(target, "wb", durability=durability) as file:  # type: ignore[arg-type]
            for start in range(0, len(data), 48_000):
                file.write(data[start : start + 48_000])
    report({"writer": wid, "writes": int(count)})


def reader(target: str, stop: str, ready: str) -> None:
    """Read ``target`` until ``stop`` appears; every read must be one complete version."""
    stop_path = Path(stop)
    touch(Path(ready))
    reads = 0
    errors: list[str] = []
    versions: set[tuple[int, int]] = set()
    last_seq: dict[int, int] = {}
    while True:
        stopping = stop_path.exists()  # checked first: the last read comes after the writers ended
        reads += 1
        try:
            with open(target, "rb") as file:
                wid, seq = verify(file.read())
        except FileNotFoundError:
            errors.append(f"read {reads}: the target did not exist")
        except ValueError as exc:
            errors.append(f"read {reads}: {exc}")
        else:
            # Each writer publishes its versions in order; a reader must never see one go back.
            if seq < last_seq.get(wid, -1):
                errors.append(f"read {reads}: writer {wid} went back from {last_seq[wid]} to {seq}")
            last_seq[wid] = seq
            versions.add((wid, seq))
        if stopping:
            break
    report({"reads": reads, "versions": len(versions), "errors": errors[:20], "error_count": len(errors)})


def racer(base: str, sync: str, worker: str, rounds: str) -> None:
    """Race the other racers in exclusive mode, once per round, on ``base/round{r}/target``.

    Even rounds open before the barrier (every racer passes the existence check at open, so the
    race is decided at publish time alone); odd rounds open after it.
    """
    wid = int(worker)
    outcomes: list[dict[str, Any]] = []
    for rnd in range(int(rounds)):
        target = Path(base) / f"round{rnd}" / "target"
        file = None
        outcome: dict[str, Any]
        try:
            if rnd % 2 == 0:
                file = atomic_open(target, "xb")
            barrier(Path(sync), f"round{rnd}", wid)
            if file is None:
                file = atomic_open(target, "xb")
            with file:
                file.write(payload(wid, rnd, 100_000 + 997 * wid))
            outcome = {"won": True}
        except BaseException as exc:
            outcome = {"won": False, **describe(exc)}
        outcomes.append(outcome)
    report(outcomes)


def updater(target: str, worker: str, count: str, sync: str) -> None:
    """Append ``count`` entries to a shared JSON log through atomic_update."""
    wid = int(worker)

    def step(index: int) -> Callable[[Any], Any]:
        def update(old: Any) -> Any:
            state = old if old is not None else {"count": 0, "log": []}
            return {"count": state["count"] + 1, "log": [*state["log"], [wid, index]]}

        return update

    barrier(Path(sync), "updaters", wid)
    for index in range(int(count)):
        atomic_update(target, step(index), serializer="json", durability="none")
    report({"updater": wid, "updates": int(count)})


def too_large(target: str, limit: str, chunk: str, total: str) -> None:
    """Write ``total`` bytes in ``chunk``-sized writes under RLIMIT_FSIZE = ``limit``."""
    import resource

    size = int(limit)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    # Without this the kernel kills the writer with SIGXFSZ instead of failing write() with EFBIG.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    block = b"z" * int(chunk)
    written = 0
    try:
        with atomic_open(target, "wb") as file:
            while written < int(total):
                file.write(block)
                written += len(block)
    except BaseException as exc:
        report({"raised": True, "written": written, **describe(exc)})
    else:
        report({"raised": False, "written": written})


def read_only(directory: str, warmup: str) -> None:
    """Try to write into a read-only ``directory``, as nobody when started as root."""
    # Everything the write path imports lazily is loaded now, while the interpreter's own files
    # are still readable (as root they may live under a 0700 home directory).
    with atomic_open(warmup, "wb") as file:
        file.write(b"warm")
    atomicwrite.atomic_save("warm", warmup, "text")
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    outcomes: dict[str, Any] = {"euid": os.geteuid()}
    for name, mode in (("new", "wb"), ("existing", "wb"), ("created", "xb")):
        try:
            with atomic_open(os.path.join(directory, name), mode) as file:
                file.write(b"should never land")
        except BaseException as exc:
            outcomes[name] = describe(exc)
        else:
            outcomes[name] = None
    report(outcomes)


def interruptible(target: str) -> None:
    """Write to ``target`` slowly until interrupted; says "ready" once bytes reached the temp."""
    # Python's own Ctrl-C handler, even if SIGINT came ignored: a shell without job control
    # starts background jobs (a test run among them) with SIGINT ignored, and passes that on.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    deadline = time.monotonic() + 60
    with atomic_open(target, "wb") as file:
        file.write(b"n" * 4096)
        file.flush()
        print("ready", flush=True)
        while time.monotonic() < deadline:
            file.write(b"n" * 4096)
            file.flush()
            time.sleep(0.005)
    report({"interrupted": False})


def traced(target: str, mode: str, durability: str, size: str) -> None:
    """One atomic write for the syscall trace: two large writes, then the commit."""
    data = payload(1, 1, int(size))
    half = len(data) // 2
    with atomic_open(target, mode, durability=durability) as file:  # type: ignore[call-overload]
        file.write(data[:half])
        file.write(data[half:])
    report({"bytes": len(data)})


ROLES: dict[str, Callable[..., None]] = {
    "writer": writer,
    "reader": reader,
    "racer": racer,
    "updater": updater,
    "too-large": too_large,
    "read-only": read_only,
    "interruptible": interruptible,
    "traced": traced,
}


# --- the parent's side ----------------------------------------------------------------------


def spawn(role: str, *args: object, stdin: int | None = subprocess.DEVNULL) -> subprocess.Popen[str]:
    """Start a worker; it inherits the parent test's variant through the environment."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.Popen(
        [sys.executable, "-m", "tests._workers", role, *map(str, args)],
        cwd=ROOT,
        env=env,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def collect(proc: subprocess.Popen[str], timeout: float = 120.0) -> Any:
    """Wait for a worker and return its JSON report; a worker that failed fails the test."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"worker {proc.args!r} timed out; stderr:\n{err}") from None
    assert proc.returncode == 0, f"worker {proc.args!r} exited {proc.returncode}; stderr:\n{err}"
    lines = out.strip().splitlines()
    assert lines, f"worker {proc.args!r} reported nothing; stderr:\n{err}"
    return json.loads(lines[-1])


def release(sync: Path, name: str, workers: int, procs: list[subprocess.Popen[str]], timeout: float = 60.0) -> None:
    """Wait until ``workers`` workers are ready for ``name``, then let them all go at once."""
    deadline = time.monotonic() + timeout
    while sum(1 for entry in os.listdir(sync) if entry.startswith(f"ready.{name}.")) < workers:
        dead = [proc for proc in procs if proc.poll() is not None]
        if dead:
            raise AssertionError(f"a worker ended before the barrier {name!r}: {dead[0].args!r}")
        if time.monotonic() > deadline:
            raise AssertionError(f"workers not ready for {name!r} within {timeout} s")
        time.sleep(0.001)
    touch(sync / f"go.{name}")


if __name__ == "__main__":
    from tests import _variant

    _variant.apply()
    ROLES[sys.argv[1]](*sys.argv[2:])
