"""The shared object-store pipeline, driven through a scripted backend: ordering under failure."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pytest

import atomicwrite._strategy as strategy_registry
from atomicwrite import AtomicOSError, atomic_open
from atomicwrite._stores.base import ObjectStoreBackend
from atomicwrite._stores.memory import MemoryStrategy
from atomicwrite._strategy import WriteOptions

PART = 1 << 20


class ScriptedBackend(ObjectStoreBackend):
    """Records every call; parts take ``part_delay`` seconds; ``abort`` may be made to fail."""

    part_size = PART
    parallel_parts = 1

    def __init__(self, events: list[str], *, part_delay: float = 0.0, abort_error: Exception | None = None) -> None:
        self.events = events
        self.part_delay = part_delay
        self.abort_error = abort_error

    def put(self, data: bytes, *, exclusive: bool, if_match: object | None, digest: bytes | None) -> object:
        self.events.append("put")
        return 1

    def start(self, *, exclusive: bool, if_match: object | None) -> str:
        self.events.append("start")
        return "upload-1"

    def upload_part(self, number: int, data: bytes) -> None:
        self.events.append(f"part {number} start")
        time.sleep(self.part_delay)
        self.events.append(f"part {number} stored")

    def complete(self, tail: bytes, *, exclusive: bool, if_match: object | None, digest: bytes | None) -> object:
        self.events.append("complete")
        return 2

    def abort(self) -> None:
        self.events.append("abort")
        if self.abort_error is not None:
            raise self.abort_error


class ScriptedStrategy(MemoryStrategy):
    name = "scripted"

    def __init__(self, backend: ScriptedBackend) -> None:
        self._backend = backend
        self.markers: list[str] = []

    def backend(self, location: str, options: WriteOptions) -> ScriptedBackend:
        return self._backend

    def write_marker(self, marker: str, location: str, upload_id: str, options: WriteOptions) -> None:
        self.markers.append(marker)

    def remove_marker(self, marker: str, options: WriteOptions) -> None:
        self.markers.remove(marker)


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> Any:
    def install(backend: ScriptedBackend) -> ScriptedStrategy:
        strategy = ScriptedStrategy(backend)
        monkeypatch.setitem(strategy_registry._INSTANCES, "memory", strategy)
        return strategy

    return install


def test_interrupt_while_waiting_for_a_part_aborts_after_it(scripted: Any) -> None:
    """A Ctrl-C while a part is in flight: the abort waits for that part, never races it."""
    events: list[str] = []
    strategy = scripted(ScriptedBackend(events, part_delay=0.6))
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
    file = atomic_open("memory://b/obj", "wb")
    # Python's own Ctrl-C handler, even if this run started with SIGINT ignored (a background
    # job of a shell without job control).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt), file:
            for _ in range(3):
                file.write(b"x" * PART)  # the second part waits for the first's slot
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert events.index("part 1 stored") < events.index("abort")
    assert "complete" not in events
    assert strategy.markers == []
    assert file.discarded


def test_failed_abort_keeps_the_marker_and_the_original_error(scripted: Any) -> None:
    events: list[str] = []
    strategy = scripted(ScriptedBackend(events, abort_error=OSError(5, "abort refused")))
    with pytest.raises(RuntimeError, match="the user's error"), atomic_open("memory://b/obj", "wb") as file:
        file.write(b"x" * (2 * PART))
        raise RuntimeError("the user's error")
    assert "abort" in events
    # The upload may still exist: its marker stays, so that sweep() can abort it later.
    assert len(strategy.markers) == 1


def test_write_after_commit_fails_loudly(scripted: Any) -> None:
    events: list[str] = []
    scripted(ScriptedBackend(events))
    file = atomic_open("memory://b/obj", "wb")
    file.write(b"x" * (PART + 10))
    file.commit()
    with pytest.raises(ValueError, match="closed"):
        file.write(b"lost?")
    assert events.count("complete") == 1


def test_progress_failure_after_publish_does_not_fail_the_commit(scripted: Any) -> None:
    events: list[str] = []
    strategy = scripted(ScriptedBackend(events))

    class BrokenBar:
        def relative_update(self, inc: int = 1) -> None:
            if threading.current_thread() is threading.main_thread():
                raise RuntimeError("progress bar closed")

    file = atomic_open("memory://b/obj", "wb", progress=BrokenBar())
    file.write(b"x" * (PART + 10))
    result = file.commit()
    assert result.version == 2
    assert strategy.markers == []
    assert not file.discarded


def test_part_failure_is_typed_and_aborts(scripted: Any) -> None:
    events: list[str] = []

    class FailingBackend(ScriptedBackend):
        def upload_part(self, number: int, data: bytes) -> None:
            raise OSError(5, "part refused")

    strategy = scripted(FailingBackend(events))
    file = atomic_open("memory://b/obj", "wb")
    with pytest.raises(AtomicOSError, match="part refused"), file:
        for _ in range(3):
            file.write(b"x" * PART)
    assert events[-1] == "abort"
    assert strategy.markers == []
