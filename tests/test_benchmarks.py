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


def _curve_rows() -> list[Row]:
    return [
        Row("4 KiB", "ours", "raw", "ms", [1.0, 3.0, 2.0], [1.0], False, chart="local-size", x=4096.0),
        Row(
            "1 MiB", "ours", "raw", "ms", [4.0], [5.0], False, chart="local-size", x=float(1 << 20), others={"x": [6.0]}
        ),
        Row("no chart", "ours", "raw", "ms", [1.0], [1.0], False),
    ]


def test_chart_series_are_each_contenders_medians_by_size() -> None:
    from benchmarks import _plots

    assert _plots.series(_curve_rows()[:2]) == {
        "ours": [(4096.0, 2.0), (float(1 << 20), 4.0)],
        "raw": [(4096.0, 1.0), (float(1 << 20), 5.0)],
        "x": [(float(1 << 20), 6.0)],
    }
    assert set(_plots.CHARTS) >= {"local-size", "background", "s3-throughput", "s3-memory"}


def test_a_rendered_page_embeds_the_charts_drawn_beside_it(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    import dataclasses
    import json

    from benchmarks.__main__ import main

    saved = tmp_path / "results.json"
    info = {"CPU": "test"}
    rows = [dataclasses.asdict(row) for row in _curve_rows()]
    saved.write_text(
        json.dumps({"machine": info, "command": "python -m benchmarks", "seconds": 1.0, "rounds": 1, "rows": rows})
    )
    page = tmp_path / "site" / "bench.md"
    assert main(["--render", str(saved), "--output", str(page)]) == 0
    image = tmp_path / "site" / "bench" / "local-size.png"
    assert image.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert sorted(path.name for path in image.parent.iterdir()) == ["local-size.png"]
    text = page.read_text()
    assert "## Charts" in text
    assert "![Local durable write: cost against size](bench/local-size.png)" in text
    # A row without a target is still in the table.
    assert "| no chart |" in text


def test_a_quick_run_writes_no_page_and_no_charts(tmp_path: Path) -> None:
    docs = ROOT / "docs"
    before = {path: path.stat().st_mtime_ns for path in [docs / "benchmarks.md", *docs.glob("benchmarks/*")]}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--only",
            "background",
            "--rounds",
            "1",
            "--dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "written to" not in done.stderr
    after = {path: path.stat().st_mtime_ns for path in [docs / "benchmarks.md", *docs.glob("benchmarks/*")]}
    assert after == before
    assert list(tmp_path.iterdir()) == []


def test_size_curve_contenders_time_one_write_each_and_clean_up(tmp_path: Path) -> None:
    from benchmarks import sizes

    payload = b"x" * 4096
    timers = sizes.contenders(tmp_path, payload, 3)
    assert set(timers) == {"ours", "raw", "new", "overwrite"}
    for name, timer in timers.items():
        milliseconds = timer()
        assert milliseconds > 0, name
        assert list(tmp_path.iterdir()) == [], name
    assert sizes.repeats(4096) == 200
    assert sizes.repeats(1 << 30) == 1


def test_multi_file_checkpoint_contenders_write_every_shard_and_clean_up(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from benchmarks import shards

    state = {f"shard-{index}": torch.full((256,), float(index)) for index in range(3)}
    for name, timer in shards.contenders(tmp_path, state).items():
        assert timer() > 0, name
        assert list(tmp_path.iterdir()) == [], name


def test_checksum_rows_compare_each_installed_algorithm_with_sha256(tmp_path: Path) -> None:
    from benchmarks import s3_peers
    from benchmarks._harness import Context

    context = Context(tmp_path, quick=True, rounds=1, stream_size=0, torch_size=0, s3_size=0)
    rows = s3_peers.checksums(context)
    assert rows
    assert all(row.unit == "s/GiB" and row.ours_name.startswith("SHA-256") for row in rows)
    assert "SHA-256" in rows[0].notes[0]


def test_s3_peer_rows_judge_ours_against_every_peer() -> None:
    from benchmarks import s3_peers

    def sample(seconds: float, rss: int) -> dict[str, float]:
        return {"seconds": seconds, "cpu": seconds, "extra_rss": rss << 20}

    samples = {
        "ours": [sample(1.0, 40)],
        "obstore put": [sample(2.0, 100)],
        "obstore multipart": [sample(0.5, 30)],
        "boto3": [sample(1.0, 50)],
    }
    speed, memory = s3_peers._rows(64 << 20, 1, samples)
    assert (speed.chart, memory.chart, speed.x) == ("s3-throughput", "s3-memory", float(64 << 20))
    verdicts = {target.asks: target.met for target in speed.targets}
    assert verdicts == {
        ">= boto3 upload_fileobj (s3transfer) throughput": True,
        ">= obstore put (one PUT) throughput": True,
        ">= obstore put multipart (8 MiB x 4) throughput": False,
    }
    assert [target.met for target in memory.targets] == [True]


@pytest.mark.slow
def test_s3_peer_probes_upload_to_moto(tmp_path: Path) -> None:
    pytest.importorskip("moto")
    pytest.importorskip("obstore")
    from benchmarks import s3_peers
    from benchmarks._harness import probe
    from benchmarks.s3_upload import moto_server

    source = tmp_path / "payload.bin"
    source.write_bytes(b"p" * 4096)
    with moto_server() as endpoint:
        for name in s3_peers.CONTENDERS:
            result = probe(s3_peers.PROBE, name, endpoint, "4096", str(source), "2", timeout=120)
            assert result["seconds"] > 0, name


@pytest.mark.slow
def test_safetensors_probes_save_both_ways(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    from benchmarks import safetensors_save
    from benchmarks._harness import probe

    for name in ("ours", "theirs", "serialize"):
        path = tmp_path / f"{name}.safetensors"
        result = probe(safetensors_save.PROBE, name, str(path), str(64 << 10), str(16 << 10), timeout=120)
        assert result["bytes"] == 64 << 10, name
        assert not path.exists(), name
