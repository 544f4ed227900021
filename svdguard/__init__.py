"""svdguard: a differentiable SVD whose gradients stay finite on ill-posed matrices."""

from svdguard import functional
from svdguard.errors import (
    InputError,
    NumericalError,
    ResourceLimitError,
    SvdguardError,
    SvdguardWarning,
    UnsafeInputError,
)
from svdguard.inspection import inspect
from svdguard.linalg.diagnostics import diagnose
from svdguard.linalg.svd import METHODS, svd, svdvals

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "InputError",
    "NumericalError",
    "ResourceLimitError",
    "SvdguardError",
    "SvdguardWarning",
    "UnsafeInputError",
    "__version__",
    "diagnose",
    "functional",
    "inspect",
    "svd",
    "svdvals",
]
