# The two set-up commands of the README.  Both work on a fresh machine with Python 3.10+:
# they install nox with pip, and nox installs everything else into its own virtualenvs.
PYTHON ?= python3
NOX = $(PYTHON) -m nox

.PHONY: demo test nox syscall-tools store-servers

demo: nox
	$(NOX) -s demo

test: nox syscall-tools store-servers
	$(NOX) -s tests lint typecheck docs

nox:
	@$(PYTHON) -m nox --version >/dev/null 2>&1 || $(PYTHON) -m pip install -q "nox>=2024.4"

# strace checks the order of the protocol's syscalls; without it that one test is skipped (and
# says why).  Installing it needs root and apt-get.
syscall-tools:
	@command -v strace >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq strace >/dev/null; } || \
	  echo "strace is not installed: the syscall-order test will be skipped"

# Azurite, Azure's storage emulator, comes from npm (Node 18+); the Azure tests start it.  Without
# it they are skipped, and the script says why (npm missing, or npm's own error, after a retry).
store-servers:
	@sh tests/servers/install-azurite
