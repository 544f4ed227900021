"""``svdguard repair``: write the nearest well-posed copy of a checkpoint, nothing else changed.

The command only parses and renders: ``svdguard.repairing.repair`` does the work.
The per-tensor table (or JSON) goes to stdout, talk to stderr.
"""

from __future__ import annotations

import re
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from svdguard.cli import exit_codes
from svdguard.cli.console import make_console
from svdguard.cli.error_boundary import guarded, say
from svdguard.errors import InputError

if TYPE_CHECKING:  # torch is imported when the command runs, not for --help
    from svdguard.app.repairing import RepairResult, TensorRepair

HELP = """Write the nearest well-posed copy of INPUT to OUTPUT; every other byte unchanged.

Each selected matrix (2-D, or ≥3-D viewed as shape[0] × prod(rest)) whose singular
values violate a bound is replaced by the nearest matrix in Frobenius norm with the
same σ_max and singular vectors whose singular values meet both bounds: κ₂ ≤
--max-cond and every gap s_i − s_{i+1} ≥ --min-gap·σ_max. Without either option the
thresholds `svdguard inspect` flags against are used (per tensor dtype). Everything
else (untouched tensors, headers, metadata, shard names, the index) is copied byte
for byte. Repaired matrices are re-checked in their storage dtype after writing.

INPUT: .safetensors, .npy, .npz (OUTPUT: same format), or a sharded checkpoint
(*.safetensors.index.json or its directory; OUTPUT: a directory). .pt/.bin/.pth
pickles are refused. See docs/repair.md.
"""

EPILOG = (
    "Exit codes: 0 every bound met; 1 a bound the storage dtype cannot hold (or an all-zero "
    "matrix); 2 usage or input error, or a non-finite matrix without --skip-nonfinite; "
    "130 interrupted; 143 terminated."
)

#: Library parameter names → the flags that set them, for messages shown by the CLI.
FLAG_NAMES = {
    "max_cond": "--max-cond",
    "min_gap": "--min-gap",
    "skip_nonfinite": "--skip-nonfinite",
    "force": "--force",
}
_PARAMETER = re.compile(r"\b(" + "|".join(FLAG_NAMES) + r")(=True\b|=)?")


class OutputFormat(str, Enum):
    table = "table"
    json = "json"


def in_cli_words(message: str) -> str:
    """A library message with its parameter names spelled as flags: ``max_cond=2`` → ``--max-cond 2``."""

    def flag(match: re.Match[str]) -> str:
        return FLAG_NAMES[match[1]] + (" " if match[2] == "=" else "")

    return _PARAMETER.sub(flag, message)


def _number(value: float | None) -> str:
    from svdguard.app.formatting import format_number

    return format_number(value)


def _arrow(before: float | int | None, after: float | int | None) -> str:
    if after is None:
        return _number(before) if not isinstance(before, int) else str(before)
    if isinstance(before, int) and isinstance(after, int):
        return f"{before} → {after}"
    return f"{_number(before)} → {_number(after)}"


#: Rich style of each ``Status`` value (by its string, so that this module needs no torch).
_STYLES = {
    "repaired": "green",
    "unreachable": "bold red",
    "nonfinite": "bold red",
    "untouched": "",
    "skipped": "dim",
}


def print_table(console: Console, result: RepairResult) -> None:
    """One row per tensor: status, change, κ₂, min relative gap and rank before → after."""
    from svdguard.io.text import printable

    table = Table(box=None, pad_edge=False)
    for column in (
        "status",
        "tensor",
        "shape",
        "dtype",
        "‖ΔW‖/‖W‖",
        "κ₂",
        "min gap",
        "rank",
        "note",
    ):
        table.add_column(column, no_wrap=column != "note")
    for row in result.records:
        table.add_row(
            Text(row.status.value, style=_STYLES.get(row.status.value, "")),
            Text(printable(row.key or row.name)),  # a key from the file: escaped, never raw
            "×".join(map(str, row.shape)),
            Text(printable(row.dtype)),
            _number(row.rel_change),
            _arrow(row.cond_before, row.cond_after),
            _arrow(row.rel_min_gap_before, row.rel_min_gap_after),
            _arrow(row.rank_before, row.rank_after),
            Text(printable(in_cli_words(row.detail))),
        )
    console.print(table)


def _explain(row: TensorRepair) -> str:
    return f"{row.name}: {in_cli_words(row.detail)}"


def repair_command(
    source: Annotated[
        Path, typer.Argument(help="Checkpoint to repair.", metavar="INPUT", show_default=False)
    ],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Where to write the repaired copy (never over INPUT)."),
    ] = None,
    max_cond: Annotated[
        float | None,
        typer.Option("--max-cond", help="Bound on κ₂ = σ_max/σ_min.", show_default=False),
    ] = None,
    min_gap: Annotated[
        float | None,
        typer.Option(
            "--min-gap",
            help="Bound on every gap s_i − s_{i+1}, relative to σ_max.",
            show_default=False,
        ),
    ] = None,
    include: Annotated[
        list[str] | None,
        typer.Option(
            "--include", metavar="GLOB", help="Only tensors whose key matches. Repeatable."
        ),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude", metavar="GLOB", help="Leave tensors whose key matches. Repeatable."
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report what would change; write nothing.")
    ] = False,
    output_format: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="table or json.")
    ] = OutputFormat.table,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing OUTPUT.")] = False,
    skip_nonfinite: Annotated[
        bool,
        typer.Option(
            "--skip-nonfinite",
            help="Copy matrices holding NaN/Inf unchanged instead of writing nothing (exit 2).",
        ),
    ] = False,
) -> None:
    from svdguard.app.repairing import Status, repair

    if output is None and not dry_run:
        raise InputError("give the output path with -o/--output (or use --dry-run)")
    try:
        result = repair(
            source,
            output,
            max_cond=max_cond,
            min_gap=min_gap,
            include=include or (),
            exclude=exclude or (),
            dry_run=dry_run,
            force=force,
            skip_nonfinite=skip_nonfinite,
        )
    except InputError as err:
        raise InputError(in_cli_words(err.message), path=err.path, key=err.key) from None
    if output_format is OutputFormat.json:
        sys.stdout.write(result.to_json())
    else:
        print_table(make_console(), result)
    for row in result.records:
        if row.status is Status.NONFINITE and not skip_nonfinite:
            say(f"svdguard: error: {_explain(row)} (pass --skip-nonfinite to copy it unchanged)")
        elif row.status is Status.UNREACHABLE:
            say(f"svdguard: bound not met: {_explain(row)}")
    code = {0: exit_codes.OK, 1: exit_codes.FINDINGS, 2: exit_codes.USAGE}[result.exit_status]
    say(f"{result.summary()} → exit {code}")
    raise typer.Exit(code)


#: What the application registers: ``app.command("repair", help=HELP, epilog=EPILOG)(run)``.
run = guarded(repair_command)
