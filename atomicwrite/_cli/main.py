"""The ``atomicwrite`` command line (``python -m atomicwrite`` too).

``atomicwrite demo`` kills writers mid-save and shows what plain ``open()`` and ``atomic_open``
leave behind; ``atomicwrite sweep PATH`` removes the temp files that dead writers left;
``doctor`` probes what holds at a location, ``verify`` checks a file's integrity, ``cp`` copies
into an atomic write.

Errors print one line on stderr: exit status 1 for a failed operation (an
:class:`~atomicwrite.AtomicWriteError` or an ``OSError``), 2 for a usage error.  ``--debug``
shows the traceback instead.  This is the only module that imports click (and rich, lazily:
only the commands that draw tables or progress bars load it).
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

import click

from .. import __version__
from .._errors import AtomicWriteError

__all__ = ["main", "parse_duration", "parse_storage_options"]

#: Exit status of doctor when the probes ran but not every guarantee holds, and of verify when
#: no check applied (1 stays "failed": an error, or a torn file).
EXIT_WEAKER = 3

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


def parse_storage_options(pairs: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as storage_options; a VALUE that parses as JSON is taken as JSON
    (numbers, booleans, objects such as ``client_kwargs={"endpoint_url": "..."}``), else as text.

    Raises ValueError for a pair without ``=``.
    """
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{pair!r} is not KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


