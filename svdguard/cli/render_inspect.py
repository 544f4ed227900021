"""Render the rows of ``svdguard inspect``: a Rich table, JSON, CSV or GitHub annotations.

Every format carries the same rows in the same order (``--sort``; worst first by
default): the table shows the main numbers with a log-spectrum sparkline and
lists each finding under it, then a rollup per layer type; JSON and CSV carry
every field of :mod:`svdguard.app.report`. Findings are shown with the
command-line hints of :mod:`svdguard.cli.hints`; JSON and CSV keep the
library's own sentences. Names are never wrapped: in a narrow terminal a long
name loses its middle (the tail, which tells layers apart, stays).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from svdguard import __version__
from svdguard.app.discovery import Discovered
from svdguard.app.formatting import format_number as fmt
from svdguard.app.report import (
    INSPECT_SCHEMA_VERSION,
    FailedReport,
    InspectionItem,
    InspectionSummary,
    MatrixReport,
    Severity,
    SkippedTensor,
    item_severity,
)
from svdguard.app.rollup import LayerGroup, rollup
from svdguard.cli.console import UNBOUNDED_WIDTH
from svdguard.cli.hints import finding_text, parameter_flag

__all__ = [
    "CSV_COLUMNS",
    "FORMATS",
    "LEGEND",
    "View",
    "middle_ellipsis",
    "sparkline",
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
#: Skip reasons that are a user's choice or routine (listed by name only with
#: --show-excluded); the others are unusual and always listed with their reason.
_ROUTINE_SKIPS = ("excluded", "optimizer-state", "1-d", "scalar", "integer", "bool", "empty")
#: Blocks of the sparkline, lowest first.
_BLOCKS = "▁▂▃▄▅▆▇█"
#: A sparkline spans at least this many decades, so that a well-conditioned spectrum
#: looks flat instead of having its rounding-level wiggles blown up to full height.
_SPARK_MIN_DECADES = 1.0

Row = MatrixReport | FailedReport


@dataclass(frozen=True)
class View:
    """What the reader asked to see: which rows, in which order, with which extras."""

    top: int | None = None  #: only the N first rows of the order
    sort: str = "severity"  #: severity (then κ₂), cond, gap, name, file
    hide_clean: bool = False  #: leave rows without findings out of the table
    rollup: bool = True  #: a table per layer type when it is shorter
    show_excluded: bool = False  #: list routine skips by name
    labels: Discovered | None = None


def _cond_key(row: Row) -> float:
    if isinstance(row, MatrixReport) and row.cond is not None and not row.nonfinite:
        return row.cond
    return math.inf  # a NaN matrix or a failed row counts as ∞


def _gap_key(row: Row) -> float:
    if isinstance(row, MatrixReport) and row.rel_min_gap is not None:
        return row.rel_min_gap
    return -1.0 if isinstance(row, FailedReport) or row.nonfinite else math.inf


def worst_first(
    items: Iterable[InspectionItem], sort: str = "severity"
) -> tuple[list[Row], list[SkippedTensor]]:
    """The analysed rows in ``sort`` order (default: severity, then κ₂ largest first, then
    name; a NaN matrix counts as ∞) and the skipped tensors in their original order."""
    rows: list[Row] = []
    skipped: list[SkippedTensor] = []
    for item in items:
        (skipped if isinstance(item, SkippedTensor) else rows).append(item)  # type: ignore[arg-type]

    def severity_rank(row: Row) -> int:
        severity = item_severity(row)
        return -(severity.rank if severity else 0)

    if sort == "file":
        return rows, skipped
    if sort == "name":
        return sorted(rows, key=lambda r: r.name), skipped
    if sort == "cond":
        return sorted(rows, key=lambda r: (-_cond_key(r), r.name)), skipped
    if sort == "gap":
        return sorted(rows, key=lambda r: (_gap_key(r), r.name)), skipped
    return sorted(rows, key=lambda r: (severity_rank(r), -_cond_key(r), r.name)), skipped


def shown_rows(rows: list[Row], view: View) -> list[Row]:
    """The rows the table (and JSON/CSV) list: without clean ones if asked, at most ``top``."""
    if view.hide_clean:
        rows = [r for r in rows if item_severity(r) is not None]
    return rows if view.top is None else rows[: view.top]


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


def sparkline(sketch: Sequence[float] | None) -> str:
    """Blocks for log10(s_i/σ_max) at evenly spaced i: the shape of the spectrum, σ_max first.

    The scale runs from the sketch's lowest point (at least one decade below σ_max)
    to σ_max: ``████▇▇▇▆▆▅▄▁`` is a spectrum that falls off at its end.

    >>> sparkline([0.0, -0.5, -1.0])
    '█▅▁'
    >>> sparkline(None)
    '—'
    """
    if not sketch:
        return "—"
    low = min(min(sketch), -_SPARK_MIN_DECADES)
    top = len(_BLOCKS) - 1
    return "".join(_BLOCKS[max(0, min(top, round((v - low) / -low * top)))] for v in sketch)


def middle_ellipsis(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters by dropping its middle (the tail tells layers apart).

    >>> middle_ellipsis("encoder.layer.11.attention.self.query.weight", 24)
    'encoder.…lf.query.weight'
    """
    if len(text) <= width or width < 5:
        return text
    tail = (width - 1) * 2 // 3
    head = width - 1 - tail
    return text[:head] + "…" + text[len(text) - tail :]


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
    ("srank", "right"), ("erank", "right"), ("min gap", "right"), ("spectrum", "left"),
    ("findings", "left"),
)  # fmt: skip

