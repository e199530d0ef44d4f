"""The contract every local strategy variant keeps: replace, create, discard, permissions, links."""

from __future__ import annotations

import errno
import gc
import io
import os
import pickle
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import atomicwrite
from atomicwrite import (
    AtomicWriteError,
    ConflictError,
    LocalVersion,
    SerializerNotFoundError,
    TargetExistsError,
    TargetIsADirectoryError,
    TargetNotFoundError,
    UnsupportedTargetError,
    UsageError,
    atomic_open,
    atomic_save,
    atomic_update,
    sweep,
)
from atomicwrite._names import parse_temp_name
from tests.conftest import listing

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def umask_027() -> Iterator[None]:
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def temps(directory: Path) -> list[str]:
    return [name for name in listing(directory) if parse_temp_name(name) is not None]


# --- replace and create ---------------------------------------------------------------------


def test_replace_binary(workdir: Path) -> None:
    target = workdir / "data.bin"
    target.write_bytes(b"old")
    with atomic_open(target, "wb") as file:
        assert target.read_bytes() == b"old"  # nothing visible before the commit
        file.write(b"new ")
        file.write(b"content")
    assert target.read_bytes() == b"new content"
    assert listing(workdir) == ["data.bin"]
    result = file.result
    assert result is not None
    assert result.target == str(target)
    assert result.strategy == "posix"
    assert result.durability == "full"
    assert result.bytes_written == len(b"new content")
    assert result.version == LocalVersion.from_stat(target.stat())


def test_create_new_file(workdir: Path) -> None:
    target = workdir / "new.txt"
    with atomic_open(target, "w") as file:
        file.write("hello")
    assert target.read_text() == "hello"
    assert listing(workdir) == ["new.txt"]


@pytest.mark.parametrize("mode", ["x", "xb", "xt"])
def test_exclusive_creates_when_absent(workdir: Path, mode: str) -> None:
    target = workdir / "fresh"
    with atomic_open(target, mode) as file:
        file.write(b"one" if "b" in mode else "one")
    assert target.read_bytes() == b"one"
    assert listing(workdir) == ["fresh"]


@pytest.mark.parametrize("mode", ["x", "xb"])
def test_exclusive_refuses_existing(workdir: Path, mode: str) -> None:
    target = workdir / "taken"
    target.write_bytes(b"mine")
    with pytest.raises(FileExistsError) as raised:
        atomic_open(target, mode)
    assert isinstance(raised.value, TargetExistsError)
    assert raised.value.errno == errno.EEXIST
    assert str(target) in str(raised.value)
    assert target.read_bytes() == b"mine"
    assert listing(workdir) == ["taken"]


def test_exclusive_loses_race_at_commit(workdir: Path) -> None:
    """The existence check that counts is the one made by the publishing call itself."""
    target = workdir / "race"
    file = atomic_open(target, "xb")
    file.write(b"late")
    target.write_bytes(b"early")  # another writer wins while we are writing
    with pytest.raises(TargetExistsError):
        file.commit()
    assert target.read_bytes() == b"early"
    assert listing(workdir) == ["race"]


def test_pathlike_relative_home_and_file_url(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workdir)
    with atomic_open("relative.txt", "w") as file:
        file.write("r")
    assert (workdir / "relative.txt").read_text() == "r"
    monkeypatch.setenv("HOME", str(workdir))
    with atomic_open("~/home.txt", "w") as file:
        file.write("h")
    assert (workdir / "home.txt").read_text() == "h"
    with atomic_open(f"file://{workdir}/url.txt", "w") as file:
        file.write("u")
    assert (workdir / "url.txt").read_text() == "u"
    assert file.result is not None
    assert file.result.target == f"{workdir}/url.txt"


@pytest.mark.skipif(os.sep != "/", reason="POSIX path spellings")
@pytest.mark.parametrize("spelling", ["{dir}//doubled.bin", "{dir}/sub/../dotted.bin", "{dir}/./here.bin"])
def test_unusual_spellings_of_a_path_write_where_open_would(workdir: Path, spelling: str) -> None:
    """The target's directory and name are split without os.path: any spelling open() accepts
    lands in the same place, and its temp file beside it."""
    (workdir / "sub").mkdir()
    target = spelling.format(dir=workdir)
    with atomic_open(target, "wb") as file:
        file.write(b"new")
    with open(target, "rb") as written:
        assert written.read() == b"new"
    assert sorted(listing(workdir)) == sorted(["sub", os.path.basename(target)])
    assert file.result is not None
    assert file.result.target == target


@pytest.mark.parametrize("name", ["spaced name.txt", "ünïcødé-日本語.bin", "a" * 255, "é" * 127])
def test_awkward_names(workdir: Path, name: str) -> None:
    """Temp names still fit in NAME_MAX when the target's name is as long as allowed."""
    target = workdir / name
    target.write_bytes(b"old")
    with atomic_open(target, "wb") as file:
        file.write(b"new")
    assert target.read_bytes() == b"new"
    assert listing(workdir) == [name]


