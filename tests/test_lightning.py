"""atomicwrite.lightning: the CheckpointIO plugins, the atomic last link, and crashes mid-save.

Trainer runs are tiny (a linear model, 16 samples, CPU) with logging, progress bars and model
summaries off.  Crash tests run training in a subprocess (tests/_lightning_workers.py) and
SIGKILL it while it writes a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lightning")

import atomicwrite.torch as awt  # noqa: E402 - after the importorskip
from atomicwrite import sweep  # noqa: E402
from atomicwrite._names import parse_temp_name  # noqa: E402
from atomicwrite.lightning import classes_for, link_atomically  # noqa: E402

from ._lightning_workers import QUIET, loaders, make_model, namespace_modules  # noqa: E402
from ._stores import moto_endpoint, s3_options  # noqa: E402, F401 - the fixture

MiB = 1 << 20
REPO = Path(__file__).resolve().parent.parent
NAMESPACES = ["lightning", "pytorch_lightning"]


class Unpicklable:
    """An object whose pickling raises, as a half-built module or an open handle would."""

    def __reduce__(self) -> Any:
        raise RuntimeError("cannot pickle this")


class SlowToPickle:
    """Pickles (in the saver's worker) only after ``seconds``: a save that takes a while."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __reduce__(self) -> Any:
        time.sleep(self.seconds)
        return (dict, ())


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def checkpoint_files(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.endswith(".ckpt"))


def temps(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if parse_temp_name(name) is not None)


def fit(
    namespace: str,
    directory: Path,
    *,
    io: str = "atomic",
    save_last: Any = True,
    epochs: int = 3,
    resume: bool = False,
    stock_checkpoint: bool = False,
) -> tuple[Any, Any]:
    """Fit the tiny model in this process; returns the trainer and its ModelCheckpoint."""
    pl = namespace_modules(namespace)
    classes = classes_for(namespace)  # type: ignore[arg-type]
    plugins: list[Any] = []
    if io == "atomic":
        plugins.append(classes.checkpoint_io())
    elif io == "atomic-async":
        plugins.append(classes.async_checkpoint_io())
    callback_class = pl.callbacks.ModelCheckpoint if stock_checkpoint else classes.model_checkpoint
    checkpoint = callback_class(
        dirpath=directory,
        filename="epoch{epoch:02d}",
        auto_insert_metric_name=False,
        monitor="val_loss",
        save_top_k=2,
        save_last=save_last,
    )
    trainer = pl.Trainer(
        max_epochs=epochs, callbacks=[checkpoint], plugins=plugins, default_root_dir=directory, **QUIET
    )
    train_loader, val_loader = loaders()
    trainer.fit(make_model(pl), train_loader, val_loader, ckpt_path="last" if resume else None)
    return trainer, checkpoint


# --- Trainer.fit with the plugins -------------------------------------------------------------


@pytest.mark.parametrize("namespace", NAMESPACES)
@pytest.mark.parametrize("io", ["atomic", "atomic-async"])
@pytest.mark.parametrize("save_last", [True, "link"])
def test_fit_keeps_top_k_and_last_then_resumes(namespace: str, io: str, save_last: Any, tmp_path: Path) -> None:
    trainer, checkpoint = fit(namespace, tmp_path, io=io, save_last=save_last, epochs=4)
    expected_io = "AtomicAsyncCheckpointIO" if io == "atomic-async" else "AtomicCheckpointIO"
    assert type(trainer.strategy.checkpoint_io).__name__ == expected_io
    assert type(trainer.strategy.checkpoint_io).__module__ == "atomicwrite.lightning"
    top_k = sorted(os.path.basename(path) for path in checkpoint.best_k_models)
    assert len(top_k) == 2
    # Exactly the top 2 and last: the removals of the checkpoints that fell out of the top 2 ran.
    assert checkpoint_files(tmp_path) == sorted([*top_k, "last.ckpt"])
    assert temps(tmp_path) == []
    for name in checkpoint_files(tmp_path):
        assert awt.validate(tmp_path / name), name
    last = tmp_path / "last.ckpt"
    if save_last == "link":
        assert last.is_symlink()
        assert not os.path.isabs(os.readlink(last))
        assert os.path.basename(os.readlink(last)) in top_k
    else:
        assert not last.is_symlink()
    state = awt.load(last, weights_only=False)
    assert state["global_step"] == 8 if save_last is True else state["global_step"] <= 8

    resumed, _ = fit(namespace, tmp_path, io=io, save_last=save_last, epochs=6, resume=True)
    assert resumed.ckpt_path == str(last)
    assert resumed.global_step == 12
    assert sorted(resumed.checkpoint_callback.best_k_models) != []
    assert len(checkpoint_files(tmp_path)) == 3
    assert temps(tmp_path) == []


def test_state_is_interchangeable_with_the_stock_model_checkpoint(tmp_path: Path) -> None:
    """A run saved with Lightning's ModelCheckpoint resumes with ours, best-k bookkeeping included."""
    _, stock = fit("lightning", tmp_path, io="lightning", epochs=2, stock_checkpoint=True)
    ours = classes_for("lightning").model_checkpoint(monitor="val_loss", dirpath=tmp_path)
    assert ours.state_key == stock.state_key
    resumed, callback = fit("lightning", tmp_path, epochs=3, resume=True)
    assert resumed.ckpt_path == str(tmp_path / "last.ckpt")
    assert callback.last_model_path == str(tmp_path / "last.ckpt")  # not last-v1.ckpt
    assert checkpoint_files(tmp_path) == sorted([*(os.path.basename(p) for p in callback.best_k_models), "last.ckpt"])


def test_classes_of_the_two_namespaces_are_different() -> None:
    import lightning.fabric.plugins as unified
    import lightning_fabric.plugins as standalone

    import atomicwrite.lightning as awl
    import atomicwrite.pytorch_lightning as awpl

    assert awl.AtomicCheckpointIO is classes_for("lightning").checkpoint_io
    assert awpl.AtomicCheckpointIO is classes_for("pytorch_lightning").checkpoint_io
    assert issubclass(awl.AtomicCheckpointIO, unified.CheckpointIO)
    assert not issubclass(awl.AtomicCheckpointIO, standalone.CheckpointIO)
    assert issubclass(awpl.AtomicCheckpointIO, standalone.CheckpointIO)
    assert issubclass(awpl.AtomicAsyncCheckpointIO, standalone.CheckpointIO)
    assert issubclass(awl.AtomicModelCheckpoint, namespace_modules("lightning").callbacks.ModelCheckpoint)
    assert issubclass(awpl.AtomicModelCheckpoint, namespace_modules("pytorch_lightning").callbacks.ModelCheckpoint)
    with pytest.raises(AttributeError):
        awl.NoSuchClass  # noqa: B018
    # The trap the two modules avoid: a plugin of one package is refused by the other's Trainer.
    import pytorch_lightning

    with pytest.raises(Exception, match=r"CheckpointIO|plugin|Found invalid type"):
        pytorch_lightning.Trainer(plugins=[awl.AtomicCheckpointIO()], **QUIET)


# --- Fabric -----------------------------------------------------------------------------------


@pytest.mark.parametrize("namespace", NAMESPACES)
@pytest.mark.parametrize("asynchronous", [False, True])
def test_fabric_save_and_load(namespace: str, asynchronous: bool, tmp_path: Path) -> None:
    if namespace == "lightning":
        from lightning.fabric import Fabric
    else:
        from lightning_fabric import Fabric
    classes = classes_for(namespace)  # type: ignore[arg-type]
    plugin = classes.async_checkpoint_io() if asynchronous else classes.checkpoint_io()
    fabric = Fabric(accelerator="cpu", devices=1, plugins=[plugin])
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = fabric.setup(model, optimizer)
    target = tmp_path / "nested" / "fabric.ckpt"
    fabric.save(target, {"model": model, "optimizer": optimizer, "step": 5})
    expected = {name: value.detach().clone() for name, value in model.state_dict().items()}
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)  # changed right after the save call: the checkpoint must not see it
    if asynchronous:
        plugin.wait()
    assert awt.validate(target)
    state = {"model": model, "optimizer": optimizer, "step": 0}
    remainder = fabric.load(target, state)
    assert state["step"] == 5
    assert remainder == {}
    for name, value in model.state_dict().items():
        assert torch.equal(value, expected[name]), name


