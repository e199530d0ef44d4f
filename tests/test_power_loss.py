"""Power cuts, simulated at every operation a write makes, on a FUSE layer that forgets.

The layer (``tests/fusefs``, ``power_loss=True``) serves a backing directory and remembers, apart
from what it serves, what a power cut would keep.  The model, after POSIX and ext4:

- **File data and size** become durable at that file's ``fsync`` or ``fdatasync`` (both flush the
  data and the size; neither flushes the file's name).
- **A directory entry** -- create, link, symlink, rename, unlink, mkdir, rmdir -- becomes durable
  at its directory's ``fsync``.  A rename touches two directories when it moves between them: the
  old name goes when the source directory is flushed, the new one comes when the destination is,
  independently (so a cut can leave both names, or neither; ext4 commits both in one journal
  transaction, which this model does not promise).  A directory created and never flushed comes
  back empty; a file whose name is durable but whose data never was comes back empty (size 0).
- **A cut** (``cut()``) then drops everything else: the backing directory is rewritten to hold
  exactly the durable state, open descriptors die (EIO), and the mount serves that state again.

That is the strict case POSIX allows.  A real disk also commits metadata on its own (ext4's
journal every few seconds, whatever was fsynced), so the layer has a second cut,
``cut(journaled=True)``: every name and size change reached the disk, and only file data not
flushed by its file's fsync is lost (each file keeps its last fsynced content, cut to the smallest
size a truncate gave it since; a new file is empty).  That is ext4 ``data=writeback`` after a
journal commit, and ``data=ordered`` without ``auto_da_alloc``: ordered mode flushes data before
the metadata that *allocates* it, but delayed allocation leaves a renamed-over file unallocated,
so a rename can reach the disk before the data it names.  ext4's ``auto_da_alloc`` heuristic (on
by default) forces that allocation on a rename over an existing file, and would mask exactly the
bug the controls below show; the model takes the strict case, as xfs and ``noauto_da_alloc`` do.

For each durable call (``atomic_open`` replacing a file and creating one, ``atomic_directory``,
``CheckpointStore.save``, ``atomicwrite.torch.save``) and for ``durability="file"``:

1. one untouched run counts the state-changing operations the layer sees (N);
2. for every k in 1..N, a fresh copy of the old state gets the same call with the power cut right
   after operation k (every request after it fails with EIO), under each of the two cuts;
3. the target must then hold the complete old or the complete new content, never anything else
   (torn) and never nothing where something was (lost);
4. a cut right after the call returns must keep the new content (``"full"``; ``"file"`` may keep
   the old one).

Two controls run the same way and must fail, or the layer proves nothing: plain
``open()/write()/close()`` over the file, and a temp file renamed over it without ``fsync``.
``durability="none"`` is measured (a cut after it returns), and docs/guide.md's durability table
says what it measured.  The counts are printed at the end of the run (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import gc
import os
import random
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from atomicwrite import CheckpointStore, atomic_directory, atomic_open, sweep, verify_directory
from atomicwrite._directories.manifest import MANIFEST_NAME
from tests.conftest import TERMINAL_SUMMARY
from tests.fusefs import FuseMount, mount, unavailable_reason

pytestmark = [
    pytest.mark.filesystems,
    pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason())),
]

Outcome = Literal["old", "new", "torn", "lost"]
CUTS = (False, True)  # the strict cut, then the journaled one

_rng = random.Random(25)
OLD = _rng.randbytes(48 * 1024)
NEW = _rng.randbytes(160 * 1024)  # more than one FUSE write request
OLD_FILES = {"weights": OLD, "config.json": b'{"step": 1}'}
NEW_FILES = {"weights": NEW, "config.json": b'{"step": 2}', "optimizer": _rng.randbytes(8 * 1024)}


@dataclass(frozen=True)
class Scenario:
    """A call to cut at every operation: ``prepare`` lays the old state straight into the backing
    directory, ``run`` makes the call through the mount, ``judge`` reads the backing directory
    after the cut."""

    name: str
    prepare: Callable[[Path], None]
    run: Callable[[Path], None]
    judge: Callable[[Path], Outcome]


def _file_outcome(path: Path, *, existed: bool) -> Outcome:
    if not path.exists():
        return "lost" if existed else "old"
    data = path.read_bytes()
    if data == NEW:
        return "new"
    if existed and data == OLD:
        return "old"
    return "torn"


def _write_old_file(root: Path) -> None:
    (root / "target.bin").write_bytes(OLD)


def _atomic_open(durability: str) -> Callable[[Path], None]:
    def run(root: Path) -> None:
        with atomic_open(root / "target.bin", "wb", durability=durability) as f:  # type: ignore[call-overload]
            f.write(NEW)

    return run


def _write_old_directory(root: Path) -> None:
    (root / "ckpt").mkdir()
    for name, data in OLD_FILES.items():
        (root / "ckpt" / name).write_bytes(data)


def _atomic_directory(root: Path) -> None:
    with atomic_directory(root / "ckpt") as staging:
        for name, data in NEW_FILES.items():
            (Path(staging) / name).write_bytes(data)


def _directory_outcome(root: Path) -> Outcome:
    target = root / "ckpt"
    if not target.is_dir():
        return "lost"
    found = {entry.name: entry.read_bytes() for entry in target.iterdir() if entry.name != MANIFEST_NAME}
    if found == OLD_FILES and not (target / MANIFEST_NAME).exists():
        return "old"
    if found == NEW_FILES and verify_directory(target):
        return "new"
    return "torn"


def _write_old_generation(root: Path) -> None:
    with CheckpointStore(root / "run").save(step=1) as staging:
        for name, data in OLD_FILES.items():
            (Path(staging) / name).write_bytes(data)


def _checkpoint_save(root: Path) -> None:
    with CheckpointStore(root / "run").save(step=2) as staging:
        for name, data in NEW_FILES.items():
            (Path(staging) / name).write_bytes(data)


def _generation_outcome(root: Path) -> Outcome:
    latest = CheckpointStore(root / "run").latest()
    if latest is None:
        return "lost"
    found = {name: Path(latest / name).read_bytes() for name in (NEW_FILES if latest.number == 2 else OLD_FILES)}
    if latest.number == 1 and found == OLD_FILES:
        return "old"
    if latest.number == 2 and found == NEW_FILES:
        return "new"
    return "torn"


def _tensors(fill: float) -> Any:
    import torch

    return {"layer.weight": torch.full((64, 64), fill), "layer.bias": torch.arange(64, dtype=torch.float32) * fill}


def _write_old_model(root: Path) -> None:
    import torch

    torch.save(_tensors(1.0), root / "model.pt")


def _torch_save(root: Path) -> None:
    import atomicwrite.torch

    atomicwrite.torch.save(_tensors(2.0), root / "model.pt")


def _model_outcome(root: Path) -> Outcome:
    import torch

    path = root / "model.pt"
    if not path.exists():
        return "lost"
    try:
        loaded = torch.load(path, weights_only=True)
    except Exception:
        return "torn"
    for fill, outcome in ((1.0, "old"), (2.0, "new")):
        expected = _tensors(fill)
        if loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected):
            return outcome  # type: ignore[return-value]
    return "torn"


def _plain_overwrite(root: Path) -> None:
    with open(root / "target.bin", "wb") as f:
        f.write(NEW)


def _rename_without_fsync(root: Path) -> None:
    with open(root / "target.bin.tmp", "wb") as f:
        f.write(NEW)
    os.rename(root / "target.bin.tmp", root / "target.bin")


def _replaced_file(root: Path) -> Outcome:
    return _file_outcome(root / "target.bin", existed=True)


def _new_file(root: Path) -> Outcome:
    return _file_outcome(root / "target.bin", existed=False)


def _nothing(root: Path) -> None:
    pass


DURABLE = [
    Scenario("atomic_open replace", _write_old_file, _atomic_open("full"), _replaced_file),
    Scenario("atomic_open new file", _nothing, _atomic_open("full"), _new_file),
    Scenario("atomic_directory replace", _write_old_directory, _atomic_directory, _directory_outcome),
    Scenario("CheckpointStore.save", _write_old_generation, _checkpoint_save, _generation_outcome),
    Scenario("atomicwrite.torch.save", _write_old_model, _torch_save, _model_outcome),
]
FILE_DURABILITY = Scenario(
    'atomic_open replace, durability="file"', _write_old_file, _atomic_open("file"), _replaced_file
)
CONTROLS = [
    Scenario("plain open/write/close", _write_old_file, _plain_overwrite, _replaced_file),
    Scenario("temp renamed without fsync", _write_old_file, _rename_without_fsync, _replaced_file),
]


@dataclass
class Replay:
    """What one scenario gave under one kind of cut."""

    operations: int
    during: list[Outcome]  # after operation k, for k = 1..operations
    after_return: Outcome


def _reset(backing: Path, live: FuseMount, scenario: Scenario) -> None:
    gc.collect()  # descriptors of a call cut short close now, not in the middle of the next one
    for entry in list(backing.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    scenario.prepare(backing)
    live.rescan()


def replay(live: FuseMount, scenario: Scenario, *, journaled: bool) -> Replay:
    backing, root = live.source, live.mountpoint
    _reset(backing, live, scenario)
    start = live.operations
    scenario.run(root)
    count = live.operations - start
    live.cut(journaled=journaled)
    after_return = scenario.judge(backing)
    during: list[Outcome] = []
    for k in range(1, count + 1):
        _reset(backing, live, scenario)
        live.cut_after(k, journaled=journaled)
        with contextlib.suppress(Exception):  # the power went out under it: any error is expected
            scenario.run(root)
        assert live.cut(journaled=journaled), f"{scenario.name}: the cut after operation {k} of {count} never fired"
        during.append(scenario.judge(backing))
    return Replay(count, during, after_return)


@dataclass
class Tally:
    cuts: int = 0
    torn: int = 0
    lost_after_return: int = 0
    control_cuts: int = 0
    controls_failed: int = 0


TALLY = Tally()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuseMount]:
    base = tmp_path_factory.mktemp("power-loss")
    (base / "backing").mkdir()
    with mount(base / "backing", base / "mnt", power_loss=True) as mounted:
        yield mounted
    if TALLY.cuts:
        TERMINAL_SUMMARY.setdefault("power loss (FUSE layer, a cut after every operation)", []).append(
            f"power-loss: {TALLY.cuts} cuts, {TALLY.torn} torn, {TALLY.lost_after_return} lost after durable"
            f" return; controls: {TALLY.controls_failed} torn or lost"
        )


@pytest.mark.parametrize("scenario", DURABLE, ids=[s.name for s in DURABLE])
def test_a_cut_anywhere_leaves_old_or_new_and_after_return_new(live: FuseMount, scenario: Scenario) -> None:
    for journaled in CUTS:
        result = replay(live, scenario, journaled=journaled)
        assert result.operations >= 4, f"{scenario.name}: too few operations seen ({result.operations})"
        outcomes = Counter(result.during)
        TALLY.cuts += result.operations + 1
        TALLY.torn += outcomes["torn"] + outcomes["lost"]
        TALLY.lost_after_return += result.after_return != "new"
        cut = "journaled" if journaled else "strict"
        assert set(outcomes) <= {"old", "new"}, f"{scenario.name}, {cut} cut: {dict(outcomes)}"
        assert result.after_return == "new", f"{scenario.name}, {cut} cut after return: {result.after_return}"
        # Both sides of the publishing operation were cut at: the replay reached the new content.
        assert outcomes["old"] > 0
        assert outcomes["new"] > 0


def test_durability_file_keeps_old_or_new(live: FuseMount) -> None:
    after: dict[bool, Outcome] = {}
    for journaled in CUTS:
        result = replay(live, FILE_DURABILITY, journaled=journaled)
        outcomes = Counter(result.during)
        TALLY.cuts += result.operations + 1
        TALLY.torn += outcomes["torn"] + outcomes["lost"] + (result.after_return in ("torn", "lost"))
        assert set(outcomes) <= {"old", "new"}, dict(outcomes)
        after[journaled] = result.after_return
    # Without the directory fsync the rename is not durable: the strict cut brings the old file
    # back, a journal commit keeps the new one.  Never anything else.
    assert after == {False: "old", True: "new"}


def test_controls_fail_under_the_layer(live: FuseMount) -> None:
    for scenario in CONTROLS:
        failed = 0
        for journaled in CUTS:
            result = replay(live, scenario, journaled=journaled)
            outcomes = [*result.during, result.after_return]
            TALLY.control_cuts += len(outcomes)
            failed += sum(outcome in ("torn", "lost") for outcome in outcomes)
        TALLY.controls_failed += failed
        assert failed > 0, f"{scenario.name} survived every cut: the layer proves nothing"


# docs/guide.md's durability table, cell for cell: a cut right after the call returned.
DOCUMENTED = {
    ("full", "replace"): ("new", "new"),
    ("full", "new file"): ("new", "new"),
    ("file", "replace"): ("old", "new"),
    ("file", "new file"): ("nothing", "new"),
    ("none", "replace"): ("old", "empty"),
    ("none", "new file"): ("nothing", "empty"),
}


def test_each_durability_level_measured_as_the_guide_says(live: FuseMount) -> None:
    measured = {}
    for durability, kind in DOCUMENTED:
        prepare, judge = (_write_old_file, _replaced_file) if kind == "replace" else (_nothing, _new_file)
        scenario = Scenario(f"{durability} {kind}", prepare, _atomic_open(durability), judge)
        cells = []
        for journaled in CUTS:
            _reset(live.source, live, scenario)
            scenario.run(live.mountpoint)
            live.cut(journaled=journaled)
            target = live.source / "target.bin"
            outcome: str = scenario.judge(live.source)
            if not target.exists():
                outcome = "nothing"
            elif target.stat().st_size == 0:
                outcome = "empty"
            cells.append(outcome)
        measured[(durability, kind)] = tuple(cells)
    assert measured == DOCUMENTED
    guide = (Path(__file__).resolve().parents[1] / "docs" / "guide.md").read_text()
    for durability in ("full", "file", "none"):
        cells = [*DOCUMENTED[(durability, "replace")], *DOCUMENTED[(durability, "new file")]]
        row = " | ".join(f"**{cell}**" if cell == "empty" else cell for cell in cells)
        assert f'| `"{durability}"` | {row} |' in guide, f"docs/guide.md's durability table, {durability!r}"


def test_without_directory_fsync_a_durable_return_is_lost(tmp_path: Path) -> None:
    """What a FUSE server without fsyncdir (sshfs, gcsfuse) costs: the kernel answers the
    directory fsync itself, the write reports durability "full", and a cut brings the old file
    back."""
    (tmp_path / "backing").mkdir()
    _write_old_file(tmp_path / "backing")
    with mount(tmp_path / "backing", tmp_path / "mnt", without={"dirfsync"}, power_loss=True) as mounted:
        with atomic_open(mounted.mountpoint / "target.bin", "wb") as f:
            f.write(NEW)
        assert f.result is not None
        assert f.result.durability == "full"
        mounted.cut()
        assert _replaced_file(mounted.source) == "old"


def _after_reboot(live: FuseMount) -> None:
    """Make every leftover of this process a dead writer's, as a reboot does, then sweep."""
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    mine = f".{os.getpid()}."
    for entry in list(live.source.iterdir()):
        if mine in entry.name:
            entry.rename(live.source / entry.name.replace(mine, f".{dead.pid}."))
    live.rescan()
    sweep(live.mountpoint, older_than=0)


