"""The math core: torch only, no I/O, no rich/typer, no command-line words.

Messages name library parameters (``max_cond=``); ``svdguard.app`` and
``svdguard.cli`` build on this package, never the other way round.
"""

__all__: list[str] = []
