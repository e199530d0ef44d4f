"""CheckpointStore retention policies, generation metadata, pins, find and latest_valid:
local, memory:// and S3 (moto)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from atomicwrite import (
    AtomicWriteError,
    CheckpointStore,
    DirectoryManifest,
    FileEntry,
    GenerationInfo,
    KeepBest,
    KeepEvery,
    KeepLatest,
    RetentionPolicy,
    TargetNotFoundError,
    UsageError,
    sweep,
)
from atomicwrite._directories.generations import PINS_NAME
from atomicwrite._directories.manifest import MANIFEST_NAME
from tests._dirworkers import content, write_version
from tests._stores import moto_endpoint
from tests.test_directory import Place, place, s3fs_instance

__all__ = ["moto_endpoint", "place", "s3fs_instance"]

ROOT = Path(__file__).resolve().parent.parent


def _save(store: CheckpointStore, step: int, **metadata: Any) -> None:
    with store.save(step, **metadata) as stage:
        write_version(stage, step)


def _infos(*specs: tuple[int, float | None, dict[str, float]]) -> list[GenerationInfo]:
    return [GenerationInfo(f"g{step}", step, timestamp, metrics) for step, timestamp, metrics in specs]


def _file_url(place: Place, store: CheckpointStore, name: str, file: str) -> str:
    """Where a generation's file lies (inside its manifest's generation prefix on a store)."""
    generation = store.get(name)
    return generation.path(file) if place.kind == "local" else place.fs._strip_protocol(generation.path(file))


def _manifest_path(place: Place, name: str) -> str:
    if place.kind == "local":
        return os.path.join(place.url("run"), name, MANIFEST_NAME)
    return str(place.fs._strip_protocol(f"{place.url('run')}/{name}/{MANIFEST_NAME}"))


def _overwrite(place: Place, path: str, data: bytes) -> None:
    if place.kind == "local":
        Path(path).write_bytes(data)
    else:
        place.fs.pipe_file(path, data)


def _read(place: Place, path: str) -> bytes:
    if place.kind == "local":
        return Path(path).read_bytes()
    data: bytes = place.fs.cat_file(path)
    return data


# --- the policies on their own -----------------------------------------------------------------


def test_keep_latest_keeps_the_newest_by_step() -> None:
    infos = _infos((3, 1.0, {}), (1, 2.0, {}), (2, 3.0, {}))
    assert KeepLatest(2).select(infos) == {"g2", "g3"}
    assert KeepLatest(5).select(infos) == {"g1", "g2", "g3"}


def test_keep_every_steps_keeps_multiples() -> None:
    infos = _infos(*[(step, None, {}) for step in range(0, 301, 50)])
    assert KeepEvery(steps=100).select(infos) == {"g0", "g100", "g200", "g300"}


def test_keep_every_seconds_keeps_the_first_of_each_window() -> None:
    # Windows of 10 s from the epoch: [0, 10) holds 3 and 4, [10, 20) holds 12, [20, 30) none,
    # [30, 40) holds 31 and 39; a generation without a timestamp is in no window.
    infos = _infos((1, 4.0, {}), (2, 3.0, {}), (3, 12.0, {}), (4, 31.0, {}), (5, 39.0, {}), (6, None, {}))
    assert KeepEvery(seconds=10).select(infos) == {"g2", "g3", "g4"}


def test_keep_best_ranks_by_the_metric_and_skips_generations_without_it() -> None:
    infos = _infos((1, None, {"loss": 0.5}), (2, None, {"loss": 0.2}), (3, None, {}), (4, None, {"loss": 0.2}))
    assert KeepBest(1, "loss").select(infos) == {"g2"}  # of equal values the older
    assert KeepBest(2, "loss", mode="min").select(infos) == {"g2", "g4"}
    assert KeepBest(1, "loss", mode="max").select(infos) == {"g1"}
    assert not KeepBest(1, "loss").judges(infos[2])
    assert KeepBest(1, "loss").judges(infos[0])


@pytest.mark.parametrize(
    "make",
    [
        lambda: KeepLatest(0),
        lambda: KeepLatest(True),
        lambda: KeepEvery(),
        lambda: KeepEvery(steps=10, seconds=5),
        lambda: KeepEvery(steps=-1),
        lambda: KeepEvery(seconds=0),
        lambda: KeepEvery(seconds=float("inf")),
        lambda: KeepBest(0, "loss"),
        lambda: KeepBest(1, ""),
        lambda: KeepBest(1, "loss", mode="lowest"),  # type: ignore[arg-type]
    ],
)
def test_bad_policies_are_refused(make: Any) -> None:
    with pytest.raises(UsageError):
        make()


def test_the_policies_are_retention_policies() -> None:
    for policy in (KeepLatest(1), KeepEvery(steps=2), KeepBest(1, "loss")):
        assert isinstance(policy, RetentionPolicy)
    with pytest.raises(UsageError, match="retention policies"):
        CheckpointStore("unused", keep=[3])  # type: ignore[list-item]


# --- metadata in the manifest ----------------------------------------------------------------


def test_manifests_without_metadata_stay_readable_and_unchanged() -> None:
    old = {
        "format": "atomicwrite-directory/1",
        "generation": "g",
        "created": 12.5,
        "files": [{"name": "a", "size": 1, "sha256": None}],
    }
    manifest = DirectoryManifest.from_json(json.dumps(old).encode())
    assert manifest.metadata == {}
    assert json.loads(manifest.to_json()) == old  # no metadata key is added
    newer = {**old, "metadata": {"step": 3}, "written_by": "a later version"}
    assert DirectoryManifest.from_json(json.dumps(newer).encode()).metadata == {"step": 3}
    with pytest.raises(ValueError, match="metadata"):
        DirectoryManifest.from_json(json.dumps({**old, "metadata": [1]}).encode())
    built = DirectoryManifest("g", (FileEntry("a", 1, None),), 1.0)
    assert "metadata" not in json.loads(built.to_json())


def test_save_records_step_timestamp_metrics_and_tags(place: Place) -> None:
    store = CheckpointStore(place.url("run"), storage_options=place.options)
    before = time.time()
    _save(store, 7, metrics={"loss": 0.25, "accuracy": 1}, tags={"phase": "warmup"})
    after = time.time()
    _save(store, 8)
    seven = store.get("gen-00000007")
    assert (seven.step, seven.metrics, seven.tags) == (7, {"loss": 0.25, "accuracy": 1}, {"phase": "warmup"})
    assert before <= seven.timestamp <= after
    assert seven.directory.manifest.metadata["step"] == 7
    eight = store.get("gen-00000008")
    assert (eight.metrics, eight.tags) == ({}, {})
    assert store.verify("gen-00000007").ok


@pytest.mark.parametrize(
    "metadata",
    [
        {"metrics": {"loss": float("nan")}},
        {"metrics": {"loss": "low"}},
        {"metrics": {"": 1.0}},
        {"metrics": [("loss", 1.0)]},
        {"tags": {"a": 1}},
    ],
)
def test_bad_metadata_is_refused_before_anything_is_written(tmp_path: Path, metadata: dict[str, Any]) -> None:
    store = CheckpointStore(tmp_path / "run", keep_last=1)
    _save(store, 1)
    with pytest.raises(UsageError), store.save(2, **metadata) as stage:
        write_version(stage, 2)
    assert store.generations() == ["gen-00000001"]
    assert store.pointer() == "gen-00000001"
    assert sorted(os.listdir(tmp_path / "run")) == ["gen-00000001", "latest"]


# --- composed retention --------------------------------------------------------------------


def test_composed_policies_keep_what_any_policy_keeps(place: Place) -> None:
    store = CheckpointStore(
        place.url("run"),
        keep=[KeepLatest(2), KeepEvery(steps=5), KeepBest(1, "loss", mode="min")],
        storage_options=place.options,
    )
    losses = {1: 0.9, 2: 0.8, 3: 0.1, 4: 0.7, 5: 0.6, 6: 0.5, 7: 0.4, 8: 0.3, 9: 0.35, 10: 0.2, 11: 0.15, 12: 0.12}
    for step, loss in losses.items():
        _save(store, step, metrics={"loss": loss})
    # latest two (11, 12), multiples of 5 (5, 10), the best loss (3)
    assert store.generations() == [f"gen-{n:08d}" for n in (3, 5, 10, 11, 12)]
    for name in store.generations():
        assert store.verify(name).ok
    store.close()


def test_keep_last_is_keep_latest(place: Place) -> None:
    short = CheckpointStore(place.url("short"), keep_last=2, storage_options=place.options)
    spelled = CheckpointStore(place.url("spelled"), keep=KeepLatest(2), storage_options=place.options)
    for step in range(1, 5):
        _save(short, step)
        _save(spelled, step)
    assert short.generations() == spelled.generations() == ["gen-00000003", "gen-00000004"]
    assert short.policies == spelled.policies == (KeepLatest(2),)


def test_keep_best_alone_keeps_generations_without_the_metric(place: Place) -> None:
    store = CheckpointStore(place.url("run"), keep=KeepBest(1, "loss"), storage_options=place.options)
    _save(store, 1, metrics={"loss": 0.5})
    _save(store, 2)
    _save(store, 3, metrics={"loss": 0.4})
    _save(store, 4, metrics={"loss": 0.6})
    # 1 is beaten by 3; 2 has no loss, so KeepBest has no say about it
    assert store.generations() == ["gen-00000002", "gen-00000003", "gen-00000004"]


def test_keep_every_seconds_on_a_store(place: Place) -> None:
    # One window of ~31 years: only the first save of it is kept, besides latest.
    store = CheckpointStore(place.url("run"), keep=KeepEvery(seconds=10**9), storage_options=place.options)
    for step in range(1, 5):
        _save(store, step)
    assert store.generations() == ["gen-00000001", "gen-00000004"]


# --- the invariants ------------------------------------------------------------------------


def test_the_resumed_generation_is_never_removed(place: Place) -> None:
    first = CheckpointStore(place.url("run"), storage_options=place.options)
    for step in (1, 2, 3):
        _save(first, step)
    resumed = CheckpointStore(place.url("run"), keep_last=1, storage_options=place.options)
    assert resumed.resumed_from is None
    generation = resumed.find(step=2)
    assert generation is not None
    assert resumed.resumed_from == "gen-00000002"
    _save(resumed, 4)
    _save(resumed, 5)
    assert resumed.generations() == ["gen-00000002", "gen-00000005"]
    with generation.open("model.bin") as file:
        assert file.read() == content(2, "model.bin")
    resumed.latest()  # the process now reads 5: 2 is free to go, 5 is held instead
    assert resumed.resumed_from == "gen-00000005"
    _save(resumed, 6)
    assert resumed.generations() == ["gen-00000005", "gen-00000006"]


def test_pins_survive_a_restart_until_unpinned(place: Place) -> None:
    store = CheckpointStore(place.url("run"), keep_last=1, storage_options=place.options)
    _save(store, 1)
    store.pin("gen-00000001")
    store.pin("gen-00000001")
    with pytest.raises(TargetNotFoundError):
        store.pin("gen-00000099")
    with pytest.raises(UsageError):
        store.pin("latest")
    _save(store, 2)
    _save(store, 3)
    restarted = CheckpointStore(place.url("run"), keep_last=1, storage_options=place.options)
    assert restarted.pinned() == ["gen-00000001"]
    _save(restarted, 4)
    assert restarted.generations() == ["gen-00000001", "gen-00000004"]
    restarted.unpin("gen-00000001")
    restarted.unpin("gen-00000001")
    assert restarted.pinned() == []
    _save(restarted, 5)
    assert restarted.generations() == ["gen-00000005"]


def test_a_damaged_pin_file_stops_retention(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "run", keep_last=1)
    _save(store, 1)
    store.pin("gen-00000001")
    (tmp_path / "run" / PINS_NAME).write_text("{not json")
    with pytest.raises(AtomicWriteError, match="damaged"):
        _save(store, 2)
    assert store.generations() == ["gen-00000001", "gen-00000002"]
    assert store.pointer() == "gen-00000002"


def test_nothing_is_removed_when_the_pointer_move_fails(place: Place, monkeypatch: pytest.MonkeyPatch) -> None:
    unpruned = CheckpointStore(place.url("run"), storage_options=place.options)
    _save(unpruned, 1)
    _save(unpruned, 2)
    store = CheckpointStore(place.url("run"), keep_last=1, storage_options=place.options)

    def fail(name: str) -> None:
        raise OSError(5, "the pointer could not be written")

    monkeypatch.setattr(store, "_point_to", fail)
    with pytest.raises(OSError, match="pointer"):
        _save(store, 3)
    assert store.generations() == ["gen-00000001", "gen-00000002", "gen-00000003"]
    assert store.pointer() == "gen-00000002"
    monkeypatch.undo()
    assert store.prune() == ["gen-00000001"]  # 3 is newer than latest: a save that did not finish
    assert store.generations() == ["gen-00000002", "gen-00000003"]
    _save(store, 4)
    assert store.generations() == ["gen-00000004"]


def test_nothing_is_removed_while_a_save_is_open(place: Place) -> None:
    unpruned = CheckpointStore(place.url("run"), storage_options=place.options)
    _save(unpruned, 1)
    _save(unpruned, 2)
    store = CheckpointStore(place.url("run"), keep_last=1, storage_options=place.options)
    with store.save(3) as stage:
        write_version(stage, 3)
        assert store.prune() == []
        assert store.generations() == ["gen-00000001", "gen-00000002"]
    assert store.generations() == ["gen-00000003"]
    _save(unpruned, 4)
    transaction = store.begin(5)
    assert store.prune() == []
    assert store.generations() == ["gen-00000003", "gen-00000004"]
    transaction.discard()
    assert store.prune() == ["gen-00000003"]  # no longer held back


def test_an_object_store_save_does_not_wait_for_a_slow_delete(place: Place, monkeypatch: pytest.MonkeyPatch) -> None:
    if place.kind == "local":
        pytest.skip("a local generation is renamed out of sight and deleted in place")
    store = CheckpointStore(place.url("run"), keep_last=1, storage_options=place.options)
    fs = store._fs
    deleting, release = threading.Event(), threading.Event()
    real_rm = fs.rm

    def slow_rm(paths: Any, *args: Any, **kwargs: Any) -> Any:
        if any("/gen-00000001/" in str(p) for p in (paths if isinstance(paths, list) else [paths])):
            deleting.set()
            assert release.wait(120), "never released"
        return real_rm(paths, *args, **kwargs)

    monkeypatch.setattr(fs, "rm", slow_rm)
    _save(store, 1)
    _save(store, 2)  # returns while generation 1's objects are still being deleted
    assert deleting.wait(120)
    assert store.generations() == ["gen-00000002"]  # out of the listing at once
    prefix = place.fs._strip_protocol(place.url("run/gen-00000001"))
    place.fs.invalidate_cache()
    assert place.fs.find(prefix)  # its objects are still there
    _save(store, 3)  # another save does not wait either
    assert store.latest() is not None
    assert not release.is_set()
    release.set()
    store.close()
    place.fs.invalidate_cache()
    assert place.fs.find(prefix) == []
    assert store.generations() == ["gen-00000003"]
    with CheckpointStore(place.url("run"), keep_last=1, storage_options=place.options) as again:
        _save(again, 4)
    place.fs.invalidate_cache()
    assert place.fs.find(place.fs._strip_protocol(place.url("run/gen-00000003"))) == []


# --- find and latest_valid -----------------------------------------------------------------


def test_find_by_step_best_metric_and_tags(place: Place) -> None:
    store = CheckpointStore(place.url("run"), storage_options=place.options)
    _save(store, 1, metrics={"loss": 0.5, "accuracy": 0.7}, tags={"split": "a"})
    _save(store, 2, metrics={"loss": 0.3, "accuracy": 0.6}, tags={"split": "b"})
    _save(store, 3, metrics={"loss": 0.4, "accuracy": 0.9}, tags={"split": "a"})
    _save(store, 4)

    def name(generation: Any) -> str | None:
        return None if generation is None else generation.name

    assert name(store.find(step=3)) == "gen-00000003"
    assert name(store.find(step=9)) is None
    assert name(store.find(best="loss")) == "gen-00000002"
    assert name(store.find(best="accuracy", mode="max")) == "gen-00000003"
    assert name(store.find(best="loss", tags={"split": "a"})) == "gen-00000003"
    assert name(store.find(tags={"split": "a"})) == "gen-00000003"  # the newest of those that match
    assert name(store.find()) == "gen-00000004"
    assert name(store.find(best="perplexity")) is None
    assert store.resumed_from == "gen-00000004"
    with pytest.raises(UsageError):
        store.find(step=-1)
    with pytest.raises(UsageError):
        store.find(best="loss", mode="lowest")  # type: ignore[arg-type]
    # the best one damaged: the next best that verifies
    _overwrite(place, _file_url(place, store, "gen-00000002", "model.bin"), b"bit rot")
    assert name(store.find(best="loss")) == "gen-00000003"


def test_latest_valid_skips_a_corrupt_and_a_torn_generation(place: Place) -> None:
    store = CheckpointStore(place.url("run"), storage_options=place.options)
    for step in (1, 2, 3):
        _save(store, step)
    newest = store.latest_valid()
    assert newest is not None
    assert newest.name == "gen-00000003"
    _overwrite(place, _file_url(place, store, "gen-00000003", "optim.bin"), b"flipped bits")
    newest = store.latest_valid()
    assert newest is not None
    assert newest.name == "gen-00000002"
    assert store.resumed_from == "gen-00000002"
    manifest = _manifest_path(place, "gen-00000002")
    whole = _read(place, manifest)
    _overwrite(place, manifest, whole[: len(whole) // 2])
    newest = store.latest_valid()
    assert newest is not None
    assert newest.name == "gen-00000001"
    with newest.open("model.bin") as file:
        assert file.read() == content(1, "model.bin")
    # a fresh save is found first again
    _save(store, 4)
    newest = store.latest_valid()
    assert newest is not None
    assert newest.name == "gen-00000004"


def test_retention_survives_torn_generations(place: Place) -> None:
    store = CheckpointStore(place.url("run"), keep=[KeepLatest(1), KeepBest(1, "loss")], storage_options=place.options)
    _save(store, 1, metrics={"loss": 0.1})
    _save(store, 2, metrics={"loss": 0.2})
    _overwrite(place, _manifest_path(place, "gen-00000001"), b"{")
    _save(store, 3, metrics={"loss": 0.3})
    # 1's manifest is torn: its loss is unknown, so 2 is now the best
    assert store.generations() == ["gen-00000002", "gen-00000003"]


# --- SIGKILL during a prune ----------------------------------------------------------------

_PRUNER = """
import os, shutil, sys, time
from atomicwrite import CheckpointStore, KeepBest, KeepLatest

