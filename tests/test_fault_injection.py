"""Real failing system calls: strace makes the kernel answer one call of a writer with an errno.

Each case runs a writer process (tests/_inject.py) whose Nth ``write``, ``fsync``, ``renameat``,
``linkat``... fails for real -- the call is not made and returns ``-1 ERRNO`` -- and checks what the
writer reported (its exception, as JSON), the target's bytes, the directory's listing and, where
it matters, the trace of what the library did after the failure.  Then the same on a real small
ext4 file system (a loop-mounted image) that fills up.

strace is needed: without it the strace cases skip, unless ``ATOMICWRITE_REQUIRE_STRACE=1`` (CI)
makes that a failure.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from atomicwrite import AtomicWriteError, NoSpaceError, atomic_open
from tests import _inject
from tests._inject import PUBLISHING, Trace, dry_trace, inject, spec, unquote
from tests._workers import payload
from tests.conftest import listing

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="strace errno injection and loop mounts are Linux-only")

OLD = b"old content\n" * 10
NEW = payload(1, 1, 3 << 20)  # what the writer of tests/_inject.py writes (spec's default size)


def _old(mode: str) -> bytes | None:
    """The target before the write: OLD to replace, nothing for an exclusive create."""
    return OLD if mode == "wb" else None


def _assert_untouched(work: Path, mode: str) -> None:
    """The old state exactly: the old bytes (or no target at all), and nothing else."""
    if mode == "wb":
        assert (work / "target").read_bytes() == OLD
        assert listing(work) == ["target"]
    else:
        assert listing(work) == []


def _assert_typed(error: dict[str, Any] | None, cls: str, code: int, work: Path) -> None:
    """The writer raised ``cls``, one of ours and an OSError, with ``code``, naming the target."""
    assert error is not None, "the write succeeded"
    assert error["type"] == cls, error
    assert "AtomicWriteError" in error["mro"], error
    assert "OSError" in error["mro"], error
    assert error["errno"] == code, error
    assert f"cannot write {str(work / 'target')!r}" in error["message"], error


def _temp_names(trace: Trace) -> set[str]:
    """Every temp name the write made: created with O_CREAT, or linked from an O_TMPFILE."""
    dir_fd = trace.dir_fd()
    names = set()
    for _, call in trace.window():
        if call.error is not None:
            continue
        if call.name == "openat" and call.args[0] == dir_fd and "O_CREAT" in call.args[2]:
            names.add(unquote(call.args[1]))
        elif call.name == "linkat" and call.args[1].startswith('"/proc/self/fd/') and unquote(call.args[3]) != "target":
            names.add(unquote(call.args[3]))
    return names


def _assert_temps_unlinked(trace: Trace, after: int) -> None:
    """Every temp name the write made was unlinked, after the failed call, relative to the directory."""
    dir_fd = trace.dir_fd()
    unlinked = {
        unquote(call.args[1])
        for call in trace.after(after)
        if call.name == "unlinkat" and call.args[0] == dir_fd and call.error is None
    }
    assert _temp_names(trace) == unlinked, (_temp_names(trace), unlinked)


def _publishes(call: _inject.Call) -> bool:
    """Whether the call links or renames something onto the target's name."""
    if call.name not in PUBLISHING:
        return False
    destination = call.args[1] if call.name in ("link", "rename") else call.args[3]
    return unquote(destination) == "target"


def _case(tmp_path: Path, variant: str, mode: str, **options: Any) -> tuple[dict[str, Any], Trace]:
    """The writer's spec for ``tmp_path/work`` and the untouched run's trace."""
    writer = spec(tmp_path, mode=mode, **options)
    return writer, dry_trace(tmp_path, variant, _old(mode), writer)


def _on(trace: Trace, name: str, fd: str) -> list[int]:
    return trace.find(lambda _t, call: call.name == name and call.args[0] == fd, f"{name}({fd}, ...)")


# --- write() fails: full disk, quota, I/O error ------------------------------------------------


