"""Many processes at once: replacing writers with readers, exclusive creators, read-modify-writers.

Every worker is a separate process (tests/_workers.py) running the same strategy variant as the
test, so what is checked is what the kernel lets other processes see.
"""

from __future__ import annotations

import errno
import json
import time
from pathlib import Path

import pytest

import atomicwrite
from atomicwrite._names import lock_name, parse_temp_name
from tests._workers import INITIAL_WRITER, collect, payload, release, spawn, touch, verify
from tests.conftest import listing


def temps(directory: Path) -> list[str]:
    return [name for name in listing(directory) if parse_temp_name(name) is not None]


def _writers_and_readers(
    directory: Path, sync: Path, *, writers: int, writes: int, readers: int, durability: str
) -> list[dict[str, object]]:
    """Run the writers against one target while readers poll it; return the readers' reports."""
    target = directory / "shared.bin"
    target.write_bytes(payload(INITIAL_WRITER, 0))
    stop = sync / "stop"
    reader_procs = [spawn("reader", target, stop, sync / f"reader-ready.{i}") for i in range(readers)]
    writer_procs = []
    try:
        # The readers are reading before the first write, so they see every phase of it.
        for i, proc in enumerate(reader_procs):
            while not (sync / f"reader-ready.{i}").exists():
                assert proc.poll() is None, f"reader {i} ended early: {proc.communicate()}"
                time.sleep(0.001)
        writer_procs = [spawn("writer", target, wid, writes, durability, sync) for wid in range(writers)]
        release(sync, "writers", writers, writer_procs)
        reports = [collect(proc, timeout=240) for proc in writer_procs]
        assert sorted(r["writer"] for r in reports) == list(range(writers))
        assert all(r["writes"] == writes for r in reports)
    finally:
        touch(stop)
        reader_reports = [collect(proc, timeout=60) for proc in reader_procs]
        for proc in writer_procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()

    # The final file is one complete version: the last one of whichever writer published last.
    wid, seq = verify(target.read_bytes())
    assert 0 <= wid < writers
    assert seq == writes - 1
    assert listing(directory) == ["shared.bin"]
    return reader_reports


@pytest.mark.slow
def test_replacing_writers_never_show_a_torn_file(workdir: Path, tmp_path: Path) -> None:
    sync = tmp_path / "sync"
    sync.mkdir()
    reports = _writers_and_readers(workdir, sync, writers=8, writes=200, readers=2, durability="none")
    for report in reports:
        assert report["error_count"] == 0, report["errors"]
        # The readers really ran alongside the writers: many reads, many distinct versions.
        assert report["reads"] > 500, report
        assert report["versions"] > 50, report


@pytest.mark.slow
def test_replacing_writers_with_full_durability(workdir: Path, tmp_path: Path) -> None:
    sync = tmp_path / "sync"
    sync.mkdir()
    reports = _writers_and_readers(workdir, sync, writers=8, writes=25, readers=2, durability="full")
    for report in reports:
        assert report["error_count"] == 0, report["errors"]
        assert report["reads"] > 100, report
        assert report["versions"] > 10, report


def test_exclusive_creation_race_has_one_winner(workdir: Path, tmp_path: Path) -> None:
    racers, rounds = 8, 6
    sync = tmp_path / "sync"
    sync.mkdir()
    for rnd in range(rounds):
        (workdir / f"round{rnd}").mkdir()
    procs = [spawn("racer", workdir, sync, wid, rounds) for wid in range(racers)]
    try:
        for rnd in range(rounds):
            release(sync, f"round{rnd}", racers, procs)
        outcomes = [collect(proc, timeout=120) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()

    for rnd in range(rounds):
        directory = workdir / f"round{rnd}"
        this_round = [outcomes[wid][rnd] for wid in range(racers)]
        winners = [wid for wid, outcome in enumerate(this_round) if outcome["won"]]
        assert len(winners) == 1, (rnd, this_round)
        for wid, outcome in enumerate(this_round):
            if wid == winners[0]:
                continue
            # Every loser learned it lost through the documented error, with the target named.
            assert outcome["type"] == "TargetExistsError", (rnd, wid, outcome)
            assert "FileExistsError" in outcome["mro"], outcome
            assert "AtomicWriteError" in outcome["mro"], outcome
            assert outcome["errno"] == errno.EEXIST, outcome
            assert str(directory / "target") in outcome["message"], outcome
        # The file is the winner's version, complete; no loser's bytes, no temp left behind.
        data = (directory / "target").read_bytes()
        assert verify(data) == (winners[0], rnd)
        assert data == payload(winners[0], rnd, 100_000 + 997 * winners[0])
        assert listing(directory) == ["target"]
    assert issubclass(atomicwrite.TargetExistsError, FileExistsError)


def test_atomic_update_loses_no_update(workdir: Path, tmp_path: Path) -> None:
    updaters, count = 8, 25
    sync = tmp_path / "sync"
    sync.mkdir()
    target = workdir / "counter.json"
    procs = [spawn("updater", target, wid, count, sync) for wid in range(updaters)]
    try:
        release(sync, "updaters", updaters, procs)
        reports = [collect(proc, timeout=240) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert sorted(r["updater"] for r in reports) == list(range(updaters))
    state = json.loads(target.read_text(encoding="utf-8"))
    assert state["count"] == updaters * count
    # Not only the count: every single update is there, once, in each writer's own order.
    assert sorted(map(tuple, state["log"])) == [(wid, i) for wid in range(updaters) for i in range(count)]
    for wid in range(updaters):
        assert [i for w, i in state["log"] if w == wid] == list(range(count))
    # The lock file stays by design (removing it would race the next writer); no temp does.
    assert listing(workdir) == sorted(["counter.json", lock_name("counter.json")])
    assert temps(workdir) == []
