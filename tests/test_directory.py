"""atomic_directory, verify_directory and CheckpointStore: local, memory:// and S3 (moto)."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from atomicwrite import (
    CheckpointStore,
    ConflictError,
    TargetExistsError,
    UnsupportedTargetError,
    UsageError,
    atomic_directory,
    atomic_open,
    begin_directory,
    open_directory,
    sweep,
    verify_directory,
)
from atomicwrite._checksums import CHECKSUMS, new_digest
from atomicwrite._directories.manifest import MANIFEST_NAME, manifest_algorithm
from atomicwrite._local.posix import PosixStrategy
from atomicwrite._names import parse_staging_name
from tests._dirworkers import content, write_version
from tests._stores import moto_endpoint, s3_options

__all__ = ["moto_endpoint"]

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "atomicwrite-dirs"


@dataclass
class Place:
    """Where a test's directories go: ``url(name)`` and the storage_options to reach it."""

    kind: str
    base: str
    options: dict[str, Any]
    fs: Any = None

    def url(self, name: str) -> str:
        return os.path.join(self.base, name) if self.kind == "local" else f"{self.base}/{name}"

    def read(self, target: str, name: str) -> bytes:
        with open_directory(target, storage_options=self.options).open(name) as file:
            data: bytes = file.read()
        return data

    def everything(self, name: str) -> list[str]:
        """Every file (local: every entry) under ``name``, hidden ones included."""
        if self.kind == "local":
            found = []
            for directory, subdirs, files in os.walk(self.url(name)):
                found += [os.path.relpath(os.path.join(directory, f), self.url(name)) for f in files + subdirs]
            return sorted(found)
        self.fs.invalidate_cache()
        prefix = self.fs._strip_protocol(self.url(name))
        return sorted(path[len(prefix) + 1 :] for path in self.fs.find(prefix))

    def siblings(self) -> list[str]:
        """Entries beside the test's directories (staging leftovers would show here)."""
        if self.kind == "local":
            return sorted(os.listdir(self.base))
        self.fs.invalidate_cache()
        prefix = self.fs._strip_protocol(self.base)
        # Objects only: memory:// keeps empty pseudo-directories that no store has.
        return sorted({path[len(prefix) + 1 :].split("/")[0] for path in self.fs.find(prefix)})


@pytest.fixture(scope="module")
def s3fs_instance(moto_endpoint: str) -> Iterator[Any]:
    import fsspec

    fs = fsspec.filesystem("s3", **s3_options(moto_endpoint))
    if not fs.exists(BUCKET):
        fs.call_s3("create_bucket", Bucket=BUCKET)
    yield fs
    # Close the pooled connections now, rather than when their keep-alive runs out during a
    # later module's test (some count this process's descriptors); the next user of these
    # storage_options gets a fresh file system from fsspec.
    type(fs).clear_instance_cache()
    if fs._s3 is not None:
        type(fs).close_session(fs.loop, fs._s3)
    deadline = time.monotonic() + 5
    previous = -1
    while time.monotonic() < deadline:
        count = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0
        if count == previous:
            break
        previous = count
        time.sleep(0.2)


