"""SIGKILL at every system call of the write path: the aftermath is always the old or the new file.

For each protocol (replace at each durability, exclusive create, a symlinked target, a locked
replace, ``atomic_update``) and each local variant (``O_TMPFILE``, named temp):

1. a writer runs once under strace, untouched, to list the calls it makes between its "start" and
   "end" markers (``access()`` of two made-up paths, outside the traced set below);
2. for every such call -- the Nth ``openat``, ``write``, ``fsync``, ``renameat``... -- a fresh
   copy of the directory gets a writer that strace kills with SIGKILL on entering exactly that call
   (``-e inject=NAME:signal=KILL:when=N``; a call killed on entry never runs);
3. then, before and after ``sweep()`` in a fresh process, the target must be byte for byte the
   complete old or the complete new content -- new exactly when the publishing call (rename or
   link onto the target) ran before the kill --, a symlink must still be that symlink, the file's
   mode and owner must be the old ones (or the new file's), and the only extra entries may be our
   own temp names (as many as the trace says existed at that moment), all gone after the sweep.

The counts of kill points tried are printed at the end of the run (tests/conftest.py).  strace is
needed: without it the tests skip, unless ``ATOMICWRITE_REQUIRE_STRACE=1`` (CI) makes that a
failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from atomicwrite._names import host_tag, parse_temp_name
from tests._workers import ROOT, verify
from tests.conftest import TERMINAL_SUMMARY
from tests.test_syscalls import Call, _parse, _strace, _unquote

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="strace syscall injection is Linux-only"),
]

# Every call of these between the markers is a kill point.
KILLABLE = (
    *("openat", "write", "pwrite64", "fsync", "fdatasync", "fchmod", "fchown", "flock"),
    *("link", "linkat", "rename", "renameat", "renameat2", "unlink", "unlinkat", "close"),
)
MARKERS = ("access", "faccessat", "faccessat2")
START = "/nonexistent-atomicwrite-kill-point/start"
END = "/nonexistent-atomicwrite-kill-point/end"
PUBLISHING = ("link", "linkat", "rename", "renameat", "renameat2")
MIN_KILL_POINTS = 8
ATTEMPTS = 3
PARALLEL = min(4, max(2, os.cpu_count() or 2))
# A fixed hash seed and no .pyc writes: every run makes the same calls before the start marker.
ENV = {"PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}

# The writer, run as ``python -c WRITER MODE SPEC``: MODE "setup" builds a protocol's starting
# directory, MODE "write" warms up in a copy of it (every lazy import and library lookup done),
# then marks the start, makes the one write under test, and marks the end.
WRITER = r"""
import hashlib, json, os, sys

from tests import _variant

_variant.apply()

from atomicwrite import atomic_open, atomic_update
from atomicwrite._serializers import Serializer
from tests._workers import INITIAL_WRITER, payload

SIZE, CHUNK = 6000, 2048  # three flushed chunks: three write() calls


def counter(count):
    blob = hashlib.sha256(str(count).encode()).hexdigest() * 50
    check = hashlib.sha256(f"{count}:{blob}".encode()).hexdigest()
    return {"count": count, "blob": blob, "check": check}


def bump(old):
    if old is None:
        return counter(1)
    assert counter(old["count"]) == old, "a torn counter was read back"
    return counter(old["count"] + 1)


def dump_in_chunks(obj, file):
    # JSON streamed in flushed pieces, so that the write path has several write() calls.
    text = json.dumps(obj, indent=1) + "\n"
    for start in range(0, len(text), CHUNK):
        file.write(text[start : start + CHUNK])
        file.flush()


JSON = Serializer("json-chunked", dump_in_chunks, json.load, binary=False, encoding="utf-8")


def write_payload(path, mode="wb", during=None, **options):
    data = payload(1, 1, SIZE)
    with atomic_open(path, mode, **options) as file:
        for start in range(0, len(data), CHUNK):
            file.write(data[start : start + CHUNK])
            file.flush()
        if during is not None:
            during()


def create_over_links(work):
    # "xb" where a dangling symlink already is, then where one is planted mid-write: each must
    # raise, and neither may create the file the link names.
    def plant():
        os.symlink(os.path.join("elsewhere", "late.bin"), os.path.join(work, "late.bin"))

    for name, during in (("target.bin", None), ("late.bin", plant)):
        try:
            write_payload(os.path.join(work, name), "xb", during=during)
        except FileExistsError:
            continue
        raise SystemExit(f"an exclusive create of {name} over a symlink succeeded")


