"""The contract of `CheckpointStore.save_async`, local, on memory:// and on S3 (moto).

The state is snapshotted before the call returns; one save is written at a time, published in
call order; ``latest`` and retention move only once the generation is published; a failed
background save raises on the next call to the store, at ``close`` and on leaving ``with``, and
is printed at interpreter exit; a process killed half way through one leaves ``latest`` on a
complete generation.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import IO, Any

import pytest

from atomicwrite import (
    CheckpointStore,
    CommitCallbackError,
    DirectoryCommitResult,
    KeepLatest,
    Serializer,
    SerializerNotFoundError,
    UsageError,
    sweep,
)
from tests._stores import moto_endpoint, s3_options
from tests.test_directory import BUCKET, Place, place, s3fs_instance

__all__ = ["moto_endpoint", "place", "s3fs_instance"]

ROOT = Path(__file__).resolve().parent.parent


class Gate:
    """A serializer whose ``dump`` (run by the store's worker) waits until ``opened`` is set: it
    holds a background save up, before the files after it in ``files`` are written."""

    def __init__(self, label: str = "gate", events: list[str] | None = None) -> None:
        self.label = label
        self.events = [] if events is None else events
        self.reached = threading.Event()
        self.opened = threading.Event()
        self.serializer = Serializer(f"gate-{label}", self._dump, snapshot=lambda obj: obj)

    def _dump(self, obj: Any, file: IO[Any]) -> None:
        self.events.append(f"{self.label} writing")
        self.reached.set()
        assert self.opened.wait(60)
        file.write(self.label.encode())
        self.events.append(f"{self.label} written")


def failing(message: str = "disk on fire") -> Serializer:
    """A serializer that fails in the worker (its snapshot is taken without trouble)."""

    def dump(obj: Any, file: IO[Any]) -> None:
        raise RuntimeError(message)

    return Serializer("failing", dump, snapshot=lambda obj: obj)


def store_at(place: Place, **options: Any) -> CheckpointStore:
    return CheckpointStore(place.url("run"), storage_options=place.options, **options)


def read(store: CheckpointStore, generation: str, name: str) -> bytes:
    with store.get(generation).open(name) as file:
        data: bytes = file.read()
    return data


def leftovers(place: Place) -> list[str]:
    """What lies under the store's root besides its generations and pointer."""
    if place.kind == "local":
        return sorted(e for e in os.listdir(place.url("run")) if not e.startswith("gen-") and e != "latest")
    place.fs.invalidate_cache()
    prefix = place.fs._strip_protocol(place.url("run"))
    return sorted(
        p[len(prefix) + 1 :]
        for p in place.fs.find(prefix)
        if not p[len(prefix) + 1 :].startswith("gen-0") and p[len(prefix) + 1 :] != "latest"
    )


# --- the snapshot --------------------------------------------------------------------------------


def test_plain_objects_are_snapshotted_before_save_async_returns(place: Place) -> None:
    gate = Gate()
    state: dict[str, Any] = {"step": 1, "history": [0.5, 0.4]}
    buffer = bytearray(b"weights-v1")
    text = "config v1"
    with store_at(place) as store:
        future = store.save_async(
            1,
            {"gate": None, "state.json": state, "state.pkl": state, "weights.bin": buffer, "config.txt": text},
            serializer={
                "gate": gate.serializer,
                "state.json": "json",
                "state.pkl": "pickle",
                "weights.bin": "bytes",
                "config.txt": "text",
            },
        )
        # The worker is inside the first file; nothing else of the save is written yet.
        assert gate.reached.wait(60)
        state["step"] = 2
        state["history"].append(0.3)
        buffer[:] = b"weights-v2-longer"
        gate.opened.set()
        result = future.result(timeout=60)
    assert result.durability == ("none" if place.kind == "memory" else "full")
    assert json.loads(read(store, "gen-00000001", "state.json")) == {"step": 1, "history": [0.5, 0.4]}
    assert pickle.loads(read(store, "gen-00000001", "state.pkl")) == {"step": 1, "history": [0.5, 0.4]}
    assert read(store, "gen-00000001", "weights.bin") == b"weights-v1"
    assert read(store, "gen-00000001", "config.txt") == b"config v1"
    assert store.verify("gen-00000001").ok
    assert store.pointer() == "gen-00000001"


def test_every_tensor_is_snapshotted_before_save_async_returns(place: Place) -> None:
    torch = pytest.importorskip("torch")
    from tests.test_async_contract import assert_equal_state, clone, tensors_of, trained

    model, optimizer = trained()
    weight = model[0].weight
    model_state: dict[str, Any] = {"model": model.state_dict(), "view": weight.detach()[1:, ::2]}
    optimizer_state = optimizer.state_dict()
    safetensors_state = {"bias": model[1].bias.detach(), "weight": model[1].weight.detach()}
    expected = clone({"model.pt": model_state, "optimizer.pt": optimizer_state, "head.safetensors": safetensors_state})
    gate = Gate()
    with store_at(place) as store:
        future = store.save_async(
            7,
            {
                "gate": None,
                "model.pt": model_state,
                "optimizer.pt": optimizer_state,
                "head.safetensors": safetensors_state,
            },
            serializer={
                "gate": gate.serializer,
                "model.pt": "torch",
                "optimizer.pt": "torch",
                "head.safetensors": "safetensors",
            },
            metrics={"loss": 0.25},
        )
        assert gate.reached.wait(60)
        # Training goes on before the worker writes a tensor: change every one in place.
        mutated = tensors_of([model_state, optimizer_state])
        assert len(mutated) >= 10  # 4 parameters, the view, the optimizer's state tensors
        with torch.no_grad():
            for tensor in mutated:
                tensor.add_(100)
        model_state["model"]["extra"] = torch.zeros(1)  # containers were copied too
        gate.opened.set()
        future.result(timeout=60)
    generation = store.latest()
    assert generation is not None
    assert generation.name == "gen-00000007"
    assert generation.metrics == {"loss": 0.25}
    loaded: dict[str, Any] = {}
    for name in ("model.pt", "optimizer.pt"):
        loaded[name] = torch.load(io.BytesIO(read(store, generation.name, name)), weights_only=True)
    from safetensors.torch import load as load_safetensors

    loaded["head.safetensors"] = load_safetensors(read(store, generation.name, "head.safetensors"))
    assert_equal_state(loaded, expected)
    # The view still shares its storage with the weight it came from, as torch.save records it.
    view, saved_weight = loaded["model.pt"]["view"], loaded["model.pt"]["model"]["0.weight"]
    assert view.untyped_storage().data_ptr() == saved_weight.untyped_storage().data_ptr()


def test_cuda_tensors_are_snapshotted_before_save_async_returns(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 8)).cuda()
    state = model.state_dict()
    expected = {name: tensor.detach().cpu().clone() for name, tensor in state.items()}
    store = CheckpointStore(tmp_path / "run")
    futures = []
    for step in (1, 2):
        gate = Gate()
        futures.append(
            store.save_async(
                step, {"gate": None, "model.pt": state}, serializer={"gate": gate.serializer, "model.pt": "torch"}
            )
        )
        # Queued on the same stream as the copies the snapshot made: runs after them.
        with torch.no_grad():
            for tensor in state.values():
                tensor.add_(100)
        gate.opened.set()
        futures[-1].result(timeout=60)
        for name, tensor in torch.load(io.BytesIO(read(store, f"gen-{step:08d}", "model.pt"))).items():
            assert torch.equal(tensor.cpu(), expected[name]), name
        expected = {name: tensor.detach().cpu().clone() for name, tensor in state.items()}
    store.close()


