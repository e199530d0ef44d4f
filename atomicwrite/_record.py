"""Small immutable value classes without ``dataclasses``.

Importing ``dataclasses`` (and the ``inspect`` it pulls in) and building a class with it costs
about a third of this package's import time, paid by every program that imports it; the few
value classes here need only equality, hashing, a readable repr and immutability.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = ["Record"]


class Record:
    """Base of a frozen value class: subclasses list their attributes in ``_fields`` and set
    them in ``__init__`` straight into ``self.__dict__`` (``__setattr__`` refuses; every write
    builds two of these, so not even a helper call is spent on it)."""

    _fields: ClassVar[tuple[str, ...]] = ()

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._fields)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: cannot assign to {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: cannot delete {name!r}")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Record)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self).__name__, *self._values()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__name__}({fields})"