# --- text modes -----------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "latin-1", "cp1252", "utf-8-sig"])
def test_text_encodings(workdir: Path, encoding: str) -> None:
    target = workdir / "text"
    text = "caf\u00e9 cr\u00e8me\n"
    with atomic_open(target, "w", encoding=encoding) as file:
        file.write(text)
    assert target.read_bytes() == text.encode(encoding)


def test_text_newline_translation(workdir: Path) -> None:
    target = workdir / "lines"
    with atomic_open(target, "w", encoding="ascii", newline="\r\n") as file:
        file.write("a\nb\n")
    assert target.read_bytes() == b"a\r\nb\r\n"


def test_text_encoding_errors(workdir: Path) -> None:
    target = workdir / "strict"
    target.write_text("old")
    with pytest.raises(UnicodeEncodeError), atomic_open(target, "w", encoding="ascii") as file:
        file.write("\u2603")
    assert target.read_text() == "old"
    assert listing(workdir) == ["strict"]
    with atomic_open(target, "w", encoding="ascii", errors="replace") as file:
        file.write("\u2603")
    assert target.read_text() == "?"


def test_unknown_encoding_leaves_nothing(workdir: Path) -> None:
    target = workdir / "t"
    with pytest.raises(LookupError):
        atomic_open(target, "w", encoding="no-such-codec")
    assert listing(workdir) == []


# --- discard --------------------------------------------------------------------------------


@pytest.mark.parametrize("exception", [RuntimeError, KeyboardInterrupt, SystemExit, GeneratorExit])
def test_exception_discards(workdir: Path, exception: type[BaseException]) -> None:
    target = workdir / "keep"
    target.write_bytes(b"old")
    with pytest.raises(exception), atomic_open(target, "wb") as file:
        file.write(b"partial" * 1000)
        raise exception
    assert target.read_bytes() == b"old"
    assert listing(workdir) == ["keep"]
    assert file.result is None
    assert file.closed


def test_exception_discards_text(workdir: Path) -> None:
    target = workdir / "keep.txt"
    target.write_text("old")
    with pytest.raises(ValueError, match="boom"), atomic_open(target, "w") as file:
        file.write("partial")
        raise ValueError("boom")
    assert target.read_text() == "old"
    assert listing(workdir) == ["keep.txt"]


def test_explicit_commit_and_discard(workdir: Path) -> None:
    target = workdir / "explicit"
    file = atomic_open(target, "wb")
    file.write(b"1")
    result = file.commit()
    assert target.read_bytes() == b"1"
    assert file.commit() is result  # committing twice is harmless
    file.discard()  # and a discard after a commit does nothing
    assert target.read_bytes() == b"1"

    other = atomic_open(target, "wb")
    other.write(b"2")
    other.discard()
    other.discard()
    assert target.read_bytes() == b"1"
    with pytest.raises(AtomicWriteError, match="discarded"):
        other.commit()
    assert listing(workdir) == ["explicit"]


@pytest.mark.parametrize("mode", ["wb", "w"])
def test_discard_inside_with_block(workdir: Path, mode: str) -> None:
    target = workdir / "changed-mind"
    target.write_bytes(b"old")
    with atomic_open(target, mode) as file:
        file.write(b"new" if mode == "wb" else "new")
        file.discard()
        assert file.discarded
    assert target.read_bytes() == b"old"
    assert listing(workdir) == ["changed-mind"]


