"""``svdguard run``: run an unmodified Python program with torch's SVD/eigh guarded.

    svdguard run [--method auto] SCRIPT [ARGS...]
    svdguard run [--method auto] -m MODULE [ARGS...]

Like ``python -m cProfile``: the program runs in this process through :mod:`runpy`
as ``__main__``, with ``sys.argv`` set to its own (``[SCRIPT, ARGS...]``) and
``sys.path[0]`` its directory (the current directory for ``-m``), inside
``svdguard.guard(report=True)``. stdin and stdout are the program's; a short
report of the call sites goes to stderr when it ends. The exit status is the
program's (``sys.exit(n)`` → n, an uncaught exception → 1 after its traceback);
svdguard's own usage errors exit 2 (docs/guard.md).
"""

from __future__ import annotations

import importlib.util
import os
import runpy
import sys
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer

from svdguard.cli import exit_codes
from svdguard.cli.error_boundary import guarded, say
from svdguard.cli.grad_cmd import METHODS
from svdguard.errors import InputError

if TYPE_CHECKING:  # torch is imported only when a program is run, not for --help
    from svdguard.guard_mode import GuardReport

#: ``svdguard.linalg.eigh.EIGH_METHODS``, spelt out so that ``--help`` needs no torch (a test
#: keeps the two equal).
EIGH_METHODS = ("auto", "clamp", "lorentz", "native")

#: What Click must do for ``run``: stop parsing at the program, hand the rest over verbatim.
CONTEXT_SETTINGS: dict[str, Any] = {
    "allow_extra_args": True,
    "ignore_unknown_options": True,
    "allow_interspersed_args": False,
}

EPILOG = (
    "Exit status: the program's own (an uncaught exception: 1; Ctrl-C: 130); "
    "2 when svdguard cannot start it (no such script or module, unknown --method)."
)

HELP = (
    "Run a Python program (SCRIPT or -m MODULE, then its own arguments) with every "
    "torch.linalg.svd / torch.svd / svdvals / eigh / eigvalsh call routed to svdguard, "
    "then report the call sites on stderr. The program itself is not edited; its exit "
    "status is passed through."
)


@contextmanager
def _program_environment(argv: list[str], path0: str) -> Iterator[None]:
    """sys.argv and sys.path[0] as the program expects them; both restored afterwards."""
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = argv
    sys.path.insert(0, path0)
    try:
        yield
    finally:
        sys.argv = saved_argv
        sys.path[:] = saved_path