@pytest.fixture(params=["local", "memory", "s3"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Place]:
    kind: str = request.param
    if kind == "local":
        base = tmp_path / "dirs"
        base.mkdir()
        yield Place("local", str(base), {})
    elif kind == "memory":
        import fsspec

        base = f"memory://dirs-{uuid.uuid4().hex}"
        yield Place("memory", base, {}, fsspec.filesystem("memory"))
    else:
        fs = request.getfixturevalue("s3fs_instance")
        endpoint = request.getfixturevalue("moto_endpoint")
        yield Place("s3", f"s3://{BUCKET}/{uuid.uuid4().hex}", s3_options(endpoint), fs)


def write_files(stage: Any, files: dict[str, bytes], place: Place) -> None:
    """Write through each route a caller may take: plain open locally, fsspec on stores."""
    for name, data in files.items():
        if place.kind == "local":
            path = Path(stage / name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        else:
            import fsspec

            with fsspec.open(stage / name, "wb", **place.options) as file:
                file.write(data)


def checksum_of(algorithm: str, data: bytes) -> str:
    digest = new_digest(algorithm)
    digest.update(data)
    return f"{algorithm}:{digest.digest().hex()}"


# --- publishing ----------------------------------------------------------------------------


def test_more_files_than_one_flush_group_are_all_flushed_hashed_and_closed(tmp_path: Path) -> None:
    """Staged files are flushed in groups (their writeback started together): every group,
    the last partial one included, is hashed, listed and closed, for each way of writing."""
    files = {f"shard-{index:03}.bin": os.urandom(index + 1) for index in range(150)}
    descriptors = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    for checksums in (True, False):
        target = tmp_path / f"ckpt-{checksums}"
        with atomic_directory(target, checksums=checksums) as stage:
            for index, (name, data) in enumerate(files.items()):
                if index % 2:
                    (Path(stage) / name).write_bytes(data)
                else:
                    with stage.open(name) as file:
                        file.write(data)
        verification = verify_directory(target)
        assert verification.ok, verification.problems
        assert verification.manifest is not None
        expected = {
            name: (len(data), checksum_of(manifest_algorithm(), data) if checksums else None)
            for name, data in files.items()
        }
        assert {e.name: (e.size, e.checksum) for e in verification.manifest.files} == expected
    if descriptors is not None:
        assert len(os.listdir("/proc/self/fd")) == descriptors


def test_a_manifest_that_records_sha256_still_verifies(tmp_path: Path) -> None:
    """Manifests written before the CRC default list SHA-256: they verify, and damage is found."""
    target = tmp_path / "ckpt"
    with atomic_directory(target) as stage:
        (Path(stage) / "a.bin").write_bytes(b"old format")
    manifest_path = target / MANIFEST_NAME
    record = json.loads(manifest_path.read_bytes())
    for entry in record["files"]:
        entry.pop("checksum", None)
        entry["sha256"] = checksum_of("sha256", (target / entry["name"]).read_bytes()).partition(":")[2]
    manifest_path.write_text(json.dumps(record))
    verification = verify_directory(target)
    assert verification.ok, verification.problems
    assert verification.manifest is not None
    assert [e.checksum for e in verification.manifest.files] == [checksum_of("sha256", b"old format")]
    (target / "a.bin").write_bytes(b"old formaT")
    assert [p.kind for p in verify_directory(target).problems] == ["checksum"]


def test_publish_lists_every_file_in_the_manifest(place: Place) -> None:
    target = place.url("ckpt")
    files = {"a.bin": b"a" * 1000, "sub/b.bin": b"b" * 10, "empty": b""}
    with atomic_directory(target, storage_options=place.options) as stage:
        write_files(stage, files, place)
        with stage.open("c.txt") as file:
            file.write(b"through atomic_open")
    files["c.txt"] = b"through atomic_open"
    verification = verify_directory(target, storage_options=place.options)
    assert verification.ok, verification.problems
    assert verification.manifest is not None
    listed = {entry.name: (entry.size, entry.checksum) for entry in verification.manifest.files}
    # Files written by other means are read back once for the fastest installed CRC; one
    # written through stage.open keeps the checksum its upload computed on the way (a local
    # file computes none, so it is read back too).
    opened = manifest_algorithm() if place.kind == "local" else str(listed["c.txt"][1]).partition(":")[0]
    assert opened in CHECKSUMS
    algorithms = {name: opened if name == "c.txt" else manifest_algorithm() for name in files}
    assert listed == {name: (len(data), checksum_of(algorithms[name], data)) for name, data in files.items()}
    for name, data in files.items():
        assert place.read(target, name) == data
    assert place.siblings() == ["ckpt"]


def test_str_is_the_path_and_repr_the_detail(place: Place) -> None:
    """As with pathlib.Path: str() of a staging or published directory is its path (or URL)."""
    target = place.url("ckpt")
    with atomic_directory(target, storage_options=place.options) as stage:
        write_files(stage, {"a.bin": b"a"}, place)
        assert str(stage) == stage.location
        assert f"{stage}" == stage.location
        assert str(stage).startswith(os.path.dirname(target) if place.kind == "local" else target)
        if place.kind == "local":
            assert str(stage) == os.fspath(stage)
        assert repr(stage) == f"<StagingDirectory {stage.location!r}>"
    published = open_directory(target, storage_options=place.options)
    assert str(published) == target
    assert "manifest=" in repr(published)
    assert repr(published) != str(published)


def test_replace_publishes_the_new_version_and_drops_the_old(place: Place) -> None:
    target = place.url("ckpt")
    with atomic_directory(target, storage_options=place.options) as stage:
        write_files(stage, {"old.bin": b"old", "shared.bin": b"old"}, place)
    with atomic_directory(target, storage_options=place.options) as stage:
        write_files(stage, {"new.bin": b"new", "shared.bin": b"new!"}, place)
    assert verify_directory(target, storage_options=place.options).ok
    assert place.read(target, "shared.bin") == b"new!"
    if place.kind == "local":
        assert place.everything("ckpt") == sorted([MANIFEST_NAME, "new.bin", "shared.bin"])
    else:
        generation = open_directory(target, storage_options=place.options).manifest.generation
        assert place.everything("ckpt") == sorted([MANIFEST_NAME, f"{generation}/new.bin", f"{generation}/shared.bin"])
    assert place.siblings() == ["ckpt"]


def test_an_exception_in_the_block_leaves_the_target_and_nothing_else(place: Place) -> None:
    target = place.url("ckpt")
    with atomic_directory(target, storage_options=place.options) as stage:
        write_files(stage, {"keep.bin": b"keep"}, place)
    before = place.everything("ckpt")
    with pytest.raises(KeyError), atomic_directory(target, storage_options=place.options) as stage:
        write_files(stage, {"keep.bin": b"changed", "extra.bin": b"x"}, place)
        with stage.open("opened.bin") as file:
            file.write(b"committed into the staging area")
        raise KeyError("serializer failed")
    assert place.everything("ckpt") == before
    assert place.read(target, "keep.bin") == b"keep"
    assert place.siblings() == ["ckpt"]


def test_an_exception_before_any_publish_leaves_no_target(place: Place) -> None:
    with pytest.raises(RuntimeError), atomic_directory(place.url("never"), storage_options=place.options) as stage:
        write_files(stage, {"a": b"a"}, place)
        raise RuntimeError
    assert place.siblings() == []
    assert not verify_directory(place.url("never"), storage_options=place.options)


def test_replace_false_refuses_an_existing_directory(place: Place) -> None:
    target = place.url("ckpt")
    with atomic_directory(target, storage_options=place.options) as stage:
        write_files(stage, {"a": b"first"}, place)
    with pytest.raises(TargetExistsError):  # noqa: SIM117 - the error may come from either step
        with atomic_directory(target, replace=False, storage_options=place.options) as stage:
            write_files(stage, {"a": b"second"}, place)
    assert place.read(target, "a") == b"first"
    assert place.siblings() == ["ckpt"]


def test_staging_names_are_checked(place: Place) -> None:
    with pytest.raises(UsageError), atomic_directory(place.url("x"), storage_options=place.options) as stage:
        stage.path("../escape")
    for bad in ("/abs", "a/../b", "", MANIFEST_NAME):
        with pytest.raises(UsageError), atomic_directory(place.url("x"), storage_options=place.options) as stage:
            stage.path(bad)
    assert place.siblings() == []


def test_verify_reports_damage(place: Place) -> None:
    target = place.url("ckpt")
    with atomic_directory(target, storage_options=place.options) as stage:
        write_files(stage, {"size.bin": b"12345", "sum.bin": b"abcde", "gone.bin": b"x"}, place)
    directory = open_directory(target, storage_options=place.options)
    if place.kind == "local":
        Path(directory / "size.bin").write_bytes(b"123456")
        Path(directory / "sum.bin").write_bytes(b"abcdX")
        Path(directory / "gone.bin").unlink()
        Path(target, "stray.bin").write_bytes(b"?")
    else:
        fs = place.fs
        fs.pipe_file(fs._strip_protocol(directory / "size.bin"), b"123456")
        fs.pipe_file(fs._strip_protocol(directory / "sum.bin"), b"abcdX")
        fs.rm_file(fs._strip_protocol(directory / "gone.bin"))
    verification = verify_directory(target, storage_options=place.options)
    assert not verification
    found = {(problem.kind, problem.name) for problem in verification.problems}
    expected = {("size", "size.bin"), ("checksum", "sum.bin"), ("missing", "gone.bin")}
    if place.kind == "local":
        expected.add(("unlisted", "stray.bin"))
    assert found == expected
    quick = verify_directory(target, checksums=False, storage_options=place.options)
    assert {(problem.kind, problem.name) for problem in quick.problems} == expected - {("checksum", "sum.bin")}


def test_verify_without_a_directory(place: Place) -> None:
    verification = verify_directory(place.url("absent"), storage_options=place.options)
    assert not verification.ok
    assert [problem.kind for problem in verification.problems] == ["no-directory"]


def test_verify_a_plain_directory_or_a_file(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "file").write_bytes(b"x")
    assert [p.kind for p in verify_directory(tmp_path / "plain").problems] == ["no-manifest"]
    assert [(p.kind, p.detail) for p in verify_directory(tmp_path / "file").problems] == [
        ("no-directory", "not a directory")
    ]
    (tmp_path / "plain" / MANIFEST_NAME).write_text("{not json")
    assert [p.kind for p in verify_directory(tmp_path / "plain").problems] == ["bad-manifest"]


def test_racing_publishers_on_a_store_one_wins(place: Place) -> None:
    if place.kind == "local":
        pytest.skip("locally the last rename wins; the race is between object-store manifests")
    target = place.url("ckpt")
    first = begin_directory(target, replace=False, storage_options=place.options)
    second = begin_directory(target, replace=False, storage_options=place.options)
    write_files(first.staging, {"who": b"first"}, place)
    write_files(second.staging, {"who": b"second"}, place)
    first.commit()
    with pytest.raises(ConflictError):
        second.commit()
    assert place.read(target, "who") == b"first"
    generation = open_directory(target, storage_options=place.options).manifest.generation
    assert place.everything("ckpt") == sorted([MANIFEST_NAME, f"{generation}/who"])


def test_racing_replacements_on_a_store_one_wins(place: Place) -> None:
    if place.kind == "local":
        pytest.skip("locally the last rename wins; the race is between object-store manifests")
    target = place.url("ckpt")
    with atomic_directory(target, storage_options=place.options) as stage:
        write_files(stage, {"who": b"original"}, place)
    first = begin_directory(target, storage_options=place.options)
    second = begin_directory(target, storage_options=place.options)
    write_files(first.staging, {"who": b"first"}, place)
    write_files(second.staging, {"who": b"second"}, place)
    first.commit()
    with pytest.raises(ConflictError):
        second.commit()
    assert place.read(target, "who") == b"first"
    assert verify_directory(target, storage_options=place.options).ok


# --- local specifics -----------------------------------------------------------------------


def test_local_refuses_symlinks_in_the_staging_area(tmp_path: Path) -> None:
    target = tmp_path / "ckpt"
    with pytest.raises(UnsupportedTargetError), atomic_directory(target) as stage:
        os.symlink("/etc/passwd", stage / "link")
    assert os.listdir(tmp_path) == []


def test_local_refuses_a_file_at_the_target(tmp_path: Path) -> None:
    (tmp_path / "ckpt").write_bytes(b"a file")
    with pytest.raises(UnsupportedTargetError), atomic_directory(tmp_path / "ckpt"):
        pass
    assert (tmp_path / "ckpt").read_bytes() == b"a file"
    assert os.listdir(tmp_path) == ["ckpt"]


@pytest.mark.parametrize("missing", [("exchange",), ("exchange", "rename_exclusive")])
def test_local_replace_without_rename_exchange(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing: tuple[str, ...]
) -> None:
    """The fallback where renameat2 is missing: park the old directory, move the new one in."""
    for call in missing:
        monkeypatch.setattr(PosixStrategy, call, lambda self, dir_fd, source, destination: errno.ENOSYS)
    target = tmp_path / "ckpt"
    for version in (b"one", b"two", b"three"):
        with atomic_directory(target) as stage:
            Path(stage / "v").write_bytes(version)
        assert (target / "v").read_bytes() == version
        assert verify_directory(target).ok
        assert os.listdir(tmp_path) == ["ckpt"]


def test_local_durability_none_still_publishes(tmp_path: Path) -> None:
    with atomic_directory(tmp_path / "ckpt", durability="none", checksums=False) as stage:
        Path(stage / "a").write_bytes(b"a")
    verification = verify_directory(tmp_path / "ckpt")
    assert verification.ok
    assert verification.manifest is not None
    assert verification.manifest.files[0].sha256 is None


@pytest.mark.parametrize("points_to", ["real", "real/"])
def test_local_target_through_a_symlink_keeps_the_link(tmp_path: Path, points_to: str) -> None:
    (tmp_path / "real").mkdir()
    os.symlink(points_to, tmp_path / "link")
    with atomic_directory(tmp_path / "link") as stage:
        Path(stage / "a").write_bytes(b"a")
    assert os.readlink(tmp_path / "link") == points_to
    assert (tmp_path / "real" / "a").read_bytes() == b"a"


@pytest.mark.parametrize("points_to", ["missing", "real"])
def test_local_create_refuses_a_symlink_at_the_name(tmp_path: Path, points_to: str) -> None:
    """replace=False is an exclusive create: a symlink is a name, never followed."""
    (tmp_path / "real").mkdir()
    os.symlink(points_to, tmp_path / "link")
    with pytest.raises(TargetExistsError), atomic_directory(tmp_path / "link", replace=False) as stage:
        Path(stage / "a").write_bytes(b"a")
    assert sorted(os.listdir(tmp_path)) == ["link", "real"]
    assert os.listdir(tmp_path / "real") == []
    assert os.readlink(tmp_path / "link") == points_to


def test_local_create_loses_to_a_symlink_planted_before_publishing(tmp_path: Path) -> None:
    with pytest.raises(TargetExistsError), atomic_directory(tmp_path / "ckpt", replace=False) as stage:
        Path(stage / "a").write_bytes(b"a")
        os.symlink("missing", tmp_path / "ckpt")
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("planted", ["symlink", "file", "directory with a file"])
def test_local_create_without_a_no_replace_rename_still_refuses_what_appeared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, planted: str
) -> None:
    """Without renameat2 the create falls back to rename(2): something that appears between the
    last look and that rename is refused by rename itself, and reported as existing."""
    target = tmp_path / "ckpt"

    def plant_then_refuse(self: PosixStrategy, dir_fd: int, source: str, destination: str) -> int:
        if planted == "symlink":
            os.symlink("missing", target)
        elif planted == "file":
            target.write_bytes(b"theirs")
        elif not target.exists():
            target.mkdir()
            (target / "b").write_bytes(b"theirs")
        return errno.ENOSYS

    monkeypatch.setattr(PosixStrategy, "rename_exclusive", plant_then_refuse)
    with pytest.raises(TargetExistsError), atomic_directory(target, replace=False) as stage:
        Path(stage / "a").write_bytes(b"mine")
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    assert not (tmp_path / "missing").exists()
    assert target.is_symlink() or target.is_file() or os.listdir(target) == ["b"]


@pytest.mark.parametrize("refusal", ["EINVAL", "EOPNOTSUPP", "ENOTSUP"])
def test_a_refused_rename_flag_falls_back_for_files_and_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refusal: str, local_variant: str
) -> None:
    """A file system that refuses RENAME_NOREPLACE (EINVAL on Linux, ENOTSUP on macOS...): a file
    is published with link(2) (a named temp; an O_TMPFILE is linked in any case), a directory
    with rename(2), both still exclusive."""
    import ctypes

    from atomicwrite._local import posix

    def refusing(dir_fd: int, source: bytes, dir_fd2: int, destination: bytes, flags: int) -> int:
        ctypes.set_errno(getattr(errno, refusal))
        return -1

    monkeypatch.setattr(posix, "_renameat2", refusing)
    assert PosixStrategy().rename_exclusive(0, "a", "b") == errno.ENOSYS
    with atomic_open(tmp_path / "file", "xb") as file:
        file.write(b"file")
    with atomic_directory(tmp_path / "dir", replace=False) as stage:
        Path(stage / "a").write_bytes(b"a")
    assert (tmp_path / "file").read_bytes() == b"file"
    assert (tmp_path / "dir" / "a").read_bytes() == b"a"
    with pytest.raises(TargetExistsError):
        atomic_open(tmp_path / "file", "xb")