def test_sweep_reports_normalized_paths(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    leftover = workdir / ".x.awdeadbeef.12345.0123abcd.tmp"
    leftover.write_bytes(b"x")
    old = leftover.stat().st_mtime - 7200
    os.utime(leftover, (old, old))
    monkeypatch.chdir(workdir)
    assert sweep(".") == [str(leftover)]


def test_close_without_commit_discards(workdir: Path) -> None:
    target = workdir / "closed"
    target.write_bytes(b"old")
    file = atomic_open(target, "wb")
    file.write(b"new")
    file.close()
    assert target.read_bytes() == b"old"
    assert listing(workdir) == ["closed"]


def test_abandoned_writer_never_publishes(workdir: Path) -> None:
    """Unlike fsspec's files, a writer dropped by the garbage collector discards."""
    target = workdir / "abandoned"
    target.write_bytes(b"old")
    for mode in ("wb", "w"):
        file: Any = atomic_open(target, mode)
        file.write(b"new" if mode == "wb" else "new")
        del file
        gc.collect()
    assert target.read_bytes() == b"old"
    assert listing(workdir) == ["abandoned"]


def test_writes_are_visible_only_after_commit_text(workdir: Path) -> None:
    target = workdir / "later.txt"
    file = atomic_open(target, "w")
    file.write("text")
    assert not target.exists()
    file.commit()
    assert target.read_text() == "text"
    assert file.closed


def test_file_object_behaves_like_a_file(workdir: Path) -> None:
    target = workdir / "seek"
    with atomic_open(target, "wb") as file:
        assert file.writable()
        assert file.seekable()
        file.write(b"hello world")
        assert file.tell() == 11
        file.seek(0)
        file.write(b"J")
        file.writelines([b"!", b"?"])
        assert isinstance(file.fileno(), int)
    assert target.read_bytes() == b"J!?lo world"


def test_progress_callback_counts_bytes(workdir: Path) -> None:
    from fsspec.callbacks import Callback

    progress = Callback()
    with atomic_open(workdir / "p.bin", "wb", progress=progress) as file:
        file.write(b"a" * 10)
        file.write(b"b" * (3 << 20))
    assert progress.value == 10 + (3 << 20)


# --- permissions ----------------------------------------------------------------------------


def test_existing_mode_preserved(workdir: Path) -> None:
    target = workdir / "conf"
    target.write_text("old")
    target.chmod(0o640)
    with atomic_open(target, "w") as file:
        file.write("new")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_new_file_gets_umask_mode(workdir: Path, umask_027: None) -> None:
    target = workdir / "new"
    with atomic_open(target, "wb") as file:
        file.write(b"x")
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~0o027
    reference = workdir / "reference"
    reference.write_bytes(b"x")  # what plain open() gives, for comparison
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(reference.stat().st_mode)


def test_preserve_permissions_off_uses_umask(workdir: Path, umask_027: None) -> None:
    target = workdir / "reset"
    target.write_text("old")
    target.chmod(0o600)
    with atomic_open(target, "w", preserve_permissions=False) as file:
        file.write("new")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_explicit_permissions_for_secrets(workdir: Path) -> None:
    target = workdir / "secret"
    target.write_text("old")
    target.chmod(0o644)
    with atomic_open(target, "w", permissions=0o600) as file:
        file.write("token")
        # The staged file is never readable by others, not even before the commit.
        for name in temps(workdir):
            assert stat.S_IMODE((workdir / name).stat().st_mode) & 0o077 == 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_mode_is_set_before_publishing(workdir: Path) -> None:
    """The temp file already has the final mode while it is written."""
    target = workdir / "early"
    target.write_text("old")
    target.chmod(0o604)
    with atomic_open(target, "w") as file:
        file.write("new")
        file.flush()
        assert stat.S_IMODE(os.fstat(file.fileno()).st_mode) == 0o604


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_owner_preserved_as_root(workdir: Path) -> None:
    target = workdir / "owned"
    target.write_text("old")
    os.chown(target, 65534, 65534)
    with atomic_open(target, "w") as file:
        file.write("new")
    info = target.stat()
    assert (info.st_uid, info.st_gid) == (65534, 65534)


# --- symlinks and odd targets ---------------------------------------------------------------


def test_symlink_target_replaced_link_kept(workdir: Path) -> None:
    real_dir = workdir / "real"
    real_dir.mkdir()
    real = real_dir / "model.ckpt"
    real.write_bytes(b"old")
    link = workdir / "last.ckpt"
    link.symlink_to(Path("real") / "model.ckpt")  # relative link
    with atomic_open(link, "wb") as file:
        file.write(b"new")
    assert link.is_symlink()
    assert os.readlink(link) == os.path.join("real", "model.ckpt")
    assert real.read_bytes() == b"new"
    assert file.result is not None
    assert file.result.target == str(real_dir / "model.ckpt")
    assert listing(real_dir) == ["model.ckpt"]  # the temp lived beside the real file
    assert listing(workdir) == ["last.ckpt", "real"]


def test_symlink_chain(workdir: Path) -> None:
    (workdir / "file").write_bytes(b"old")
    (workdir / "b").symlink_to(workdir / "file")
    (workdir / "a").symlink_to("b")
    with atomic_open(workdir / "a", "wb") as file:
        file.write(b"new")
    assert (workdir / "file").read_bytes() == b"new"
    assert (workdir / "a").is_symlink()
    assert (workdir / "b").is_symlink()


def test_dangling_symlink_creates_its_target(workdir: Path) -> None:
    link = workdir / "link"
    link.symlink_to("missing")
    with atomic_open(link, "wb") as file:
        file.write(b"created")
    assert link.is_symlink()
    assert (workdir / "missing").read_bytes() == b"created"


def test_symlink_loop_is_refused(workdir: Path) -> None:
    (workdir / "x").symlink_to("y")
    (workdir / "y").symlink_to("x")
    with pytest.raises(OSError, match="symlink") as raised:
        atomic_open(workdir / "x", "wb")
    assert raised.value.errno == errno.ELOOP
    assert listing(workdir) == ["x", "y"]


def test_no_follow_replaces_the_link(workdir: Path) -> None:
    (workdir / "file").write_bytes(b"old")
    link = workdir / "link"
    link.symlink_to("file")
    with atomic_open(link, "wb", follow_symlinks=False) as file:
        file.write(b"new")
    assert not link.is_symlink()
    assert link.read_bytes() == b"new"
    assert (workdir / "file").read_bytes() == b"old"


# The symlink policy (docs/guarantees.md, "Symlinks"): one test per row.


def _exclusive_writes() -> dict[str, Any]:
    """Every spelling of an exclusive create of one file, each writing b"planted"."""

    def open_binary(target: Path) -> None:
        with atomic_open(target, "xb") as file:
            file.write(b"planted")

    def open_text(target: Path) -> None:
        with atomic_open(target, "x") as file:
            file.write("planted")

    def save(target: Path) -> None:
        atomic_save(b"planted", target, "bytes", exclusive=True)

    def batch(target: Path) -> None:
        with atomicwrite.atomic_batch() as group, group.open(target, "xb") as file:
            file.write(b"planted")

    return {"open-xb": open_binary, "open-x": open_text, "atomic_save": save, "atomic_batch": batch}


EXCLUSIVE_WRITES = _exclusive_writes()


@pytest.mark.parametrize("spelling", list(EXCLUSIVE_WRITES))
def test_exclusive_create_refuses_a_dangling_symlink(workdir: Path, tmp_path: Path, spelling: str) -> None:
    """A symlink is a name: "x" must not create the file it points to (as open(O_EXCL) refuses)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = workdir / "t.txt"
    link.symlink_to(elsewhere / "victim")
    with pytest.raises(TargetExistsError) as raised:
        EXCLUSIVE_WRITES[spelling](link)
    assert isinstance(raised.value, FileExistsError)
    assert listing(elsewhere) == []  # nothing created where the link points
    assert os.readlink(link) == str(elsewhere / "victim")
    assert listing(workdir) == ["t.txt"]  # and no temp left


@pytest.mark.parametrize("spelling", list(EXCLUSIVE_WRITES))
def test_exclusive_create_refuses_a_symlink_to_a_file(workdir: Path, spelling: str) -> None:
    (workdir / "real").write_bytes(b"old")
    (workdir / "link").symlink_to("real")
    with pytest.raises(TargetExistsError):
        EXCLUSIVE_WRITES[spelling](workdir / "link")
    assert (workdir / "real").read_bytes() == b"old"
    assert os.readlink(workdir / "link") == "real"
    assert listing(workdir) == ["link", "real"]


def test_exclusive_create_loses_to_a_dangling_symlink_planted_mid_write(workdir: Path, tmp_path: Path) -> None:
    """The publishing call is the existence check: a link planted after the open still wins."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = workdir / "t.txt"
    with pytest.raises(TargetExistsError), atomic_open(target, "xb") as file:
        file.write(b"planted")
        target.symlink_to(elsewhere / "victim")
    assert listing(elsewhere) == []
    assert os.readlink(target) == str(elsewhere / "victim")
    assert listing(workdir) == ["t.txt"]


def test_replace_through_a_link_into_another_directory(workdir: Path, tmp_path: Path) -> None:
    """The temp lives beside the real file (same file system: no copy, no EXDEV); the link stays."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "real").write_bytes(b"old")
    (workdir / "link").symlink_to(other / "real")
    with atomic_open(workdir / "link", "wb") as file:
        assert len(listing(other)) in (1, 2)  # the named temp, if any, is in the real file's directory
        assert listing(workdir) == ["link"]
        file.write(b"new")
    assert (other / "real").read_bytes() == b"new"
    assert os.readlink(workdir / "link") == str(other / "real")
    assert listing(other) == ["real"]
    assert file.result is not None
    assert file.result.target == str(other / "real")


def test_replace_through_a_dangling_link_into_a_missing_directory_fails_cleanly(workdir: Path) -> None:
    (workdir / "link").symlink_to(workdir / "gone" / "file")
    with pytest.raises(TargetNotFoundError):
        atomic_open(workdir / "link", "wb")
    assert listing(workdir) == ["link"]


needs_root = pytest.mark.skipif(
    sys.platform == "win32" or os.geteuid() != 0, reason="giving a symlink to another user needs root"
)
STRANGER = 65534  # nobody


def _sticky_directory(parent: Path, owner: int = 0) -> Path:
    shared = parent / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    os.chown(shared, owner, -1)
    return shared


@needs_root
@pytest.mark.parametrize("mode", ["wb", "xb"])
def test_strangers_link_in_a_sticky_world_writable_directory_is_not_followed(
    workdir: Path, tmp_path: Path, mode: str
) -> None:
    """protected_symlinks: /tmp-like directories; root is not redirected either."""
    shared = _sticky_directory(workdir)
    victim = tmp_path / "victim"
    victim.write_bytes(b"root's file")
    link = shared / "job.out"
    link.symlink_to(victim)
    os.lchown(link, STRANGER, STRANGER)
    error = TargetExistsError if "x" in mode else atomicwrite.AtomicPermissionError
    with pytest.raises(error) as raised:
        atomic_open(link, mode)
    if "x" not in mode:
        assert raised.value.errno == errno.EACCES
        assert "protected_symlinks" in str(raised.value)
    assert victim.read_bytes() == b"root's file"
    assert listing(shared) == ["job.out"]
    assert link.is_symlink()


@needs_root
def test_strangers_link_anywhere_in_a_chain_is_not_followed(workdir: Path, tmp_path: Path) -> None:
    shared = _sticky_directory(workdir)
    (tmp_path / "victim").write_bytes(b"old")
    (shared / "hop").symlink_to(tmp_path / "victim")
    os.lchown(shared / "hop", STRANGER, STRANGER)
    (workdir / "mine").symlink_to(shared / "hop")  # my own link, to a stranger's
    with pytest.raises(atomicwrite.AtomicPermissionError):
        atomic_open(workdir / "mine", "wb")
    assert (tmp_path / "victim").read_bytes() == b"old"


@needs_root
@pytest.mark.parametrize("case", ["my-link", "directory-owners-link", "not-sticky", "sticky-not-world-writable"])
def test_links_the_kernel_would_follow_are_followed(workdir: Path, tmp_path: Path, case: str) -> None:
    directory_owner = STRANGER if case == "directory-owners-link" else 0
    shared = _sticky_directory(workdir, owner=directory_owner)
    if case == "not-sticky":
        shared.chmod(0o777)
    elif case == "sticky-not-world-writable":
        shared.chmod(0o1775)
    real = tmp_path / "real"
    real.write_bytes(b"old")
    link = shared / "link"
    link.symlink_to(real)
    if case != "my-link":
        os.lchown(link, STRANGER, STRANGER)
    with atomic_open(link, "wb") as file:
        file.write(b"new")
    assert real.read_bytes() == b"new"
    assert link.is_symlink()


@pytest.mark.parametrize("use", ["lock", "atomic_update"])
def test_a_link_planted_at_the_lock_files_name_is_not_followed(workdir: Path, tmp_path: Path, use: str) -> None:
    """The lock file is a name this library creates too: a link there must not pick the file."""
    victim = tmp_path / "victim"
    (workdir / ".state.lock").symlink_to(victim)
    (workdir / "state").write_bytes(b"old")
    with pytest.raises(atomicwrite.AtomicPermissionError, match="symlink"):
        if use == "lock":
            atomic_open(workdir / "state", "wb", lock=True)
        else:
            atomic_update(workdir / "state", lambda old: b"new")
    assert not victim.exists()
    assert (workdir / "state").read_bytes() == b"old"
    assert listing(workdir) == [".state.lock", "state"]


def test_update_without_following_does_not_read_through_a_link(workdir: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"not for the link's planter")
    (workdir / "state").symlink_to(secret)
    with pytest.raises(UnsupportedTargetError, match="symlink"):
        atomic_update(workdir / "state", lambda old: old, follow_symlinks=False)
    assert (workdir / "state").is_symlink()
    assert secret.read_bytes() == b"not for the link's planter"
    assert listing(workdir) == [".state.lock", "state"]


@needs_root
def test_strangers_link_is_refused_without_o_path_too(
    workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where links cannot be opened (macOS), lstat, readlink and lstat again give the owner."""
    from atomicwrite._local import posix

    monkeypatch.setattr(posix, "_O_PATH", 0)
    shared = _sticky_directory(workdir)
    (tmp_path / "victim").write_bytes(b"old")
    (shared / "link").symlink_to(tmp_path / "victim")
    os.lchown(shared / "link", STRANGER, STRANGER)
    with pytest.raises(atomicwrite.AtomicPermissionError):
        atomic_open(shared / "link", "wb")
    (workdir / "mine").symlink_to(tmp_path / "victim")
    with atomic_open(workdir / "mine", "wb") as file:
        file.write(b"new")
    assert (tmp_path / "victim").read_bytes() == b"new"


@pytest.mark.parametrize("suffix", ["", "/", "/."])
def test_directory_target(workdir: Path, suffix: str) -> None:
    (workdir / "folder").mkdir()
    with pytest.raises(IsADirectoryError) as raised:
        atomic_open(str(workdir / "folder") + suffix, "wb")
    assert isinstance(raised.value, TargetIsADirectoryError)
    assert listing(workdir) == ["folder"]
    assert listing(workdir / "folder") == []


def test_missing_parent(workdir: Path) -> None:
    target = workdir / "no" / "such" / "dir" / "file"
    with pytest.raises(FileNotFoundError) as raised:
        atomic_open(target, "wb")
    assert isinstance(raised.value, TargetNotFoundError)
    assert str(target) in str(raised.value)


def test_fifo_is_not_replaced(workdir: Path) -> None:
    fifo = workdir / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(UnsupportedTargetError, match="not a regular file"):
        atomic_open(fifo, "wb")
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert listing(workdir) == ["pipe"]


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["r", "a", "ab", "w+", "wb+", "wbt", "wx", "", "rw", "ww"])
def test_bad_modes(workdir: Path, mode: str) -> None:
    with pytest.raises(UsageError, match="mode"):
        atomic_open(workdir / "f", mode)
    assert listing(workdir) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"durability": "sometimes"}, "durability"),
        ({"permissions": 0o10000}, "permissions"),
        ({"permissions": -1}, "permissions"),
        ({"permissions": [0o644]}, "permissions"),
        ({"encoding": "utf-8"}, "text modes"),
        ({"newline": "\n"}, "text modes"),
    ],
)
def test_bad_options(workdir: Path, options: dict[str, Any], message: str) -> None:
    # Twice: checked options are shared between writes, and a bad one must never be kept; an
    # unhashable one cannot be looked up, and is still named.
    for _ in range(2):
        with pytest.raises(UsageError, match=message):
            atomic_open(workdir / "f", "wb", **options)
    assert listing(workdir) == []


