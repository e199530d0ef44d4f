"""The order of the POSIX protocol's system calls, as the kernel saw them (strace).

For one write the trace must read: temp created relative to the target directory's descriptor
(``O_TMPFILE``, or a fresh ``O_EXCL`` name), its mode set, the payload written to it, the temp
flushed, closed, renamed over the target (``RENAME_NOREPLACE`` / ``linkat`` when exclusive), and
the directory flushed -- with no flush skipped at ``durability="full"`` and none issued at
``"none"``.

strace is needed: without it the tests skip, unless ``ATOMICWRITE_REQUIRE_STRACE=1`` (CI) makes
that a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from atomicwrite._names import parse_temp_name
from tests._workers import ROOT, payload
from tests.conftest import listing

TRACED = ",".join(
    [
        *("openat", "open", "creat", "write", "pwrite64", "writev", "close", "fchmod"),
        *("fsync", "fdatasync", "sync_file_range"),
        *("rename", "renameat", "renameat2", "linkat", "unlink", "unlinkat"),
    ]
)
SIZE = 3 << 20  # two 1.5 MiB writes: larger than the 256 KiB buffer, so each goes straight through


def _strace() -> str:
    path = shutil.which("strace")
    if path is None:
        reason = "strace not installed (apt-get install strace)"
        if os.environ.get("ATOMICWRITE_REQUIRE_STRACE") == "1":
            pytest.fail(f"{reason}; ATOMICWRITE_REQUIRE_STRACE=1 requires it")
        pytest.skip(reason)
    return path


@dataclass
class Call:
    pid: int
    name: str
    args: list[str]
    result: str


_LINE = re.compile(r"^(?:(?P<pid>\d+)\s+)?(?P<name>\w+)\((?P<args>.*)\)\s+=\s+(?P<result>.+)$")


def _split_args(text: str) -> list[str]:
    """Split strace's argument list on top-level commas (not inside strings or brackets)."""
    args, depth, start, i, quoted = [], 0, 0, 0, False
    while i < len(text):
        char = text[i]
        if quoted:
            if char == "\\":
                i += 1
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            args.append(text[start:i].strip())
            start = i + 1
        i += 1
    tail = text[start:].strip()
    if tail:
        args.append(tail)
    return args


def _parse(log: str) -> list[Call]:
    calls = []
    for line in log.splitlines():
        match = _LINE.match(line)
        if match is None:
            continue  # signals, exits, "resumed" fragments: none of ours (the writer is one thread)
        calls.append(
            Call(int(match["pid"] or 0), match["name"], _split_args(match["args"]), match["result"].split()[0])
        )
    return calls


def _unquote(arg: str) -> str:
    assert arg.startswith('"'), arg
    assert arg.endswith('"'), arg
    return arg[1:-1]


