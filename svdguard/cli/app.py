"""The ``svdguard`` Typer application: the root options, and every command registered here.

Command modules import nothing from this one (no cycle); their heavy imports
(torch, ``svdguard.app``) happen inside the command functions, so that
``svdguard --help`` and ``--version`` start without torch.
"""

from __future__ import annotations

from typing import Annotated

import typer

from svdguard import __version__
from svdguard.cli import exit_codes, explain_cmd, grad_cmd, inspect_cmd, repair_cmd, run_cmd
from svdguard.cli.error_boundary import CliState, exit_now_if_abandoned
from svdguard.cli.exit_codes import EPILOG

__all__ = ["app", "main"]

app = typer.Typer(
    name="svdguard",
    help="Find ill-posed matrices (condition numbers, singular-value gaps) and compute "
    "SVD gradients that stay finite.",
    epilog=EPILOG,
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        print(f"svdguard {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    ctx: typer.Context,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show Python tracebacks on errors.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    ctx.obj = CliState(debug=debug)


app.command("inspect", help=inspect_cmd.HELP, epilog=EPILOG)(inspect_cmd.run)
app.command("grad", epilog=grad_cmd.EPILOG)(grad_cmd.run)
app.command("repair", help=repair_cmd.HELP, epilog=repair_cmd.EPILOG)(repair_cmd.run)
app.command(
    "run", help=run_cmd.HELP, epilog=run_cmd.EPILOG, context_settings=run_cmd.CONTEXT_SETTINGS
)(run_cmd.run)
app.command("explain")(explain_cmd.run)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except SystemExit as stop:  # a signal left a decomposition running: exit without waiting
        exit_now_if_abandoned(stop.code if isinstance(stop.code, int) else exit_codes.USAGE)
        raise
