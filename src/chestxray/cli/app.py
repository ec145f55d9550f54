"""The Typer application, its one error boundary, help grouped by section, and the project's log on stderr
(logs.setup_logging, once per command)."""

from __future__ import annotations

import errno

import typer
from typer.core import TyperArgument, TyperCommand

from ..errors import ChestXrayError
from ..logs import setup_logging

app = typer.Typer(
    help="Infected-vs-Normal chest X-ray classification by two-stage transfer learning. "
    "Research tool, not a diagnostic device.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: no type placeholders on flags
)


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


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug messages.")):
    setup_logging(verbose)


def _fail(e: Exception | str) -> None:
    typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


data_app = typer.Typer(help="Datasets: import public ones, merge, check, split.", no_args_is_help=True)
app.add_typer(data_app, name="data")
