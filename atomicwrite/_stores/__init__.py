"""Object stores, where no rename exists: a write is one upload that becomes visible only when it
is completed, by one request that also carries the precondition (exclusive create, compare-and-swap).

- `base`: the upload pipeline every store shares (a single PUT for small writes, parts uploaded in
  parallel with bounded memory for large ones, the marker that lets `sweep` abort a dead
  writer's upload) and the backend interface each store implements;
- `s3`, `gcs`, `azure`, `memory`: one backend each.
"""