root, progress = sys.argv[1], sys.argv[2]
real_rmtree = shutil.rmtree
calls = []

def rmtree(path, *args, **kwargs):
    calls.append(path)
    if len(calls) < 3:
        return real_rmtree(path, *args, **kwargs)
    # The third removal: half of its files gone, then the parent kills this process.
    for directory, _, files in os.walk(path):
        for name in sorted(files)[: max(1, len(files) // 2)]:
            os.unlink(os.path.join(directory, name))
    with open(progress, "w") as f:
        f.write(str(len(calls)))
    time.sleep(600)

shutil.rmtree = rmtree
store = CheckpointStore(root, keep=[KeepLatest(2), KeepBest(1, "loss")])
store.get("gen-00000003")  # resumed from
store.prune()
"""


@pytest.mark.slow
def test_sigkill_during_prune_keeps_latest_and_everything_kept(tmp_path: Path) -> None:
    root = tmp_path / "run"
    store = CheckpointStore(root)
    losses = {1: 0.9, 2: 0.1, 3: 0.8, 4: 0.7, 5: 0.6, 6: 0.5, 7: 0.4, 8: 0.3, 9: 0.35, 10: 0.45}
    for step, loss in losses.items():
        _save(store, step, metrics={"loss": loss})
    store.pin("gen-00000005")
    progress = tmp_path / "progress"
    proc = subprocess.Popen(
        [sys.executable, "-c", _PRUNER, str(root), str(progress)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while not progress.exists():
            if proc.poll() is not None:
                raise AssertionError(f"the pruner exited early: {proc.communicate()[1]}")
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    kept = {"gen-00000002", "gen-00000003", "gen-00000005", "gen-00000009", "gen-00000010"}
    # 1 and 4 were removed, 6 was half-removed out of sight, 7 and 8 were not reached
    assert store.generations() == sorted(kept | {"gen-00000007", "gen-00000008"})
    for name in store.generations():
        assert store.verify(name).ok, name
    latest = store.latest()
    assert latest is not None
    assert latest.name == "gen-00000010"
    with latest.open("model.bin") as file:
        assert file.read() == content(10, "model.bin")
    leftovers = [entry for entry in os.listdir(root) if entry.startswith(".gen-")]
    assert len(leftovers) == 1
    removed = sweep(root)
    assert [os.path.basename(path) for path in removed] == leftovers
    assert not [entry for entry in os.listdir(root) if entry.startswith(".gen-")]
    survivor = CheckpointStore(root, keep=[KeepLatest(2), KeepBest(1, "loss")])
    survivor.get("gen-00000003")
    assert survivor.prune() == ["gen-00000007", "gen-00000008"]
    assert set(survivor.generations()) == kept


# --- SIGKILL during a background delete on an object store -------------------------------------

_STORE_PRUNER = """
import json, os, sys, time
import atomicwrite._directories.generations as generations
from atomicwrite import CheckpointStore
from tests._dirworkers import write_version

root, options, progress = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
real_remove_prefix = generations.remove_prefix

def remove_prefix(fs, prefix):
    # The retired generation's manifest is already gone: delete half of its objects, then the
    # parent kills this process.
    objects = sorted(fs.find(prefix))
    fs.rm(objects[: len(objects) // 2])
    with open(progress, "w") as f:
        f.write(json.dumps(objects))
    time.sleep(600)

generations.remove_prefix = remove_prefix
store = CheckpointStore(root, keep_last=1, storage_options=options)
for step in (1, 2):
    with store.save(step) as stage:
        write_version(stage, step)
time.sleep(600)
"""


@pytest.mark.slow
def test_sweep_finishes_a_background_delete_killed_half_way(
    moto_endpoint: str, s3fs_instance: Any, tmp_path: Path
) -> None:
    from tests._stores import s3_options
    from tests.test_directory import BUCKET

    options = s3_options(moto_endpoint)
    root = f"s3://{BUCKET}/{os.urandom(8).hex()}"
    progress = tmp_path / "progress"
    proc = subprocess.Popen(
        [sys.executable, "-c", _STORE_PRUNER, root, json.dumps(options), str(progress)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while not progress.exists() or not progress.read_text():
            if proc.poll() is not None:
                raise AssertionError(f"the pruner exited early: {proc.communicate()[1]}")
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    retired = json.loads(progress.read_text())
    fs = s3fs_instance
    bare = fs._strip_protocol(root)
    store = CheckpointStore(root, storage_options=options)
    assert store.generations() == ["gen-00000002"]
    fs.invalidate_cache()
    left = sorted(fs.find(f"{bare}/gen-00000001"))
    assert left == retired[len(retired) // 2 :]
    assert left

    # A save of a live writer under the same root is not touched by the sweep.
    transaction = store.begin(3)
    with transaction.staging.open("model.bin") as file:
        file.write(b"in flight")
    removed = sweep(root, older_than=0, storage_options=options)
    fs.invalidate_cache()
    assert not fs.find(f"{bare}/gen-00000001")
    assert removed
    assert all(path.startswith(f"{root}/gen-00000001/") for path in removed)
    assert fs.find(f"{bare}/gen-00000003")  # the open save's objects are still there
    transaction.discard()
    latest = store.latest()
    assert latest is not None
    assert latest.name == "gen-00000002"
    assert store.verify("gen-00000002").ok
