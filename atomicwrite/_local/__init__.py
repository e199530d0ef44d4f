"""Local disks: the strategies that publish a temp file by renaming it over the target.

- `base`: what every local strategy shares (target resolution and the symlink policy, the temp
  file's stream, the lock file, the checks before replacing a file);
- `posix`: Linux, macOS and the BSDs (``O_TMPFILE``, ``fsync``, ``rename``, ``renameat2``);
- `windows`: Windows through ``kernel32`` (``MoveFileExW``, ``ReplaceFileW``, write-through).

`atomicwrite._strategy` registers one of them for plain paths on the platform, by name, and loads
it on first use; the layers above reach what else they need through the strategy's methods.
"""