@pytest.mark.parametrize(
    ("code", "nth", "cls"),
    [
        pytest.param("ENOSPC", 0, "NoSpaceError", id="ENOSPC-first-write"),
        pytest.param("ENOSPC", 1, "NoSpaceError", id="ENOSPC-second-write"),
        pytest.param("EDQUOT", 0, "NoSpaceError", id="EDQUOT"),
        pytest.param("EIO", 1, "AtomicOSError", id="EIO"),
    ],
)
@pytest.mark.parametrize("mode", ["wb", "xb"])
def test_write_fails(
    workdir: Path, tmp_path: Path, local_variant: str, mode: str, code: str, nth: int, cls: str
) -> None:
    writer, dry = _case(tmp_path, local_variant, mode)
    writes = _on(dry, "write", dry.temp_fd())
    assert len(writes) == 2, "the payload goes out as two writes past the buffer"
    index = writes[nth]
    run = inject(tmp_path, writer, _old(mode), "write", code, str(dry.ordinal(index)), dry.normalized(index))
    report = run.report
    _assert_typed(report["error"], cls, getattr(errno, code), workdir)
    assert "writing the temp file" in report["error"]["message"]
    _assert_untouched(workdir, mode)
    # After the failed write: nothing flushed, nothing published, every temp name unlinked.
    failed = run.trace.injected()
    assert len(failed) == 1, failed
    later = run.trace.after(failed[0])
    assert [call.name for call in later if call.name in ("fsync", "fdatasync", *PUBLISHING)] == []
    _assert_temps_unlinked(run.trace, failed[0])


# --- fsync() of the temp fails: the data is lost, never publish it ("fsyncgate") ---------------


@pytest.mark.parametrize("mode", ["wb", "xb"])
def test_fsync_eio_is_never_retried_into_a_publish(
    workdir: Path, tmp_path: Path, local_variant: str, mode: str
) -> None:
    """After a failed fsync the kernel may have dropped the dirty pages and cleared the error: a
    second fsync would succeed on data that is gone.  The write must fail, for good."""
    writer, dry = _case(tmp_path, local_variant, mode, retry=True)
    temp_fd = dry.temp_fd()
    (index,) = _on(dry, "fsync", temp_fd)
    run = inject(tmp_path, writer, _old(mode), "fsync", "EIO", str(dry.ordinal(index)), dry.normalized(index))
    report = run.report
    _assert_typed(report["error"], "AtomicOSError", errno.EIO, workdir)
    assert "flushing the temp file" in report["error"]["message"]
    # Calling commit() again is refused, without touching the disk.
    retry = report["retry"]
    assert retry != "committed"
    assert retry["type"] == "AtomicWriteError", retry
    assert "discarded" in retry["message"], retry
    _assert_untouched(workdir, mode)
    (failed,) = run.trace.injected()
    later = run.trace.after(failed)
    # No second fsync (of the temp or the directory), no link or rename anywhere after it.
    assert [str(call) for call in later if call.name in ("fsync", "fdatasync", "sync_file_range")] == []
    assert [str(call) for call in later if call.name in PUBLISHING] == []
    assert [call.name for call in later if call.name == "close" and call.args[0] == temp_fd] == ["close"]
    _assert_temps_unlinked(run.trace, failed)


# --- the publishing call fails --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "cls"),
    [("EIO", "AtomicOSError"), ("EACCES", "AtomicPermissionError"), ("EXDEV", "CrossDeviceError")],
)
@pytest.mark.parametrize("mode", ["wb", "xb"])
def test_publishing_call_fails(
    workdir: Path, tmp_path: Path, local_variant: str, mode: str, code: str, cls: str
) -> None:
    """Every link/rename of the commit (O_TMPFILE naming, rename over the target, RENAME_NOREPLACE,
    linkat straight to the target), failed in turn."""
    writer, dry = _case(tmp_path, local_variant, mode)
    points = dry.find(lambda _t, call: call.name in PUBLISHING, "a link or rename")
    expected = {
        ("o_tmpfile", "wb"): ["linkat", "renameat"],
        ("o_tmpfile", "xb"): ["linkat"],
        ("named-temp", "wb"): ["renameat"],
        ("named-temp", "xb"): ["renameat2"],
    }[(local_variant, mode)]
    assert [dry.calls[i].name for i in points] == expected
    for index in points:
        name = dry.calls[index].name
        run = inject(tmp_path, writer, _old(mode), name, code, str(dry.ordinal(index)), dry.normalized(index))
        report = run.report
        _assert_typed(report["error"], cls, getattr(errno, code), workdir)
        _assert_untouched(workdir, mode)
        (failed,) = run.trace.injected()
        later = run.trace.after(failed)
        assert [str(call) for call in later if call.name in PUBLISHING] == [], name
        _assert_temps_unlinked(run.trace, failed)


