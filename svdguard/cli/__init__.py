"""The command-line tool: Typer commands and Rich/JSON rendering. Nothing imports this package.

``app.py`` builds the Typer application and registers the commands
(``inspect_cmd``, ``grad_cmd``); ``error_boundary`` maps exceptions to exit
codes; ``console`` is the one width/colour policy; ``hints`` turns library
parameters and finding codes into flags.
"""

__all__: list[str] = []
