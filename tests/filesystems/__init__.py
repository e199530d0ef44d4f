"""The file-system matrix: real file systems mounted by the kernel's own code (loop images made
by mkfs, a tmpfs, overlay mounts, a FUSE passthrough), and the runner that repeats the protocol,
kill-point, crash-state and fault suites on each of them (``python -m tests.filesystems``, which
``nox -s filesystems`` calls)."""