def test_bad_newline_and_exclusive_if_match(workdir: Path) -> None:
    with pytest.raises(UsageError, match="newline"):
        atomic_open(workdir / "f", "w", newline="\t")
    with pytest.raises(UsageError, match="if_match"):
        atomic_open(workdir / "f", "xb", if_match=LocalVersion(0, 0, 0, 0))
    assert listing(workdir) == []


class _BytesPath:
    """A path-like object whose path is bytes."""

    def __fspath__(self) -> bytes:
        return b"/tmp/bytes"


@pytest.mark.parametrize("target", [b"/tmp/bytes", _BytesPath(), 42, None, ""])
def test_bad_targets(target: Any) -> None:
    with pytest.raises(UsageError, match="target"):
        atomic_open(target, "wb")


@pytest.mark.skipif(sys.platform != "linux", reason="counts descriptors in /proc/self/fd")
def test_a_name_the_file_system_cannot_encode_leaks_nothing(workdir: Path) -> None:
    """A lone surrogate cannot be encoded to a file name: the write fails as open() does,
    after the directory was opened, which must then be closed again."""
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(UnicodeEncodeError):
        atomic_open(workdir / "bad\ud800name", "wb")
    assert len(os.listdir("/proc/self/fd")) == before
    assert listing(workdir) == []


