"""Tiny Lightning training runs for tests/test_lightning.py, in-process or as a subprocess.

As a script: ``python -m tests._lightning_workers MODE DIRECTORY [options]``; modes:

- ``train``: fit a tiny model with a ModelCheckpoint, optionally resuming from ``last``, and write
  a JSON report (``--report``).
- ``kill-target``: train and, at the save chosen by ``--slow-save-at``, write slowly and touch a
  ``ready`` file half way through the checkpoint, so that the test can SIGKILL the process
  exactly mid-save.
- ``ddp``: a 2-process gloo run; each rank reports what it saw after the barrier.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

QUIET: dict[str, Any] = {
    "accelerator": "cpu",
    "devices": 1,
    "logger": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
}


def namespace_modules(namespace: str) -> Any:
    """The Lightning Trainer package of ``namespace`` ("lightning" or "pytorch_lightning")."""
    if namespace == "lightning":
        import lightning.pytorch as pl
    else:
        import pytorch_lightning as pl
    return pl


def make_model(pl: Any, ballast_mib: int = 0) -> Any:
    """A linear model on random data, logging ``val_loss``; ``ballast_mib`` adds a big buffer."""

    class TinyModel(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(8, 1)
            if ballast_mib:
                self.register_buffer("ballast", torch.zeros(ballast_mib << 18))

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            # A loss that differs from epoch to epoch, so that top-k keeps changing.
            self.log("val_loss", torch.nn.functional.mse_loss(self.layer(x), y) + float(self.current_epoch % 3))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return TinyModel()


def loaders() -> tuple[DataLoader[Any], DataLoader[Any]]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(16, 8, generator=generator)
    y = torch.randn(16, 1, generator=generator)
    data = TensorDataset(x, y)
    return DataLoader(data, batch_size=8), DataLoader(data, batch_size=16)


class SlowWrites:
    """Wraps the file a save writes to: after ``ready_after`` bytes it touches ``ready`` and then
    writes at a crawl, so a SIGKILL sent on ``ready`` lands mid-save."""

    def __init__(self, file: Any, ready: Path, ready_after: int) -> None:
        self._file = file
        self._ready = ready
        self._ready_after = ready_after
        self._written = 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            piece = view[done : done + (1 << 20)]
            self._file.write(piece)
            done += len(piece)
            self._written += len(piece)
            if self._written >= self._ready_after:
                self._file.flush()
                self._ready.touch()
                time.sleep(0.5)
        return len(view)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


def slow_down_saves(ready: Path, ready_after: int, name: str, stage: str) -> None:
    """Make the save of a file called ``name`` crawl after ``ready_after`` bytes, in the writer
    of ``stage``: ``"write"`` (torch.save into atomicwrite's temp file, or Lightning's plugin
    writing its staged copy) or ``"copy"`` (the move of Lightning's staged copy when it has to
    copy across file systems)."""
    import fsspec.implementations.local as local

    import atomicwrite.torch as awt

    def wanted(target: Any) -> bool:
        return os.path.basename(os.fspath(target)) == name

    if stage == "write":

        def save_now(obj: Any, target: Any, storage_options: Any, durability: Any, kwargs: Any) -> Any:
            with awt.atomic_open(target, "wb", durability=durability, storage_options=storage_options) as file:
                torch.save(obj, SlowWrites(file, ready, ready_after) if wanted(target) else file, **kwargs)
            return file.result

        awt._save_now = save_now
        real_local_write = local.LocalFileOpener.write

        def local_write(self: Any, data: Any) -> int:
            if not wanted(self.path):
                return real_local_write(self, data)
            return SlowWrites(self.f, ready, ready_after).write(data)

        local.LocalFileOpener.write = local_write  # type: ignore[method-assign]
    else:
        real_copyfileobj = shutil.copyfileobj

        def copyfileobj(source: Any, destination: Any, length: int = 0) -> None:
            if wanted(getattr(destination, "name", "")):
                destination = SlowWrites(destination, ready, ready_after)
            real_copyfileobj(source, destination, 1 << 20)

        shutil.copyfileobj = copyfileobj
        # shutil copies with sendfile on Linux; make it use copyfileobj, where the crawl is.
        shutil._USE_CP_SENDFILE = False  # type: ignore[attr-defined]


def train(args: argparse.Namespace) -> dict[str, Any]:
    pl = namespace_modules(args.namespace)
    from atomicwrite.lightning import classes_for

    classes = classes_for(args.namespace)
    plugins: list[Any] = []
    if args.io == "atomic":
        plugins.append(classes.checkpoint_io())
    elif args.io == "atomic-async":
        plugins.append(classes.async_checkpoint_io())
    save_last: Any = "link" if args.save_last == "link" else True
    # Lightning's own plugin comes with its own ModelCheckpoint, to measure the stock behaviour.
    callback_class = pl.callbacks.ModelCheckpoint if args.io == "lightning" else classes.model_checkpoint
    checkpoint = callback_class(
        dirpath=args.directory,
        filename="epoch{epoch:02d}",
        auto_insert_metric_name=False,
        monitor="val_loss",
        save_top_k=2,
        save_last=save_last,
    )
    trainer = pl.Trainer(
        max_epochs=args.epochs, callbacks=[checkpoint], plugins=plugins, default_root_dir=args.directory, **QUIET
    )
    model = make_model(pl, args.ballast_mib)
    train_loader, val_loader = loaders()
    trainer.fit(model, train_loader, val_loader, ckpt_path="last" if args.resume else None)
    resumed_from = trainer.ckpt_path
    return {
        "global_step": trainer.global_step,
        "current_epoch": trainer.current_epoch,
        "resumed_from": None if resumed_from is None else str(resumed_from),
        "best_k_models": sorted(checkpoint.best_k_models),
        "last_model_path": checkpoint.last_model_path,
        "checkpoint_io": type(trainer.strategy.checkpoint_io).__name__,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["train", "kill-target"])
    parser.add_argument("directory")
    parser.add_argument("--namespace", default="lightning")
    parser.add_argument("--io", default="atomic", choices=["atomic", "atomic-async", "lightning"])
    parser.add_argument("--save-last", default="true", choices=["true", "link"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--ballast-mib", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--report")
    parser.add_argument("--ready")
    parser.add_argument("--ready-after", type=int, default=8 << 20)
    parser.add_argument("--slow-name", default="last.ckpt")
    parser.add_argument("--slow-stage", default="write", choices=["write", "copy"])
    args = parser.parse_args()
    if args.mode == "kill-target":
        assert args.ready
        slow_down_saves(Path(args.ready), args.ready_after, args.slow_name, args.slow_stage)
    report = train(args)
    if args.report:
        Path(args.report).write_text(json.dumps(report))
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
