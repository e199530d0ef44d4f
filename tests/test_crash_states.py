"""Power-loss crash states, explored ALICE-style (Pillai et al., OSDI 2014).

Each writer runs once under strace; the explorer (tests/crashsim) turns the trace into logical
file-system operations and enumerates every state a power loss could leave on disk after every
prefix of them, under the conservative persistence model documented in tests/crashsim/model.py:
what no fsync covers may reach the disk in any order, or not at all.  Each distinct state is
written to a scratch directory and the target is read back:

* oracle ``a`` (atomic): the complete old content (or, for a new file, nothing) or the complete
  new content; never missing, empty, torn or zero-filled;
* oracle ``b`` (durable): after the call returned, the complete new content;
* oracle ``mode``: the new content carries its final mode, from the first instant it is visible.

``durability="full"`` claims all three.  ``"file"`` claims ``a`` and ``mode`` (the directory is
not flushed, so the old name may come back).  ``"none"`` flushes nothing and is documented as
atomic against process crashes only: under power loss the explorer must find ``a`` failing too.
Known-bad protocols in plain ``os`` calls prove the explorer has teeth.

Directory trees (``atomic_directory`` creating then replacing a target, ``CheckpointStore``
saving twice) are explored the same way by tests/crashsim/tree.py: the target must be absent
(only before the first publish returned) or verify against its manifest and hold exactly the
old or the new generation; ``latest()`` must return a complete saved generation.

Needs strace (skipped without it, unless ``ATOMICWRITE_REQUIRE_STRACE=1``).  The counts of crash
points and states per protocol are printed at the end of the run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from atomicwrite import CheckpointStore, verify_directory
from atomicwrite._directories.manifest import MANIFEST_NAME
from tests.crashsim import writers
from tests.crashsim.model import crash_point, final_state, scan
from tests.crashsim.recorder import StraceUnavailable
from tests.crashsim.replay import Expectation, Exploration, explore
from tests.crashsim.trace import (
    Create,
    Fsync,
    FsyncDir,
    Link,
    Recording,
    Rename,
    Unlink,
    Write,
    record,
)
from tests.crashsim.tree import (
    MakeDir,
    MakeFile,
    MakeSymlink,
    Move,
    Remove,
    SyncDir,
    SyncFile,
    TreeExploration,
    TreeRecording,
    explore_tree,
    final_tree,
    project_tree,
    record_tree,
    scan_tree,
    subtree,
    tree_point,
    visible,
)
from tests.test_syscalls import _strace

pytest_plugins = ["tests.crashsim.report"]

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="strace and the traced protocols are Linux's")

TARGET = "target.bin"
NEW_FILE_MODE = 0o666 & ~writers.UMASK
# What each durability level is allowed to fail, and must fail, under the model.
FAILS = {"full": set(), "file": {"b"}, "none": {"a", "b", "mode"}}


def _explore(
    tmp_path: Path, protocol: str, options: tuple[str, ...], label: str, *, exists: bool, variant: str | None = None
) -> tuple[Recording, Exploration]:
    """Record ``protocol`` writing the target (existing or not), explore its crash states."""
    _strace()  # skip (or fail, in CI) without strace
    directory = tmp_path / "work"
    directory.mkdir()
    target = directory / TARGET
    if exists:
        target.write_bytes(writers.OLD)
        target.chmod(writers.OLD_MODE)
    try:
        recording = record(directory, target, protocol, *options, variant=variant)
    except StraceUnavailable as exc:
        if os.environ.get("ATOMICWRITE_REQUIRE_STRACE") == "1":
            pytest.fail(f"{exc}; ATOMICWRITE_REQUIRE_STRACE=1 requires it")
        pytest.skip(str(exc))
    # The recorder's self-check: with every operation on disk, the model must rebuild exactly
    # what the real directory holds now.
    assert final_state(recording) == scan(str(directory)), recording.listing()
    assert recording.returned_at == len(recording.ops), recording.listing()
    # The plain writers create with OLD_MODE; ours keeps the old mode or gives 0o666 & ~umask.
    new_mode = NEW_FILE_MODE if protocol.startswith("atomicwrite") and not exists else writers.OLD_MODE
    expectation = Expectation(TARGET, writers.OLD if exists else None, writers.NEW, writers.OLD_MODE, new_mode)
    result = explore(recording, expectation, label, tmp_path / "replay")
    from tests.crashsim import report  # after pytest imported it as a plugin (assertion rewriting)

    report.add(result.summary())
    return recording, result


@linux_only
@pytest.mark.parametrize("durability", ["full", "file", "none"])
@pytest.mark.parametrize("mode", ["wb", "xb"])
def test_atomicwrite_crash_states(tmp_path: Path, local_variant: str, mode: str, durability: str) -> None:
    kind = "replace" if mode == "wb" else "create"
    label = f"atomicwrite {kind:<7} {local_variant:<10} durability={durability}"
    recording, result = _explore(
        tmp_path, "atomicwrite", (mode, durability), label, exists=mode == "wb", variant=local_variant
    )
    # The variant really ran: an unnamed O_TMPFILE inode, or a named temp.
    first = recording.ops[0]
    assert isinstance(first, Create)
    assert (first.name is None) == (local_variant == "o_tmpfile"), recording.listing()
    assert result.failed == FAILS[durability], result.explain()
    assert result.crash_points == len(recording.ops) + 1


@linux_only
@pytest.mark.parametrize("durability", ["full", "file"])
def test_exclusive_link_fallback_crash_states(tmp_path: Path, durability: str) -> None:
    """Exclusive create without renameat2: link(2) the temp as the target, then unlink it."""
    label = f"atomicwrite create  link+unlink durability={durability}"
    recording, result = _explore(
        tmp_path, "atomicwrite-link-fallback", (durability,), label, exists=False, variant="named-temp"
    )
    published = [op for op in recording.ops if isinstance(op, (Link, Unlink, Rename))]
    assert [type(op) for op in published] == [Link, Unlink], recording.listing()
    assert result.failed == FAILS[durability], result.explain()


@linux_only
@pytest.mark.parametrize(
    ("protocol", "fails", "seen"),
    [
        # open(O_TRUNC) + write: a crash leaves the target empty or torn.
        ("in-place", {"a"}, ("empty", "corrupt: torn")),
        # temp + rename (+ directory fsync) without fsync of the file: the rename reaches the
        # disk before the data, even after the call returned.
        ("rename-without-fsync", {"a", "b"}, ("empty", "zero-filled")),
        # temp + fsync + rename, no directory fsync: atomic, but the old content comes back
        # after the call returned.
        ("rename-without-dir-fsync", {"b"}, ("old",)),
        # The textbook protocol passes: the explorer does not flag everything.
        ("plain-correct", set(), ()),
    ],
)
def test_explorer_flags_known_bad_protocols(
    tmp_path: Path, protocol: str, fails: set[str], seen: tuple[str, ...]
) -> None:
    _, result = _explore(tmp_path, protocol, (), f"plain {protocol}", exists=True)
    assert result.failed == fails, result.explain()
    shown = set().union(*result.seen.values())
    for kind in seen:
        assert any(text.startswith(kind) for text in shown), (kind, sorted(shown), result.explain())


# ----- the model itself, on hand-made operation lists (no strace needed) -----------------------


def _recording(*ops: object) -> Recording:
    return Recording("/nowhere", {TARGET: 0}, {0: (b"old", 0o640)}, list(ops), 0, len(ops))  # type: ignore[arg-type]


def _targets(recording: Recording, k: int) -> set[bytes | None]:
    return {{name: content for name, content, _ in state}.get(TARGET) for state in crash_point(recording, k).states}


def test_model_rename_may_persist_before_unflushed_data() -> None:
    ops = [Create(1, 0o640, ".tmp"), Write(1, 0, b"new!"), Rename(".tmp", TARGET, 1), FsyncDir()]
    assert _targets(_recording(*ops), 4) == {b"", b"\0\0\0\0", b"new!"}
    flushed = [*ops[:2], Fsync(1, data_only=False), *ops[2:]]
    assert _targets(_recording(*flushed), 4) == {b"old", b"new!"}  # renamed, directory not flushed
    assert _targets(_recording(*flushed), 5) == {b"new!"}


def test_model_file_fsync_does_not_make_its_name_durable() -> None:
    recording = Recording("/nowhere", {}, {}, [Create(0, 0o644, TARGET), Write(0, 0, b"x"), Fsync(0, False)], 0, 3)
    assert _targets(recording, 3) == {None, b"x"}
    recording.ops.append(FsyncDir())
    assert _targets(recording, 4) == {b"x"}


def test_model_crash_before_anything_is_the_initial_state() -> None:
    recording = _recording(Create(1, 0o640, ".tmp"), Rename(".tmp", TARGET, 1))
    assert crash_point(recording, 0).states == {((TARGET, b"old", 0o640),)}


# ----- directory trees: atomic_directory and CheckpointStore -------------------------------------


def _generation_of(directory: Path) -> str:
    """Which saved generation a verified directory holds: "old" (the first), "new", or neither."""
    files = {}
    for parent, _, names in os.walk(directory):
        for name in names:
            relative = os.path.relpath(os.path.join(parent, name), directory).replace(os.sep, "/")
            if relative != MANIFEST_NAME:
                files[relative] = Path(parent, name).read_bytes()
    if files == writers.GENERATIONS[0]:
        return "old"
    if files == writers.GENERATIONS[1]:
        return "new"
    return f"a verified mix of generations: {sorted(files)}"


def _read_published(scratch: Path) -> str:
    target = scratch / "target"
    if not os.path.lexists(target):
        return "missing"
    check = verify_directory(target)
    if not check.ok:
        return "unverified: " + ", ".join(sorted({problem.kind for problem in check.problems}))
    return _generation_of(target)


def _read_latest(scratch: Path) -> str:
    latest = CheckpointStore(scratch).latest()
    return "missing" if latest is None else _generation_of(Path(latest.location))


def _explore_tree(
    tmp_path: Path, protocol: str, label: str, *, store: bool = False
) -> tuple[TreeRecording, TreeExploration]:
    _strace()
    directory = tmp_path / "work"
    directory.mkdir()
    try:
        recording = record_tree(directory, protocol)
    except StraceUnavailable as exc:
        if os.environ.get("ATOMICWRITE_REQUIRE_STRACE") == "1":
            pytest.fail(f"{exc}; ATOMICWRITE_REQUIRE_STRACE=1 requires it")
        pytest.skip(str(exc))
    project = visible if store else subtree("target")
    # The recorder's self-check, as for single files: all operations on disk is the real tree.
    real = scan_tree(str(directory))
    assert real is not None
    assert final_tree(recording, project) == project_tree(real, project), recording.listing()
    assert recording.marks[writers.RETURNED] == len(recording.ops), recording.listing()
    reader = _read_latest if store else _read_published
    result = explore_tree(recording, project, reader, label, tmp_path / "replay")
    from tests.crashsim import report

    report.add(result.summary())
    return recording, result


@linux_only
def test_atomic_directory_crash_states(tmp_path: Path) -> None:
    """Create, then replace, a directory of files in a subdirectory: every crash state reads as
    no target (only before the first publish returned), or a verified old or new generation."""
    recording, result = _explore_tree(tmp_path, "atomicwrite-directory", "atomic_directory create + replace")
    # The renames onto the target (on a FUSE mount a probe renames a scratch directory first).
    moves = [op for op in recording.ops if isinstance(op, Move) and op.dst == "target"]
    assert [(move.noreplace, move.exchange) for move in moves] == [(True, False), (False, True)], recording.listing()
    assert any(isinstance(op, Remove) and op.directory for op in recording.ops), recording.listing()
    assert result.failed == set(), result.explain()
    assert result.crash_points == len(recording.ops) + 1
    assert result.materialized >= 3  # nothing, old and new were all replayed


@linux_only
def test_checkpoint_store_crash_states(tmp_path: Path) -> None:
    """Two saves: ``latest()`` always returns a complete saved generation (none only before the
    first save returned, the second after the second returned)."""
    recording, result = _explore_tree(tmp_path, "atomicwrite-checkpoints", "CheckpointStore two saves", store=True)
    links = [op for op in recording.ops if isinstance(op, MakeSymlink)]
    assert [link.points_to for link in links] == ["gen-00000001", "gen-00000002"], recording.listing()
    assert result.failed == set(), result.explain()


@linux_only
@pytest.mark.parametrize(
    ("protocol", "fails", "seen"),
    [
        # The files are never flushed: the rename lands before their data, even after return.
        ("directory-without-fsync", {"a", "b"}, ("unverified",)),
        # The old tree is removed before the new one is renamed in: no target, or a torn one.
        ("directory-remove-then-rename", {"a"}, ("missing", "unverified")),
    ],
)
def test_explorer_flags_bad_directory_protocols(
    tmp_path: Path, protocol: str, fails: set[str], seen: tuple[str, ...]
) -> None:
    _, result = _explore_tree(tmp_path, protocol, f"plain {protocol}")
    assert result.failed == fails, result.explain()
    for kind in seen:
        assert any(text.startswith(kind) for text in result.seen), (kind, sorted(result.seen), result.explain())


def _tree(*ops: object) -> TreeRecording:
    return TreeRecording("/nowhere", list(ops), {})  # type: ignore[arg-type]


def _names(recording: TreeRecording, k: int) -> set[object]:
    """The states of the name "t", unwrapped from the traced directory."""
    return {dict(state[1]).get("t") for state in tree_point(recording, k, subtree("t")).states}  # type: ignore[call-overload]


def test_tree_model_exchange_is_all_or_nothing_until_the_parent_is_flushed() -> None:
    old = ("dir", (("f", ("file", b"old")),))
    new = ("dir", (("f", ("file", b"new")),))
    ops = [
        MakeDir(0, "t", 1), MakeFile(1, "f", 2), Write(2, 0, b"old"), SyncFile(2), SyncDir(1), SyncDir(0),
        MakeDir(0, ".s", 3), MakeFile(3, "f", 4), Write(4, 0, b"new"), SyncFile(4), SyncDir(3),
        Move(0, ".s", "t", 3, 1, exchange=True),
    ]  # fmt: skip
    assert _names(_tree(*ops), 6) == {old}
    assert _names(_tree(*ops), 12) == {old, new}
    assert _names(_tree(*ops, SyncDir(0)), 13) == {new}


def test_tree_model_a_subdirectory_entry_needs_its_own_directory_flushed() -> None:
    ops = [
        MakeDir(0, "t", 1),
        MakeDir(1, "d", 2),
        MakeFile(2, "f", 3),
        Write(3, 0, b"x"),
        SyncFile(3),
        SyncDir(1),
        SyncDir(0),
    ]
    states = _names(_tree(*ops), 7)
    empty_sub = ("dir", (("d", ("dir", ())),))
    full = ("dir", (("d", ("dir", (("f", ("file", b"x")),))),))
    assert states == {empty_sub, full}  # fsync of t covers d's name, not d's entries
    assert _names(_tree(*ops, SyncDir(2)), 8) == {full}
