"""What a commit tells the caller's code: its ``on_commit`` callback, and a background save's
failure while the caller's own exception propagates.  The same for a file and a directory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from ._errors import CommitCallbackError, UsageError

__all__ = ["check_on_commit", "close_while_unwinding", "notify"]


class _Published(Protocol):
    @property
    def target(self) -> str: ...


_PublishedT = TypeVar("_PublishedT", bound=_Published)


def check_on_commit(on_commit: object, result_type: str = "CommitResult") -> None:
    """Refuse an ``on_commit`` that cannot be called, before anything is written."""
    if on_commit is not None and not callable(on_commit):
        raise UsageError(f"on_commit must be a callable taking the {result_type}, not {on_commit!r}")


def notify(on_commit: Callable[[_PublishedT], object] | None, result: _PublishedT) -> None:
    """Tell ``on_commit`` about a committed file or directory.

    The write is committed whatever the callback does, so its exception is not let through as if
    the write had failed: it is raised as the cause of a `CommitCallbackError` that carries the
    result."""
    if on_commit is None:
        return
    try:
        on_commit(result)
    except Exception as exc:
        raise CommitCallbackError(
            f"{result.target!r} was committed, but its on_commit callback raised {exc!r}", result=result
        ) from exc


def close_while_unwinding(close: Callable[[], None], unwinding: BaseException, what: str) -> None:
    """Run ``close`` (which finishes background saves) while ``unwinding`` propagates: a save's
    failure then becomes a note on ``unwinding`` rather than masking it or being dropped."""
    try:
        close()
    except BaseException as failure:
        add_note = getattr(unwinding, "add_note", None)  # Python 3.11+
        if add_note is not None:
            add_note(f"atomicwrite: {what} failed as well: {failure!r}")
