"""Hostile conditions: sustained load, thousands of targets, awkward and broken paths, look-alike
files in a swept directory, and local users who plant symlinks or try to read a secret mid-write.

Every case checks what is on disk afterwards (bytes, modes, the directory's listing), and the
error a bad input gives (its type, errno and message), for both local variants.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import atomicwrite
from atomicwrite import (
    AtomicOSError,
    TargetNotFoundError,
    atomic_open,
    atomic_save,
)
from atomicwrite._local import posix as _posix
from atomicwrite._names import host_tag, parse_temp_name, temp_name
from tests._workers import INITIAL_WRITER, ROOT, collect, payload, release, spawn, touch, verify
from tests.conftest import listing

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX paths, modes, FIFOs and users")


def temps(directory: Path) -> list[str]:
    return [name for name in listing(directory) if parse_temp_name(name) is not None]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


def _open_fds() -> int:
    """Open descriptors other than sockets: a write opens files and directories, never sockets,
    while the store servers' idle connections (earlier tests') close on their own timers."""
    if not os.path.isdir("/proc/self/fd"):
        return 0
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            continue  # the descriptor listdir itself used, closed by now
    return count


# --- sustained load: 8 writers and 8 readers on one target ---------------------------------------

# A writer that replaces the target until its deadline, alternating durability by writer id,
# streaming each version in chunks; reports how many versions it published.
TIMED_WRITER = r"""
import sys, time
from pathlib import Path
from typing import Any

from tests import _variant

_variant.apply()

from atomicwrite import atomic_open
from tests._workers import barrier, payload, report

target, wid, seconds, sync = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4])
durability = ("none", "full")[wid % 2]
barrier(sync, "load", wid)
deadline = time.monotonic() + seconds
seq = 0
while time.monotonic() < deadline:
    data = payload(wid, seq)
    with atomic_open(target, "wb", durability=durability) as file:
        for start in range(0, len(data), 64_000):
            file.write(data[start : start + 64_000])
    seq += 1
