"""svdguard: a differentiable SVD whose gradients stay finite on ill-posed matrices."""

from svdguard.errors import (
    InputError,
    NumericalError,
    ResourceLimitError,
    SvdguardError,
    SvdguardWarning,
    UnsafeInputError,
)
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
    "svd",
    "svdvals",
]
