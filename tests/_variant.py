"""Imported by test subprocesses: apply the strategy variant chosen by the parent test."""

from __future__ import annotations

import os

import atomicwrite._strategy as strategy_registry


def make_local_strategy(variant: str) -> strategy_registry.Strategy:
    """The local strategy a test variant names: "o_tmpfile", "named-temp" or "windows"."""
    if variant == "windows":
        from atomicwrite._local.windows import WindowsStrategy

        return WindowsStrategy()
    from atomicwrite._local.posix import PosixStrategy

    return PosixStrategy(use_tmpfile=(variant == "o_tmpfile"))


def apply() -> None:
    variant = os.environ.get("ATOMICWRITE_TEST_VARIANT")
    if not variant:
        return
    strategy = make_local_strategy(variant)
    for protocol in ("", "file", "local"):
        strategy_registry._INSTANCES[protocol] = strategy
