"""doctor, verify and cp, run as real subprocesses (``python -m atomicwrite ...``).

doctor's answers are checked against the system itself (statfs through coreutils' ``stat -f``,
``O_TMPFILE`` and ``renameat2`` tried directly) on a tmpfs, on the root file system and on the
moto S3 server.
"""

from __future__ import annotations

import base64
import ctypes
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from atomicwrite import CheckpointStore, atomic_directory, atomic_open
from tests._azurite import azurite_endpoint
from tests._gcs_server import gcs_server
from tests._stores import moto_endpoint, s3_options

__all__ = ["azurite_endpoint", "gcs_server", "moto_endpoint"]

BUCKET = "atomicwrite-cli-tests"
ANSI_ESCAPE = "\x1b["


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ATOMICWRITE_TEST_VARIANT"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "atomicwrite", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def doctor_json(*args: str) -> tuple[int, dict[str, Any]]:
    result = run_cli("doctor", "--json", *args)
    assert result.returncode in (0, 3), result.stdout + result.stderr
    return result.returncode, json.loads(result.stdout)


def statfs_type(path: Path) -> tuple[str, str]:
    """``(magic in hex, name)`` of the file system holding ``path``, from coreutils' stat."""
    if shutil.which("stat") is None:
        pytest.skip("coreutils' stat is not installed")
    out = subprocess.run(["stat", "-f", "-c", "%t %T", str(path)], capture_output=True, text=True, check=True)
    magic, name = out.stdout.split(maxsplit=1)
    return f"0x{magic}", name.strip()


def o_tmpfile_works(directory: Path) -> bool:
    try:
        os.close(os.open(directory, os.O_TMPFILE | os.O_WRONLY, 0o600))
    except OSError:
        return False
    return True


def rename_noreplace_works(directory: Path) -> bool:
    """renameat2(RENAME_NOREPLACE) onto an existing name, tried directly through libc."""
    renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    a, b = directory / "noreplace-a", directory / "noreplace-b"
    a.write_bytes(b"a")
    b.write_bytes(b"b")
    try:
        at_fdcwd = -100
        code = renameat2(at_fdcwd, bytes(a), at_fdcwd, bytes(b), 1)
        return code != 0 and ctypes.get_errno() == errno.EEXIST
    finally:
        a.unlink(missing_ok=True)
        b.unlink()


def status(report: dict[str, Any], key: str) -> str:
    return str(report["checks"][key]["status"])


def holds(report: dict[str, Any]) -> dict[str, bool | None]:
    return {key: value["holds"] for key, value in report["guarantees"].items()}


# --- help and usage ----------------------------------------------------------------------------


def test_help_everywhere() -> None:
    top = run_cli("--help")
    assert top.returncode == 0
    for command in ("doctor", "verify", "cp", "sweep", "demo"):
        assert command in top.stdout
        result = run_cli(command, "--help")
        assert result.returncode == 0, result.stderr
        assert f"Usage: atomicwrite {command}" in result.stdout
    assert "--json" in run_cli("doctor", "--help").stdout
    assert "--storage-option" in run_cli("cp", "--help").stdout


def test_bad_storage_option_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli("doctor", "-o", "no-equals-sign", str(tmp_path))
    assert result.returncode == 2
    assert "KEY=VALUE" in one_line_error(result)


def test_cli_imports_no_rich_until_needed() -> None:
    code = "import sys, atomicwrite._cli.main; print('rich' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


# --- doctor: local -----------------------------------------------------------------------------


