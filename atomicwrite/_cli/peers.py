"""Completeness by the conventions of other checkpointing tools, for ``atomicwrite verify``.

Each recogniser looks at one path (a directory, or a file for NeMo's marker) and either says
"not mine" (None) or returns the checks that tool's own convention allows:

* **NeMo**: a ``NAME-unfinished`` marker beside the checkpoint (NeMo creates it before saving and
  removes it after), or a name that itself ends in ``-unfinished``, means an interrupted save;
* **Orbax**: a step directory still named ``NAME.orbax-checkpoint-tmp-TIMESTAMP`` was never
  renamed into place; on object stores, where Orbax cannot rename, a step is finished only once
  it holds ``commit_success.txt``;
* **torch.distributed.checkpoint**: the ``.metadata`` file (written last, by the coordinator)
  names every ``.distcp`` file and the byte range each item occupies; every file must exist and
  be long enough.  ``.metadata`` is a pickle: it is read with every torch class replaced by an
  inert stand-in, so that neither torch nor trust in the file is needed;
* **DeepSpeed**: the ``latest`` file names a tag directory, which must hold the model states
  (``*model_states.pt``); the data-parallel ranks of the ZeRO optimizer shards
  (``*zero_pp_rank_N_mp_rank_MM_optim_states.pt``) must run from 0 without a gap.

Only one convention judges a path: the first in `RECOGNISERS` that claims it.
"""

from __future__ import annotations

import io
import pickle
import re
from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["RECOGNISERS", "Finding", "nemo_check", "recognise"]

ORBAX_TMP_SUFFIX = ".orbax-checkpoint-tmp-"
ORBAX_COMMIT_FILE = "commit_success.txt"
# Files Orbax writes into every step directory; any of them marks the directory as Orbax's.
_ORBAX_FILES = (ORBAX_COMMIT_FILE, "_CHECKPOINT_METADATA", "orbax.checkpoint")
NEMO_MARKER_SUFFIX = "-unfinished"
_LOCAL_PROTOCOLS = ("", "file", "local")
_ZERO_OPTIMIZER = re.compile(r"zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt$")


class Finding(NamedTuple):
    """One check by a tool's convention: ``ok`` True (complete), False (incomplete) or None
    (could not be told)."""

    name: str
    ok: bool | None
    detail: str


Recogniser = Callable[[Any, str, str], "list[Finding] | None"]


def recognise(fs: Any, path: str, protocol: str) -> tuple[str, list[Finding]] | None:
    """``(tool, checks)`` by the first convention in `RECOGNISERS` that claims ``path``."""
    for tool, recogniser in RECOGNISERS:
        checks = recogniser(fs, path, protocol)
        if checks is not None:
            return tool, checks
    return None


