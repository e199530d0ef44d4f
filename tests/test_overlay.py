"""overlayfs, the root file system of every Docker container, on a real overlay mount.

overlayfs renames a directory that comes from a lower layer only when mounted with
``redirect_dir=on``; otherwise rename(2) and renameat2(2) answer EXDEV.  `atomic_directory` finds
that out before the caller writes anything and refuses with `OverlayDirectoryError` (old
directory untouched, nothing left behind); directories in the upper layer, new directories and
single files (copied up by overlayfs) work as anywhere else.  The mounts need root: elsewhere the
tests skip and say so, unless ATOMICWRITE_REQUIRE_FILESYSTEMS=1 (CI) makes that a failure.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from pathlib import Path

import pytest

from atomicwrite import CrossDeviceError, OverlayDirectoryError, atomic_directory, atomic_open
from atomicwrite._cli.doctor import diagnose, filesystem_type
from atomicwrite._directories import local as local_directories
from tests.conftest import listing
from tests.filesystems.mounts import MountUnavailable, Overlay, overlay, skip_or_fail


@contextlib.contextmanager
def _mount(tmp_path: Path, options: str = "") -> Iterator[Overlay]:
    where = str(filesystem_type(str(tmp_path))["type"])
    if where == "overlay" or where.partition(".")[0] == "fuse":
        # Not a missing capability of this machine (a container's /tmp, say): the layers cannot
        # live there.  The file-system matrix runs these tests on ext4, XFS, Btrfs and tmpfs.
        pytest.skip(f"tmp_path is on {where}, which cannot hold an overlay's upper layer")
    lower = tmp_path / "layers" / "lower"
    (lower / "ckpt").mkdir(parents=True)
    (lower / "ckpt" / "weights.bin").write_bytes(b"old weights")
    (lower / "config.json").write_text("old config")
    with contextlib.ExitStack() as stack:
        try:
            layers = stack.enter_context(overlay(tmp_path / "layers", options=options))
        except MountUnavailable as exc:
            skip_or_fail(f"no overlay mount: {exc}")
        yield layers


@pytest.fixture
def layers(tmp_path: Path) -> Iterator[Overlay]:
    """An overlay whose lower layer holds ``ckpt/weights.bin`` and ``config.json``."""
    with _mount(tmp_path) as mount:
        yield mount


def _tree(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _refused(target: Path) -> OverlayDirectoryError:
    entered = False
    with pytest.raises(OverlayDirectoryError) as caught, atomic_directory(target) as stage:
        entered = True
        (Path(stage) / "weights.bin").write_bytes(b"new weights")
    assert not entered, "the refusal must come before the caller writes anything"
    return caught.value


def test_lower_layer_directory_is_refused_before_anything_is_written(layers: Overlay) -> None:
    target = layers.merged / "ckpt"
    before = listing(layers.merged)
    error = _refused(target)
    assert isinstance(error, CrossDeviceError)
    assert error.errno == errno.EXDEV
    assert error.filename == str(target)
    message = str(error)
    for words in ("overlayfs", repr(str(target)), "lower layer", "volume or bind mount", "redirect_dir=on"):
        assert words in message
    assert _tree(target) == {"weights.bin": b"old weights"}
    assert listing(layers.merged) == before
    # Nothing reached the writable layer: no staging directory, no probe, no copied-up directory.
    assert listing(layers.upper) == []


def test_merged_directory_is_refused_too(layers: Overlay) -> None:
    """A lower-layer directory that a write already copied up (now in both layers) still cannot move."""
    target = layers.merged / "ckpt"
    (target / "extra.txt").write_text("written through the merged view")
    _refused(target)
    assert _tree(target) == {"extra.txt": b"written through the merged view", "weights.bin": b"old weights"}
    assert listing(layers.upper) == ["ckpt"]
    assert listing(layers.upper / "ckpt") == ["extra.txt"]


def test_refused_at_publish_when_the_probe_missed_it(layers: Overlay, monkeypatch: pytest.MonkeyPatch) -> None:
    """Publishing's own EXDEV on an overlay is the same typed error, and the staging directory goes."""
    monkeypatch.setattr(local_directories.LocalTransaction, "_refuse_unmovable", lambda self: None)
    target = layers.merged / "ckpt"
    with pytest.raises(OverlayDirectoryError), atomic_directory(target) as stage:
        (Path(stage) / "weights.bin").write_bytes(b"new weights")
    assert _tree(target) == {"weights.bin": b"old weights"}
    assert listing(layers.merged) == ["ckpt", "config.json"]


