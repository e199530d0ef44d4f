"""The contract of background saves (`AsyncSaver`, the Lightning async plugin).

The state is snapshotted before the call returns; saves are written one at a time, in order;
what is chained after a save (a pointer, a cleanup) runs only once it committed with its
durability, never after it failed; a failed save raises on the next call, at ``wait``,
``close``, ``__exit__`` and Lightning's ``teardown``, and is printed at interpreter exit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

import atomicwrite.torch as awt  # noqa: E402 - after the importorskip
from atomicwrite import CommitCallbackError, CommitResult, UsageError  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


class Gate:
    """Pickles (in the saver's worker) only once ``opened`` is set: holds a save up on purpose."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.reached = threading.Event()

    def __reduce__(self) -> Any:
        self.reached.set()
        assert self.opened.wait(60)
        return (dict, ())


class Unpicklable:
    def __reduce__(self) -> Any:
        raise RuntimeError("cannot pickle this")


def entries(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def trained() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()  # fills the optimizer state: step, exp_avg, exp_avg_sq per parameter
    return model, optimizer


def tensors_of(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [tensor for value in obj.values() for tensor in tensors_of(value)]
    if isinstance(obj, (list, tuple)):
        return [tensor for value in obj for tensor in tensors_of(value)]
    return []


def assert_equal_state(loaded: Any, expected: Any) -> None:
    if isinstance(expected, torch.Tensor):
        assert torch.equal(loaded, expected)
    elif isinstance(expected, dict):
        assert loaded.keys() == expected.keys()
        for key in expected:
            assert_equal_state(loaded[key], expected[key])
    elif isinstance(expected, (list, tuple)):
        assert len(loaded) == len(expected)
        for got, want in zip(loaded, expected, strict=True):
            assert_equal_state(got, want)
    elif type(expected).__module__ == "numpy":
        assert (loaded == expected).all()
    else:
        assert loaded == expected


def clone(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {key: clone(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(clone(value) for value in obj)
    if type(obj).__module__ == "numpy":
        return obj.copy()
    return obj


# --- the snapshot ------------------------------------------------------------------------------


def test_every_tensor_is_snapshotted_before_save_returns(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    model, optimizer = trained()
    weight = model[0].weight
    state: dict[str, Any] = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "view": weight.detach()[1:, ::2],  # a view of another tensor in the checkpoint
        "rng": np.arange(6),  # numpy state changed in place, as RNG states are
        "nested": [{"deep": (torch.arange(3.0),)}],
    }
    expected = clone(state)
    gate = Gate()
    saver = awt.AsyncSaver()
    future = saver.save({**state, "gate": gate}, tmp_path / "ckpt.pt")
    # Training goes on before the worker writes a byte: change every tensor in place.
    mutated = tensors_of(state)
    assert len(mutated) >= 12  # 4 parameters, 4x3 optimizer state tensors, the view, the nested one
    with torch.no_grad():
        for tensor in mutated:
            tensor.add_(100)
    state["rng"] += 100
    state["nested"][0]["extra"] = 1  # containers were copied: a new key is not saved either
    gate.opened.set()
    future.result(timeout=60)
    saver.close()
    loaded = awt.load(tmp_path / "ckpt.pt", weights_only=False)
    loaded.pop("gate")
    assert_equal_state(loaded, expected)
    # The view still shares its storage with the weight it came from, as torch.save records it.
    assert loaded["view"].untyped_storage().data_ptr() == loaded["model"]["0.weight"].untyped_storage().data_ptr()


# --- order, and what is chained after a save ---------------------------------------------------


def test_two_saves_of_one_target_commit_in_the_order_they_were_made(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    gate = Gate()
    committed: list[int] = []
    saver = awt.AsyncSaver(on_commit=lambda result: committed.append(awt.load(target, weights_only=False)["n"]))
    first = saver.save({"n": 1, "gate": gate}, target)
    second = saver.save({"n": 2}, target)
    assert gate.reached.wait(60)
    assert saver.pending == 2
    assert not second.done()  # at most one save in flight: the second waits for the first
    gate.opened.set()
    saver.wait()
    assert committed == [1, 2]
    assert first.result().version != second.result().version
    assert awt.load(target)["n"] == 2


def test_then_runs_only_once_the_save_before_it_committed_with_its_durability(tmp_path: Path) -> None:
    target = tmp_path / "step-2.pt"
    gate = Gate()
    committed: list[CommitResult] = []
    saver = awt.AsyncSaver(on_commit=committed.append)
    saving = saver.save({"n": 2, "gate": gate}, target)
    observed: list[Any] = []

    def move_pointer() -> str:
        # Only looks (never waits): what has happened by the time the action runs.
        observed.append((saving.done(), [result.durability for result in committed], awt.validate(target).valid))
        return "moved"

    pointer = saver.then(move_pointer)
    assert gate.reached.wait(60)
    assert not pointer.done()
    assert observed == []
    gate.opened.set()
    assert pointer.result(timeout=60) == "moved"
    assert observed == [(True, ["full"], True)]
    saver.close()


def test_then_never_runs_after_a_failed_save(tmp_path: Path) -> None:
    old = tmp_path / "step-1.pt"
    awt.save({"n": 1}, old)
    gate = Gate()
    saver = awt.AsyncSaver()
    failing = saver.save({"gate": gate, "bad": Unpicklable()}, tmp_path / "step-2.pt")
    cleanup = saver.then(old.unlink)  # would lose the only good checkpoint
    gate.opened.set()
    with pytest.raises(awt.DependencyFailedError) as caught:
        cleanup.result(timeout=60)
    assert isinstance(caught.value.__cause__, RuntimeError)
    with pytest.raises(RuntimeError):
        failing.result()
    assert entries(tmp_path) == ["step-1.pt"]
    with pytest.raises(RuntimeError, match="cannot pickle this"):
        saver.close()


def test_then_after_a_failed_save_that_was_not_reported_raises_instead_of_queueing(tmp_path: Path) -> None:
    old = tmp_path / "step-1.pt"
    awt.save({"n": 1}, old)
    saver = awt.AsyncSaver()
    failing = saver.save({"bad": Unpicklable()}, tmp_path / "step-2.pt")
    with pytest.raises(RuntimeError):
        failing.result(timeout=60)
    with pytest.raises(RuntimeError, match="cannot pickle this"):
        saver.then(old.unlink)
    saver.close()
    assert entries(tmp_path) == ["step-1.pt"]


# --- a failure is never silent -------------------------------------------------------------------


def failed_saver(tmp_path: Path) -> awt.AsyncSaver:
    """A saver whose only save failed, once it has finished; nobody asked its future."""
    saver = awt.AsyncSaver()
    gate = Gate()
    saver.save({"gate": gate, "bad": Unpicklable()}, tmp_path / "bad.pt")
    done = saver.then(lambda: None)  # queued behind the save: done means the save has finished
    gate.opened.set()
    with pytest.raises(awt.DependencyFailedError):
        done.result(timeout=60)
    return saver


@pytest.mark.parametrize("call", ["save", "wait", "close", "exit"])
def test_a_failed_save_raises_on_the_next_call(tmp_path: Path, call: str) -> None:
    saver = failed_saver(tmp_path)
    with pytest.raises(RuntimeError, match="cannot pickle this"):
        if call == "save":
            saver.save({"n": 2}, tmp_path / "next.pt")
        elif call == "wait":
            saver.wait()
        elif call == "close":
            saver.close()
        else:
            with saver:
                pass
    assert "bad.pt" not in entries(tmp_path)
    if call == "save":
        assert "next.pt" not in entries(tmp_path)  # raised before anything was queued
    saver.wait()  # reported once


def test_a_failed_save_is_told_on_an_exception_leaving_the_with_block(tmp_path: Path) -> None:
    saver = failed_saver(tmp_path)
    with pytest.raises(KeyError) as caught, saver:
        raise KeyError("training crashed")
    notes = getattr(caught.value, "__notes__", [])
    if sys.version_info >= (3, 11):
        assert any("cannot pickle this" in note for note in notes)
    with pytest.raises(UsageError, match="closed"):
        saver.save({"n": 1}, tmp_path / "x.pt")


def test_a_failing_on_commit_is_reported_but_the_save_stands(tmp_path: Path) -> None:
    def explode(result: CommitResult) -> None:
        raise ValueError("metrics sink down")

    saver = awt.AsyncSaver(on_commit=explode)
    gate = Gate()
    future = saver.save({"n": 1, "gate": gate}, tmp_path / "a.pt")
    after = saver.then(lambda: "ran")
    gate.opened.set()
    assert future.result(timeout=60).bytes_written > 0  # the checkpoint is committed
    assert after.result(timeout=60) == "ran"  # and what was chained after it went on
    with pytest.raises(CommitCallbackError, match="was committed") as caught:
        saver.wait()
    assert isinstance(caught.value.__cause__, ValueError)
    assert awt.load(tmp_path / "a.pt", weights_only=False)["n"] == 1
    saver.close()


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )


def test_an_uncollected_failure_is_printed_at_interpreter_exit(tmp_path: Path) -> None:
    proc = run_python(
        """
        import sys
        import atomicwrite.torch as awt

        class Unpicklable:
            def __reduce__(self):
                raise RuntimeError("cannot pickle this")

        awt.save({"bad": Unpicklable()}, sys.argv[1], background=True)
        print("returned", flush=True)
        """,
        str(tmp_path / "bad.pt"),
    )
    assert proc.stdout.strip() == "returned"
    assert "a background checkpoint save failed" in proc.stderr
    assert "RuntimeError: cannot pickle this" in proc.stderr
    assert entries(tmp_path) == []


def test_a_collected_failure_is_not_printed_again_at_exit(tmp_path: Path) -> None:
    proc = run_python(
        """
        import sys
        import atomicwrite.torch as awt

        class Unpicklable:
            def __reduce__(self):
                raise RuntimeError("cannot pickle this")

        awt.save({"bad": Unpicklable()}, sys.argv[1], background=True)
        try:
            awt._default_saver().wait()
        except RuntimeError:
            print("collected", flush=True)
        """,
        str(tmp_path / "bad.pt"),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "collected"
    assert "background checkpoint save failed" not in proc.stderr


# --- the Lightning async plugin ------------------------------------------------------------------


@pytest.fixture
def plugin() -> Any:
    pytest.importorskip("lightning")
    from atomicwrite.lightning import classes_for

    return classes_for("lightning").async_checkpoint_io


def test_lightning_async_plugin_snapshots_before_save_checkpoint_returns(plugin: Any, tmp_path: Path) -> None:
    model, optimizer = trained()
    checkpoint = {"state_dict": model.state_dict(), "optimizer_states": [optimizer.state_dict()]}
    expected = clone(checkpoint)
    gate = Gate()
    io = plugin()
    io.save_checkpoint({**checkpoint, "gate": gate}, tmp_path / "epoch1.ckpt")
    with torch.no_grad():
        for tensor in tensors_of(checkpoint):
            tensor.add_(100)
    gate.opened.set()
    io.teardown()
    loaded = io.load_checkpoint(tmp_path / "epoch1.ckpt", weights_only=False)
    loaded.pop("gate")
    assert_equal_state(loaded, expected)


def test_lightning_async_plugin_teardown_raises_a_failed_save(plugin: Any, tmp_path: Path) -> None:
    io = plugin()
    io.save_checkpoint({"bad": Unpicklable()}, tmp_path / "epoch1.ckpt")
    with pytest.raises(RuntimeError, match="cannot pickle this"):
        io.teardown()
    io.teardown()  # reported once
    assert entries(tmp_path) == []


def test_lightning_plugins_tell_on_commit(plugin: Any, tmp_path: Path) -> None:
    from atomicwrite.lightning import classes_for

    seen: list[tuple[str, str]] = []

    def record(result: CommitResult) -> None:
        seen.append((os.path.basename(result.target), threading.current_thread().name))

    classes_for("lightning").checkpoint_io(on_commit=record).save_checkpoint({"n": 1}, tmp_path / "sync.ckpt")
    io = plugin(on_commit=record)
    io.save_checkpoint({"n": 2}, tmp_path / "async.ckpt")
    io.teardown()
    assert seen == [("sync.ckpt", threading.current_thread().name), ("async.ckpt", "atomicwrite-saver")]
