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
from ._batch import AtomicBatch, BatchError, atomic_batch
from ._errors import (
    AtomicOSError,
    AtomicPermissionError,
    AtomicWriteError,
    ConflictError,
    CrossDeviceError,
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
    "AtomicBatch",
    "AtomicBinaryFile",
    "AtomicOSError",
    "AtomicPermissionError",
    "AtomicTextFile",
    "AtomicWriteError",
    "BatchError",
    "CommitResult",
    "ConflictError",
    "CrossDeviceError",
    "Durability",
    "DurabilityError",
    "LocalVersion",
    "NoSpaceError",
    "PendingWrite",
    "ProgressCallback",
    "Serializer",
    "SerializerNotFoundError",
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
    "atomic_open",
    "atomic_save",
    "atomic_update",
    "register_serializer",
    "register_strategy",
    "sweep",
]