def test_unknown_protocol() -> None:
    with pytest.raises(UnsupportedTargetError, match="nosuchproto"):
        atomic_open("nosuchproto://bucket/key", "wb")


def test_errors_share_one_root() -> None:
    for name in atomicwrite.__all__:
        value = getattr(atomicwrite, name)
        if isinstance(value, type) and issubclass(value, BaseException):
            assert issubclass(value, AtomicWriteError), name


# --- durability levels ----------------------------------------------------------------------


@pytest.mark.parametrize("level", ["none", "file", "full"])
def test_durability_reported(workdir: Path, level: str) -> None:
    target = workdir / "d"
    with atomic_open(target, "wb", durability=level) as file:  # type: ignore[call-overload]
        file.write(b"x")
    assert file.result is not None
    assert file.result.durability == level
    assert target.read_bytes() == b"x"


# --- conditional writes and locks -----------------------------------------------------------


def test_if_match_compare_and_swap(workdir: Path) -> None:
    target = workdir / "cas"
    first = atomic_save(b"v1", target, "bytes")
    second = atomic_save(b"v2", target, "bytes", if_match=first.version)
    assert target.read_bytes() == b"v2"
    with pytest.raises(ConflictError) as raised:
        atomic_save(b"v3", target, "bytes", if_match=first.version)
    assert raised.value.expected == first.version
    assert raised.value.actual == second.version
    assert target.read_bytes() == b"v2"
    assert listing(workdir) == ["cas"]


