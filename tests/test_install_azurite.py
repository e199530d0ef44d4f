"""`make test` tells the truth about the Azure tests: when Azurite cannot be installed, the user
reads why (npm missing, or npm's own error after a retry) and that those tests will be skipped."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests._workers import ROOT

SCRIPT = ROOT / "tests" / "servers" / "install-azurite"

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="a POSIX shell script")


def _run(work: Path, path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", str(SCRIPT)],
        cwd=work,
        env={**os.environ, "PATH": path},
        capture_output=True,
        text=True,
        check=False,
    )


def _fake_npm(bin_dir: Path, body: str) -> None:
    bin_dir.mkdir()
    npm = bin_dir / "npm"
    npm.write_text("#!/bin/sh\n" + body)
    npm.chmod(0o755)


def _tools(tmp_path: Path) -> Path:
    """A directory with the few tools the script needs besides npm."""
    tools = tmp_path / "tools"
    tools.mkdir()
    for tool in ("mktemp", "sed", "rm", "cat"):
        found = shutil.which(tool)
        assert found is not None, tool
        (tools / tool).symlink_to(found)
    return tools


def test_npm_missing_is_said_plainly(tmp_path: Path) -> None:
    done = _run(tmp_path, str(_tools(tmp_path)))
    assert done.returncode == 0
    assert "npm is not installed: the Azure tests will be skipped" in done.stdout


def test_npm_failing_shows_its_error_and_is_tried_twice(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    _fake_npm(tmp_path / "bin", f'echo call >> {calls}\necho "npm ERR! code E503 registry unreachable" >&2\nexit 1\n')
    done = _run(tmp_path, f"{tmp_path / 'bin'}:{_tools(tmp_path)}")
    assert done.returncode == 0
    assert calls.read_text().count("call") == 2
    assert done.stdout.count("npm ERR! code E503 registry unreachable") == 2
    assert "failed (attempt 1 of 2)" in done.stdout
    assert "failed (attempt 2 of 2)" in done.stdout
    assert done.stdout.rstrip().endswith("the Azure tests will be skipped")


def test_a_retry_that_succeeds_says_nothing_more(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    _fake_npm(
        tmp_path / "bin",
        f'echo call >> {calls}\n[ "$(cat {calls} | wc -l)" -gt 1 ] && exit 0\necho "npm ERR! ECONNRESET" >&2\nexit 1\n',
    )
    tools = _tools(tmp_path)
    (tools / "wc").symlink_to(shutil.which("wc") or "/usr/bin/wc")
    done = _run(tmp_path, f"{tmp_path / 'bin'}:{tools}")
    assert done.returncode == 0
    assert "npm ERR! ECONNRESET" in done.stdout
    assert "will be skipped" not in done.stdout


def test_an_installed_azurite_is_left_alone(tmp_path: Path) -> None:
    binary = tmp_path / "tests" / ".azurite" / "node_modules" / ".bin" / "azurite-blob"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    _fake_npm(tmp_path / "bin", "echo npm must not run\nexit 1\n")
    done = _run(tmp_path, str(tmp_path / "bin"))
    assert done.returncode == 0
    assert done.stdout == ""
