"""Render the rows of ``svdguard inspect``: a Rich table, JSON, CSV or GitHub annotations.

Every format carries the same rows, worst first (severity, then κ₂): the table
shows the main numbers and lists each finding under it; JSON and CSV carry
every field of :mod:`svdguard.app.report`. Findings are shown with the
command-line hints of :mod:`svdguard.cli.hints`; JSON and CSV keep the
library's own sentences.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from svdguard import __version__
from svdguard.app.formatting import format_number as fmt
from svdguard.app.report import (
    SCHEMA_VERSION,
    FailedReport,
    InspectionItem,
    InspectionSummary,
    MatrixReport,
    Severity,
    SkippedTensor,
    item_severity,
)
from svdguard.cli.console import UNBOUNDED_WIDTH
from svdguard.cli.hints import finding_text, parameter_flag

__all__ = [
    "CSV_COLUMNS",
    "FORMATS",
    "LEGEND",
    "fitted_table",
    "json_document",
    "print_table",
    "skipped_text",
    "to_csv",
    "to_github",
    "worst_first",
]

#: Formats ``--format`` accepts.
FORMATS = ("table", "json", "csv", "github")

_STYLES = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}
_GITHUB_LEVELS = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}
#: Names of skipped tensors listed per reason before "and N more".
_SKIPPED_LISTED = 4

Row = MatrixReport | FailedReport


def worst_first(items: Iterable[InspectionItem]) -> tuple[list[Row], list[SkippedTensor]]:
    """The analysed rows sorted by severity, then κ₂ (largest first; a NaN matrix counts as ∞),
    then name; and the skipped tensors in their original order."""
    rows: list[Row] = []
    skipped: list[SkippedTensor] = []
    for item in items:
        (skipped if isinstance(item, SkippedTensor) else rows).append(item)  # type: ignore[arg-type]

    def key(row: Row) -> tuple[int, float, str]:
        severity = item_severity(row)
        cond = row.cond if isinstance(row, MatrixReport) and row.cond is not None else math.inf
        return (-(severity.rank if severity else 0), -cond, row.name)

    return sorted(rows, key=key), skipped


def shape_text(row: Row) -> str:
    """``32×32``; ``8×27 ← 8×3×3×3`` for a reshaped tensor; ``?`` when unknown."""
    if row.shape is None:
        return "?"
    stored = "×".join(map(str, row.shape))
    if isinstance(row, MatrixReport) and row.reshaped:
        return f"{row.matrix_shape[0]}×{row.matrix_shape[1]} ← {stored}"
    return stored


def cond_text(row: MatrixReport) -> str:
    """κ₂, or ``≥`` its lower bound when σ_min is below the computation's resolution."""
    if row.cond is None:
        return "—"
    if row.cond_resolved is False and math.isfinite(row.cond_lower_bound or math.inf):
        return f"≥{fmt(row.cond_lower_bound)}"
    return fmt(row.cond)


def _common_path(rows: Sequence[Row], skipped: Sequence[SkippedTensor]) -> str | None:
    paths = {r.path for r in rows} | {s.path for s in skipped}
    return paths.pop() if len(paths) == 1 else None


def _label(row: Row | SkippedTensor, single_file: bool) -> str:
    """The key alone when every row comes from one file (named in the title), else ``file[key]``."""
    return row.key if single_file and row.key else row.name


def _severity_text(severity: Severity | None) -> Text:
    if severity is None:
        return Text("ok", style="green")
    return Text(
        severity.value.upper() if severity is Severity.ERROR else severity.value,
        style=_STYLES[severity],
    )


#: Columns of the table: (header, justification). The first is the severity.
_COLUMNS = (
    ("", "left"), ("matrix", "left"), ("shape", "left"), ("dtype", "left"),
    ("σ_max", "right"), ("σ_min", "right"), ("κ₂", "right"), ("rank", "right"),
    ("rank tol", "right"), ("min gap", "right"), ("pairs", "right"), ("vec err", "right"),
    ("noise", "right"), ("flags", "left"),
)  # fmt: skip

#: Columns given up, in this order, when the table is wider than the console; the
#: rest (severity, matrix, shape, κ₂, rank, min gap, flags) always stays, and the
#: JSON/CSV formats always carry everything.
_DROP_ORDER = ("rank tol", "noise", "vec err", "σ_max", "σ_min", "dtype", "pairs")


