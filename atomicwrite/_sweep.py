"""`sweep`: remove what dead writers left behind, and only that.

One module above the strategies and the directory layer: it asks the target's strategy to remove
its own stale leftovers, then the directory layer its staging directories or generations.  No
strategy calls back into this module, or into the directory layer.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from ._errors import UsageError
from ._strategy import WriteOptions, resolve_target

if TYPE_CHECKING:
    from datetime import timedelta

__all__ = ["sweep"]

Target = str | os.PathLike[str]


def sweep(
    location: Target,
    *,
    older_than: float | timedelta = 3600.0,
    dry_run: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Remove the temp files (or pending uploads) that dead writers left in ``location``.

    This includes the staging directories of [`atomic_directory`][atomicwrite.atomic_directory]
    (``.{name}.aw...stage``) and the temp links of a `CheckpointStore` pointer swap
    (``.latest.aw...link``) in a local ``location``, and the unpublished generations under an
    object-store ``location`` that was given to ``atomic_directory``; under the root of an
    object-store `CheckpointStore`, also those of each generation, including the objects of a
    retired generation whose background delete was interrupted.

    Only this library's own leftovers are touched, recognised by their name: never a user's
    file, and never the temp of a writer that is still running.  On this host a writer's
    liveness is known for sure (its temp stays locked while it runs; a file of an
    [`atomic_batch`][atomicwrite.atomic_batch] waiting, flushed, for the batch's publish step is
    not, see there).  A leftover whose writer
    cannot be checked (written from another host, or whose pid was reused) is removed once it
    has not been modified for ``older_than`` (seconds or a ``timedelta``; one hour by default).
    Returns the paths removed (with ``dry_run``, the
    paths that would be).
    """
    # A timedelta has total_seconds(); datetime is not imported just to check the type.
    total_seconds = getattr(older_than, "total_seconds", None)
    seconds = float(total_seconds()) if callable(total_seconds) else float(older_than)  # type: ignore[arg-type]
    if seconds < 0:
        raise UsageError(f"older_than must not be negative, not {older_than!r}")
    strategy, path = resolve_target(location)
    options = WriteOptions(storage_options=dict(storage_options or {}))
    # The strategy's own leftovers first (temp files, pending uploads)...
    removed = strategy.sweep(path, seconds, dry_run, options)
    # ...then the directory layer's, which no strategy knows of: staging directories and pointer
    # links beside local targets, unpublished generations under object-store ones.  (Imported
    # here: `import atomicwrite` stays free of the store and directory code.)
    from ._local.base import LocalStrategy
    from ._local.windows import WindowsStrategy
    from ._stores.base import ObjectStoreStrategy

    if isinstance(strategy, ObjectStoreStrategy):
        from ._directories.store import sweep_generations

        fs = strategy.filesystem(options)
        root = fs._strip_protocol(path)
        removed += sweep_generations(fs, root, seconds, dry_run, strategy.url)
        # A CheckpointStore root: each generation is a directory target of its own.  A retired
        # one lost its manifest first, so a background delete killed half way leaves objects
        # that only the generation's own sweep recognises (no manifest names them any more).
        for generation in _store_generations(fs, root):
            removed += sweep_generations(fs, generation, seconds, dry_run, strategy.url)
    elif isinstance(strategy, WindowsStrategy):
        from ._directories.windows import sweep_windows_staging

        removed += sweep_windows_staging(strategy.sweep_directory(path), seconds, dry_run, strategy)
    elif isinstance(strategy, LocalStrategy) and sys.platform != "win32":
        from ._directories.local import DirectoryRenames, sweep_staging

        removed += sweep_staging(
            strategy.sweep_directory(path), seconds, dry_run, strategy.writer_alive, cast("DirectoryRenames", strategy)
        )
    return removed


def _store_generations(fs: Any, root: str) -> list[str]:
    """The generation directories under ``root`` if it is an object-store `CheckpointStore`'s
    (recognised by its ``latest`` pointer object), else none: only a store's root is searched a
    level deeper, so that sweeping any other prefix costs one listing, as before."""
    import json

    from ._directories.generations import POINTER_NAME

    try:
        record = json.loads(fs.cat_file(f"{root}/{POINTER_NAME}"))
    except (FileNotFoundError, IsADirectoryError, ValueError, UnicodeDecodeError):
        return []
    if not isinstance(record, dict) or not isinstance(record.get("generation"), str):
        return []
    try:
        listing: list[dict[str, Any]] = fs.ls(root, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [str(entry["name"]).rstrip("/") for entry in listing if entry.get("type") == "directory"]