def setup(protocol, work):
    target = os.path.join(work, "target.bin")
    old = payload(INITIAL_WRITER, 0, SIZE)
    if protocol == "update-locked":
        atomic_update(os.path.join(work, "counter.json"), bump, JSON)
    elif protocol == "symlink":
        os.mkdir(os.path.join(work, "data"))
        with open(os.path.join(work, "data", "real.bin"), "wb") as file:
            file.write(old)
        os.chmod(os.path.join(work, "data", "real.bin"), 0o604)
        os.symlink(os.path.join("data", "real.bin"), os.path.join(work, "link.bin"))
    elif protocol == "replace-locked":
        with atomic_open(target, "wb", lock=True) as file:
            file.write(old)
        os.chmod(target, 0o640)
    elif protocol == "create-over-link":
        os.mkdir(os.path.join(work, "elsewhere"))
        os.symlink(os.path.join("elsewhere", "target.bin"), target)
    elif protocol != "create-exclusive":
        with open(target, "wb") as file:
            file.write(old)
        os.chmod(target, 0o640)
        if protocol == "replace-full" and os.geteuid() == 0:
            os.chown(target, 65534, 65534)  # an owner to keep: the write path has an fchown


def write(protocol, work):
    target = os.path.join(work, "target.bin")
    if protocol == "update-locked":
        atomic_update(os.path.join(work, "counter.json"), bump, JSON)
    elif protocol == "symlink":
        write_payload(os.path.join(work, "link.bin"))
    elif protocol == "create-exclusive":
        write_payload(target, "xb")
    elif protocol == "create-over-link":
        create_over_links(work)
    elif protocol == "replace-locked":
        write_payload(target, lock=True)
    else:
        write_payload(target, durability=protocol.split("-")[1])


mode, spec = sys.argv[1], json.loads(sys.argv[2])
if mode == "setup":
    setup(spec["protocol"], spec["work"])
else:
    with open(spec["pidfile"], "w") as file:
        file.write(str(os.getpid()))
    write(spec["protocol"], spec["warm"])
    os.access(spec["start"], os.F_OK)
    write(spec["protocol"], spec["work"])
    os.access(spec["end"], os.F_OK)
