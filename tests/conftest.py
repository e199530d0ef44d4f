"""Shared fixtures: every contract test runs once per local strategy variant."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import atomicwrite._strategy as strategy_registry
from tests._variant import make_local_strategy

if sys.platform == "win32":
    LOCAL_VARIANTS = ["windows"]
else:
    LOCAL_VARIANTS = ["named-temp"] + (["o_tmpfile"] if sys.platform == "linux" else [])


@pytest.fixture(params=LOCAL_VARIANTS)
def local_variant(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Route local paths through one strategy variant: O_TMPFILE, a named temp file, or Windows.

    Subprocesses pick the same variant up from ATOMICWRITE_TEST_VARIANT (see tests/_variant.py).
    """
    variant: str = request.param
    strategy = make_local_strategy(variant)
    for protocol in ("", "file", "local"):
        monkeypatch.setitem(strategy_registry._INSTANCES, protocol, strategy)
    monkeypatch.setenv("ATOMICWRITE_TEST_VARIANT", variant)
    return variant


@pytest.fixture
def workdir(tmp_path: Path, local_variant: str) -> Path:
    """An empty directory, written through the current local strategy variant."""
    directory = tmp_path / "work"
    directory.mkdir()
    return directory


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``filesystems`` mount file systems as root: they run only where the marker
    expression names them (``nox -s filesystems`` runs ``-m filesystems``), never in a plain run."""
    if "filesystems" in (config.getoption("markexpr") or ""):
        return
    kept: list[pytest.Item] = []
    mounting: list[pytest.Item] = []
    for item in items:
        (mounting if item.get_closest_marker("filesystems") else kept).append(item)
    if mounting:
        config.hook.pytest_deselected(items=mounting)
        items[:] = kept


def listing(directory: Path) -> list[str]:
    """Every entry of ``directory``, hidden ones included, sorted."""
    return sorted(os.listdir(directory))


# Lines that test modules leave for the end of the run (the kill points tried, say), by section.
TERMINAL_SUMMARY: dict[str, list[str]] = {}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for title, lines in TERMINAL_SUMMARY.items():
        terminalreporter.write_sep("-", title)
        for line in lines:
            terminalreporter.write_line(line)
