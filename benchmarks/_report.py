"""The table printed at the end of a run, and docs/benchmarks.md with the machine described."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from ._harness import Row, Target, iqr, median

PACKAGES = (
    *("atomicwrite", "atomicwrites", "safer", "boltons", "torch", "lightning", "safetensors", "s3fs", "fsspec"),
    *("moto", "boto3", "obstore", "awscrt", "google-crc32c", "matplotlib"),
)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _filesystem(directory: Path) -> str:
    """The bench directory's file system type, with its mount options and, for ext4, whether it
    has a journal: without one, fsync and inode allocation behave differently (see the notes)."""
    try:
        kind = subprocess.run(
            ["df", "--output=fstype", str(directory)], capture_output=True, text=True, check=True
        ).stdout.split()[-1]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "unknown"
    # The mount holding the directory: the longest mount point that is a prefix of its path.
    resolved = str(directory.resolve())
    mounts = [line.split() for line in _read("/proc/self/mounts").splitlines()]
    holding = [
        fields for fields in mounts if len(fields) >= 4 and (resolved + "/").startswith(fields[1].rstrip("/") + "/")
    ]
    if not holding:
        return kind
    device, _, _, options = max(holding, key=lambda fields: len(fields[1]))[:4]
    detail = f"mounted {options}"
    if kind == "ext4":
        # A journaled ext4 file system has a jbd2 entry named after its device.
        journals = _listdir("/proc/fs/jbd2")
        name = os.path.basename(device)
        has_journal = any(entry.startswith(name + "-") for entry in journals)
        detail = ("journaled" if has_journal else "no journal") + ", " + detail
    return f"{kind} ({detail})"


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def machine(directory: Path) -> dict[str, str]:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines() if "model name" in line), ""
    )
    memory = next((line.split()[1] for line in _read("/proc/meminfo").splitlines() if line.startswith("MemTotal")), "")
    filesystem = _filesystem(directory)
    versions = []
    for package in PACKAGES:
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    return {
        "CPU": cpu or platform.processor() or "unknown",
        "cores": str(os.cpu_count()),
        "RAM": f"{int(memory) / (1 << 20):.1f} GiB" if memory else "unknown",
        "file system of the bench directory": filesystem,
        "kernel": f"{platform.system()} {platform.release()}",
        "load average at the start (1, 5, 15 min)": " ".join(_read("/proc/loadavg").split()[:3]) or "unknown",
        "python": sys.version.split()[0],
        "packages": ", ".join(versions),
    }


def _cell(samples: list[float], unit: str) -> str:
    low, high = iqr(samples)
    digits = 3 if median(samples) < 10 else 1
    return f"{median(samples):.{digits}f} {unit} [{low:.{digits}f}..{high:.{digits}f}]"


def _verdict(target: Target) -> str:
    """A row without a target (measured empty) gets no verdict; an unmeasured one says so."""
    if target.met is None:
        return "not measured" if target.measured else ""
    return "met" if target.met else "NOT met"


def table(rows: list[Row]) -> str:
    header = ("workload", "ours (median [IQR])", "baseline (median [IQR])", "ratio", "target", "measured", "")
    lines = [header]
    for row in rows:
        for index, target in enumerate(row.targets or [None]):  # type: ignore[list-item]
            first = index == 0
            lines.append(
                (
                    row.workload if first else "",
                    _cell(row.ours, row.unit) if first else "",
                    f"{_cell(row.baseline, row.unit)} {row.baseline_name}" if first else "",
                    f"{row.ratio:.3f}x" if first else "",
                    target.asks if target else "",
                    target.measured if target else "",
                    _verdict(target) if target else "",
                )
            )
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
    padded = ("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False)) for line in lines)
    return "\n".join(line.rstrip() for line in padded)


def markdown(
    rows: list[Row],
    info: dict[str, str],
    command: str,
    seconds: float,
    rounds: int,
    methods: dict[str, str] | None = None,
    charts: dict[str, str] | None = None,
) -> str:
    """The page; ``charts`` maps a chart's name to its image's path relative to the page."""
    out = [
        "# Benchmarks",
        "",
        "<!-- Written by `python -m benchmarks` (`nox -s bench`); edit benchmarks/, not this file. -->",
        "",
        "Each row runs our code and its baseline alternately in the same run, several rounds, and",
        "reports medians with their interquartile range (min..max below four samples) and the ratio",
        "of the medians (ours / baseline, in the row's unit).  The machines are shared and noisy:",
        "only ratios measured side by side mean anything; absolute numbers are for context.",
        "",
        f"Command: `{command}` ({rounds} rounds per row unless the row says otherwise; the whole run",
        f"took {seconds / 60:.1f} minutes).",
        "",
        "## Machine",
        "",
        *(f"- **{key}**: {value}" for key, value in info.items()),
        "",
        "## Results",
        "",
        f"{sum(1 for row in rows for t in row.targets if t.met)} of"
        f" {sum(1 for row in rows for t in row.targets if t.met is not None)} measured targets met in this run.",
        "",
        "| workload | ours | baseline | ratio | target | measured | |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for index, target in enumerate(row.targets or [Target("no target: see the notes", "", None)]):
            first = index == 0
            out.append(
                "| "
                + " | ".join(
                    (
                        row.workload if first else "",
                        f"{_cell(row.ours, row.unit)} ({row.ours_name})" if first else "",
                        f"{_cell(row.baseline, row.unit)} ({row.baseline_name})" if first else "",
                        f"{row.ratio:.3f}x" if first else "",
                        target.asks,
                        target.measured,
                        _verdict(target),
                    )
                ).replace("|  |", "| |")
                + " |"
            )
    if charts:
        from ._plots import CHARTS

        out += ["", "## Charts", ""]
        for name, image in charts.items():
            out += [f"![{CHARTS[name].title}]({image})", ""]
        out.pop()
    missed = [(row, target) for row in rows for target in row.targets if target.met is False]
    out += ["", "## Targets not met", ""]
    if not missed:
        out.append("Every measured target was met in this run.")
    for row, target in missed:
        out.append(
            f"- **{row.workload}**, {target.asks} (measured {target.measured}): {target.why_not or 'see below'}."
        )
    notes = [note for row in rows for note in row.notes]
    if notes:
        out += ["", "## Notes", "", *(f"- {note}" for note in notes)]
    if methods:
        out += ["", "## How each workload is measured", ""]
        out += [f"- **{title}**: {' '.join(text.split())}" for title, text in methods.items()]
    out.append("")
    return "\n".join(out)