# --- the plugin's own contract ------------------------------------------------------------------


@pytest.mark.parametrize("asynchronous", [False, True])
def test_pickling_error_leaves_the_target_untouched(asynchronous: bool, tmp_path: Path) -> None:
    classes = classes_for("lightning")
    plugin = classes.async_checkpoint_io() if asynchronous else classes.checkpoint_io()
    target = tmp_path / "model.ckpt"
    plugin.save_checkpoint({"step": 1, "w": torch.ones(4)}, target)
    if asynchronous:
        plugin.wait()
    before = digest(target)
    if asynchronous:
        plugin.save_checkpoint({"step": 2, "bad": Unpicklable()}, target)
        # The failure surfaces on the next call; the target is untouched meanwhile.
        with pytest.raises(RuntimeError, match="cannot pickle this"):
            plugin.wait()
    else:
        with pytest.raises(RuntimeError, match="cannot pickle this"):
            plugin.save_checkpoint({"step": 2, "bad": Unpicklable()}, target)
    assert digest(target) == before
    assert os.listdir(tmp_path) == ["model.ckpt"]
    assert plugin.load_checkpoint(target)["step"] == 1


def test_async_failure_surfaces_on_the_next_save_and_skips_dependent_removals(tmp_path: Path) -> None:
    plugin = classes_for("lightning").async_checkpoint_io()
    old = tmp_path / "old.ckpt"
    plugin.save_checkpoint({"step": 1}, old)
    # Slow, then failing: the removal below is queued while this save is still being written.
    plugin.save_checkpoint({"step": 2, "slow": SlowToPickle(0.3), "bad": Unpicklable()}, tmp_path / "new.ckpt")
    plugin.remove_checkpoint(old)  # depends on new.ckpt, which fails: must not run
    deadline = time.monotonic() + 30
    while plugin.saver.pending:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with pytest.raises(RuntimeError, match="cannot pickle this"):
        plugin.save_checkpoint({"step": 3}, tmp_path / "next.ckpt")
    plugin.wait()
    assert sorted(os.listdir(tmp_path)) == ["old.ckpt"]  # old kept, nothing half-written
    assert plugin.load_checkpoint(old)["step"] == 1
    plugin.teardown()


