"""The math core: torch only, no I/O, no rich/typer, no command-line words.

Messages name library parameters (``max_cond=``); ``svdguard.app`` and
``svdguard.cli`` build on this package, never the other way round.

The stabilizers of the SVD backward are values (docs/stabilizers.md):
``svdguard.svd(A, method=Clamp(eps=1e-6))`` is ``svdguard.svd(A, method="clamp", eps=1e-6)``,
and any value following :class:`Stabilizer` works.
"""

from svdguard.linalg.stabilizer_values import (
    METHODS,
    Auto,
    Clamp,
    Lorentz,
    Native,
    Seed,
    Taylor,
    Trivialize,
    stabilizer_from_name,
)
from svdguard.linalg.stabilizers import BackwardContext, Stabilizer

__all__ = [
    "METHODS",
    "Auto",
    "BackwardContext",
    "Clamp",
    "Lorentz",
    "Native",
    "Seed",
    "Stabilizer",
    "Taylor",
    "Trivialize",
    "stabilizer_from_name",
]
