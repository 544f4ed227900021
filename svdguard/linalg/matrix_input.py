"""Input checks shared by the matrix functions of :mod:`svdguard.functional`."""

from __future__ import annotations

import torch

from svdguard.errors import InputError
from svdguard.tolerances import compute_dtype


def matrix_batch(a: object, caller: str) -> tuple[torch.Tensor, torch.dtype]:
    """Check that ``a`` is a ``(..., m, n)`` floating tensor; return it in its compute dtype.

    Returns ``(a_compute, out_dtype)``: float16/bfloat16 are computed in float32
    (the SVD/eigh drivers do not take them) and the caller converts the result
    back to ``out_dtype`` (autograd follows both conversions).
    """
    if not isinstance(a, torch.Tensor):
        raise InputError(f"{caller}: expected a torch.Tensor, got {type(a).__name__}")
    if a.ndim < 2 or a.shape[-1] == 0 or a.shape[-2] == 0:
        raise InputError(
            f"{caller}: expected a matrix or a batch of matrices, shape (..., m, n) with "
            f"m, n >= 1; got shape {tuple(a.shape)} ({a.dtype})"
        )
    if not (a.is_floating_point() or a.is_complex()):
        raise InputError(
            f"{caller}: expected a floating or complex dtype, got {a.dtype} with shape "
            f"{tuple(a.shape)}; convert with .double() or .float() first"
        )
    return a.to(compute_dtype(a.dtype)), a.dtype


def square_batch(a: object, caller: str) -> tuple[torch.Tensor, torch.dtype]:
    """:func:`matrix_batch`, and the matrices must be square."""
    work, out_dtype = matrix_batch(a, caller)
    if work.shape[-1] != work.shape[-2]:
        raise InputError(
            f"{caller}: expected square matrices (..., n, n), got shape {tuple(work.shape)} "
            f"({out_dtype})"
        )
    return work, out_dtype


def rank_argument(k: object, m: int, n: int, caller: str) -> int:
    """Check that ``k`` is an int with 0 ≤ k ≤ min(m, n)."""
    if isinstance(k, bool) or not isinstance(k, int):
        raise InputError(f"{caller}: k must be an int, got {type(k).__name__}")
    if not 0 <= k <= min(m, n):
        raise InputError(
            f"{caller}: k must satisfy 0 <= k <= min(m, n) = {min(m, n)} for {m}x{n} matrices, "
            f"got k={k}"
        )
    return k
