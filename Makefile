# The two set-up commands of the README.  Both work on a fresh machine with Python 3.10+:
# they install nox with pip, and nox installs everything else into its own virtualenvs.
PYTHON ?= python3
NOX = $(PYTHON) -m nox

.PHONY: demo test nox syscall-tools store-servers filesystems filesystem-tools

demo: nox
	$(NOX) -s demo

test: nox syscall-tools store-servers
	$(NOX) -s tests lint typecheck docs
	@$(MAKE) --no-print-directory filesystems

nox:
	@$(PYTHON) -m nox --version >/dev/null 2>&1 || $(PYTHON) -m pip install -q "nox>=2024.4"

# strace checks the order of the protocol's syscalls; without it that one test is skipped (and
# says why).  Installing it needs root and apt-get.
syscall-tools:
	@command -v strace >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq strace >/dev/null; } || \
	  echo "strace is not installed: the syscall-order test will be skipped"

# The file-system matrix mounts real file systems, so it needs root: elsewhere it says so and is
# skipped, unless ATOMICWRITE_REQUIRE_FILESYSTEMS=1 (CI) makes that an error.
filesystems: nox filesystem-tools
	@if [ "$$(id -u)" = 0 ]; then $(NOX) -s filesystems; \
	elif [ "$${ATOMICWRITE_REQUIRE_FILESYSTEMS:-}" = 1 ]; then \
	  echo "ATOMICWRITE_REQUIRE_FILESYSTEMS=1, but the file-system matrix needs root" >&2; exit 1; \
	else echo "not root: the file-system matrix (nox -s filesystems) is skipped"; fi

# mkfs.xfs, mkfs.btrfs and libfuse3 for the matrix (mkfs.ext4 and mount come with the system).
filesystem-tools:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  ! { command -v mkfs.xfs && command -v mkfs.btrfs && command -v fusermount3 && \
	      [ -e /usr/include/fuse3/fuse.h ]; } >/dev/null 2>&1; then \
	  apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xfsprogs btrfs-progs fuse3 libfuse3-dev >/dev/null; \
	fi

# Azurite, Azure's storage emulator, comes from npm (Node 18+); the Azure tests start it.  Without
# it they are skipped, and the script says why (npm missing, or npm's own error, after a retry).
store-servers:
	@sh tests/servers/install-azurite
