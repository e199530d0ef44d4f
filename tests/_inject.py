"""Real errno injection into one atomic write, with strace (``-e inject=NAME:error=ERRNO:when=N``).

A writer process (:data:`WRITER`) warms up with one write in a scratch directory (every lazy import
and library lookup done), marks the start with ``access()`` of a made-up path, makes the one
write under test, marks the end, and prints what happened as one JSON line.  An untouched run
under strace lists the calls of that write (:func:`dry_trace`); strace counts a syscall's calls
from the writer's start, per process, so the Nth call of the list is what ``when=N`` hits in an
identical run.  :func:`inject` makes that run and checks, from its own trace, that the call that
failed is the intended one (a run that made one startup call more is retried in a fresh copy).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests._workers import ROOT
from tests.test_syscalls import _LINE, _split_args, _strace

START = "/nonexistent-atomicwrite-inject/start"
END = "/nonexistent-atomicwrite-inject/end"
MARKERS = ("access", "faccessat", "faccessat2")
# Every call the write path makes that an injection may target, and a few it reads the trace by.
TRACED = (
    *("openat", "open", "creat", "write", "pwrite64", "writev", "fsync", "fdatasync", "close"),
    *("rename", "renameat", "renameat2", "link", "linkat", "unlink", "unlinkat"),
    *("fchmod", "fchown", "flock", "fstat", "newfstatat", "statx", "lseek", "ioctl", "fcntl"),
)
PUBLISHING = ("rename", "renameat", "renameat2", "link", "linkat")
ATTEMPTS = 3
# A fixed hash seed and no .pyc writes: every run makes the same calls before the start marker.
ENV = {"PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
_TEMP_IN_TEXT = re.compile(r"\.aw[0-9a-f]{8}\.[0-9]+\.[0-9a-f]{8}\.tmp")
_ADDRESS = re.compile(r"\b0x[0-9a-f]+\b")

# Run as ``python -c WRITER SPEC``; SPEC (JSON) has "work", "warm", "name", "mode", "options",
# "size" and "retry" (after a failed commit, call commit() again and report what it did).
WRITER = r"""
import json, os, sys

from tests import _variant

_variant.apply()

from atomicwrite import atomic_open
from tests._workers import describe, payload

spec = json.loads(sys.argv[1])
data = payload(1, 1, spec["size"])
half = len(data) // 2
opened = []


def write(directory):
    file = atomic_open(os.path.join(directory, spec["name"]), spec["mode"], **spec["options"])
    opened.append(file)
    with file:
        file.write(data[:half])
        file.write(data[half:])
    return file


write(spec["warm"])
opened.clear()
os.access(spec["start"], os.F_OK)
report = {"pid": os.getpid(), "bytes": len(data), "error": None, "durability": None, "retry": None}
try:
    report["durability"] = write(spec["work"]).result.durability
except BaseException as exc:
    report["error"] = describe(exc)
    result = getattr(exc, "result", None)
    if result is not None:
        report["durability"] = result.durability
    if spec["retry"] and opened:
        # A caller that tries the commit again (after a failed fsync, say) must not publish.
        try:
            opened[0].commit()
        except BaseException as again:
            report["retry"] = describe(again)
        else:
            report["retry"] = "committed"
