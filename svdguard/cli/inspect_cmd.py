"""``svdguard inspect``: spectra of matrices and whole checkpoints, ill-posed ones flagged.

The command only parses: ``svdguard.app.inspection.inspect`` does the work and
``render_inspect`` the output. Data goes to stdout (or ``--output``), talk and
the progress bar to stderr. Registered by :mod:`svdguard.cli.app`; torch and the
application modules are imported when the command runs, not for ``--help``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from svdguard.cli import exit_codes
from svdguard.cli.console import fits_width, make_console
from svdguard.cli.error_boundary import guarded, say

if TYPE_CHECKING:
    from svdguard.app.report import InspectionItem, InspectionSummary, Severity

__all__ = ["DEFAULT_MAX_ELEMENTS", "HELP", "Device", "FailOn", "OutputFormat", "Precision", "run"]

#: ``svdguard.io.DEFAULT_MAX_ELEMENTS`` and ``svdguard.io.limits.DEFAULT_MAX_TIME``, spelt
#: out so that ``--help`` needs neither torch nor the readers; a test keeps them equal to
#: the library's.
DEFAULT_MAX_ELEMENTS = 2**31
DEFAULT_MAX_TIME = 600.0


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"
    github = "github"


class FailOn(str, Enum):
    error = "error"
    warning = "warning"
    info = "info"
    never = "never"

    @property
    def level(self) -> Severity | None:
        from svdguard.app.report import Severity

        return None if self is FailOn.never else Severity(self.value)


class Precision(str, Enum):
    float64 = "float64"
    float32 = "float32"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


HELP = """Compute the spectrum of every matrix in PATHS and flag the ill-posed ones.

PATHS: .npy, .npz (every array), .safetensors, a sharded checkpoint
(*.safetensors.index.json), a directory (Hugging Face layout), .pt/.bin state
dicts (weights only), or a glob. Floating 2-D tensors are analysed, ≥3-D ones
as shape[0] × prod(rest) (conv kernels); scalars, 1-D, integer and bool tensors
are skipped and counted. One tensor is in memory at a time.

