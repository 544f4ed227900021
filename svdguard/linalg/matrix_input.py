"""The one check of a matrix argument: a floating ``(..., m, n)`` tensor, in its compute dtype.

Every entry point that takes a matrix (the SVD, the matrix functions of
:mod:`svdguard.functional`, the diagnostics, the gradient comparison) checks it
here, so that all of them accept the same inputs and word a refusal the same
way: who asked (``caller``), where the tensor came from (``path``/``key``), the
shape and dtype found, and what is expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import torch

from svdguard.errors import InputError
from svdguard.tolerances import compute_dtype

__all__ = ["check_matrix", "matrix_batch", "rank_argument", "square_batch"]


def check_matrix(
    a: object,
    caller: str | None = None,
    *,
    allow_empty: bool = False,
    path: str | Path | None = None,
    key: str | None = None,
) -> torch.Tensor:
    """Check that ``a`` is a floating or complex ``(..., m, n)`` tensor; return it in its compute dtype.

    float16/bfloat16 (and 8-bit floats) come back in float32, complex32 in
    complex64 (``tolerances.compute_dtype``: the SVD and eigh drivers do not
    take them); any other dtype comes back as the same tensor. Raises
    :class:`~svdguard.errors.InputError` for a non-tensor, fewer than 2
    dimensions, an integer or bool dtype, or (unless ``allow_empty``) a matrix
    with no entries. ``caller`` (e.g. ``"svdguard.svd"``) starts the message;
    ``path``/``key`` locate the tensor.

    >>> check_matrix(torch.ones(2, 3, dtype=torch.bfloat16)).dtype
    torch.float32
    """
    lead = f"{caller}: " if caller else ""
    if not isinstance(a, torch.Tensor):
        raise InputError(
            f"{lead}expected a torch.Tensor, got {type(a).__name__}", path=path, key=key
        )
    shape = tuple(a.shape)
    if a.ndim < 2:
        raise InputError(
            f"{lead}shape {shape} is not a matrix; expected a matrix or a batch of matrices, "
            "shape (..., m, n)",
            path=path,
            key=key,
        )
    if not (a.is_floating_point() or a.is_complex()):
        raise InputError(
            f"{lead}dtype {a.dtype} is not a floating dtype; expected float or complex entries "
            f"(shape {shape}): convert with .double() or .float() first",
            path=path,
            key=key,
        )
    if not allow_empty and a.numel() == 0:
        raise InputError(
            f"{lead}shape {shape} has no entries; expected m, n >= 1", path=path, key=key
        )
    target = compute_dtype(a.dtype)
    return a if a.dtype == target else a.to(target)


def matrix_batch(a: object, caller: str) -> tuple[torch.Tensor, torch.dtype]:
    """:func:`check_matrix`, and the input's own dtype to convert the result back to.

    Returns ``(a_compute, out_dtype)``; autograd follows both conversions.
    """
    work = check_matrix(a, caller)
    return work, cast(torch.Tensor, a).dtype  # check_matrix raised for a non-tensor


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
