"""svdguard: a differentiable SVD whose gradients stay finite on ill-posed matrices.

The public names below are loaded on first use (PEP 562 module ``__getattr__``):
``import svdguard`` itself imports neither torch nor the file readers, so that
the command line starts at once and a library user pays only for what they use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from svdguard.errors import (
    IllDefinedGradientError,
    InputError,
    NumericalError,
    OutputExistsError,
    ResourceLimitError,
    SvdguardError,
    SvdguardWarning,
    UnsafeInputError,
)

if TYPE_CHECKING:
    from svdguard import functional
    from svdguard.app.diagnose import diagnose
    from svdguard.app.inspection import inspect
    from svdguard.guard_mode import GuardReport, guard
    from svdguard.linalg.eigh import eigh, eigvalsh
    from svdguard.linalg.stabilizer_values import (
        Auto,
        Clamp,
        Lorentz,
        Native,
        Seed,
        Taylor,
        Trivialize,
    )
    from svdguard.linalg.stabilizers import Stabilizer
    from svdguard.linalg.svd import METHODS, svd, svdvals

__version__ = "0.2.0"

__all__ = [
    "METHODS",
    "Auto",
    "Clamp",
    "Lorentz",
    "Native",
    "Seed",
    "Stabilizer",
    "Taylor",
    "Trivialize",
    "IllDefinedGradientError",
    "InputError",
    "NumericalError",
    "OutputExistsError",
    "ResourceLimitError",
    "SvdguardError",
    "SvdguardWarning",
    "UnsafeInputError",
    "GuardReport",
    "__version__",
    "diagnose",
    "eigh",
    "eigvalsh",
    "functional",
    "guard",
    "inspect",
    "svd",
    "svdvals",
]

#: Public name → the module that defines it (``None``: the name is that module itself).
_LAZY: dict[str, tuple[str, str | None]] = {
    "METHODS": ("svdguard.linalg.svd", "METHODS"),
    "svd": ("svdguard.linalg.svd", "svd"),
    "svdvals": ("svdguard.linalg.svd", "svdvals"),
    "diagnose": ("svdguard.app.diagnose", "diagnose"),
    "inspect": ("svdguard.app.inspection", "inspect"),
    "functional": ("svdguard.functional", None),
    "guard": ("svdguard.guard_mode", "guard"),
    "GuardReport": ("svdguard.guard_mode", "GuardReport"),
    "eigh": ("svdguard.linalg.eigh", "eigh"),
    **{
        name: ("svdguard.linalg.stabilizer_values", name)
        for name in ("Auto", "Clamp", "Lorentz", "Native", "Seed", "Taylor", "Trivialize")
    },
    "Stabilizer": ("svdguard.linalg.stabilizers", "Stabilizer"),
    "eigvalsh": ("svdguard.linalg.eigh", "eigvalsh"),
}


def __getattr__(name: str) -> Any:
    """Import a public name's module when the name is first used, and keep it."""
    try:
        module_name, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'svdguard' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
