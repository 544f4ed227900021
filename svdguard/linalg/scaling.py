"""Exact power-of-two scaling of a matrix, against overflow and underflow.

Multiplying by 2^e changes no mantissa bit (down to the subnormals), so a matrix
scaled by :func:`power_of_two_scale` has exactly the singular values of the original
times that factor. The SVD retry (:mod:`svdguard.linalg.spectrum_analysis`) scales
every matrix into [½, 1); the Gram route (:mod:`svdguard.linalg.gram_spectrum`)
only matrices outside a safe exponent range.
"""

from __future__ import annotations

import math

import torch

__all__ = ["MAX_SHIFT", "largest_magnitude", "power_of_two_scale"]

#: The largest upward power-of-two shift: 2^1021 is a finite float64 number (2^1025 is not).
MAX_SHIFT = 1021


def largest_magnitude(matrix: torch.Tensor) -> float:
    """max|a_ij|; for a real matrix from amax and amin, which allocate nothing."""
    if matrix.numel() == 0:
        return 0.0
    if matrix.is_complex() or torch.finfo(matrix.dtype).bits == 8:
        return float(matrix.abs().max())
    return max(abs(float(matrix.amax())), abs(float(matrix.amin())))


def power_of_two_scale(biggest: float, *, safe_exponent: int = 0) -> float:
    """2^-e with 2^(e-1) ≤ ``biggest`` < 2^e: scaled entries lie in [½, 1).

    1 when ``biggest`` is 0 or not finite, or when |e| ≤ ``safe_exponent`` (already in
    range). An upward shift is capped at 2^:data:`MAX_SHIFT` so that the factor stays
    finite: for a subnormal ``biggest`` (e < −1021) that already brings the entries far
    from underflow. (A downward factor as small as 2^-1024 is subnormal but still an
    exact power of two, and the scaled entries are normal.)
    """
    if biggest == 0.0 or not math.isfinite(biggest):
        return 1.0
    exponent = math.frexp(biggest)[1]
    if abs(exponent) <= safe_exponent:
        return 1.0
    return math.ldexp(1.0, min(MAX_SHIFT, -exponent))
