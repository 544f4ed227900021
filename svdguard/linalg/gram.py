"""Functions of the Gram matrix AᴴA: Φ(AᴴA) = V diag(Φ(s²)) Vᴴ + Φ(0)·(I − VVᴴ).

A is m×n, k = min(m, n), A = U diag(s) Vᴴ thin. The complement term exists
only for wide A (n > k), where AᴴA has the eigenvalue 0 with multiplicity n − k.

Why through the SVD of A and not eigh(AᴴA): forming AᴴA squares the
condition number, so eigh would see small singular values with an absolute
error of ε·s_max² instead of ε·s_max (√ε relative accuracy on (AᴴA)^{1/2} of a
nearly rank-deficient A). The backward is Daleckii–Krein on the Gram side,
pulled back through B = AᴴA and written in the thin SVD:

    E_ij = (Φ(λ_i) − Φ(λ_j))/(λ_i − λ_j),  e0_i = (Φ(λ_i) − Φ(0))/λ_i,  λ = s²
    Gs = (G + Gᴴ)/2,  W = Vᴴ Gs V
    ∂L/∂B = V (E ∘ W) Vᴴ + [V diag(e0) Vᴴ Gs (I − VVᴴ) + h.c.] + (complement block)
    ∂L/∂A = 2 A ∂L/∂B = 2 U [ (s_i E_ij) ∘ W ] Vᴴ + 2 U diag(s e0) Vᴴ Gs (I − VVᴴ)

(A (I − VVᴴ) = 0 removes the rest.) A kernel supplies s_i·E_ij and s·e0 in
closed forms that neither cancel near ties nor need the complement basis.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import torch

from svdguard.errors import InputError
from svdguard.linalg.divided_differences import inv_sqrt_difference, pairwise, quotient_where
from svdguard.linalg.first_order import first_order_only
from svdguard.linalg.matrix_input import matrix_batch
from svdguard.linalg.spectral_svd import singular_value_tolerance


class GramKernel(Protocol):
    """Φ as a function of the singular values s (λ = s²) and its scaled divided differences."""

    @property
    def complement(self) -> float:
        """Φ(0), the value on the null space of AᴴA for wide A."""
        ...

    def values(self, s: torch.Tensor, tol: torch.Tensor) -> torch.Tensor:
        """Φ(s²), shape ``(..., k)``."""
        ...

    def derivatives(self, s: torch.Tensor, tol: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(s_i·E_ij, s_i·e0_i): shapes ``(..., k, k)`` and ``(..., k)``."""
        ...


