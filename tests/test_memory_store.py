"""memory:// (fsspec's in-process file system) keeps the object-store contract within a process."""

from __future__ import annotations

from typing import Any

import pytest

from tests.objectstore_contract import MiB, ObjectStoreContract, StoreHandle, unique_prefix


@pytest.fixture
def store() -> StoreHandle:
    import fsspec

    fs: Any = fsspec.filesystem("memory")
    return StoreHandle(
        strategy="memory",
        prefix=unique_prefix("memory://atomicwrite-tests"),
        options={"part_size": 5 * MiB},
        fs=fs,
        multipart_size=70 * MiB,
        pending_uploads=list,
        cross_process=False,
        durability="none",
        has_buckets=False,
    )


class TestMemory(ObjectStoreContract):
    pass
