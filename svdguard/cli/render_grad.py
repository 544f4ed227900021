"""Rendering of a :class:`~svdguard.app.gradient_report.GradientReport`: Rich table or JSON, verdict."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from svdguard.app.formatting import format_number as number
from svdguard.app.formatting import to_json as encode_json
from svdguard.app.gradient_report import ElementFacts, GradientReport
from svdguard.cli.console import make_console

__all__ = ["LEGEND", "build_table", "print_table", "to_json", "verdict_lines"]

LEGEND = (
    "κ₂ = σ_max/σ_min · min gap = min_i gap_i / σ_max (xDISNA) · guarded = pairs i<j whose "
    "kernel the method changes · torch, {method} = the gradient of each backward: ✓ finite or "
    "✗ not, and ‖∂L/∂A‖_F · rel diff = "
    "‖g − g_torch‖_F / ‖g_torch‖_F · gauge = does the loss depend on the basis chosen inside "
    "tied singular values s_i..s_j?"
)


def _gradient_cell(finite: bool, norm: float | None, error: str | None = None) -> Text:
    if norm is None:
        return Text("✗ raised" if error else "—", style="red")
    if finite:
        return Text(f"✓ {number(norm)}", style="green")
    return Text(f"✗ {number(norm)}", style="bold red")


def _gauge_cell(element: ElementFacts) -> Text:
    if not element.input_finite:
        return Text("—")
    if element.gauge_violations:
        blocks = ", ".join(f"s{v.indices[0]}..s{v.indices[-1]}" for v in element.gauge_violations)
        return Text(f"DEPENDS {blocks}", style="bold yellow")
    return Text("invariant" if element.has_ties else "no ties", style="green")


def _title(report: GradientReport, source: str) -> str:
    shape = "×".join(str(d) for d in report.shape)
    params = [
        f"{name} {value:g}"
        for name, value in (
            ("eps", report.eps),
            ("degree", report.degree),
            ("max-cond", report.max_cond),
        )
        if value is not None
    ]
    method = report.method + (f" ({', '.join(params)})" if params else "")
    return f"{source}: {shape} {report.dtype} · method {method} · {report.objective}"


def build_table(report: GradientReport) -> Table:
    """One row per matrix of the batch, plus a totals row for a batch."""
    batched = len(report.shape) > 2
    table = Table()
    if batched:
        table.add_column("matrix", no_wrap=True)
    table.add_column("κ₂", justify="right")
    table.add_column("min gap", justify="right")
    table.add_column("guarded", justify="right")
    table.add_column("torch", justify="right", no_wrap=True)
    table.add_column(report.method, justify="right", no_wrap=True)
    table.add_column("rel diff", justify="right", no_wrap=True)
    table.add_column("gauge", no_wrap=True)
    for element in report.elements:
        cells: list[str | Text] = [str(list(element.index))] if batched else []
        if element.input_finite:
            cells += [
                number(element.condition_number),
                number(element.min_relative_gap),
                str(element.guarded_pairs) + (" (zeroed)" if element.trivialized else ""),
            ]
        else:
            cells += [Text("NaN/Inf", style="bold red"), "—", "—"]  # not decomposed
        cells += [
            _gradient_cell(element.native_finite, element.native_norm, report.native_error),
            _gradient_cell(element.stabilized_finite, element.stabilized_norm),
            number(element.relative_difference),
            _gauge_cell(element),
        ]
        table.add_row(*cells)
    if batched:
        table.add_section()
        table.add_row(
            f"all {report.count}",
            "",
            "",
            str(report.total_guarded_pairs),
            f"{report.native_nonfinite} non-finite",
            f"{report.stabilized_nonfinite} non-finite",
            "",
            f"{report.gauge_dependent} dependent",
        )
    return table


def print_table(report: GradientReport, source: str) -> None:
    """The table on stdout (:func:`svdguard.cli.console.make_console`'s width and colour policy)."""
    console = make_console()
    console.print(Text(_title(report, source), style="bold"))
    console.print(build_table(report))
    console.print(Text(LEGEND.format(method=report.method), style="dim"))


def to_json(report: GradientReport, **context: Any) -> str:
    """The report as JSON (``context``, e.g. input and output paths, first)."""
    return encode_json({**context, **report.to_dict()})


def _of(part: int, count: int) -> str:
    return "" if count == 1 else f" for {part} of {count} matrices"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def verdict_lines(report: GradientReport) -> list[str]:
    """How to read the result, one sentence per finding (for stderr)."""
    count = report.count
    lines = []
    if report.native_error:
        lines.append(f"torch's backward raised: {report.native_error}")
    elif report.native_nonfinite:
        lines.append(
            f"torch's gradient is not finite{_of(report.native_nonfinite, count)}: it divides "
            "by s_j² − s_i², which is 0 at tied singular values (and by s_i at zero ones)."
        )
    if report.total_guarded_pairs:
        ties = sum(e.has_ties for e in report.elements)
        tied = f" ({ties} of {count} matrices have tied singular values)" if count > 1 else ""
        pairs = _plural(report.total_guarded_pairs, "pair")
        lines.append(
            f"the {report.method} backward changed the kernel of {pairs} of close singular "
            f"values{tied}."
        )
        differences = [
            e.relative_difference
            for e in report.elements
            if e.guarded_pairs and e.relative_difference is not None
        ]
        if differences:
            lines.append(
                f"where it did, torch's gradient is finite but differs from it by up to "
                f"{number(max(differences))} (relative): at a gap near rounding level torch "
                "divides rounding noise by rounding noise; for clamp, lorentz and taylor part of "
                "the difference is the stabilizer's own bias."
            )
    tied_count = sum(e.has_ties for e in report.elements)
    if tied_count:
        lines.append(
            f"at tied singular values{_of(tied_count, count)} no SVD backward can recover the "
            "symmetric in-block part of the gradient (it is not in U, S, V and their upstream "
            "gradients): the auto backward is exact there for losses of U Vᴴ or S, not for "
            "e.g. U diag(S) Vᴴ; svdguard.functional has exact gradients of such functions."
            + ("" if report.method in ("auto", "trivialize") else " Compare with --method auto.")
        )
    if report.stabilized_nonfinite:
        lines.append(
            f"the {report.method} gradient is not finite{_of(report.stabilized_nonfinite, count)} "
            "(NaN/Inf input, or an overflow); do not apply it."
        )
    else:
        lines.append(f"the {report.method} gradient is finite.")
    if report.gauge_dependent:
        lines.append(
            f"the loss depends on the basis the SVD picked inside tied singular values"
            f"{_of(report.gauge_dependent, count)}: it has no gradient there, and the stabilized "
            "value is one finite choice, not a derivative. Make the loss gauge invariant "
            "(U Vᴴ, U diag(S) Vᴴ, S) or use svdguard.functional."
        )
    lines.extend(report.notes)
    return lines
