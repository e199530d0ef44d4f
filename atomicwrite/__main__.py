"""``python -m atomicwrite``: the command line (see :mod:`atomicwrite._cli.main`)."""

from ._cli.main import main

if __name__ == "__main__":
    main(prog_name="atomicwrite")
