"""The benchmark harness: its statistics, its report, and one tiny end-to-end run.

No timing is asserted here (the machines are shared and noisy); the numbers live in
docs/benchmarks.md, written by ``python -m benchmarks``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import _report
from benchmarks.__main__ import WORKLOADS, _size
from benchmarks._harness import Row, Target, alternate, alternate_many, iqr, ratio_target
from tests._workers import ROOT


def test_alternate_swaps_who_goes_first_after_a_warmup() -> None:
    calls: list[str] = []

    def ours() -> float:
        calls.append("ours")
        return 1.0

    def baseline() -> float:
        calls.append("base")
        return 2.0

    mine, theirs = alternate(4, ours, baseline)
    assert calls == ["ours", "base", "ours", "base", "base", "ours", "ours", "base", "base", "ours"]
    assert mine == [1.0] * 4
    assert theirs == [2.0] * 4


def test_alternate_many_runs_every_order() -> None:
    calls: list[str] = []
    contenders = {name: (lambda name=name: calls.append(name) or name) for name in "abc"}
    samples = alternate_many(6, contenders, warmup=False)
    orders = ["".join(calls[index : index + 3]) for index in range(0, 18, 3)]
    # Six rounds of three: all six orders, so each contender follows each other one equally.
    assert sorted(orders) == ["abc", "acb", "bac", "bca", "cab", "cba"]
    assert orders[0] == "abc"
    assert samples == {"a": ["a"] * 6, "b": ["b"] * 6, "c": ["c"] * 6}


def test_iqr_and_ratios() -> None:
    assert iqr([1.0, 2.0, 3.0]) == (1.0, 3.0)
    assert iqr([1.0, 2.0, 3.0, 4.0, 5.0]) == (2.0, 4.0)
    time_row = Row("w", "ours", "base", "ms/op", [1.2, 1.2, 1.2], [1.0, 1.0, 1.0], higher_is_better=False)
    assert time_row.ratio == pytest.approx(1.2)
    assert time_row.speedup == pytest.approx(1 / 1.2)
    assert ratio_target(time_row, 1.1, at_least=False, what="t", why_not="slow").met is False
    assert ratio_target(time_row, 1.3, at_least=False, what="t").met is True
    speed_row = Row("w", "ours", "base", "MiB/s", [98.0], [100.0], higher_is_better=True)
    target = ratio_target(speed_row, 0.97, at_least=True, what="throughput", why_not="disk")
    assert (target.met, target.measured, target.why_not) == (True, "0.980x", "")


def test_the_report_says_which_targets_are_met_and_why_not(tmp_path: Path) -> None:
    met = Row("fast row", "ours", "base", "ms", [1.0, 1.1], [2.0, 2.1], False, [Target("t1", "0.5x", True)])
    missed = Row("slow row", "ours", "base", "ms", [3.0], [2.0], False, [Target("t2", "1.5x", False, "the disk")])
    absent = Row("torch row", "ours", "base", "s", [1.0], [1.0], False, [Target("t3", "torch not installed", None)])
    text = _report.table([met, missed, absent])
    assert "fast row" in text
    assert "NOT met" in text
    info = _report.machine(tmp_path)
    assert set(info) >= {"CPU", "cores", "RAM", "file system of the bench directory", "kernel", "python"}
    page = _report.markdown([met, missed, absent], info, "python -m benchmarks", 60.0, 7)
    assert "| fast row |" in page
    assert "**slow row**, t2 (measured 1.5x): the disk." in page
    # A target that could not be measured says so; it is neither met nor missed.
    assert "| t3 | torch not installed | not measured |" in page
    assert "torch row**" not in page


def test_sizes_parse() -> None:
    assert _size("512M") == 512 << 20
    assert _size("1G") == 1 << 30
    assert _size("64MiB") == 64 << 20
    assert _size("4096") == 4096


def test_every_workload_has_a_name_and_a_run() -> None:
    names = [module.NAME for module in WORKLOADS]
    assert len(set(names)) == len(names)
    assert all(callable(module.run) for module in WORKLOADS)


def test_quick_run_of_one_row_writes_its_report(tmp_path: Path) -> None:
    output = tmp_path / "report.md"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks", "--quick", "--only", "batch", "--rounds", "1"),
            *("--dir", str(tmp_path), "--output", str(output)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "4 KiB durable x100 files" in done.stdout
    assert "ops/s >= 1.7x" in done.stdout
    page = output.read_text()
    assert "## Machine" in page
    assert "4 KiB durable x100 files" in page
    # The run cleans up after itself: nothing but the report is left.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["report.md"]
