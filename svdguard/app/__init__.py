"""The application layer: what ``svdguard inspect`` and ``svdguard grad`` compute.

Above :mod:`svdguard.linalg` (the math) and :mod:`svdguard.io` (the files),
below :mod:`svdguard.cli` (flags and rendering), which nothing imports:

* :mod:`~svdguard.app.diagnose`: one matrix → a report with findings;
* :mod:`~svdguard.app.rules`: the rule codes, the profiles, which rules run;
* :mod:`~svdguard.app.inspection`: files and checkpoints → one row per tensor;
* :mod:`~svdguard.app.discovery`: which files of a directory hold weights;
* :mod:`~svdguard.app.config`: the ``[tool.svdguard]`` project settings;
* :mod:`~svdguard.app.rollup`: rows grouped by layer type;
* :mod:`~svdguard.app.gradient_report`, :mod:`~svdguard.app.probes`: torch's SVD
  gradient beside the stabilized one;
* :mod:`~svdguard.app.report`, :mod:`~svdguard.app.formatting`: the frozen
  dataclasses handed to the front end, and their one JSON encoding.

No rich/typer, and no command-line flag names: findings carry codes, numbers
and the library parameter behind a threshold; the CLI adds its own hints.
"""

__all__: list[str] = []
