"""What the demos' child processes (writers to kill, a training run) are started with."""

from __future__ import annotations

import os

__all__ = ["child_env"]


def child_env() -> dict[str, str]:
    """This environment, with this copy of atomicwrite first on the path: the children must run
    the code the demo runs, installed or not."""
    env = dict(os.environ)
    # The directory that holds the atomicwrite package, two levels above this file.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env
