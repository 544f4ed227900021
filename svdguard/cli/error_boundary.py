"""One place that turns exceptions and signals into a one-line message on stderr and an exit code.

``--debug`` (a root option) reaches a command through its ``ctx: typer.Context``
argument: ``ctx.obj`` is the :class:`CliState` the root callback of
:mod:`svdguard.cli.app` made.

Signals. A long SVD runs inside LAPACK, where Python cannot deliver a
KeyboardInterrupt until the call returns (minutes, for a large matrix). So a
command runs in a worker thread, and the main thread only waits for it, in
steps of :data:`POLL_SECONDS`: Ctrl-C (SIGINT) and SIGTERM reach the main
thread at once (torch releases the GIL inside LAPACK), the temporary files of
unfinished outputs are removed, and the worker is abandoned: :func:`main`
(the console entry point) then ends the process with ``os._exit``, so that a
decomposition still running cannot delay the exit. Exit 130 for Ctrl-C, 143
for SIGTERM.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any, TypeVar, overload

import typer

from svdguard.cli import exit_codes
from svdguard.errors import OutputExistsError, SvdguardError

__all__ = ["POLL_SECONDS", "CliState", "Terminated", "abandoned_worker", "guarded", "say"]

F = TypeVar("F", bound=Callable[..., Any])

#: How often the main thread wakes while a command runs: the delay between a signal and
#: the exit (well under the one second a user waits for Ctrl-C to take effect).
POLL_SECONDS = 0.05

_ABANDONED = threading.Event()

#: The terminal sequence that shows the cursor again (a progress display hides it).
SHOW_CURSOR = "\x1b[?25h"


class Terminated(BaseException):
    """SIGTERM arrived (raised in the main thread, like KeyboardInterrupt for SIGINT)."""


@dataclass
class CliState:
    """Settings of the root command, handed to every command through ``ctx.obj``."""

    debug: bool = False


def say(message: str) -> None:
    """Write one line of talk to stderr (never stdout, which carries data); data in it escaped."""
    from svdguard.io.text import printable  # svdguard.io loads torch: not for --help

    print(printable(message), file=sys.stderr, flush=True)


def abandoned_worker() -> bool:
    """True when a command was interrupted while its worker thread was still running."""
    return _ABANDONED.is_set()


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


def _context(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The click Context among the arguments (None when there is none)."""
    for value in (*args, *kwargs.values()):
        if callable(getattr(value, "scope", None)) and hasattr(value, "find_object"):
            return value
    return None


def _message(err: SvdguardError) -> str:
    """The error in the CLI's words: the library message, plus the flag that helps."""
    if isinstance(err, OutputExistsError):
        return f"{err}; pass --force to overwrite"
    return str(err)


def _stopped_rank() -> SvdguardError | None:
    """The error of a distributed rank that SIGTERM stopped (None outside a distributed run)."""
    distributed = sys.modules.get("svdguard.app.distributed")  # loaded only by such a run
    stopped: SvdguardError | None = (
        None if distributed is None else distributed.stopped_by_launcher()
    )
    return stopped


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`Terminated` in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _in_worker(command: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run ``command`` in a daemon thread; the main thread waits, interruptible at any moment."""
    if threading.current_thread() is not threading.main_thread():
        return command(*args, **kwargs)
    outcome: dict[str, Any] = {}
    done = threading.Event()
    context = _context(args, kwargs)

    def work() -> None:
        try:
            # click keeps the current context per thread: make it current in the worker too.
            scope = (
                context.scope(cleanup=False) if context is not None else contextlib.nullcontext()
            )
            with scope:
                outcome["value"] = command(*args, **kwargs)
        except BaseException as err:  # noqa: BLE001 - handed to the main thread as it is
            outcome["error"] = err
        finally:
            done.set()

    worker = threading.Thread(target=work, name="svdguard-command", daemon=True)
    worker.start()
    try:
        while not done.wait(POLL_SECONDS):
            pass
    except BaseException:
        if not done.is_set():
            _ABANDONED.set()
        from svdguard.io.writers import discard_temporaries

        discard_temporaries()  # the worker may be writing an output: leave nothing behind
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _guard(command: F, *, worker: bool) -> F:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with _sigterm_raises():
                if worker:
                    return _in_worker(command, args, kwargs)
                return command(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            say("svdguard: interrupted")
            raise typer.Exit(exit_codes.INTERRUPTED) from None
        except Terminated:
            stopped = _stopped_rank()
            if stopped is not None:  # torchrun stopping every rank: say which had not finished
                say(f"svdguard: error: {stopped}")
                raise typer.Exit(exit_codes.USAGE) from None
            say("svdguard: terminated")
            raise typer.Exit(exit_codes.TERMINATED) from None
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


@overload
def guarded(command: F, *, worker: bool = True) -> F: ...
@overload
def guarded(command: None = None, *, worker: bool = True) -> Callable[[F], F]: ...
def guarded(command: F | None = None, *, worker: bool = True) -> F | Callable[[F], F]:
    """Run a command so that no traceback reaches the user, and signals end it at once.

    SvdguardError → ``svdguard: error: <message>`` and exit 2; Ctrl-C → exit 130;
    SIGTERM → exit 143; anything else → exit 3 with a hint to rerun with
    ``--debug`` (which prints the traceback as well). ``worker=True`` (the
    default) runs the command in a worker thread, so that a signal ends it
    even inside a long decomposition (see the module docstring);
    ``guarded(worker=False)`` keeps it in the main thread (a command that runs
    a user's program, which may install its own signal handlers).
    """
    if command is None:
        return lambda function: _guard(function, worker=worker)
    return _guard(command, worker=worker)


def exit_now_if_abandoned(code: int) -> None:
    """End the process with ``code`` at once when an interrupted worker is still running.

    Called by the console entry point only (never inside a test runner's
    process): a normal interpreter exit would wait for the C++ runtime under
    a decomposition still in progress.
    """
    if not _ABANDONED.is_set():
        return
    from svdguard.io.writers import discard_temporaries

    discard_temporaries()
    with contextlib.suppress(Exception):
        if sys.stderr.isatty():  # the abandoned progress display hid the cursor: show it
            sys.stderr.write(SHOW_CURSOR)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
