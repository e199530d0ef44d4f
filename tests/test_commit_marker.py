"""atomic_directory where renaming a directory is a copy (gcsfuse, s3 mounts): the commit-marker
protocol of `atomicwrite._directories.marker`, on the FUSE passthrough of ``tests/fusefs`` with
``atomicrename`` switched off (a directory rename copies every file, then deletes the originals,
and the mount calls itself ``fuse.gcsfuse``), also without ``renameat2`` and ``link``, which
gcsfuse lacks too.

Proven here: no directory is ever renamed on such a mount; files are written in place under a
generation and the manifest, written last, marks it; readers through the manifest see the old
directory or the new one whether the writer is killed (SIGKILL, a real process) before the
marker or after it, or the power is cut after any operation; sweep removes only the generations
of dead writers; CheckpointStore and doctor work there.

They need root and /dev/fuse, and run in the ``filesystems`` nox session.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from atomicwrite import (
    CheckpointStore,
    TargetExistsError,
    TargetNotFoundError,
    atomic_directory,
    open_directory,
    sweep,
    verify_directory,
)
from atomicwrite._cli.doctor import diagnose
from atomicwrite._directories.manifest import GENERATION_NAME, MANIFEST_NAME
from atomicwrite._directories.marker import renames_by_copying
from atomicwrite._local.base import filesystem_type
from tests.fusefs import FuseMount, mount, unavailable_reason

pytestmark = [
    pytest.mark.filesystems,
    pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason())),
]

# What gcsfuse lacks: an atomic directory rename, rename flags, hard links.
GCSFUSE_LIKE = ("atomicrename", "renameat2", "link")


@pytest.fixture
def backing(tmp_path: Path) -> Path:
    """The directory the mount serves, with an old plain checkpoint directory."""
    source = tmp_path / "backing"
    source.mkdir()
    (source / "ckpt").mkdir()
    (source / "ckpt" / "weights").write_text("old weights")
    return source


@pytest.fixture
def live(backing: Path) -> Iterator[FuseMount]:
    with mount(backing, backing.parent / "mnt", without=GCSFUSE_LIKE) as mounted:
        yield mounted


def _generations(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if GENERATION_NAME.match(name))


def _read(target: Path, name: str) -> bytes:
    with open_directory(target).open(name) as file:
        return file.read()


def test_the_switch_makes_a_directory_rename_a_copy_and_the_mount_is_known_by_its_type(
    live: FuseMount, backing: Path
) -> None:
    root = live.mountpoint
    assert filesystem_type(str(root)) == "fuse.gcsfuse"
    assert renames_by_copying(str(root)) == "fuse.gcsfuse"
    assert renames_by_copying(str(backing)) is None
    before = (backing / "ckpt" / "weights").stat().st_ino
    os.rename(root / "ckpt", root / "moved")
    assert live.calls().get("rename-copy") == 1
    assert (root / "moved" / "weights").read_text() == "old weights"
    assert not (root / "ckpt").exists()
    # A copy: a new file under the new name, not the old one moved.
    assert (backing / "moved" / "weights").stat().st_ino != before


def test_a_replace_writes_in_place_and_publishes_by_the_marker(live: FuseMount, backing: Path) -> None:
    root = live.mountpoint
    with atomic_directory(root / "ckpt") as staging:
        # The staging area is a generation inside the target, not a sibling.
        assert Path(staging).parent == root / "ckpt"
        assert GENERATION_NAME.match(Path(staging).name)
        (Path(staging) / "weights").write_text("new weights")
        (Path(staging) / "shards").mkdir()
        (Path(staging) / "shards" / "0").write_bytes(b"shard")
        # Unpublished: the reader finds nothing (the old plain directory has no manifest).
        with pytest.raises(TargetNotFoundError):
            open_directory(root / "ckpt")
    assert "rename-copy" not in live.calls()
    first = _generations(root / "ckpt")
    assert len(first) == 1
    # The old plain files went once the marker was durable; the marker and the generation stay.
    assert sorted(os.listdir(root / "ckpt")) == sorted([MANIFEST_NAME, first[0]])
    assert _read(root / "ckpt", "weights") == b"new weights"
    assert _read(root / "ckpt", "shards/0") == b"shard"
    assert open_directory(root / "ckpt").path("weights") == str(root / "ckpt" / first[0] / "weights")
    assert verify_directory(root / "ckpt").ok
    # The layout explains itself: the backing directory, a plain file system, reads the same.
    assert _read(backing / "ckpt", "weights") == b"new weights"

    with atomic_directory(root / "ckpt") as staging:
        (Path(staging) / "weights").write_text("newer weights")
    second = _generations(root / "ckpt")
    assert len(second) == 1
    assert second != first
    assert _read(root / "ckpt", "weights") == b"newer weights"
    verification = verify_directory(root / "ckpt")
    assert verification.ok, verification.problems
    assert [entry.name for entry in verification.manifest.files] == ["weights"]  # type: ignore[union-attr]
    assert "rename-copy" not in live.calls()


def test_a_create_refuses_an_existing_name_and_a_failed_block_leaves_the_old(live: FuseMount) -> None:
    root = live.mountpoint
    body_ran = False
    with pytest.raises(TargetExistsError), atomic_directory(root / "ckpt", replace=False):
        body_ran = True
    assert not body_ran
    assert sorted(os.listdir(root / "ckpt")) == ["weights"]

    with atomic_directory(root / "fresh", replace=False) as staging:
        (Path(staging) / "a").write_text("a")
    assert _read(root / "fresh", "a") == b"a"

    with atomic_directory(root / "ckpt") as staging:
        (Path(staging) / "weights").write_text("new weights")
    published = sorted(os.listdir(root / "ckpt"))
    with pytest.raises(RuntimeError, match="the block failed"), atomic_directory(root / "ckpt") as staging:
        (Path(staging) / "weights").write_text("never published")
        raise RuntimeError("the block failed")
    assert sorted(os.listdir(root / "ckpt")) == published
    assert _read(root / "ckpt", "weights") == b"new weights"

    with pytest.raises(RuntimeError), atomic_directory(root / "never", replace=False) as staging:
        (Path(staging) / "a").write_text("a")
        raise RuntimeError("the block failed")
    assert not (root / "never").exists()
    assert "rename-copy" not in live.calls()


_KILLED_WRITER = """
import sys
import time
from pathlib import Path
from atomicwrite import atomic_directory
import atomicwrite._directories.marker as marker

