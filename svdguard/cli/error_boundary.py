"""One place that turns exceptions into a one-line message on stderr and an exit code.

``--debug`` (a root option) reaches a command through its ``ctx: typer.Context``
argument: ``ctx.obj`` is the :class:`CliState` the root callback of
:mod:`svdguard.cli.app` made.
"""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import typer

from svdguard.cli import exit_codes
from svdguard.errors import OutputExistsError, SvdguardError

__all__ = ["CliState", "guarded", "say"]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class CliState:
    """Settings of the root command, handed to every command through ``ctx.obj``."""

    debug: bool = False


def say(message: str) -> None:
    """Write one line of talk to stderr (never stdout, which carries data)."""
    print(message, file=sys.stderr, flush=True)


def _debug(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """``--debug`` from the command's context argument (False when there is none)."""
    # Typer hands the command click's own Context (typer.Context's base class): match on
    # what is used, find_object, which finds the root's CliState from any subcommand.
    for value in (*args, *kwargs.values()):
        find_object = getattr(value, "find_object", None)
        if callable(find_object):
            state = find_object(CliState)
            return isinstance(state, CliState) and state.debug
    return False


def _message(err: SvdguardError) -> str:
    """The error in the CLI's words: the library message, plus the flag that helps."""
    if isinstance(err, OutputExistsError):
        return f"{err}; pass --force to overwrite"
    return str(err)


def guarded(command: F) -> F:
    """Run a command so that no traceback reaches the user.

    SvdguardError → ``svdguard: error: <message>`` and exit 2; Ctrl-C → exit 130;
    anything else → exit 3 with a hint to rerun with ``--debug`` (which prints the
    traceback as well).
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            say("svdguard: interrupted")
            raise typer.Exit(exit_codes.INTERRUPTED) from None
        except SvdguardError as err:
            if _debug(args, kwargs):
                traceback.print_exc()
            say(f"svdguard: error: {_message(err)}")
            raise typer.Exit(exit_codes.USAGE) from None
        except Exception as err:  # noqa: BLE001 - the last line of defence
            if _debug(args, kwargs):
                traceback.print_exc()
            say(f"svdguard: internal error: {type(err).__name__}: {err} (rerun with --debug)")
            raise typer.Exit(exit_codes.INTERNAL) from None

    return wrapper  # type: ignore[return-value]
