"""A pytest plugin (``-p tests.filesystems.lower_layer``) that gives every test a ``tmp_path``
in the lower layer of its own overlay mount: the directory exists in the read-only layer, so the
test's first write into it makes overlayfs copy it up, and every file the test writes lands in a
directory that came from below, as in a container image.

The mount lives under the ``--basetemp`` directory and is taken down after the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.filesystems.mounts import overlay


@pytest.fixture
def tmp_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("overlay", numbered=True)
    # Named like the directory a test's own tmp_path would be; it exists only in the lower layer.
    (base / "lower" / "tmp").mkdir(parents=True)
    with overlay(base) as layers:
        yield layers.merged / "tmp"
