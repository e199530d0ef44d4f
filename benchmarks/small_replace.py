"""4 KiB durable replace, many times in a row, against the floor: the same two fsyncs in plain os calls.

The floor writes a named temp, fsyncs it, renames it over the target and fsyncs the directory;
ours adds what the guarantees need (symlink resolution, the old mode, an O_TMPFILE temp named
through /proc, its version).  500 replaces per sample; CPU time per op is reported beside.  After
the alternation, both run once more under cProfile: the note lists where ours spends its extra
CPU time per op, function by function (the profiler inflates every Python call, so the sum exceeds the
unprofiled difference; the order is what it tells).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from atomicwrite import atomic_open

from ._harness import Context, Row, alternate_many, median, noise_reason, ratio_target, same_code_gap, timed

NAME = "small"
TITLE = "4 KiB durable replace"
SIZE = 4096


def raw_replace(directory: Path, payload: bytes) -> None:
    """The floor for a durable replace: write, fsync, rename, fsync the directory."""
    temp = directory / ".raw.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, payload)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temp, directory / "raw.bin")
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def ours_replace(target: Path, payload: bytes) -> None:
    with atomic_open(target, "wb") as file:
        file.write(payload)


def count(context: Context) -> int:
    return 50 if context.quick else 500


def run(context: Context) -> list[Row]:
    directory = context.directory / "small"
    directory.mkdir()
    payload = os.urandom(SIZE)
    times = count(context)
    target = directory / "ours.bin"

    # CPU time per op (user + system, the flushes' waiting excluded): what the protocol's extra
    # calls and the Python around them cost, apart from the disk.
    cpu: dict[str, list[float]] = {"ours": [], "raw": []}

    def measured(name: str, write: Callable[[], None]) -> float:
        started = time.process_time()
        seconds = timed(lambda: [write() for _ in range(times)])
        cpu[name].append((time.process_time() - started) / times * 1e6)
        return seconds / times * 1e3

    def ours() -> float:
        return measured("ours", lambda: ours_replace(target, payload))

    def baseline() -> float:
        return measured("raw", lambda: raw_replace(directory, payload))

    # The baseline runs twice per round (A/A): how far apart identical code comes out here.
    samples = alternate_many(
        context.rounds,
        {"ours": ours, "raw": baseline, "raw again": lambda: measured("raw", lambda: raw_replace(directory, payload))},
    )
    mine, theirs = samples["ours"], samples["raw"]
    gap = same_code_gap(theirs, samples["raw again"])
    row = Row(f"4 KiB durable replace x{times}", "atomic_open", "raw 2-fsync protocol", "ms/op", mine, theirs, False)
    ours_cpu, raw_cpu = median(cpu["ours"]), median(cpu["raw"])
    row.notes.append(
        f"4 KiB replace: CPU time per op (user + system) ours {ours_cpu:.0f} us, raw {raw_cpu:.0f} us:"
        f" {ours_cpu - raw_cpu:+.0f} us, i.e. {(ours_cpu - raw_cpu) / (median(theirs) * 1e3):+.1%} of the raw op's"
        " wall time"
    )
    extra_cpu = (ours_cpu - raw_cpu) / (median(theirs) * 1e3)
    why_not = (
        f"{noise_reason(row, gap)}; ours spends {ours_cpu - raw_cpu:+.0f} us of CPU per op beyond the plain calls"
        f" ({extra_cpu:+.1%} of the raw op's wall time: the guarantees' extra calls and the Python around them),"
        " which a busy machine stretches"
    )
    row.targets.append(ratio_target(row, 1.10, at_least=False, what="time per op", why_not=why_not))
    row.notes.append(f"4 KiB replace: the baseline against itself (A/A) came out {gap:.1%} apart")
    row.notes.append(breakdown(lambda: ours_replace(target, payload), lambda: raw_replace(directory, payload), times))
    return [row]


def _own_time_per_call(write: Callable[[], None], times: int) -> dict[str, float]:
    """Microseconds of own CPU time per op, by function, under cProfile."""
    import cProfile
    import pstats
    import re

    profile = cProfile.Profile(time.process_time)
    profile.enable()
    for _ in range(times):
        write()
    profile.disable()
    per_function: dict[str, float] = {}
    stats: dict[tuple[str, int, str], tuple[int, int, float, float, object]] = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    for (filename, line, function), (_, _, own, _, _) in stats.items():
        where = (
            re.sub(r" at 0x[0-9a-f]+", "", function)
            if filename == "~"
            else f"{Path(filename).parent.name}/{Path(filename).name}:{line}({function})"
        )
        per_function[where] = per_function.get(where, 0.0) + own / times * 1e6
    return per_function


def breakdown(ours: Callable[[], None], raw: Callable[[], None], times: int) -> str:
    """Where ours' extra time per op goes, by function: a profiled run of each, compared."""
    mine, theirs = _own_time_per_call(ours, times), _own_time_per_call(raw, times)
    extra = {name: mine.get(name, 0.0) - theirs.get(name, 0.0) for name in mine.keys() | theirs.keys()}
    top = sorted(extra.items(), key=lambda item: -item[1])[:10]
    return (
        f"4 KiB replace, profiled CPU time: ours {sum(mine.values()):.0f} us/op, raw {sum(theirs.values()):.0f}"
        " us/op; the largest differences in own CPU time per op: "
        + ", ".join(f"`{name}` {value:+.1f} us" for name, value in top)
    )
