"""One line per layer type: the rows of a report grouped by their key with layer numbers collapsed.

``encoder.layer.3.attention.self.query.weight`` and ``encoder.layer.7.…`` fall in
the group ``encoder.layer.*.attention.self.query.weight``: a dotted component made
of digits only becomes ``*``. Each group gives the count, the worst κ₂, the
smallest relative gap, and how many rows raised each rule. No rich, no typer.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from svdguard.app.report import MatrixReport, Severity, worst_severity

__all__ = ["LayerGroup", "group_name", "rollup"]

_NUMBER = re.compile(r"(?<![^.\[])\d+(?![^.\]])")


def group_name(key: str) -> str:
    """``key`` with every all-digit component (``.3.``, ``[3]``) replaced by ``*``.

    >>> group_name("encoder.layer.11.attention.self.query.weight")
    'encoder.layer.*.attention.self.query.weight'
    >>> group_name("experts.weight[7]")
    'experts.weight[*]'
    """
    return _NUMBER.sub("*", key)


@dataclass
class LayerGroup:
    """The rows of one layer type."""

    name: str
    count: int = 0
    worst_cond: float | None = None
    worst_rel_gap: float | None = None
    severity: Severity | None = None
    codes: Counter[str] = field(default_factory=Counter)

    def add(self, row: MatrixReport) -> None:
        self.count += 1
        cond = math.inf if row.nonfinite else row.cond
        if cond is not None and (self.worst_cond is None or cond > self.worst_cond):
            self.worst_cond = cond
        gap = row.rel_min_gap
        if gap is not None and (self.worst_rel_gap is None or gap < self.worst_rel_gap):
            self.worst_rel_gap = gap
        self.severity = worst_severity((self.severity, row.severity))
        self.codes.update(f"{f.flag.code} {f.flag.value}" for f in row.findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.name,
            "count": self.count,
            "worst_cond": self.worst_cond,
            "worst_rel_gap": self.worst_rel_gap,
            "severity": None if self.severity is None else self.severity.value,
            "findings": dict(sorted(self.codes.items())),
        }


def rollup(rows: Iterable[MatrixReport]) -> list[LayerGroup]:
    """The groups of ``rows`` in order of first appearance (the caller sorts)."""
    groups: dict[str, LayerGroup] = {}
    for row in rows:
        name = group_name(row.key or row.name)
        groups.setdefault(name, LayerGroup(name)).add(row)
    return list(groups.values())