def _spawn(role: str, *args: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "tests._dirworkers", role, *map(str, args)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _collect(proc: subprocess.Popen[str], timeout: float = 120) -> Any:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def _wait_progress(progress: Path, at_least: int, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        text = progress.read_text() if progress.exists() else ""
        if text and int(text) >= at_least:
            return
        if proc.poll() is not None:
            raise AssertionError(f"worker exited early: {proc.communicate()[1]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no progress to {at_least} in {timeout} s")
        time.sleep(0.01)


def test_sweep_removes_a_dead_writers_staging_directory_only(tmp_path: Path) -> None:
    base = tmp_path / "dirs"
    base.mkdir()
    progress, ready = tmp_path / "progress", tmp_path / "ready"
    replacer = _spawn("replacer", base / "ckpt", 0, "{}", progress)
    stager = _spawn("stager", base / "staged", ready)
    try:
        _wait_progress(progress, 2, replacer)
        time.sleep(random.uniform(0, 0.05))
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        for proc in (replacer, stager):
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
    assert any(".staged.aw" in entry for entry in os.listdir(base))
    live = begin_directory(base / "other")  # a live writer's staging area: never swept
    try:
        removed = sweep(base, older_than=0)
        assert removed
        assert all(parse_staging_name(Path(path).name) for path in removed)
        assert sorted(os.listdir(base)) == sorted(["ckpt", Path(os.fspath(live.staging)).name])
        assert verify_directory(base / "ckpt").ok
    finally:
        live.discard()
    assert os.listdir(base) == ["ckpt"]


# --- readers during many saves --------------------------------------------------------------


@pytest.mark.slow
def test_a_polling_reader_never_sees_a_partial_directory(place: Place, tmp_path: Path) -> None:
    if place.kind == "memory":
        pytest.skip("memory:// lives in one process; the reader would be another")
    target = place.url("ckpt")
    with atomic_directory(target, storage_options=place.options) as stage:
        write_version(stage, 0)
    options = json.dumps(place.options)
    stop, ready = tmp_path / "stop", tmp_path / "ready"
    reader = _spawn("dir_reader", target, stop, ready, options)
    deadline = time.monotonic() + 60
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    saves = 30 if place.kind == "local" else 12
    writer = _spawn("replacer", target, saves, options, tmp_path / "progress")
    try:
        assert _collect(writer)["saves"] == saves
    finally:
        stop.touch()
        result = _collect(reader)
    assert result["count"] == 0, result["errors"]
    assert result["consistent"] > 0, result
    assert verify_directory(target, storage_options=place.options).ok


# --- CheckpointStore -----------------------------------------------------------------------


def test_store_saves_generations_and_moves_latest(place: Place) -> None:
    store = CheckpointStore(place.url("run"), storage_options=place.options)
    assert store.latest() is None
    for seq in (1, 2, 3):
        with store.save() as stage:
            write_version(stage, seq)
    assert store.generations() == ["gen-00000001", "gen-00000002", "gen-00000003"]
    assert store.pointer() == "gen-00000003"
    latest = store.latest()
    assert latest is not None
    assert latest.number == 3
    with latest.open("model.bin") as file:
        assert file.read() == content(3, "model.bin")
    assert store.verify().ok
    with store.save(step=10) as stage:
        write_version(stage, 10)
    assert store.pointer() == "gen-00000010"
    with pytest.raises(TargetExistsError), store.save(step=10) as stage:
        write_version(stage, 11)
    assert store.pointer() == "gen-00000010"


def test_store_failed_save_keeps_latest(place: Place) -> None:
    store = CheckpointStore(place.url("run"), storage_options=place.options)
    with store.save() as stage:
        write_version(stage, 1)
    with pytest.raises(ValueError, match="diverged"), store.save() as stage:
        write_version(stage, 2)
        raise ValueError("diverged")
    assert store.generations() == ["gen-00000001"]
    latest = store.latest()
    assert latest is not None
    assert latest.name == "gen-00000001"


def test_store_retention_keeps_latest_and_newest(place: Place) -> None:
    store = CheckpointStore(place.url("run"), keep_last=2, storage_options=place.options)
    for seq in range(1, 6):
        with store.save() as stage:
            write_version(stage, seq)
    assert store.generations() == ["gen-00000004", "gen-00000005"]
    if place.kind == "local":
        # latest pinned by hand to the older one: retention removes neither it nor a newer one
        store._swap_symlink("gen-00000004")
        assert store.prune(keep_last=1) == []
        assert store.generations() == ["gen-00000004", "gen-00000005"]


def test_store_latest_skips_a_damaged_generation(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "run")
    for seq in (1, 2):
        with store.save() as stage:
            write_version(stage, seq)
    Path(tmp_path / "run" / "gen-00000002" / "model.bin").write_bytes(b"bit rot")
    latest = store.latest()
    assert latest is not None
    assert latest.name == "gen-00000001"
    assert not store.verify()


def test_store_pointer_is_a_relative_symlink(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "run")
    with store.save() as stage:
        write_version(stage, 1)
    assert os.readlink(tmp_path / "run" / "latest") == "gen-00000001"
    assert (tmp_path / "run" / "latest" / "model.bin").read_bytes() == content(1, "model.bin")
    assert sorted(os.listdir(tmp_path / "run")) == ["gen-00000001", "latest"]


@pytest.mark.slow
def test_store_retention_under_a_concurrent_reader(place: Place, tmp_path: Path) -> None:
    if place.kind == "memory":
        pytest.skip("memory:// lives in one process; the reader would be another")
    root = place.url("run")
    options = json.dumps(place.options)
    store = CheckpointStore(root, keep_last=3, storage_options=place.options)
    with store.save() as stage:
        write_version(stage, 1)
    stop, ready = tmp_path / "stop", tmp_path / "ready"
    reader = _spawn("store_reader", root, stop, ready, options)
    deadline = time.monotonic() + 60
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    writer = _spawn("saver", root, 15 if place.kind == "local" else 6, options, tmp_path / "progress")
    try:
        _collect(writer)
    finally:
        stop.touch()
        result = _collect(reader)
    assert result["count"] == 0, result["errors"]
    assert result["consistent"] > 0, result
    assert len(store.generations()) == 3


# --- SIGKILL ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_at_random_moments_keeps_latest_complete(place: Place, tmp_path: Path) -> None:
    if place.kind == "memory":
        pytest.skip("memory:// dies with its process")
    root = place.url("run")
    options = json.dumps(place.options)
    store = CheckpointStore(root, storage_options=place.options)
    rng = random.Random(6)
    saved = 0
    for round_ in range(6 if place.kind == "local" else 3):
        progress = tmp_path / f"progress{round_}"
        proc = _spawn("saver", root, 0, options, progress)
        try:
            _wait_progress(progress, 1, proc)
            time.sleep(rng.uniform(0, 0.2 if place.kind == "local" else 0.6))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
        latest = store.latest()
        assert latest is not None
        assert store.verify(latest.name).ok
        assert latest.number >= saved
        saved = latest.number
        for name in store.generations():
            assert store.verify(name).ok, name
        if place.kind == "local":
            sweep(root, older_than=0)
            assert sorted(os.listdir(root)) == sorted([*store.generations(), "latest"])
        else:
            for name in store.generations():
                sweep(f"{root}/{name}", older_than=0, storage_options=place.options)
            store._fs.invalidate_cache()


def _traced_save(root: Path, syscall: str, when: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    command = [
        "strace",
        "-f",
        "-qq",
        "-o",
        "/dev/null",
        "-e",
        f"inject={syscall}:signal=KILL:when={when}",
        sys.executable,
        "-m",
        "tests._dirworkers",
        "saver",
        str(root),
        "1",
        "{}",
        str(root.parent / "progress"),
    ]
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)


def _count_syscalls(root: Path, names: str) -> dict[str, int]:
    # No bytecode writes: they rename too, and only in the first run.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    log = root.parent / "strace.log"
    command = ["strace", "-f", "-qq", "-o", str(log), "-e", f"trace={names}", sys.executable, "-m", "tests._dirworkers"]
    command += ["saver", str(root), "1", "{}", str(root.parent / "progress")]
    subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    counts: dict[str, int] = {}
    for line in log.read_text().splitlines():
        call = line.split(None, 1)[-1].split("(", 1)[0]
        counts[call] = counts.get(call, 0) + 1
    return counts


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="strace syscall injection is Linux-only")
def test_sigkill_at_every_flush_and_rename_of_a_save(tmp_path: Path) -> None:
    """Kill the saver at each fsync and each rename of one save, in turn (strace injection):
    staging, manifest, publish and pointer swap.  The previous generation stays latest (or the
    new one, once the pointer moved), verifies, and sweep leaves nothing but generations."""
    import shutil

    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    probe = tmp_path / "probe" / "run"
    probe.parent.mkdir()
    CheckpointStore(probe)  # the root exists, as in the runs below
    counts = _count_syscalls(probe, "fsync,rename,renameat,renameat2")
    assert counts.get("fsync", 0) >= 6, counts
    tried = 0
    for syscall, total in sorted(counts.items()):
        for when in range(1, total + 1):
            root = tmp_path / f"{syscall}-{when}" / "run"
            root.parent.mkdir()
            store = CheckpointStore(root)
            with store.save() as stage:
                write_version(stage, 0)
            done = _traced_save(root, syscall, when)
            assert done.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL, 137), (syscall, when, done.stderr)
            latest = store.latest()
            assert latest is not None, (syscall, when)
            assert latest.name in ("gen-00000001", "gen-00000002"), (syscall, when)
            assert store.verify(latest.name).ok, (syscall, when)
            assert store.pointer() == latest.name, (syscall, when)
            sweep(root, older_than=0)
            leftovers = set(os.listdir(root)) - {"latest", *store.generations()}
            assert not leftovers, (syscall, when, leftovers)
            for name in store.generations():
                assert store.verify(name).ok, (syscall, when, name)
            tried += 1
    assert tried == sum(counts.values())
    from tests.conftest import TERMINAL_SUMMARY

    TERMINAL_SUMMARY.setdefault("directory kill points", []).append(
        f"killed one CheckpointStore save at each of {tried} syscalls: {counts}"
    )


