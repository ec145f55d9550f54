"""The Typer application, its one error boundary, help grouped by section, and the project's log on stderr."""

from __future__ import annotations

import errno
import logging
import sys

import typer
from typer.core import TyperArgument, TyperCommand

from ..errors import ChestXrayError

app = typer.Typer(
    help="Infected-vs-Normal chest X-ray classification by two-stage transfer learning. "
    "Research tool, not a diagnostic device.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: no type placeholders on flags
)
log = logging.getLogger("chestxray")


class _Command(TyperCommand):
    """Every command's error boundary: the project's errors, and a folder or file the user cannot write or read,
    end the command with one line and exit 2. Usage lines in the usual form: `chestxray predict [OPTIONS] RUN [PATHS]...`."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ChestXrayError as e:
            _fail(e)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            where = e.filename or "a file"
            why = "read-only file system" if e.errno == errno.EROFS else "permission denied"
            _fail(f"{where}: {why} ({e.strerror}); give a folder you can write to, or change its permissions")

    def format_options(self, ctx, formatter) -> None:
        """Options under one heading per section (a config section's title, set as the option's help panel), the
        command's own first."""
        groups: dict[str, list] = {}
        for param in self.get_params(ctx):
            row = param.get_help_record(ctx)
            if row is not None and not isinstance(param, TyperArgument):
                groups.setdefault(getattr(param, "rich_help_panel", None) or "Options", []).append(row)
        for title, rows in groups.items():
            with formatter.section(title):
                formatter.write_dl(rows)

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar or param.name.upper()
                pieces.append((name if param.required else f"[{name}]") + ("..." if param.nargs != 1 else ""))
        return pieces


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of the message (a test runner may swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(verbose: bool = False) -> None:
    """The project's messages on stderr: INFO and above, DEBUG with --verbose. Set once per command."""
    for h in [h for h in log.handlers if isinstance(h, _StderrHandler)]:
        log.removeHandler(h)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug messages.")):
    setup_logging(verbose)


def _fail(e: Exception | str) -> None:
    typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


data_app = typer.Typer(help="Datasets: import public ones, merge, check, split.", no_args_is_help=True)
app.add_typer(data_app, name="data")