target, where = sys.argv[1], sys.argv[2]
def stop(*args, **kwargs):
    print(where, flush=True)
    time.sleep(600)
if where == "after-marker":
    marker.remove_marked = stop
elif where == "in-marker":  # the marker's temp file is open, nothing written to it yet
    marker.DirectoryManifest.to_json = stop
with atomic_directory(target) as staging:
    (Path(staging) / "weights").write_text("new weights")
    with open(Path(staging) / "big", "w") as big:
        big.write("half")
        big.flush()
        if where == "writing":
            print("writing", flush=True)
            time.sleep(600)
"""


def _killed(target: Path, where: str) -> int:
    """Run a writer of ``target`` in its own process and SIGKILL it at ``where``; its pid."""
    writer = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(target), where], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout is not None
    try:
        assert writer.stdout.readline().strip() == where
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
    assert writer.returncode == -signal.SIGKILL
    return writer.pid


def test_a_writer_killed_while_writing_leaves_the_old_directory_and_sweep_its_generation(live: FuseMount) -> None:
    root = live.mountpoint
    with atomic_directory(root / "ckpt") as staging:
        (Path(staging) / "weights").write_text("old weights")
    published = _generations(root / "ckpt")

    _killed(root / "ckpt", "writing")
    left = _generations(root / "ckpt")
    assert len(left) == 2  # the dead writer's unmarked generation, beside the published one
    assert _read(root / "ckpt", "weights") == b"old weights"
    assert verify_directory(root / "ckpt").ok

    # A live writer's generation is never swept.
    live_writer = atomic_directory(root / "ckpt")
    staging = live_writer.__enter__()
    try:
        (Path(staging) / "weights").write_text("in progress")
        removed = sweep(root, older_than=0)
        dead = [name for name in left if name not in published]
        assert removed == [str(root / "ckpt" / dead[0])]
        assert Path(staging).name in _generations(root / "ckpt")
    finally:
        live_writer.__exit__(None, None, None)
    assert _read(root / "ckpt", "weights") == b"in progress"
    assert len(_generations(root / "ckpt")) == 1

    # A create killed half way leaves nothing a reader trusts; sweep removes what it made.
    _killed(root / "created", "writing")
    with pytest.raises(TargetNotFoundError):
        open_directory(root / "created")
    assert not verify_directory(root / "created").ok
    assert len(sweep(root, older_than=0)) == 1
    assert not (root / "created").exists()


def test_a_writer_killed_while_writing_the_marker_leaves_the_old_directory(live: FuseMount) -> None:
    root = live.mountpoint
    with atomic_directory(root / "ckpt") as staging:
        (Path(staging) / "weights").write_text("old weights")
    published = _generations(root / "ckpt")
    _killed(root / "ckpt", "in-marker")
    temps = [name for name in os.listdir(root / "ckpt") if name.startswith(f".{MANIFEST_NAME}.")]
    assert len(temps) == 1  # the marker's temp file, never renamed over the marker
    assert _read(root / "ckpt", "weights") == b"old weights"
    assert verify_directory(root / "ckpt").ok
    removed = sorted(sweep(root, older_than=0))
    assert len(removed) == 2
    assert str(root / "ckpt" / temps[0]) in removed
    assert sorted(os.listdir(root / "ckpt")) == sorted([MANIFEST_NAME, *published])


def test_a_writer_killed_after_the_marker_leaves_the_new_directory(live: FuseMount) -> None:
    root = live.mountpoint
    _killed(root / "ckpt", "after-marker")
    # Published: the new generation is marked, though the old plain file is still there.
    assert _read(root / "ckpt", "weights") == b"new weights"
    assert _read(root / "ckpt", "big") == b"half"
    verification = verify_directory(root / "ckpt")
    assert verification.ok, verification.problems
    assert "weights" in os.listdir(root / "ckpt")  # what a plain reader still sees
    # The marked generation is no leftover, whoever wrote it.
    assert sweep(root, older_than=0) == []
    assert _read(root / "ckpt", "weights") == b"new weights"
    # The next replace removes what the killed one left.
    with atomic_directory(root / "ckpt") as staging:
        (Path(staging) / "weights").write_text("newer weights")
    assert sorted(os.listdir(root / "ckpt")) == sorted([MANIFEST_NAME, *_generations(root / "ckpt")])
    assert len(_generations(root / "ckpt")) == 1


def _replace(root: Path, content: bytes) -> None:
    with atomic_directory(root / "ckpt") as staging:
        (Path(staging) / "weights").write_bytes(content)
        (Path(staging) / "config").write_bytes(content + b" config")


def _judge(root: Path, old: bytes, new: bytes) -> str:
    try:
        directory = open_directory(root / "ckpt")
    except TargetNotFoundError:
        return "lost"
    if not verify_directory(root / "ckpt").ok:
        return "torn"
    with directory.open("weights") as weights, directory.open("config") as config:
        found = (weights.read(), config.read())
    return {(old, old + b" config"): "old", (new, new + b" config"): "new"}.get(found, "torn")


@pytest.mark.parametrize("journaled", [False, True], ids=["strict", "journaled"])
def test_a_power_cut_after_any_operation_leaves_the_old_or_the_new_directory(tmp_path: Path, journaled: bool) -> None:
    """A cut after each operation of a replace (see tests/test_power_loss.py for the model;
    ``journaled``: every name and size change kept, unflushed data dropped)."""
    source = tmp_path / "backing"
    source.mkdir()
    with mount(source, tmp_path / "mnt", without=GCSFUSE_LIKE, power_loss=True) as mounted:
        root = mounted.mountpoint
        _replace(root, b"v0")
        mounted.cut()  # everything above was durable: the cut keeps it
        assert _judge(root, b"v0", b"v1") == "old"
        start = mounted.operations
        _replace(root, b"v1")
        count = mounted.operations - start
        assert _judge(root, b"v0", b"v1") == "new"
        mounted.cut()
        assert _judge(root, b"v0", b"v1") == "new"  # durable on return
        old = b"v1"
        outcomes: dict[str, int] = {}
        for k in range(1, count + 1):
            new = f"v{k + 1}".encode()
            mounted.cut_after(k, journaled=journaled)
            with contextlib.suppress(Exception):  # the power went out under it: any error is expected
                _replace(root, new)
            gc.collect()  # descriptors of a call cut short close now, not in the next one
            assert mounted.cut(journaled=journaled), f"the cut after operation {k} of {count} never fired"
            outcome = _judge(root, old, new)
            assert outcome in ("old", "new"), f"cut after operation {k} of {count}: {outcome}"
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if outcome == "new":
                old = new
        # Cuts before the marker keep the old directory, cuts after it the new one.
        assert outcomes.get("old", 0) > 0
        assert outcomes.get("new", 0) > 0
        assert "rename-copy" not in mounted.calls()


def test_a_checkpoint_store_saves_and_prunes_by_markers(live: FuseMount) -> None:
    root = live.mountpoint
    store = CheckpointStore(root / "run", keep_last=1)
    for step in (1, 2):
        with store.save(step=step) as staging:
            (Path(staging) / "model").write_text(f"step {step}")
    latest = store.latest()
    assert latest is not None
    assert latest.name == store.generations()[-1]
    with latest.open("model") as model:
        assert model.read() == b"step 2"
    # Retention removed the first generation, marker first, in place.
    assert store.generations() == [latest.name]
    assert "rename-copy" not in live.calls()

    # A save killed half way: latest stays on the published generation, sweep removes the rest.
    script = _KILLED_WRITER.replace(
        "with atomic_directory(target) as staging:",
        "from atomicwrite import CheckpointStore\nwith CheckpointStore(target).save(step=3) as staging:",
    )
    writer = subprocess.Popen([sys.executable, "-c", script, str(root / "run"), "writing"], stdout=subprocess.PIPE)
    assert writer.stdout is not None
    assert writer.stdout.readline().strip() == b"writing"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    writer.stdout.close()
    reopened = CheckpointStore(root / "run", keep_last=1)
    again = reopened.latest()
    assert again is not None
    assert again.name == latest.name
    # The killed save's generation is there, but unmarked: not listed as published.
    assert len(os.listdir(root / "run")) == 3
    assert reopened.generations() == [latest.name]
    removed = sweep(root / "run", older_than=0)
    assert len(removed) == 1
    assert sorted(os.listdir(root / "run")) == sorted([latest.name, "latest"])


def test_doctor_says_directories_publish_by_markers_and_what_plain_readers_see(live: FuseMount) -> None:
    report = diagnose(str(live.mountpoint))
    checks = {c.key: c for c in report.checks}
    guarantees = {g.key: g for g in report.guarantees}
    assert checks["dir_rename"].status == "info"
    assert "copying" in checks["dir_rename"].detail
    assert guarantees["directories"].holds is True
    assert "commit marker" in guarantees["directories"].detail
    assert "plain reader" in guarantees["directories"].detail
    assert any("commit marker" in advice for advice in report.recommendations)
    # doctor's own scratch directories went too.
    assert sorted(os.listdir(live.mountpoint)) == ["ckpt"]


def test_the_marker_layout_is_read_the_same_off_the_mount(live: FuseMount, backing: Path, tmp_path: Path) -> None:
    """Copied off the mount (as a bucket sync would), the directory still reads through its
    manifest: the layout, not the file system, says where the files are."""
    with atomic_directory(live.mountpoint / "ckpt") as staging:
        (Path(staging) / "weights").write_text("new weights")
    copy = tmp_path / "copy"
    shutil.copytree(backing / "ckpt", copy)
    assert verify_directory(copy).ok
    assert _read(copy, "weights") == b"new weights"


def test_a_directory_published_by_rename_elsewhere_is_replaced_by_a_marked_one(backing: Path, tmp_path: Path) -> None:
    """A directory published off the mount (renamed into place, files beside its manifest) reads
    and verifies as such while a marked replace is under way, and is replaced whole by it."""
    with atomic_directory(backing / "ckpt") as staging:  # the backing directory: a plain file system
        (Path(staging) / "weights").write_text("renamed weights")
        (Path(staging) / "extra").write_text("only in the old one")
    with mount(backing, tmp_path / "mnt", without=GCSFUSE_LIKE) as live:
        target = live.mountpoint / "ckpt"
        writer = atomic_directory(target)
        staging = writer.__enter__()
        try:
            (Path(staging) / "weights").write_text("marked weights")
            # The unfinished generation inside the old directory is not one of its files.
            verification = verify_directory(target)
            assert verification.ok, verification.problems
            assert _read(target, "weights") == b"renamed weights"
        finally:
            writer.__exit__(None, None, None)
        assert _read(target, "weights") == b"marked weights"
        assert verify_directory(target).ok
        assert sorted(os.listdir(target)) == sorted([MANIFEST_NAME, *_generations(target)])
        assert "rename-copy" not in live.calls()
