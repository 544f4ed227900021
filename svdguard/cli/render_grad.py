"""Rendering of a :class:`~svdguard.app.gradient_report.GradientReport`: Rich table, JSON, talk.

Marks (legend under the table): ✓ the derivative; ≈ finite but biased (a derivative
exists and this is not it); ? finite, the derivative only for some losses (a tie
with saved upstream gradients); ∄ finite, but no derivative exists; ✗ not finite.
Singular values are labelled 1-based, like the mathematics (``s2..s3``); batch
positions 0-based, like numpy.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from svdguard.app.formatting import format_number as number
from svdguard.app.formatting import to_json as encode_json
from svdguard.app.gradient_report import (
    BIASED,
    DERIVATIVE,
    NONFINITE,
    UNDEFINED,
    UNVERIFIED,
    VERDICTS,
    ElementFacts,
    GradientReport,
    Verdict,
)
from svdguard.cli.console import make_console

__all__ = [
    "LEGEND",
    "MARKS",
    "build_table",
    "print_table",
    "ranked",
    "shape_text",
    "to_json",
    "verdict_lines",
]

#: The mark of each verdict, and its colour.
MARKS = {
    DERIVATIVE: ("✓", "green"),
    UNVERIFIED: ("?", "yellow"),
    BIASED: ("≈", "yellow"),
    UNDEFINED: ("∄", "bold yellow"),
    NONFINITE: ("✗", "bold red"),
}

#: How a verdict reads in a sentence: "the auto gradient is ...".
PHRASES = {
    DERIVATIVE: "the derivative of the loss",
    UNVERIFIED: "finite, and the derivative only if the loss is a function of U Vᴴ and S",
    BIASED: "finite but biased: the loss has a derivative here and this is not it",
    UNDEFINED: "finite, but the loss has no derivative here",
    NONFINITE: "not finite",
}

LEGEND = (
    "κ₂ = σ_max/σ_min · min gap = min_i gap_i / σ_max (xDISNA) · acting = pairs i<j whose "
    "kernel {method} changed · torch, {method} = ‖∂L/∂A‖_F of each backward, marked ✓ the "
    "derivative, ≈ biased, ? derivative only for some losses, ∄ no derivative exists, ✗ not "
    "finite · rel diff = ‖g − g_torch‖_F / ‖g_torch‖_F · singular values s1 ≥ s2 ≥ …"
)


def shape_text(report: GradientReport) -> str:
    """``4×4``; ``64×576 ← 64×64×3×3`` for a viewed tensor; ``4×3, batch 40`` for a batch."""
    *batch, m, n = report.shape
    text = f"{m}×{n}"
    if batch:
        text += f", batch {'×'.join(map(str, batch))}"
    if report.stored_shape is not None and tuple(report.stored_shape) != tuple(report.shape):
        text += f" ← {'×'.join(map(str, report.stored_shape))}"
    return text


def _gradient_cell(verdict: Verdict, norm: float | None, raised: bool = False) -> Text:
    mark, style = MARKS[verdict.kind]
    if norm is None:
        return Text(f"{mark} raised" if raised else "—", style=style)
    return Text(f"{mark} {number(norm)}", style=style)


def _short_verdict(element: ElementFacts) -> Text:
    """The method's verdict in a few words, with the singular values it is about."""
    verdict = element.verdict
    _, style = MARKS[verdict.kind]
    words = "not finite" if verdict.kind == NONFINITE else verdict.kind
    return Text(words + (f" {verdict.where}" if verdict.where else ""), style=style)


def _title(report: GradientReport, source: str) -> str:
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
    return f"{source}: {shape_text(report)} {report.dtype} · method {method} · {report.objective}"


def ranked(report: GradientReport) -> list[ElementFacts]:
    """The elements worst first: the method's verdict, then torch's, then κ₂ (stable)."""

    def key(e: ElementFacts) -> tuple[int, int, float]:
        kappa = e.condition_number if e.condition_number == e.condition_number else float("inf")
        return (-e.verdict.severity, -e.native_verdict.severity, -kappa)

    return sorted(report.elements, key=key)


def _counts(report: GradientReport, *, native: bool = False) -> str:
    counts = report.verdict_counts(native=native)
    return " ".join(
        f"{counts[kind]}{MARKS[kind][0]}" for kind in reversed(VERDICTS) if counts[kind]
    )


