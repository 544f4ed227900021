"""``svdguard grad``: the stabilized SVD gradient of a saved matrix, beside torch's own.

Registered by :mod:`svdguard.cli.app`. torch and the application modules are
imported when the command runs, not when ``--help`` is printed.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from svdguard.cli import exit_codes
from svdguard.cli.error_boundary import guarded, say

if TYPE_CHECKING:
    from svdguard.app.gradient_report import GradientReport

__all__ = ["EPILOG", "METHODS", "LOSSES", "FailOn", "OutputFormat", "failures", "run"]

#: ``svdguard.METHODS`` and ``svdguard.app.probes.LOSSES``, spelt out so that ``--help``
#: needs no torch; a test keeps them equal to the library's lists.
METHODS = ("auto", "clamp", "lorentz", "taylor", "trivialize", "native", "seed")
LOSSES = ("polar", "reconstruct", "vectors", "values")
DEFAULT_LOSS = "polar"
DEFAULT_SEED = 0

MethodChoice = Enum("MethodChoice", {name: name for name in METHODS}, type=str)  # type: ignore[misc]
LossChoice = Enum("LossChoice", {name: name for name in LOSSES}, type=str)  # type: ignore[misc]


class FailOn(str, Enum):
    native_nonfinite = "native-nonfinite"
    gauge = "gauge"


class OutputFormat(str, Enum):
    table = "table"
    json = "json"


EPILOG = (
    "Exit codes: 0 the stabilized gradient is finite; 1 it is not (e.g. NaN input), or a "
    "--fail-on condition holds; 2 usage or input error; 3 internal error; 130 interrupted; "
    "143 terminated."
)


def failures(report: GradientReport, fail_on: list[FailOn]) -> list[str]:
    """Why the command exits 1 (empty: exit 0)."""
    reasons = []
    of = f" of {report.count}"
    if report.stabilized_nonfinite:
        reasons.append(
            f"the stabilized gradient is not finite for {report.stabilized_nonfinite}{of} matrices"
        )
    if FailOn.native_nonfinite in fail_on and report.native_nonfinite:
        reasons.append(
            "--fail-on native-nonfinite: torch's gradient is not finite for "
            f"{report.native_nonfinite}{of} matrices"
        )
    if FailOn.gauge in fail_on and report.gauge_dependent:
        reasons.append(
            f"--fail-on gauge: the loss is gauge dependent for {report.gauge_dependent}{of} "
            "matrices"
        )
    return reasons


@guarded
def run(
    ctx: typer.Context,
    path: Annotated[
        Path, typer.Argument(help="Matrix or batch (..., m, n): .npy, .npz, .safetensors.")
    ],
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
            "--eps", help="clamp: floor of |s_i − s_j|; lorentz: broadening (units of s²)."
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
    output_format: Annotated[
        OutputFormat, typer.Option("--format", help="Data on stdout: a Rich table or JSON.")
    ] = OutputFormat.table,
    fail_on: Annotated[
        list[FailOn] | None,
        typer.Option(
            "--fail-on",
            metavar="native-nonfinite|gauge",
            help="Also exit 1 when this holds: native-nonfinite (torch's gradient has NaN/inf), "
            "gauge (the loss depends on the basis inside tied singular values). Repeatable.",
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
    from svdguard.cli.render_grad import print_table, to_json, verdict_lines
    from svdguard.errors import IllDefinedGradientError, InputError
    from svdguard.io import find_record, read_tensors, write_tensor
    from svdguard.io.text import printable
    from svdguard.linalg.matrix_input import check_matrix
    from svdguard.tolerances import compute_dtype

    method_name = resolve_method(None if method is None else method.value, eps)
    if upstream is not None and loss is not None:
        raise InputError(
            "--loss and --upstream are exclusive: the upstream gradients define the loss"
        )

    record = find_record(path, key)
    matrix = record.load()
    check_matrix(matrix, path=str(path), key=record.key or None)
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
            matrix, objective, method=method_name, eps=eps, degree=degree, max_cond=max_cond
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

    written = None
    if output is not None:
        inputs = [record.path, path] if upstream is None else [record.path, path, upstream]
        # Under the input's own name, so the gradient file mirrors the input file.
        written = write_tensor(
            output, comparison.gradient, key=record.key or "grad", force=force, inputs=inputs
        )

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
            ),
            end="",
        )
    else:
        print_table(report, source)
    for line in verdict_lines(report):
        say(line)
    if written is not None:
        say(f"wrote dL/dA ({'×'.join(map(str, report.shape))} {report.dtype}) to {written}")

    reasons = failures(report, fail_on or [])
    if reasons:
        say("exit 1: " + "; ".join(reasons))
        raise typer.Exit(exit_codes.FINDINGS)