def _options_callback(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> dict[str, Any]:
    try:
        return parse_storage_options(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from exc


def _storage_option(*names: str, help: str) -> Callable[[Any], Any]:
    return click.option(*names, multiple=True, metavar="KEY=VALUE", callback=_options_callback, help=help)


_STORAGE_HELP = (
    'A storage option for fsspec (repeatable): key=testing, client_kwargs=\'{"endpoint_url": "http://..."}\'.'
    " VALUE is JSON if it parses as JSON."
)


def _console(*, stderr: bool = False) -> Any:
    """A rich console: colours and live output only on a terminal, stable width elsewhere."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    terminal = stream.isatty()
    return Console(file=stream, highlight=False, width=None if terminal else 120, soft_wrap=False)


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
        from .demo import DemoError

        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            raise _usage_line(exc) from exc
        except (AtomicWriteError, OSError, DemoError, ImportError) as exc:
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
@_storage_option("-o", "--storage-option", "storage", help=_STORAGE_HELP)
@click.option(
    "--older-than",
    type=Duration(),
    default="1h",
    show_default=True,
    help="Also remove leftovers whose writer cannot be checked (another host, a reused pid) once"
    " unmodified this long: 30s, 10m, 1h, 2d...",
)
@click.option("--dry-run", is_flag=True, help="Print what would be removed; remove nothing.")
def sweep_command(path: str, older_than: float, dry_run: bool, storage: dict[str, Any]) -> None:
    """Remove the temp files that dead writers left in PATH (a directory or a URL).

    Only atomicwrite's own leftovers are touched, never a user's file and never the temp of a
    writer that is still running.  Prints each removed path.
    """
    from .. import sweep

    removed = sweep(path, older_than=older_than, dry_run=dry_run, storage_options=storage)
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
    from .demo import run_demo

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


_MARK = {"yes": "[green]yes[/]", "no": "[red]no[/]", "n/a": "[dim]n/a[/]", "info": ""}


@main.command("doctor")
@click.argument("path")
@_storage_option("-o", "--storage-option", "storage", help=_STORAGE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--no-multipart", is_flag=True, help="Object stores: skip the multi-part probes (they upload a few MiB).")
@click.pass_context
def doctor_command(ctx: click.Context, path: str, storage: dict[str, Any], as_json: bool, no_multipart: bool) -> None:
    """Probe PATH (a directory, a file's directory, or a store URL such as s3://bucket/prefix)
    and print what atomic_open guarantees there.

    Scratch files (objects) are created there and always removed.  Local: file system type,
    rename, O_TMPFILE, RENAME_NOREPLACE, hard links, fsync latency, directory fsync, flock,
    symlinks, free space.  Stores: conditional create and compare-and-swap, tried on a scratch
    key, multi-part limits, and cleanup after a failed write.

    Exit status: 0 when every guarantee holds, 3 when some do not, 1 on an error.
    """
    from .doctor import diagnose

    report = diagnose(path, storage_options=storage, multipart=not no_multipart)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2, default=str))
    else:
        _print_doctor(report)
    ctx.exit(0 if report.full else EXIT_WEAKER)


def _print_doctor(report: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    console = _console()
    checks = Table(title=f"atomicwrite doctor: {escape(report.probed)} ({report.kind})", title_justify="left")
    checks.add_column("check")
    checks.add_column("result")
    checks.add_column("detail")
    for check in report.checks:
        checks.add_row(escape(check.label), _MARK[check.status], escape(check.detail))
    console.print(checks)
    matrix = Table(title="guarantees atomic_open gives here", title_justify="left")
    matrix.add_column("guarantee")
    matrix.add_column("holds")
    matrix.add_column("how")
    for guarantee in report.guarantees:
        holds = {True: "[green]yes[/]", False: "[red]no[/]", None: "[yellow]unconfirmed[/]"}[guarantee.holds]
        matrix.add_row(escape(guarantee.label), holds, escape(guarantee.detail))
    console.print(matrix)
    options = ", ".join(f"{key}={value!r}" for key, value in report.options.items()) or "the defaults"
    console.print(f"recommended atomic_open options: {escape(options)}")
    for line in report.recommendations:
        console.print(f"- {escape(line)}")
    verdict = "[green]full guarantees[/]" if report.full else "[yellow]not every guarantee holds[/]"
    console.print(f"verdict: {verdict}")


@main.command("verify")
@click.argument("path")
@_storage_option("-o", "--storage-option", "storage", help=_STORAGE_HELP)
@click.option("--full", is_flag=True, help="Torch checkpoints: also torch.load them (needs torch).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def verify_command(ctx: click.Context, path: str, storage: dict[str, Any], full: bool, as_json: bool) -> None:
    """Check that the file or object PATH is complete.

    A torch checkpoint's zip structure and CRCs; a checksum recorded with the object (S3's
    x-amz-checksum-*, which atomicwrite's S3 writes record) or in a NAME.sha256 file beside it.

    Exit status: 0 intact (a check passed, none failed), 1 torn or an error, 3 unverified (no
    check applies).
    """
    from .verify import verify

    report = verify(path, storage_options=storage, full=full)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        for check in report.checks:
            mark = {True: "ok", False: "FAILED", None: "-"}[check.ok]
            click.echo(f"{check.name}: {mark}: {check.detail}")
        click.echo(f"{path}: {report.verdict}")
    ctx.exit({"ok": 0, "torn": 1, "unverified": EXIT_WEAKER}[report.verdict])


@main.command("cp")
@click.argument("source")
@click.argument("destination")
@_storage_option("-o", "--storage-option", "storage", help="Storage option for both sides. " + _STORAGE_HELP)
@_storage_option("--src-option", "source_storage", help="Storage option for SOURCE only (repeatable).")
@_storage_option("--dst-option", "destination_storage", help="Storage option for DESTINATION only (repeatable).")
@click.option("-x", "--exclusive", is_flag=True, help="Fail if DESTINATION exists (mode 'xb').")
@click.option(
    "--durability", type=click.Choice(["none", "file", "full"]), default="full", show_default=True, help="Flushing."
)
@click.option("--accept-weaker-durability", is_flag=True, help="Report weaker durability instead of failing.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary line.")
def cp_command(
    *,
    source: str,
    destination: str,
    storage: dict[str, Any],
    source_storage: dict[str, Any],
    destination_storage: dict[str, Any],
    exclusive: bool,
    durability: str,
    accept_weaker_durability: bool,
    quiet: bool,
) -> None:
    """Copy SOURCE (a path or any fsspec URL) to DESTINATION atomically: readers of DESTINATION
    see its old content or the complete copy, never a part of it.

    A DESTINATION that ends with / or is an existing directory gets SOURCE's name.  The bytes
    are streamed (a progress bar on a terminal); nothing but the content is copied.
    """
    from .cp import copy

    console = _console(stderr=True)
    bar: Any = None
    if console.is_terminal and not quiet:
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

        bar = Progress(
            "{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )

    def progress(total: int | None) -> Any:
        return _BarCallback(bar, bar.add_task("copying", total=total))

    with bar if bar is not None else contextlib.nullcontext():
        result = copy(
            source,
            destination,
            source_options={**storage, **source_storage},
            destination_options={**storage, **destination_storage},
            exclusive=exclusive,
            durability=durability,  # type: ignore[arg-type]  # one of click.Choice's
            accept_weaker_durability=accept_weaker_durability,
            progress=progress if bar is not None else None,
        )
    if not quiet:
        click.echo(f"{result.target}: {result.bytes_written} bytes, durability {result.durability!r}")


class _BarCallback:
    """atomic_open's progress callback, drawn by a rich progress bar (thread-safe)."""

    def __init__(self, bar: Any, task: Any) -> None:
        self._bar = bar
        self._task = task

    def relative_update(self, inc: int = 1) -> None:
        self._bar.advance(self._task, inc)
