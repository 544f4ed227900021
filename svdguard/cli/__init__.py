"""The command-line tool: Typer commands and Rich/JSON rendering. Nothing imports this package."""
