"""The ``svdguard`` Typer application; each command lives in its own module."""

from __future__ import annotations

from typing import Annotated

import typer

from svdguard import __version__
from svdguard.cli.exit_codes import EPILOG
from svdguard.cli.guard import STATE

app = typer.Typer(
    name="svdguard",
    help="Find ill-posed matrices (condition numbers, singular-value gaps) and compute "
    "SVD gradients that stay finite.",
    epilog=EPILOG,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        print(f"svdguard {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show Python tracebacks on errors.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    STATE.debug = debug


# Commands register themselves on ``app`` when their module is imported.
from svdguard.cli import commands  # noqa: E402,F401


def main() -> None:
    """Console-script entry point."""
    app()