def test_sweep_removes_a_dead_writers_generation_on_a_store(place: Place) -> None:
    if place.kind == "local":
        pytest.skip("local staging directories are covered above")
    from atomicwrite._names import host_tag

    target = place.url("ckpt")
    with atomic_directory(target, storage_options=place.options) as stage:
        write_files(stage, {"kept": b"published"}, place)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    orphan = f"gen.{time.time_ns()}.{host_tag()}.{dead_pid}.0123abcd"
    place.fs.pipe_file(place.fs._strip_protocol(f"{target}/{orphan}/shard.bin"), b"never committed")
    live = begin_directory(target, storage_options=place.options)  # this process's, in progress
    write_files(live.staging, {"pending": b"still being written"}, place)
    try:
        removed = sweep(target, older_than=0, storage_options=place.options)
        assert [url.rstrip("/").rpartition("/")[2] for url in removed] == [orphan]
        current = open_directory(target, storage_options=place.options).manifest.generation
        live_generation = live.staging.location.rpartition("/")[2]
        assert {entry.split("/")[0] for entry in place.everything("ckpt")} == {
            MANIFEST_NAME,
            current,
            live_generation,
        }
    finally:
        live.discard()
    assert verify_directory(target, storage_options=place.options).ok
    assert {entry.split("/")[0] for entry in place.everything("ckpt")} == {MANIFEST_NAME, current}


