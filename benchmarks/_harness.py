"""What every workload shares: alternating runs, medians and spreads, targets, subprocess probes.

A workload module defines ``NAME`` (for ``--only``), ``TITLE`` and ``run(context) -> list[Row]``.
Each row holds the samples of our code and of one baseline, measured alternately in the same
run, and the targets judged from them.  Only ratios measured side by side mean anything on a
shared, noisy machine; absolute numbers are printed for context.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MiB = 1 << 20
GiB = 1 << 30
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Context:
    """Where and how hard to run: ``quick`` shrinks sizes and rounds for a smoke run."""

    directory: Path
    quick: bool
    rounds: int
    stream_size: int
    torch_size: int
    s3_size: int


def spread_subdirectories(directory: Path) -> bool:
    """Ask ext4 to place each new subdirectory of ``directory`` in a block group of its own (the
    ``T`` attribute, as ``chattr +T`` sets it), as it does for top-level directories.

    Without it, every workload's directory lands in the same group, and a row's new files are
    allocated among the inodes that the rows before it freed: on ext4 without a journal, every
    inode freed in the last minute or more is skipped, one by one, which made creating a file
    cost 50-200 us instead of 10 us after the 4 KiB rows.  True if the attribute was set; False on
    other systems and file systems, where it does not apply.
    """
    if sys.platform != "linux":
        return False
    import array
    import fcntl

    get_flags, set_flags, topdir = 0x80086601, 0x40086602, 0x00020000  # FS_IOC_*FLAGS, FS_TOPDIR_FL
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags = array.array("i", [0])
        fcntl.ioctl(fd, get_flags, flags, True)
        flags[0] |= topdir
        fcntl.ioctl(fd, set_flags, flags, True)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


@dataclass
class Target:
    """One target of a row: what it asks, what was measured, whether it is met, and why not."""

    asks: str
    measured: str
    met: bool | None  # None: not measured in this run
    why_not: str = ""


@dataclass
class Row:
    workload: str
    ours_name: str
    baseline_name: str
    unit: str
    ours: list[float]
    baseline: list[float]
    higher_is_better: bool
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # For the charts (benchmarks/_plots.py): the chart this row's medians are drawn on, its x
    # (a size in bytes), and the samples of further contenders measured in the same alternation.
    chart: str = ""
    x: float = 0.0
    others: dict[str, list[float]] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """ours / baseline, of the medians, in the row's unit."""
        return median(self.ours) / median(self.baseline)

    @property
    def speedup(self) -> float:
        """How many times faster ours is (> 1: faster), whatever the unit's direction."""
        return self.ratio if self.higher_is_better else 1 / self.ratio


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def iqr(samples: list[float]) -> tuple[float, float]:
    """The interquartile range (25th..75th percentile); min..max with fewer than 4 samples."""
    if len(samples) < 4:
        return min(samples), max(samples)
    quartiles = statistics.quantiles(samples, n=4, method="inclusive")
    return quartiles[0], quartiles[2]


def relative_spread(samples: list[float]) -> float:
    low, high = iqr(samples)
    return (high - low) / median(samples)


def alternate(
    rounds: int, ours: Callable[[], float], baseline: Callable[[], float], *, warmup: bool = True
) -> tuple[list[float], list[float]]:
    """Run both ``rounds`` times, alternating which goes first, after one warm-up each."""
    if warmup:
        ours()
        baseline()
    mine: list[float] = []
    theirs: list[float] = []
    for index in range(rounds):
        if index % 2:
            theirs.append(baseline())
            mine.append(ours())
        else:
            mine.append(ours())
            theirs.append(baseline())
    return mine, theirs


def alternate_many(
    rounds: int, contenders: dict[str, Callable[[], Any]], *, warmup: bool = True
) -> dict[str, list[Any]]:
    """Like `alternate` for several contenders: each round runs them all, in a changing order.

    Rotating one order keeps every contender behind the same neighbour in every round, so what
    one leaves behind (freed memory, writeback) always lands on the same other.  Every second
    round runs the rotation backwards: each contender follows both of its neighbours, and with
    three contenders six rounds run all six orders.
    """
    names = list(contenders)
    if warmup:
        for name in names:
            contenders[name]()
    samples: dict[str, list[Any]] = {name: [] for name in names}
    for index in range(rounds):
        shift = (index // 2) % len(names)
        order = names[shift:] + names[:shift]
        if index % 2:
            order.reverse()
        for name in order:
            samples[name].append(contenders[name]())
    return samples


def ratio_target(row: Row, bound: float, *, at_least: bool, what: str, why_not: str = "") -> Target:
    """A target on ``row.ratio``: ``at_least`` bound (throughput) or at most bound (time)."""
    met = row.ratio >= bound if at_least else row.ratio <= bound
    sign = ">=" if at_least else "<="
    return Target(f"{what} {sign} {bound:g}x", f"{row.ratio:.3f}x", met, "" if met else why_not)


def timed(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


# A probe runs one contender in a fresh interpreter and reports, as one JSON line, its wall time,
# its CPU time (all threads) and its peak RSS above what it held just before the timed part (VmHWM reset through
# /proc/self/clear_refs, Linux 4.0+).
PROBE_PRELUDE = r"""
import json, os, sys, time

def _status(key):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)

def measure(function, **extra):
    import gc
    gc.collect()
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    before = _status("VmRSS")
    cpu = time.process_time()
    start = time.perf_counter()
    function()
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu
    peak = _status("VmHWM")
    print(json.dumps({"seconds": seconds, "cpu": cpu, "extra_rss": max(0, peak - before), **extra}), flush=True)
"""


def probe(code: str, *args: str, timeout: float = 600) -> dict[str, Any]:
    """Run ``PROBE_PRELUDE + code`` in a fresh interpreter (our checkout first on the path)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-c", PROBE_PRELUDE + code, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"benchmark probe failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def same_code_gap(first: list[float], second: list[float]) -> float:
    """How far apart two runs of the *same* code came out (A/A), as a ratio of medians' distance
    from 1: the gap this machine shows with no difference at all."""
    return abs(median(second) / median(first) - 1)


def noise_reason(row: Row, gap: float) -> str:
    """Why a ratio target was missed, judged against the A/A gap measured in the same run."""
    if abs(row.ratio - 1) <= gap:
        return (
            f"within this machine's noise: the baseline run against itself in the same alternation came"
            f" out {gap:.1%} apart, more than ours differs from it ({abs(row.ratio - 1):.1%})"
        )
    return f"ours differs by {abs(row.ratio - 1):.1%}, more than the baseline against itself ({gap:.1%})"


def spread_reason(row: Row) -> str:
    """Why a target was missed, judged against the spread of the two sides' samples."""
    ours_low, ours_high = iqr(row.ours)
    base_low, base_high = iqr(row.baseline)
    if ours_low <= base_high and base_low <= ours_high:
        return (
            f"the medians are {abs(row.ratio - 1):.1%} apart but the two sides' spreads overlap"
            f" ([{ours_low:.3g}..{ours_high:.3g}] against [{base_low:.3g}..{base_high:.3g}] {row.unit}):"
            " not a difference this run can resolve"
        )
    return f"a difference of {abs(row.ratio - 1):.1%}, outside both sides' spreads"
