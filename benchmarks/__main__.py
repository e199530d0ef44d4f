"""Run the benchmarks: ``python -m benchmarks [--quick]`` (or ``nox -s bench``).

Each row runs our code and its baseline alternately, several rounds, and reports the medians,
the spread (min..max) and their ratio.  The machines are noisy, so only ratios measured side by
side in the same run mean anything; absolute times are printed for context.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from atomicwrite import atomic_directory, atomic_open

MiB = 1 << 20


@dataclass
class Row:
    workload: str
    ours: list[float]
    baseline_name: str
    baseline: list[float]
    unit: str
    higher_is_better: bool

    def ratio(self) -> float:
        ours, base = statistics.median(self.ours), statistics.median(self.baseline)
        return ours / base if self.higher_is_better else base / ours


def alternate(rounds: int, ours: Callable[[], float], baseline: Callable[[], float]) -> tuple[list[float], list[float]]:
    """Run both ``rounds`` times, alternating which goes first, after one warm-up each."""
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


def raw_replace(directory: Path, payload: bytes) -> None:
    """The floor for a durable replace, in plain os calls: write, fsync, rename, fsync dir."""
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


def small_replace(directory: Path, rounds: int, count: int) -> Row:
    payload = os.urandom(4096)

    def ours() -> float:
        start = time.perf_counter()
        for _ in range(count):
            with atomic_open(directory / "ours.bin", "wb") as file:
                file.write(payload)
        return (time.perf_counter() - start) / count * 1e3

    def baseline() -> float:
        start = time.perf_counter()
        for _ in range(count):
            raw_replace(directory, payload)
        return (time.perf_counter() - start) / count * 1e3

    mine, theirs = alternate(rounds, ours, baseline)
    return Row(f"4 KiB durable replace x{count}", mine, "raw 2-fsync protocol", theirs, "ms/op", False)


def streamed(directory: Path, rounds: int, size: int) -> Row:
    chunk = os.urandom(MiB)

    def ours() -> float:
        start = time.perf_counter()
        with atomic_open(directory / "big.bin", "wb") as file:
            for _ in range(size // MiB):
                file.write(chunk)
        return size / MiB / (time.perf_counter() - start)

    def baseline() -> float:
        start = time.perf_counter()
        with open(directory / "raw-big.bin", "wb") as file:
            for _ in range(size // MiB):
                file.write(chunk)
            file.flush()
            os.fsync(file.fileno())
        return size / MiB / (time.perf_counter() - start)

    mine, theirs = alternate(rounds, ours, baseline)
    return Row(f"{size // MiB} MiB streamed, durable", mine, "open+write+fsync", theirs, "MiB/s", True)


def directory_save(directory: Path, rounds: int, files: int, size: int, checksums: bool) -> Row:
    """A checkpoint directory published all at once, against the same files each replaced
    durably on its own (atomic per file, but a crash can leave a mix of old and new files)."""
    payloads = [os.urandom(size) for _ in range(files)]

    def ours() -> float:
        start = time.perf_counter()
        with atomic_directory(directory / "ckpt-dir", checksums=checksums) as stage:
            for index, payload in enumerate(payloads):
                with open(stage / f"shard-{index}.bin", "wb") as file:
                    file.write(payload)
        return (time.perf_counter() - start) * 1e3

    def baseline() -> float:
        target = directory / "raw-dir"
        target.mkdir(exist_ok=True)
        start = time.perf_counter()
        for index, payload in enumerate(payloads):
            temp = target / f".shard-{index}.tmp"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temp, target / f"shard-{index}.bin")
        dir_fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return (time.perf_counter() - start) * 1e3

    mine, theirs = alternate(rounds, ours, baseline)
    label = f"dir {files}x{size // 1024} KiB" + ("" if checksums else ", no sha256")
    return Row(label, mine, "per-file replace, 1 dir fsync", theirs, "ms", False)


LIGHTNING_SAVE = """
import resource, sys, time, torch
from atomicwrite.lightning import AtomicCheckpointIO
from lightning.fabric.plugins import TorchCheckpointIO
plugin = AtomicCheckpointIO() if sys.argv[3] == "ours" else TorchCheckpointIO()
mib = int(sys.argv[2])
state = {"state_dict": {f"w{i}": torch.ones(2**20 // 4 * 10) for i in range(mib // 10)}, "epoch": 1}
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
plugin.save_checkpoint(state, sys.argv[1])
seconds = time.perf_counter() - start
print(seconds, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def lightning_checkpoint(directory: Path, rounds: int, size_mib: int) -> list[Row]:
    """A Lightning checkpoint save: AtomicCheckpointIO against Lightning's TorchCheckpointIO,
    each in a fresh process so that its peak RSS is its own."""
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("lightning") is None:
        print("lightning checkpoint rows skipped: torch and lightning are not installed", file=sys.stderr)
        return []
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    extra_rss: dict[str, list[float]] = {"ours": [], "lightning": []}

    def save(which: str) -> float:
        target = directory / f"{which}.ckpt"
        argv = [sys.executable, "-c", LIGHTNING_SAVE, str(target), str(size_mib), which]
        out = subprocess.run(argv, capture_output=True, text=True, check=True, env=env).stdout.split()
        target.unlink()
        extra_rss[which].append(float(out[-1]))
        return float(out[-2])

    mine, theirs = alternate(rounds, lambda: save("ours"), lambda: save("lightning"))
    rss = Row(
        f"{size_mib} MiB Lightning checkpoint, RSS",
        extra_rss["ours"][1:],  # without the warm-up round, as for the times
        "TorchCheckpointIO",
        extra_rss["lightning"][1:],
        "MiB extra",
        False,
    )
    return [Row(f"{size_mib} MiB Lightning checkpoint, time", mine, "TorchCheckpointIO", theirs, "s", False), rss]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and smaller sizes")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir in .)")
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else 7
    with tempfile.TemporaryDirectory(dir=args.dir or Path.cwd(), prefix=".bench-") as name:
        directory = Path(name)
        rows = [
            small_replace(directory, rounds, 50 if args.quick else 500),
            streamed(directory, rounds, (64 if args.quick else 1024) * MiB),
            directory_save(directory, rounds, 16, (256 if args.quick else 4096) * 1024, checksums=True),
            directory_save(directory, rounds, 16, (256 if args.quick else 4096) * 1024, checksums=False),
            *lightning_checkpoint(directory, rounds, 100 if args.quick else 1000),
        ]
    print(f"{'workload':34} {'ours (median, min..max)':32} {'baseline':38} ratio")
    for row in rows:
        ours = f"{statistics.median(row.ours):.3f} ({min(row.ours):.3f}..{max(row.ours):.3f}) {row.unit}"
        base = f"{statistics.median(row.baseline):.3f} {row.unit} {row.baseline_name}"
        print(f"{row.workload:34} {ours:32} {base:38} {row.ratio():.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
