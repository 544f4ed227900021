"""The one number formatter and the one JSON encoding of every svdguard report.

JSON has no NaN or infinity. Every document svdguard writes (``inspect``,
``grad``) encodes a float the same way:

* a finite float: a JSON number;
* NaN: the string ``"NaN"`` (e.g. the gradient norm of a matrix holding NaN);
* ±∞: the strings ``"Infinity"`` / ``"-Infinity"`` (κ₂ of a singular matrix);
* ``null``: the value was not computed or is not defined for this row.

These are the spellings Python's ``float()`` parses back, so
``float(value)`` restores every number. The JSON schema
(``svdguard/cli/inspect_schema.json``) and ``docs/cli.md`` describe the same.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["NAN", "NEGATIVE_INFINITY", "POSITIVE_INFINITY", "format_number", "jsonable", "to_json"]

NAN = "NaN"
POSITIVE_INFINITY = "Infinity"
NEGATIVE_INFINITY = "-Infinity"


def format_number(value: float | None) -> str:
    """A number for a table cell, at most 7 characters.

    ``0.0163``, ``2.00``, ``1.1e8``, ``9.5e-6``; ``∞``/``-∞`` for infinities,
    ``NaN``, and ``—`` for a value that was not computed.

    >>> [format_number(v) for v in (2.0, 0.01634, 1.1e8, 9.5e-6, float("inf"), None)]
    ['2', '0.0163', '1.1e8', '9.5e-6', '∞', '—']
    """
    if value is None:
        return "—"
    if math.isnan(value):
        return NAN
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    if value == 0:
        return "0"
    if 1e-3 <= abs(value) < 1e4:
        text = f"{value:.3g}"
        if "e" not in text:  # 9999.9 rounds to "1e+04": fall through to the exponent form
            return text
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def jsonable(value: Any) -> Any:
    """``value`` with every non-finite float replaced by its string (recursively in dicts/lists)."""
    if isinstance(value, float) and not math.isfinite(value):
        if math.isnan(value):
            return NAN
        return POSITIVE_INFINITY if value > 0 else NEGATIVE_INFINITY
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    return value


def to_json(document: Any) -> str:
    """Strict JSON (no NaN/Infinity tokens), indented, UTF-8 text, ending in a newline.

    >>> to_json({"cond": float("inf"), "norm": float("nan"), "rank": None})
    '{\\n  "cond": "Infinity",\\n  "norm": "NaN",\\n  "rank": null\\n}\\n'
    """
    return json.dumps(jsonable(document), indent=2, allow_nan=False, ensure_ascii=False) + "\n"