def test_upper_layer_directory_is_replaced(layers: Overlay) -> None:
    target = layers.merged / "fresh"
    with atomic_directory(target) as stage:
        (Path(stage) / "weights.bin").write_bytes(b"first")
    with atomic_directory(target) as stage:
        (Path(stage) / "weights.bin").write_bytes(b"second")
    tree = _tree(target)
    assert tree["weights.bin"] == b"second"
    assert set(tree) == {"weights.bin", ".atomicwrite-manifest.json"}
    assert listing(layers.merged) == ["ckpt", "config.json", "fresh"]


def test_directory_made_in_the_merged_view_is_replaced(layers: Overlay) -> None:
    target = layers.merged / "made-here"
    target.mkdir()
    (target / "weights.bin").write_bytes(b"old")
    with atomic_directory(target) as stage:
        (Path(stage) / "weights.bin").write_bytes(b"new")
    assert _tree(target)["weights.bin"] == b"new"
    assert listing(layers.merged) == ["ckpt", "config.json", "made-here"]


def test_lower_layer_directory_is_replaced_with_redirect_dir(tmp_path: Path) -> None:
    """The fix the error names: with redirect_dir=on overlayfs moves the directory, so does atomic_directory."""
    with _mount(tmp_path, "redirect_dir=on") as mount:
        target = mount.merged / "ckpt"
        with atomic_directory(target) as stage:
            (Path(stage) / "weights.bin").write_bytes(b"new weights")
        tree = _tree(target)
        assert tree["weights.bin"] == b"new weights"
        assert set(tree) == {"weights.bin", ".atomicwrite-manifest.json"}
        assert listing(mount.merged) == ["ckpt", "config.json"]


@pytest.mark.parametrize("durability", ["full", "none"])
def test_files_in_lower_layer_directories_are_written_by_copy_up(layers: Overlay, durability: str) -> None:
    for target in (layers.merged / "config.json", layers.merged / "ckpt" / "weights.bin"):
        with atomic_open(target, "wb", durability=durability) as f:  # type: ignore[call-overload]
            f.write(b"replaced")
        assert target.read_bytes() == b"replaced"
    with atomic_open(layers.merged / "ckpt" / "new.bin", "xb") as f:
        f.write(b"created")
    assert _tree(layers.merged) == {
        "ckpt/new.bin": b"created",
        "ckpt/weights.bin": b"replaced",
        "config.json": b"replaced",
    }
    assert (layers.lower / "ckpt" / "weights.bin").read_bytes() == b"old weights"


def test_doctor_names_the_lower_layer_directories(layers: Overlay) -> None:
    (layers.merged / "made-here").mkdir()
    report = diagnose(str(layers.merged))
    checks = {check.key: check for check in report.checks}
    assert checks["filesystem"].value["type"] == "overlay"
    assert checks["overlay_directories"].status == "no"
    assert checks["overlay_directories"].value == [str(layers.merged / "ckpt")]
    guarantees = {g.key: g for g in report.guarantees}
    assert guarantees["directory_replace"].holds is False
    assert not report.full
    assert any("volume or bind mount" in line for line in report.recommendations)
    # The probes moved nothing and left nothing: only the directory made through the merged view is up there.
    assert listing(layers.upper) == ["made-here"]
    assert _tree(layers.merged / "ckpt") == {"weights.bin": b"old weights"}


def test_doctor_on_an_overlay_without_lower_layer_directories(tmp_path: Path) -> None:
    with _mount(tmp_path, "redirect_dir=on") as mount:
        report = diagnose(str(mount.merged))
        checks = {check.key: check for check in report.checks}
        assert checks["overlay_directories"].status == "yes"
        assert {g.key: g.holds for g in report.guarantees}["directory_replace"] is True