def test_a_torch_snapshot_is_written_once() -> None:
    torch = pytest.importorskip("torch")
    from atomicwrite.torch import serializer

    assert serializer.snapshot is not None
    snapshot = serializer.snapshot({"w": torch.ones(2)})
    serializer.dump(snapshot, io.BytesIO())
    with pytest.raises(UsageError, match="written already"):
        serializer.dump(snapshot, io.BytesIO())


# --- one at a time, in call order ----------------------------------------------------------------


def test_saves_are_written_one_at_a_time_and_published_in_call_order(place: Place) -> None:
    events: list[str] = []
    first, second = Gate("first", events), Gate("second", events)
    published: list[tuple[str, str | None]] = []

    def record(result: DirectoryCommitResult) -> None:
        published.append((result.target.rpartition("/")[2], store.pointer()))

    store = store_at(place, on_commit=record)
    futures = [
        store.save_async(None, {"a": None}, serializer=first.serializer),
        store.save_async(None, {"a": None}, serializer=second.serializer),
    ]
    assert first.reached.wait(60)
    assert not futures[1].done()
    assert store.pointer() is None
    second.opened.set()  # the second may go as soon as it is taken up: it is not, yet
    first.opened.set()
    store.wait()
    assert events == ["first writing", "first written", "second writing", "second written"]
    # Numbered in call order while both were pending, published and pointed to in that order.
    assert published == [("gen-00000001", "gen-00000001"), ("gen-00000002", "gen-00000002")]
    assert [f.result().target.rpartition("/")[2] for f in futures] == ["gen-00000001", "gen-00000002"]
    assert read(store, "gen-00000002", "a") == b"second"
    store.close()


