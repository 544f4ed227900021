"""The one exception family of svdguard, and its warning category.

Every error a user can cause is a :class:`SvdguardError`; the CLI maps each
subclass to one readable line and an exit code (``svdguard/cli/error_boundary.py``).
Messages name the file and tensor key where there is one, what is wrong and,
where possible, the fix, in the words of the library (parameter names such as
``max_cond=``); the CLI adds what a command-line user should type.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "IllDefinedGradientError",
    "InputError",
    "NumericalError",
    "OutputExistsError",
    "ResourceLimitError",
    "SvdguardError",
    "SvdguardWarning",
    "UnsafeInputError",
]


class SvdguardError(Exception):
    """Base class of every error svdguard raises on purpose."""


class InputError(SvdguardError, ValueError):
    """An argument, file or tensor supplied by the user cannot be used.

    ``path`` and ``key`` (both optional) locate the problem; ``str(err)`` puts
    them in front of the message: ``weights.safetensors[layer.0.weight]: ...``.
    """

    def __init__(self, message: str, *, path: str | Path | None = None, key: str | None = None):
        self.message = message
        self.path = None if path is None else str(path)
        self.key = key
        super().__init__(message)

    def __str__(self) -> str:
        where = self.path or ""
        if self.key is not None:
            where = f"{where}[{self.key}]"
        return f"{where}: {self.message}" if where else self.message


class UnsafeInputError(InputError):
    """A file asks for something svdguard refuses to do (e.g. unpickle objects)."""


class ResourceLimitError(InputError):
    """A tensor or header exceeds a size limit; refused before allocating it."""


class OutputExistsError(InputError):
    """An output file already exists and the writer was not told to replace it (``force=True``)."""


class NumericalError(SvdguardError):
    """A decomposition failed (non-convergence, non-finite input) even after retrying."""


class IllDefinedGradientError(SvdguardError, RuntimeError):
    """The loss depends on a choice the SVD leaves arbitrary (the phase of complex singular vectors)."""


class SvdguardWarning(UserWarning):
    """Warnings about gradients that are stabilised, trivialised or gauge dependent."""