def test_if_match_detects_change_during_write(workdir: Path) -> None:
    target = workdir / "cas"
    first = atomic_save(b"v1", target, "bytes")
    file = atomic_open(target, "wb", if_match=first.version)
    file.write(b"mine")
    atomic_save(b"theirs", target, "bytes")
    with pytest.raises(ConflictError):
        file.commit()
    assert target.read_bytes() == b"theirs"
    assert listing(workdir) == ["cas"]


def test_if_match_on_missing_target(workdir: Path) -> None:
    with pytest.raises(ConflictError):
        atomic_save(b"x", workdir / "gone", "bytes", if_match=LocalVersion(1, 2, 3, 4))
    assert listing(workdir) == []


def test_lock_serializes_writers(workdir: Path) -> None:
    target = workdir / "locked"
    with atomic_open(target, "wb", lock=True) as file:
        file.write(b"a")
        # A second writer in another process blocks until we are done.
        code = (
            "import sys; sys.path.insert(0, sys.argv[2]); from tests import _variant; _variant.apply();"
            "from atomicwrite import atomic_open\n"
            "with atomic_open(sys.argv[1], 'wb', lock=True) as f: f.write(b'b')\n"
        )
        other = subprocess.Popen([sys.executable, "-c", code, str(target), str(ROOT)])
        with pytest.raises(subprocess.TimeoutExpired):
            other.wait(timeout=1.0)
        assert not target.exists()
    assert other.wait(timeout=30) == 0
    # Its write came after our commit: it waited for the lock instead of racing us.
    assert target.read_bytes() == b"b"
    assert temps(workdir) == []