def test_a_save_made_in_the_callers_thread_waits_for_the_background_ones(place: Place) -> None:
    gate = Gate()
    store = store_at(place)
    background = store.save_async(1, {"a": None}, serializer=gate.serializer)
    assert gate.reached.wait(60)
    threading.Timer(0.2, gate.opened.set).start()
    with store.save(2) as stage, stage.open("a") as file:
        assert background.done()  # begun only once the background save was published
        file.write(b"in the caller")
    assert store.pointer() == "gen-00000002"
    assert store.generations() == ["gen-00000001", "gen-00000002"]
    store.close()


def test_max_pending_bounds_the_snapshots_held(tmp_path: Path) -> None:
    gate = Gate()
    store = CheckpointStore(tmp_path / "run", max_pending=1)
    store.save_async(1, {"a": None}, serializer=gate.serializer)
    assert gate.reached.wait(60)
    returned = threading.Event()

    def second_save() -> None:
        store.save_async(2, {"a": b"two"}, serializer="bytes")
        returned.set()

    caller = threading.Thread(target=second_save)
    caller.start()
    caller.join(timeout=1)  # a bounded wait for a call that must not return yet
    assert caller.is_alive()  # blocked: the one slot is held by the first save
    assert not returned.is_set()
    gate.opened.set()
    caller.join(60)
    assert returned.is_set()
    store.close()
    assert store.generations() == ["gen-00000001", "gen-00000002"]
    with pytest.raises(UsageError, match="max_pending"):
        CheckpointStore(tmp_path / "run", max_pending=0)


# --- the pointer and retention move only after the generation is published ----------------------