@pytest.fixture
def tmpfs_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on a tmpfs: a fresh mount as root, else /dev/shm, else skip."""
    if sys.platform != "linux":
        pytest.skip("tmpfs is Linux's")
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    if os.geteuid() == 0 and shutil.which("mount"):
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)], check=False)
        if mounted.returncode == 0:
            try:
                yield mount_point
            finally:
                subprocess.run(["umount", str(mount_point)], check=True)
            return
    if Path("/dev/shm").is_dir() and statfs_type(Path("/dev/shm"))[1] == "tmpfs" and os.access("/dev/shm", os.W_OK):
        directory = Path("/dev/shm") / f"atomicwrite-doctor-test-{uuid.uuid4().hex}"
        directory.mkdir()
        try:
            yield directory
        finally:
            shutil.rmtree(directory)
        return
    pytest.skip("no tmpfs: not root (cannot mount one) and /dev/shm is not a writable tmpfs")


def test_doctor_on_tmpfs(tmpfs_dir: Path) -> None:
    (tmpfs_dir / "keep.txt").write_text("mine")
    before = sorted(os.listdir(tmpfs_dir))
    code, report = doctor_json(str(tmpfs_dir))
    magic, name = statfs_type(tmpfs_dir)
    assert name == "tmpfs"
    filesystem = report["checks"]["filesystem"]["value"]
    assert filesystem["type"] == "tmpfs"
    assert filesystem["magic"] == magic
    assert report["probed"] == str(tmpfs_dir)
    assert status(report, "o_tmpfile") == ("yes" if o_tmpfile_works(tmpfs_dir) else "no")
    assert status(report, "rename_noreplace") == ("yes" if rename_noreplace_works(tmpfs_dir) else "no")
    for key in ("atomic_write", "rename", "dir_fsync", "symlinks", "exclusive_create", "compare_and_swap", "flock"):
        assert status(report, key) == "yes", key
    # Memory-backed: every call succeeds, yet nothing survives a reboot. Not "full guarantees".
    assert holds(report)["durable"] is False
    assert holds(report)["atomic"] is True
    assert report["full_guarantees"] is False
    assert code == 3
    assert report["recommended_options"] == {"durability": "none"}
    usage = shutil.disk_usage(tmpfs_dir)
    assert report["checks"]["free_space"]["value"] <= usage.total
    assert sorted(os.listdir(tmpfs_dir)) == before  # every scratch file removed


def root_fs_directory(tmp_path: Path) -> Path:
    """A writable directory on the file system that holds /."""
    root = os.stat("/").st_dev
    if os.stat(tmp_path).st_dev == root:
        return tmp_path
    for candidate in ("/var/tmp", "/root", "/home"):
        if os.path.isdir(candidate) and os.stat(candidate).st_dev == root and os.access(candidate, os.W_OK):
            directory = Path(candidate) / f"atomicwrite-doctor-test-{uuid.uuid4().hex}"
            directory.mkdir()
            return directory
    pytest.skip("no writable directory on the root file system")


@pytest.mark.skipif(sys.platform != "linux", reason="statfs magic numbers and O_TMPFILE are Linux's")
def test_doctor_on_the_root_file_system(tmp_path: Path) -> None:
    directory = root_fs_directory(tmp_path)
    try:
        before = sorted(os.listdir(directory))
        code, report = doctor_json(str(directory))
        after = sorted(os.listdir(directory))
        tmpfile_expected = "yes" if o_tmpfile_works(directory) else "no"
    finally:
        if directory != tmp_path:
            shutil.rmtree(directory)
    assert after == before
    magic, name = statfs_type(Path("/"))
    filesystem = report["checks"]["filesystem"]["value"]
    assert filesystem["magic"] == magic
    if name.startswith("ext2"):  # coreutils names 0xef53 "ext2/ext3": the mount table says which
        assert filesystem["type"] in ("ext2", "ext3", "ext4")
    elif name != "UNKNOWN":
        assert filesystem["type"].startswith(name[:3].lower()), (filesystem, name)
    assert status(report, "o_tmpfile") == tmpfile_expected
    assert report["checks"]["fsync_latency_ms"]["value"] > 0
    assert report["checks"]["atomic_write"]["value"]["strategy"] == "posix"
    expected_full = filesystem["type"] in ("ext4", "xfs", "btrfs")
    if expected_full:
        assert report["full_guarantees"] is True, report["guarantees"]
        assert code == 0
        assert holds(report) == dict.fromkeys(holds(report), True)
        assert report["checks"]["atomic_write"]["value"]["durability"] == "full"
    else:
        assert code == (0 if report["full_guarantees"] else 3)
    statvfs = os.statvfs("/")
    free = statvfs.f_bavail * statvfs.f_frsize
    assert abs(report["checks"]["free_space"]["value"] - free) < 2 << 30


def test_doctor_text_output_has_no_colours_off_a_terminal(tmp_path: Path) -> None:
    result = run_cli("doctor", str(tmp_path / "some-file.txt"))
    assert result.returncode in (0, 3), result.stderr
    assert ANSI_ESCAPE not in result.stdout
    for label in ("file system", "O_TMPFILE", "RENAME_NOREPLACE", "directory fsync", "free space", "verdict:"):
        assert label in result.stdout
    assert os.listdir(tmp_path) == []


def test_doctor_missing_directory_is_one_line(tmp_path: Path) -> None:
    result = run_cli("doctor", str(tmp_path / "nowhere" / "file"))
    assert result.returncode == 1
    assert "no such directory" in one_line_error(result)


def test_doctor_memory_store_is_not_durable() -> None:
    code, report = doctor_json("memory://bucket/prefix")
    assert code == 3
    assert report["kind"] == "object store"
    assert status(report, "conditional_create") == "yes"
    assert status(report, "compare_and_swap") == "yes"
    assert holds(report)["durable"] is False


# --- doctor and friends on S3 ------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_cli(moto_endpoint: str) -> tuple[Any, list[str]]:
    """The S3 file system of the tests and the CLI's -o options that reach the same server."""
    import fsspec

    options = s3_options(moto_endpoint)
    fs = fsspec.filesystem("s3", **options)
    if not fs.exists(BUCKET):
        fs.call_s3("create_bucket", Bucket=BUCKET)
    client = json.dumps(options["client_kwargs"])
    args = ["-o", f"key={options['key']}", "-o", f"secret={options['secret']}", "-o", f"client_kwargs={client}"]
    return fs, args


