"""Child processes for tests/test_fsspec_protocol.py, killed with SIGKILL in the middle of a write.

- ``python -m tests._fsspec_workers zarr URL READY`` overwrites the zarr array at ``URL`` (an
  ``atomic::`` URL) with new values, chunk by chunk; the write of its second chunk stops after
  half of its bytes, touches ``READY`` and waits to be killed.
- ``python -m tests._fsspec_workers csv URL READY OPTIONS`` writes a large table with pandas'
  ``to_csv`` to ``URL`` (``OPTIONS``: its storage_options, as JSON); once ``CSV_STALL_AT`` bytes
  are written (some parts uploaded), it touches ``READY`` and waits to be killed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

CHUNK = 1 << 18  # values per chunk (float64: 2 MiB a chunk)
CHUNKS = 4
CSV_ROWS = 400_000
CSV_STALL_AT = 7 << 20  # past the first 5 MiB part


def new_values() -> Any:
    import numpy as np

    return np.arange(CHUNK * CHUNKS, dtype="float64") + 0.5


def stall_mid_write(ready: Path, at_write: int) -> None:
    """Make the ``at_write``-th file written through ``atomic::`` stop half way and wait."""
    from atomicwrite.filesystem import AtomicFileSystem

    real_pipe = AtomicFileSystem.pipe_file
    count = [0]

    def pipe_file(self: AtomicFileSystem, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        count[0] += 1
        if count[0] < at_write:
            real_pipe(self, path, value, mode, **kwargs)
            return
        with self.open(path, "wb") as file:
            file.write(value[: len(value) // 2])
            file.flush()
            ready.touch()
            time.sleep(600)

    AtomicFileSystem.pipe_file = pipe_file  # type: ignore[method-assign]


def overwrite_zarr(url: str, ready: Path) -> None:
    import zarr

    # Before the array is opened: zarr's store wraps the file system's methods as it opens.
    stall_mid_write(ready, at_write=2)
    # zarr writes chunks concurrently; one at a time keeps "the second chunk" well defined.
    zarr.config.set({"async.concurrency": 1})
    array = zarr.open_array(url, mode="r+")
    for index in range(CHUNKS):
        array[index * CHUNK : (index + 1) * CHUNK] = new_values()[index * CHUNK : (index + 1) * CHUNK]


def csv_frame(seed: int) -> Any:
    import pandas as pd

    return pd.DataFrame({"row": range(CSV_ROWS), "value": [f"{seed}-{i:012d}" for i in range(CSV_ROWS)]})


def write_csv(url: str, ready: Path, options: dict[str, Any]) -> None:
    from atomicwrite.filesystem import AtomicFile

    real_write = AtomicFile.write

    def write(self: AtomicFile, data: Any) -> int:
        written = real_write(self, data)
        if self.tell() >= CSV_STALL_AT:
            self.flush()
            ready.touch()
            time.sleep(600)
        return written

    AtomicFile.write = write  # type: ignore[method-assign]
    csv_frame(1).to_csv(url, index=False, storage_options=options)


if __name__ == "__main__":
    mode, url, ready = sys.argv[1:4]
    if mode == "zarr":
        overwrite_zarr(url, Path(ready))
    elif mode == "csv":
        write_csv(url, Path(ready), json.loads(sys.argv[4]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    raise SystemExit("the write was not stopped")
