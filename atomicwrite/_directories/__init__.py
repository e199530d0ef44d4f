"""Checkpoint directories: many files published at once, on local disks and object stores.

Built on the single-file layers below (`atomicwrite._api`, the strategies), never the other way:

- `manifest`: what a published directory holds (files, sizes, checksums) and how it is verified;
- `transaction`: the staging directory a caller writes into and the public entry points;
- `local`: publishing by renaming a staging directory (``renameat2`` exchange where it exists);
- `store`: publishing on an object store by a conditional manifest write over a generation prefix;
- `generations`: `CheckpointStore`, numbered generations with an atomic ``latest`` and retention.
"""
