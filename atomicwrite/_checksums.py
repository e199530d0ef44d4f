"""The checksums a write can compute on the way out, and how to ask for one.

An object-store write hashes its bytes once, as the caller writes them, with one algorithm: the
digest goes to the store with the publishing request where the store validates that algorithm
(so a corrupted upload is refused instead of published), into the
[`CommitResult`][atomicwrite.CommitResult] and into a directory's manifest.  Which algorithm:

* ``"crc64nvme"`` and ``"crc32c"``: a tenth of SHA-256's CPU per GiB.  They need ``awscrt``
  (the ``s3`` extra) or, for CRC32C, ``google-crc32c`` with its C code (the ``gcs`` extra).
* ``"crc32"``: zlib's, always available, about half of SHA-256's cost.
* ``"sha256"``, ``"md5"``: hashlib's, for users who need them by name.

A CRC detects any torn, truncated or bit-flipped upload, which is what the check is for; it
does not resist someone who forges content on purpose (SHA-256 does).
"""

from __future__ import annotations

import hashlib
import importlib
import zlib
from collections.abc import Callable, Iterable
from typing import Any, Literal, Protocol

from ._errors import UsageError

__all__ = [
    "AUTO",
    "CHECKSUMS",
    "FASTEST_CRCS",
    "ChecksumChoice",
    "Digest",
    "available",
    "check_choice",
    "first_available",
    "new_digest",
]

#: Every algorithm a write can be asked for, fastest first.
CHECKSUMS: tuple[str, ...] = ("crc64nvme", "crc32c", "crc32", "sha256", "md5")
#: The default: the fastest checksum the target's store validates (see each store).
AUTO: Literal["auto"] = "auto"
#: What ``"auto"`` records where nothing validates a checksum on arrival (local directory
#: manifests, Azure, ``memory://``): the fastest CRC installed; zlib's CRC32 always is.
FASTEST_CRCS: tuple[str, ...] = ("crc64nvme", "crc32c", "crc32")
ChecksumChoice = Literal["auto", "crc64nvme", "crc32c", "crc32", "sha256", "md5"]


class Digest(Protocol):
    """A running checksum: ``update`` with each chunk, then ``digest`` once."""

    name: str

    def update(self, data: Any, /) -> None: ...

    def digest(self) -> bytes: ...


class _Crc:
    """A CRC kept as an integer, updated by a function ``(data, previous) -> crc``."""

    __slots__ = ("_crc", "_extend", "_width", "name")

    def __init__(self, name: str, extend: Callable[[Any, int], int], width: int) -> None:
        self.name = name
        self._extend = extend
        self._width = width
        self._crc = 0

    def update(self, data: Any, /) -> None:
        self._crc = self._extend(data, self._crc)

    def digest(self) -> bytes:
        # Big-endian, as S3's x-amz-checksum-* and GCS's X-Goog-Hash carry them.
        return self._crc.to_bytes(self._width, "big")


class _Hashlib:
    __slots__ = ("_hash", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._hash = hashlib.new(name, usedforsecurity=False)

    def update(self, data: Any, /) -> None:
        self._hash.update(data)

    def digest(self) -> bytes:
        return self._hash.digest()


def _module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _crc_function(name: str) -> Callable[[Any, int], int] | None:
    """The fastest installed implementation of CRC ``name``, or None."""
    crt = _module("awscrt.checksums")
    if name == "crc64nvme":
        crc64: Callable[[Any, int], int] | None = None if crt is None else crt.crc64nvme
        return crc64
    if name == "crc32c":
        if crt is not None:
            crc32c: Callable[[Any, int], int] = crt.crc32c
            return crc32c
        google = _module("google_crc32c")
        # The pure-Python fallback of google-crc32c costs more than the upload it would check.
        if google is not None and getattr(google, "implementation", "") == "c":
            return lambda data, crc: int(google.extend(crc, bytes(data)))
        return None
    return zlib.crc32


_CRCS: dict[str, Callable[[Any, int], int] | None] = {}
_PACKAGES = {"crc64nvme": "awscrt (pip install 'atomicwrite[s3]')", "crc32c": "awscrt or google-crc32c"}


def available(name: str) -> bool:
    """Whether ``name`` can be computed here (its library is installed)."""
    if name in ("sha256", "md5"):
        return True
    if name not in _CRCS:
        _CRCS[name] = _crc_function(name)
    return _CRCS[name] is not None


def new_digest(name: str) -> Digest:
    """A running checksum of algorithm ``name`` (one of `CHECKSUMS`, available here)."""
    if name in ("sha256", "md5"):
        return _Hashlib(name)
    if not available(name):
        raise UsageError(f"checksum={name!r} needs {_PACKAGES[name]}, which is not installed")
    extend = _CRCS[name]
    assert extend is not None
    return _Crc(name, extend, 8 if name == "crc64nvme" else 4)


def first_available(names: Iterable[str]) -> str:
    """The first of ``names`` that can be computed here (the last one always can)."""
    names = tuple(names)
    return next((name for name in names if available(name)), names[-1])


def check_choice(value: object) -> str | None:
    """``value`` as a checksum choice (an algorithm, ``"auto"`` or None), or UsageError."""
    if value is None or value == AUTO:
        return value
    if not isinstance(value, str) or value not in CHECKSUMS:
        choices = ", ".join(repr(name) for name in (AUTO, *CHECKSUMS))
        raise UsageError(f"checksum must be one of {choices} or None, not {value!r}")
    if not available(value):
        raise UsageError(f"checksum={value!r} needs {_PACKAGES[value]}, which is not installed")
    return value