def test_checkpoint_store_refuses_stores_without_compare_and_swap_support() -> None:
    with pytest.raises(UnsupportedTargetError):
        CheckpointStore("ftp://host/run")


def test_each_process_describes_the_files_it_declared(place: Place) -> None:
    """What a rank reports in a multi-rank save: its own files, flushed and hashed; a name used
    as a directory is not a file; a declared file that was never written is an error."""
    from atomicwrite._directories.staging import describe_files

    transaction = begin_directory(place.url("ckpt"), storage_options=place.options)
    try:
        stage = transaction.staging
        if place.kind == "local":
            os.makedirs(stage / "shards")
        write_files(stage, {"shards/0.bin": b"zero", "mine.bin": b"mine"}, place)
        with stage.open("opened.bin") as file:
            file.write(b"opened")
        entries = describe_files(stage, stage.declared)
        expected = {"shards/0.bin": b"zero", "mine.bin": b"mine", "opened.bin": b"opened"}
        listed = {e.name: (e.size, e.checksum) for e in entries}
        opened = manifest_algorithm() if place.kind == "local" else str(listed["opened.bin"][1]).partition(":")[0]
        assert opened in CHECKSUMS
        assert listed == {
            name: (len(data), checksum_of(opened if name == "opened.bin" else manifest_algorithm(), data))
            for name, data in expected.items()
        }
        stage.declare("never-written.bin")
        with pytest.raises(FileNotFoundError):
            describe_files(stage, stage.declared)
    finally:
        transaction.discard()
    assert place.siblings() == []


