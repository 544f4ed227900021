"""The math core: torch only, no I/O, no rich/typer."""
