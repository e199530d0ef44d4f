"""Development sessions: `nox -l` lists them; `make test` runs tests, lint, typecheck and docs."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "lint", "typecheck", "docs"]

# None: the interpreter nox itself runs on, so `python3 -m nox` works wherever python3 does.
PYTHON = None
TORCH = "torch==2.13.0"
# lightning also installs the standalone pytorch_lightning / lightning_fabric: both are tested.
LIGHTNING = "lightning>=2.6,<2.7"
# mkdocstrings-python 1.19 is the first to order the reference by __all__.
# The libraries users already save with, driven for real by the integration tests: pandas,
# pyarrow and zarr through the atomic:: fsspec protocol, transformers and accelerate through
# atomicwrite.transformers.  Pinned so that a new release cannot turn CI red overnight.
INTEGRATIONS = ["pandas==3.1.1", "pyarrow==26.0.1", "zarr==3.1.6", "transformers==5.25.0", "accelerate==1.16.0"]
# The FUSE passthrough of the file-system matrix (tests/fusefs), on libfuse3 from apt.
FUSE = "mfusepy==3.1.1"
DOCS_REQUIREMENTS = ["mkdocs==1.6.1", "mkdocs-material>=9.5", "mkdocstrings>=1.0", "mkdocstrings-python>=1.19"]


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole test suite.  `nox -s tests -- -m "not slow"` skips the long multi-process tests."""
    # The pinned CPU build first: a bare or newer torch pulls a multi-GB CUDA build.
    session.install(TORCH)
    # The bench extra too: tests/test_benchmarks.py runs every workload's wiring, peers and
    # charts included, at tiny sizes.
    session.install("-e", ".[dev,bench]", "numpy", LIGHTNING, *INTEGRATIONS)
    session.run("pytest", *(session.posargs or ["-q"]))


@nox.session(python=PYTHON)
def filesystems(session: nox.Session) -> None:
    """The file-system matrix, as root: the suites again on real mounts, one line per file system.

    ext4 (data=ordered and data=journal), xfs and btrfs are loop-mounted images made by mkfs (on
    the machine's disk), then a tmpfs, an overlay mount and the FUSE passthrough of tests/fusefs;
    each prints `NAME: P passed, F failed, S skipped` and pytest's reason for each skip.  Then the
    tests marked `filesystems` (the FUSE switches and the power-loss layer) run once.  Not root:
    it says so and passes, unless ATOMICWRITE_REQUIRE_FILESYSTEMS=1 (CI) makes that a failure.
    `make filesystem-tools` installs mkfs.xfs, mkfs.btrfs and libfuse3 (apt, as root).

    Which suites run where (tests/filesystems/__main__.py, SUITES), and why: the protocol
    contract, the real faults (full disk, read-only directory), the crash-state explorer and the
    directory tests are cheap and run on every file system; the overlay tests run wherever an
    overlay's upper layer can live.  The strace kill points (about 40 s more) run on xfs and btrfs,
    whose journalling and copy-on-write differ most from the ext4 disk the `tests` session
    already kills on; the injected faults (about 30 s, errors made by strace, not by the file
    system) run once, on ext4 data=ordered.  Overlay runs twice: targets in the upper layer, and
    in a directory that comes from the lower layer.  Measured on 2 busy cores: ext4-ordered 69 s,
    ext4-journal 39 s, xfs 79 s, btrfs 78 s, tmpfs 26 s, overlay 45 + 56 s, fuse 80 s, the
    marked tests 76 s: 9.5 minutes in all.  `nox -s filesystems -- --only xfs overlay` runs some.
    """
    session.install(TORCH)
    session.install("-e", ".[dev]", "numpy", FUSE)
    session.run("python", "-m", "tests.filesystems", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", "atomicwrite", "tests", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "atomicwrite", "tests", "benchmarks", "noxfile.py")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict for every platform the library runs on."""
    session.install("-e", ".[s3,gcs,azure]", "mypy>=1.10")
    for platform in ("linux", "win32", "darwin"):
        session.run("mypy", "--strict", "--platform", platform, "atomicwrite")


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """The crash demo: writers SIGKILLed mid-save, plain open() against atomic_open, and a
    training run killed while it saves a checkpoint."""
    session.install(TORCH)
    session.install("-e", ".[demo]", LIGHTNING)
    session.run("atomicwrite", "demo", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks against the raw-syscall floor and peers, as ratios measured in one run; a full
    run rewrites docs/benchmarks.md and its charts in docs/benchmarks/ (about 15 minutes on 2 cores).

    `nox -s bench -- --quick` for a short run (writes no page); `-- --only stream small` for some rows."""
    session.install(TORCH)
    session.install("-e", ".[bench]")
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the documentation site with warnings as errors."""
    session.install("-e", ".", *DOCS_REQUIREMENTS)
    session.run("mkdocs", "build", "--strict", "--site-dir", "site", env={"NO_MKDOCS_2_WARNING": "1"})