# --- one flush for every protocol -----------------------------------------------------------


def _as_on_macos(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Pretend to be macOS until ``monkeypatch.undo()``: the descriptors asked for F_FULLFSYNC are
    recorded in the list returned, and a plain fsync fails the test."""
    import fcntl

    full_flushes: list[int] = []
    real_fcntl = fcntl.fcntl

    def recording_fcntl(fd: int, command: int, *args: Any) -> Any:
        if command == FULLFSYNC:
            full_flushes.append(fd)
            return 0
        return real_fcntl(fd, command, *args)

    def bare_fsync(fd: int) -> None:
        raise AssertionError("a plain fsync where F_FULLFSYNC was due")

    FULLFSYNC = 51  # macOS's value; Linux has none
    monkeypatch.setattr(fcntl, "F_FULLFSYNC", FULLFSYNC, raising=False)
    monkeypatch.setattr(fcntl, "fcntl", recording_fcntl)
    monkeypatch.setattr(os, "fsync", bare_fsync)
    monkeypatch.setattr(sys, "platform", "darwin")
    return full_flushes


@pytest.mark.skipif(sys.platform == "win32", reason="F_FULLFSYNC and flock are POSIX")
def test_directories_and_links_flush_like_files_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On macOS a plain fsync stops at the drive's cache: every durable step of the directory
    protocol and of the ``latest`` link must ask for F_FULLFSYNC, as single files do."""
    full_flushes = _as_on_macos(monkeypatch)
    store = CheckpointStore(tmp_path / "run")
    for step in (1, 2):
        with store.save(step) as stage:
            Path(stage / "weights.bin").write_bytes(bytes([step]) * 64)
    monkeypatch.undo()
    # Per save: the file, the staging directory, the parent after publishing, the root after
    # the link swap, at the least.
    assert len(full_flushes) >= 8
    latest = store.latest()
    assert latest is not None
    assert Path(latest / "weights.bin").read_bytes() == bytes([2]) * 64


@pytest.mark.skipif(sys.platform == "win32", reason="the POSIX strategy")
def test_single_files_flush_like_directories_do_on_macos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The POSIX strategy picks its flush when it is imported (plain fsync on Linux): imported
    on macOS, a single file's flushes, of the file and of its directory, ask for F_FULLFSYNC."""
    import importlib.util

    import atomicwrite._local.posix as posix_module
    from atomicwrite._strategy import WriteOptions

    full_flushes = _as_on_macos(monkeypatch)
    spec = importlib.util.spec_from_file_location("atomicwrite._local.posix_on_macos", posix_module.__file__)
    assert spec is not None
    assert spec.loader is not None
    as_on_macos = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(as_on_macos)
    target = tmp_path / "model.bin"
    write = as_on_macos.PosixStrategy(use_tmpfile=False).begin(str(target), WriteOptions())
    write.stream.write(b"weights")
    result = write.commit()
    monkeypatch.undo()
    assert result.durability == "full"
    assert len(full_flushes) == 2  # the file, then its directory
    assert target.read_bytes() == b"weights"


def test_flush_falls_back_to_fsync_where_full_flush_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    fcntl = pytest.importorskip("fcntl")
    from atomicwrite._local.base import flush_to_disk

    calls: list[str] = []

    def refusing_fcntl(fd: int, command: int, *args: Any) -> Any:
        calls.append("fcntl")
        raise OSError(25, "Inappropriate ioctl for device")

    monkeypatch.setattr(fcntl, "F_FULLFSYNC", 51, raising=False)
    monkeypatch.setattr(fcntl, "fcntl", refusing_fcntl)
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append("fsync"))
    monkeypatch.setattr(sys, "platform", "darwin")
    flush_to_disk(0)
    monkeypatch.undo()
    assert calls == ["fcntl", "fsync"]


