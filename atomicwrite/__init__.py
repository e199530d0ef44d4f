"""atomicwrite: every file write all-or-nothing.

A reader, a crash, a SIGKILL or a power cut sees the old content or the complete new content,
never a torn file:

```python
from atomicwrite import atomic_open

with atomic_open("checkpoint.bin", "wb") as f:
    f.write(payload)
```
"""

from typing import TYPE_CHECKING, Any

from ._api import AtomicBinaryFile, AtomicTextFile, atomic_open, atomic_save, atomic_update, sweep
from ._batch import AtomicBatch, BatchError, atomic_batch
from ._errors import (
    AtomicOSError,
    AtomicPermissionError,
    AtomicWriteError,
    ConflictError,
    CrossDeviceError,
    DistributedAbortError,
    DurabilityError,
    NoSpaceError,
    SerializerNotFoundError,
    TargetExistsError,
    TargetIsADirectoryError,
    TargetNotFoundError,
    UnsupportedTargetError,
    UsageError,
)
from ._result import CommitResult, Durability, LocalVersion
from ._serializers import Serializer, register_serializer
from ._strategy import PendingWrite, ProgressCallback, Strategy, TargetLock, WriteOptions, register_strategy

__version__ = "0.1.0"

# Multi-file checkpoints pull in json, hashlib and their value classes: loaded on first use, so
# that a plain atomic_open pays nothing for them at import.
_LAZY = {
    "CheckpointStore": "_checkpoints",
    "Generation": "_checkpoints",
    **dict.fromkeys(
        (
            "DirectoryCommitResult",
            "DirectoryManifest",
            "DirectoryProblem",
            "DirectoryTransaction",
            "DirectoryVerification",
            "FileEntry",
            "PublishedDirectory",
            "StagingDirectory",
            "atomic_directory",
            "begin_directory",
            "open_directory",
            "verify_directory",
        ),
        "_directory",
    ),
}

if TYPE_CHECKING:
    from ._checkpoints import CheckpointStore, Generation
    from ._directory import (
        DirectoryCommitResult,
        DirectoryManifest,
        DirectoryProblem,
        DirectoryTransaction,
        DirectoryVerification,
        FileEntry,
        PublishedDirectory,
        StagingDirectory,
        atomic_directory,
        begin_directory,
        open_directory,
        verify_directory,
    )


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'atomicwrite' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AtomicBatch",
    "AtomicBinaryFile",
    "AtomicOSError",
    "AtomicPermissionError",
    "AtomicTextFile",
    "AtomicWriteError",
    "BatchError",
    "CheckpointStore",
    "CommitResult",
    "ConflictError",
    "CrossDeviceError",
    "DirectoryCommitResult",
    "DirectoryManifest",
    "DirectoryProblem",
    "DirectoryTransaction",
    "DirectoryVerification",
    "DistributedAbortError",
    "Durability",
    "DurabilityError",
    "FileEntry",
    "Generation",
    "LocalVersion",
    "NoSpaceError",
    "PendingWrite",
    "ProgressCallback",
    "PublishedDirectory",
    "Serializer",
    "SerializerNotFoundError",
    "StagingDirectory",
    "Strategy",
    "TargetExistsError",
    "TargetIsADirectoryError",
    "TargetLock",
    "TargetNotFoundError",
    "UnsupportedTargetError",
    "UsageError",
    "WriteOptions",
    "__version__",
    "atomic_batch",
    "atomic_directory",
    "atomic_open",
    "atomic_save",
    "atomic_update",
    "begin_directory",
    "open_directory",
    "register_serializer",
    "register_strategy",
    "sweep",
    "verify_directory",
]