def test_latest_and_retention_move_only_once_the_generation_is_published(
    place: Place, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_at(place, keep=KeepLatest(1))
    seen_at_pointer: list[tuple[str, bool]] = []
    seen_at_removal: list[tuple[str, str | None, bool]] = []
    point_to, remove = store._point_to, store._remove

    def watch_pointer(name: str) -> None:
        seen_at_pointer.append((name, store.verify(name).ok))
        point_to(name)

    def watch_removal(name: str) -> None:
        pointer = store.pointer()
        seen_at_removal.append((name, pointer, pointer is not None and store.verify(pointer).ok))
        remove(name)

    monkeypatch.setattr(store, "_point_to", watch_pointer)
    monkeypatch.setattr(store, "_remove", watch_removal)
    gate = Gate()
    first = store.save_async(1, {"a": b"one"}, serializer="bytes")
    second = store.save_async(2, {"gate": None, "a": b"two"}, serializer={"gate": gate.serializer, "a": "bytes"})
    assert gate.reached.wait(60)
    assert first.result(timeout=60).durability == ("none" if place.kind == "memory" else "full")
    # The second save is unpublished: its generation is not listed, latest stays on the first,
    # and nothing was pruned, although KeepLatest(1) keeps only one.
    assert store.pointer() == "gen-00000001"
    assert store.generations() == ["gen-00000001"]
    assert seen_at_removal == []
    gate.opened.set()
    second.result(timeout=60)
    store.wait()
    assert seen_at_pointer == [("gen-00000001", True), ("gen-00000002", True)]
    assert seen_at_removal == [("gen-00000001", "gen-00000002", True)]
    assert store.generations() == ["gen-00000002"]
    store.close()


def test_a_failed_background_save_moves_nothing(place: Place) -> None:
    store = store_at(place, keep_last=1)
    store.save_async(1, {"a": b"one"}, serializer="bytes").result(timeout=60)
    future = store.save_async(2, {"a": b"two", "b": None}, serializer={"a": "bytes", "b": failing()})
    with pytest.raises(RuntimeError, match="disk on fire"):
        future.result(timeout=60)
    with pytest.raises(RuntimeError, match="disk on fire"):
        store.wait()
    assert store.pointer() == "gen-00000001"
    assert store.generations() == ["gen-00000001"]
    assert read(store, "gen-00000001", "a") == b"one"
    assert leftovers(place) == []  # the failed save's staging area was removed
    store.close()


# --- a failure is never silent -------------------------------------------------------------------


def failed_store(place: Place) -> CheckpointStore:
    """A store whose only background save failed; nobody asked its future."""
    store = store_at(place)
    future = store.save_async(1, {"a": None}, serializer=failing())
    future.exception(timeout=60)  # finished (this does not collect the error from the store)
    return store


@pytest.mark.parametrize("call", ["save", "begin", "save_async", "wait", "close", "exit"])
def test_a_failed_background_save_raises_on_the_next_call(place: Place, call: str) -> None:
    store = failed_store(place)
    with pytest.raises(RuntimeError, match="disk on fire"):
        if call == "save":
            with store.save(2) as stage:
                stage.open("a").close()
        elif call == "begin":
            store.begin(2)
        elif call == "save_async":
            store.save_async(2, {"a": b"two"}, serializer="bytes")
        elif call == "wait":
            store.wait()
        elif call == "close":
            store.close()
        else:
            with store:
                pass
    assert store.generations() == []  # raised before anything of a next save was begun
    assert leftovers(place) == []
    store.wait()  # reported once
    store.close()


def test_a_failed_background_save_is_told_on_an_exception_leaving_the_with_block(place: Place) -> None:
    store = failed_store(place)
    with pytest.raises(KeyError) as caught, store:
        raise KeyError("training crashed")
    if sys.version_info >= (3, 11):
        assert any("disk on fire" in note for note in caught.value.__notes__)
    store.wait()  # told once


def test_a_failing_on_commit_is_reported_but_the_save_stands(place: Place) -> None:
    def explode(result: DirectoryCommitResult) -> None:
        raise ValueError("metrics sink down")

    store = store_at(place, on_commit=explode, keep_last=1)
    future = store.save_async(1, {"a": b"one"}, serializer="bytes")
    assert future.result(timeout=60).manifest.metadata["step"] == 1
    with pytest.raises(CommitCallbackError, match="was committed") as caught:
        store.wait()
    assert isinstance(caught.value.__cause__, ValueError)
    assert caught.value.result == future.result()
    assert store.pointer() == "gen-00000001"
    assert read(store, "gen-00000001", "a") == b"one"
    store.close()


def test_the_stores_worker_cannot_wait_for_itself(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "run")

    def save_again(result: DirectoryCommitResult) -> None:
        with store.save() as stage:
            stage.open("a").close()

    store.on_commit = save_again
    store.save_async(1, {"a": b"one"}, serializer="bytes").result(timeout=60)
    with pytest.raises(CommitCallbackError) as caught:
        store.close()
    assert isinstance(caught.value.__cause__, UsageError)
    assert "background-save thread" in str(caught.value.__cause__)
    assert store.generations() == ["gen-00000001"]


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=180,
        check=False,
    )


_FAILING_AT_EXIT = """
import gc, sys
from atomicwrite import CheckpointStore, Serializer

def dump(obj, file):
    raise RuntimeError("disk on fire")

store = CheckpointStore(sys.argv[1])
future = store.save_async(1, {"a": None}, serializer=Serializer("failing", dump, snapshot=lambda obj: obj))
if sys.argv[2] == "collect":
    try:
        store.wait()
    except RuntimeError:
        print("collected", flush=True)
else:
    del store, future  # dropped: its error is kept all the same
    gc.collect()
    print("returned", flush=True)
"""


def test_an_uncollected_failure_is_printed_at_interpreter_exit(tmp_path: Path) -> None:
    proc = run_python(_FAILING_AT_EXIT, str(tmp_path / "run"), "drop")
    assert proc.stdout.strip() == "returned"
    assert "a background save of" in proc.stderr
    assert "RuntimeError: disk on fire" in proc.stderr
    assert CheckpointStore(tmp_path / "run").generations() == []


def test_a_collected_failure_is_not_printed_again_at_exit(tmp_path: Path) -> None:
    proc = run_python(_FAILING_AT_EXIT, str(tmp_path / "run"), "collect")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "collected"
    assert "background save" not in proc.stderr


