"""A pytest plugin: the crash-state explorer's counts, printed at the end of the run.

Registered by ``pytest_plugins = ["tests.crashsim.report"]`` at the top of
tests/test_crash_states.py (pytest honours ``pytest_plugins`` in test modules; only non-root
conftest files may not define it), so tests/conftest.py need not change.
"""

from __future__ import annotations

import pytest

TITLE = "crash states explored (power loss after every prefix of the operations)"
LINES: list[str] = []


def add(line: str) -> None:
    LINES.append(line)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not LINES:
        return
    terminalreporter.write_sep("-", TITLE)
    for line in sorted(LINES):
        terminalreporter.write_line(line)