#: Columns given up, in this order, when the table is wider than the console; the
#: rest (severity, matrix, shape, κ₂, rank, min gap, findings) always stays, and the
#: JSON/CSV formats always carry everything.
_DROP_ORDER = ("σ_min", "σ_max", "erank", "srank", "dtype", "spectrum")
_MATRIX = 1


def _findings_cell(row: MatrixReport) -> Text:
    text = ", ".join(f"{f.flag.code} {f.flag.value}" for f in row.findings)
    return Text(text, style=_STYLES.get(row.severity, ""))  # type: ignore[arg-type]


def _cells(row: Row, single_file: bool) -> list[Text | str]:
    label = Text(_label(row, single_file))
    if isinstance(row, FailedReport):
        return [
            _severity_text(Severity.ERROR), label, shape_text(row), row.dtype or "?",
            *(["—"] * 8), Text("failed", style=_STYLES[Severity.ERROR]),
        ]  # fmt: skip
    k = min(row.matrix_shape)
    rank = "—" if row.rank is None else f"{row.rank}/{k}"
    return [
        _severity_text(row.severity), label, shape_text(row), row.dtype,
        fmt(row.sigma_max), fmt(row.sigma_min), cond_text(row), rank, fmt(row.stable_rank),
        fmt(row.effective_rank), fmt(row.rel_min_gap), sparkline(row.sketch), _findings_cell(row),
    ]  # fmt: skip