def test_doctor_on_s3(s3_cli: tuple[Any, list[str]]) -> None:
    fs, args = s3_cli
    prefix = f"{BUCKET}/doctor-{uuid.uuid4().hex}"
    fs.pipe_file(f"{prefix}/existing.bin", b"keep")
    code, report = doctor_json(f"s3://{prefix}/existing.bin", *args)
    assert report["probed"] == f"s3://{prefix}/"
    for key in (
        "atomic_write",
        "conditional_create",
        "compare_and_swap",
        "multipart",
        "multipart_conditional_create",
        "multipart_compare_and_swap",
        "abort",
    ):
        assert status(report, key) == "yes", (key, report["checks"][key])
    limits = report["checks"]["multipart_limits"]["value"]
    assert (limits["min_part"], limits["max_parts"]) == (5 << 20, 10_000)
    assert limits["largest_object"] == limits["part_size"] * 10_000
    assert holds(report) == dict.fromkeys(holds(report), True)
    assert code == 0
    fs.invalidate_cache()
    assert fs.find(prefix) == [f"{prefix}/existing.bin"]
    assert fs.cat_file(f"{prefix}/existing.bin") == b"keep"
    uploads = fs.call_s3("list_multipart_uploads", Bucket=BUCKET, Prefix=prefix.partition("/")[2]).get("Uploads", [])
    assert uploads == []


def test_cp_to_and_from_s3_and_verify(s3_cli: tuple[Any, list[str]], tmp_path: Path) -> None:
    fs, args = s3_cli
    prefix = f"{BUCKET}/cp-{uuid.uuid4().hex}"
    payload = os.urandom((6 << 20) + 123)  # two 5 MiB parts: a multipart upload
    source = tmp_path / "weights.bin"
    source.write_bytes(payload)
    up = run_cli("cp", str(source), f"s3://{prefix}/", *args, "-o", "part_size=5242880")
    assert up.returncode == 0, up.stderr
    assert ANSI_ESCAPE not in up.stdout + up.stderr
    assert fs.cat_file(f"{prefix}/weights.bin") == payload
    checked = run_cli("verify", "--json", f"s3://{prefix}/weights.bin", *args)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    report = json.loads(checked.stdout)
    assert report["verdict"] == "ok"
    (checksum,) = [c for c in report["checks"] if c["name"].startswith("recorded checksum")]
    assert checksum["ok"] is True
    # A multipart upload's CRC64NVME covers the whole object (S3 combines the parts' CRCs).
    assert checksum["name"] == "recorded checksum (S3 crc64nvme)"
    assert "whole object" in checksum["detail"]

    small = tmp_path / "small.json"
    small.write_text('{"step": 1}')
    assert run_cli("cp", str(small), f"s3://{prefix}/small.json", *args).returncode == 0
    single = json.loads(run_cli("verify", "--json", f"s3://{prefix}/small.json", *args).stdout)
    assert single["verdict"] == "ok"
    assert any("whole object" in c["detail"] for c in single["checks"] if c["ok"])

    down = tmp_path / "back.bin"
    result = run_cli("cp", f"s3://{prefix}/weights.bin", str(down), *args)
    assert result.returncode == 0, result.stderr
    assert down.read_bytes() == payload
    assert sorted(os.listdir(tmp_path)) == ["back.bin", "small.json", "weights.bin"]


