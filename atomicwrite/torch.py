"""Crash-safe PyTorch checkpoints: save, validate, load, and find the newest good one.

```python
import atomicwrite.torch as awt

awt.save(model.state_dict(), "ckpt/step-1000.pt")          # or "s3://bucket/run/step-1000.pt"
state = awt.load(awt.latest_valid("ckpt/"), map_location="cpu")
```

`save` streams ``torch.save`` straight into an atomic write: no copy of the checkpoint is held
in memory (each tensor's storage is one write to the temp file or upload), and a save that fails,
or a process killed half way, leaves the previous checkpoint in place.  `validate` tells a
complete checkpoint from a torn (truncated) file and from the *footer-only* zip that
``torch.save`` leaves in a plain file when pickling raises.

torch is imported only when a function here is called, so ``import atomicwrite.torch`` works
without it.  The module also provides the ``"torch"``, ``"numpy"`` and ``"safetensors"``
serializers of [`atomic_save`][atomicwrite.atomic_save], registered as entry points; the last two
need numpy or safetensors only when used.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import shutil
import struct
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, Literal

from ._api import Target, atomic_open
from ._errors import AtomicWriteError, UsageError
from ._result import CommitResult, Durability
from ._serializers import Serializer
from ._strategy import WriteOptions, resolve_target, split_protocol

__all__ = [
    "DEFAULT_PATTERNS",
    "CheckpointError",
    "ValidationResult",
    "latest_valid",
    "load",
    "numpy_serializer",
    "safetensors_serializer",
    "save",
    "serializer",
    "validate",
]

#: File names `latest_valid` considers checkpoints unless told otherwise.
DEFAULT_PATTERNS: tuple[str, ...] = ("*.pt", "*.pth", "*.ckpt")

_COPY_CHUNK = 8 << 20
_LOCAL_PROTOCOLS = ("", "file", "local")

#: Why a checkpoint is (not) valid: ``"ok"``; ``"missing"``: no such file or object;
#: ``"torn"``: it starts like a zip but has no intact central directory (cut short: a copy or
#: a non-atomic writer that died); ``"footer-only"``: a zip that torch.save finished without
#: ``data.pkl`` (pickling raised while saving into a plain file); ``"corrupt"``: a record's
#: CRC-32 does not match or a record cannot be read; ``"not-a-checkpoint"``: not a zip, or a zip
#: without torch's records (including the legacy pre-1.6 format); ``"unloadable"``: the
#: structure is sound but ``torch.load`` failed (``full=True`` only).
Reason = Literal["ok", "missing", "torn", "footer-only", "corrupt", "not-a-checkpoint", "unloadable"]


class CheckpointError(AtomicWriteError):
    """A checkpoint failed validation: ``reason`` (see `ValidationResult`) says how."""

    def __init__(self, message: str, *, result: ValidationResult) -> None:
        super().__init__(message)
        self.result = result
        self.reason: Reason = result.reason
        self.target = result.target


@dataclass(frozen=True)
class ValidationResult:
    """What `validate` found.  True in a boolean context exactly when the checkpoint is valid.

    Attributes:
        target: the path or URL checked.
        valid: whether it is a complete checkpoint.
        reason: ``"ok"`` or why not (see `Reason`).
        detail: a human-readable explanation.
        loaded: whether a full ``torch.load(weights_only=True)`` was run and succeeded
            (``full=True``; False when the checkpoint holds objects that weights-only loading
            refuses, in which case only its structure and CRCs were verified).
    """

    target: str
    valid: bool
    reason: Reason
    detail: str = ""
    loaded: bool = False

    def __bool__(self) -> bool:
        return self.valid


# --- save ---------------------------------------------------------------------------------


def save(
    obj: Any,
    target: Target,
    *,
    storage_options: Mapping[str, Any] | None = None,
    durability: Durability = "full",
    **torch_save_kwargs: Any,
) -> CommitResult:
    """``torch.save(obj, ...)`` into an all-or-nothing write of ``target`` (a path or URL).

    The checkpoint is streamed to the temp file (or the multipart upload): memory stays at
    about one storage's worth, never a second copy of the checkpoint.  If pickling raises, or
    the process dies, ``target`` keeps its previous content.  ``torch_save_kwargs`` go to
    ``torch.save`` (``pickle_module``, ``pickle_protocol``...); the legacy non-zip format
    (``_use_new_zipfile_serialization=False``) is refused, since `validate` cannot check it.
    """
    if torch_save_kwargs.get("_use_new_zipfile_serialization", True) is False:
        raise UsageError(
            "atomicwrite.torch.save writes torch's zip format only (the one validate() can check);"
            " drop _use_new_zipfile_serialization=False"
        )
    import torch

    with atomic_open(target, "wb", durability=durability, storage_options=storage_options) as file:
        torch.save(obj, file, **torch_save_kwargs)
    assert file.result is not None
    return file.result


# --- where a target lives -------------------------------------------------------------------


def _is_local(target: Target) -> bool:
    protocol, _ = split_protocol(os.fspath(target))
    return protocol in _LOCAL_PROTOCOLS


def _local_path(target: Target) -> str:
    _, location = resolve_target(target)
    return location


def _filesystem(target: Target, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    """The fsspec file system of a URL and the path on it."""
    from ._objectstore import ObjectStoreStrategy

    strategy, location = resolve_target(target)
    if isinstance(strategy, ObjectStoreStrategy):
        fs = strategy.filesystem(WriteOptions(storage_options=dict(storage_options or {})))
    else:
        from fsspec.core import url_to_fs

        fs, _ = url_to_fs(location, **dict(storage_options or {}))
    return fs, fs._strip_protocol(location)


@contextlib.contextmanager
def _local_copy(target: Target, storage_options: Mapping[str, Any] | None) -> Iterator[str]:
    """A local path holding ``target``: the path itself, or a temp copy of an object, streamed."""
    if _is_local(target):
        yield _local_path(target)
        return
    fs, path = _filesystem(target, storage_options)
    name = path.rpartition("/")[2] or "checkpoint"
    fd, temp = tempfile.mkstemp(prefix=".atomicwrite-torch-", suffix="-" + name[-64:])
    try:
        with os.fdopen(fd, "wb") as out, fs.open(path, "rb") as source:
            shutil.copyfileobj(source, out, _COPY_CHUNK)
        yield temp
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp)


# --- validate ------------------------------------------------------------------------------


def _torch_records(names: Sequence[str]) -> bool:
    """Whether a zip's record names look like torch.save's (``<archive>/version`` etc.)."""
    return any(name.count("/") >= 1 and name.split("/", 1)[1] in ("version", "byteorder") for name in names)


def _check_zip(file: IO[bytes], target: str) -> ValidationResult:  # noqa: PLR0911 - one return per verdict
    head = file.read(4)
    file.seek(0)
    if not head:
        return ValidationResult(target, False, "torn", "the file is empty")
    try:
        archive = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, struct.error) as exc:
        if head == b"PK\x03\x04":
            return ValidationResult(target, False, "torn", f"no intact zip central directory (truncated?): {exc}")
        return ValidationResult(target, False, "not-a-checkpoint", f"not a zip file: {exc}")
    with archive:
        names = archive.namelist()
        if not any(name.count("/") == 1 and name.endswith("/data.pkl") for name in names):
            if _torch_records(names):
                return ValidationResult(
                    target,
                    False,
                    "footer-only",
                    "a torch zip without data.pkl: torch.save raised while pickling and wrote only its footer",
                )
            return ValidationResult(target, False, "not-a-checkpoint", "a zip file without torch's data.pkl record")
        try:
            bad = archive.testzip()
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, struct.error, zlib.error) as exc:
            return ValidationResult(target, False, "corrupt", f"a record cannot be read: {exc}")
        if bad is not None:
            return ValidationResult(target, False, "corrupt", f"record {bad!r} fails its CRC-32 check")
    return ValidationResult(target, True, "ok", "zip directory, data.pkl and every record's CRC-32 verified")


def _full_load(path: str, result: ValidationResult) -> ValidationResult:
    import pickle

    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc) or "Weights only" in str(exc):
            # Objects torch will not load without running arbitrary code: the structure and
            # CRCs were verified, the pickle itself cannot be, safely.
            return ValidationResult(result.target, True, "ok", result.detail + "; not weights-only loadable")
        return ValidationResult(result.target, False, "unloadable", f"torch.load failed: {exc}")
    except Exception as exc:  # any failure to load is the answer
        return ValidationResult(result.target, False, "unloadable", f"torch.load failed: {type(exc).__name__}: {exc}")
    return ValidationResult(result.target, True, "ok", result.detail + "; torch.load(weights_only=True) ok", True)


def _validate_local(path: str, target: str, full: bool) -> ValidationResult:
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed just below
    except FileNotFoundError:
        return ValidationResult(target, False, "missing", "no such file")
    except IsADirectoryError:
        return ValidationResult(target, False, "not-a-checkpoint", "a directory, not a file")
    with file:
        result = _check_zip(file, target)
    if full and result.valid:
        result = _full_load(path, result)
    return result


def validate(
    target: Target, *, full: bool = False, storage_options: Mapping[str, Any] | None = None
) -> ValidationResult:
    """Check that ``target`` holds a complete torch checkpoint, without unpickling anything.

    Checks that the zip central directory is present and parseable, that a ``<archive>/data.pkl``
    record exists, and that every record's CRC-32 matches (this reads the whole file).  With
    ``full=True`` it also runs ``torch.load(weights_only=True, mmap=True)`` (a URL is first
    copied to a local temp file).  Returns a `ValidationResult`, true exactly when the
    checkpoint is valid, whose ``reason`` tells a torn file from a footer-only one.
    """
    text = os.fspath(target)
    if _is_local(target):
        return _validate_local(_local_path(target), text, full)
    if full:
        try:
            with _local_copy(target, storage_options) as path:
                return _validate_local(path, text, full)
        except FileNotFoundError:
            return ValidationResult(text, False, "missing", "no such object")
    fs, path = _filesystem(target, storage_options)
    try:
        file = fs.open(path, "rb")
    except FileNotFoundError:
        return ValidationResult(text, False, "missing", "no such object")
    with file:
        return _check_zip(file, text)


# --- load ----------------------------------------------------------------------------------


def load(
    target: Target,
    *,
    map_location: Any = None,
    weights_only: bool | None = None,
    mmap: bool | None = None,
    verify: bool = True,
    storage_options: Mapping[str, Any] | None = None,
) -> Any:
    """``torch.load`` a checkpoint from a path or URL, after checking it is complete.

    A local file is loaded from its path, so ``mmap=True`` works.  An object (``s3://``...) is
    streamed to a temp file in the local temp directory, loaded from there and deleted, so it
    never sits in memory as a whole.  With ``verify`` (the default) `validate` runs first and a
    torn, footer-only or corrupt checkpoint raises `CheckpointError` instead of a confusing
    unpickling error; a missing one raises ``FileNotFoundError``.  ``map_location``,
    ``weights_only`` and ``mmap`` are passed to ``torch.load`` when given (torch's defaults
    otherwise: ``weights_only=True`` since torch 2.6).
    """
    if mmap and not _is_local(target) and sys.platform == "win32":
        raise UsageError("mmap=True on a URL needs a temp file that can be deleted while mapped (not on Windows)")
    import torch

    kwargs: dict[str, Any] = {}
    if map_location is not None:
        kwargs["map_location"] = map_location
    if weights_only is not None:
        kwargs["weights_only"] = weights_only
    if mmap is not None:
        kwargs["mmap"] = mmap
    text = os.fspath(target)
    try:
        with _local_copy(target, storage_options) as path:
            if verify:
                result = _validate_local(path, text, full=False)
                if result.reason == "missing":
                    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), text)
                if not result.valid:
                    raise CheckpointError(
                        f"{text!r} is not a complete checkpoint ({result.reason}): {result.detail}", result=result
                    )
            return torch.load(path, **kwargs)
    except FileNotFoundError as exc:
        if exc.filename is None:
            exc.filename = text
        raise


# --- latest_valid ---------------------------------------------------------------------------


def _patterns(pattern: str | Sequence[str]) -> tuple[str, ...]:
    items = pattern.split("|") if isinstance(pattern, str) else list(pattern)
    found = tuple(item.strip() for item in items if item.strip())
    if not found:
        raise UsageError(f"pattern must name at least one glob pattern, not {pattern!r}")
    return found


def _is_temp(name: str) -> bool:
    from ._local import parse_temp_name

    return name.startswith(".atomicwrite-torch-") or parse_temp_name(name) is not None


def _local_candidates(location: str, patterns: tuple[str, ...]) -> list[tuple[float, str, str]]:
    if os.path.isdir(location):
        directory, prefix = location, ""
    else:
        directory, prefix = os.path.split(location)
        directory = directory or "."
    found: list[tuple[float, str, str]] = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        name = entry.name
        if not name.startswith(prefix) or _is_temp(name) or not any(fnmatch.fnmatch(name, p) for p in patterns):
            continue
        try:
            if not entry.is_file():
                continue
            mtime = entry.stat().st_mtime_ns / 1e9
        except FileNotFoundError:
            continue
        found.append((mtime, name, entry.path))
    return found


def _remote_candidates(
    target: str, patterns: tuple[str, ...], storage_options: Mapping[str, Any] | None
) -> list[tuple[float, str, str]]:
    from ._objectstore import _modified

    fs, path = _filesystem(target, storage_options)
    stripped = path.rstrip("/")
    if target.endswith("/") or fs.isdir(stripped):
        directory, prefix, base = stripped, "", target.rstrip("/")
    else:
        directory, _, prefix = stripped.rpartition("/")
        base = target.rpartition("/")[0]
    try:
        listing: list[dict[str, Any]] = fs.ls(directory, detail=True)
    except FileNotFoundError:
        return []
    found: list[tuple[float, str, str]] = []
    for info in listing:
        if info.get("type", "file") != "file":
            continue
        key = str(info["name"]).rstrip("/")
        name = key.rpartition("/")[2]
        if not name.startswith(prefix) or _is_temp(name) or not any(fnmatch.fnmatch(name, p) for p in patterns):
            continue
        found.append((_modified(info), name, f"{base}/{name}"))
    return found


def latest_valid(
    directory_or_prefix: Target,
    pattern: str | Sequence[str] = DEFAULT_PATTERNS,
    *,
    full: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> str | None:
    """The newest checkpoint under ``directory_or_prefix`` that `validate` accepts, or None.

    ``directory_or_prefix`` is a directory (``"ckpt/"``, ``"s3://bucket/run/"``) or a name
    prefix in one (``"ckpt/step-"``).  ``pattern`` is a glob or several (a sequence, or one
    string joined by ``|``: ``"*.ckpt|*.pt"``) that file names must match.  Candidates are tried
    newest first, by modification time (``LastModified`` on object stores), and torn,
    footer-only or corrupt ones are skipped.  Temp files of writes in progress are never
    candidates.  Returns a path for a local location, a URL for an object store.
    """
    patterns = _patterns(pattern)
    text = os.fspath(directory_or_prefix)
    if _is_local(text):
        candidates = _local_candidates(_local_path(text), patterns)
    else:
        candidates = _remote_candidates(text, patterns, storage_options)
    for _, _, location in sorted(candidates, reverse=True):
        if validate(location, full=full, storage_options=storage_options):
            return location
    return None


# --- serializers for atomic_save -------------------------------------------------------------


def _dump_torch(obj: Any, file: IO[Any]) -> None:
    import torch

    torch.save(obj, file)


def _load_torch(file: IO[Any]) -> Any:
    import torch

    return torch.load(file)


def _dump_numpy(obj: Any, file: IO[Any]) -> None:
    import numpy as np

    np.save(file, obj, allow_pickle=False)


def _load_numpy(file: IO[Any]) -> Any:
    import numpy as np

    return np.load(file, allow_pickle=False)


def _is_torch_tensor(value: Any) -> bool:
    module = type(value).__module__
    return module == "torch" or module.startswith("torch.")


def _dump_safetensors(obj: Any, file: IO[Any]) -> None:
    if not isinstance(obj, Mapping) or not obj:
        raise UsageError("the 'safetensors' serializer needs a non-empty dict of name -> tensor (or numpy array)")
    tensors = dict(obj)
    if all(_is_torch_tensor(value) for value in tensors.values()):
        from safetensors.torch import save as save_torch

        file.write(save_torch(tensors))
    else:
        from safetensors.numpy import save as save_numpy

        file.write(save_numpy(tensors))


def _load_safetensors(file: IO[Any]) -> Any:
    data = file.read()
    try:
        import torch  # noqa: F401 - chooses the tensor type
    except ImportError:
        from safetensors.numpy import load as load_numpy

        return load_numpy(data)
    from safetensors.torch import load as load_torch

    return load_torch(data)


#: ``atomic_save(obj, path, "torch")``: ``torch.save``, streamed; read back with torch's default
#: ``torch.load`` (``weights_only=True`` since torch 2.6).
serializer = Serializer("torch", _dump_torch, _load_torch, binary=True)

#: ``atomic_save(array, path, "numpy")``: ``np.save`` / ``np.load`` with ``allow_pickle=False``.
numpy_serializer = Serializer("numpy", _dump_numpy, _load_numpy, binary=True)

#: ``atomic_save(tensors, path, "safetensors")``: a dict of torch tensors or numpy arrays in the
#: safetensors format (read back as torch tensors when torch is installed).  safetensors builds
#: the whole file in memory before it is written, unlike the other serializers here.
safetensors_serializer = Serializer("safetensors", _dump_safetensors, _load_safetensors, binary=True)
