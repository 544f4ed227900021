"""``svdguard inspect``: spectra of matrices and whole checkpoints, ill-posed ones flagged.

The command only parses: ``svdguard.app.inspection.inspect`` does the work and
``render_inspect`` the output. Data goes to stdout (or ``--output``), talk and
the progress bar to stderr. Registered by :mod:`svdguard.cli.app`; torch and the
application modules are imported when the command runs, not for ``--help``.
"""

from __future__ import annotations

import gc
import math
import os
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

__all__ = [
    "DEFAULT_MAX_ELEMENTS",
    "HELP",
    "Device",
    "FailOn",
    "OutputFormat",
    "Precision",
    "ProfileName",
    "SortKey",
    "default_threads",
    "run",
]

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


class ProfileName(str, Enum):
    health = "health"
    svd_grad = "svd-grad"


class SortKey(str, Enum):
    severity = "severity"
    cond = "cond"
    gap = "gap"
    name = "name"
    file = "file"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


HELP = """Compute the spectrum of every matrix in PATHS and flag the ill-posed ones.

PATHS: .npy, .npz, .safetensors, sharded checkpoints (*.safetensors.index.json),
.pt/.bin/.pth state dicts and Lightning .ckpt files (weights only), directories
(searched recursively; optimizer, scheduler, RNG and training-argument files
and .bin copies of .safetensors weights are skipped with the reason) or globs.
Floating tensors with 2 dimensions are analysed, ≥3-D ones as shape[0] ×
prod(rest) (or as a stack of matrices with --batch). One tensor is in memory at
a time.

Two questions: --profile health (default) asks whether the checkpoint is
numerically healthy to use; --profile svd-grad whether differentiating through
the SVD of its weights will break (ties are errors there). Every finding has a
rule code (SG101 nonfinite, SG102 zero, SG201 ill-conditioned, SG202
rank-deficient, SG301 tied, SG302 near-degenerate, SG401 noise-floor, SG402
unresolved): choose them with --select/--extend-select/--ignore, and see
`svdguard explain CODE`. Settings may also come from [tool.svdguard] in the
nearest pyproject.toml; the command line wins.
"""


def default_threads() -> int:
    """min(4, cpu_count // 2), at least 1: leaves half of a shared machine to others."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


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
    view: Any,
) -> None:
    """Write the report in ``output_format`` to ``file`` (a text stream)."""
    from svdguard.app.formatting import to_json
    from svdguard.cli.render_inspect import json_document, print_table, to_csv, to_github

    footer = f"→ exit {code} (--fail-on {settings['fail_on']})"
    if output_format is OutputFormat.table:
        console = make_console(file)
        to_stdout = file is None or file is sys.stdout
        fit = to_stdout and fits_width(console)
        print_table(
            console, items, summary, footer, settings["paths"], fit_to_console=fit, view=view
        )
    elif output_format is OutputFormat.json:
        file.write(to_json(json_document(items, summary, settings, code, view)))
    elif output_format is OutputFormat.csv:
        file.write(to_csv(items, view))
    else:
        file.write(to_github(items, summary, footer))


def _threshold(flag: str, value: float | None, config: Any, key: str) -> float | None:
    """A threshold from the command line, else the project file; checked, with the flag named."""
    where = flag
    if value is None and config.get(key) is not None:
        value, where = config.get(key), config.where(key)
    if value is None:
        return None
    if key == "max-cond" and not value > 1.0:
        raise _bad_message(where, f"must be above 1 (inf switches the check off), got {value}")
    if key == "gap-tol" and (math.isnan(value) or not 0.0 <= value < 1.0):
        raise _bad_message(where, f"must lie in [0, 1) (0 switches the check off), got {value}")
    return value


def _bad_message(where: str, message: str) -> Exception:
    from svdguard.errors import InputError

    return InputError(f"{where} {message}")


def _choice(kind: type[Enum], given: Any, config: Any, key: str, default: Any) -> Any:
    """The option given, else the project file's value (checked against the choices)."""
    if given is not None:
        return given
    value = config.get(key)
    if value is None:
        return default
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(member.value for member in kind)
        raise _bad_message(config.where(key), f"must be one of {choices}, got {value!r}") from None


