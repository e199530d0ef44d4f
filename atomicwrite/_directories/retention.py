"""Retention policies for a [`CheckpointStore`][atomicwrite.CheckpointStore]: which generations to keep.

Each policy looks at the published generations with their metadata and names the ones it wants
kept; the store keeps what *any* policy keeps, plus what it must never delete (the generation
``latest`` names, the one this process resumed from, pinned ones, anything newer than
``latest``).  A policy never deletes anything itself, so policies compose by union.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from .._errors import UsageError

__all__ = ["GenerationInfo", "KeepBest", "KeepEvery", "KeepLatest", "RetentionPolicy", "judges", "rank_by_metric"]


@dataclass(frozen=True)
class GenerationInfo:
    """What a policy knows of one generation.

    ``timestamp`` is the wall-clock time the save started (None when the manifest cannot be
    read); ``metrics`` are the values given to ``save(metrics=...)``.
    """

    name: str
    step: int
    timestamp: float | None
    metrics: Mapping[str, float] = field(default_factory=dict, hash=False)


@runtime_checkable
class RetentionPolicy(Protocol):
    """Given the generations (oldest first), the names of those to keep.

    A policy may also define ``judges(generation) -> bool``: whether it has a say about that
    generation at all (without it, every one).  A generation is removed only when some policy
    judges it and none keeps it.
    """

    def select(self, generations: Sequence[GenerationInfo]) -> set[str]: ...


def judges(policy: RetentionPolicy, generation: GenerationInfo) -> bool:
    """Whether ``policy`` has a say about ``generation``."""
    method = getattr(policy, "judges", None)
    return True if method is None else bool(method(generation))


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{what} must be a positive int, not {value!r}")
    return value


@dataclass(frozen=True)
class KeepLatest:
    """Keep the newest ``n`` generations (by step)."""

    n: int

    def __post_init__(self) -> None:
        _positive_int(self.n, "KeepLatest's n")

    def select(self, generations: Sequence[GenerationInfo]) -> set[str]:
        newest = sorted(generations, key=lambda g: g.step)[-self.n :]
        return {g.name for g in newest}


@dataclass(frozen=True)
class KeepEvery:
    """Keep every generation whose step is a multiple of ``steps``, or the first generation
    (by the save's timestamp) of each ``seconds``-long window of wall-clock time.

    Exactly one of the two is given; combine two policies for both.  Windows start at the Unix
    epoch, so a generation kept once stays kept as older ones are removed.
    """

    steps: int | None = None
    seconds: float | None = None

    def __post_init__(self) -> None:
        if (self.steps is None) == (self.seconds is None):
            raise UsageError("KeepEvery takes exactly one of steps= or seconds=")
        if self.steps is not None:
            _positive_int(self.steps, "KeepEvery's steps")
        if self.seconds is not None and (
            isinstance(self.seconds, bool)
            or not isinstance(self.seconds, int | float)
            or not math.isfinite(self.seconds)
            or self.seconds <= 0
        ):
            raise UsageError(f"KeepEvery's seconds must be a positive number, not {self.seconds!r}")

    def select(self, generations: Sequence[GenerationInfo]) -> set[str]:
        if self.steps is not None:
            return {g.name for g in generations if g.step % self.steps == 0}
        assert self.seconds is not None
        first: dict[int, GenerationInfo] = {}
        for g in generations:
            if g.timestamp is None:
                continue
            window = math.floor(g.timestamp / self.seconds)
            held = first.get(window)
            if held is None or (g.timestamp, g.step) < (held.timestamp or 0.0, held.step):
                first[window] = g
        return {g.name for g in first.values()}


@dataclass(frozen=True)
class KeepBest:
    """Keep the ``n`` generations with the best value of ``metric`` (lowest for ``mode="min"``,
    highest for ``"max"``); of equal values the older wins.

    A generation saved without the metric is never among the best, and this policy has no say
    about it: with KeepBest alone it is kept, next to other policies theirs decides."""

    n: int
    metric: str
    mode: Literal["min", "max"] = "min"

    def __post_init__(self) -> None:
        _positive_int(self.n, "KeepBest's n")
        if not isinstance(self.metric, str) or not self.metric:
            raise UsageError(f"KeepBest's metric must be a non-empty str, not {self.metric!r}")
        if self.mode not in ("min", "max"):
            raise UsageError(f"KeepBest's mode must be 'min' or 'max', not {self.mode!r}")

    def select(self, generations: Sequence[GenerationInfo]) -> set[str]:
        return {g.name for g in rank_by_metric(generations, self.metric, self.mode)[: self.n]}

    def judges(self, generation: GenerationInfo) -> bool:
        return _finite(generation.metrics.get(self.metric))


def rank_by_metric(
    generations: Sequence[GenerationInfo], metric: str, mode: Literal["min", "max"]
) -> list[GenerationInfo]:
    """The generations that recorded ``metric``, best first (of equal values, the older first)."""
    sign = 1.0 if mode == "min" else -1.0
    scored = [g for g in generations if _finite(g.metrics.get(metric))]
    return sorted(scored, key=lambda g: (sign * float(g.metrics[metric]), g.step))


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
