"""Replay: materialize each crash state in a scratch directory, read the target back, judge it.

The oracles:

* ``a`` (atomic) -- at every crash point the target reads as the complete old content (for a new
  file: no file at all) or the complete new content; never missing, empty, torn or zero-filled;
* ``b`` (durable) -- at every crash point after the write call returned, the target is the
  complete new content;
* ``mode`` (faithful) -- the complete new content carries its final mode (the old file's, or
  ``0o666 & ~umask`` for a new one), and the old content its old mode: no window with wrong modes.

Which oracles a protocol claims is the test's business; the explorer reports every violation.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from tests._workers import verify
from tests.crashsim.model import CrashPoint, State, crash_points
from tests.crashsim.trace import Recording, describe

ORACLES = ("a", "b", "mode")
EXAMPLES = 3  # violations kept per oracle, for the failure message


@dataclass(frozen=True)
class Expectation:
    target: str  # the target's name in the directory
    old: bytes | None  # None: the target did not exist (exclusive create)
    new: bytes
    old_mode: int
    new_mode: int


@dataclass
class Violation:
    oracle: str
    crash_point: int
    after: str  # the last operation completed before the crash
    seen: str  # what the target read as
    files: str  # the whole directory, briefly

    def __str__(self) -> str:
        return (
            f"[{self.oracle}] crash after #{self.crash_point} {self.after}: target {self.seen}; on disk: {self.files}"
        )


@dataclass
class Counts:
    """What an exploration counted, and the violations it kept; the line the report prints."""

    label: str
    operations: int
    crash_points: int = 0
    combinations: int = 0  # choices enumerated, before merging identical states
    states: int = 0  # distinct states summed over crash points
    materialized: int = 0  # distinct states written out and read back
    violations: dict[str, int] = field(default_factory=dict)
    examples: list[object] = field(default_factory=list)  # EXAMPLES per oracle at most

    @property
    def failed(self) -> set[str]:
        return {oracle for oracle, count in self.violations.items() if count}

    def summary(self) -> str:
        broken = ", ".join(f"{oracle}: {count}" for oracle, count in sorted(self.violations.items()) if count)
        return (
            f"{self.label}: {self.operations} ops, {self.crash_points} crash points, "
            f"{self.states} states ({self.combinations} combinations, {self.materialized} distinct replayed); "
            f"violations: {broken or 'none'}"
        )

    def explain(self) -> str:
        return "\n".join([self.summary(), *map(str, self.examples)])

    def violated(self, oracle: str, found: str) -> bool:
        """Count a violation of ``oracle`` (the reader found ``found``); True for the first
        EXAMPLES of each oracle, whose example the caller keeps."""
        self.violations[oracle] += 1
        self.saw(oracle, found)
        return self.violations[oracle] <= EXAMPLES

    def saw(self, oracle: str, found: str) -> None:
        raise NotImplementedError


@dataclass
class Exploration(Counts):
    seen: dict[str, set[str]] = field(default_factory=dict)  # oracle -> what the target read as

    def saw(self, oracle: str, found: str) -> None:
        self.seen.setdefault(oracle, set()).add(found)


F = TypeVar("F")


class Point(Protocol):
    """A crash point of either model (:class:`.model.CrashPoint`, :class:`.tree.TreePoint`)."""

    index: int
    combinations: int
    states: set[Any]


P = TypeVar("P", bound=Point)


def replayed(
    result: Counts, points: Iterable[P], replay: Callable[[Any], F], scratch: Path, key: Callable[[Any], Any] | None
) -> Iterator[tuple[P, Any, F]]:
    """Every state of every crash point, counted into ``result``, with what ``replay`` found in
    it (each distinct state is replayed once; a point's states in the order ``key`` sorts them),
    for the caller to judge: ``(point, state, found)``.  ``scratch`` is removed at the end."""
    seen: dict[Any, F] = {}
    for point in points:
        result.crash_points += 1
        result.combinations += point.combinations
        result.states += len(point.states)
        for state in sorted(point.states, key=key):
            if state not in seen:
                seen[state] = replay(state)
            yield point, state, seen[state]
    result.materialized = len(seen)
    if scratch.exists():
        shutil.rmtree(scratch)


def after(show: Callable[[Any], str], ops: Sequence[object], k: int) -> str:
    """The last operation completed before a crash after ``ops[:k]``, as ``show`` writes it."""
    return show(ops[k - 1]) if k else "(nothing yet)"


def materialize(state: State, directory: Path) -> None:
    """Write ``state`` into ``directory`` (emptied first), with each file's content and mode."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    for name, content, mode in state:
        fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, content)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)


def read_target(directory: Path, expectation: Expectation) -> tuple[str, int | None]:
    """What the target reads as after the crash: ``(kind, mode)``.

    kind is "old", "new", "missing", "empty", "zero-filled (N B)", or "corrupt: why".
    """
    path = directory / expectation.target
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "missing", None
    mode = stat.S_IMODE(path.stat().st_mode)
    if data == expectation.new:
        return "new", mode
    if expectation.old is not None and data == expectation.old:
        return "old", mode
    if not data:
        return "empty", mode
    if data.count(0) == len(data):
        return f"zero-filled ({len(data)} B)", mode
    try:
        writer, seq = verify(data)
    except ValueError as exc:
        return f"corrupt: {exc}", mode
    return f"another complete version ({writer}, {seq})", mode


def _judge(kind: str, mode: int | None, point: CrashPoint, expectation: Expectation) -> list[str]:
    before = "old" if expectation.old is not None else "missing"
    failed = []
    if kind not in (before, "new"):
        failed.append("a")
    if point.after_return and kind != "new":
        failed.append("b")
    if (kind == "new" and mode != expectation.new_mode) or (kind == "old" and mode != expectation.old_mode):
        failed.append("mode")
    return failed


def _brief(state: State) -> str:
    return ", ".join(f"{name} ({len(content)} B, {mode:#o})" for name, content, mode in state) or "nothing"


def explore(recording: Recording, expectation: Expectation, label: str, scratch: Path) -> Exploration:
    """Check every crash state of ``recording`` against the oracles."""
    result = Exploration(label, len(recording.ops), violations=dict.fromkeys(ORACLES, 0))

    def replay(state: State) -> tuple[str, int | None]:
        materialize(state, scratch)
        return read_target(scratch, expectation)

    for point, state, (kind, mode) in replayed(result, crash_points(recording), replay, scratch, None):
        for oracle in _judge(kind, mode, point, expectation):
            if result.violated(oracle, kind):
                mode_text = "" if mode is None else f" {mode:#o}"
                last = after(describe, recording.ops, point.index)
                result.examples.append(Violation(oracle, point.index, last, kind + mode_text, _brief(state)))
    return result
