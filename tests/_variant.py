"""Imported by test subprocesses: apply the strategy variant chosen by the parent test."""

from __future__ import annotations

import os

import atomicwrite._strategy as strategy_registry


def apply() -> None:
    variant = os.environ.get("ATOMICWRITE_TEST_VARIANT")
    if not variant:
        return
    from atomicwrite._posix import PosixStrategy

    strategy = PosixStrategy(use_tmpfile=(variant == "o_tmpfile"))
    for protocol in ("", "file", "local"):
        strategy_registry._INSTANCES[protocol] = strategy