def _exit_status(code: Any) -> int:
    """The status ``python`` would exit with for ``SystemExit(code)``."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _print_program_traceback(error: BaseException) -> None:
    """The traceback as ``python SCRIPT`` prints it: frames of this launcher and runpy left out."""
    tb = error.__traceback__
    ours = {os.path.abspath(__file__), os.path.abspath(runpy.__file__)}
    while tb is not None and (
        os.path.abspath(tb.tb_frame.f_code.co_filename) in ours
        or tb.tb_frame.f_code.co_filename.startswith("<frozen runpy")
    ):
        tb = tb.tb_next
    traceback.print_exception(type(error), error, tb)


def _short_path(path: str) -> str:
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return path
    return path if relative.startswith("..") else relative


def _count(n: int, noun: str, plural: str | None = None) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {plural or noun + 's'}"


def render_report(report: GuardReport) -> list[str]:
    """The lines of the end-of-run report (stderr)."""
    if not report.sites:
        return [f"svdguard run (method={report.method}): no SVD or eigh call was made"]
    lines = [
        f"svdguard run (method={report.method}): {_count(report.calls, 'SVD/eigh call')} from "
        f"{_count(len(report.sites), 'call site')}; "
        f"{_count(report.tie_backwards, 'backward pass', 'backward passes')} met ties or zeros, "
        f"{report.torch_nonfinite} of them would be NaN/inf with torch"
    ]
    width = max(len(f"{_short_path(s.file)}:{s.line}") for s in report.sites)
    for site in report.sites:
        where = f"{_short_path(site.file)}:{site.line}".ljust(width)
        lines.append(
            f"  {where}  {site.function}: {_count(site.calls, 'call')}, "
            f"{site.backward_passes} backward, {site.tie_backwards} met ties/zeros, "
            f"{site.torch_nonfinite} NaN/inf with torch"
        )
    return lines


def _module_exists(name: str) -> bool:
    """Whether ``name`` can be imported from the current directory (as ``python -m`` would)."""
    sys.path.insert(0, os.getcwd())
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package is missing, or the name is malformed
        return False
    finally:
        sys.path.pop(0)


def _target(program: str | None, module: str | None, rest: list[str]) -> tuple[str, list[str]]:
    """(what to run, the program's own argv) from the command line."""
    if module is not None:
        if not _module_exists(module):
            raise InputError(f"-m {module}: no module named {module!r}")
        args = ([program] if program is not None else []) + rest
        return module, [module, *args]
    if program is None:
        raise InputError("give a SCRIPT to run, or -m MODULE")
    if not os.path.exists(program):
        raise InputError(f"{program}: no such file")
    return program, [program, *rest]


def run(
    ctx: typer.Context,
    program: Annotated[
        str | None,
        typer.Argument(
            metavar="SCRIPT [ARGS]...",
            help="The script to run and its arguments (with -m: the module's arguments).",
            show_default=False,
        ),
    ] = None,
    module: Annotated[
        str | None,
        typer.Option(
            "-m", "--module", help="Run a module as a script, like python -m.", show_default=False
        ),
    ] = None,
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help=f"Backward method of svdguard.svd ({', '.join(METHODS)}).",
        ),
    ] = "auto",
    eigh_method: Annotated[
        str | None,
        typer.Option(
            "--eigh-method",
            help=f"Backward method of eigh ({', '.join(EIGH_METHODS)}); "
            "default: --method where eigh has it, else auto.",
            show_default=False,
        ),
    ] = None,
    gauge_check: Annotated[
        bool,
        typer.Option(
            "--gauge-check",
            help="Warn when a loss depends on the basis inside tied singular values/eigenvalues.",
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No report at the end.")] = False,
) -> None:
    """Run a Python program with torch's SVD/eigh guarded; report the call sites on stderr."""
    _run(ctx.args, program, module, method, eigh_method, gauge_check, quiet)


@guarded(worker=False)  # the program may install its own signal handlers
def _run(
    rest: list[str],
    program: str | None,
    module: str | None,
    method: str,
    eigh_method: str | None,
    gauge_check: bool,
    quiet: bool,
) -> None:
    from svdguard.guard_mode import guard

    target, argv = _target(program, module, list(rest))
    try:
        mode = guard(method, eigh_method=eigh_method, gauge_check=gauge_check, report=True)
    except InputError as err:
        raise InputError(f"--method/--eigh-method: {err}") from None
    path0 = os.getcwd() if module is not None else os.path.dirname(os.path.abspath(target))
    status = 0
    try:
        with _program_environment(argv, path0), mode:
            if module is not None:
                runpy.run_module(target, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(target, run_name="__main__")
    except SystemExit as stop:
        status = _exit_status(stop.code)
    except KeyboardInterrupt:
        say("svdguard run: interrupted")
        status = exit_codes.INTERRUPTED
    except Exception as err:  # noqa: BLE001 - the program's own error: shown like python does
        _print_program_traceback(err)
        status = 1
    finally:
        sys.stdout.flush()
    if not quiet:
        for line in render_report(mode.report()):
            say(line)
    if status:
        raise typer.Exit(status)


def build_app() -> typer.Typer:
    """A Typer app with ``run`` as its only command (``python -m svdguard.cli.run_cmd``)."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
    app.command(name="run", help=HELP, epilog=EPILOG, context_settings=CONTEXT_SETTINGS)(run)

    @app.callback()
    def _root() -> None:  # a group, so that the command is spelled ``run`` as in svdguard
        pass

    return app


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``run`` with ``argv`` (default: sys.argv[1:], without the ``run`` word); return the status."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        build_app()(args=["run", *args], prog_name="svdguard")
    except SystemExit as stop:  # standalone mode always ends with SystemExit
        return _exit_status(stop.code)
    return exit_codes.OK


if __name__ == "__main__":
    sys.exit(main())
