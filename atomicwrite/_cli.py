"""The ``atomicwrite`` command line (``python -m atomicwrite`` too).

``atomicwrite demo`` kills writers mid-save and shows what plain ``open()`` and ``atomic_open``
leave behind; ``atomicwrite sweep PATH`` removes the temp files that dead writers left.

Errors print one line on stderr: exit status 1 for a failed operation (an
:class:`~atomicwrite.AtomicWriteError` or an ``OSError``), 2 for a usage error.  ``--debug``
shows the traceback instead.  This is the only module that imports click.
"""

from __future__ import annotations

import re
from typing import IO, TYPE_CHECKING, Any

import click

from . import __version__
from ._errors import AtomicWriteError

__all__ = ["main", "parse_duration"]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_PART = re.compile(rf"({_NUMBER})\s*(ms|s|m|h|d|w)\s*")
_DURATION = re.compile(rf"(?:{_NUMBER}\s*(?:ms|s|m|h|d|w)\s*)+|{_NUMBER}")


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``30s``, ``10m``, ``1h``, ``2d``, ``1h30m`` or ``90`` (seconds).

    Raises ValueError for anything else (negative durations included).
    """
    cleaned = text.strip().lower()
    if not _DURATION.fullmatch(cleaned):
        raise ValueError(f"{text!r} is not a duration; use e.g. 30s, 10m, 1h or 2d")
    parts = _PART.findall(cleaned)
    if not parts:
        return float(cleaned)
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


if TYPE_CHECKING:
    _FloatParam = click.ParamType[float]  # generic from click 8.3 on; subscripting fails before
else:
    _FloatParam = click.ParamType


class Duration(_FloatParam):
    """A click parameter type for :func:`parse_duration`; the value is in seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
            return float(value)
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _OneLineError(click.ClickException):
    """An error shown as a single line on stderr (exit status 1)."""

    exit_code = 1

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(self.message, file=file, err=True)


class _OneLineUsageError(_OneLineError):
    """A usage error shown as a single line on stderr (exit status 2, like click's own)."""

    exit_code = 2


def _usage_line(exc: click.UsageError) -> _OneLineUsageError:
    path = exc.ctx.command_path if exc.ctx is not None else "atomicwrite"
    message = " ".join(exc.format_message().splitlines())
    return _OneLineUsageError(f"{path}: error: {message} (see '{path} --help')")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        message = exc.strerror
        if exc.filename is not None and str(exc.filename) not in message:
            message += f": {exc.filename}"
        return message
    return str(exc) or type(exc).__name__


class _Group(click.Group):
    """A group whose errors are one line, unless ``--debug`` asks for the traceback."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            raise _usage_line(exc) from exc

    def invoke(self, ctx: click.Context) -> Any:
        from ._demo import DemoError

        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            raise _usage_line(exc) from exc
        except (AtomicWriteError, OSError, DemoError) as exc:
            if ctx.params.get("debug"):
                raise
            raise _OneLineError(f"atomicwrite: error: {_describe(exc)}") from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
@click.version_option(__version__, prog_name="atomicwrite")
def main(debug: bool) -> None:
    """All-or-nothing file writes: readers and crashes see the old or the complete new content."""


@main.command("sweep")
@click.argument("path")
@click.option(
    "--older-than",
    type=Duration(),
    default="1h",
    show_default=True,
    help="Also remove leftovers whose writer cannot be checked (another host, a reused pid) once"
    " unmodified this long: 30s, 10m, 1h, 2d...",
)
@click.option("--dry-run", is_flag=True, help="Print what would be removed; remove nothing.")
def sweep_command(path: str, older_than: float, dry_run: bool) -> None:
    """Remove the temp files that dead writers left in PATH (a directory or a URL).

    Only atomicwrite's own leftovers are touched, never a user's file and never the temp of a
    writer that is still running.  Prints each removed path.
    """
    from . import sweep

    removed = sweep(path, older_than=older_than, dry_run=dry_run)
    for entry in removed:
        click.echo(entry)
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {len(removed)} leftover temp file(s)", err=True)


@main.command("demo")
@click.option("--kills", type=click.IntRange(min=1), default=20, show_default=True, help="SIGKILLs per method.")
@click.option(
    "--size-mb", type=click.FloatRange(min=0.001), default=8.0, show_default=True, help="Payload size in MiB."
)
@click.option("--seed", type=int, default=None, help="Seed for payloads and kill moments (default: random, printed).")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False),
    default=None,
    help="Run in a fresh subdirectory of this directory (default: the system temp directory).",
)
@click.option("--keep", is_flag=True, help="Keep the demo's directory afterwards.")
@click.option(
    "--durability",
    type=click.Choice(["none", "file", "full"]),
    default="full",
    show_default=True,
    help="Flushing for both writers (plain open() fsyncs the file unless 'none').",
)
@click.option(
    "--named-temps",
    is_flag=True,
    help="Stage atomic writes in named temp files even where O_TMPFILE exists (Linux), so that"
    " kills leave leftovers for sweep() to remove.",
)
@click.option("--no-s3", is_flag=True, help="Skip the S3 part (an in-process moto server).")
@click.option(
    "--s3-kills",
    type=click.IntRange(min=1),
    default=None,
    help="SIGKILLs per S3 method.  [default: --kills, at most 6]",
)
@click.option(
    "--s3-size-mb",
    type=click.FloatRange(min=0.001),
    default=16.0,
    show_default=True,
    help="S3 payload size in MiB; above 5 MiB (the part size) atomic_open uses a multipart upload.",
)
@click.option(
    "--no-training",
    is_flag=True,
    help="Skip the Lightning part (a training run killed while it saves a checkpoint, then resumed).",
)
@click.pass_context
def demo_command(
    ctx: click.Context,
    *,
    kills: int,
    size_mb: float,
    seed: int | None,
    directory: str | None,
    keep: bool,
    durability: str,
    named_temps: bool,
    no_s3: bool,
    s3_kills: int | None,
    s3_size_mb: float,
    no_training: bool,
) -> None:
    """SIGKILL a writer mid-save, again and again: plain open() versus atomic_open.

    On local disk, then against an in-process S3 server (moto), where fsspec's fs.open("wb")
    stands in for plain open().  The S3 part needs moto[server] and s3fs
    (pip install 'atomicwrite[demo]'); without them it is skipped.  Where torch and lightning
    are installed, a tiny Lightning training run is then killed while it saves a checkpoint and
    resumed from it.

    Exits 0 when atomic_open never left a torn, empty or missing file or object and sweep()
    removed every leftover; plain open() is expected to leave torn files.
    """
    from ._demo import run_demo

    code = run_demo(
        kills=kills,
        size_mb=size_mb,
        seed=seed,
        directory=directory,
        keep=keep,
        durability=durability,
        named_temps=named_temps,
        s3=not no_s3,
        s3_kills=s3_kills,
        s3_size_mb=s3_size_mb,
        training=not no_training,
        echo=click.echo,
    )
    ctx.exit(code)