@pytest.mark.parametrize("mode", ["wb", "xb"])
def test_close_of_the_temp_fails_eio(workdir: Path, tmp_path: Path, local_variant: str, mode: str) -> None:
    """close() is where NFS reports a deferred write error: checked, and never published past.

    An exclusive O_TMPFILE write closes its temp only after linking it as the target: the write is
    published by then, and the close must not report it as failed either.
    """
    writer, dry = _case(tmp_path, local_variant, mode)
    temp_fd = dry.temp_fd()
    (index,) = _on(dry, "close", temp_fd)
    run = inject(tmp_path, writer, _old(mode), "close", "EIO", str(dry.ordinal(index)), dry.normalized(index))
    report = run.report
    (failed,) = run.trace.injected()
    published_before = any(_publishes(call) for i, call in dry.window() if i < index)
    if published_before:
        assert report["error"] is None, f"the write was published, yet reported as failed: {report['error']}"
        assert (workdir / "target").read_bytes() == NEW
        assert listing(workdir) == ["target"]
        return
    _assert_typed(report["error"], "AtomicOSError", errno.EIO, workdir)
    assert "closing the temp file" in report["error"]["message"]
    _assert_untouched(workdir, mode)
    assert [str(call) for call in run.trace.after(failed) if call.name in PUBLISHING] == []
    _assert_temps_unlinked(run.trace, failed)