Flags and severities: nonfinite (NaN/Inf entries): error. degenerate: pairs of
singular values tied at rounding level (gradients through U or V undefined):
error; near-degenerate pairs (|s_i − s_j| ≤ --gap-tol·σ_max): warning.
rank-deficient (numerical rank < min(m, n), tolerance max(m, n)·ε·σ_max):
warning. ill-conditioned (κ₂ ≥ --max-cond): warning. zero (all-zero matrix):
warning. noise-floor (bf16/fp16/fp8: singular values or gaps below
ε(storage)·σ_max): info. unresolved (--precision float32 cannot resolve σ_min):
info. A tensor that cannot be read or decomposed is a failed row: error.
ε is that of the tensor's working dtype (float32 for bf16/fp16/fp8).
"""


@contextmanager
def progress_display(enabled: bool) -> Iterator[Callable[[InspectionItem], None]]:
    """A spinner with a count on stderr while rows arrive (only when ``enabled``)."""
    if not enabled:
        yield lambda item: None
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.completed} tensors"),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=make_console(stderr=True),
        transient=True,
    )
    with progress:
        task = progress.add_task("", total=None)
        yield lambda item: progress.update(task, advance=1, description=item.name)


def input_files(files: list[Path]) -> list[Path]:
    """``files`` and the shards their checkpoint indexes name (read from the headers only).

    An index that cannot be read adds nothing here; it becomes a failed row later,
    and the rows' own paths are checked again before the report is written.
    """
    from svdguard.errors import InputError
    from svdguard.io import iter_records
    from svdguard.io.sharded import is_index

    found = list(files)
    for file in files:
        if is_index(file):
            try:
                found.extend(record.path for record in iter_records(file))
            except InputError:
                pass
    return found


def unusable(items: list[InspectionItem]) -> list[InspectionItem]:
    """The rows of inputs that could not be used: a file, shard, member or payload that could
    not be read (corrupt or refused as hostile), or a tensor of a dtype svdguard cannot read.

    Resource skips (too large for max_elements or the memory, too slow for max_time) are
    not among them: the file is fine, this machine or these limits are not.
    """
    from svdguard.app.report import FailedReport, SkippedTensor, SkipReason

    return [
        item
        for item in items
        if (isinstance(item, FailedReport) and item.stage in ("read", "load"))
        or (isinstance(item, SkippedTensor) and item.reason is SkipReason.UNSUPPORTED_DTYPE)
    ]


def exit_code(summary: InspectionSummary, fail_on: FailOn, unusable_rows: int = 0) -> int:
    """2 when an input could not be used, 1 when a row reaches --fail-on, else 0."""
    if summary.input_errors or unusable_rows:
        return exit_codes.USAGE
    return exit_codes.FINDINGS if summary.reaches(fail_on.level) else exit_codes.OK


def render(
    output_format: OutputFormat,
    items: list[InspectionItem],
    summary: InspectionSummary,
    settings: dict[str, Any],
    code: int,
    file: Any,
) -> None:
    """Write the report in ``output_format`` to ``file`` (a text stream)."""
    from svdguard.app.formatting import to_json
    from svdguard.cli.render_inspect import json_document, print_table, to_csv, to_github

    footer = f"→ exit {code} (--fail-on {settings['fail_on']})"
    if output_format is OutputFormat.table:
        console = make_console(file)
        to_stdout = file is None or file is sys.stdout
        fit = to_stdout and fits_width(console)
        print_table(console, items, summary, footer, settings["paths"], fit_to_console=fit)
    elif output_format is OutputFormat.json:
        file.write(to_json(json_document(items, summary, settings, code)))
    elif output_format is OutputFormat.csv:
        file.write(to_csv(items))
    else:
        file.write(to_github(items, summary, footer))


@guarded
def run(
    ctx: typer.Context,
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="Files, directories or globs to inspect.", metavar="PATH", show_default=False
        ),
    ],
    output_format: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="table, json, csv or github annotations.")
    ] = OutputFormat.table,
    fail_on: Annotated[
        FailOn,
        typer.Option("--fail-on", help="Exit 1 when a row is at or above this severity."),
    ] = FailOn.error,
    precision: Annotated[
        Precision,
        typer.Option(
            "--precision",
            help="dtype of the SVD. float32 is faster but resolves κ₂ only to ≈1/(max(m,n)·1.2e-7).",
        ),
    ] = Precision.float64,
    device: Annotated[
        Device,
        typer.Option("--device", help="auto = cuda when available (batched gesvd), else cpu."),
    ] = Device.auto,
    include: Annotated[
        list[str] | None,
        typer.Option(
            "--include",
            metavar="GLOB",
            help="Only tensors whose key matches this glob. Repeatable.",
        ),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude",
            metavar="GLOB",
            help="Skip tensors whose key matches this glob. Repeatable.",
        ),
    ] = None,
    max_cond: Annotated[
        float | None,
        typer.Option(
            "--max-cond",
            help="κ₂ at or above which a matrix is ill-conditioned. [default: 1/√ε of the "
            "tensor's working dtype: 2.9e3 for float32/bf16/fp16, 6.7e7 for float64]",
            show_default=False,
        ),
    ] = None,
    gap_tol: Annotated[
        float | None,
        typer.Option(
            "--gap-tol",
            help="Relative gap |s_i − s_j|/σ_max at or below which a pair is near-degenerate. "
            "[default: √ε of the working dtype: 3.5e-4 for float32/bf16/fp16, 1.5e-8 for float64]",
            show_default=False,
        ),
    ] = None,
    max_elements: Annotated[
        int,
        typer.Option("--max-elements", min=1, help="Skip tensors with more elements than this."),
    ] = DEFAULT_MAX_ELEMENTS,
    max_time: Annotated[
        float,
        typer.Option(
            "--max-time",
            metavar="SECONDS",
            help="Skip a matrix whose SVD is estimated to take longer than this (from "
            "m·n·min(m,n) at a conservative measured rate).",
        ),
    ] = DEFAULT_MAX_TIME,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Write the report here (atomically) instead of stdout (- is stdout); the summary "
            "goes to stderr. Never over an input, a device or anything but a regular file.",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --output.")] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bar and no talk on stderr.")
    ] = False,
) -> None:
    from svdguard.app.inspection import inspect
    from svdguard.app.report import InspectionSummary
    from svdguard.io import atomic_output, expand_inputs
    from svdguard.io.text import printable
    from svdguard.io.writers import check_output

    files = expand_inputs(paths)  # a missing path is a usage error before any work
    if output is not None and str(output) == "-":
        output = None
    if output is not None:  # refuse a bad -o before any work
        check_output(output, force=force, inputs=input_files(files))
    rows = inspect(
        files,
        precision=precision.value,
        device=device.value,
        include=include or (),
        exclude=exclude or (),
        max_elements=max_elements,
        max_time=max_time,
        max_cond=max_cond,
        gap_rtol=gap_tol,
    )
    settings = {
        "paths": [printable(str(p)) for p in files],  # names as the rows show them
        "precision": precision.value,
        "device": device.value,
        "fail_on": fail_on.value,
        "max_cond": max_cond,
        "gap_tol": gap_tol,
        "max_elements": max_elements,
        "max_time": max_time,
        "include": [printable(glob) for glob in include or ()],
        "exclude": [printable(glob) for glob in exclude or ()],
    }
    items: list[InspectionItem] = []
    show_progress = not quiet and make_console(stderr=True).is_terminal
    with progress_display(show_progress) as tick:
        for item in rows:
            items.append(item)
            tick(item)
    summary = InspectionSummary.of(items)
    bad_inputs = unusable(items)
    code = exit_code(summary, fail_on, len(bad_inputs))
    if output is None:
        render(output_format, items, summary, settings, code, sys.stdout)
    else:
        # Every file read, the shards of an index included (as named on disk: the rows'
        # paths are escaped for display).
        inputs: list[str | Path] = [*files, *input_files(files)]
        with atomic_output(output, force=force, inputs=inputs) as temporary:
            with open(temporary, "w", encoding="utf-8", newline="") as stream:
                render(output_format, items, summary, settings, code, stream)
        if not quiet:
            say(f"{summary.line()} → exit {code}; report written to {output}")
    if bad_inputs and not quiet:
        say(
            f"svdguard: error: {len(bad_inputs)} input(s) could not be used, "
            f"e.g. {bad_inputs[0].name} (see the report)"
        )
    raise typer.Exit(code)
