"""A FUSE passthrough for the tests: switches that remove what real FUSE file systems lack, and a
power-loss layer that keeps what was not made durable and drops it on command.

Needs (installed by the ``filesystems`` nox session and the Makefile):
  apt: fuse3 libfuse3-dev
  PyPI: mfusepy==3.1.1
and root (for ``allow_other`` and ``/dev/fuse``).

``mount(source, mountpoint)`` serves ``source`` at ``mountpoint`` from a daemon in its own process
(``tests/fusefs/daemon.py``), so that a test process can be killed without wedging the mount.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["SWITCHES", "FuseMount", "available", "mount", "unavailable_reason"]

# What the passthrough can switch off, one name each (tests/fusefs/daemon.py says how each answers).
SWITCHES = frozenset({"tmpfile", "renameat2", "link", "dirfsync", "flock", "dirrename", "atomicrename"})

_REPOSITORY = Path(__file__).resolve().parents[2]
# How long a mount may take to come up or go away before the helper gives up (not a test
# assertion: only a bound on waiting for the daemon).
_MOUNT_WAIT_S = 30.0


def unavailable_reason() -> str | None:
    """Why FUSE mounts cannot be made here, or None when they can."""
    if sys.platform != "linux":
        return "FUSE mounts are Linux-only here"
    if os.geteuid() != 0:
        return "FUSE mounts need root (allow_other, /dev/fuse)"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse on this machine"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is missing (apt-get install fuse3)"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"mfusepy cannot load libfuse3 ({exc}); apt-get install fuse3 libfuse3-dev"
    return None


def available() -> bool:
    return unavailable_reason() is None


def _is_mounted(mountpoint: Path) -> bool:
    target = os.fsencode(os.path.realpath(mountpoint))
    with open("/proc/self/mountinfo", "rb") as table:
        for line in table:
            fields = line.split()
            if fields[4].replace(b"\\040", b" ") == target and b" - fuse" in line:
                return True
    return False


class FuseMount:
    """A live mount: its paths, the daemon's counters and, with ``power_loss``, the cut."""

    def __init__(self, source: Path, mountpoint: Path, control: Path, daemon: subprocess.Popen[bytes]) -> None:
        self.source = source
        self.mountpoint = mountpoint
        self._control = control
        self.daemon = daemon

    def _ask(self, **command: Any) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(self._control))
            client.sendall(json.dumps(command).encode() + b"\n")
            with client.makefile("rb") as reply_stream:
                reply: dict[str, Any] = json.loads(reply_stream.readline())
        if not reply.pop("ok"):
            raise RuntimeError(f"the FUSE daemon refused {command}: {reply['error']}")
        return reply

    @property
    def operations(self) -> int:
        """How many state-changing operations (create, write, truncate, fsync, fsyncdir, rename,
        link, unlink, mkdir, rmdir, chmod, chown, utimens) the daemon has served."""
        return int(self._ask(action="stats")["operations"])

    def calls(self) -> dict[str, int]:
        """Requests the daemon received, by operation (the kernel answers some itself)."""
        return {str(name): int(count) for name, count in self._ask(action="stats")["calls"].items()}

    def cut_after(self, operations: int, *, journaled: bool = False) -> None:
        """Cut the power right after the ``operations``-th state-changing operation from now;
        every request after it fails with EIO until ``cut()``."""
        self._ask(action="arm", after=operations, journaled=journaled)

    def cut(self, *, journaled: bool = False) -> bool:
        """Drop everything not durable and serve the durable state again (the backing directory
        then holds exactly that).  True when an armed cut had fired already (and is what is
        kept), False when the cut happens now.

        ``journaled``: the cut after a journal commit instead: every name and size change is
        kept, and only file data not flushed by its file's fsync is dropped (see
        tests/test_power_loss.py)."""
        return bool(self._ask(action="cut", journaled=journaled)["fired"])

    def rescan(self) -> None:
        """Take the backing directory, as changed behind the mount's back, as the durable state
        (what a fresh mount of it would start from).  Only with no file open through the mount."""
        self._ask(action="rescan")


def _unmount(mountpoint: Path) -> None:
    if not _is_mounted(mountpoint):
        return
    if subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True).returncode != 0:
        # Busy (a killed test process's descriptors, a shell inside): detach now, free later.
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)


@contextlib.contextmanager
def mount(
    source: Path, mountpoint: Path, *, without: Iterable[str] = (), power_loss: bool = False
) -> Iterator[FuseMount]:
    """Serve ``source`` at ``mountpoint`` through the passthrough, until the block ends."""
    switches = sorted(set(without))
    unknown = set(switches) - SWITCHES
    if unknown:
        raise ValueError(f"unknown FUSE switches {sorted(unknown)}; known: {sorted(SWITCHES)}")
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(reason)
    mountpoint.mkdir(parents=True, exist_ok=True)
    control_directory = Path(tempfile.mkdtemp(prefix="fusectl-"))
    control = control_directory / "control"
    command = [sys.executable, "-m", "tests.fusefs.daemon", str(source), str(mountpoint), str(control)]
    command.append("--without=" + ",".join(switches))
    if power_loss:
        command.append("--power-loss")
    log = open(control_directory / "daemon.log", "wb")
    # Its own session: a SIGKILL aimed at a test's process group never reaches the daemon.
    daemon = subprocess.Popen(command, cwd=_REPOSITORY, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + _MOUNT_WAIT_S
        while not (_is_mounted(mountpoint) and control.exists()):
            if daemon.poll() is not None or time.monotonic() > deadline:
                log.flush()
                raise RuntimeError(
                    f"the FUSE daemon did not mount {mountpoint}:\n"
                    + (control_directory / "daemon.log").read_text(errors="replace")
                )
            time.sleep(0.02)
        yield FuseMount(source, mountpoint, control, daemon)
    finally:
        _unmount(mountpoint)
        try:
            daemon.wait(timeout=_MOUNT_WAIT_S)
        except subprocess.TimeoutExpired:
            daemon.send_signal(signal.SIGKILL)
            daemon.wait()
        _unmount(mountpoint)
        log.close()
        shutil.rmtree(control_directory, ignore_errors=True)