def test_async_remove_waits_for_the_save_queued_before_it(tmp_path: Path) -> None:
    plugin = classes_for("lightning").async_checkpoint_io()
    old, new = tmp_path / "epoch1.ckpt", tmp_path / "epoch2.ckpt"
    plugin.save_checkpoint({"step": 1}, old)
    plugin.wait()
    plugin.save_checkpoint({"step": 2, "slow": SlowToPickle(0.5)}, new)
    plugin.remove_checkpoint(old)
    # The removal is queued behind the save: right now there is still a checkpoint on disk.
    assert old.exists()
    assert not new.exists()
    plugin.teardown()
    assert not old.exists()
    assert awt.load(new, weights_only=False)["step"] == 2


def test_lightning_async_checkpoint_io_lets_a_remove_overtake_its_save(tmp_path: Path) -> None:
    """What Lightning's own AsyncCheckpointIO does in the same situation: for a while, no checkpoint."""
    from lightning.fabric.plugins import TorchCheckpointIO
    from lightning.pytorch.plugins.io import AsyncCheckpointIO

    plugin = AsyncCheckpointIO(TorchCheckpointIO())
    old, new = tmp_path / "epoch1.ckpt", tmp_path / "epoch2.ckpt"
    TorchCheckpointIO().save_checkpoint({"step": 1}, old)
    plugin.save_checkpoint({"step": 2, "slow": SlowToPickle(0.5)}, new)
    plugin.remove_checkpoint(old)
    no_checkpoint_at_all = not old.exists() and not new.exists()
    plugin.teardown()
    print(f"Lightning AsyncCheckpointIO: remove overtook the pending save -> no checkpoint: {no_checkpoint_at_all}")
    assert no_checkpoint_at_all
    assert new.exists()


def test_remove_checkpoint_tolerates_a_missing_file_and_removes_directories(tmp_path: Path) -> None:
    plugin = classes_for("lightning").checkpoint_io()
    plugin.remove_checkpoint(tmp_path / "never-saved.ckpt")
    sharded = tmp_path / "sharded.ckpt"
    sharded.mkdir()
    (sharded / "part-0").write_bytes(b"x")
    plugin.remove_checkpoint(sharded)
    assert not sharded.exists()
    async_plugin = classes_for("lightning").async_checkpoint_io()
    async_plugin.remove_checkpoint(tmp_path / "never-saved.ckpt")
    async_plugin.teardown()