def test_a_process_that_exits_normally_finishes_its_background_saves(tmp_path: Path) -> None:
    proc = run_python(
        """
        import sys
        from atomicwrite import CheckpointStore

        store = CheckpointStore(sys.argv[1])
        store.save_async(1, {"a": b"x" * 1_000_000}, serializer="bytes")
        """,
        str(tmp_path / "run"),
    )
    assert proc.returncode == 0, proc.stderr
    store = CheckpointStore(tmp_path / "run")
    assert store.pointer() == "gen-00000001"
    assert store.verify().ok


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "serializer", "error", "match"),
    [
        ([("a", b"x")], "bytes", UsageError, "files must map"),
        ({"../a": b"x"}, "bytes", UsageError, "relative path"),
        ({"a": b"x", "b": b"y"}, {"a": "bytes"}, UsageError, "no serializer for 'b'"),
        ({"a/b": b"x", "a\\b": b"y"}, "bytes", UsageError, "same file"),
        ({"a": b"x"}, "no-such-format", SerializerNotFoundError, "no-such-format"),
        ({"a": "not bytes"}, "bytes", UsageError, "bytes-like"),
        ({"a": object()}, "json", TypeError, "not JSON serializable"),
    ],
)
def test_bad_input_is_refused_before_anything_is_queued(
    tmp_path: Path, files: Any, serializer: Any, error: type[Exception], match: str
) -> None:
    store = CheckpointStore(tmp_path / "run", max_pending=1)
    with pytest.raises(error, match=match):
        store.save_async(1, files, serializer=serializer)
    assert os.listdir(tmp_path / "run") == []  # no staging area, no generation
    # The refused call gave its slot back: a save still goes through.
    store.save_async(1, {"a": b"x"}, serializer="bytes").result(timeout=60)
    store.close()
    assert store.generations() == ["gen-00000001"]


def test_bad_metadata_and_a_step_in_progress_are_refused(tmp_path: Path) -> None:
    gate = Gate()
    store = CheckpointStore(tmp_path / "run")
    with pytest.raises(UsageError, match="finite number"):
        store.save_async(1, {"a": b"x"}, serializer="bytes", metrics={"loss": float("nan")})
    store.save_async(1, {"a": None}, serializer=gate.serializer)
    with pytest.raises(UsageError, match="still in progress"):
        store.save_async(1, {"a": b"again"}, serializer="bytes")
    gate.opened.set()
    store.close()
    assert store.generations() == ["gen-00000001"]
    assert read(store, "gen-00000001", "a") == b"gate"


# --- SIGKILL in the middle of a background save ---------------------------------------------------

_KILLED_SAVER = """
import json, sys, time
from atomicwrite import CheckpointStore, Serializer

root, options, progress = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]

def dump_then_hang(obj, file):
    # Half of the file is written, then the parent kills this process.
    file.write(obj[: len(obj) // 2])
    file.flush()
    with open(progress, "w") as f:
        f.write("half")
    time.sleep(600)

store = CheckpointStore(root, keep_last=1, storage_options=options)
store.save_async(1, {"model.bin": b"one" * 100_000, "meta.json": {"step": 1}},
                 serializer={"model.bin": "bytes", "meta.json": "json"}).result()
store.save_async(2, {"meta.json": {"step": 2}, "model.bin": b"two" * 100_000},
                 serializer={"model.bin": Serializer("hang", dump_then_hang, snapshot=bytes), "meta.json": "json"})
time.sleep(600)
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["local", "s3"])
def test_sigkill_during_a_background_save_leaves_latest_on_a_complete_generation(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "local":
        root, options = str(tmp_path / "run"), {}
    else:
        request.getfixturevalue("s3fs_instance")
        root, options = f"s3://{BUCKET}/{os.urandom(8).hex()}", s3_options(request.getfixturevalue("moto_endpoint"))
    progress = tmp_path / "progress"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_SAVER, root, json.dumps(options), str(progress)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while not progress.exists() or not progress.read_text():
            if proc.poll() is not None:
                raise AssertionError(f"the saver exited early: {proc.communicate()[1]}")
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    store = CheckpointStore(root, storage_options=options)
    assert store.pointer() == "gen-00000001"
    assert store.generations() == ["gen-00000001"]  # the half-written one is no generation
    latest = store.latest()
    assert latest is not None
    assert latest.name == "gen-00000001"
    assert store.verify("gen-00000001").ok
    assert read(store, "gen-00000001", "model.bin") == b"one" * 100_000
    assert json.loads(read(store, "gen-00000001", "meta.json")) == {"step": 1}
    # What the killed save left is recognised and swept; the store goes on from there.
    removed = sweep(root, older_than=0, storage_options=options)
    assert removed
    with store:
        store.save_async(2, {"model.bin": b"two"}, serializer="bytes")
    assert store.generations() == ["gen-00000001", "gen-00000002"]
    assert store.pointer() == "gen-00000002"
