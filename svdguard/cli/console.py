"""The one console policy of every command.

* A terminal: Rich's own width, colours and ``NO_COLOR``/``FORCE_COLOR`` handling.
* A pipe or a file: nothing is wrapped or cut (a tensor name must stay on one
  line, greppable), whatever the width of the terminal the pipe started in;
  ``COLUMNS``, when set, still gives a width to fit tables to.
* A report file (``-o``): never colour, whatever the environment.
* Never Rich markup, emoji codes or highlighting: a cell, a title or a line
  may hold a key or a dtype code taken from a file (``[/]``, ``:smile:``),
  which must print as it is written; styles are given as ``Text`` styles.
  Control characters in such strings are escaped before they get here
  (``svdguard.io.text.printable``).
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any

from rich.console import Console

__all__ = ["UNBOUNDED_WIDTH", "fits_width", "make_console"]

#: The width of a console that must not wrap: wider than any line svdguard prints.
UNBOUNDED_WIDTH = 100_000


def fits_width(console: Console) -> bool:
    """True when output should fit the console's width: a terminal, or ``COLUMNS`` is set."""
    return console.is_terminal or "COLUMNS" in os.environ


def make_console(file: IO[str] | None = None, *, stderr: bool = False) -> Console:
    """A Rich console for ``file`` (stdout by default, stderr with ``stderr=True``)."""
    stream = file if file is not None else (sys.stderr if stderr else sys.stdout)
    is_std = stream is sys.stdout or stream is sys.stderr
    if not is_std:  # a report file: plain text at natural width
        return _plain_console(stream, color_system=None, width=UNBOUNDED_WIDTH, soft_wrap=True)
    console = _plain_console(stream)
    if fits_width(console):
        return console
    return _plain_console(stream, width=UNBOUNDED_WIDTH, soft_wrap=True)


def _plain_console(stream: IO[str], **settings: Any) -> Console:
    """A console that prints text from a file literally: no markup, emoji or highlighting."""
    return Console(file=stream, markup=False, emoji=False, highlight=False, **settings)