def test_load_refuses_a_torn_checkpoint(tmp_path: Path) -> None:
    plugin = classes_for("lightning").checkpoint_io()
    target = tmp_path / "model.ckpt"
    plugin.save_checkpoint({"w": torch.ones(1000)}, target)
    target.write_bytes(target.read_bytes()[:2000])
    with pytest.raises(awt.CheckpointError) as caught:
        plugin.load_checkpoint(target)
    assert caught.value.reason == "torn"
    with pytest.raises(FileNotFoundError):
        plugin.load_checkpoint(tmp_path / "missing.ckpt")


def test_storage_options_route_to_fsspec(moto_endpoint: str) -> None:  # noqa: F811 - the fixture
    import s3fs

    options = s3_options(moto_endpoint)
    bucket = f"lightning-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(**options).call_s3("create_bucket", Bucket=bucket)
    plugin = classes_for("lightning").checkpoint_io()
    url = f"s3://{bucket}/run/epoch1.ckpt"
    plugin.save_checkpoint({"step": 1, "w": torch.arange(10)}, url, storage_options=options)
    configured = classes_for("lightning").checkpoint_io(storage_options=options)
    assert awt.validate(url, storage_options=options)
    loaded = configured.load_checkpoint(url)
    assert loaded["step"] == 1
    assert torch.equal(loaded["w"], torch.arange(10))
    with pytest.raises(RuntimeError, match="cannot pickle this"):
        configured.save_checkpoint({"bad": Unpicklable()}, url)
    assert configured.load_checkpoint(url)["step"] == 1
    configured.remove_checkpoint(url)
    configured.remove_checkpoint(url)  # already gone: fine
    assert not awt.validate(url, storage_options=options)


def test_trainer_save_checkpoint_with_storage_options(tmp_path: Path) -> None:
    """Lightning's own plugin raises TypeError on storage_options; ours takes them."""
    pl = namespace_modules("lightning")
    no_callbacks = {"enable_checkpointing": False, "default_root_dir": tmp_path, **QUIET}
    trainer = pl.Trainer(max_epochs=1, plugins=[classes_for("lightning").checkpoint_io()], **no_callbacks)
    train_loader, _ = loaders()
    trainer.fit(make_model(pl), train_loader)
    url = f"memory://lightning-tests/{uuid.uuid4().hex}/manual.ckpt"
    trainer.save_checkpoint(url, storage_options={"skip_instance_cache": False})
    assert awt.validate(url)
    stock = pl.Trainer(max_epochs=1, **no_callbacks)
    stock.fit(make_model(pl), train_loader)
    with pytest.raises(TypeError, match="storage_options"):
        stock.save_checkpoint(tmp_path / "stock.ckpt", storage_options={})


