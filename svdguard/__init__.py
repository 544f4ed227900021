"""svdguard: a differentiable SVD whose gradients stay finite on ill-posed matrices."""

from svdguard.errors import (
    InputError,
    NumericalError,
    ResourceLimitError,
    SvdguardError,
    SvdguardWarning,
    UnsafeInputError,
)

__version__ = "0.1.0"

__all__ = [
    "InputError",
    "NumericalError",
    "ResourceLimitError",
    "SvdguardError",
    "SvdguardWarning",
    "UnsafeInputError",
    "__version__",
]
