"""The command line, run as a real subprocess: ``python -m atomicwrite ...``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import atomicwrite._strategy as strategy_registry
from atomicwrite import atomic_open
from atomicwrite._cli.main import parse_duration
from atomicwrite._names import host_tag, parse_temp_name
from tests._variant import make_local_strategy

# Above Linux's largest pid_max (2**22) and macOS's (99998): no process can have it.
DEAD_PID = 2**22 + 4321


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ATOMICWRITE_TEST_VARIANT"}
    return subprocess.run(
        [sys.executable, "-m", "atomicwrite", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def dead_temp(directory: Path, name: str, *, host: str | None = None, pid: int = DEAD_PID) -> Path:
    """A temp file as a writer killed mid-save leaves it: our name, nobody holding its lock."""
    entry = f".{name}.aw{host or host_tag()}.{pid}.{os.urandom(4).hex()}.tmp"
    assert parse_temp_name(entry) == (host or host_tag(), pid)
    path = directory / entry
    path.write_bytes(b"half a checkpoint")
    return path


LOCAL_ROWS = {'open("wb")', 'atomic_open("wb")'}
S3_ROWS = {'s3 fs.open("wb")', 's3 atomic_open("wb")'}


def s3_demo_available() -> bool:
    """Whether the demo's S3 part can run here (atomicwrite[demo] installed)."""
    from atomicwrite._cli.demo import s3_unavailable

    return s3_unavailable() is None


def training_demo_available() -> bool:
    """Whether the demo's Lightning part can run here (torch and lightning installed)."""
    from atomicwrite._cli.demo_lightning import training_unavailable

    return training_unavailable() is None


def table_rows(stdout: str) -> dict[str, list[str]]:
    """The demo's table rows by method label, cells split on runs of 2+ spaces."""
    rows: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) == 6 and cells[0] in LOCAL_ROWS | S3_ROWS:
            rows[cells[0]] = cells
    return rows


def test_dead_pid_is_dead() -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(DEAD_PID, 0)


def test_help() -> None:
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    assert "Usage: atomicwrite" in result.stdout
    assert "demo" in result.stdout
    assert "sweep" in result.stdout
    sweep_help = run_cli("sweep", "--help")
    assert sweep_help.returncode == 0
    assert "--older-than" in sweep_help.stdout
    assert "--dry-run" in sweep_help.stdout
    demo_help = run_cli("demo", "--help")
    assert demo_help.returncode == 0
    options = (
        "--kills",
        "--size-mb",
        "--seed",
        "--dir",
        "--keep",
        "--durability",
        "--no-s3",
        "--s3-kills",
        "--no-training",
    )
    for option in options:
        assert option in demo_help.stdout


def test_version() -> None:
    import atomicwrite

    result = run_cli("--version")
    assert result.returncode == 0
    assert atomicwrite.__version__ in result.stdout