# --- verify ------------------------------------------------------------------------------------


def test_verify_torch_checkpoint(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="torch is not installed")
    import torch

    import atomicwrite.torch as awt

    good = tmp_path / "good.pt"
    awt.save({"w": torch.arange(1000)}, good)
    result = run_cli("verify", str(good))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "torch checkpoint: ok" in result.stdout
    torn = tmp_path / "torn.pt"
    torn.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    result = run_cli("verify", "--json", str(torn))
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["verdict"] == "torn"
    assert report["checks"][0]["detail"].startswith("torn")


def test_verify_sidecar_checksum(tmp_path: Path) -> None:
    data = tmp_path / "table.csv"
    data.write_bytes(b"a,b\n1,2\n")
    unverified = run_cli("verify", str(data))
    assert unverified.returncode == 3, unverified.stdout
    assert "unverified" in unverified.stdout
    sidecar = tmp_path / "table.csv.sha256"
    sidecar.write_text(f"{hashlib.sha256(data.read_bytes()).hexdigest()}  table.csv\n")
    assert run_cli("verify", str(data)).returncode == 0
    data.write_bytes(b"a,b\n1,")  # cut short after the checksum was recorded
    result = run_cli("verify", str(data))
    assert result.returncode == 1
    assert "does NOT match" in result.stdout


def test_verify_plain_directory_is_unverified(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"x")
    result = run_cli("verify", str(tmp_path))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "unverified" in result.stdout


def test_verify_published_directory_and_a_damaged_one(tmp_path: Path) -> None:
    target = tmp_path / "ckpt"
    with atomic_directory(target) as stage:
        Path(stage / "model.bin").write_bytes(b"m" * 1000)
        Path(stage / "optim.bin").write_bytes(b"o" * 500)
    intact = run_cli("verify", str(target))
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert "2 file(s)" in intact.stdout
    (target / "optim.bin").write_bytes(b"o" * 499 + b"x")  # same size, other bytes
    damaged = run_cli("verify", str(target))
    assert damaged.returncode == 1, damaged.stdout
    assert "optim.bin" in damaged.stdout
    (target / "optim.bin").unlink()
    missing = run_cli("verify", str(target))
    assert missing.returncode == 1, missing.stdout
    assert "missing" in missing.stdout