def why_empty(items: list[InspectionItem], include: list[str]) -> str:
    """Why no matrix was analysed, in flags: what was skipped, and a hint for a glob without *."""
    from svdguard.app.report import SkippedTensor

    skipped = [i for i in items if isinstance(i, SkippedTensor)]
    if not items:
        return "the inputs hold no tensors"
    counts: dict[str, int] = {}
    for item in skipped:
        counts[item.reason.value] = counts.get(item.reason.value, 0) + 1
    text = "every tensor was skipped (" + ", ".join(f"{r}: {c}" for r, c in counts.items()) + ")"
    plain = [g for g in include if not set(g) & set("*?[")]
    if counts.get("excluded") and plain:
        text += (
            f"; --include {plain[0]!r} has no wildcard, so it matches only a key equal to it: "
            f"did you mean --include '*{plain[0]}*'?"
        )
    if counts.get("optimizer-state"):
        text += "; optimizer-state tensors are analysed with --include-optimizer"
    if counts.get("too-large"):
        text += "; raise --max-elements to analyse the large ones"
    return text


@guarded
def run(
    ctx: typer.Context,
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="Files, directories or globs to inspect.", metavar="PATH", show_default=False
        ),
    ],
    profile: Annotated[
        ProfileName | None,
        typer.Option(
            "--profile",
            help="health: is the checkpoint numerically healthy to use? svd-grad: will "
            "differentiating through the SVD of its weights break?  [default: health]",
            show_default=False,
        ),
    ] = None,
    output_format: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="table, json, csv or github annotations.")
    ] = OutputFormat.table,
    fail_on: Annotated[
        FailOn | None,
        typer.Option(
            "--fail-on",
            help="Exit 1 when a row is at or above this severity.  [default: error]",
            show_default=False,
        ),
    ] = None,
    select: Annotated[
        list[str] | None,
        typer.Option(
            "--select",
            metavar="RULES",
            help="Run only these rules (codes, prefixes like SG3, names, or ALL), replacing "
            "the profile's. Comma-separated or repeated.",
        ),
    ] = None,
    extend_select: Annotated[
        list[str] | None,
        typer.Option("--extend-select", metavar="RULES", help="Run these rules as well."),
    ] = None,
    ignore: Annotated[
        list[str] | None,
        typer.Option("--ignore", metavar="RULES", help="Do not run these rules."),
    ] = None,
    max_cond: Annotated[
        float | None,
        typer.Option(
            "--max-cond",
            help="κ₂ at or above which a matrix is ill-conditioned (SG201); inf switches the "
            "check off. [default: health: max(1/√ε_w, κ₂ that 1 in 100 Gaussian matrices of the "
            "shape exceed); svd-grad: 1/√ε_w (2.9e3 for float32/bf16/fp16, 6.7e7 for float64)]",
            show_default=False,
        ),
    ] = None,
    gap_tol: Annotated[
        float | None,
        typer.Option(
            "--gap-tol",
            help="Relative gap |s_i − s_j|/σ_max at or below which a pair is near-degenerate "
            "(SG302); 0 switches the check off. [default: √ε_w: 3.5e-4 for float32/bf16/fp16, "
            "1.5e-8 for float64]",
            show_default=False,
        ),
    ] = None,
    precision: Annotated[
        Precision | None,
        typer.Option(
            "--precision",
            help="dtype of the SVD. float32 is faster; what it cannot decide is reported as "
            "unresolved (SG402), never as a worse severity.  [default: float64]",
            show_default=False,
        ),
    ] = None,
    device: Annotated[
        Device,
        typer.Option("--device", help="auto = cuda when available (batched gesvd), else cpu."),
    ] = Device.auto,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            min=1,
            help="CPU threads of the SVDs.  [default: min(4, CPUs/2), at least 1, so that a "
            "shared machine is not oversubscribed]",
            show_default=False,
        ),
    ] = None,
    include: Annotated[
        list[str] | None,
        typer.Option(
            "--include",
            metavar="GLOB",
            help="Only tensors whose key matches this glob (fnmatch: use * for parts). Repeatable.",
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
    include_optimizer: Annotated[
        bool,
        typer.Option(
            "--include-optimizer",
            help="Also analyse optimizer-state tensors (exp_avg, exp_avg_sq, momentum_buffer …).",
        ),
    ] = False,
    batch: Annotated[
        list[str] | None,
        typer.Option(
            "--batch",
            metavar="GLOB",
            help="Analyse matching ≥3-D tensors (E, m, n) as E matrices m×n. Repeatable.",
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
    top: Annotated[
        int | None,
        typer.Option("--top", min=1, help="Show only the N worst rows (the summary counts all)."),
    ] = None,
    sort: Annotated[
        SortKey,
        typer.Option(
            "--sort", help="Row order: severity (then κ₂), cond, gap (smallest first), name, file."
        ),
    ] = SortKey.severity,
    hide_clean: Annotated[
        bool, typer.Option("--hide-clean", help="Leave rows without findings out of the table.")
    ] = False,
    rollup: Annotated[
        bool,
        typer.Option(
            "--rollup/--no-rollup",
            help="A table per layer type (layer numbers collapsed) when it is shorter.",
        ),
    ] = True,
    spectrum: Annotated[
        bool, typer.Option("--spectrum", help="Put every singular value into the JSON rows.")
    ] = False,
    show_excluded: Annotated[
        bool,
        typer.Option("--show-excluded", help="List the skipped tensors by name, not just counts."),
    ] = False,
    allow_empty: Annotated[
        bool,
        typer.Option("--allow-empty", help="Exit 0 even when no matrix was analysed."),
    ] = False,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            metavar="FILE",
            help="Read [tool.svdguard] from this TOML file instead of the nearest pyproject.toml.",
        ),
    ] = None,
    isolated: Annotated[
        bool, typer.Option("--isolated", help="Ignore every pyproject.toml.")
    ] = False,
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
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs",
            "-j",
            min=1,
            help="Ranks sharing the tensors on this machine (1 CPU thread each); under "
            "torchrun, the launcher's ranks are used instead. See docs/scale-out.md.",
        ),
    ] = 1,
) -> None:
    import functools

    # The modules imported here (torch's above all) live as long as the process. The cyclic
    # collector is paused while they load, and what exists then is frozen (gc.freeze), so
    # that no full collection walks it again, at import or while the rows are built: about
    # 0.1 s of a run from the command line.
    collecting = gc.isenabled()
    gc.disable()
    try:
        from svdguard.app.config import ProjectConfig, load_config
        from svdguard.app.discovery import discover
        from svdguard.app.distributed import Launch
        from svdguard.app.inspection import inspect
        from svdguard.app.report import InspectionSummary
        from svdguard.app.rules import resolve_selectors
        from svdguard.app.threads import limit_cpu_threads
        from svdguard.cli.render_inspect import View
        from svdguard.io import atomic_output
        from svdguard.io.text import printable
        from svdguard.io.writers import check_output

        if gc.get_freeze_count() == 0:  # once per process (a test session runs many)
            gc.freeze()
    finally:
        if collecting:
            gc.enable()

    config = ProjectConfig() if isolated else load_config(config_file)

    def pick(value: Any, key: str, default: Any) -> Any:
        return value if value is not None else config.get(key, default)

    def rules(values: list[str] | None, flag: str, key: str) -> list[str] | None:
        if values:
            resolve_selectors(values, flag)  # an unknown rule is named with its flag
            return values
        if config.get(key) is not None:
            resolve_selectors(config.get(key), config.where(key))
            return list(config.get(key))
        return None

    chosen_profile = _choice(ProfileName, profile, config, "profile", ProfileName.health).value
    chosen_fail_on = _choice(FailOn, fail_on, config, "fail-on", FailOn.error)
    chosen_precision = _choice(Precision, precision, config, "precision", Precision.float64).value
    select_rules = rules(select, "--select", "select")
    extend_rules = rules(extend_select, "--extend-select", "extend-select") or []
    ignore_rules = rules(ignore, "--ignore", "ignore") or []
    per_tensor = config.get("per-tensor-ignores") or {}
    for glob, codes in per_tensor.items():
        resolve_selectors(codes, f"{config.where('per-tensor-ignores')}[{glob!r}]")
    max_cond_value = _threshold("--max-cond", max_cond, config, "max-cond")
    gap_tol_value = _threshold("--gap-tol", gap_tol, config, "gap-tol")
    include_globs = list(include or config.get("include") or ())
    exclude_globs = list(exclude or config.get("exclude") or ())
    batch_globs = list(batch or config.get("batch") or ())
    limit_cpu_threads(pick(threads, "threads", default_threads()))

    discovered = discover(paths)  # a missing path is a usage error before any work
    files = discovered.files
    if output is not None and str(output) == "-":
        output = None
    if output is not None:  # refuse a bad -o before any work
        check_output(output, force=force, inputs=input_files(files))
    launch = Launch.detect(jobs, threads=threads)  # None: this process alone
    analyse = functools.partial(
        inspect,
        discovered,
        precision=chosen_precision,
        device=device.value,
        include=include_globs,
        exclude=exclude_globs,
        max_elements=max_elements,
        max_time=max_time,
        profile=chosen_profile,
        max_cond=max_cond_value,
        gap_rtol=gap_tol_value,
        select=select_rules,
        extend_select=extend_rules,
        ignore=ignore_rules,
        per_tensor_ignores=per_tensor,
        include_optimizer=include_optimizer or bool(config.get("include-optimizer", False)),
        batch=batch_globs,
        spectrum=spectrum,
    )
    rows = analyse() if launch is None else launch.rows(analyse, files, max_elements=max_elements)
    settings = {
        "paths": [printable(str(p)) for p in files],  # names as the rows show them
        "profile": chosen_profile,
        "precision": chosen_precision,
        "device": device.value,
        "fail_on": chosen_fail_on.value,
        "select": select_rules,
        "extend_select": extend_rules,
        "ignore": ignore_rules,
        "per_tensor_ignores": per_tensor,
        "max_cond": max_cond_value,
        "gap_tol": gap_tol_value,
        "max_elements": max_elements,
        "max_time": max_time,
        "include": [printable(glob) for glob in include_globs],
        "exclude": [printable(glob) for glob in exclude_globs],
        "include_optimizer": include_optimizer,
        "batch": batch_globs,
        "config": None if config.path is None else str(config.path),
    }
    view = View(
        top=top,
        sort=sort.value,
        hide_clean=hide_clean,
        rollup=rollup,
        show_excluded=show_excluded,
        labels=discovered,
    )
    items: list[InspectionItem] = []
    show_progress = not quiet and make_console(stderr=True).is_terminal
    with progress_display(show_progress) as tick:
        for item in rows:
            items.append(item)
            tick(item)
    summary = InspectionSummary.of(items)
    bad_inputs = unusable(items)
    code = exit_code(summary, chosen_fail_on, len(bad_inputs))
    empty = summary.matrices == 0 and not summary.failed and not allow_empty
    if empty:
        code = exit_codes.USAGE
    if launch is not None and not launch.prints:  # rank 0 writes; the others take its code
        raise typer.Exit(launch.agree(code))
    if output is None:
        render(output_format, items, summary, settings, code, sys.stdout, view)
    else:
        # Every file read, the shards of an index included (as named on disk: the rows'
        # paths are escaped for display).
        inputs: list[str | Path] = [*files, *input_files(files)]
        with atomic_output(output, force=force, inputs=inputs) as temporary:
            with open(temporary, "w", encoding="utf-8", newline="") as stream:
                render(output_format, items, summary, settings, code, stream, view)
        if not quiet:
            say(f"{summary.line()} → exit {code}; report written to {output}")
    if bad_inputs and not quiet:
        say(
            f"svdguard: error: {len(bad_inputs)} input(s) could not be used, "
            f"e.g. {bad_inputs[0].name} (see the report)"
        )
    if empty:
        say(
            f"svdguard: error: no matrix analysed: {why_empty(items, include_globs)}; "
            "pass --allow-empty to accept an empty run"
        )
    if launch is not None:
        launch.agree(code)  # after the report: a launcher may stop rank 0 once the others end
    raise typer.Exit(code)