def _names(fs: Any, path: str) -> dict[str, str]:
    """Base name -> type ("file", "directory") of the entries right under ``path``."""
    try:
        entries = fs.ls(path, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    return {str(entry["name"]).rstrip("/").rpartition("/")[2]: str(entry.get("type")) for entry in entries}


def _exists(fs: Any, path: str) -> bool:
    try:
        fs.info(path)
    except FileNotFoundError:
        return False
    return True


# --- NeMo ------------------------------------------------------------------------------------


def nemo_marker(path: str) -> str:
    """Where NeMo puts the marker of ``path``: beside it, without ``.nemo``/``.ckpt`` and
    ``-last``."""
    stem = path.rstrip("/").removesuffix(".nemo").removesuffix(".ckpt").removesuffix("-last")
    return stem + NEMO_MARKER_SUFFIX


def nemo_check(fs: Any, path: str, protocol: str) -> list[Finding] | None:
    name = path.rstrip("/").rpartition("/")[2]
    if name.endswith(NEMO_MARKER_SUFFIX):
        return [Finding("NeMo marker", False, f"the name ends in {NEMO_MARKER_SUFFIX!r}: an interrupted save")]
    marker = nemo_marker(path)
    if _exists(fs, marker):
        detail = f"{marker.rpartition('/')[2]} is beside it: the save never finished"
        return [Finding("NeMo marker", False, detail)]
    return None


# --- Orbax -----------------------------------------------------------------------------------


def _orbax(fs: Any, path: str, protocol: str) -> list[Finding] | None:
    name = path.rstrip("/").rpartition("/")[2]
    if ORBAX_TMP_SUFFIX in name:
        final = name.partition(ORBAX_TMP_SUFFIX)[0]
        detail = f"a temporary directory, never renamed to {final!r}: an interrupted save"
        return [Finding("Orbax temporary name", False, detail)]
    names = _names(fs, path)
    if not any(marker in names for marker in _ORBAX_FILES):
        return None
    if ORBAX_COMMIT_FILE in names:
        return [Finding("Orbax commit marker", True, f"{ORBAX_COMMIT_FILE} present: the save finished")]
    if protocol in _LOCAL_PROTOCOLS:
        detail = "its final name, which Orbax gives a local step only by renaming the finished directory"
        return [Finding("Orbax final name", True, detail)]
    detail = f"no {ORBAX_COMMIT_FILE}: on an object store Orbax writes it last, so the save never finished"
    return [Finding("Orbax commit marker", False, detail)]


# --- torch.distributed.checkpoint --------------------------------------------------------------


def _dcp(fs: Any, path: str, protocol: str) -> list[Finding] | None:
    names = _names(fs, path)
    shards = sorted(name for name in names if name.endswith(".distcp"))
    if ".metadata" not in names:
        if not shards:
            return None
        detail = f"{len(shards)} .distcp file(s) but no .metadata: the coordinator never finished the save"
        return [Finding("DCP .metadata", False, detail)]
    needed = _dcp_extents(fs, path)
    if needed is None:
        return [Finding("DCP .metadata", None, "present, not checked: not in the format this reader knows")]
    checks = [Finding("DCP .metadata", True, f"names {len(needed)} file(s)")]
    sizes = {entry: int(fs.info(f"{path.rstrip('/')}/{entry}")["size"]) for entry in needed if entry in names}
    missing = sorted(entry for entry in needed if entry not in sizes)
    short = sorted(entry for entry in sizes if sizes[entry] < needed[entry])
    for entry in missing:
        checks.append(Finding("DCP shard", False, f"{entry} is missing"))
    for entry in short:
        detail = f"{entry} has {sizes[entry]} bytes; .metadata places data up to byte {needed[entry]}"
        checks.append(Finding("DCP shard", False, detail))
    if not missing and not short:
        checks.append(Finding("DCP shards", True, "every file .metadata names is present and long enough"))
    return checks


def _dcp_extents(fs: Any, path: str) -> dict[str, int] | None:
    """File name -> the end of the last byte range ``.metadata`` places in it; None when
    ``.metadata`` holds something other than DCP's own classes."""
    try:
        metadata = _MetadataUnpickler(io.BytesIO(fs.cat_file(f"{path.rstrip('/')}/.metadata"))).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError):
        return None
    extents: dict[str, int] = {}
    storage = getattr(metadata, "storage_data", None)
    if not isinstance(storage, dict):
        return None
    for info in storage.values():
        name = getattr(info, "relative_path", None)
        offset, length = getattr(info, "offset", None), getattr(info, "length", None)
        if not (isinstance(name, str) and isinstance(offset, int) and isinstance(length, int)):
            return None
        extents[name] = max(extents.get(name, 0), offset + length)
    return extents


class _TorchStandIn:
    """Whatever torch object ``.metadata`` names: it keeps the pickled state and runs no code,
    so that reading a checkpoint neither needs torch nor trusts the file."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (__dict__, __slots__ values)
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)


_SAFE_GLOBALS = {("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset")}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        # pathlib: the checkpoint_id torch records, which nothing here reads.
        if module in ("torch", "pathlib") or module.startswith("torch."):
            return type(name, (_TorchStandIn,), {})
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} has no place in a DCP .metadata")


# --- DeepSpeed -------------------------------------------------------------------------------


def _deepspeed(fs: Any, path: str, protocol: str) -> list[Finding] | None:
    root = path.rstrip("/")
    names = _names(fs, root)
    if names.get("latest") != "file":
        return None
    tag = fs.cat_file(f"{root}/latest").decode("utf-8", "replace").strip()
    if not tag or "/" in tag or tag in (".", ".."):
        return [Finding("DeepSpeed latest", False, f"latest holds {tag!r}, not a tag directory's name")]
    if names.get(tag) != "directory":
        return [Finding("DeepSpeed latest", False, f"latest names {tag!r}, which does not exist")]
    checks = [Finding("DeepSpeed latest", True, f"names {tag!r}")]
    files = [name for name, kind in _names(fs, f"{root}/{tag}").items() if kind == "file"]
    models = [name for name in files if name.endswith("model_states.pt")]
    if not models:
        checks.append(Finding("DeepSpeed model states", False, f"{tag}/ holds no *model_states.pt"))
        return checks
    checks.append(Finding("DeepSpeed model states", True, f"{len(models)} *model_states.pt file(s)"))
    ranks: dict[int, set[int]] = {}
    for name in files:
        found = _ZERO_OPTIMIZER.search(name)
        if found:
            ranks.setdefault(int(found[2]), set()).add(int(found[1]))
    for model_parallel, data_parallel in sorted(ranks.items()):
        gaps = sorted(set(range(max(data_parallel) + 1)) - data_parallel)
        if gaps:
            detail = f"model-parallel rank {model_parallel}: no optimizer shard for data-parallel rank(s) {gaps}"
            checks.append(Finding("DeepSpeed optimizer shards", False, detail))
    if ranks and len(checks) == 2:
        detail = "data-parallel ranks run from 0 without a gap (a missing last rank cannot be told)"
        checks.append(Finding("DeepSpeed optimizer shards", True, detail))
    return checks


RECOGNISERS: tuple[tuple[str, Recogniser], ...] = (
    ("NeMo", nemo_check),
    ("Orbax", _orbax),
    ("torch.distributed.checkpoint", _dcp),
    ("DeepSpeed", _deepspeed),
)
