"""Checkpoint directories: many files published at once, on local disks and object stores.

Built on the single-file layers below (`atomicwrite._api`, the strategies), never the other way:

- `api`: `atomic_directory` and `begin_directory`, which choose the local or the store protocol;
- `staging`: the staging directory a caller writes into, and the transaction both protocols share;
- `local`: publishing by renaming a staging directory (``renameat2`` exchange where it exists);
- `store`: publishing on an object store by a conditional manifest write over a generation prefix;
- `marker`: the store's layout on a local mount where renaming a directory copies it (gcsfuse...):
  files in place under a generation, the manifest written last as the commit marker;
- `manifest`: what a published directory holds (files, sizes, checksums);
- `reading`: `open_directory` and `verify_directory`, through the manifest;
- `generations`: `CheckpointStore`, numbered generations with an atomic ``latest`` and retention.
- `retention`: the policies that say which generations a `CheckpointStore` keeps.
"""
