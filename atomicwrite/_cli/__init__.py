"""The ``atomicwrite`` command line: `main` parses and dispatches to one module per command
(`doctor`, `verify`, `cp`, `demo`), each imported only when its command runs."""