# --- atomic_save and serializers ------------------------------------------------------------


@pytest.mark.parametrize(
    ("serializer", "obj", "read"),
    [
        ("bytes", b"\x00\x01raw", lambda p: p.read_bytes()),
        ("text", "plain \u00e9", lambda p: p.read_text(encoding="utf-8")),
        ("json", {"a": [1, 2.5, None], "\u00e9": True}, lambda p: __import__("json").loads(p.read_text("utf-8"))),
        ("pickle", {"set": {1, 2}, "tuple": (1, "x")}, lambda p: pickle.loads(p.read_bytes())),
    ],
)
def test_builtin_serializers(workdir: Path, serializer: str, obj: Any, read: Any) -> None:
    target = workdir / "saved"
    result = atomic_save(obj, target, serializer)
    assert read(target) == obj
    assert result.bytes_written == target.stat().st_size
    assert listing(workdir) == ["saved"]


def test_callable_serializer_and_exclusive(workdir: Path) -> None:
    target = workdir / "custom"

    def dump(obj: Any, file: io.BufferedIOBase) -> None:
        file.write(repr(obj).encode())

    atomic_save([1, 2], target, dump, exclusive=True)
    assert target.read_bytes() == b"[1, 2]"
    with pytest.raises(TargetExistsError):
        atomic_save([3], target, dump, exclusive=True)
    assert target.read_bytes() == b"[1, 2]"


def test_failing_serializer_leaves_target(workdir: Path) -> None:
    class Unpicklable:
        def __reduce__(self) -> Any:
            raise TypeError("not today")

    target = workdir / "state.pkl"
    atomic_save({"ok": 1}, target)
    with pytest.raises(TypeError, match="not today"):
        atomic_save({"big": b"x" * 100_000, "bad": Unpicklable()}, target)
    assert pickle.loads(target.read_bytes()) == {"ok": 1}
    assert listing(workdir) == ["state.pkl"]


def test_wrong_type_for_serializer(workdir: Path) -> None:
    with pytest.raises(UsageError, match="bytes-like"):
        atomic_save("text", workdir / "b", "bytes")
    with pytest.raises(UsageError, match="str"):
        atomic_save(b"raw", workdir / "t", "text")
    with pytest.raises(UsageError, match="encoding"):
        atomic_save(b"raw", workdir / "b", "bytes", encoding="utf-8")
    assert listing(workdir) == []


def test_unknown_serializer(workdir: Path) -> None:
    with pytest.raises(SerializerNotFoundError, match="yaml-ish"):
        atomic_save({}, workdir / "x", "yaml-ish")
    assert listing(workdir) == []


