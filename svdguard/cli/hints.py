"""What a command-line user should type: flag names added to the library's findings.

The library words a finding with its numbers, its consequence and (``parameter``)
the argument whose threshold raised it; only here do those become flags.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from svdguard.app.report import Finding

__all__ = ["FINDING_HINTS", "PARAMETER_FLAGS", "finding_text", "parameter_flag"]

#: Library parameter → the option of ``svdguard inspect`` that sets it.
PARAMETER_FLAGS = {
    "max_cond": "--max-cond",
    "gap_rtol": "--gap-tol",
    "precision": "--precision",
    "max_elements": "--max-elements",
    "max_time": "--max-time",
    "include": "--include",
    "exclude": "--exclude",
    "device": "--device",
    "force": "--force",
}

#: Finding code → what to do about it on the command line.
FINDING_HINTS = {
    "tied": "see `svdguard explain SG301`; `svdguard grad` shows a gradient that stays finite",
    "near-degenerate": "`svdguard grad` shows a gradient that stays finite",
    "unresolved": "rerun with --precision float64",
}


def parameter_flag(parameter: str) -> str:
    """``max_cond`` → ``--max-cond``; an unknown name is spelt as a flag the usual way."""
    return PARAMETER_FLAGS.get(parameter, "--" + parameter.replace("_", "-"))


def finding_text(finding: Finding) -> str:
    """The finding's message, the flag that sets its threshold, and the command-line remedy."""
    text = finding.message
    hint = FINDING_HINTS.get(finding.flag.value)
    if finding.parameter is not None:
        flag = parameter_flag(finding.parameter)
        if hint is None or flag not in hint:
            text += f" (threshold: {flag})"
    if hint is not None:
        text += f"; {hint}"
    return text