def _cells(row: Row, single_file: bool) -> list[Text | str]:
    label = Text(_label(row, single_file))
    if isinstance(row, FailedReport):
        return [
            _severity_text(Severity.ERROR), label, shape_text(row), row.dtype or "?",
            *(["—"] * 9), Text("failed", style=_STYLES[Severity.ERROR]),
        ]  # fmt: skip
    k = min(row.matrix_shape)
    rank = "—" if row.rank is None else f"{row.rank}/{k}"
    pairs = (
        "—"
        if row.near_degenerate_pairs is None
        else f"{row.near_degenerate_pairs}/{row.tied_pairs}"
    )
    return [
        _severity_text(row.severity), label, shape_text(row), row.dtype,
        fmt(row.sigma_max), fmt(row.sigma_min), cond_text(row), rank, fmt(row.rank_tol),
        fmt(row.rel_min_gap), pairs, fmt(row.vector_error_bound), fmt(row.noise_floor),
        Text(", ".join(row.flags), style=_STYLES.get(row.severity, "")),  # type: ignore[arg-type]
    ]  # fmt: skip


def _table(
    cells: Sequence[Sequence[Text | str]], title: str | None, hidden: Sequence[str] = ()
) -> Table:
    table = Table(
        box=box.SIMPLE_HEAD,
        title=title,
        title_justify="left",
        pad_edge=False,
        collapse_padding=True,
    )
    keep = [i for i, (header, _) in enumerate(_COLUMNS) if header not in hidden]
    for i in keep:
        header, justify = _COLUMNS[i]
        table.add_column(header, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for row in cells:
        table.add_row(*(row[i] for i in keep))
    return table


def natural_width(console: Console, table: Table) -> int:
    """The width the table takes when nothing limits it."""
    unbounded = console.options.update(max_width=UNBOUNDED_WIDTH)
    return Measurement.get(console, unbounded, table).maximum


def fitted_table(
    console: Console, rows: Sequence[Row], single_file: bool, title: str | None
) -> tuple[Table, list[str]]:
    """The table, without the least important columns if it would not fit the console's width.

    Returns the table and the headers it hid (empty when everything fits).
    """
    cells = [_cells(row, single_file) for row in rows]
    hidden: list[str] = []
    table = _table(cells, title)
    for header in _DROP_ORDER:
        if natural_width(console, table) <= console.width:
            break
        hidden.append(header)
        table = _table(cells, title, hidden)
    return table, hidden


def _findings_lines(rows: Sequence[Row], single_file: bool) -> list[Text]:
    lines = []
    for row in rows:
        label = _label(row, single_file)
        if isinstance(row, FailedReport):
            line = Text("ERROR ", style=_STYLES[Severity.ERROR])
            line.append(f"{label}: failed ({row.stage}): {row.reason}")
            lines.append(line)
            continue
        for finding in row.findings:
            line = Text(f"{finding.severity.value.upper():<7} ", style=_STYLES[finding.severity])
            line.append(f"{label}: {finding.flag.value}: {finding_text(finding)}")
            lines.append(line)
    return lines


def skipped_text(skipped: Sequence[SkippedTensor], single_file: bool) -> list[str]:
    """One line per skip reason: ``skipped 1-d: 2 (a.bias, b.bias)``; details for the unusual ones."""
    by_reason: dict[str, list[SkippedTensor]] = {}
    for item in skipped:
        by_reason.setdefault(item.reason.value, []).append(item)
    lines = []
    for reason, items in by_reason.items():
        if reason == "excluded":  # the user asked for it: a count is enough
            lines.append(
                f"skipped {reason}: {len(items)} (by {parameter_flag('include')}/"
                f"{parameter_flag('exclude')})"
            )
            continue
        names = [_label(i, single_file) for i in items[:_SKIPPED_LISTED]]
        more = f", and {len(items) - _SKIPPED_LISTED} more" if len(items) > _SKIPPED_LISTED else ""
        lines.append(f"skipped {reason}: {len(items)} ({', '.join(names)}{more})")
        limit = f" ({parameter_flag('max_elements')})" if reason == "too-large" else ""
        lines.extend(f"  {_label(i, single_file)}: {i.detail}{limit}" for i in items if i.detail)
    return lines


LEGEND = (
    "pairs: near-degenerate/tied pairs of singular values; min gap: min_i gap_i/σ_max "
    "(LAPACK xDISNA); vec err: ε·σ_max/min gap (singular-vector angle bound, radians); "
    "noise: ε(storage)·σ_max for bf16/fp16/fp8"
)


def print_table(
    console: Console,
    items: Sequence[InspectionItem],
    summary: InspectionSummary,
    footer: str,
    inputs: Sequence[str] = (),
    *,
    fit_to_console: bool = True,
) -> None:
    """The table (worst first), the findings under it, the skipped tensors and the summary line.

    ``inputs`` (the files inspected) name the title when the rows come from several files.
    ``fit_to_console``: hide columns to fit a terminal's width; False (a file or a pipe)
    prints every column at the table's natural width.
    """
    rows, skipped = worst_first(items)
    common = _common_path(rows, skipped)
    single_file = common is not None
    names = [Path(common).name] if common else [Path(p).name for p in inputs]
    title = " ".join(["svdguard inspect", *names])
    if rows:
        if fit_to_console:
            table, hidden = fitted_table(console, rows, single_file, title)
            console.print(table)
        else:
            table, hidden = _table([_cells(r, single_file) for r in rows], title), []
            console.print(table, width=natural_width(console, table))
        console.print(Text(LEGEND, style="dim"), soft_wrap=True)
        if hidden:
            console.print(
                Text(
                    f"(columns hidden to fit {console.width} characters: {', '.join(hidden)}; "
                    "widen the terminal or use --format json)",
                    style="dim",
                ),
                soft_wrap=True,
            )
    else:
        console.print(Text(f"{title}: no matrix analysed"))
    findings = _findings_lines(rows, single_file)
    if findings:
        console.print()
        for line in findings:
            console.print(line, soft_wrap=True)
    if skipped:
        console.print()
        for skip_line in skipped_text(skipped, single_file):
            console.print(Text(skip_line), soft_wrap=True)
    console.print()
    console.print(Text(f"{summary.line()} {footer}".rstrip(), style="bold"), soft_wrap=True)


def json_document(
    items: Sequence[InspectionItem],
    summary: InspectionSummary,
    settings: dict[str, Any],
    exit_code: int,
) -> dict[str, Any]:
    """The JSON report (``inspect_schema.json``): settings, summary, rows worst first, skipped."""
    rows, skipped = worst_first(items)
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": "svdguard",
        "version": __version__,
        "settings": settings,
        "summary": summary.to_dict(),
        "exit_code": exit_code,
        "rows": [row.to_dict() for row in rows],
        "skipped": [item.to_dict() for item in skipped],
    }


