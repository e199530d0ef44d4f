"""Run the benchmarks: ``python -m benchmarks [--quick] [--only NAME ...]`` (or ``nox -s bench``).

One module per workload (see benchmarks/_harness.py for what a module provides).  Each row runs
our code and its baseline alternately, several rounds, and reports the medians, the spread
(interquartile range) and their ratio; the table is printed and, for a full run of every
workload, written to docs/benchmarks.md with the machine described.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import (
    _plots,
    _report,
    background,
    batch,
    directory,
    import_time,
    peers,
    s3_peers,
    s3_upload,
    safetensors_save,
    shards,
    sizes,
    small_replace,
    streamed,
    torch_checkpoint,
)
from ._harness import ROOT, Context, MiB, Row, Target, spread_subdirectories

WORKLOADS = (
    streamed,
    sizes,
    small_replace,
    peers,
    batch,
    directory,
    shards,
    torch_checkpoint,
    safetensors_save,
    background,
    s3_upload,
    s3_peers,
    import_time,
)


def _size(text: str) -> int:
    """``512M``, ``1G`` or a byte count."""
    units = {"K": 1 << 10, "M": MiB, "G": 1 << 30}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def _command(arguments: list[str]) -> str:
    """The command line as the report shows it: where raw results were kept is nobody's business."""
    shown: list[str] = []
    skip = False
    for argument in arguments:
        if skip:
            skip = False
        elif argument in ("--save", "--output", "--dir"):
            skip = True
        elif not argument.startswith(("--save=", "--output=", "--dir=")):
            shown.append(argument)
    return shlex.join(["python", "-m", "benchmarks", *shown])


def _methods() -> dict[str, str]:
    """Each workload's docstring: how it is measured, for the report."""
    return {module.TITLE: (module.__doc__ or "").strip() for module in WORKLOADS}


def _row(saved: dict[str, Any]) -> Row:
    return Row(**{**saved, "targets": [Target(**target) for target in saved["targets"]]})


def _charts(rows: list[Row], page: Path) -> dict[str, str]:
    """Draw the charts into a folder named after the page (docs/benchmarks/ for
    docs/benchmarks.md), only when the page itself is written; their paths relative to it."""
    folder = page.parent / page.stem
    page.parent.mkdir(parents=True, exist_ok=True)
    return {name: f"{folder.name}/{path.name}" for name, path in _plots.write(rows, folder).items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and smaller sizes (a smoke run)")
    parser.add_argument(
        "--only", nargs="+", choices=[module.NAME for module in WORKLOADS], help="run only these workloads"
    )
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir in .)")
    parser.add_argument(
        "--size",
        type=_size,
        default=None,
        help="streamed size, and the largest of the size curve (default 1G; --quick 64M)",
    )
    parser.add_argument(
        "--torch-size",
        type=_size,
        default=None,
        help="state dict size, torch and safetensors (default 1G; --quick 64M)",
    )
    parser.add_argument("--s3-size", type=_size, default=None, help="S3 object size (default 512M; --quick 32M)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per row (default 7; --quick 3)")
    parser.add_argument(
        "--output", type=Path, default=None, help="markdown report (default: docs/benchmarks.md on a full run)"
    )
    parser.add_argument("--save", type=Path, default=None, help="also keep the raw results (JSON) here")
    parser.add_argument("--render", type=Path, default=None, help="only re-render the report from --save results")
    args = parser.parse_args(argv)
    if args.render is not None:
        saved = json.loads(args.render.read_text())
        rows = [_row(row) for row in saved["rows"]]
        print(_report.table(rows))
        output = args.output or ROOT / "docs" / "benchmarks.md"
        command = _command(shlex.split(saved["command"])[3:])
        charts = _charts(rows, output)
        page = _report.markdown(rows, saved["machine"], command, saved["seconds"], saved["rounds"], _methods(), charts)
        output.write_text(page)
        return 0
    quick = args.quick
    rounds = args.rounds or (3 if quick else 7)
    selected = [module for module in WORKLOADS if not args.only or module.NAME in args.only]
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir or Path.cwd(), prefix=".bench-") as name:
        directory = Path(name)
        spread = spread_subdirectories(directory)
        context = Context(
            directory=directory,
            quick=quick,
            rounds=rounds,
            stream_size=args.size or (64 * MiB if quick else 1 << 30),
            torch_size=args.torch_size or (64 * MiB if quick else 1 << 30),
            s3_size=args.s3_size or (32 * MiB if quick else 512 * MiB),
        )
        info = _report.machine(directory)
        if spread:
            info["file system of the bench directory"] += "; each workload's directory in a block group of its own"
        for module in selected:
            print(f"running {module.TITLE}...", file=sys.stderr, flush=True)
            rows += module.run(context)
    seconds = time.perf_counter() - started
    print(_report.table(rows))
    output = args.output
    if output is None and not quick and not args.only:
        output = ROOT / "docs" / "benchmarks.md"
    command = _command(argv if argv is not None else sys.argv[1:])
    if output is not None:
        charts = _charts(rows, output)
        output.write_text(_report.markdown(rows, info, command, seconds, rounds, _methods(), charts))
        print(f"written to {output}", file=sys.stderr)
    if args.save is not None:
        saved = {"machine": info, "command": command, "seconds": seconds, "rounds": rounds}
        args.save.write_text(json.dumps({**saved, "rows": [dataclasses.asdict(row) for row in rows]}, indent=1))
    met = [target.met for row in rows for target in row.targets if target.met is not None]
    print(f"{sum(met)} of {len(met)} targets met in {seconds / 60:.1f} minutes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