os.access(spec["end"], os.F_OK)
print(json.dumps(report), flush=True)
"""


@dataclass
class Call:
    pid: int
    name: str
    args: list[str]
    result: str  # as strace wrote it: "0", "-1 EIO (Input/output error) (INJECTED)"...

    @property
    def injected(self) -> bool:
        return self.result.endswith("(INJECTED)")

    @property
    def error(self) -> str | None:
        """The errno name of a failed call, e.g. "EIO"; None if it succeeded."""
        parts = self.result.split()
        return parts[1] if parts[0] == "-1" and len(parts) > 1 else None

    def __str__(self) -> str:
        return f"{self.name}({', '.join(self.args)}) = {self.result}"


def parse(log: str) -> list[Call]:
    calls = []
    for line in log.splitlines():
        match = _LINE.match(line)
        if match is not None:
            calls.append(Call(int(match["pid"] or 0), match["name"], _split_args(match["args"]), match["result"]))
    return calls


def unquote(arg: str) -> str:
    assert arg.startswith('"'), arg
    assert arg.endswith('"'), arg
    return arg[1:-1]


@dataclass
class Trace:
    """The writer's calls from its start; ``start`` and ``end`` index the markers."""

    calls: list[Call]
    start: int
    end: int
    run: Path

    @classmethod
    def of(cls, log: str, run: Path, pid: int | None = None) -> Trace:
        calls = parse(log)
        marks = [i for i, call in enumerate(calls) if call.name in MARKERS and call.args[:1] == [f'"{START}"']]
        assert len(marks) == 1, f"start marker seen {len(marks)} times"
        writer = calls[marks[0]].pid
        assert pid is None or pid == writer, (pid, writer)
        strangers = {call.pid for call in calls if call.pid != writer}
        assert not strangers, f"calls from other processes or threads {strangers}: inject counts would not match"
        ends = [i for i, call in enumerate(calls) if call.name in MARKERS and call.args[:1] == [f'"{END}"']]
        return cls(calls, marks[0], ends[0] if ends else len(calls), run)

    def window(self) -> list[tuple[int, Call]]:
        """The calls of the write under test, with their index in ``calls``."""
        return [(i, self.calls[i]) for i in range(self.start + 1, self.end)]

    def ordinal(self, index: int) -> int:
        """What strace's ``when=`` counts for ``calls[index]``: its number among its name's calls."""
        name = self.calls[index].name
        return sum(1 for call in self.calls[: index + 1] if call.name == name)

    def normalized(self, index: int) -> str:
        """A call's text with the run's directory and temp names made run-independent."""
        call = self.calls[index]
        text = f"{call.name}({', '.join(call.args)})".replace(str(self.run), "RUN")
        return _ADDRESS.sub("0xADDR", _TEMP_IN_TEXT.sub(".awTEMP.tmp", text))

    def find(self, predicate: Any, what: str) -> list[int]:
        """Indices of the window's calls for which ``predicate(trace, call)`` holds; at least one."""
        found = [i for i, call in self.window() if predicate(self, call)]
        assert found, f"no call in the write is {what}:\n" + "\n".join(str(call) for _, call in self.window())
        return found

    # --- what the descriptors are ----------------------------------------------------------

    def dir_fd(self) -> str:
        """The descriptor of the target's directory (its O_DIRECTORY open in the write)."""
        work = f'"{self.run / "work"}"'
        opens = [c for _, c in self.window() if c.name == "openat" and c.args[1] == work and "O_DIRECTORY" in c.args[2]]
        assert len(opens) == 1, [str(c) for c in opens]
        return opens[0].result.split()[0]

    def temp_fd(self) -> str:
        """The temp file's descriptor (its open relative to the directory descriptor)."""
        dir_fd = self.dir_fd()
        opens = [c for _, c in self.window() if c.name == "openat" and c.args[0] == dir_fd]
        assert opens, "no temp file opened"
        return opens[0].result.split()[0]

    def after(self, index: int) -> list[Call]:
        return [call for i, call in self.window() if i > index]

    def injected(self) -> list[int]:
        return [i for i, call in self.window() if call.injected]


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    trace: Trace
    misses: list[str] = field(default_factory=list)

    @property
    def report(self) -> dict[str, Any]:
        lines = self.stdout.strip().splitlines()
        assert self.returncode == 0, f"writer exit status {self.returncode}; stderr:\n{self.stderr}"
        assert lines, f"the writer reported nothing; stderr:\n{self.stderr}"
        report: dict[str, Any] = json.loads(lines[-1])
        return report


