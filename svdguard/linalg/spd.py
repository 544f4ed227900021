"""Functions of symmetric (Hermitian) positive (semi-)definite matrices via eigh.

F(B) = Q diag(φ(λ)) Qᴴ for B = Q diag(λ) Qᴴ. Daleckii–Krein:

    D_ij = (φ(λ_i) − φ(λ_j))/(λ_i − λ_j)  (→ φ'(λ_i)),   W = Qᴴ sym(G) Q
    ∂L/∂B = Q (D ∘ W) Qᴴ

The input is symmetrized, B ← (B + Bᴴ)/2, before eigh: only the Hermitian
part of B matters, the result is well defined for any square input, and the
gradient (already Hermitian) is the gradient with respect to every entry of
B. D is evaluated by the closed forms of ``divided_differences``, exact at
ties (a repeated eigenvalue — the identity, a multiple of it — is fine).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import torch

from svdguard.linalg.divided_differences import (
    inv_sqrt_difference,
    log_difference,
    pairwise,
    sqrt_difference,
)
from svdguard.linalg.first_order import first_order_only
from svdguard.linalg.matrix_input import square_batch
from svdguard.tolerances import tie_tolerance


class SpdKernel(Protocol):
    """φ on eigenvalues λ ``(..., n)`` and its divided differences ``(..., n, n)``."""

    def values(self, lam: torch.Tensor, tol: torch.Tensor) -> torch.Tensor: ...

    def derivatives(self, lam: torch.Tensor, tol: torch.Tensor) -> torch.Tensor: ...


class _SpdSpectral(torch.autograd.Function):
    """(B, kernel) ↦ (Q diag(φ(λ)) Qᴴ, λ, Q); only the first output is differentiable."""

    generate_vmap_rule = True

    @staticmethod
    def forward(
        b: torch.Tensor, kernel: SpdKernel
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lam, q = torch.linalg.eigh((b + b.mH) / 2)
        phi = kernel.values(lam, _eigenvalue_tolerance(lam))
        f = (q * phi.unsqueeze(-2).to(q.dtype)) @ q.mH
        return f, lam, q

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
        b, kernel = inputs
        _, lam, q = output
        ctx.mark_non_differentiable(lam, q)
        ctx.save_for_backward(b, lam, q)
        ctx.kernel = kernel

    @staticmethod
    def backward(ctx: Any, grad_f: torch.Tensor, *_unused: Any) -> tuple[Any, None]:
        b, lam, q = ctx.saved_tensors
        d = ctx.kernel.derivatives(lam, _eigenvalue_tolerance(lam))
        p = q.mH @ grad_f @ q
        w = (p + p.mH) * 0.5  # W = Qᴴ sym(G) Q = sym(Qᴴ G Q)
        return first_order_only(q @ (d * w) @ q.mH, b), None


def _eigenvalue_tolerance(lam: torch.Tensor) -> torch.Tensor:
    """Rounding level of the eigenvalues of an n×n Hermitian matrix: n·ε·max|λ|, shape (..., 1)."""
    n = lam.shape[-1]
    return tie_tolerance(lam.abs().amax(dim=-1, keepdim=True), lam.dtype, n, n)


@dataclass(frozen=True)
class SpdSqrtKernel:
    """φ = √ on λ clamped at 0 (rounding can make a PSD eigenvalue slightly negative)."""

    def values(self, lam: torch.Tensor, tol: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(lam.clamp(min=0))

    def derivatives(self, lam: torch.Tensor, tol: torch.Tensor) -> torch.Tensor:
        r_i, r_j = pairwise(torch.sqrt(lam.clamp(min=0)))
        lam_i, lam_j = pairwise(lam)
        # Both eigenvalues zero to rounding: √ has no derivative there; drop the pair.
        return sqrt_difference(r_i, r_j, torch.maximum(lam_i, lam_j) <= tol.unsqueeze(-1))


@dataclass(frozen=True)
class SpdInvSqrtKernel:
    """φ(λ) = λ^(-1/2), λ > 0."""

    def values(self, lam: torch.Tensor, tol: torch.Tensor) -> torch.Tensor:
        return torch.rsqrt(lam)

    def derivatives(self, lam: torch.Tensor, tol: torch.Tensor) -> torch.Tensor:
        return inv_sqrt_difference(*pairwise(torch.sqrt(lam)))


@dataclass(frozen=True)
class SpdLogKernel:
    """φ(λ) = log λ, λ > 0."""

    def values(self, lam: torch.Tensor, tol: torch.Tensor) -> torch.Tensor:
        return torch.log(lam)

    def derivatives(self, lam: torch.Tensor, tol: torch.Tensor) -> torch.Tensor:
        return log_difference(*pairwise(lam))


def _spd(b: torch.Tensor, kernel: SpdKernel, caller: str) -> torch.Tensor:
    work, out_dtype = square_batch(b, caller)
    apply = cast(Callable[..., tuple[torch.Tensor, ...]], _SpdSpectral.apply)  # untyped in torch
    f, _, _ = apply(work, kernel)
    return f.to(out_dtype)


def spd_sqrt(b: torch.Tensor) -> torch.Tensor:
    """B^{1/2} of a symmetric/Hermitian positive semi-definite ``b`` ``(..., n, n)``, exact gradient.

    Domain of the gradient: B positive definite (repeated eigenvalues fine).
    Eigenvalues that are zero to rounding (≤ n·ε·max|λ|, negative ones are
    clamped to 0) make √ non-differentiable; pairs of them are dropped (a
    finite subgradient). Real and complex, float32/float64, any device.

    >>> spd_sqrt(torch.diag(torch.tensor([4.0, 9.0], dtype=torch.float64))).diagonal()
    tensor([2., 3.], dtype=torch.float64)
    """
    return _spd(b, SpdSqrtKernel(), "spd_sqrt")


def spd_inv_sqrt(b: torch.Tensor) -> torch.Tensor:
    """B^{-1/2} of a symmetric/Hermitian positive definite ``b``, exact gradient.

    Domain: B positive definite; a zero eigenvalue gives inf, a negative one NaN.

    >>> spd_inv_sqrt(4 * torch.eye(2, dtype=torch.float64))
    tensor([[0.5000, 0.0000],
            [0.0000, 0.5000]], dtype=torch.float64)
    """
    return _spd(b, SpdInvSqrtKernel(), "spd_inv_sqrt")


def spd_log(b: torch.Tensor) -> torch.Tensor:
    """Matrix logarithm of a symmetric/Hermitian positive definite ``b``, exact gradient.

    Domain: B positive definite; a zero eigenvalue gives -inf, a negative one NaN.
    The divided differences of log use log1p (no cancellation at close eigenvalues).

    >>> spd_log(torch.eye(2, dtype=torch.float64))
    tensor([[0., 0.],
            [0., 0.]], dtype=torch.float64)
    """
    return _spd(b, SpdLogKernel(), "spd_log")
