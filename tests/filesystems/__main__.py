"""Run the file-system matrix: ``python -m tests.filesystems [--only NAME ...]`` (as root).

For each file system it mounts a fresh one, runs its suites there with pytest's ``--basetemp``
(and ``TMPDIR``) inside the mount, so that every ``tmp_path`` and every ``tempfile`` directory
lives on it, then unmounts it and prints one line, ``NAME: P passed, F failed, S skipped``
(errors count as failures), followed by pytest's reason for each skip.  Then the tests marked
``filesystems`` (the FUSE switches and the power-loss layer) run once.  The exit status is 1 if
any suite failed or any file system could not be mounted.

Which suites run where is `SUITES`; `noxfile.py`'s ``filesystems`` session says why.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.filesystems.mounts import (
    REQUIRE,
    MountUnavailable,
    loop_image,
    mount_unavailable_reason,
    overlay,
    tmpfs,
)

ROOT = Path(__file__).resolve().parents[2]

# Why each suite runs where it does is in noxfile.py's filesystems session.
EVERYWHERE = (
    "tests/test_contract.py",
    "tests/test_faults.py",
    "tests/test_crash_states.py",
    "tests/test_directory.py",
)
# Overlay mounts with their upper layer on the file system under test (overlayfs and FUSE
# cannot be an upper layer).
OVERLAY = ("tests/test_overlay.py",)
KILL_POINTS = ("tests/test_kill_points.py",)
INJECTED_FAULTS = ("tests/test_fault_injection.py",)
SUITES: dict[str, tuple[str, ...]] = {
    "ext4-ordered": EVERYWHERE + OVERLAY + INJECTED_FAULTS,
    "ext4-journal": EVERYWHERE + OVERLAY,
    "xfs": EVERYWHERE + OVERLAY + KILL_POINTS,
    "btrfs": EVERYWHERE + OVERLAY + KILL_POINTS,
    "tmpfs": EVERYWHERE + OVERLAY,
    "overlay": EVERYWHERE,
    "fuse": EVERYWHERE,
}

# What does not apply on a file system, as a -k expression.  FUSE has no O_TMPFILE, so there the
# O_TMPFILE variant falls back to the named-temp one (run as such), and its tests' expectation of
# no named temp does not apply; the passthrough, like most FUSE servers, has no mknod for FIFOs.
NOT_APPLICABLE = {"fuse": "not o_tmpfile and not test_fifo_is_not_replaced"}


@dataclass
class Outcome:
    passed: int = 0
    failed: int = 0
    skipped: int = 0

    def __iadd__(self, other: Outcome) -> Outcome:
        self.passed += other.passed
        self.failed += other.failed
        self.skipped += other.skipped
        return self


def _images_dir() -> Path:
    """Where the image files go: on a disk, never in memory (a loop image in a tmpfs would test
    the tmpfs's page cache, not the file system's journal)."""
    for candidate in (Path(os.environ.get("ATOMICWRITE_FS_IMAGES", "/var/tmp")), ROOT / ".nox"):
        probe = candidate / "atomicwrite-filesystems"
        with contextlib.suppress(OSError):
            probe.mkdir(parents=True, exist_ok=True)
            if _fstype(probe) not in ("tmpfs", "ramfs"):
                return probe
    raise SystemExit("no directory on a disk for the loop images: set ATOMICWRITE_FS_IMAGES")


def _fstype(path: Path) -> str:
    done = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, check=False)
    return done.stdout.strip()


def _pytest(
    place: Path, suites: tuple[str, ...], log: Path, *extra: str, scratch: Path | None = None, skip: str = ""
) -> Outcome:
    """Run ``suites`` with every ``tmp_path`` under ``place``, and ``tempfile``'s directory there
    too unless ``scratch`` names another; the outcome from JUnit XML and the exit status."""
    basetemp = place / "pytest"
    scratch = scratch or place / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    scratch.chmod(0o1777)  # like /tmp: the read-only-directory tests run a second, unprivileged user
    report = log.with_suffix(".xml")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs", f"--basetemp={basetemp}"]
    # memory:// and s3:// parameters of the directory tests write to no file system.
    select = " and ".join(filter(None, ["not memory and not s3", skip]))
    command += [f"--junitxml={report}", "-m", "not filesystems", "-k", select, *extra, *suites]
    env = {**os.environ, "TMPDIR": str(scratch)}
    with log.open("w") as out:
        done = subprocess.run(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    outcome = Outcome()
    try:
        suite = ElementTree.parse(report).getroot()
    except (OSError, ElementTree.ParseError):
        outcome.failed = 1  # pytest died before writing its report: the log says why
        return outcome
    for element in suite.iter("testsuite"):
        total, skipped = int(element.get("tests", 0)), int(element.get("skipped", 0))
        failed = int(element.get("failures", 0)) + int(element.get("errors", 0))
        outcome += Outcome(total - failed - skipped, failed, skipped)
    if done.returncode != 0 and outcome.failed == 0:
        outcome.failed = 1  # nothing collected, or pytest itself failed: the log says why
    return outcome


def _doctor(path: Path) -> str:
    """What ``atomicwrite doctor`` finds there, in one line: the calls the protocols rely on,
    and the guarantees that do not hold (docs/guarantees.md's table is filled from these)."""
    from atomicwrite._cli.doctor import diagnose

    report = diagnose(str(path))
    calls = ", ".join(f"{check.key} {check.status}" for check in report.checks if check.status in ("yes", "no"))
    missing = [guarantee.key for guarantee in report.guarantees if guarantee.holds is not True]
    return f"doctor: {calls}; guarantees not confirmed: {', '.join(missing) or 'none'}"


def _explain(log: Path, outcome: Outcome) -> None:
    """Each skip's reason, and on failure what failed and the end of the log."""
    text = log.read_text(errors="replace")
    for line in text.splitlines():
        if line.startswith("SKIPPED") or (outcome.failed and re.match(r"(FAILED|ERROR) ", line)):
            print(f"    {line}")
    if outcome.failed:
        print(f"    log: {log}")
        print("    " + "\n    ".join(text.splitlines()[-40:]))


Mount = Callable[[Path], contextlib.AbstractContextManager[Path]]


def _loop(kind: str, options: str = "", size: str = "2G") -> Mount:
    def mount(work: Path) -> contextlib.AbstractContextManager[Path]:
        return loop_image(kind, work / f"{kind}.img", work / "mnt", size=size, options=options)

    return mount


def _tmpfs(work: Path) -> contextlib.AbstractContextManager[Path]:
    return tmpfs(work / "mnt", size="2G")


@contextlib.contextmanager
def _fuse(work: Path) -> Iterator[Path]:
    try:
        from tests.fusefs import mount, unavailable_reason
    except ImportError as exc:
        raise MountUnavailable(f"the FUSE passthrough (tests/fusefs) cannot be imported: {exc}") from exc
    reason = unavailable_reason()
    if reason:
        raise MountUnavailable(reason)
    # The passthrough serves a directory on the disk.
    source, mountpoint = work / "source", work / "mnt"
    source.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(mount(source, mountpoint))
        except RuntimeError as exc:
            raise MountUnavailable(str(exc)) from exc
        yield mountpoint


MOUNTS: dict[str, Mount] = {
    "ext4-ordered": _loop("ext4", "data=ordered"),
    "ext4-journal": _loop("ext4", "data=journal"),
    "xfs": _loop("xfs"),
    "btrfs": _loop("btrfs"),
    "tmpfs": _tmpfs,
    "fuse": _fuse,
}


def _run_one(name: str, work: Path, logs: Path, suites: tuple[str, ...]) -> tuple[str, list[tuple[Path, Outcome]]]:
    """doctor's line, and each run's log and outcome: one run, or two for overlay."""
    if name == "overlay":
        # Targets in the upper layer: the whole run in the merged view of an empty lower layer.
        upper_log, lower_log = logs / "overlay-upper.log", logs / "overlay-lower.log"
        with overlay(work / "layers") as layers:
            upper = _pytest(layers.merged, suites, upper_log)
            found = _doctor(layers.merged)
        # Targets in the lower layer: each test's tmp_path comes from the lower layer of its own
        # overlay mount, whose layers sit in a directory on the disk.
        lower = _pytest(work / "disk", suites, lower_log, "-p", "tests.filesystems.lower_layer")
        return found, [(upper_log, upper), (lower_log, lower)]
    log = logs / f"{name}.log"
    # FUSE: tempfile's directory stays on the disk.  pytest captures output in unlinked temp
    # files, and the passthrough answers fstat(2) of an unlinked file with ESTALE.
    scratch = work / "scratch" if name == "fuse" else None
    with MOUNTS[name](work) as mountpoint:
        outcome = _pytest(mountpoint, suites, log, scratch=scratch, skip=NOT_APPLICABLE.get(name, ""))
        return _doctor(mountpoint), [(log, outcome)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.filesystems", description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(SUITES), help="these file systems only")
    parser.add_argument("--tests", nargs="+", help="run these test files instead of each file system's suites")
    parser.add_argument("--no-marked", action="store_true", help="skip the tests marked filesystems")
    args = parser.parse_args(argv)
    reason = mount_unavailable_reason()
    if reason:
        print(f"filesystems: {reason}: the file-system matrix is skipped")
        return 1 if REQUIRE else 0
    images = _images_dir()
    logs = images / "logs"
    logs.mkdir(exist_ok=True)
    failed = False
    for name in args.only or list(SUITES):
        work = images / name
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        try:
            found, runs = _run_one(name, work, logs, tuple(args.tests or SUITES[name]))
        except MountUnavailable as exc:
            print(f"{name}: 0 passed, 1 failed, 0 skipped")
            print(f"    cannot mount {name}: {exc}")
            failed = True
            continue
        finally:
            shutil.rmtree(work, ignore_errors=True)
        outcome = Outcome()
        for _, run in runs:
            outcome += run
        print(f"{name}: {outcome.passed} passed, {outcome.failed} failed, {outcome.skipped} skipped")
        print(f"    {found}")
        for log, run in runs:
            _explain(log, run)
        sys.stdout.flush()
        failed = failed or outcome.failed > 0
    # Only the modules that mark tests: collecting the others would only report their own skips
    # (the Lightning and transformers modules skip where those are not installed).
    marked = sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / "tests").glob("test_*.py")
        if "mark.filesystems" in path.read_text()
    )
    if not args.no_marked and marked:
        # Once, not per file system: they mount their own FUSE layers.
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "-m", "filesystems", *marked]
        done = subprocess.run(command, cwd=ROOT, check=False)
        failed = failed or done.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
