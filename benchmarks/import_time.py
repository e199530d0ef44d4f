"""``import atomicwrite`` against ``python -c pass``, and what it leaves unimported.

Each is a fresh interpreter, 30 of each alternated, with bytecode caching on as an installed
package has it (the warm-up writes the cache).  The extra is the difference of the medians.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from ._harness import ROOT, Context, Row, Target, alternate, median, timed

NAME = "import"
TITLE = "import time"
# Imported only when a target, a serializer or an adapter needs them.
LAZY = ("torch", "lightning", "pytorch_lightning", "s3fs", "gcsfs", "adlfs", "fsspec", "portalocker", "click")


def _env() -> dict[str, str]:
    # As installed: with cached bytecode (the warm-up import writes it), not compiled each time.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _python(code: str) -> float:
    return timed(lambda: subprocess.run([sys.executable, "-c", code], env=_env(), check=True)) * 1e3


def run(context: Context) -> list[Row]:
    rounds = 10 if context.quick else 30
    mine, theirs = alternate(rounds, lambda: _python("import atomicwrite"), lambda: _python("pass"))
    row = Row("import atomicwrite", "import atomicwrite", "python -c pass", "ms", mine, theirs, False)
    extra = median(mine) - median(theirs)
    row.targets.append(
        Target(
            "<= 30 ms extra",
            f"{extra:+.1f} ms",
            extra <= 30,
            "" if extra <= 30 else "the standard-library modules the core needs at import",
        )
    )
    probe = f"import sys, json, atomicwrite; print(json.dumps(sorted(m for m in {LAZY!r} if m in sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], env=_env(), capture_output=True, text=True, check=True)
    loaded = json.loads(done.stdout)
    row.targets.append(
        Target(
            "lazy: " + ", ".join(LAZY[:4]) + ", ... not imported",
            "none imported" if not loaded else "imported: " + ", ".join(loaded),
            not loaded,
            "" if not loaded else "imported at module level by the core",
        )
    )
    return [row]
