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

from ._api import AtomicBinaryFile, AtomicTextFile, atomic_open, atomic_save, atomic_update
from ._batch import AtomicBatch, BatchError, atomic_batch
from ._errors import (
    AtomicOSError,
    AtomicPermissionError,
    AtomicWriteError,
    CommitCallbackError,
    ConflictError,
    CrossDeviceError,
    DistributedAbortError,
    DurabilityError,
    NoSpaceError,
    OverlayDirectoryError,
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
from ._sweep import sweep

__version__ = "0.1.0"

# Multi-file checkpoints pull in json, hashlib and their value classes: loaded on first use, so
# that a plain atomic_open pays nothing for them at import.
_LAZY = {
    "CheckpointStore": "_directories.generations",
    "Generation": "_directories.generations",
    "atomic_directory": "_directories.api",
    "begin_directory": "_directories.api",
    "DirectoryCommitResult": "_directories.manifest",
    "DirectoryManifest": "_directories.manifest",
    "DirectoryProblem": "_directories.manifest",
    "DirectoryVerification": "_directories.manifest",
    "FileEntry": "_directories.manifest",
    "PublishedDirectory": "_directories.reading",
    "open_directory": "_directories.reading",
    "verify_directory": "_directories.reading",
    "DirectoryTransaction": "_directories.staging",
    "StagingDirectory": "_directories.staging",
    "GenerationInfo": "_directories.retention",
    "KeepBest": "_directories.retention",
    "KeepEvery": "_directories.retention",
    "KeepLatest": "_directories.retention",
    "RetentionPolicy": "_directories.retention",
}

if TYPE_CHECKING:
    from ._directories.api import atomic_directory, begin_directory
    from ._directories.generations import CheckpointStore, Generation
    from ._directories.manifest import (
        DirectoryCommitResult,
        DirectoryManifest,
        DirectoryProblem,
        DirectoryVerification,
        FileEntry,
    )
    from ._directories.reading import PublishedDirectory, open_directory, verify_directory
    from ._directories.retention import GenerationInfo, KeepBest, KeepEvery, KeepLatest, RetentionPolicy
    from ._directories.staging import DirectoryTransaction, StagingDirectory


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
    "CommitCallbackError",
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
    "GenerationInfo",
    "KeepBest",
    "KeepEvery",
    "KeepLatest",
    "LocalVersion",
    "NoSpaceError",
    "OverlayDirectoryError",
    "PendingWrite",
    "ProgressCallback",
    "PublishedDirectory",
    "RetentionPolicy",
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
