"""Serializers for [`atomic_save`][atomicwrite.atomic_save], by name.

Builtin: ``"bytes"``, ``"text"``, ``"json"``, ``"pickle"``.  Other packages add theirs through
the ``atomicwrite.serializers`` entry-point group (an entry point names a
[`Serializer`][atomicwrite.Serializer] or a plain ``(obj, fileobj) -> None`` callable), or at
run time with [`register_serializer`][atomicwrite.register_serializer].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Any

from ._errors import SerializerNotFoundError, UsageError
from ._record import Record

__all__ = ["ENTRY_POINT_GROUP", "Serializer", "freeze", "get_serializer", "register_serializer"]

ENTRY_POINT_GROUP = "atomicwrite.serializers"


class Serializer(Record):
    """How to write an object to a file (and, for [`atomic_update`][atomicwrite.atomic_update], read it back).

    Attributes:
        name: the name [`atomic_save`][atomicwrite.atomic_save] knows it by.
        dump: writes ``obj`` to the open file, streaming: ``dump(obj, fileobj)``.
        load: reads an object back from an open file, or None if this serializer cannot.
        binary: whether ``dump`` and ``load`` take binary (True) or text (False) files.
        encoding: the text encoding used when the caller gives none (text serializers only).
        snapshot: for a write made later, in another thread (a background
            [`CheckpointStore.save_async`][atomicwrite.CheckpointStore.save_async]): returns a
            copy of ``obj`` that ``dump`` can write and that later changes to ``obj`` do not
            reach, cheaper than serializing it (tensors are copied to CPU memory, ``bytes`` kept
            as they are).  None: the object is serialized to bytes up front instead.
    """

    name: str
    dump: Callable[[Any, IO[Any]], None]
    load: Callable[[IO[Any]], Any] | None
    binary: bool
    encoding: str | None
    snapshot: Callable[[Any], Any] | None
    _fields = ("name", "dump", "load", "binary", "encoding", "snapshot")

    def __init__(
        self,
        name: str,
        dump: Callable[[Any, IO[Any]], None],
        load: Callable[[IO[Any]], Any] | None = None,
        binary: bool = True,
        encoding: str | None = None,
        *,
        snapshot: Callable[[Any], Any] | None = None,
    ) -> None:
        self.__dict__.update(name=name, dump=dump, load=load, binary=binary, encoding=encoding, snapshot=snapshot)


def _dump_bytes(obj: Any, file: IO[Any]) -> None:
    if not isinstance(obj, (bytes, bytearray, memoryview)):
        raise UsageError(f"the 'bytes' serializer needs a bytes-like object, not {type(obj).__name__}")
    file.write(obj)


def _frozen_bytes(obj: Any) -> bytes:
    if isinstance(obj, bytes):
        return obj  # immutable: nothing can change it before it is written
    if not isinstance(obj, (bytearray, memoryview)):
        raise UsageError(f"the 'bytes' serializer needs a bytes-like object, not {type(obj).__name__}")
    return bytes(obj)


def _dump_text(obj: Any, file: IO[Any]) -> None:
    if not isinstance(obj, str):
        raise UsageError(f"the 'text' serializer needs a str, not {type(obj).__name__}")
    file.write(obj)


def _frozen_text(obj: Any) -> str:
    if not isinstance(obj, str):
        raise UsageError(f"the 'text' serializer needs a str, not {type(obj).__name__}")
    return obj


def _read(file: IO[Any]) -> Any:
    return file.read()


def _dump_json(obj: Any, file: IO[Any]) -> None:
    import json

    json.dump(obj, file, ensure_ascii=False, indent=2)
    file.write("\n")


def _load_json(file: IO[Any]) -> Any:
    import json

    return json.load(file)


def _dump_pickle(obj: Any, file: IO[Any]) -> None:
    import pickle

    pickle.dump(obj, file, protocol=pickle.HIGHEST_PROTOCOL)


def _load_pickle(file: IO[Any]) -> Any:
    import pickle

    return pickle.load(file)  # noqa: S301 - reading back what this process's caller wrote


_REGISTRY: dict[str, Serializer] = {}


def register_serializer(serializer: Serializer, *, replace: bool = False) -> None:
    """Make ``serializer`` available to [`atomic_save`][atomicwrite.atomic_save] under its name."""
    if serializer.name in _REGISTRY and not replace:
        raise UsageError(f"a serializer named {serializer.name!r} is already registered")
    _REGISTRY[serializer.name] = serializer


_BYTES = Serializer("bytes", _dump_bytes, _read, binary=True, snapshot=_frozen_bytes)

for _builtin in (
    _BYTES,
    Serializer("text", _dump_text, _read, binary=False, encoding="utf-8", snapshot=_frozen_text),
    Serializer("json", _dump_json, _load_json, binary=False, encoding="utf-8"),
    Serializer("pickle", _dump_pickle, _load_pickle, binary=True),
):
    register_serializer(_builtin)


def _from_entry_point(name: str) -> Serializer | None:
    from importlib.metadata import entry_points

    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name == name:
            loaded = entry_point.load()
            if isinstance(loaded, Serializer):
                return loaded
            if callable(loaded):
                return Serializer(name, loaded)
            raise UsageError(f"entry point {entry_point.value!r} is neither a Serializer nor callable")
    return None


def get_serializer(serializer: str | Serializer | Callable[[Any, IO[bytes]], None]) -> Serializer:
    """Look a serializer up by name, or wrap a ``(obj, fileobj) -> None`` callable (binary)."""
    if isinstance(serializer, Serializer):
        return serializer
    if isinstance(serializer, str):
        found = _REGISTRY.get(serializer)
        if found is None:
            found = _from_entry_point(serializer)
            if found is None:
                known = ", ".join(sorted(_REGISTRY))
                raise SerializerNotFoundError(
                    f"no serializer named {serializer!r} (known: {known}; others come from the"
                    f" {ENTRY_POINT_GROUP!r} entry-point group)"
                )
            _REGISTRY[serializer] = found
        return found
    if callable(serializer):
        return Serializer(getattr(serializer, "__name__", repr(serializer)), serializer)
    raise UsageError(f"serializer must be a name, a Serializer or a callable, not {type(serializer).__name__}")


def freeze(serializer: Serializer, obj: Any) -> tuple[Serializer, Any]:
    """What to hand a write made later, from another thread, so that it writes ``obj`` as it is
    now: ``serializer`` with its snapshot of ``obj``, or, for a serializer without one, the
    ``"bytes"`` serializer with ``obj`` serialized now (bytes are a snapshot too)."""
    if serializer.snapshot is not None:
        return serializer, serializer.snapshot(obj)
    import io

    buffer = io.BytesIO()
    if serializer.binary:
        serializer.dump(obj, buffer)
    else:
        # As atomic_open's text mode writes it: the serializer's encoding, newlines translated.
        text = io.TextIOWrapper(buffer, encoding=serializer.encoding or "utf-8")
        serializer.dump(obj, text)
        text.flush()
        text.detach()
    return _BYTES, buffer.getvalue()