def test_verify_checkpoint_store_checks_what_latest_names(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "run")
    for step in (1, 2):
        with store.save(step) as stage:
            Path(stage / "weights.bin").write_bytes(bytes([step]) * 64)
    named = store.pointer()
    assert named is not None
    result = run_cli("verify", str(tmp_path / "run"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert named in result.stdout
    (tmp_path / "run" / named / "weights.bin").write_bytes(b"")
    torn = run_cli("verify", str(tmp_path / "run"))
    assert torn.returncode == 1, torn.stdout


def test_verify_missing_file_is_one_line(tmp_path: Path) -> None:
    result = run_cli("verify", str(tmp_path / "nothing.pt"))
    assert result.returncode == 1
    assert "no such file" in one_line_error(result)


# --- cp ----------------------------------------------------------------------------------------


def test_cp_local_into_a_directory(tmp_path: Path) -> None:
    source = tmp_path / "config.toml"
    source.write_text("x = 1\n")
    target_dir = tmp_path / "out"
    target_dir.mkdir()
    (target_dir / "config.toml").write_text("old\n")
    result = run_cli("cp", str(source), str(target_dir))
    assert result.returncode == 0, result.stderr
    assert (target_dir / "config.toml").read_text() == "x = 1\n"
    assert "durability 'full'" in result.stdout
    assert os.listdir(target_dir) == ["config.toml"]


def test_cp_exclusive_refuses_and_keeps_the_target(tmp_path: Path) -> None:
    source, target = tmp_path / "new", tmp_path / "old"
    source.write_bytes(b"new")
    target.write_bytes(b"old")
    result = run_cli("cp", "-x", str(source), str(target))
    assert result.returncode == 1
    assert "already exists" in one_line_error(result)
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["new", "old"]


def test_cp_missing_source_is_one_line(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"keep")
    result = run_cli("cp", str(tmp_path / "absent"), str(target))
    assert result.returncode == 1
    assert "no such file" in one_line_error(result)
    assert target.read_bytes() == b"keep"
    debug = run_cli("--debug", "cp", str(tmp_path / "absent"), str(target))
    assert "Traceback" in debug.stderr


def test_cp_unknown_protocol_is_one_line(tmp_path: Path) -> None:
    result = run_cli("cp", "nosuchproto://x/y", str(tmp_path / "t"))
    assert result.returncode == 1
    assert "nosuchproto" in one_line_error(result)


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_cp_draws_a_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    import pty

    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(3 << 20))
    controller, terminal = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "ATOMICWRITE_TEST_VARIANT"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    env.pop("NO_COLOR", None)
    env["TERM"] = "xterm-256color"
    with subprocess.Popen(
        [sys.executable, "-m", "atomicwrite", "cp", str(source), str(tmp_path / "copy.bin")],
        stdout=subprocess.PIPE,
        stderr=terminal,
        env=env,
    ) as process:
        os.close(terminal)
        drawn = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            drawn += chunk
        assert process.wait(timeout=60) == 0
    os.close(controller)
    assert (tmp_path / "copy.bin").read_bytes() == source.read_bytes()
    assert b"copying" in drawn
    assert b"\x1b[" in drawn  # drawn with terminal control sequences


def test_atomic_open_is_what_cp_uses(tmp_path: Path) -> None:
    """A copy onto a file a reader holds open: the reader keeps the complete old content."""
    target = tmp_path / "model.bin"
    with atomic_open(target, "wb") as f:
        f.write(b"old" * 1000)
    source = tmp_path / "source.bin"
    source.write_bytes(b"new" * 1000)
    with open(target, "rb") as reader:
        assert run_cli("cp", str(source), str(target)).returncode == 0
        assert reader.read() == b"old" * 1000
    assert target.read_bytes() == b"new" * 1000


# --- recorded checksums on GCS and Azure -------------------------------------------------------


@pytest.fixture
def gcs_cli(request: pytest.FixtureRequest) -> tuple[Any, list[str], str]:
    from tests import _gcs_server

    server = request.getfixturevalue("gcs_server")
    options = server.options()
    import fsspec

    args = [arg for key, value in options.items() for arg in ("-o", f"{key}={value}")]
    return fsspec.filesystem("gs", **options), args, _gcs_server.BUCKET


def test_verify_gcs_recorded_checksums(gcs_cli: tuple[Any, list[str], str], tmp_path: Path) -> None:
    fs, args, bucket = gcs_cli
    prefix = f"{bucket}/verify-{uuid.uuid4().hex}"
    source = tmp_path / "shard.bin"
    source.write_bytes(os.urandom(600 * 1024))
    # Small (one upload) and chunked (a resumable session of 256 KiB chunks).
    for name, part_size in (("one.bin", None), ("chunked.bin", 256 * 1024)):
        extra = ["-o", f"part_size={part_size}"] if part_size else []
        assert run_cli("cp", str(source), f"gs://{prefix}/{name}", *args, *extra).returncode == 0
        result = run_cli("verify", "--json", f"gs://{prefix}/{name}", *args)
        assert result.returncode == 0, result.stdout + result.stderr
        (checksum,) = [c for c in json.loads(result.stdout)["checks"] if c["name"].startswith("recorded checksum")]
        assert checksum["ok"] is True
        assert "md5" in checksum["detail"]
    assert fs.cat_file(f"{prefix}/chunked.bin") == source.read_bytes()


def test_verify_azure_recorded_md5(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    from tests._azurite import azure_options

    endpoint = request.getfixturevalue("azurite_endpoint")
    options = azure_options(endpoint)
    import fsspec

    fs = fsspec.filesystem("abfs", **options)
    container = f"verify{uuid.uuid4().hex[:12]}"
    fs.mkdir(container)
    args = [arg for key, value in options.items() for arg in ("-o", f"{key}={value}")]
    source = tmp_path / "small.json"
    source.write_text('{"step": 7}')
    assert run_cli("cp", str(source), f"az://{container}/run/small.json", *args).returncode == 0
    result = run_cli("verify", "--json", f"az://{container}/run/small.json", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    (checksum,) = [c for c in json.loads(result.stdout)["checks"] if c["name"].startswith("recorded checksum")]
    assert checksum == {
        "name": "recorded checksum (Azure Content-MD5)",
        "ok": True,
        "detail": "md5 of the content matches",
    }
    # A block-list commit records no MD5: nothing to check, and verify says so.
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 << 20))
    assert run_cli("cp", str(big), f"az://{container}/run/big.bin", *args, "-o", "part_size=1048576").returncode == 0
    unverified = run_cli("verify", f"az://{container}/run/big.bin", *args)
    assert unverified.returncode == 3, unverified.stdout + unverified.stderr


def test_a_recorded_checksum_that_does_not_match_fails() -> None:
    """The comparison itself, on memory:// (no store server keeps a wrong checksum)."""
    import fsspec

    from atomicwrite._cli.verify import _compare

    fs = fsspec.filesystem("memory")
    fs.pipe_file("/verify/data.bin", b"the bytes read back")
    md5 = hashlib.md5(b"the bytes read back").digest()
    factories: Any = {"md5": hashlib.md5}
    right = _compare("c", fs, "/verify/data.bin", {"md5": base64.b64encode(md5).decode()}, factories)
    assert right.ok is True
    wrong = _compare("c", fs, "/verify/data.bin", {"md5": base64.b64encode(b"\0" * 16).decode()}, factories)
    assert wrong.ok is False
    assert "does NOT match" in wrong.detail


def test_doctor_on_gcs(gcs_cli: tuple[Any, list[str], str]) -> None:
    fs, args, bucket = gcs_cli
    prefix = f"{bucket}/doctor-{uuid.uuid4().hex}"
    code, report = doctor_json(f"gs://{prefix}", *args)
    for key in ("atomic_write", "conditional_create", "compare_and_swap", "multipart", "abort"):
        assert status(report, key) == "yes", (key, report["checks"][key])
    limits = report["checks"]["multipart_limits"]["value"]
    assert (limits["min_part"], limits["max_parts"]) == (256 * 1024, None)
    assert holds(report)["durable"] is True
    assert code == (0 if report["full_guarantees"] else 3)
    fs.invalidate_cache()
    assert not fs.exists(prefix) or fs.find(prefix) == []


def test_doctor_on_azure(request: pytest.FixtureRequest) -> None:
    from tests._azurite import azure_options

    options = azure_options(request.getfixturevalue("azurite_endpoint"))
    import fsspec

    fs = fsspec.filesystem("abfs", **options)
    container = f"doctor{uuid.uuid4().hex[:12]}"
    fs.mkdir(container)
    args = [arg for key, value in options.items() for arg in ("-o", f"{key}={value}")]
    code, report = doctor_json(f"az://{container}/run", *args)
    for key in ("atomic_write", "conditional_create", "compare_and_swap", "multipart", "abort"):
        assert status(report, key) == "yes", (key, report["checks"][key])
    assert report["checks"]["multipart_limits"]["value"]["max_parts"] == 50_000
    assert code == 0, report["guarantees"]
    fs.invalidate_cache()
    assert fs.find(container) == []