class _GramSpectral(torch.autograd.Function):
    """(A, kernel) ↦ (Φ(AᴴA), U, s, Vh); only the first output is differentiable."""

    generate_vmap_rule = True

    @staticmethod
    def forward(
        a: torch.Tensor, kernel: GramKernel
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        u, s, vh = torch.linalg.svd(a, full_matrices=False)
        k, n = vh.shape[-2], vh.shape[-1]
        phi = kernel.values(s, singular_value_tolerance(s, a.shape[-2], n))
        v = vh.mH
        f = (v * phi.unsqueeze(-2).to(v.dtype)) @ vh
        if n > k:
            # Φ(0)(I − VVᴴ) without a basis of the complement.
            eye = torch.eye(n, dtype=f.dtype, device=f.device)
            f = f + kernel.complement * (eye - v @ vh)
        return f, u, s, vh

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
        a, kernel = inputs
        _, u, s, vh = output
        ctx.mark_non_differentiable(u, s, vh)
        ctx.save_for_backward(a, u, s, vh)
        ctx.kernel = kernel

    @staticmethod
    def backward(ctx: Any, grad_f: torch.Tensor, *_unused: Any) -> tuple[Any, None]:
        a, u, s, vh = ctx.saved_tensors
        m, k, n = u.shape[-2], vh.shape[-2], vh.shape[-1]
        scaled_e, scaled_e0 = ctx.kernel.derivatives(s, singular_value_tolerance(s, m, n))
        # Only the Hermitian part Gs of G acts on Φ(B); W = Vᴴ Gs V = (P + Pᴴ)/2, P = Vᴴ G V,
        # so 2 (sE ∘ W) = sE ∘ (P + Pᴴ): symmetrize on the k×k side, the factor 2 cancels.
        # Every product below is k×k by k×n except the last, U (m×k) times the k×n bracket:
        # one m·k·n product, not two (U (M Vᴴ), never (U M) Vᴴ, which costs m·k² more).
        v = vh.mH
        if n == k:
            p = vh @ grad_f @ v
            inner = (scaled_e * (p + p.mH)) @ vh
        else:
            vg = (vh @ grad_f + (grad_f @ v).mH) * 0.5  # Vᴴ Gs, needed whole for the complement
            w = vg @ v
            # 2 (sE ∘ W) Vᴴ + 2 diag(s e0) Vᴴ Gs (I − VVᴴ) = … + 2 diag(s e0) (VᴴGs − W Vᴴ)
            inner = (scaled_e * (2 * w)) @ vh + (2 * scaled_e0).unsqueeze(-1) * (vg - w @ vh)
        return first_order_only(u @ inner, a), None


def gram_spectral(a: torch.Tensor, kernel: GramKernel) -> tuple[torch.Tensor, torch.Tensor]:
    """(Φ(AᴴA), s) with the exact backward; ``a`` already checked."""
    apply = cast(Callable[..., tuple[torch.Tensor, ...]], _GramSpectral.apply)  # untyped in torch
    f, _, s, _ = apply(a, kernel)
    return f, s


@dataclass(frozen=True)
class GramSqrtKernel:
    """Φ(λ) = √λ:  s_i E_ij = s_i/(s_i + s_j),  s_i e0_i = 1  (pairs of zeros dropped)."""

    complement: float = 0.0

    def values(self, s: torch.Tensor, tol: torch.Tensor) -> torch.Tensor:
        return s

    def derivatives(self, s: torch.Tensor, tol: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s_i, s_j = pairwise(s)
        # E_ij = (s_i − s_j)/(s_i² − s_j²) = 1/(s_i + s_j)
        den = s_i + s_j
        scaled_e = quotient_where(s_i, den, den > tol.unsqueeze(-1))
        # s e0 = (√λ − 0)/s = 1 for s > 0; √ has no derivative at 0 (dropped)
        scaled_e0 = (s > tol).to(s.dtype)
        return scaled_e, scaled_e0


@dataclass(frozen=True)
class GramInvSqrtKernel:
    """Φ(λ) = (λ + eps)^(−1/2), r = √(s² + eps):  E_ij = −1/(r_i r_j (r_i + r_j))."""

    eps: float
    complement: float

    def values(self, s: torch.Tensor, tol: torch.Tensor) -> torch.Tensor:
        return torch.rsqrt(s * s + self.eps)

    def derivatives(self, s: torch.Tensor, tol: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = torch.sqrt(s * s + self.eps)
        r_i, r_j = pairwise(r)
        scaled_e = s.unsqueeze(-1) * inv_sqrt_difference(r_i, r_j)
        if self.eps > 0:
            # e0 pairs λ_i with the complement's λ = 0, where r0 = √eps.
            scaled_e0 = s * inv_sqrt_difference(r, torch.full_like(r, math.sqrt(self.eps)))
        else:
            scaled_e0 = torch.zeros_like(s)  # no complement: eps = 0 is refused for wide A
        return scaled_e, scaled_e0


def gram_sqrt(a: torch.Tensor) -> torch.Tensor:
    """(AᴴA)^{1/2} = V diag(s) Vᴴ (n×n, "|A|"), with an exact gradient.

    Real and complex, float32/float64, batched ``(..., m, n)``, any device.
    Domain of the gradient: full rank, s_min > 0 (for wide A: full row rank).
    Repeated singular values are fine. At a rank deficiency the square root is
    not differentiable; terms with s_i + s_j ≤ τ or s_i ≤ τ are dropped (finite
    subgradient, as torch's ``abs`` returns 0 at 0).

    >>> a = torch.tensor([[3.0, 0.0], [0.0, -2.0]], dtype=torch.float64)
    >>> gram_sqrt(a).diagonal()
    tensor([3., 2.], dtype=torch.float64)
    """
    work, out_dtype = matrix_batch(a, "gram_sqrt")
    f, _ = gram_spectral(work, GramSqrtKernel())
    return f.to(out_dtype)


def gram_inv_sqrt(a: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """(AᴴA + eps·I)^{-1/2} (n×n): the whitening matrix of the rows of A, exact gradient.

    ``eps`` ≥ 0 regularizes (a user parameter, not a tolerance). With eps = 0
    the Gram matrix must be invertible: A of full column rank, so m ≥ n (wide A
    is refused with eps = 0; a rank-deficient tall A gives inf). With eps > 0
    every A is in the domain, including ties and rank deficiency: the gradient
    is exact everywhere. Computed from the SVD of A (accurate singular values),
    never from AᴴA.

    >>> x = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    >>> gram_inv_sqrt(x)  # XᵀX = 4·I
    tensor([[0.5000, 0.0000],
            [0.0000, 0.5000]], dtype=torch.float64)
    """
    work, out_dtype = matrix_batch(a, "gram_inv_sqrt")
    eps = float(eps)
    if not eps >= 0:
        raise InputError(f"gram_inv_sqrt: eps must be >= 0, got {eps}")
    m, n = work.shape[-2:]
    if eps == 0 and n > m:
        raise InputError(
            f"gram_inv_sqrt: AᴴA is singular for wide matrices ({m}x{n}, rank <= {m} < {n}); "
            "pass eps > 0"
        )
    complement = 1.0 / math.sqrt(eps) if eps > 0 else 0.0
    f, _ = gram_spectral(work, GramInvSqrtKernel(eps=eps, complement=complement))
    return f.to(out_dtype)
