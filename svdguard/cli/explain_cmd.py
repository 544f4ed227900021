"""``svdguard explain CODE``: what a rule checks, its severity per profile, and what to do."""

from __future__ import annotations

from typing import Annotated

import typer

from svdguard.cli.error_boundary import guarded, say
from svdguard.cli.hints import parameter_flag

__all__ = ["run"]


@guarded
def run(
    code: Annotated[
        str | None,
        typer.Argument(
            help="A rule code (SG201) or name (ill-conditioned); none lists every rule.",
            metavar="CODE",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Explain a rule of `svdguard inspect`, or list them all."""
    from svdguard.app.rules import RULES, find_rule

    if code is None:
        for listed in RULES:
            print(f"{listed.code}  {listed.name:<16} {listed.summary}")
        return
    rule = find_rule(code)
    if rule is None:
        say(
            f"svdguard: error: unknown rule {code!r}; the rules are "
            + ", ".join(f"{r.code} ({r.name})" for r in RULES)
        )
        raise typer.Exit(2)
    print(f"{rule.code} {rule.name}: {rule.summary}")
    print(f"severity: {rule.severities}")
    if rule.parameter is not None:
        print(f"threshold: {parameter_flag(rule.parameter)}")
    print()
    print(rule.explanation)
