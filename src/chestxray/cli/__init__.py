"""Command-line interface: parse, call one job, print. Every command's options are declared once (`options`), every
table is formatted in one place (`tables`), and one error boundary (`app._Command`) turns the project's errors into
one line and exit 2.

A research tool, not a diagnostic device.
"""

from __future__ import annotations

import sys

import typer

# isort: off
from . import train, evaluate, predict, data, lungs  # noqa: F401  (each registers its commands on `app`, in this order)
# isort: on
from .app import app, setup_logging  # noqa: F401

BUG_REPORT = ("chestxray stopped on an error that is not about your input: a bug, or the machine. "
              "Please report it with the command line and the traceback above.")


def main() -> None:
    """The console script: the project's own errors exit 2 with one line (in each command); anything
    else is a bug, shown with its traceback, exit 1."""
    try:
        app()
    except Exception as e:  # noqa: BLE001 - the last line of defence
        import traceback

        traceback.print_exc()
        import torch

        if isinstance(e, torch.OutOfMemoryError):
            typer.secho("out of memory: try a smaller --batch-size or --img-size", fg=typer.colors.RED, err=True)
        typer.secho(BUG_REPORT, fg=typer.colors.RED, err=True)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
