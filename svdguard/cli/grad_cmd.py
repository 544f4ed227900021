"""``svdguard grad``: the stabilized SVD gradient of a saved matrix, beside torch's own.

Registered by :mod:`svdguard.cli.app`. torch and the application modules are
imported when the command runs, not when ``--help`` is printed.
"""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from svdguard.cli import exit_codes
from svdguard.cli.error_boundary import guarded, say

if TYPE_CHECKING:
    from svdguard.app.gradient_report import GradientReport

__all__ = [
    "DEFAULT_FAIL_ON",
    "EPILOG",
    "LOSSES",
    "METHODS",
    "FailOn",
    "OutputFormat",
    "computed",
    "failures",
    "run",
]

#: ``svdguard.METHODS`` and ``svdguard.app.probes.LOSSES``, spelt out so that ``--help``
#: needs no torch; a test keeps them equal to the library's lists.
METHODS = ("auto", "clamp", "lorentz", "taylor", "trivialize", "native", "seed")
LOSSES = ("polar", "reconstruct", "vectors", "values")
DEFAULT_LOSS = "polar"
DEFAULT_SEED = 0

MethodChoice = Enum("MethodChoice", {name: name for name in METHODS}, type=str)  # type: ignore[misc]
LossChoice = Enum("LossChoice", {name: name for name in LOSSES}, type=str)  # type: ignore[misc]


class FailOn(str, Enum):
    undefined = "undefined"
    biased = "biased"
    unverified = "unverified"
    native_nonfinite = "native-nonfinite"
    none = "none"


#: What fails the run when --fail-on is not given.
DEFAULT_FAIL_ON = (FailOn.undefined,)
#: Rows of the table before a batch is cut to its worst rows.
DEFAULT_TOP = 20


class OutputFormat(str, Enum):
    table = "table"
    json = "json"


EPILOG = (
    "Exit codes: 0 the gradient is finite and nothing named by --fail-on holds (the last "
    "line says what was computed); 1 the gradient is not finite, or a --fail-on condition "
    "holds (default: undefined); 2 usage or input error; 3 internal error; 130 interrupted; "
    "143 terminated."
)


def failures(report: GradientReport, fail_on: list[FailOn]) -> list[str]:
    """Why the command exits 1 (empty: exit 0)."""
    reasons = []
    of = "" if report.count == 1 else f" of {report.count} matrices"
    counts = report.verdict_counts()
    if counts["nonfinite"]:
        reasons.append(
            f"the {report.method} gradient is not finite"
            + (f" for {counts['nonfinite']}{of}" if of else "")
        )
    for flag, kind, what in (
        (FailOn.undefined, "undefined", "the loss has no derivative"),
        (FailOn.biased, "biased", f"the {report.method} gradient is biased"),
        (
            FailOn.unverified,
            "unverified",
            f"the {report.method} gradient is the derivative only for some losses",
        ),
    ):
        if flag in fail_on and counts[kind]:
            reasons.append(
                f"--fail-on {flag.value}: {what}" + (f" for {counts[kind]}{of}" if of else "")
            )
    if FailOn.native_nonfinite in fail_on and report.native_nonfinite:
        reasons.append(
            "--fail-on native-nonfinite: torch's gradient is not finite"
            + (f" for {report.native_nonfinite}{of}" if of else "")
        )
    return reasons


def computed(report: GradientReport) -> str:
    """The exit-0 line: what the written gradient is, per verdict."""
    counts = report.verdict_counts()
    parts = [f"{count} {kind}" for kind, count in counts.items() if count]
    of = "" if report.count == 1 else f" ({', '.join(parts)} of {report.count} matrices)"
    if counts["derivative"] == report.count:
        every = "" if report.count == 1 else f" (all {report.count} matrices)"
        return f"the {report.method} gradient is the derivative of the loss{every}"
    return f"the {report.method} gradient is finite{of or ' (' + parts[0] + ')'}; see above"