def test_entry_point_serializer(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    def upper(obj: Any, file: Any) -> None:
        file.write(str(obj).upper().encode())

    class FakeEntryPoint:
        name = "upper"
        value = "somepkg:upper"

        def load(self) -> Any:
            return upper

    def entry_points(group: str) -> list[FakeEntryPoint]:
        return [FakeEntryPoint()] if group == "atomicwrite.serializers" else []

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    import atomicwrite._serializers as serializers

    monkeypatch.setattr(serializers, "_REGISTRY", dict(serializers._REGISTRY))
    atomic_save("shout", workdir / "e", "upper")
    assert (workdir / "e").read_bytes() == b"SHOUT"


def test_atomic_update_in_process(workdir: Path) -> None:
    target = workdir / "counter.json"
    for _ in range(5):
        atomic_update(target, lambda n: (n or 0) + 1, serializer="json")
    assert target.read_text() == "5\n"
    data = workdir / "blob"
    atomic_update(data, lambda old: (old or b"") + b"x")
    atomic_update(data, lambda old: (old or b"") + b"y")
    assert data.read_bytes() == b"xy"
    assert sorted(temps(workdir)) == []


def test_atomic_update_failure_keeps_old(workdir: Path) -> None:
    target = workdir / "state.json"
    atomic_save({"n": 1}, target, "json")

    def fail(_: Any) -> Any:
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        atomic_update(target, fail, serializer="json")
    assert target.read_text().strip().startswith("{")
    with pytest.raises(UsageError, match="lock"):
        atomic_update(target, lambda x: x, serializer="json", lock=True)


# --- sweep ----------------------------------------------------------------------------------


def _killed_writer_leftover(directory: Path, name: str) -> list[str]:
    """Start a writer in a subprocess, SIGKILL it mid-write, and return the temps it left."""
    code = (
        "import sys, os; sys.path.insert(0, sys.argv[2]); from tests import _variant; _variant.apply();"
        "from atomicwrite import atomic_open\n"
        "f = atomic_open(sys.argv[1], 'wb'); f.write(b'x' * 4096); f.flush()\n"
        "print('ready', flush=True); sys.stdin.read()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(directory / name), str(ROOT)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.kill()
    proc.wait()
    assert proc.stdin is not None
    proc.stdin.close()
    proc.stdout.close()
    return temps(directory)


def test_sweep_removes_dead_writers_temps_only(workdir: Path, local_variant: str) -> None:
    (workdir / "target").write_bytes(b"old")
    (workdir / ".target.tmp").write_bytes(b"user's own")  # look-alike, not ours
    (workdir / ".target.aw1234.tmp").write_bytes(b"also not ours")
    left = _killed_writer_leftover(workdir, "target")
    if local_variant == "o_tmpfile":
        assert left == []  # an unnamed temp dies with its writer
    else:
        assert len(left) == 1
    live = atomic_open(workdir / "target", "wb")
    live.write(b"in progress")
    live.flush()
    assert sweep(workdir, dry_run=True) == [str(workdir / name) for name in left]
    assert len(temps(workdir)) == len(left) + (local_variant == "named-temp")
    removed = sweep(workdir)
    assert removed == [str(workdir / name) for name in left]
    assert (workdir / ".target.tmp").read_bytes() == b"user's own"
    assert (workdir / ".target.aw1234.tmp").exists()
    assert (workdir / "target").read_bytes() == b"old"
    live.commit()  # the live writer was not disturbed
    assert (workdir / "target").read_bytes() == b"in progress"
    assert temps(workdir) == []


def test_sweep_age_limit_for_unknown_writers(workdir: Path) -> None:
    """A temp from another host is removed only once it is older than the limit."""
    foreign = workdir / ".data.awdeadbeef.12345.0123abcd.tmp"
    foreign.write_bytes(b"x")
    assert sweep(workdir) == []
    old = foreign.stat().st_mtime - 7200
    os.utime(foreign, (old, old))
    assert sweep(workdir) == [str(foreign)]
    assert listing(workdir) == []


def test_sweep_never_follows_planted_symlinks(workdir: Path) -> None:
    victim = workdir / "victim"
    victim.write_bytes(b"precious")
    planted = workdir / ".data.awdeadbeef.12345.0123abcd.tmp"
    planted.symlink_to(victim)
    old = victim.stat().st_mtime - 7200
    os.utime(planted, (old, old), follow_symlinks=False)
    sweep(workdir, older_than=0)
    assert victim.read_bytes() == b"precious"


def test_sweep_bad_age(workdir: Path) -> None:
    with pytest.raises(UsageError):
        sweep(workdir, older_than=-1)


# --- property-based round trips -------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(max_size=3 << 20), durability=st.sampled_from(["none", "file"]))
def test_roundtrip_bytes(workdir: Path, payload: bytes, durability: str) -> None:
    target = workdir / "prop.bin"
    with atomic_open(target, "wb", durability=durability) as file:  # type: ignore[call-overload]
        # Written in uneven pieces, so buffered and direct writes both happen.
        view = memoryview(payload)
        step = 1 + len(payload) // 7
        for start in range(0, len(payload), step):
            file.write(view[start : start + step])
    assert target.read_bytes() == payload
    assert file.result is not None
    assert file.result.bytes_written == len(payload)
    assert listing(workdir) == ["prop.bin"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.text(max_size=2000),
    encoding=st.sampled_from(["utf-8", "utf-16", "utf-32", "latin-1", "cp1252", "shift_jis"]),
)
def test_roundtrip_text(workdir: Path, text: str, encoding: str) -> None:
    target = workdir / "prop.txt"
    try:
        expected = text.encode(encoding)
    except UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError), atomic_open(target, "w", encoding=encoding, newline="") as file:
            file.write(text)
        assert temps(workdir) == []
        return
    with atomic_open(target, "w", encoding=encoding, newline="") as file:
        file.write(text)
    assert target.read_bytes() == expected