def test_import_does_not_load_click() -> None:
    code = "import sys, atomicwrite; print('click' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("10m", 600), ("1h", 3600), ("2d", 172800), ("1h30m", 5400), ("90", 90), ("0", 0), ("1.5h", 5400)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1x", "-5m", "h", "1 hour", "inf", "nan", "1h-"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_demo(tmp_path: Path) -> None:
    # 6 MiB on S3: more than one 5 MiB part, so atomic_open takes the multipart path.
    args = ["--kills", "5", "--size-mb", "2", "--s3-kills", "3", "--s3-size-mb", "6", "--seed", "1"]
    # The training part has its own test, below.
    result = run_cli("demo", *args, "--dir", str(tmp_path), "--no-training")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = table_rows(result.stdout)
    with_s3 = s3_demo_available()
    assert set(rows) == (LOCAL_ROWS | S3_ROWS if with_s3 else LOCAL_ROWS), result.stdout
    _, kills, intact, damaged, _, after = rows['atomic_open("wb")']
    assert (kills, intact, damaged, after) == ("5", "5", "0/0/0", "0")
    _, plain_kills, plain_intact, plain_damaged, _, _ = rows['open("wb")']
    assert plain_kills == "5"
    assert int(plain_intact) + sum(map(int, plain_damaged.split("/"))) == 5
    if with_s3:
        _, kills, intact, damaged, before, after = rows['s3 atomic_open("wb")']
        assert (kills, intact, damaged, after) == ("3", "3", "0/0/0", "0"), result.stdout
        # At most a pending upload and its marker per kill.
        assert int(before) <= 2 * 3
        _, naive_kills, naive_intact, naive_damaged, naive_before, naive_after = rows['s3 fs.open("wb")']
        assert naive_kills == "3"
        assert int(naive_intact) + sum(map(int, naive_damaged.split("/"))) == 3
        # sweep() touches no upload it did not start.
        assert naive_after == naive_before
    else:
        assert "s3: skipped" in result.stdout
    # The demo's own directory inside --dir is gone afterwards.
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_demo_kills_a_training_run_and_resumes_it(tmp_path: Path) -> None:
    args = ["demo", "--kills", "1", "--size-mb", "0.1", "--seed", "4", "--dir", str(tmp_path), "--no-s3"]
    result = run_cli(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    (start,) = [index for index, line in enumerate(lines) if line.startswith("Lightning:")]
    training = [line.strip() for line in lines[start:]]
    if not training_demo_available():
        assert training[0].startswith("Lightning: skipped"), training
        return
    # A Lightning run killed while saving last.ckpt: the old one is whole and the run resumes from it.
    assert any(line.startswith("SIGKILLed") and "second save of last.ckpt" in line for line in training), training
    assert "last.ckpt after the kill: a whole checkpoint (ok)" in training, training
    assert any(line.startswith('resumed with ckpt_path="last" from last.ckpt') for line in training), training
    assert list(tmp_path.iterdir()) == []


def test_demo_without_s3_packages_skips_s3(tmp_path: Path) -> None:
    # moto missing, as if atomicwrite[demo] was not installed: the local part still runs.
    code = "import sys; sys.modules['moto'] = None; from atomicwrite._cli.main import main; main()"
    args = ["demo", "--kills", "1", "--size-mb", "0.1", "--seed", "3", "--dir", str(tmp_path), "--no-training"]
    env = {k: v for k, v in os.environ.items() if k != "ATOMICWRITE_TEST_VARIANT"}
    result = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (skipped,) = [line for line in result.stdout.splitlines() if line.startswith("s3:")]
    assert "skipped" in skipped
    assert "pip install 'atomicwrite[demo]'" in skipped
    assert set(table_rows(result.stdout)) == LOCAL_ROWS


@pytest.mark.skipif(sys.platform == "win32", reason="named temps are the default on Windows")
def test_demo_named_temps_are_swept(tmp_path: Path) -> None:
    args = ["demo", "--kills", "3", "--size-mb", "1", "--seed", "2", "--dir", str(tmp_path), "--keep", "--named-temps"]
    result = run_cli(*args, "--no-s3", "--no-training")
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(table_rows(result.stdout)) == LOCAL_ROWS
    assert "s3:" not in result.stdout
    _, kills, intact, damaged, before, after = table_rows(result.stdout)['atomic_open("wb")']
    assert (kills, intact, damaged, after) == ("3", "3", "0/0/0", "0")
    assert int(before) <= 3
    # --keep: the directory stays, with only the targets (and the payloads) in it.
    (kept,) = tmp_path.iterdir()
    assert sorted(os.listdir(kept / "atomic")) == ["state.bin"]
    assert sorted(os.listdir(kept / "plain")) == ["state.bin"]


def test_sweep_removes_only_dead_leftovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A named temp for the live writer, whatever the platform's default (O_TMPFILE on Linux).
    variant = "windows" if sys.platform == "win32" else "named-temp"
    monkeypatch.setitem(strategy_registry._INSTANCES, "", make_local_strategy(variant))
    (tmp_path / "data.bin").write_bytes(b"old")
    dead = dead_temp(tmp_path, "data.bin")
    user = tmp_path / ".foo.tmp"
    user.write_bytes(b"mine")
    writer = atomic_open(tmp_path / "data.bin", "wb")
    try:
        writer.write(b"new, not committed")
        writer.flush()
        (live,) = [entry for entry in os.listdir(tmp_path) if (parse_temp_name(entry) or ("", 0))[1] == os.getpid()]
        result = run_cli("sweep", str(tmp_path))
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [str(dead)]
        assert "removed 1" in result.stderr
        assert not dead.exists()
        assert user.read_bytes() == b"mine"
        assert (tmp_path / live).exists()
    finally:
        writer.discard()
    assert not (tmp_path / live).exists()
    assert sorted(os.listdir(tmp_path)) == [".foo.tmp", "data.bin"]
    assert (tmp_path / "data.bin").read_bytes() == b"old"


def test_sweep_dry_run_removes_nothing(tmp_path: Path) -> None:
    dead = dead_temp(tmp_path, "model.ckpt")
    result = run_cli("sweep", "--dry-run", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [str(dead)]
    assert "would remove 1" in result.stderr
    assert dead.exists()
    result = run_cli("sweep", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [str(dead)]
    assert not dead.exists()


def test_sweep_older_than(tmp_path: Path) -> None:
    # Another host's leftover: its writer cannot be checked, so only its age counts.
    other_host = format(int(host_tag(), 16) ^ 1, "08x")
    foreign = dead_temp(tmp_path, "state.json", host=other_host, pid=os.getpid())
    two_hours_ago = time.time() - 2 * 3600
    os.utime(foreign, (two_hours_ago, two_hours_ago))
    result = run_cli("sweep", "--older-than", "3h", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert foreign.exists()
    result = run_cli("sweep", "--older-than", "90m", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [str(foreign)]
    assert not foreign.exists()


@pytest.mark.parametrize("duration", ["1x", "-5m", "soon"])
def test_sweep_bad_duration_is_a_usage_error(tmp_path: Path, duration: str) -> None:
    dead = dead_temp(tmp_path, "data.bin")
    result = run_cli("sweep", f"--older-than={duration}", str(tmp_path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "--older-than" in lines[0]
    assert repr(duration) in lines[0]
    assert "Traceback" not in result.stderr
    assert dead.exists()


def test_sweep_missing_directory_fails_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    result = run_cli("sweep", str(missing))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("atomicwrite: error:")
    assert str(missing) in lines[0]
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = run_cli("--debug", "sweep", str(tmp_path / "nowhere"))
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert "TargetNotFoundError" in result.stderr


def test_unknown_command_is_a_usage_error() -> None:
    result = run_cli("frobnicate")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "frobnicate" in result.stderr
