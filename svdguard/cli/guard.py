"""One place that turns exceptions into a one-line message on stderr and an exit code."""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from svdguard.cli import exit_codes
from svdguard.errors import SvdguardError

F = TypeVar("F", bound=Callable[..., Any])


class _State:
    debug: bool = False


STATE = _State()


def say(message: str) -> None:
    """Write one line of talk to stderr (never stdout, which carries data)."""
    print(message, file=sys.stderr, flush=True)


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
            if STATE.debug:
                traceback.print_exc()
            say(f"svdguard: error: {err}")
            raise typer.Exit(exit_codes.USAGE) from None
        except Exception as err:  # noqa: BLE001 - the last line of defence
            if STATE.debug:
                traceback.print_exc()
            say(f"svdguard: internal error: {type(err).__name__}: {err} (rerun with --debug)")
            raise typer.Exit(exit_codes.INTERNAL) from None

    return wrapper  # type: ignore[return-value]