def test_renameat2_unsupported_falls_back_to_link(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system without RENAME_NOREPLACE (EINVAL): the exclusive publish is link + unlink.

    Only the named-temp variant publishes an exclusive write with renameat2 (an O_TMPFILE is
    linked straight to the target), so the writer runs that variant alone.
    """
    monkeypatch.setenv("ATOMICWRITE_TEST_VARIANT", "named-temp")
    workdir = tmp_path / "work"
    writer, dry = _case(tmp_path, "named-temp", "xb")
    (index,) = dry.find(lambda _t, call: call.name == "renameat2", "renameat2")
    run = inject(tmp_path, writer, None, "renameat2", "EINVAL", str(dry.ordinal(index)), dry.normalized(index))
    assert run.report["error"] is None, run.report
    assert (workdir / "target").read_bytes() == NEW
    assert listing(workdir) == ["target"]
    (failed,) = run.trace.injected()
    steps = [call.name for call in run.trace.after(failed) if call.name in (*PUBLISHING, "unlinkat")]
    assert steps == ["linkat", "unlinkat"], steps
    _assert_temps_unlinked(run.trace, failed)


# --- the directory fsync fails with EINVAL (CIFS, vboxsf, WSL DrvFs) ------------------------------


@pytest.mark.parametrize("accept", [False, True], ids=["default", "accept_weaker_durability"])
@pytest.mark.parametrize("mode", ["wb", "xb"])
def test_directory_fsync_einval(workdir: Path, tmp_path: Path, local_variant: str, mode: str, accept: bool) -> None:
    options = {"accept_weaker_durability": True} if accept else {}
    writer, dry = _case(tmp_path, local_variant, mode, **options)
    dir_fd = dry.dir_fd()
    (index,) = _on(dry, "fsync", dir_fd)
    # The directory's fsync is the write's last flush, after the publishing call.
    publish = dry.find(lambda _t, call: call.name in PUBLISHING, "a link or rename")[-1]
    assert publish < index
    run = inject(tmp_path, writer, _old(mode), "fsync", "EINVAL", str(dry.ordinal(index)), dry.normalized(index))
    report = run.report
    if accept:
        assert report["error"] is None, report
    else:
        error = report["error"]
        assert error is not None, "a refused directory fsync went unreported"
        assert error["type"] == "DurabilityError", error
        assert "AtomicWriteError" in error["mro"], error
        assert str(workdir / "target") in error["message"], error
        assert "accept_weaker_durability" in error["message"], error
    # What was achieved is reported, not assumed: the file was flushed, its directory entry not.
    assert report["durability"] == "file", report
    # Published all the same, complete, and the temp name is gone (renamed, never unlinked).
    assert (workdir / "target").read_bytes() == NEW
    assert listing(workdir) == ["target"]
    (failed,) = run.trace.injected()
    assert [call.name for call in run.trace.after(failed) if call.name in ("unlinkat", *PUBLISHING)] == []


# --- EINTR on every call of the write path ---------------------------------------------------------

# Python retries these on EINTR (PEP 475); the write must go through as if nothing happened.
RETRIED = ("openat", "write", "fsync", "fchmod", "flock")


def _eintr_cases(dry: Trace) -> list[tuple[str, str, str]]:
    """``(label, syscall, when)`` for each syscall of the write: every other call of it from its
    first one in the write (so that a retry can go through); each ``close`` on its own (Python
    never retries a close, so each one must be tried alone)."""
    cases = []
    seen: list[str] = []
    roles = {dry.dir_fd(): "the directory", dry.temp_fd(): "the temp file"}
    for index, call in dry.window():
        if call.name == "close":
            label = f"{dry.normalized(index)} of {roles.get(call.args[0], 'another file')}"
            cases.append((label, "close", str(dry.ordinal(index))))
        elif call.name not in seen:
            seen.append(call.name)
            cases.append((call.name, call.name, f"{dry.ordinal(index)}+2"))
    return cases


@pytest.mark.parametrize("mode", ["wb", "xb"])
def test_eintr_on_every_call(tmp_path: Path, local_variant: str, mode: str) -> None:
    """EINTR from any call: the write goes through, or fails with a typed error leaving the old
    state; never an untyped error, never an error with the new content published, never a temp."""
    _, dry = _case(tmp_path, local_variant, mode)
    cases = _eintr_cases(dry)
    assert {"write", "fsync", "close", "openat"} <= {syscall for _, syscall, _ in cases}

    def attempt(case: tuple[str, str, str]) -> tuple[str, str, dict[str, Any], _inject.Run, Path]:
        label, syscall, when = case
        run_dir = tmp_path / "eintr" / f"{syscall}-{when}"
        run = inject(run_dir, spec(run_dir, mode=mode), _old(mode), syscall, "EINTR", when, None)
        return label, syscall, run.report, run, run_dir / "work"

    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(attempt, cases))

    problems = []
    for label, syscall, report, run, work in outcomes:
        hits = run.trace.injected()
        content = (work / "target").read_bytes() if (work / "target").exists() else None
        entries = listing(work)
        error = report["error"]
        where = f"{label}: {error['type'] + ': ' + error['message'] if error else 'committed'}"
        if not hits:
            problems.append(f"{where}: no EINTR was injected")
        if error is None:
            if content != NEW or entries != ["target"]:
                problems.append(f"{where}, but the directory holds {entries} (new content: {content == NEW})")
            continue
        if syscall in RETRIED:
            problems.append(f"{where}: Python retries {syscall} on EINTR, the write should have gone through")
        if "AtomicWriteError" not in error["mro"] or "OSError" not in error["mro"] or error["errno"] != errno.EINTR:
            problems.append(f"{where}: not a typed error with errno EINTR ({error['mro']})")
        if content == NEW:
            problems.append(f"{where}: raised, yet the new content was published")
        elif content != _old(mode) or entries != (["target"] if mode == "wb" else []):
            problems.append(f"{where}: the directory holds {entries}, not the old state")
    assert problems == [], "\n".join(problems)


# --- a real small ext4 file system, nearly full ------------------------------------------------


@pytest.fixture
def small_ext4(tmp_path: Path, local_variant: str) -> Iterator[Path]:
    """An 8 MiB ext4 image, loop-mounted for this test (needs root, mkfs.ext4 and loop devices)."""
    if os.geteuid() != 0:
        pytest.skip("loop-mounting an ext4 image needs root")
    mkfs = shutil.which("mkfs.ext4") or shutil.which("mkfs.ext4", path="/sbin:/usr/sbin")
    if mkfs is None:
        pytest.skip("mkfs.ext4 not installed (e2fsprogs): cannot make a small ext4 file system")
    if not os.path.exists("/dev/loop-control") and not os.path.exists("/dev/loop0"):
        pytest.skip("no loop devices here (/dev/loop-control): cannot mount an ext4 image")
    image, mountpoint = tmp_path / "ext4.img", tmp_path / "ext4"
    mountpoint.mkdir()
    with open(image, "wb") as file:
        file.truncate(8 << 20)
    # -m 0: no blocks reserved for root, so a full disk is full for root too.
    made = subprocess.run([mkfs, "-q", "-F", "-m", "0", str(image)], capture_output=True, text=True, check=False)
    assert made.returncode == 0, made.stderr
    mounted = subprocess.run(
        ["mount", "-o", "loop", str(image), str(mountpoint)], capture_output=True, text=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot loop-mount an ext4 image here: {mounted.stderr.strip()}")
    try:
        (mountpoint / "lost+found").rmdir()
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, check=False)


def _fill(directory: Path, leave: int) -> None:
    """A filler file that leaves about ``leave`` bytes free."""
    st = os.statvfs(directory)
    size = st.f_bavail * st.f_frsize - leave
    with open(directory / "filler", "wb") as file:
        file.write(b"\0" * size)
        os.fsync(file.fileno())


def _free_blocks(directory: Path, expected: int, timeout: float = 5.0) -> int:
    """The file system's free blocks, once they are back to ``expected`` (or the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        free = os.statvfs(directory).f_bfree
        if free == expected or time.monotonic() > deadline:
            return free
        time.sleep(0.02)


@pytest.mark.parametrize(
    ("mode", "chunk"),
    [
        pytest.param("wb", 1 << 20, id="replace-large-writes"),  # fails inside write()
        pytest.param("xb", 4096, id="create-buffered"),  # small writes: fails in a buffer flush
    ],
)
def test_full_ext4(small_ext4: Path, local_variant: str, mode: str, chunk: int) -> None:
    target = small_ext4 / "target"
    if mode == "wb":
        target.write_bytes(OLD)
    _fill(small_ext4, 256 << 10)
    expected = ["filler", "target"] if mode == "wb" else ["filler"]
    assert listing(small_ext4) == expected
    free = os.statvfs(small_ext4).f_bfree
    written = 0
    with pytest.raises(NoSpaceError) as caught, atomic_open(target, mode) as file:
        while written < 4 << 20:  # 4 MiB, with about 256 KiB free
            file.write(b"\xab" * chunk)
            written += chunk
    error = caught.value
    assert isinstance(error, OSError)
    assert isinstance(error, AtomicWriteError)
    assert error.errno == errno.ENOSPC
    assert str(target) in str(error)
    assert written < 4 << 20, "the disk was full long before the end"
    if mode == "wb":
        assert target.read_bytes() == OLD
    assert listing(small_ext4) == expected
    # The temp's blocks went back to the file system: nothing holds them any more.
    assert _free_blocks(small_ext4, free) == free
    # And the file system still takes a write that fits.
    with atomic_open(target, "wb") as file:
        file.write(b"fits" * 1000)
    assert target.read_bytes() == b"fits" * 1000
    assert listing(small_ext4) == ["filler", "target"]