_KILLED_BETWEEN_RENAMES = """
import errno, os, signal, sys
from pathlib import Path
from atomicwrite import atomic_directory
from atomicwrite._local.posix import PosixStrategy

PosixStrategy.exchange = lambda self, dir_fd, first, second: errno.ENOSYS
rename = os.rename

def rename_then_die(source, destination, **kwargs):
    rename(source, destination, **kwargs)
    if source == "ckpt":  # the old directory was just parked
        os.kill(os.getpid(), signal.SIGKILL)

os.rename = rename_then_die
with atomic_directory(sys.argv[1]) as stage:
    (Path(stage) / "v").write_bytes(b"new")
"""


@pytest.mark.skipif(sys.platform == "win32", reason="local atomic_directory is POSIX-only")
def test_sweep_finishes_a_replace_killed_between_its_two_renames(tmp_path: Path) -> None:
    """Without RENAME_EXCHANGE a replace parks the old directory, then renames the new one in; a
    writer killed in between leaves no target, only two staging directories of a dead writer.
    sweep moves the complete new one into place rather than removing both."""
    target = tmp_path / "ckpt"
    with atomic_directory(target) as stage:
        Path(stage / "v").write_bytes(b"old")
    killed = subprocess.run([sys.executable, "-c", _KILLED_BETWEEN_RENAMES, str(target)], check=False)
    assert killed.returncode == -signal.SIGKILL
    assert not target.exists()
    assert len(os.listdir(tmp_path)) == 2
    sweep(tmp_path, older_than=0)
    assert os.listdir(tmp_path) == ["ckpt"]
    assert (target / "v").read_bytes() == b"new"
    assert verify_directory(target).ok


