"""Mounting real file systems for tests, as root: each helper is a context manager that mounts,
yields the mount point, and unmounts (and detaches the loop device) on the way out, even when
the body failed."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# Set by CI (.ci/run): a matrix or overlay test that cannot mount fails instead of skipping.
REQUIRE = os.environ.get("ATOMICWRITE_REQUIRE_FILESYSTEMS") == "1"


class MountUnavailable(Exception):
    """This machine cannot mount that file system here (not root, no tool, no kernel support)."""


def mount_unavailable_reason() -> str | None:
    """Why mounts cannot be made here at all, or None."""
    if sys.platform != "linux":
        return "mounting test file systems is Linux-only"
    if os.geteuid() != 0:
        return "mounting test file systems needs root"
    return None


def skip_or_fail(reason: str) -> None:
    """Skip with ``reason``, or fail where ATOMICWRITE_REQUIRE_FILESYSTEMS=1 demands the mounts."""
    if REQUIRE:
        pytest.fail(f"ATOMICWRITE_REQUIRE_FILESYSTEMS=1 but {reason}")
    pytest.skip(reason)


def _run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        # The first line says why; the paths and options are in the command the caller chose.
        why = ((done.stderr or done.stdout).strip().splitlines() or ["no message"])[0]
        raise MountUnavailable(f"{command[0]} failed: {why}")


def _unmount(mountpoint: Path) -> None:
    # Lazy as a last resort: a process the suite left behind must not keep the mount (and
    # its loop device) forever.
    if subprocess.run(["umount", str(mountpoint)], capture_output=True, check=False).returncode != 0:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, check=False)


@contextlib.contextmanager
def mounted(*command: str, mountpoint: Path) -> Iterator[Path]:
    """Run a mount ``command`` that mounts ``mountpoint``; unmount it on exit."""
    reason = mount_unavailable_reason()
    if reason:
        raise MountUnavailable(reason)
    mountpoint.mkdir(parents=True, exist_ok=True)
    _run(*command)
    try:
        yield mountpoint
    finally:
        _unmount(mountpoint)


# mkfs command per image kind, and the mount options of each matrix entry.
MKFS = {
    "ext4": ("mkfs.ext4", "-q", "-F"),
    "xfs": ("mkfs.xfs", "-q", "-f"),
    "btrfs": ("mkfs.btrfs", "-q", "-f"),
}


@contextlib.contextmanager
def loop_image(kind: str, image: Path, mountpoint: Path, *, size: str = "320M", options: str = "") -> Iterator[Path]:
    """A fresh ``kind`` file system (ext4, xfs, btrfs) in the sparse file ``image``, loop-mounted
    at ``mountpoint``.  ``mount -o loop`` attaches the device and detaches it at unmount; the
    image is removed afterwards.  Keep ``image`` on a disk, not in memory."""
    tool = MKFS[kind][0]
    if shutil.which(tool) is None:
        raise MountUnavailable(f"{tool} is not installed (apt-get install {_PACKAGES[kind]})")
    image.parent.mkdir(parents=True, exist_ok=True)
    try:
        _run("truncate", "-s", size, str(image))
        _run(*MKFS[kind], str(image))
        loop = ",".join(filter(None, ["loop", options]))
        with mounted("mount", "-t", kind, "-o", loop, str(image), str(mountpoint), mountpoint=mountpoint):
            yield mountpoint
    finally:
        with contextlib.suppress(FileNotFoundError):
            image.unlink()


_PACKAGES = {"ext4": "e2fsprogs", "xfs": "xfsprogs", "btrfs": "btrfs-progs"}


@contextlib.contextmanager
def tmpfs(mountpoint: Path, *, size: str = "512M") -> Iterator[Path]:
    with mounted("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint), mountpoint=mountpoint):
        yield mountpoint


@dataclass(frozen=True)
class Overlay:
    lower: Path
    upper: Path
    merged: Path


@contextlib.contextmanager
def overlay(base: Path, *, options: str = "") -> Iterator[Overlay]:
    """An overlay mount under ``base``: ``base/lower`` (the read-only layer: fill it before the
    mount), ``base/upper``, and the merged view ``base/merged``.  ``options`` adds mount options
    (``redirect_dir=on``)."""
    layers = Overlay(base / "lower", base / "upper", base / "merged")
    work = base / "work"
    for path in (layers.lower, layers.upper, work):
        path.mkdir(parents=True, exist_ok=True)
    spec = f"lowerdir={layers.lower},upperdir={layers.upper},workdir={work}" + (f",{options}" if options else "")
    with mounted("mount", "-t", "overlay", "overlay", "-o", spec, str(layers.merged), mountpoint=layers.merged):
        yield layers