def _positive_finite(value: float | None) -> float | None:
    """--eps: a positive finite number (inf or NaN would make the method a different one)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"must be a positive finite number, got {value}")
    return value


@guarded
def run(
    ctx: typer.Context,
    path: Annotated[
        Path,
        typer.Argument(
            help="A matrix (.npy, .npz, .safetensors). A tensor with 3 or more dimensions is "
            "the matrix shape[0] × ∏shape[1:] (as inspect reads it), unless --batch."
        ),
    ],
    batch: Annotated[
        bool,
        typer.Option("--batch", help="Treat the leading dimensions as a batch of (m, n) matrices."),
    ] = False,
    key: Annotated[
        str | None, typer.Option("--key", help="Tensor name inside an .npz/.safetensors file.")
    ] = None,
    upstream: Annotated[
        Path | None,
        typer.Option(
            "--upstream",
            help="Saved upstream gradients U, S, Vh (any subset; .npz/.safetensors), shaped like "
            "the thin factors. Replaces --loss.",
        ),
    ] = None,
    loss: Annotated[
        LossChoice | None,
        typer.Option(
            "--loss",
            help="Probe loss when there is no --upstream: polar ⟨W, U Vᴴ⟩, reconstruct "
            "⟨W, U diag(S) Vᴴ⟩, vectors ⟨W, U⟩ + ⟨W', Vh⟩ (not gauge invariant), values Σ S. "
            f"[default: {DEFAULT_LOSS}]",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of the probe weights W.")
    ] = DEFAULT_SEED,
    method: Annotated[
        MethodChoice | None,
        typer.Option(
            "--method",
            help="Stabilizer of the backward. [default: clamp when --eps is given, else auto]",
            show_default=False,
        ),
    ] = None,
    eps: Annotated[
        float | None,
        typer.Option(
            "--eps",
            help="clamp, seed: floor of |s_i − s_j|; lorentz: broadening (units of s²). "
            "A positive finite number.",
            callback=_positive_finite,
        ),
    ] = None,
    degree: Annotated[
        int | None, typer.Option("--degree", help="taylor: degree P of the series.")
    ] = None,
    max_cond: Annotated[
        float | None,
        typer.Option("--max-cond", help="trivialize: κ₂ above which the gradient is zero."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            help="Write dL/dA here (.npy, .npz, .safetensors; same shape and dtype as the input; "
            "written atomically; never over an input, a device or anything but a regular file; "
            "- for stdout is not supported).",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing --output file.")
    ] = False,
    top: Annotated[
        int,
        typer.Option(
            "--top",
            min=1,
            help="A batch of more matrices shows totals and only the N worst rows.",
        ),
    ] = DEFAULT_TOP,
    output_format: Annotated[
        OutputFormat, typer.Option("--format", help="Data on stdout: a Rich table or JSON.")
    ] = OutputFormat.table,
    fail_on: Annotated[
        list[FailOn] | None,
        typer.Option(
            "--fail-on",
            metavar="undefined|biased|unverified|native-nonfinite|none",
            help="Exit 1 when this holds: undefined (the loss has no derivative: it depends on "
            "the basis inside tied singular values or on null-space vectors), biased (the "
            "stabilizer changed the result, or a tie hides the in-block part), unverified (a "
            "tie with --upstream: the derivative only for losses of U Vᴴ and S), "
            "native-nonfinite (torch's gradient has NaN/inf), none. Repeatable. A gradient "
            "that is not finite always exits 1. [default: undefined]",
        ),
    ] = None,
) -> None:
    """Compute torch's SVD gradient and the stabilized one side by side, and say why they differ.

    The matrix is decomposed with torch.linalg.svd (torch's backward) and with svdguard.svd
    (the chosen --method); a probe loss or the saved upstream gradients is backpropagated
    through both. Data goes to stdout, explanations to stderr.
    """
    from svdguard.app.gradient_report import compare_gradients, resolve_method
    from svdguard.app.probes import Probe, Upstream, make_probe, upstream_from_tensors
    from svdguard.cli.render_grad import print_table, shape_text, to_json, verdict_lines
    from svdguard.errors import IllDefinedGradientError, InputError
    from svdguard.io import find_record, read_tensors, write_tensor
    from svdguard.io.text import printable
    from svdguard.linalg.matrix_input import check_matrix
    from svdguard.linalg.spectrum_analysis import as_matrix
    from svdguard.tolerances import compute_dtype

    method_name = resolve_method(None if method is None else method.value, eps)
    if upstream is not None and loss is not None:
        raise InputError(
            "--loss and --upstream are exclusive: the upstream gradients define the loss"
        )

    record = find_record(path, key)
    stored = record.load()
    check_matrix(stored, path=str(path), key=record.key or None)
    # inspect's view: a tensor of 3 or more dimensions is the matrix shape[0] × ∏shape[1:]
    # (a conv kernel's output channels against its receptive field), unless --batch.
    matrix = stored if batch else as_matrix(stored)
    objective: Probe | Upstream
    if upstream is not None:
        objective = upstream_from_tensors(read_tensors(upstream), matrix.shape, path=upstream)
    else:
        objective = make_probe(
            DEFAULT_LOSS if loss is None else loss.value,
            matrix.shape,
            seed=seed,
            dtype=compute_dtype(matrix.dtype),
        )
    try:
        comparison = compare_gradients(
            matrix,
            objective,
            method=method_name,
            eps=eps,
            degree=degree,
            max_cond=max_cond,
            stored_shape=tuple(stored.shape),
        )
    except IllDefinedGradientError as err:
        if upstream is not None:
            raise
        raise InputError(
            f"{err}; for a complex matrix choose --loss polar, reconstruct or values",
            path=path,
            key=record.key or None,
        ) from None
    report = comparison.report
    gradient = comparison.gradient.reshape(stored.shape)

    written = None
    if output is not None:
        inputs = [record.path, path] if upstream is None else [record.path, path, upstream]
        # Under the input's own name, so the gradient file mirrors the input file.
        written = write_tensor(
            output, gradient, key=record.key or "grad", force=force, inputs=inputs
        )

    chosen = list(DEFAULT_FAIL_ON) if not fail_on else fail_on
    reasons = failures(report, chosen)
    code = exit_codes.FINDINGS if reasons else exit_codes.OK
    notes = verdict_lines(report)
    if written is not None:
        stored_text = "×".join(map(str, stored.shape))
        notes.append(f"wrote dL/dA ({stored_text} {report.dtype}) to {written}")
    notes.append(f"exit {code}: " + ("; ".join(reasons) if reasons else computed(report)))

    # Names from the file and the command line, escaped: a key cannot forge or break output.
    source = printable(f"{path.name}[{record.key}]" if record.key else path.name)
    if output_format is OutputFormat.json:
        print(
            to_json(
                report,
                input=printable(path),
                key=printable(record.key) if record.key else None,
                upstream=None if upstream is None else printable(upstream),
                output=None if written is None else printable(written),
                view=shape_text(report),
                fail_on=[flag.value for flag in chosen],
                exit_code=code,
                reasons=reasons,
                notes=notes,
            ),
            end="",
        )
    else:
        print_table(report, source, top)
    for line in notes:
        say(line)
    if reasons:
        raise typer.Exit(exit_codes.FINDINGS)