"""

PROTOCOLS = {
    # protocol: (the path written to, the file it lands in, what the user sees afterwards), all
    # relative to the work directory; an exclusive create killed before publishing leaves nothing.
    "replace-full": ("target.bin", "target.bin", {"target.bin"}),
    "replace-file": ("target.bin", "target.bin", {"target.bin"}),
    "replace-none": ("target.bin", "target.bin", {"target.bin"}),
    "create-exclusive": ("target.bin", "target.bin", {"target.bin"}),
    "symlink": ("link.bin", "data/real.bin", {"link.bin", "data", "data/real.bin"}),
    "replace-locked": ("target.bin", "target.bin", {"target.bin", ".target.bin.lock"}),
    "update-locked": ("counter.json", "counter.json", {"counter.json", ".counter.json.lock"}),
}

_TEMP_IN_TEXT = re.compile(r"\.aw[0-9a-f]{8}\.[0-9]+\.[0-9a-f]{8}\.tmp")


@dataclass
class KillPoint:
    name: str
    when: int  # counted from the writer's start, as strace's inject counts
    call: Call
    publishes: bool  # whether the content is published when the kill comes (the call never runs)
    temps: int  # how many of our temp names exist when the kill comes


@dataclass
class Aftermath:
    point: KillPoint
    run: Path
    returncode: int
    log: str
    stderr: str
    pid: int | None
    temps: list[str] = field(default_factory=list)  # relative to the work directory
    misses: list[str] = field(default_factory=list)  # why earlier attempts did not count
    problems: list[str] = field(default_factory=list)


def _env() -> dict[str, str]:
    return dict(os.environ, **ENV, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


def _run_writer(
    mode: str, spec: dict[str, Any], strace_args: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", WRITER, mode, json.dumps(spec)]
    if strace_args is not None:
        command = [_strace(), "-f", "-qq", "-e", "signal=none", *strace_args, *command]
    return subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120, check=False)


def _spec(protocol: str, run: Path) -> dict[str, Any]:
    """What a writer in ``run`` needs: its warm-up and work directories, where to put its pid."""
    return {
        "protocol": protocol,
        "work": str(run / "work"),
        "warm": str(run / "warm"),
        "pidfile": str(run / "pid"),
        "start": START,
        "end": END,
    }


def _skip_if_untraceable(done: subprocess.CompletedProcess[str]) -> None:
    if done.returncode != 0 and "ptrace" in done.stderr.lower():
        reason = f"strace cannot trace here: {done.stderr.strip()}"
        if os.environ.get("ATOMICWRITE_REQUIRE_STRACE") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


def _snapshot(work: Path) -> dict[str, tuple[str, bytes | str | None, int, int, int]]:
    """Every entry under ``work``: (kind, content or link, mode, uid, gid)."""
    entries: dict[str, tuple[str, bytes | str | None, int, int, int]] = {}
    for directory, dirs, files in os.walk(work):
        for name in sorted(dirs + files):
            path = Path(directory) / name
            st = path.lstat()
            relative = str(path.relative_to(work))
            if stat.S_ISLNK(st.st_mode):
                entries[relative] = ("link", os.readlink(path), 0, st.st_uid, st.st_gid)
            elif stat.S_ISDIR(st.st_mode):
                entries[relative] = ("dir", None, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
            else:
                entries[relative] = ("file", path.read_bytes(), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    return entries


def _is_temp(relative: str) -> bool:
    return parse_temp_name(os.path.basename(relative)) is not None


def _marker_index(calls: list[Call], marker: str) -> int:
    found = [i for i, call in enumerate(calls) if call.name in MARKERS and call.args and call.args[0] == f'"{marker}"']
    assert len(found) == 1, f"marker {marker} seen {len(found)} times"
    return found[0]


def _normalized(call: Call, run: Path) -> str:
    """A call's name and arguments, with the run's directory and temp names made run-independent."""
    text = f"{call.name}({', '.join(call.args)})".replace(str(run), "RUN")
    return _TEMP_IN_TEXT.sub(".awTEMP.tmp", text)


def _optional(names: tuple[str, ...]) -> str:
    """A trace set that tolerates the names this architecture lacks (no ``access`` on arm64)."""
    return ",".join(f"?{name}" for name in names)


def _short(text: str, room: int = 100) -> str:
    return text if len(text) <= room else text[: room - 5] + "[...]"


def _kill_points(calls: list[Call], real_name: str, *, publishes: bool = True) -> list[KillPoint]:
    """Every killable call between the markers, with what a kill on entering it must leave.

    ``publishes``: whether the untouched run publishes ``real_name`` (an exclusive create over a
    symlink must not)."""
    start, end = _marker_index(calls, START), _marker_index(calls, END)
    writer = calls[start].pid
    strangers = {call.pid for call in calls if call.pid != writer}
    assert not strangers, f"calls from other processes or threads {strangers}: inject counts would not match"
    before = Counter(call.name for call in calls[:start])
    seen: Counter[str] = Counter()
    published = False
    temps: set[str] = set()
    points = []
    for index in range(start + 1, end):
        call = calls[index]
        if call.name not in KILLABLE:
            continue
        seen[call.name] += 1
        points.append(KillPoint(call.name, before[call.name] + seen[call.name], call, published, len(temps)))
        # What the call did, once it ran: a temp name made or dropped, the target published.
        args = call.args
        if not call.result.isdigit():
            continue  # it failed: nothing changed
        if call.name == "openat" and "O_CREAT" in args[2] and parse_temp_name(_unquote(args[1])):
            temps.add(_unquote(args[1]))
        elif call.name in PUBLISHING:
            source = _unquote(args[0] if call.name in ("link", "rename") else args[1])
            destination = _unquote(args[1] if call.name in ("link", "rename") else args[3])
            if parse_temp_name(os.path.basename(destination)):
                temps.add(os.path.basename(destination))
            elif os.path.basename(destination) == real_name:
                published = True
            if call.name.startswith("rename"):
                temps.discard(os.path.basename(source))
        elif call.name in ("unlink", "unlinkat"):
            temps.discard(os.path.basename(_unquote(args[0] if call.name == "unlink" else args[1])))
    assert published == publishes, f"the untouched run published the target: {published}, expected {publishes}"
    assert not temps, f"the untouched run left temp names {temps}"
    return points


def _copy(template: Path, run: Path) -> None:
    """The template as the run's ``work`` and ``warm`` directories, owners included."""
    for name in ("work", "warm"):
        shutil.copytree(template, run / name, symlinks=True)
        for directory, dirs, files in os.walk(template):
            for entry in dirs + files:
                source = Path(directory) / entry
                st = source.lstat()
                os.lchown(run / name / source.relative_to(template), st.st_uid, st.st_gid)