# --- the last link ------------------------------------------------------------------------------


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks need a privilege on Windows")
def test_link_is_never_missing_while_it_moves(tmp_path: Path) -> None:
    first, second = tmp_path / "a.ckpt", tmp_path / "b.ckpt"
    first.write_bytes(b"a")
    second.write_bytes(b"b")
    link = tmp_path / "last.ckpt"
    link_atomically(first, link)
    misses = 0
    reads = 0
    stop = threading.Event()

    def reader() -> None:
        nonlocal misses, reads
        while not stop.is_set():
            try:
                with open(link, "rb") as file:
                    assert file.read() in (b"a", b"b")
            except FileNotFoundError:
                misses += 1
            reads += 1

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for index in range(300):
            link_atomically(second if index % 2 == 0 else first, link)
    finally:
        stop.set()
        thread.join()
    assert reads > 0
    assert misses == 0
    assert os.readlink(link) == "a.ckpt"
    assert sorted(os.listdir(tmp_path)) == ["a.ckpt", "b.ckpt", "last.ckpt"]


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks need a privilege on Windows")
def test_async_last_link_waits_for_the_save_it_points_to(tmp_path: Path) -> None:
    pl = namespace_modules("lightning")
    classes = classes_for("lightning")
    plugin = classes.async_checkpoint_io()
    trainer = pl.Trainer(plugins=[plugin], enable_checkpointing=False, default_root_dir=tmp_path, **QUIET)
    old, new, last = tmp_path / "epoch1.ckpt", tmp_path / "epoch2.ckpt", tmp_path / "last.ckpt"
    plugin.save_checkpoint({"step": 1}, old)
    plugin.wait()
    link_atomically(old, last)
    plugin.save_checkpoint({"step": 2, "slow": SlowToPickle(0.5)}, new)
    classes.model_checkpoint._link_checkpoint(trainer, str(new), str(last))
    # Queued behind the save: last.ckpt still points to a checkpoint that exists.
    assert os.readlink(last) == "epoch1.ckpt"
    assert not new.exists()
    plugin.wait()
    assert os.readlink(last) == "epoch2.ckpt"
    assert awt.load(last, weights_only=False)["step"] == 2


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks need a privilege on Windows")
def test_link_replaces_a_regular_file_and_sweep_removes_a_dead_writers_temp(tmp_path: Path) -> None:
    target = tmp_path / "epoch3.ckpt"
    target.write_bytes(b"new")
    link = tmp_path / "last.ckpt"
    link.write_bytes(b"old full copy")
    # A temp symlink left by a writer killed between its symlink and its rename.
    from atomicwrite._names import host_tag

    dead_pid = 2**22 + 12345  # above the default pid_max: never a live process here
    stale = tmp_path / f".last.ckpt.aw{host_tag()}.{dead_pid}.0badc0de.link"
    os.symlink("epoch1.ckpt", stale)
    link_atomically(target, link)
    assert link.is_symlink()
    assert link.read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == [stale.name, "epoch3.ckpt", "last.ckpt"]
    sweep(tmp_path, older_than=0)
    assert sorted(os.listdir(tmp_path)) == ["epoch3.ckpt", "last.ckpt"]


# --- ckpt_path="last" ------------------------------------------------------------------------