def _env() -> dict[str, str]:
    return dict(os.environ, **ENV, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


def _optional(names: tuple[str, ...]) -> str:
    """A trace set that tolerates the names this architecture lacks (no ``access`` on arm64)."""
    return ",".join(f"?{name}" for name in names)


def _skip_if_untraceable(done: subprocess.CompletedProcess[str]) -> None:
    if done.returncode != 0 and "ptrace" in done.stderr.lower():
        reason = f"strace cannot trace here: {done.stderr.strip()}"
        if os.environ.get("ATOMICWRITE_REQUIRE_STRACE") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


def prepare(run: Path, name: str, old: bytes | None) -> None:
    """``run/work`` and ``run/warm`` as a write starts from: empty, or holding ``old`` as ``name``."""
    for sub in ("work", "warm"):
        directory = run / sub
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        if old is not None:
            (directory / name).write_bytes(old)


def spec(
    run: Path, name: str = "target", mode: str = "wb", size: int = 3 << 20, retry: bool = False, **options: Any
) -> dict[str, Any]:
    """What the writer needs (see :data:`WRITER`); 3 MiB go out as two writes past the buffer."""
    return {
        "work": str(run / "work"),
        "warm": str(run / "warm"),
        "name": name,
        "mode": mode,
        "options": options,
        "size": size,
        "retry": retry,
        "start": START,
        "end": END,
    }


def _run(run: Path, writer_spec: dict[str, Any], strace_args: list[str]) -> Run:
    log = run / "strace.log"
    command = [_strace(), "-f", "-qq", "-e", "signal=none", "-s", "256", "-o", str(log), *strace_args]
    command += [sys.executable, "-c", WRITER, json.dumps(writer_spec)]
    done = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120, check=False)
    _skip_if_untraceable(done)
    text = log.read_text() if log.exists() else ""
    try:
        trace = Trace.of(text, run)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; writer exit status {done.returncode}, stderr:\n{done.stderr}") from None
    return Run(done.returncode, done.stdout, done.stderr, trace)


_DRY: dict[str, Trace] = {}


def dry_trace(base: Path, variant: str, old: bytes | None, writer_spec: dict[str, Any]) -> Trace:
    """The untouched run's trace (one per variant, starting state and spec, for the session)."""
    settings = {key: writer_spec[key] for key in ("name", "mode", "options", "size")}
    key = json.dumps([variant, old is not None, settings], sort_keys=True)
    if key not in _DRY:
        run = base / "dry"
        prepare(run, writer_spec["name"], old)
        done = _run(
            run,
            {**writer_spec, "work": str(run / "work"), "warm": str(run / "warm")},
            ["-e", f"trace={_optional(TRACED + MARKERS)}"],
        )
        report = done.report
        assert report["error"] is None, report
        _DRY[key] = done.trace
    return _DRY[key]


def inject(
    run: Path, writer_spec: dict[str, Any], old: bytes | None, syscall: str, error: str, when: str, intended: str | None
) -> Run:
    """A write whose ``syscall`` fails with ``error`` at strace's ``when``; ``intended`` is the
    normalized text of the call that must be the first to fail (None: don't check)."""
    misses: list[str] = []
    for _attempt in range(ATTEMPTS):
        prepare(run, writer_spec["name"], old)
        try:
            done = _run(
                run,
                writer_spec,
                [
                    "-e",
                    f"trace={_optional(TRACED + MARKERS)},{syscall}",
                    "-e",
                    f"inject={syscall}:error={error}:when={when}",
                ],
            )
        except AssertionError as exc:  # the injection hit a startup call: no start marker
            misses.append(str(exc)[:2000])
            continue
        hits = done.trace.injected()
        if intended is None or (hits and done.trace.normalized(hits[0]) == intended):
            done.misses = misses
            return done
        first = done.trace.normalized(hits[0]) if hits else "nothing between the markers"
        misses.append(f"hit {first}, not {intended}")
    raise AssertionError(f"no run failed the intended call in {ATTEMPTS} attempts: " + "; ".join(misses))