def build_table(report: GradientReport, top: int | None = None) -> Table:
    """One row per matrix; for a batch a totals row, and only the ``top`` worst rows if more."""
    batched = report.batched
    table = Table()
    if batched:
        table.add_column("matrix", no_wrap=True)
    table.add_column("κ₂", justify="right")
    table.add_column("min gap", justify="right")
    table.add_column("acting", justify="right")
    table.add_column("torch", justify="right", no_wrap=True)
    table.add_column(report.method, justify="right", no_wrap=True)
    table.add_column("rel diff", justify="right", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    rows = report.elements
    hidden = 0
    if top is not None and report.count > top:
        rows = tuple(ranked(report)[:top])
        hidden = report.count - top
    for element in rows:
        cells: list[str | Text] = [str(list(element.index))] if batched else []
        if element.input_finite:
            cells += [
                number(element.condition_number),
                number(element.min_relative_gap),
                str(element.guarded_pairs),
            ]
        else:
            cells += [Text("NaN/Inf", style="bold red"), "—", "—"]  # not decomposed
        cells += [
            _gradient_cell(
                element.native_verdict, element.native_norm, report.native_error is not None
            ),
            _gradient_cell(element.verdict, element.stabilized_norm),
            number(element.relative_difference),
            _short_verdict(element),
        ]
        table.add_row(*cells)
    if batched:
        table.add_section()
        if hidden:
            table.add_row(f"… {hidden} more", *([""] * 7))
        table.add_row(
            f"all {report.count}",
            "",
            "",
            str(report.total_guarded_pairs),
            _counts(report, native=True),
            _counts(report),
            "",
            ", ".join(
                f"{count} {kind}"
                for kind, count in reversed(report.verdict_counts().items())
                if count
            ),
        )
    return table


def print_table(report: GradientReport, source: str, top: int | None = None) -> None:
    """The table on stdout (:func:`svdguard.cli.console.make_console`'s width and colour policy)."""
    console = make_console()
    console.print(Text(_title(report, source), style="bold"))
    console.print(build_table(report, top))
    console.print(Text(LEGEND.format(method=report.method), style="dim"))


def to_json(report: GradientReport, **context: Any) -> str:
    """The report as JSON (``context``, e.g. paths, notes and the exit code, first)."""
    return encode_json({**context, **report.to_dict()})


def _of(part: int, count: int) -> str:
    return "" if count == 1 else f" for {part} of {count} matrices"


def _where(element: ElementFacts, count: int) -> str:
    return f"{list(element.index)}: " if count > 1 else ""


def _summary(report: GradientReport, name: str, *, native: bool, shown: int) -> list[str]:
    """What one backward computed: one sentence per verdict kind, causes of the worst."""
    count = report.count
    counts = report.verdict_counts(native=native)
    lines = []
    for kind in reversed(VERDICTS):
        if not counts[kind]:
            continue
        part = "" if count == 1 else f"for {counts[kind]} of {count} matrices, "
        if count > 1 and counts[kind] == count:
            part = f"for all {count} matrices, "
        line = f"{part}{name} is {PHRASES[kind]}"
        which = [
            e for e in ranked(report) if (e.native_verdict if native else e.verdict).kind == kind
        ]
        causes = [
            _where(e, count) + "; ".join((e.native_verdict if native else e.verdict).causes)
            for e in which[:shown]
            if (e.native_verdict if native else e.verdict).causes
        ]
        if len(causes) == 1 and count == 1:
            lines.append(f"{line}: {causes[0]}.")
            continue
        lines.append(line + ("." if not causes else ":"))
        lines.extend(f"  {cause}" for cause in causes)
        if len(which) > shown and causes:
            lines.append(f"  … and {len(which) - shown} more (--format json lists every one)")
    return lines


def verdict_lines(report: GradientReport, shown: int = 3) -> list[str]:
    """How to read the result, one sentence per finding (for stderr); ``shown`` causes per kind."""
    lines = []
    if report.native_error:
        lines.append(f"torch's backward raised: {report.native_error}")
    else:
        lines += _summary(report, "torch's gradient", native=True, shown=shown)
    if report.method != "native":
        lines += _summary(report, f"the {report.method} gradient", native=False, shown=shown)
    if report.total_guarded_pairs:
        acting = sum(bool(e.acting_pairs) for e in report.elements)
        pairs = report.total_guarded_pairs
        line = (
            f"the {report.method} backward changed the kernel of {pairs} "
            f"pair{'s' if pairs != 1 else ''}{_of(acting, report.count)}"
        )
        biases = [e.bias for e in report.elements if e.acting_pairs and e.bias is not None]
        if report.method in ("auto", "trivialize"):
            line += " at rounding level; every other reciprocal is exact."
        elif biases:
            line += (
                f"; its gradient differs from the exact (auto) backward by up to "
                f"{number(max(biases))} (relative)"
                + (
                    ", which is rounding."
                    if not any(e.verdict.kind == BIASED for e in report.elements)
                    else "."
                )
            )
        else:
            line += "."
        lines.append(line)
    if any(e.verdict.kind == UNDEFINED for e in report.elements):
        lines.append(
            "where no derivative exists the value computed is one finite choice, not a "
            "derivative: make the loss gauge invariant (U Vᴴ, U diag(S) Vᴴ, S) and full rank, "
            "or use svdguard.functional."
        )
    if any(e.has_ties and e.verdict.kind == BIASED for e in report.elements):
        lines.append(
            "at tied singular values no SVD backward sees the symmetric in-block part of the "
            "gradient; svdguard.functional has exact gradients of U f(S) Vᴴ."
        )
    lines.extend(report.notes)
    return lines
