"""The training part of ``atomicwrite demo``: a real Lightning run SIGKILLed while it saves.

The parent (`run_training_demo`) starts a tiny training run in a subprocess (``python -m
atomicwrite._cli.demo_lightning``) with `atomicwrite.lightning.AtomicCheckpointIO`, times its first
save of ``last.ckpt``, and kills it part way into the second one.  It then checks that
``last.ckpt`` is still a whole checkpoint, sweeps, and resumes the run with ``ckpt_path="last"``
in a new subprocess.

torch and lightning are imported only in the subprocesses; the parent only checks that they can
be found.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from .children import child_env

__all__ = ["run_training_demo", "training_unavailable"]

BALLAST_MIB = 48
EPOCHS = 3
LAST = "last.ckpt"
READY_TIMEOUT = 120.0


def training_unavailable() -> str | None:
    """Why the training demo cannot run here, or None."""
    missing = [name for name in ("torch", "lightning") if importlib.util.find_spec(name) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (pip install torch==2.13.0 'lightning>=2.6,<2.7')"
    return None


# --------------------------------------------------------------------------------------------
# The training subprocess


def _train(directory: str, epochs: int, resume: bool) -> dict[str, Any]:
    torch = importlib.import_module("torch")
    pl = importlib.import_module("lightning.pytorch")
    data_module = importlib.import_module("torch.utils.data")
    from ..lightning import AtomicCheckpointIO, AtomicModelCheckpoint

    module_base: Any = pl.LightningModule
    callback_base: Any = pl.Callback

    class Model(module_base):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(8, 1)
            # Weight enough for a save to take a moment: a checkpoint of ~48 MiB.
            self.register_buffer("ballast", torch.zeros(BALLAST_MIB << 18))

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    class ReportingCheckpointIO(AtomicCheckpointIO):  # type: ignore[misc]
        """Tells the parent when each save starts and ends, so that it can time its kill."""

        def save_checkpoint(self, checkpoint: Any, path: Any, storage_options: Any = None) -> None:
            name = os.path.basename(os.fspath(path))
            print(f"saving {name}", flush=True)
            started = time.perf_counter()
            super().save_checkpoint(checkpoint, path, storage_options)
            print(f"saved {name} {time.perf_counter() - started:.4f}", flush=True)

    class FirstEpoch(callback_base):  # type: ignore[misc]
        """Notes the epoch training starts at: after a resume, the one after the checkpoint's."""

        epoch: int | None = None

        def on_train_start(self, trainer: Any, module: Any) -> None:
            FirstEpoch.epoch = trainer.current_epoch

    generator = torch.Generator().manual_seed(0)
    dataset = data_module.TensorDataset(
        torch.randn(32, 8, generator=generator), torch.randn(32, 1, generator=generator)
    )
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        plugins=[ReportingCheckpointIO()],
        callbacks=[AtomicModelCheckpoint(dirpath=directory, save_top_k=1, save_last=True), FirstEpoch()],
    )
    trainer.fit(Model(), data_module.DataLoader(dataset, batch_size=8), ckpt_path="last" if resume else None)
    return {
        "resumed_from": None if trainer.ckpt_path is None else os.path.basename(str(trainer.ckpt_path)),
        "started_at_epoch": FirstEpoch.epoch,
        "global_step": trainer.global_step,
        "epochs": trainer.current_epoch,
    }


def _trainer_main(argv: Sequence[str]) -> int:
    """``DIRECTORY EPOCHS [--resume]``: train, printing ``saving NAME`` / ``saved NAME SECONDS``
    around each checkpoint save and ``done JSON`` at the end."""
    if len(argv) not in (2, 3) or (len(argv) == 3 and argv[2] != "--resume"):
        print("usage: python -m atomicwrite._cli.demo_lightning DIRECTORY EPOCHS [--resume]", file=sys.stderr)
        return 2
    import logging
    import warnings

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    report = _train(argv[0], int(argv[1]), resume=len(argv) == 3)
    print("done " + json.dumps(report), flush=True)
    return 0


# --------------------------------------------------------------------------------------------
# The parent


def _start(directory: str, epochs: int, resume: bool) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "atomicwrite._cli.demo_lightning", directory, str(epochs)]
    return subprocess.Popen(
        [*argv, "--resume"] if resume else argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )


def _lines(proc: subprocess.Popen[str]) -> Any:
    assert proc.stdout is not None
    for line in proc.stdout:
        yield line.split(maxsplit=2)


def _failure(proc: subprocess.Popen[str], what: str) -> str:
    if proc.poll() is None:
        proc.kill()
    _, err = proc.communicate()
    last = err.strip().splitlines()[-1:] if err else []
    return f"{what}: {last[0] if last else f'exit status {proc.returncode}'}"


def run_training_demo(base: str, rng: random.Random, echo: Callable[[str], object]) -> bool:
    """Kill a training run part way into saving ``last.ckpt``, then resume it.  True if the old
    ``last.ckpt`` survived whole and the run resumed from it; False (and why, echoed) otherwise."""
    from .. import sweep
    from ..torch import validate

    directory = os.path.join(base, "training")
    echo("")
    echo(f"Lightning: a training run with AtomicCheckpointIO (a {BALLAST_MIB} MiB checkpoint each epoch)")
    proc = _start(directory, EPOCHS, resume=False)
    try:
        first_save: float | None = None
        killed_after = 0.0
        deadline = time.monotonic() + READY_TIMEOUT
        for words in _lines(proc):
            if time.monotonic() > deadline:
                break
            if words[:2] == ["saved", LAST] and first_save is None:
                first_save = float(words[2])
            elif words[:2] == ["saving", LAST] and first_save is not None:
                # Part way into the second save of last.ckpt: the first one is on disk.
                killed_after = first_save * rng.uniform(0.2, 0.8)
                time.sleep(killed_after)
                proc.kill()
                break
        proc.wait()
        if first_save is None or proc.returncode != -9:
            echo(_failure(proc, "  the training run did not reach its second save"))
            return False
    finally:
        with contextlib.suppress(OSError):
            proc.kill()
        proc.communicate()
    echo(
        f"  SIGKILLed {killed_after * 1000:.0f} ms into its second save of {LAST}"
        f" (the first one took {first_save * 1000:.0f} ms)"
    )
    result = validate(os.path.join(directory, LAST))
    echo(f"  {LAST} after the kill: {'a whole checkpoint' if result else 'DAMAGED'} ({result.reason})")
    removed = sweep(directory, older_than=0)
    echo(f"  sweep() removed {len(removed)} leftover temp file(s)")
    resumed = _start(directory, EPOCHS, resume=True)
    report: dict[str, Any] | None = None
    for words in _lines(resumed):
        if words[:1] == ["done"]:
            report = json.loads(" ".join(words[1:]))
    resumed.wait()
    if resumed.returncode != 0 or report is None:
        echo(_failure(resumed, "  resuming failed"))
        return False
    resumed.communicate()
    echo(
        f'  resumed with ckpt_path="last" from {report["resumed_from"]} (saved after epoch'
        f" {report['started_at_epoch'] - 1}): epoch {report['started_at_epoch']}, whose save was killed, ran"
        f" again and training finished epoch {report['epochs'] - 1} (step {report['global_step']})"
    )
    return bool(result) and report["resumed_from"] == LAST


if __name__ == "__main__":
    sys.exit(_trainer_main(sys.argv[1:]))
