"""Tiny transformers / accelerate training runs for tests/test_transformers.py, in-process or as
a subprocess (nothing is downloaded: the model and tokenizer are built from a config here).

As a script: ``python -m tests._hf_workers MODE ...``; modes:

- ``kills ROOT POINT...``: for each kill point, fork a child that trains in ``ROOT/POINT`` with a
  checkpoint every step and SIGKILLs itself at that point of its third save; the parent (which
  imported transformers once for all of them) writes ``ROOT/kills.json``: point -> signal.
- ``rank OUTPUT MODE``: one process of a two-process gloo run (torchrun's environment);
  ``MODE`` is ``shared`` (one output directory) or ``each-node`` (``save_on_each_node``, one
  output directory per process).  Prints a JSON report as its last line.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

VOCAB = 64
#: The save whose phases the kill points interrupt (checkpoint-3: two whole ones precede it).
KILLED_SAVE = 3


def tiny_model(seed: int = 0) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=1, n_embd=16, n_head=2, vocab_size=VOCAB, n_positions=32, bos_token_id=1, eos_token_id=1, pad_token_id=1
    )
    return GPT2LMHeadModel(config)


def tiny_tokenizer() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[PAD]": 1, **{f"w{i}": i + 2 for i in range(VOCAB - 2)}}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")


class TinyData(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Sixteen fixed sequences of eight tokens, language-modelled."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(1)
        self.rows = torch.randint(2, VOCAB, (16, 8), generator=generator)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.rows[index], "labels": self.rows[index]}


def training_arguments(output_dir: str, **overrides: Any) -> Any:
    from transformers import TrainingArguments

    options: dict[str, Any] = {
        "output_dir": output_dir,
        "max_steps": 5,
        "per_device_train_batch_size": 4,
        "save_strategy": "steps",
        "save_steps": 1,
        "logging_strategy": "no",
        "report_to": [],
        "use_cpu": True,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "seed": 3,
    }
    options.update(overrides)
    return TrainingArguments(**options)


def make_trainer(output_dir: str, *, adopt: bool = True, **overrides: Any) -> Any:
    from transformers import Trainer

    from atomicwrite.transformers import atomic_checkpoints

    evaluate = overrides.get("eval_strategy", "no") != "no"
    trainer = Trainer(
        model=tiny_model(),
        args=training_arguments(output_dir, **overrides),
        train_dataset=TinyData(),
        eval_dataset=TinyData() if evaluate else None,
        processing_class=tiny_tokenizer(),
    )
    return atomic_checkpoints(trainer) if adopt else trainer


# --- SIGKILL at chosen points of a save ----------------------------------------------------------

KILL_POINTS = (
    "weights-half",  # half of model.safetensors written
    "weights",  # after the model, config and tokenizer
    "optimizer-half",  # half of optimizer.pt written
    "optimizer",  # after optimizer and scheduler
    "rng",  # after rng_state.pth
    "trainer-state",  # after trainer_state.json
    "publish",  # manifest written, before the publishing rename
    "rotation",  # the new checkpoint published, half way through removing an old one
)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def plant(trainer: Any, point: str) -> None:
    """Arrange for this process to SIGKILL itself at ``point`` of save number KILLED_SAVE."""
    import safetensors.torch
    import transformers.trainer as trainer_module

    import atomicwrite._directories.local as local_directories

    saves = {"count": 0}

    def in_killed_save() -> bool:
        return saves["count"] == KILLED_SAVE

    adapted_save = trainer._save_checkpoint

    def counting_save(*args: Any, **kwargs: Any) -> Any:
        saves["count"] += 1
        return adapted_save(*args, **kwargs)

    trainer._save_checkpoint = counting_save

    def after(name: str, method: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            if point == name and in_killed_save():
                _die()
            return result

        return wrapped

    trainer.save_model = after("weights", trainer.save_model)
    trainer._save_optimizer_and_scheduler = after("optimizer", trainer._save_optimizer_and_scheduler)
    trainer._save_rng_state = after("rng", trainer._save_rng_state)
    trainer.state.__class__.save_to_json = after("trainer-state", trainer.state.__class__.save_to_json)

    def half_then_die(data: bytes, path: Any) -> None:
        with open(path, "wb") as file:
            file.write(data[: len(data) // 2])
            file.flush()
        _die()

    save_file = safetensors.torch.save_file

    def killing_save_file(tensors: Any, filename: Any, *args: Any, **kwargs: Any) -> Any:
        if point == "weights-half" and in_killed_save():
            half_then_die(safetensors.torch.save(tensors, *args, **kwargs), filename)
        return save_file(tensors, filename, *args, **kwargs)

    safetensors.torch.save_file = killing_save_file
    import transformers.modeling_utils as modeling_utils

    if hasattr(modeling_utils, "safe_save_file"):
        modeling_utils.safe_save_file = killing_save_file

    torch_save = trainer_module.torch.save

    def killing_torch_save(obj: Any, target: Any, *args: Any, **kwargs: Any) -> Any:
        if point == "optimizer-half" and in_killed_save() and str(target).endswith("optimizer.pt"):
            import io

            buffer = io.BytesIO()
            torch_save(obj, buffer, *args, **kwargs)
            half_then_die(buffer.getvalue(), target)
        return torch_save(obj, target, *args, **kwargs)

    torch.save = killing_torch_save

    publish = local_directories.LocalTransaction._publish

    def killing_publish(self: Any) -> bool:
        if point == "publish" and in_killed_save():
            _die()
        return publish(self)

    local_directories.LocalTransaction._publish = killing_publish  # type: ignore[method-assign]

    rmtree = local_directories.shutil.rmtree

    def killing_rmtree(path: Any, *args: Any, **kwargs: Any) -> None:
        if point == "rotation" and in_killed_save():
            # Half of the old checkpoint's files gone, then the process.
            names = sorted(os.listdir(path))
            for name in names[: len(names) // 2]:
                full = os.path.join(path, name)
                if os.path.isfile(full):
                    os.unlink(full)
            _die()
        rmtree(path, *args, **kwargs)

    local_directories.shutil.rmtree = killing_rmtree  # type: ignore[assignment]


def kills(root: str, points: list[str]) -> None:
    torch.set_num_threads(1)
    outcome: dict[str, Any] = {}
    for point in points:
        directory = os.path.join(root, point)
        os.makedirs(directory)
        pid = os.fork()
        if pid == 0:  # the child trains until it kills itself
            code = 1
            try:
                # save_total_limit=2, so that the killed save's rotation has something to remove.
                trainer = make_trainer(directory, save_total_limit=2)
                plant(trainer, point)
                trainer.train()
                code = 3  # the kill point was never reached
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        outcome[point] = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    with open(os.path.join(root, "kills.json"), "w") as file:
        json.dump(outcome, file)


# --- two processes on gloo, as two nodes -----------------------------------------------------------


def rank(output: str, mode: str) -> None:
    import torch.distributed as dist

    me = int(os.environ["RANK"])
    each_node = mode == "each-node"
    directory = os.path.join(output, f"node{me}") if each_node else output
    trainer = make_trainer(directory, max_steps=3, save_on_each_node=each_node, save_total_limit=2)
    trainer.train()
    assert dist.is_initialized()
    assert dist.get_backend() == "gloo"
    found = sorted(os.listdir(directory))
    sys.stdout.write(
        json.dumps(
            {
                "rank": me,
                "world": dist.get_world_size(),
                "should_save": trainer.args.should_save,
                "directory": directory,
                "entries": found,
            }
        )
        + "\n"
    )
    sys.stdout.flush()
    # Leave the group together and tear it down before the interpreter does: a gloo group left
    # to the interpreter's exit can abort the process from a worker thread still alive then
    # ("terminate called without an active exception", SIGABRT), after the run itself passed.
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    if sys.argv[1] == "kills":
        kills(sys.argv[2], sys.argv[3:])
    elif sys.argv[1] == "rank":
        rank(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(f"unknown mode {sys.argv[1]!r}")
