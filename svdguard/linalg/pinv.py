"""The Moore–Penrose pseudo-inverse with a stated rank cut, and its exact gradient.

pinv(A) = V diag(h(s)) Uᴴ = f(A)ᴴ with f(A) = U diag(h(s)) Vᴴ and the
truncated reciprocal h(s) = 1/s for s > cut, 0 otherwise. Divided differences
(kept = "in", cut = "out"):

    D⁻_ij: in–in −1/(s_i s_j);  across (h_i − h_j)/(s_i − s_j);  out–out 0
    D⁺_ij: (h_i + h_j)/(s_i + s_j)  (in–in = 1/(s_i s_j); out–out 0)
    h(s)/s: 1/s² in, 0 out

This is the derivative of the *truncated* pseudo-inverse, the function
actually computed. Where the discarded singular values are exactly zero it
equals the classical constant-rank formula (Golub & Pereyra 1973, the one
torch.linalg.pinv's backward uses).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from svdguard.errors import InputError
from svdguard.linalg.divided_differences import (
    difference_quotient_across,
    pairwise,
    quotient_where,
    reciprocal_difference,
    sum_quotient,
)
from svdguard.linalg.matrix_input import matrix_batch
from svdguard.linalg.spectral_svd import svd_spectral
from svdguard.tolerances import tie_tolerance


@dataclass(frozen=True)
class PinvKernel:
    """h(s) = 1/s above the cut max(atol, rtol·s_max) (or ``tie_tolerance`` when rtol is None)."""

    rtol: float | None
    atol: float
    m: int
    n: int

    def kept(self, s: torch.Tensor) -> torch.Tensor:
        sigma_max = s.amax(dim=-1, keepdim=True)
        if self.rtol is None:
            cut = tie_tolerance(sigma_max, s.dtype, self.m, self.n)
        else:
            cut = torch.clamp(sigma_max * self.rtol, min=self.atol)
        return s > cut

    def values(self, s: torch.Tensor, tol: torch.Tensor) -> torch.Tensor:
        return quotient_where(1.0, s, self.kept(s))

    def derivatives(
        self, s: torch.Tensor, tol: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        kept = self.kept(s)
        h = quotient_where(1.0, s, kept)
        s_i, s_j = pairwise(s)
        h_i, h_j = pairwise(h)
        kept_i, kept_j = pairwise(kept)
        d_minus = torch.where(
            kept_i & kept_j,
            reciprocal_difference(s_i, s_j),  # no cancellation inside the kept block
            difference_quotient_across(h_i, h_j, s_i, s_j, kept_i ^ kept_j),
        )
        d_plus = sum_quotient(h_i + h_j, s_i, s_j, tol.unsqueeze(-1))
        edge = h * h  # h(s)/s = 1/s² on the kept part
        return d_minus, d_plus, edge


def pinv(a: torch.Tensor, *, rtol: float | None = None, atol: float | None = None) -> torch.Tensor:
    """Pseudo-inverse of ``a`` (``(..., m, n)`` → ``(..., n, m)``) with an exact gradient.

    Singular values s ≤ cut are treated as zero, cut = max(atol, rtol·s_max).
    Defaults as torch.linalg.pinv: rtol = max(m, n)·ε when atol is unset or 0
    (``svdguard.tolerances.tie_tolerance``, numpy's ``matrix_rank`` default),
    else rtol = 0; atol = 0.

    Domain of the gradient: no singular value at the cut (the rank must be
    locally constant); repeated singular values, kept or discarded, are fine.
    Near the cut the gradient grows like 1/(s_i (s_i − s_j)) for kept s_i and
    discarded s_j, as the function itself jumps there. Real and complex,
    float32/float64, any device.

    >>> a = torch.tensor([[1.0, 0.0], [0.0, 1e-20]], dtype=torch.float64)
    >>> pinv(a)  # 1e-20 is below the cut max(m, n)·ε·s_max
    tensor([[1., 0.],
            [0., 0.]], dtype=torch.float64)
    """
    work, out_dtype = matrix_batch(a, "pinv")
    for name, value in (("rtol", rtol), ("atol", atol)):
        if value is not None and not float(value) >= 0:
            raise InputError(f"pinv: {name} must be >= 0, got {value}")
    atol_value = 0.0 if atol is None else float(atol)
    rtol_value: float | None = None if rtol is None else float(rtol)
    if rtol_value is None and atol_value > 0:
        rtol_value = 0.0
    m, n = work.shape[-2:]
    f, _ = svd_spectral(work, PinvKernel(rtol=rtol_value, atol=atol_value, m=m, n=n))
    return f.mH.to(out_dtype)