def test_resume_from_last_skips_a_torn_last(tmp_path: Path) -> None:
    fit("lightning", tmp_path, epochs=2)
    last = tmp_path / "last.ckpt"
    good = last.read_bytes()
    last.write_bytes(good[: len(good) // 2])  # what a non-atomic writer leaves when killed
    time.sleep(0.01)
    resumed, _ = fit("lightning", tmp_path, epochs=3, resume=True)
    # Resumed from the newest checkpoint that validates (a top-k one), not from the torn file.
    assert resumed.ckpt_path != str(last)
    assert awt.validate(resumed.ckpt_path)
    assert resumed.global_step == 6
    # Lightning's own ModelCheckpoint picks the torn last.ckpt and cannot load it.
    last.write_bytes(good[: len(good) // 2])
    with pytest.raises(Exception, match=r"zip|archive|central directory|PytorchStreamReader"):
        fit("lightning", tmp_path, io="lightning", epochs=4, resume=True, stock_checkpoint=True)


# --- SIGKILL mid-save ---------------------------------------------------------------------------


def run_worker(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full_env = dict(os.environ, **(env or {}))
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    return subprocess.Popen(
        [sys.executable, "-m", "tests._lightning_workers", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        cwd=REPO,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 180) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-4000:]
    return out


def kill_when_ready(proc: subprocess.Popen[str], ready: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"the worker ended before its slow save: {err[-4000:]}")
        assert time.monotonic() < deadline, "the worker never reached its slow save"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL


BALLAST_MIB = 24
BALLAST = ("--ballast-mib", str(BALLAST_MIB))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory after 2 epochs: epoch00.ckpt, epoch01.ckpt and last.ckpt (~24 MiB each).

    Returned is a pristine copy; `kill_mid_save` puts it back in place before each run, since a
    resumed ModelCheckpoint only keeps writing last.ckpt in the directory it was saved from.
    """
    base = tmp_path_factory.mktemp("trained")
    finish(run_worker("train", str(base / "run"), "--epochs", "2", "--ballast-mib", str(BALLAST_MIB)))
    shutil.copytree(base / "run", base / "pristine", symlinks=True)
    return base / "pristine"


def kill_mid_save(pristine: Path, work: Path, io: str, stage: str, env: dict[str, str] | None = None) -> Path:
    """Resume the trained run and SIGKILL it half way through writing last.ckpt."""
    directory = pristine.parent / "run"
    shutil.rmtree(directory)
    shutil.copytree(pristine, directory, symlinks=True)
    work.mkdir(parents=True, exist_ok=True)
    ready = work / "ready"
    proc = run_worker(
        "kill-target",
        str(directory),
        "--io",
        io,
        "--epochs",
        "4",
        "--resume",
        "--ballast-mib",
        str(BALLAST_MIB),
        "--ready",
        str(ready),
        "--ready-after",
        str(8 * MiB),
        "--slow-name",
        "last.ckpt",
        "--slow-stage",
        stage,
        env=env,
    )
    kill_when_ready(proc, ready)
    return directory


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_sigkill_mid_save_keeps_the_old_last_and_resumes(trained: Path, tmp_path: Path) -> None:
    old_last = digest(trained / "last.ckpt")
    directory = kill_mid_save(trained, tmp_path, "atomic", "write")
    # Killed half way through overwriting last.ckpt: the old one is still there, whole.
    assert digest(directory / "last.ckpt") == old_last
    assert awt.validate(directory / "last.ckpt")
    assert awt.load(directory / "last.ckpt", weights_only=False)["global_step"] == 4
    sweep(directory, older_than=0)
    assert temps(directory) == []
    assert not any(name.startswith(".") for name in os.listdir(directory))
    report = tmp_path / "report.json"
    finish(run_worker("train", str(directory), "--epochs", "4", "--resume", "--report", str(report), *BALLAST))
    result = json.loads(report.read_text())
    assert result["resumed_from"] == str(directory / "last.ckpt")
    assert result["global_step"] == 8
    assert awt.validate(directory / "last.ckpt")


def _other_device_tmpdir(path: Path) -> Path | None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK) or shm.stat().st_dev == path.stat().st_dev:
        return None
    return shm


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_sigkill_mid_save_with_lightnings_own_plugin(trained: Path, tmp_path: Path) -> None:
    """Measured, not presumed: what Lightning 2.6's TorchCheckpointIO leaves after the same kill.

    It stages the checkpoint in $TMPDIR and moves it.  On one file system the move is a rename:
    the old last.ckpt survives, but the staged copy is left in $TMPDIR under a random name that
    nothing will ever clean.  When $TMPDIR is another file system (a tmpfs /tmp, a local scratch
    disk) the move is a copy into last.ckpt itself, and a kill during it leaves a torn file.
    """
    old_last = digest(trained / "last.ckpt")
    size = (trained / "last.ckpt").stat().st_size
    same_device_tmp = tmp_path / "tmpdir"
    same_device_tmp.mkdir()
    directory = kill_mid_save(trained, tmp_path / "same", "lightning", "write", {"TMPDIR": str(same_device_tmp)})
    leftovers = sorted(os.listdir(same_device_tmp))
    print(f"Lightning, $TMPDIR on the same file system: last.ckpt intact={digest(directory / 'last.ckpt') == old_last}")
    print(f"  left in $TMPDIR: {[(name, (same_device_tmp / name).stat().st_size) for name in leftovers]}")
    assert digest(directory / "last.ckpt") == old_last
    assert len(leftovers) == 1
    assert leftovers[0].startswith("tmp")
    assert (same_device_tmp / leftovers[0]).stat().st_size >= 8 * MiB  # a partial checkpoint, orphaned

    other = _other_device_tmpdir(tmp_path)
    if other is None:
        pytest.skip("no second file system (/dev/shm) to stage on: the cross-device case was not measured")
    staging = Path(other) / f"atomicwrite-test-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        directory = kill_mid_save(trained, tmp_path / "cross", "lightning", "copy", {"TMPDIR": str(staging)})
        result = awt.validate(directory / "last.ckpt")
        torn_size = (directory / "last.ckpt").stat().st_size
        print(f"Lightning, $TMPDIR on another file system: last.ckpt {result.reason}, {torn_size} of {size} bytes")
        assert not result
        assert result.reason == "torn"
        assert torn_size < size
        # The stock resume picks it and fails; ours (AtomicModelCheckpoint) skips it.
        report = tmp_path / "report.json"
        finish(run_worker("train", str(directory), "--epochs", "3", "--resume", "--report", str(report), *BALLAST))
        resumed_from = json.loads(report.read_text())["resumed_from"]
        assert resumed_from != str(directory / "last.ckpt")
        assert awt.validate(resumed_from)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --- memory --------------------------------------------------------------------------------------


PEAK_RSS = """
import resource, sys, torch
from atomicwrite.lightning import classes_for
from lightning.fabric.plugins import TorchCheckpointIO
plugin = classes_for("lightning").checkpoint_io() if sys.argv[2] == "atomic" else TorchCheckpointIO()
state = {"state_dict": {f"w{i}": torch.ones(10 * 2**20 // 4) for i in range(30)}, "epoch": 1}  # 300 MiB
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
plugin.save_checkpoint(state, sys.argv[1])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before, after)
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="ru_maxrss is POSIX")
def test_peak_memory_of_a_300_mib_checkpoint(tmp_path: Path) -> None:
    extra: dict[str, int] = {}
    for io in ("atomic", "lightning"):
        target = tmp_path / f"{io}.ckpt"
        proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(PEAK_RSS), str(target), io],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")),
        )
        out = finish(proc, timeout=240)
        before_kib, after_kib = map(int, out.split()[-2:])
        extra[io] = (after_kib - before_kib) * 1024
        assert target.stat().st_size > 300 * MiB
        target.unlink()
    print(
        f"peak RSS added by saving 300 MiB: atomicwrite {extra['atomic'] / MiB:.1f} MiB,"
        f" Lightning TorchCheckpointIO {extra['lightning'] / MiB:.1f} MiB"
    )
    assert extra["atomic"] < 32 * MiB


# --- DDP ---------------------------------------------------------------------------------------


DDP = """
import json, os, sys
import torch
import lightning.pytorch as pl
from atomicwrite.lightning import classes_for
import atomicwrite.torch as awt
sys.path.insert(0, os.environ["ATOMICWRITE_REPO"])
from tests._lightning_workers import QUIET, loaders, make_model

directory = sys.argv[1]
base = classes_for("lightning").checkpoint_io

class Recording(base):
    def save_checkpoint(self, checkpoint, path, storage_options=None):
        with open(os.path.join(directory, f"wrote-rank{os.environ.get('LOCAL_RANK', '0')}-{os.getpid()}"), "w"):
            pass
        super().save_checkpoint(checkpoint, path, storage_options)

options = dict(QUIET, devices=2)
trainer = pl.Trainer(max_epochs=1, strategy="ddp", plugins=[Recording()], enable_checkpointing=False, **options)
train_loader, _ = loaders()
trainer.fit(make_model(pl), train_loader)
target = os.path.join(directory, "ddp.ckpt")
trainer.save_checkpoint(target)  # rank 0 writes; every rank passes the barrier after it
seen = {"rank": trainer.global_rank, "valid": bool(awt.validate(target))}
with open(os.path.join(directory, f"seen-rank{trainer.global_rank}.json"), "w") as report:
    json.dump(seen, report)
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="gloo DDP through a relaunched script")
def test_ddp_only_rank_zero_writes_and_every_rank_sees_the_file(tmp_path: Path) -> None:
    script = tmp_path / "ddp_run.py"
    script.write_text(textwrap.dedent(DDP))
    directory = tmp_path / "out"
    directory.mkdir()
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        ATOMICWRITE_REPO=str(REPO),
        PL_DISABLE_FORK="1",
    )
    proc = subprocess.Popen(
        [sys.executable, str(script), str(directory)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    finish(proc, timeout=240)
    writers = sorted(name for name in os.listdir(directory) if name.startswith("wrote-"))
    assert len(writers) == 1, writers
    assert writers[0].startswith("wrote-rank0-"), writers
    seen = [json.loads((directory / f"seen-rank{rank}.json").read_text()) for rank in (0, 1)]
    assert seen == [{"rank": 0, "valid": True}, {"rank": 1, "valid": True}]
    assert awt.validate(directory / "ddp.ckpt")


def test_importing_the_adapters_imports_neither_torch_nor_lightning() -> None:
    code = textwrap.dedent(
        """
        import sys
        import atomicwrite.lightning, atomicwrite.pytorch_lightning
        heavy = ("torch", "lightning", "pytorch_lightning", "lightning_fabric")
        loaded = sorted(name for name in heavy if name in sys.modules)
        print(loaded)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.strip() == "[]"
