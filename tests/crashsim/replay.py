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
from dataclasses import dataclass, field
from pathlib import Path

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
class Exploration:
    label: str
    operations: int
    crash_points: int = 0
    combinations: int = 0  # choices enumerated, before merging identical states
    states: int = 0  # distinct states summed over crash points
    materialized: int = 0  # distinct states written out and read back
    violations: dict[str, int] = field(default_factory=dict)
    examples: list[Violation] = field(default_factory=list)
    seen: dict[str, set[str]] = field(default_factory=dict)  # oracle -> what the target read as

    @property
    def failed(self) -> set[str]:
        return {oracle for oracle, count in self.violations.items() if count}

    def summary(self) -> str:
        broken = ", ".join(f"{oracle}: {self.violations[oracle]}" for oracle in ORACLES if self.violations.get(oracle))
        return (
            f"{self.label}: {self.operations} ops, {self.crash_points} crash points, "
            f"{self.states} states ({self.combinations} combinations, {self.materialized} distinct replayed); "
            f"violations: {broken or 'none'}"
        )

    def explain(self) -> str:
        return "\n".join([self.summary(), *map(str, self.examples)])


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
    seen: dict[State, tuple[str, int | None]] = {}
    for point in crash_points(recording):
        result.crash_points += 1
        result.combinations += point.combinations
        result.states += len(point.states)
        after = describe(recording.ops[point.index - 1]) if point.index else "(nothing yet)"
        for state in sorted(point.states):
            if state not in seen:
                materialize(state, scratch)
                seen[state] = read_target(scratch, expectation)
            kind, mode = seen[state]
            mode_text = "" if mode is None else f" {mode:#o}"
            for oracle in _judge(kind, mode, point, expectation):
                result.violations[oracle] += 1
                result.seen.setdefault(oracle, set()).add(kind)
                if sum(example.oracle == oracle for example in result.examples) < EXAMPLES:
                    result.examples.append(Violation(oracle, point.index, after, kind + mode_text, _brief(state)))
    result.materialized = len(seen)
    if scratch.exists():
        shutil.rmtree(scratch)
    return result