def _kill(point: KillPoint, template: Path, run: Path, protocol: str, clean_run: Path) -> Aftermath:
    """Run a writer that strace kills on entering the point's call; retried if it missed the call.

    The kill counts calls from the writer's start, so a run whose start made one call more than
    the untouched run's (rare, but seen once under load) kills elsewhere: such a run is told
    apart by the call it died in, and run again in a fresh copy.
    """
    misses: list[str] = []
    for _attempt in range(ATTEMPTS):
        for leftover in ("work", "warm", "pid", "strace.log"):
            path = run / leftover
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        _copy(template, run)
        log = run / "strace.log"
        done = _run_writer(
            "write",
            _spec(protocol, run),
            [
                "-s",
                "512",
                "-o",
                str(log),
                "-e",
                f"trace={point.name},{_optional(MARKERS)}",
                "-e",
                f"inject={point.name}:signal=KILL:when={point.when}",
            ],
        )
        pid = int((run / "pid").read_text()) if (run / "pid").exists() else None
        after = Aftermath(point, run, done.returncode, log.read_text() if log.exists() else "", done.stderr, pid)
        miss = _missed(after, clean_run)
        if miss is None:
            after.misses = misses
            return after
        misses.append(miss)
    after.problems.append(f"no run was killed at the intended call in {ATTEMPTS} attempts: " + "; ".join(misses))
    after.misses = misses
    return after


def _missed(after: Aftermath, clean_run: Path) -> str | None:
    """Why the writer was not killed on entering the intended call, between the markers; or None."""
    if after.returncode not in (-9, 137):
        return f"writer exit status {after.returncode}, not SIGKILL; stderr: {after.stderr[-2000:]}"
    calls = [call for call in _parse(after.log) if call.pid == after.pid]
    if not any(call.name in MARKERS and call.args[0] == f'"{START}"' for call in calls):
        return "killed before the start marker"
    if any(call.name in MARKERS and call.args[0] == f'"{END}"' for call in calls):
        return "the writer passed the end marker"
    last = calls[-1]
    if last.result != "?" or _normalized(last, after.run) != _normalized(after.point.call, clean_run):
        return f"killed in {_short(_normalized(last, after.run))} = {last.result}, not the intended call"
    return None


def _check_kill(
    after: Aftermath,
    protocol: str,
    old: dict[str, Any],
    new: dict[str, Any],
    real: str,
) -> dict[str, Any]:
    """The aftermath of one kill, before the sweep; returns the snapshot without temps."""
    point, problems = after.point, after.problems
    if problems:
        return {}
    now = _snapshot(after.run / "work")
    temps = after.temps = sorted(relative for relative in now if _is_temp(relative))
    kept = {relative: entry for relative, entry in now.items() if not _is_temp(relative)}
    expected = new if point.publishes else old
    if kept != expected:
        outcome = "new" if kept == new else "old" if kept == old else "neither"
        problems.append(
            f"expected the {'new' if point.publishes else 'old'} state, found {outcome}: " + _diff(expected, kept)
        )
    if real in kept:
        content = kept[real][1]
        assert isinstance(content, bytes)
        problem = _torn(protocol, content)
        if problem:
            problems.append(problem)
    if len(temps) != point.temps:
        problems.append(f"{len(temps)} temp names left ({temps}), the trace says {point.temps}")
    for relative in temps:
        parsed = parse_temp_name(os.path.basename(relative))
        if parsed != (host_tag(), after.pid) or not os.path.basename(relative).startswith(f".{Path(real).name}."):
            problems.append(f"temp {relative} is not the killed writer's ({after.pid}) temp for {real}")
        if os.path.dirname(relative) != os.path.dirname(real):
            problems.append(f"temp {relative} is not in the directory of {real}")
    return kept


def _torn(protocol: str, content: bytes) -> str | None:
    """Why ``content`` is not a complete version of the protocol's file, or None."""
    try:
        if protocol == "update-locked":
            data = json.loads(content)
            blob = data["blob"]
            if hashlib.sha256(f"{data['count']}:{blob}".encode()).hexdigest() != data["check"]:
                return f"counter {data['count']} fails its checksum"
        else:
            verify(content)
    except (ValueError, KeyError, TypeError) as exc:
        return f"torn content: {exc}"
    return None