def test_a_directory_replace_without_rename_exchange_is_finished_by_sweep(tmp_path: Path) -> None:
    """Without RENAME_EXCHANGE a replace parks the old directory, then renames the new one in: a
    cut between the two leaves the target absent, both halves under staging names.  After the
    reboot, sweep moves the complete new one into place instead of removing both."""
    (tmp_path / "backing").mkdir()
    scenario = DURABLE[2]
    with mount(tmp_path / "backing", tmp_path / "mnt", without={"renameat2"}, power_loss=True) as mounted:
        absent = 0
        for journaled in CUTS:
            result = replay(mounted, scenario, journaled=journaled)
            TALLY.cuts += result.operations + 1
            for k in range(1, result.operations + 1):
                _reset(mounted.source, mounted, scenario)
                mounted.cut_after(k, journaled=journaled)
                with contextlib.suppress(Exception):
                    scenario.run(mounted.mountpoint)
                assert mounted.cut(journaled=journaled)
                absent += scenario.judge(mounted.source) == "lost"
                _after_reboot(mounted)
                outcome = scenario.judge(mounted.source)
                TALLY.torn += outcome not in ("old", "new")
                assert outcome in ("old", "new"), f"cut after operation {k}, then sweep: {outcome}"
                assert sorted(entry.name for entry in mounted.source.iterdir()) == ["ckpt"]
        # The window exists (the journaled cut lands in it), so the sweep had something to finish.
        assert absent > 0
