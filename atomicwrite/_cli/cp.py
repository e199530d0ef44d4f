"""``atomicwrite cp``: copy any readable URL into an atomic write, streamed."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Mapping
from typing import Any

from .._api import atomic_open
from .._errors import UnsupportedTargetError
from .._result import CommitResult, Durability
from .._strategy import ProgressCallback, split_protocol

__all__ = ["copy", "destination_for"]

_CHUNK = 8 << 20


def destination_for(source: str, destination: str) -> str:
    """``destination``, or the source's base name inside it when it names a directory (a
    trailing ``/``, or an existing local directory)."""
    name = source.rstrip("/").rpartition("/")[2]
    if os.sep != "/":
        name = name.rpartition(os.sep)[2]
    protocol, _ = split_protocol(destination)
    local = protocol in ("", "file", "local")
    if destination.endswith("/") or (local and os.path.isdir(destination.removeprefix("file://"))):
        return destination.rstrip("/") + "/" + name
    return destination


def copy(
    source: str,
    destination: str,
    *,
    source_options: Mapping[str, Any] | None = None,
    destination_options: Mapping[str, Any] | None = None,
    exclusive: bool = False,
    durability: Durability = "full",
    accept_weaker_durability: bool = False,
    progress: Callable[[int | None], ProgressCallback] | None = None,
) -> CommitResult:
    """Copy ``source`` (any fsspec URL or path) to ``destination`` through
    [`atomic_open`][atomicwrite.atomic_open], chunk by chunk.

    ``progress``, if given, is called with the source's size (None if unknown) and returns the
    callback that atomic_open reports the bytes written or uploaded to.
    """
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(source, **dict(source_options or {}))
    except (ImportError, ValueError) as exc:
        raise UnsupportedTargetError(f"cannot read {source!r}: {exc}") from exc
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"cannot copy {source!r}: no such file or object", source) from None
    if info.get("type") == "directory":
        raise IsADirectoryError(errno.EISDIR, f"cannot copy {source!r}: it is a directory (cp copies files)", source)
    size = info.get("size")
    callback = progress(int(size) if size is not None else None) if progress is not None else None
    target = destination_for(source, destination)
    with (
        fs.open(path, "rb") as reader,
        atomic_open(
            target,
            "xb" if exclusive else "wb",
            durability=durability,
            accept_weaker_durability=accept_weaker_durability,
            storage_options=destination_options,
            progress=callback,
        ) as writer,
    ):
        while chunk := reader.read(_CHUNK):
            writer.write(chunk)
    result = writer.result
    assert result is not None
    return result