def _trace(directory: Path, target: Path, mode: str, durability: str, tmp_path: Path) -> list[Call]:
    log = tmp_path / "strace.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run(
        [
            _strace(),
            "-f",
            "-qq",
            "-s",
            "8",
            "-e",
            f"trace={TRACED}",
            "-e",
            "signal=none",
            "-o",
            str(log),
            sys.executable,
            "-m",
            "tests._workers",
            "traced",
            str(target),
            mode,
            durability,
            str(SIZE),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0 and "ptrace" in done.stderr.lower():
        reason = f"strace cannot trace here: {done.stderr.strip()}"
        if os.environ.get("ATOMICWRITE_REQUIRE_STRACE") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    assert done.returncode == 0, done.stderr
    return _parse(log.read_text())


def _protocol(calls: list[Call], directory: Path, target_name: str) -> tuple[list[str], dict[str, str]]:
    """The write's steps, in order, from the opening of the target's directory to its closing.

    Returns ``(steps, details)``; consecutive writes to the temp count as one "write" step.
    """
    opens = [
        i
        for i, call in enumerate(calls)
        if call.name == "openat" and call.args[0] == "AT_FDCWD" and call.args[1] == f'"{directory}"'
    ]
    assert len(opens) == 1, f"the target's directory should be opened once, not {len(opens)} times"
    first = calls[opens[0]]
    assert "O_DIRECTORY" in first.args[2], first
    dir_fd, pid = first.result, first.pid
    temp_fd: str | None = None
    steps: list[str] = []
    details: dict[str, str] = {"written": "0", "dir_open_flags": first.args[2]}
    for call in calls[opens[0] + 1 :]:
        if call.pid != pid:
            continue
        args = call.args
        if call.name == "close" and args[0] == dir_fd:
            steps.append("close-dir")
            break
        if call.name == "openat" and args[0] == dir_fd:
            assert temp_fd is None, "a second file opened in the target's directory"
            temp_fd = call.result
            details["temp_open"] = _unquote(args[1])
            details["temp_flags"] = args[2]
            details["temp_mode"] = args[3] if len(args) > 3 else ""
            steps.append("create-temp")
        elif call.name in ("open", "openat", "creat") and str(directory) in " ".join(args):
            steps.append(f"stray-{call.name}")  # something opened by path, not relative to dir_fd
        elif temp_fd is not None and args and args[0] == temp_fd:
            if call.name in ("write", "pwrite64", "writev"):
                if not steps or steps[-1] != "write":
                    steps.append("write")
                details["written"] = str(int(details["written"]) + int(call.result))
            elif call.name in ("fsync", "fdatasync", "sync_file_range"):
                steps.append("fsync-temp")
            elif call.name == "fchmod":
                steps.append("fchmod-temp")
                details["fchmod"] = args[1]
            elif call.name == "close":
                steps.append("close-temp")
                temp_fd = None  # the number may be reused from here on
            else:
                steps.append(f"{call.name}-temp")
        elif call.name == "linkat":
            assert temp_fd is not None, call
            assert args[1] == f'"/proc/self/fd/{temp_fd}"', call
            assert args[2] == dir_fd, call
            assert "AT_SYMLINK_FOLLOW" in args[4], call
            details["link_name"] = _unquote(args[3])
            steps.append("link-temp")
        elif call.name in ("rename", "renameat", "renameat2"):
            assert call.name != "rename", f"rename by path, not relative to the directory: {call}"
            assert args[0] == dir_fd, call
            assert args[2] == dir_fd, call
            assert _unquote(args[3]) == target_name, call
            flags = args[4] if len(args) > 4 else "0"
            details["renamed_from"] = _unquote(args[1])
            steps.append("publish-noreplace" if "RENAME_NOREPLACE" in flags else "publish")
            assert call.result == "0", call
        elif call.name in ("fsync", "fdatasync") and args[0] == dir_fd:
            steps.append("fsync-dir")
        elif call.name in ("unlink", "unlinkat") and (args[0] == dir_fd or str(directory) in args[-1]):
            steps.append("unlink")
        elif call.name in ("fsync", "fdatasync", "sync_file_range"):
            steps.append(f"other-{call.name}")  # a flush of something else, in the middle of the write
    else:
        raise AssertionError("the target's directory was never closed")
    return steps, details


def _expected(variant: str, mode: str, durability: str) -> list[str]:
    steps = ["create-temp", "fchmod-temp", "write"]
    if durability != "none":
        steps.append("fsync-temp")
    if variant == "o_tmpfile":
        steps.append("link-temp")  # named at commit: under a temp name, or straight as the target
    steps.append("close-temp")
    if not (variant == "o_tmpfile" and mode == "xb"):
        steps.append("publish-noreplace" if mode == "xb" else "publish")
    if durability == "full":
        steps.append("fsync-dir")
    steps.append("close-dir")
    return steps


@pytest.mark.parametrize(
    ("mode", "durability"),
    [("wb", "full"), ("wb", "file"), ("wb", "none"), ("xb", "full"), ("xb", "none")],
)
def test_protocol_order(workdir: Path, tmp_path: Path, local_variant: str, mode: str, durability: str) -> None:
    target = workdir / "target.bin"
    if mode == "wb":
        target.write_bytes(b"old")
        target.chmod(0o640)
    calls = _trace(workdir, target, mode, durability, tmp_path)
    steps, details = _protocol(calls, workdir, target.name)

    assert steps == _expected(local_variant, mode, durability), details
    # The temp is created in the target's own directory, relative to its descriptor, never
    # reusing or following anything already there, readable by nobody else until its mode is set.
    assert "O_DIRECTORY" in details["dir_open_flags"]
    flags = details["temp_flags"]
    if local_variant == "o_tmpfile":
        assert details["temp_open"] == "."
        assert "O_TMPFILE" in flags, flags
    else:
        assert parse_temp_name(details["temp_open"]) is not None, details["temp_open"]
        assert details["temp_open"].startswith(f".{target.name}.")
        for flag in ("O_CREAT", "O_EXCL", "O_NOFOLLOW"):
            assert flag in flags, flags
    assert details["temp_mode"] == "0600"
    assert "O_CLOEXEC" in flags
    # The old file's mode is kept (a new one gets 0o666 & ~umask), set on the temp before publishing.
    umask = os.umask(0)
    os.umask(umask)
    assert details["fchmod"] == ("0640" if mode == "wb" else f"0{0o666 & ~umask:o}")
    # What was renamed is the temp that was written: the one created, or the name linked to it.
    if "publish" in steps or "publish-noreplace" in steps:
        expected_temp = details["link_name"] if local_variant == "o_tmpfile" else details["temp_open"]
        assert details["renamed_from"] == expected_temp
        assert parse_temp_name(details["renamed_from"]) is not None
    else:
        assert details["link_name"] == target.name  # O_TMPFILE exclusive: linked as the target
    assert int(details["written"]) == len(payload(1, 1, SIZE))  # header, body and digest
    # And the outcome: the new content, complete, alone in the directory.
    assert target.read_bytes() == payload(1, 1, SIZE)
    assert listing(workdir) == [target.name]


def test_no_flush_at_all_with_durability_none(workdir: Path, tmp_path: Path) -> None:
    """Not one fsync/fdatasync anywhere in the writer's life at durability="none"."""
    target = workdir / "target.bin"
    calls = _trace(workdir, target, "wb", "none", tmp_path)
    assert [call for call in calls if call.name in ("fsync", "fdatasync", "sync_file_range")] == []
    assert target.read_bytes() == payload(1, 1, SIZE)
