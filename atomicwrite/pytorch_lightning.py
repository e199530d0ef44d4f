"""`atomicwrite.lightning`'s classes for the standalone ``pytorch_lightning`` / ``lightning_fabric``.

```python
from atomicwrite.pytorch_lightning import AtomicCheckpointIO

trainer = pytorch_lightning.Trainer(plugins=[AtomicCheckpointIO()])
```

``pytorch_lightning`` checks plugins against ``lightning_fabric``'s ``CheckpointIO``, a different
class from ``lightning.fabric``'s, so the classes of `atomicwrite.lightning` (built for the
``lightning`` package when it is installed) would be refused there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .lightning import _lazy_attribute

if TYPE_CHECKING:
    # Built on first use by the module's __getattr__.
    AtomicCheckpointIO: type[Any]
    AtomicAsyncCheckpointIO: type[Any]
    AtomicModelCheckpoint: type[Any]

__all__ = ["AtomicAsyncCheckpointIO", "AtomicCheckpointIO", "AtomicModelCheckpoint"]


def __getattr__(name: str) -> Any:
    return _lazy_attribute("pytorch_lightning", name, __name__)
