"""The charts beside the tables: one PNG per chart named by the rows (``Row.chart``), each line a
contender's medians against the rows' x (a size in bytes).

matplotlib is imported here only, when a page is written: the table runs without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ._harness import MiB, Row, median


@dataclass(frozen=True)
class Chart:
    title: str
    y_label: str
    # A time per write against size also gets a panel of the throughput it makes (x / time).
    throughput_panel: bool = False
    # "symlog" where a contender can measure 0 (no extra memory), which a log scale cannot show.
    y_scale: str = "log"


CHARTS = {
    "local-size": Chart("Local durable write: cost against size", "time per write (ms)", throughput_panel=True),
    "background": Chart("torch save: time the caller is blocked, against checkpoint size", "blocked (s)"),
    "s3-throughput": Chart("S3 upload (moto on loopback): throughput against size", "MiB/s"),
    "s3-memory": Chart(
        "S3 upload (moto on loopback): peak extra RSS against size", "MiB above the start", y_scale="symlog"
    ),
}

_SECONDS_PER_UNIT = {"ms": 1e-3, "s": 1.0}


def series(rows: list[Row]) -> dict[str, list[tuple[float, float]]]:
    """Each contender's (x, median) points over ``rows``, sorted by x; a contender measured in
    several rows at one x (ours against each baseline) keeps its first."""
    points: dict[str, dict[float, float]] = {}
    for row in rows:
        named = {row.ours_name: row.ours, row.baseline_name: row.baseline, **row.others}
        for name, samples in named.items():
            points.setdefault(name, {}).setdefault(row.x, median(samples))
    return {name: sorted(by_x.items()) for name, by_x in points.items()}


def _size_label(size: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:g} {unit}"
    return f"{size:g} B"


def write(rows: list[Row], directory: Path) -> dict[str, Path]:
    """Draw every chart the rows name into ``directory``; returns chart name -> PNG path."""
    grouped: dict[str, list[Row]] = {}
    for row in rows:
        if row.chart:
            grouped.setdefault(row.chart, []).append(row)
    if not grouped:
        return {}
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    written: dict[str, Path] = {}
    directory.mkdir(parents=True, exist_ok=True)
    for name, charted in grouped.items():
        chart = CHARTS[name]
        lines = series(charted)
        unit_seconds = _SECONDS_PER_UNIT.get(charted[0].unit)
        panels = 2 if chart.throughput_panel and unit_seconds is not None else 1
        figure, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.5), squeeze=False)
        sizes = sorted({row.x for row in charted})
        for contender, points in lines.items():
            xs = [x for x, _ in points]
            axes[0][0].plot(xs, [y for _, y in points], marker="o", label=contender)
            if panels == 2 and unit_seconds is not None:
                throughput = [x / MiB / (y * unit_seconds) for x, y in points]
                axes[0][1].plot(xs, throughput, marker="o", label=contender)
        axes[0][0].set_ylabel(chart.y_label)
        if chart.y_scale == "symlog":
            axes[0][0].set_yscale("symlog", linthresh=1.0)
        else:
            axes[0][0].set_yscale(chart.y_scale)
        if panels == 2:
            axes[0][1].set_ylabel("MiB/s")
            axes[0][1].set_yscale("log")
        for axis in axes[0]:
            axis.set_xscale("log", base=2)
            axis.set_xticks(sizes, [_size_label(size) for size in sizes], rotation=30)
            axis.minorticks_off()
            axis.set_xlabel("size")
            axis.grid(True, which="major", alpha=0.3)
        axes[0][0].legend(fontsize="small")
        figure.suptitle(chart.title)
        figure.tight_layout()
        path = directory / f"{name}.png"
        # No timestamp in the file, so a re-render of the same results makes the same bytes.
        figure.savefig(path, dpi=90, metadata={"Software": None})
        plt.close(figure)
        written[name] = path
    return written