def _table(
    cells: Sequence[Sequence[Text | str]],
    title: str | None,
    hidden: Sequence[str] = (),
    name_width: int | None = None,
    columns: Sequence[tuple[str, str]] = _COLUMNS,
) -> Table:
    table = Table(
        box=box.SIMPLE_HEAD,
        title=title,
        title_justify="left",
        pad_edge=False,
        collapse_padding=True,
    )
    keep = [i for i, (header, _) in enumerate(columns) if header not in hidden]
    for i in keep:
        header, justify = columns[i]
        table.add_column(header, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for row in cells:
        shown = []
        for i in keep:
            cell = row[i]
            if i == _MATRIX and name_width is not None:
                cell = Text(middle_ellipsis(str(cell), name_width))
            shown.append(cell)
        table.add_row(*shown)
    return table


def _print_whole(console: Console, table: Table) -> None:
    """Print ``table`` with no cell cut: wider than the console if it must be.

    Rich never renders wider than ``console.width`` (a ``width=`` argument only narrows),
    so a table still too wide after hiding columns and shortening names (a pipe never
    shortens names) is printed on a console widened for the call: lines overflow, cells
    stay whole.
    """
    width = natural_width(console, table)
    if width <= console.width:
        console.print(table)
        return
    saved = console.width
    console.width = width
    try:
        console.print(table)
    finally:
        console.width = saved


def natural_width(console: Console, table: Table) -> int:
    """The width the table takes when nothing limits it."""
    unbounded = console.options.update(max_width=UNBOUNDED_WIDTH)
    return Measurement.get(console, unbounded, table).maximum


def fitted_table(
    console: Console, rows: Sequence[Row], single_file: bool, title: str | None
) -> tuple[Table, list[str]]:
    """The table, without the least important columns if it would not fit the console's width,
    and, in a terminal, with long names shortened in the middle if it still does not (a pipe
    or a file with ``COLUMNS`` set keeps every name whole, greppable).

    Returns the table and the headers it hid (empty when everything fits).
    """
    cells = [_cells(row, single_file) for row in rows]
    hidden: list[str] = []
    table = _table(cells, title)
    for header in _DROP_ORDER:
        if natural_width(console, table) <= console.width:
            return table, hidden
        hidden.append(header)
        table = _table(cells, title, hidden)
    excess = natural_width(console, table) - console.width
    if excess > 0 and console.is_terminal:  # a pipe or a file keeps every name whole
        longest = max((len(str(c[_MATRIX])) for c in cells), default=0)
        table = _table(cells, title, hidden, name_width=max(12, longest - excess))
    return table, hidden


def _findings_lines(rows: Sequence[Row], single_file: bool) -> list[Text]:
    lines = []
    for row in rows:
        label = _label(row, single_file)
        if isinstance(row, FailedReport):
            line = Text("ERROR   ", style=_STYLES[Severity.ERROR])
            line.append(f"{label}: failed ({row.stage}): {row.reason}")
            lines.append(line)
            continue
        for finding in row.findings:
            line = Text(f"{finding.severity.value.upper():<7} ", style=_STYLES[finding.severity])
            line.append(
                f"{label}: {finding.flag.code} {finding.flag.value}: {finding_text(finding)}"
            )
            lines.append(line)
    return lines


def skipped_text(
    skipped: Sequence[SkippedTensor], single_file: bool, show_excluded: bool = False
) -> list[str]:
    """One line per skip reason with its count; names for the unusual reasons (with their
    detail) and, with ``show_excluded``, for the routine ones too."""
    by_reason: dict[str, list[SkippedTensor]] = {}
    for item in skipped:
        by_reason.setdefault(item.reason.value, []).append(item)
    lines = []
    for reason, items in by_reason.items():
        routine = reason in _ROUTINE_SKIPS
        how = ""
        if reason == "excluded":
            how = f" by {parameter_flag('include')}/{parameter_flag('exclude')}"
        elif reason == "optimizer-state":
            how = " (analyse them with --include-optimizer)"
        elif reason == "too-large":
            how = f" (raise {parameter_flag('max_elements')})"
        elif reason == "too-slow":
            how = f" (raise {parameter_flag('max_time')})"
        hint = "" if show_excluded or not routine else "; --show-excluded lists them"
        lines.append(f"skipped {reason}: {len(items)}{how}{hint}")
        if show_excluded or not routine:
            for i in items:
                lines.append(f"  {_label(i, single_file)}" + (f": {i.detail}" if i.detail else ""))
    return lines


LEGEND = (
    "rank: numerical rank/min(m, n); srank: stable rank ‖A‖_F²/σ_max²; erank: effective rank "
    "exp(entropy of s/Σs); min gap: min_i gap_i/σ_max (LAPACK xDISNA); spectrum: log10 s_i "
    "from σ_max (left) to σ_min; `svdguard explain CODE` explains a finding"
)

_ROLLUP_COLUMNS = (
    ("", "left"), ("layer type", "left"), ("count", "right"), ("worst κ₂", "right"),
    ("worst gap", "right"), ("findings", "left"),
)  # fmt: skip


def rollup_groups(rows: Sequence[Row]) -> list[LayerGroup]:
    """The layer types of the analysed rows, worst first; empty when no two rows share one."""
    groups = rollup(r for r in rows if isinstance(r, MatrixReport))
    if len(groups) == len([r for r in rows if isinstance(r, MatrixReport)]):
        return []

    def key(group: LayerGroup) -> tuple[int, float, str]:
        rank = group.severity.rank if group.severity else 0
        return (-rank, -(group.worst_cond or 0.0), group.name)

    return sorted(groups, key=key)


def _rollup_table(groups: Sequence[LayerGroup], name_width: int | None) -> Table:
    cells: list[list[Text | str]] = [
        [
            _severity_text(g.severity), g.name, str(g.count), fmt(g.worst_cond),
            fmt(g.worst_rel_gap),
            Text(", ".join(f"{code}: {n}" for code, n in sorted(g.codes.items())),
                 style=_STYLES.get(g.severity, "")),  # type: ignore[arg-type]
        ]
        for g in groups
    ]  # fmt: skip
    return _table(cells, "by layer type", name_width=name_width, columns=_ROLLUP_COLUMNS)


def print_table(
    console: Console,
    items: Sequence[InspectionItem],
    summary: InspectionSummary,
    footer: str,
    inputs: Sequence[str] = (),
    *,
    fit_to_console: bool = True,
    view: View | None = None,
) -> None:
    """The table (worst first), the findings under it, the layer types, the skipped tensors and
    the summary line.

    ``inputs`` (the files inspected) name the title when the rows come from several files.
    ``fit_to_console``: hide columns and shorten names to fit a terminal's width; False (a
    file or a pipe) prints every column at the table's natural width, never wrapped.
    """
    view = view or View()
    rows, skipped = worst_first(items, view.sort)
    common = _common_path(rows, skipped)
    single_file = common is not None
    label = view.labels.label if view.labels is not None else (lambda p: Path(p).name)
    names = [label(common)] if common else [label(p) for p in inputs]
    title = " ".join(["svdguard inspect", *names])
    shown = shown_rows(rows, view)
    if shown:
        if fit_to_console:
            table, hidden = fitted_table(console, shown, single_file, title)
            _print_whole(console, table)
        else:
            table, hidden = _table([_cells(r, single_file) for r in shown], title), []
            _print_whole(console, table)
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
    elif rows:
        console.print(Text(f"{title}: every matrix is clean (--hide-clean)"))
    else:
        console.print(Text(f"{title}: no matrix analysed"))
    if len(shown) < len(rows):
        more = len(rows) - len(shown)
        console.print(
            Text(f"({more} more row{'s' * (more > 1)} not shown: --top/--hide-clean)", style="dim"),
            soft_wrap=True,
        )
    findings = _findings_lines(shown, single_file)
    if findings:
        console.print()
        for line in findings:
            console.print(line, soft_wrap=True)
    groups = rollup_groups(rows) if view.rollup else []
    if groups:
        console.print()
        group_table = _rollup_table(groups, None)
        too_wide = natural_width(console, group_table) > console.width
        if fit_to_console and console.is_terminal and too_wide:
            excess = natural_width(console, group_table) - console.width
            longest = max(len(g.name) for g in groups)
            group_table = _rollup_table(groups, max(12, longest - excess))
            console.print(group_table)
        elif fit_to_console and not too_wide:
            console.print(group_table)
        else:
            console.print(group_table, width=natural_width(console, group_table))
    if skipped:
        console.print()
        for skip_line in skipped_text(skipped, single_file, view.show_excluded):
            console.print(Text(skip_line), soft_wrap=True)
    console.print()
    console.print(Text(f"{summary.line()} {footer}".rstrip(), style="bold"), soft_wrap=True)


def json_document(
    items: Sequence[InspectionItem],
    summary: InspectionSummary,
    settings: dict[str, Any],
    exit_code: int,
    view: View | None = None,
) -> dict[str, Any]:
    """The JSON report (``inspect_schema.json``): settings, summary, rows, layer types, skipped."""
    view = view or View()
    rows, skipped = worst_first(items, view.sort)
    shown = shown_rows(rows, view)
    return {
        "schema_version": INSPECT_SCHEMA_VERSION,
        "tool": "svdguard",
        "version": __version__,
        "settings": settings,
        "summary": summary.to_dict(),
        "exit_code": exit_code,
        "rows": [row.to_dict() for row in shown],
        "rows_not_shown": len(rows) - len(shown),
        "rollup": [g.to_dict() for g in rollup_groups(rows)] if view.rollup else [],
        "skipped": [item.to_dict() for item in skipped],
    }


CSV_COLUMNS = (
    "kind", "severity", "codes", "flags", "name", "path", "key", "shape", "matrix_shape", "dtype",
    "compute_dtype", "device", "sigma_max", "sigma_min", "cond", "cond_resolved",
    "cond_lower_bound", "typical_cond", "rank", "rank_tol", "stable_rank", "effective_rank",
    "rel_min_gap", "near_degenerate_pairs", "tied_pairs", "tie_tol", "near_degenerate_tol",
    "vector_error_bound", "noise_floor", "below_noise_floor", "nonfinite", "stage", "reason",
    "messages",
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
    text = str(value)
    # A text cell that a spreadsheet would read as a formula (a key such as "=HYPERLINK(…)")
    # is quoted with a leading apostrophe, the usual defence against CSV formula injection.
    return "'" + text if text[:1] in _FORMULA_STARTS else text


#: First characters that make a spreadsheet evaluate a cell as a formula.
_FORMULA_STARTS = frozenset("=+-@\t\r")


def to_csv(items: Sequence[InspectionItem], view: View | None = None) -> str:
    """One CSV row per tensor (analysed rows in order, then skipped); shapes as ``32x32``."""
    view = view or View()
    rows, skipped = worst_first(items, view.sort)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for item in [*shown_rows(rows, view), *skipped]:
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
            title = _escape_property(f"svdguard {finding.flag.code} {finding.flag.value}")
            message = _escape_data(f"{row.name}: {finding_text(finding)}")
            lines.append(f"::{level} {where}title={title}::{message}")
    lines.append(f"{summary.line()} {footer}".rstrip())
    return "\n".join(lines) + "\n"