def _diff(expected: dict[str, Any], found: dict[str, Any]) -> str:
    lines = []
    for relative in sorted(set(expected) | set(found)):
        want, got = expected.get(relative), found.get(relative)
        if want != got:
            describe = [
                "absent"
                if entry is None
                else f"{entry[0]} {len(entry[1] or '')} bytes mode {entry[2]:o} owner {entry[3]}:{entry[4]}"
                for entry in (want, got)
            ]
            lines.append(f"{relative}: expected {describe[0]}, found {describe[1]}")
    return "; ".join(lines)


def _sweep(directories: list[Path]) -> dict[str, list[str]]:
    """``sweep(older_than=0)`` of each directory, in one fresh process; the paths removed."""
    script = (
        "import json, sys\n"
        "from tests import _variant\n"
        "_variant.apply()\n"
        "import atomicwrite\n"
        "print(json.dumps({d: atomicwrite.sweep(d, older_than=0) for d in json.loads(sys.argv[1])}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps([str(directory) for directory in directories])],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    removed: dict[str, list[str]] = json.loads(done.stdout)
    return removed


def _untouched_run(tmp_path: Path, protocol: str) -> tuple[Path, dict[str, Any], Path, Path, dict[str, Any]]:
    """The protocol's starting directory (the template) and a traced, untouched run of its
    writer: ``(template, old state, the run's directory, its strace log, new state)``.  The log
    lists the kill points; the run's outcome is the "new" state."""
    template = tmp_path / "template"
    template.mkdir()
    done = _run_writer("setup", {"protocol": protocol, "work": str(template)})
    assert done.returncode == 0, done.stderr
    old = _snapshot(template)
    assert not any(_is_temp(relative) for relative in old), old
    clean = tmp_path / "runs" / "clean"
    clean.mkdir(parents=True)
    _copy(template, clean)
    log = clean / "strace.log"
    traced = _run_writer(
        "write",
        _spec(protocol, clean),
        ["-s", "512", "-o", str(log), "-e", f"trace={_optional(KILLABLE + MARKERS)}"],
    )
    _skip_if_untraceable(traced)
    assert traced.returncode == 0, traced.stderr
    new = _snapshot(clean / "work")
    assert not any(_is_temp(relative) for relative in new), new
    return template, old, clean, log, new


def _kill_at_each(
    points: list[KillPoint], template: Path, tmp_path: Path, protocol: str, clean: Path
) -> list[Aftermath]:
    """Every kill point, a few writers at a time, each in its own copy of the template."""
    runs = []
    for number, point in enumerate(points):
        run = tmp_path / "runs" / f"{number:03d}"
        run.mkdir()
        runs.append((point, run))
    with ThreadPoolExecutor(PARALLEL) as pool:
        return list(pool.map(lambda job: _kill(job[0], template, job[1], protocol, clean), runs))


def _calls(points: list[KillPoint]) -> str:
    """How many kill points each system call gave, for the end-of-run summary."""
    return " ".join(f"{name}x{count}" for name, count in sorted(Counter(p.name for p in points).items()))


def _failures(aftermaths: list[Aftermath], clean: Path) -> list[str]:
    """Every kill point that found a problem, one line each."""
    return [
        f"killed at {after.point.name} #{after.point.when} "
        f"({_short(_normalized(after.point.call, clean))}): " + "; ".join(after.problems)
        for after in aftermaths
        if after.problems
    ]


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_kill_at_every_call(tmp_path: Path, local_variant: str, protocol: str) -> None:
    _strace()
    written, real, user_files = PROTOCOLS[protocol]
    template, old, clean, log, new = _untouched_run(tmp_path, protocol)
    assert real in new, new
    assert new[real] != old.get(real), "the untouched run did not change the target"
    content = new[real][1]
    assert isinstance(content, bytes)
    assert _torn(protocol, content) is None
    if written != real:
        assert new[written] == old[written] == ("link", real, 0, *old[written][3:])
    points = _kill_points(_parse(log.read_text()), os.path.basename(real))
    assert len(points) >= MIN_KILL_POINTS, [f"{p.name}#{p.when}" for p in points]

    aftermaths = _kill_at_each(points, template, tmp_path, protocol, clean)
    kept = [_check_kill(after, protocol, old, new, real) for after in aftermaths]

    # A fresh process sweeps: exactly the temps go, and the user sees only their own files.
    directories = sorted({after.run / "work" / os.path.dirname(real) for after in aftermaths})
    removed = _sweep(directories)
    for after, before_sweep in zip(aftermaths, kept, strict=True):
        if after.problems:
            continue
        swept = sorted(removed[str(after.run / "work" / os.path.dirname(real))])
        if swept != [str(after.run / "work" / relative) for relative in after.temps]:
            after.problems.append(f"sweep removed {swept}, not the temps {after.temps}")
        now = _snapshot(after.run / "work")
        if now != before_sweep:
            after.problems.append(f"after the sweep: {_diff(before_sweep, now)}")
        expected_files = user_files if after.point.publishes or protocol != "create-exclusive" else set()
        if set(now) != expected_files:
            after.problems.append(f"after the sweep the user sees {sorted(now)}, not {sorted(expected_files)}")

    outcomes = Counter("new" if after.point.publishes else "old" for after in aftermaths)
    misses = [
        f"{after.point.name} #{after.point.when}: {_short(miss, 160)}" for after in aftermaths for miss in after.misses
    ]
    TERMINAL_SUMMARY.setdefault("kill points tried (SIGKILL on entering each call)", []).append(
        f"{protocol:17} {local_variant:10} {len(points):3} kill points"
        f" ({outcomes['old']} old, {outcomes['new']} new): {_calls(points)}"
        + (f"; {len(misses)} missed and retried: " + " | ".join(misses) if misses else "")
    )
    failures = _failures(aftermaths, clean)
    assert not failures, f"{len(failures)} of {len(points)} kill points failed:\n" + "\n".join(failures)
    assert outcomes["old"], outcomes
    assert outcomes["new"], outcomes


def test_kill_exclusive_create_over_a_symlink(tmp_path: Path, local_variant: str) -> None:
    """``"xb"`` over a dangling symlink, then over one planted mid-write: whichever call the writer
    dies in, no file ever appears where a link points, the links stay, and a sweep leaves only them."""
    _strace()
    protocol = "create-over-link"
    template, old, clean, log, new = _untouched_run(tmp_path, protocol)
    assert sorted(old) == ["elsewhere", "target.bin"]
    assert old["target.bin"][:3] == ("link", "elsewhere/target.bin", 0)
    assert new == {**old, "late.bin": ("link", "elsewhere/late.bin", 0, *old["target.bin"][3:])}, new
    points = _kill_points(_parse(log.read_text()), "late.bin", publishes=False)
    assert len(points) >= MIN_KILL_POINTS, [f"{p.name}#{p.when}" for p in points]
    assert any(p.name in PUBLISHING for p in points), "the refused publishing call is a kill point too"

    aftermaths = _kill_at_each(points, template, tmp_path, protocol, clean)
    kept_before_sweep = []
    for after in aftermaths:
        now = _snapshot(after.run / "work")
        after.temps = sorted(relative for relative in now if _is_temp(relative))
        kept = {relative: entry for relative, entry in now.items() if not _is_temp(relative)}
        kept_before_sweep.append(kept)
        if kept not in (old, new):
            after.problems.append(f"neither the old nor the new links: {_diff(new, kept)}")
        if len(after.temps) != after.point.temps:
            count = len(after.temps)
            after.problems.append(f"{count} temp names left ({after.temps}), the trace says {after.point.temps}")
    removed = _sweep(sorted({after.run / "work" for after in aftermaths}))
    for after, kept in zip(aftermaths, kept_before_sweep, strict=True):
        swept = sorted(removed[str(after.run / "work")])
        if swept != [str(after.run / "work" / relative) for relative in after.temps]:
            after.problems.append(f"sweep removed {swept}, not the temps {after.temps}")
        if _snapshot(after.run / "work") != kept:
            after.problems.append("the sweep touched something that is not a temp")

    TERMINAL_SUMMARY.setdefault("kill points tried (SIGKILL on entering each call)", []).append(
        f"{protocol:17} {local_variant:10} {len(points):3} kill points (none may publish): {_calls(points)}"
    )
    failures = _failures(aftermaths, clean)
    assert not failures, f"{len(failures)} of {len(points)} kill points failed:\n" + "\n".join(failures)