CSV_COLUMNS = (
    "kind", "severity", "flags", "name", "path", "key", "shape", "matrix_shape", "dtype",
    "compute_dtype", "device", "sigma_max", "sigma_min", "cond", "cond_resolved",
    "cond_lower_bound", "rank", "rank_tol", "rel_min_gap", "near_degenerate_pairs",
    "tied_pairs", "tie_tol", "near_degenerate_tol", "vector_error_bound", "noise_floor",
    "below_noise_floor", "nonfinite", "stage", "reason", "messages",
)  # fmt: skip


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return (
            "x".join(map(str, value))
            if all(isinstance(v, int) for v in value)
            else "; ".join(map(str, value))
        )
    if isinstance(value, float):
        return repr(value)
    return str(value)


def to_csv(items: Sequence[InspectionItem]) -> str:
    """One CSV row per tensor (analysed rows worst first, then skipped); shapes as ``32x32``."""
    rows, skipped = worst_first(items)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for item in [*rows, *skipped]:
        record = item.to_dict()
        if isinstance(item, MatrixReport):
            record["messages"] = [f.message for f in item.findings]
        writer.writerow([_csv_cell(record.get(column)) for column in CSV_COLUMNS])
    return out.getvalue()


def _escape_data(text: str) -> str:
    """GitHub workflow-command escaping of a message."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    """GitHub workflow-command escaping of a property value (file=, title=)."""
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def to_github(items: Sequence[InspectionItem], summary: InspectionSummary, footer: str) -> str:
    """``::error file=...,title=...::message`` lines, one per finding, then the summary."""
    rows, _ = worst_first(items)
    lines = []
    for row in rows:
        where = f"file={_escape_property(row.path)}," if row.path else ""
        if isinstance(row, FailedReport):
            title = _escape_property(f"svdguard failed ({row.stage})")
            lines.append(
                f"::error {where}title={title}::{_escape_data(f'{row.name}: {row.reason}')}"
            )
            continue
        for finding in row.findings:
            level = _GITHUB_LEVELS[finding.severity]
            title = _escape_property(f"svdguard {finding.flag.value}")
            message = _escape_data(f"{row.name}: {finding_text(finding)}")
            lines.append(f"::{level} {where}title={title}::{message}")
    lines.append(f"{summary.line()} {footer}".rstrip())
    return "\n".join(lines) + "\n"