report({"writer": wid, "writes": seq})
"""


@pytest.mark.slow
def test_sustained_load_every_read_complete(workdir: Path, tmp_path: Path) -> None:
    writers, readers, seconds = 8, 8, 5.0
    sync = tmp_path / "sync"
    sync.mkdir()
    target = workdir / "shared.bin"
    target.write_bytes(payload(INITIAL_WRITER, 0))
    stop = sync / "stop"
    reader_procs = [spawn("reader", target, stop, sync / f"reader-ready.{i}") for i in range(readers)]
    writer_procs: list[subprocess.Popen[str]] = []
    try:
        # Started together (16 interpreters take a while on 2 cores); the writers wait for the
        # barrier, released once every reader is reading.
        writer_procs = [
            subprocess.Popen(
                [sys.executable, "-c", TIMED_WRITER, str(target), str(wid), str(seconds), str(sync)],
                cwd=ROOT,
                env=_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for wid in range(writers)
        ]
        for i, proc in enumerate(reader_procs):
            while not (sync / f"reader-ready.{i}").exists():
                assert proc.poll() is None, f"reader {i} ended early: {proc.communicate()}"
                time.sleep(0.001)
        release(sync, "load", writers, writer_procs)
        started = time.monotonic()
        reports = [collect(proc, timeout=120) for proc in writer_procs]
        elapsed = time.monotonic() - started
    finally:
        touch(stop)
        reader_reports = [collect(proc, timeout=60) for proc in reader_procs]
        for proc in writer_procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()

    assert elapsed < seconds + 30, f"the writers ran {elapsed:.1f} s for a {seconds} s load"
    writes = {report["writer"]: report["writes"] for report in reports}
    assert sorted(writes) == list(range(writers))
    assert all(count >= 5 for count in writes.values()), writes
    for report in reader_reports:
        # Every read was one complete version, and no writer's versions went back in time.
        assert report["error_count"] == 0, report["errors"]
        assert report["reads"] > 500, report
        assert report["versions"] > 20, report
    wid, seq = verify(target.read_bytes())
    assert seq == writes[wid] - 1, "the target is the last version of the writer that published last"
    assert listing(workdir) == ["shared.bin"]


# --- thousands of targets in one directory ---------------------------------------------------------


@pytest.mark.slow
def test_thousands_of_targets_in_one_directory(workdir: Path) -> None:
    """3000 targets written by 4 threads at once (durability "none": the names are the point)."""
    count = 3000
    fds = _open_fds()

    def content(i: int) -> bytes:
        return f"target {i}\n".encode() * (1 + i % 50)

    def write(i: int) -> None:
        with atomic_open(workdir / f"t{i:05d}.bin", "wb" if i % 2 else "xb", durability="none") as file:
            file.write(content(i))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write, range(count)))
    assert listing(workdir) == [f"t{i:05d}.bin" for i in range(count)]
    for i in range(count):
        assert (workdir / f"t{i:05d}.bin").read_bytes() == content(i)
    assert atomicwrite.sweep(workdir, older_than=0) == []
    assert _open_fds() == fds, "descriptors leaked"


# --- awkward names and paths ------------------------------------------------------------------------

AWKWARD = [
    "with space.txt",
    " leading and trailing ",
    "tab\there",
    "new\nline",
    "ünïcødé.bin",
    "日本語のファイル名",
    "emoji-🙂-name",
    "-starts-with-dash",
    ".hidden",
    "..two-dots",
    "name.aw00112233.1.deadbeef.tmp",  # a user's file that only looks like a temp (no leading dot)
]


@pytest.mark.parametrize("name", AWKWARD, ids=[repr(name) for name in AWKWARD])
def test_awkward_names(workdir: Path, name: str) -> None:
    target = workdir / name
    with atomic_open(target, "xb") as file:
        file.write(b"first")
        file.flush()
        # The temp (a named one, or none at all with O_TMPFILE) is ours, and the target's.
        for temp in temps(workdir):
            assert temp.startswith(f".{name}.aw{host_tag()}.{os.getpid()}.")
    assert file.result is not None
    assert file.result.target == str(target)
    atomic_save("second ✓", target, "text")
    assert target.read_text(encoding="utf-8") == "second ✓"
    assert listing(workdir) == [name]


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("n" * 255, id="ascii"),
        pytest.param("é" * 127 + "x", id="two-byte-chars"),
        pytest.param("x" + "日" * 84 + "yz", id="three-byte-chars"),
    ],
)
def test_name_of_exactly_name_max_bytes(workdir: Path, local_variant: str, name: str) -> None:
    assert len(name.encode()) == 255
    target = workdir / name
    seen: list[str] = []
    with atomic_open(target, "wb") as file:
        file.write(b"long name" * 1000)
        file.flush()
        seen = temps(workdir)
    if local_variant == "named-temp":
        # The temp name embeds as much of the name as fits, cut on a character boundary.
        (temp,) = seen
        assert len(temp.encode()) <= 255
        assert parse_temp_name(temp) is not None
        assert name.startswith(temp.split(".aw")[0][1:])
    assert target.read_bytes() == b"long name" * 1000
    assert listing(workdir) == [name]
    # Replacing it works the same way, and a sweep finds nothing of ours.
    atomic_save(b"again", target, "bytes")
    assert target.read_bytes() == b"again"
    assert atomicwrite.sweep(workdir, older_than=0) == []
    assert listing(workdir) == [name]


@pytest.mark.parametrize("mode", ["wb", "xb"])
def test_name_longer_than_name_max_fails_clearly(workdir: Path, mode: str) -> None:
    target = workdir / ("n" * 256)
    fds = _open_fds()
    with pytest.raises(AtomicOSError) as caught:
        atomic_open(target, mode)
    error = caught.value
    assert error.errno == errno.ENAMETOOLONG
    assert isinstance(error, OSError)
    assert str(target) in str(error)
    with pytest.raises(AtomicOSError) as again:
        atomic_save(b"data", target, "bytes")
    assert again.value.errno == errno.ENAMETOOLONG
    assert listing(workdir) == []
    assert _open_fds() == fds


def test_relative_paths(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (workdir / "sub").mkdir()
    monkeypatch.chdir(workdir)
    for relative, landed in [
        ("plain.bin", workdir / "plain.bin"),
        ("./dot.bin", workdir / "dot.bin"),
        ("sub/../up.bin", workdir / "up.bin"),
        ("sub/inner.bin", workdir / "sub" / "inner.bin"),
    ]:
        result = atomic_save(relative.encode(), relative, "bytes")
        assert landed.read_bytes() == relative.encode()
        assert os.path.isabs(result.target), result.target
        assert os.path.samefile(result.target, landed)
    # And a path object, relative too.
    atomic_save(b"path", Path("sub") / "path.bin", "bytes")
    assert listing(workdir) == ["dot.bin", "plain.bin", "sub", "up.bin"]
    assert listing(workdir / "sub") == ["inner.bin", "path.bin"]


def test_home_directory_expansion(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(workdir))
    result = atomic_save(b"home", "~/home.bin", "bytes")
    assert result.target == str(workdir / "home.bin")
    with atomic_open("~/other.txt", "x", encoding="utf-8") as file:
        file.write("tilde")
    assert (workdir / "home.bin").read_bytes() == b"home"
    assert (workdir / "other.txt").read_text(encoding="utf-8") == "tilde"
    assert listing(workdir) == ["home.bin", "other.txt"]


@pytest.mark.parametrize("mode", ["wb", "xb"])
def test_directory_removed_mid_write(workdir: Path, mode: str) -> None:
    directory = workdir / "doomed"
    directory.mkdir()
    target = directory / "target"
    fds = _open_fds()
    with pytest.raises(FileNotFoundError) as caught, atomic_open(target, mode) as file:
        file.write(b"x" * 100_000)
        file.flush()
        shutil.rmtree(directory)  # rm -rf from someone else: the named temp goes with it
    error = caught.value
    assert isinstance(error, TargetNotFoundError)
    assert error.errno == errno.ENOENT
    assert str(target) in str(error)
    assert file.result is None
    # Nothing came back: not the directory, not a temp, not the target.
    assert listing(workdir) == []
    assert _open_fds() == fds


@pytest.mark.parametrize("follow_symlinks", [True, False])
def test_parent_is_a_symlink_loop(workdir: Path, follow_symlinks: bool) -> None:
    (workdir / "a").symlink_to("b")
    (workdir / "b").symlink_to("a")
    target = workdir / "a" / "file"
    fds = _open_fds()
    with pytest.raises(AtomicOSError) as caught:
        atomic_open(target, "wb", follow_symlinks=follow_symlinks)
    error = caught.value
    assert error.errno == errno.ELOOP
    assert str(target) in str(error)
    assert "symbolic links" in str(error)
    assert sorted((entry, os.readlink(workdir / entry)) for entry in listing(workdir)) == [("a", "b"), ("b", "a")]
    assert _open_fds() == fds


def test_target_is_a_symlink_loop(workdir: Path) -> None:
    (workdir / "self").symlink_to("self")
    with pytest.raises(AtomicOSError) as caught:
        atomic_save(b"data", workdir / "self", "bytes")
    assert caught.value.errno == errno.ELOOP
    assert str(workdir / "self") in str(caught.value)
    assert listing(workdir) == ["self"]
    assert os.readlink(workdir / "self") == "self"


# --- sweeping a directory of look-alikes ----------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_sweep_removes_no_look_alike(workdir: Path, tmp_path: Path) -> None:
    host, pid = host_tag(), _dead_pid()
    ours = f".x.aw{host}.{pid}.deadbeef.tmp"
    victim = tmp_path / "victim"
    victim.write_bytes(b"victim")
    files = [
        ".x.tmp",
        ".x.aw123.tmp",
        f"x.aw{host}.{pid}.deadbeef.tmp",  # no leading dot
        "x.aw0011223344.1.deadbeef.tmp",
        f".x.aw{host[:7]}.{pid}.deadbeef.tmp",  # 7 hex digits of host
        f".x.aw{host}0.{pid}.deadbeef.tmp",  # 9
        f".x.aw{host}.{pid}.deadbee.tmp",  # 7 hex digits of random
        f".x.aw{host}.{pid}.deadbeef0.tmp",  # 9
        f".x.aw{host}.{pid}.DEADBEEF.tmp",  # upper-case hex
        f".x.aw{host}.{pid}.deadbeef.tmp.bak",
        f".x.aw{host}.{pid}.deadbeef.TMP",
        f".x.aw{host}.12345678901.deadbeef.tmp",  # an 11-digit pid
        f".x.aw{host}.-1.deadbeef.tmp",
        f"..aw{host}.{pid}.deadbeef.tmp",  # no name at all
    ]
    for name in files:
        (workdir / name).write_bytes(name.encode())
    specials = {
        f".dir.aw{host}.{pid}.00000001.tmp": "dir",
        f".link.aw{host}.{pid}.00000002.tmp": "link",
        f".dangling.aw{host}.{pid}.00000003.tmp": "dangling",
        f".fifo.aw{host}.{pid}.00000004.tmp": "fifo",
    }
    for name, kind in specials.items():
        assert parse_temp_name(name) is not None, name  # named exactly like ours
        if kind == "dir":
            (workdir / name).mkdir()
            (workdir / name / "inside").write_bytes(b"keep")
        elif kind == "link":
            (workdir / name).symlink_to(victim)
        elif kind == "dangling":
            (workdir / name).symlink_to(tmp_path / "nowhere")
        else:
            os.mkfifo(workdir / name)
    (workdir / ours).write_bytes(b"stale")  # the one real leftover: a dead writer's temp
    day_ago = time.time() - 86_400
    for name in listing(workdir):  # old enough for any sweep: age protects none of them
        os.utime(workdir / name, (day_ago, day_ago), follow_symlinks=False)
    before = {name: (workdir / name).lstat().st_mode for name in listing(workdir)}

    assert atomicwrite.sweep(workdir, older_than=0, dry_run=True) == [str(workdir / ours)]
    assert atomicwrite.sweep(workdir, older_than=0) == [str(workdir / ours)]
    del before[ours]
    assert {name: (workdir / name).lstat().st_mode for name in listing(workdir)} == before
    for name in files:
        assert (workdir / name).read_bytes() == name.encode()
    assert listing(workdir / f".dir.aw{host}.{pid}.00000001.tmp") == ["inside"]
    assert os.readlink(workdir / f".link.aw{host}.{pid}.00000002.tmp") == str(victim)
    assert victim.read_bytes() == b"victim"
    assert not (tmp_path / "nowhere").exists()
    assert atomicwrite.sweep(workdir, older_than=0) == []


# --- hostile local users -------------------------------------------------------------------------


@pytest.mark.parametrize("dangling", [False, True], ids=["victim-exists", "victim-absent"])
@pytest.mark.parametrize("mode", ["wb", "xb"])
def test_planted_symlink_at_the_temp_name_is_never_followed(
    workdir: Path, tmp_path: Path, local_variant: str, monkeypatch: pytest.MonkeyPatch, mode: str, dangling: bool
) -> None:
    """Another user guesses the temp name and plants a symlink there, pointing at a file of ours."""
    victim = tmp_path / "victim"
    if not dangling:
        victim.write_bytes(b"victim's data")
        victim.chmod(0o644)
    guessed = bytes.fromhex("deadbeef")
    draws: list[bytes] = []
    real_urandom = os.urandom

    def predictable(size: int) -> bytes:
        value = guessed if not draws else real_urandom(size)
        draws.append(value)
        return value

    planted = workdir / f".target.aw{host_tag()}.{os.getpid()}.deadbeef.tmp"
    planted.symlink_to(victim)
    target = workdir / "target"
    if mode == "wb":
        target.write_bytes(b"old")
    monkeypatch.setattr(os, "urandom", predictable)
    with atomic_open(target, mode) as file:
        file.write(b"new content")
    monkeypatch.undo()
    if local_variant == "o_tmpfile" and mode == "xb":
        assert draws == [], "an exclusive O_TMPFILE write is linked straight to the target: no temp name"
    else:
        # The guessed name was tried first, found taken, and another one used.
        assert len(draws) >= 2, draws
        assert draws[0] == guessed
    assert target.read_bytes() == b"new content"
    assert not target.is_symlink()
    # The victim is untouched (or still absent), and the planted link is still the attacker's.
    if dangling:
        assert not victim.exists()
    else:
        assert victim.read_bytes() == b"victim's data"
        assert stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert os.readlink(planted) == str(victim)
    assert listing(workdir) == sorted([planted.name, "target"])


def test_a_commit_naming_its_temp_is_never_swept(
    workdir: Path, local_variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit names its O_TMPFILE just before closing and renaming it.  A sweep that finds the
    name then, however long ago the content was written, must leave it: the temp is locked
    before it gets its name."""
    if local_variant != "o_tmpfile":
        pytest.skip("a named temp is locked from its creation (test_sweep_removes_only_dead_leftovers)")

    target = workdir / "target"
    target.write_bytes(b"old")
    real_link = _posix.PosixPendingWrite._link_tmpfile
    swept: list[list[str]] = []

    def link_then_sweep(self: Any, fd: int, name: str) -> None:
        real_link(self, fd, name)
        day_ago = time.time() - 86_400
        os.utime(workdir / name, (day_ago, day_ago))  # written long ago, as far as mtime tells
        swept.append(atomicwrite.sweep(workdir, older_than=60))

    monkeypatch.setattr(_posix.PosixPendingWrite, "_link_tmpfile", link_then_sweep)
    with atomic_open(target, "wb") as file:
        file.write(b"new")
    assert swept == [[]]
    assert target.read_bytes() == b"new"
    assert listing(workdir) == ["target"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
def test_a_forked_child_names_its_temps_with_its_own_pid() -> None:
    """The pid in temp names is kept per process (sweep judges a writer's liveness by it): a
    forked child must name its temps with its own pid, not the one its parent cached."""
    temp_name("x")  # the parent's part of the names is built before the fork
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.write(write_end, "\n".join(temp_name("x") for _ in range(16)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child_names = pipe.read().decode().split("\n")
    os.waitpid(child, 0)
    assert len(child_names) == 16
    assert {parse_temp_name(name) for name in child_names} == {(host_tag(), child)}
    assert parse_temp_name(temp_name("x")) == (host_tag(), os.getpid())


POLLER = r"""
import json, os, stat, sys, time

directory, stop = sys.argv[1], sys.argv[2]
dropped = False
if os.geteuid() == 0:
    # Look as another user would: nobody, who may list the directory but must read nothing.
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    dropped = True
print("ready", flush=True)
polls = stats = temps = readable = 0
exposed = []
while not os.path.exists(stop):
    polls += 1
    for entry in os.listdir(directory):
        path = os.path.join(directory, entry)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        stats += 1
        temps += ".aw" in entry
        if stat.S_IMODE(mode) & 0o077:
            exposed.append(f"{entry}: mode {stat.S_IMODE(mode):o}")
        if dropped:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue
            os.close(fd)
            readable += 1
            exposed.append(f"{entry}: opened by uid {os.getuid()}")
print(json.dumps({"polls": polls, "stats": stats, "temps": temps, "readable": readable,
                  "dropped": dropped, "exposed": exposed[:20], "exposed_count": len(exposed)}), flush=True)
"""


@pytest.fixture
def shared_dir(local_variant: str) -> Iterator[Path]:
    """A directory other users may list (0o755 all the way down), as /tmp's own would be."""
    base = Path(tempfile.mkdtemp(prefix="atomicwrite-hostile-"))
    try:
        base.chmod(0o755)
        directory = base / "shared"
        directory.mkdir()
        directory.chmod(0o755)
        yield directory
    finally:
        shutil.rmtree(base)


def test_secret_is_never_readable_by_others_mid_write(shared_dir: Path, local_variant: str) -> None:
    stop = shared_dir.parent / "stop"
    poller = subprocess.Popen(
        [sys.executable, "-c", POLLER, str(shared_dir), str(stop)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    secret = b"s3cr3t " * 20_000
    # A positive control: a file others may read, which the poller must notice.
    (shared_dir / "public.txt").write_bytes(b"public")
    (shared_dir / "public.txt").chmod(0o644)
    try:
        assert poller.stdout is not None
        assert poller.stdout.readline().strip() == "ready", poller.stderr.read() if poller.stderr else ""
        for i in range(60):
            # permissions=0o600 under the usual umask, replacing and creating.
            name = f"key{i % 3}"
            if i % 6 == 5:
                (shared_dir / name).unlink()
            with atomic_open(shared_dir / name, "wb", permissions=0o600, durability="file") as file:
                for start in range(0, len(secret), 32_768):
                    file.write(secret[start : start + 32_768])
                    file.flush()
        mask = os.umask(0o077)
        try:
            for i in range(60):
                # No permissions given: a new file gets 0o666 & ~umask, which is 0o600 here.
                name = f"token{i % 3}"
                if i % 6 == 5:
                    (shared_dir / name).unlink()
                mode = "wb" if (shared_dir / name).exists() else "xb"
                with atomic_open(shared_dir / name, mode, durability="file") as file:
                    for start in range(0, len(secret), 32_768):
                        file.write(secret[start : start + 32_768])
                        file.flush()
        finally:
            os.umask(mask)
    finally:
        touch(stop)
        out, err = poller.communicate(timeout=60)
    assert poller.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["dropped"] == (os.geteuid() == 0), report
    exposed = [entry for entry in report["exposed"] if not entry.startswith("public.txt:")]
    assert exposed == [], report["exposed"]
    # The poller could see and flag what others may read: the control, each time it looked.
    assert report["polls"] > 20, report
    assert report["exposed_count"] == report["polls"] * (2 if report["dropped"] else 1), report
    assert report["readable"] == (report["polls"] if report["dropped"] else 0), report
    if local_variant == "named-temp":
        assert report["temps"] > 0, f"the poller never saw a temp file: {report}"
    (shared_dir / "public.txt").unlink()
    for name in listing(shared_dir):
        assert stat.S_IMODE((shared_dir / name).stat().st_mode) == 0o600, name
        assert (shared_dir / name).read_bytes() == secret
    assert listing(shared_dir) == ["key0", "key1", "key2", "token0", "token1", "token2"]
