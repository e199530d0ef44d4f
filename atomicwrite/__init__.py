"""atomicwrite: every file write all-or-nothing.

A reader, a crash, a SIGKILL or a power cut sees the old content or the complete new content,
never a torn file:

```python
from atomicwrite import atomic_open

with atomic_open("checkpoint.bin", "wb") as f:
    f.write(payload)
```
"""

from ._api import AtomicBinaryFile, AtomicTextFile, atomic_open, atomic_save, atomic_update, sweep
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

__all__ = [
    "AtomicBinaryFile",
    "AtomicOSError",
    "AtomicPermissionError",
    "AtomicTextFile",
    "AtomicWriteError",
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
