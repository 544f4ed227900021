"""Divided differences of scalar functions, in forms that do not cancel near ties.

Daleckii–Krein: the derivative of a spectral matrix function is a Hadamard
product with the matrix of divided differences

    D_ij = (φ(x_i) − φ(x_j)) / (x_i − x_j)     → φ'(x_i) when x_i = x_j.

Written that way it cancels catastrophically as x_i → x_j (both differences
lose their leading digits). Every φ svdguard needs has an algebraic identity
that removes the subtraction, so no "switch to φ' below a gap" threshold is
needed: each formula below is accurate to a few ε for every gap, 0 included.

All functions take their arguments already broadcast against each other: use
:func:`pairwise` to turn a ``(..., k)`` spectrum into ``x_i`` (``(..., k, 1)``)
and ``x_j`` (``(..., 1, k)``). Where a pair is outside a kernel's domain the
kernel returns 0 for it (a dropped term, documented per function).

The kernels are evaluated on the saved, non-differentiable spectrum inside a
backward pass and are never differentiated themselves, so a branch that
``torch.where`` discards may hold inf/NaN without harm; they are written for
few passes over the ``(..., k, k)`` arrays, which dominate the backward of
small batched matrices.
"""

from __future__ import annotations

import torch


def pairwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_i, x_j): ``x`` as a column ``(..., k, 1)`` and as a row ``(..., 1, k)``."""
    return x.unsqueeze(-1), x.unsqueeze(-2)


def quotient_where(
    num: torch.Tensor | float, den: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """num / den where ``valid``, 0 elsewhere (a dropped term)."""
    return torch.where(valid, num / den, 0.0)


def sum_quotient(
    h_sum: torch.Tensor | float, s_i: torch.Tensor, s_j: torch.Tensor, tol: torch.Tensor
) -> torch.Tensor:
    """D⁺_ij = (h(s_i) + h(s_j)) / (s_i + s_j), and 0 where |s_i + s_j| ≤ tol.

    ``h_sum`` is h(s_i) + h(s_j) (a number when h is constant).

    No cancellation for s ≥ 0 (a sum of non-negative terms). The denominator
    only vanishes when both singular values are zero (to rounding, ``tol``):
    there the function is not differentiable and the term is dropped.
    """
    den = s_i + s_j
    return quotient_where(h_sum, den, den.abs() > tol)


def difference_quotient_across(
    h_i: torch.Tensor, h_j: torch.Tensor, x_i: torch.Tensor, x_j: torch.Tensor, across: torch.Tensor
) -> torch.Tensor:
    """(h(x_i) − h(x_j)) / (x_i − x_j) for pairs ``across`` two pieces of a piecewise h, else 0.

    Used by the truncated kernels (pseudo-inverse, rank-k approximation,
    projector), where h is 0 on the discarded part of the spectrum: across the
    cut one of h(x_i), h(x_j) is exactly 0, so the numerator does not cancel, and
    x_i − x_j is bounded below by the gap at the cut. Pairs on the same side
    have their own closed forms, supplied by the caller.
    """
    return quotient_where(h_i - h_j, x_i - x_j, across)


def reciprocal_difference(s_i: torch.Tensor, s_j: torch.Tensor) -> torch.Tensor:
    """h(s) = 1/s:  (1/s_i − 1/s_j) / (s_i − s_j) = −1 / (s_i s_j)."""
    return -1.0 / (s_i * s_j)


def sqrt_difference(r_i: torch.Tensor, r_j: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    """φ(λ) = √λ on λ = r²:  (r_i − r_j) / (r_i² − r_j²) = 1 / (r_i + r_j); 0 where ``drop``.

    ``drop`` marks pairs where both eigenvalues are zero to rounding: √ is not
    differentiable at 0, and the dropped term is the subgradient 0 (as torch's
    ``abs`` uses at 0).
    """
    return quotient_where(1.0, r_i + r_j, ~drop)


def inv_sqrt_difference(r_i: torch.Tensor, r_j: torch.Tensor) -> torch.Tensor:
    """φ(x) = x^(-1/2) on x = r² (r > 0):  (1/r_i − 1/r_j) / (r_i² − r_j²) = −1 / (r_i r_j (r_i + r_j)).

    From 1/r_i − 1/r_j = (r_j − r_i)/(r_i r_j) and r_i² − r_j² = (r_i − r_j)(r_i + r_j).
    """
    return -1.0 / (r_i * r_j * (r_i + r_j))


def log_difference(x_i: torch.Tensor, x_j: torch.Tensor) -> torch.Tensor:
    """φ(x) = log x (x > 0):  (log x_i − log x_j) / (x_i − x_j), accurate for every gap.

    With lo = min, hi = max and t = (hi − lo)/lo ≥ 0 (hi − lo is exact when the
    two are within a factor 2, Sterbenz):

        (log hi − log lo)/(hi − lo) = log1p(t) / (t · lo)     (t ≤ 1; → 1/lo at t = 0)
                                    = (log hi − log lo)/(hi − lo)  (t > 1: no cancellation,
                                                                  the logs differ by > log 2)

    log1p(t)/t keeps full relative precision for small t, which the plain
    difference of logs loses (it cancels to about ε/t).
    """
    lo = torch.minimum(x_i, x_j)
    hi = torch.maximum(x_i, x_j)
    spread = hi - lo
    t = spread / lo
    # log1p(t)/t → 1 as t → 0 (the tie: φ'(lo) = 1/lo)
    near = torch.where(t == 0, 1.0, torch.log1p(t) / t) / lo
    far = (torch.log(hi) - torch.log(lo)) / spread
    # t ≤ 1 ⇔ hi ≤ 2·lo: the logs are within log 2 of each other and would cancel.
    return torch.where(t <= 1, near, far)