_KILLED_WHILE_REMOVING = """
import os, signal, sys
from atomicwrite._directories.local import remove_tree

rename = os.rename

def rename_then_die(source, destination, **kwargs):
    rename(source, destination, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)  # out of sight, not yet deleted

os.rename = rename_then_die
parent = sys.argv[1]
remove_tree(parent, os.open(parent, os.O_RDONLY), "ckpt")
"""


@pytest.mark.skipif(sys.platform == "win32", reason="local atomic_directory is POSIX-only")
def test_sweep_never_brings_back_a_directory_being_removed(tmp_path: Path) -> None:
    """A removal (rotation, prune) renames the directory out of sight, then deletes it.  Killed
    in between, it leaves a complete, verifying directory of a dead writer where the target is
    absent, just like a replace killed between its renames: sweep must delete it, not publish it."""
    target = tmp_path / "ckpt"
    with atomic_directory(target) as stage:
        Path(stage / "v").write_bytes(b"removed")
    killed = subprocess.run([sys.executable, "-c", _KILLED_WHILE_REMOVING, str(tmp_path)], check=False)
    assert killed.returncode == -signal.SIGKILL
    [left] = os.listdir(tmp_path)
    assert parse_staging_name(left) is not None
    assert verify_directory(tmp_path / left).ok
    sweep(tmp_path, older_than=0)
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(sys.platform == "win32", reason="local atomic_directory is POSIX-only")
def test_finishing_an_interrupted_replace_never_replaces_what_appeared_at_the_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty directory made at the name while sweep checks the staged one is the user's: a
    plain rename would replace it with the staged one, so the finishing rename must be a
    no-replace one."""
    import atomicwrite._directories.local as local_directories

    target = tmp_path / "ckpt"
    with atomic_directory(target) as stage:
        Path(stage / "v").write_bytes(b"old")
    killed = subprocess.run([sys.executable, "-c", _KILLED_BETWEEN_RENAMES, str(target)], check=False)
    assert killed.returncode == -signal.SIGKILL
    verify = local_directories.verify_directory

    def verify_then_race(path: str, **kwargs: Any) -> Any:
        verification = verify(path, **kwargs)
        target.mkdir(exist_ok=True)  # the user's directory, after sweep saw the name absent
        return verification

    monkeypatch.setattr(local_directories, "verify_directory", verify_then_race)
    sweep(tmp_path, older_than=0)
    assert os.listdir(target) == []
    assert os.listdir(tmp_path) == ["ckpt"]
