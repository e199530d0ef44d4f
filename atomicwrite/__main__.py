"""``python -m atomicwrite``: the command line (see :mod:`atomicwrite._cli`)."""

from ._cli import main

if __name__ == "__main__":
    main(prog_name="atomicwrite")
