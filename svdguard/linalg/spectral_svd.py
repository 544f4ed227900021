"""f(A) = U diag(h(s)) Vᴴ with the Daleckii–Krein backward (docs/matrix-functions.md).

A is m×n, k = min(m, n), A = U diag(s) Vᴴ thin. For G = ∂L/∂f and P = Uᴴ G V (k×k):

    ∂L/∂A = U [ D⁻ ∘ sym(P) + D⁺ ∘ skew(P) ] Vᴴ
          + (I − UUᴴ) G V diag(h(s)/s) Vᴴ        (only when m > k)
          + U diag(h(s)/s) Uᴴ G (I − VVᴴ)        (only when n > k)

    sym(P) = (P + Pᴴ)/2,  skew(P) = (P − Pᴴ)/2,
    D⁻_ij = (h(s_i) − h(s_j))/(s_i − s_j)  (→ h'(s_i)),  D⁺_ij = (h(s_i) + h(s_j))/(s_i + s_j).

Derivation: C = Uᴴ dA V splits into a Hermitian part, which moves the singular
values and rotates U and V together (divided difference D⁻), and an
anti-Hermitian part, which rotates U against V (sum quotient D⁺); the
component of dA outside range(U) (tall) or range(V) (wide) moves U (resp. V)
alone, dU = (I − UUᴴ) dA V S⁻¹, hence the h(s)/s terms. Each map is
self-adjoint for the real inner product Re tr(Xᴴ Y), so the backward applies
the same formula to G. Everything stays inside span(U) ⊗ span(V) of the thin
SVD: no basis of the orthogonal complements is ever needed.

D⁻ and D⁺ depend on h only: a *kernel* object supplies h(s), D⁻, D⁺ and
h(s)/s in cancellation-free closed forms (``divided_differences``). Because
D⁻, D⁺ are (nearly) constant on a block of (nearly) equal singular values,
the arbitrary basis the SVD picks inside that block drops out: the gradient
is exact at exact ties, where torch's generic SVD backward divides by zero.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, cast

import torch

from svdguard.linalg.first_order import first_order_only
from svdguard.tolerances import tie_tolerance


class SvdKernel(Protocol):
    """The scalar function h of a spectral function U diag(h(s)) Vᴴ, and its divided differences.

    ``s`` has shape ``(..., k)`` (descending; for the rotation variant the last
    entry may be negative), ``tol`` is the rounding level of s, shape ``(..., 1)``.
    """

    def values(self, s: torch.Tensor, tol: torch.Tensor) -> torch.Tensor:
        """h(s), shape ``(..., k)``."""
        ...

    def derivatives(
        self, s: torch.Tensor, tol: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """(D⁻, D⁺, h(s)/s): shapes ``(..., k, k)``, ``(..., k, k)``, ``(..., k)``.

        D⁻ is None when it is identically zero (h constant), which saves the
        symmetric half of the backward.
        """
        ...


def singular_value_tolerance(s: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """Rounding level of the singular values ``s`` of an m×n matrix, shape ``(..., 1)``."""
    return tie_tolerance(s.abs().amax(dim=-1, keepdim=True), s.dtype, m, n)


def det_corrected(
    u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(U', σ) with U' diag(σ) Vᴴ = A and det(U' Vᴴ) = +1 (square, real).

    With d = sign(det(U Vᵀ)): U' = U diag(1, …, 1, d), σ = (s_1, …, s_{n−1}, d·s_n).
    The nearest rotation is then U' Vᵀ: the polar factor of A written with
    *signed* singular values σ, so the polar kernel applies unchanged, and its
    D⁺_ij = 2/(σ_i + σ_j) shows the domain: σ_{n−1} + σ_n = 0 (s_{n−1} = s_n
    with the correction active) is where the nearest rotation is not unique.
    """
    d = torch.sign(torch.linalg.det(u) * torch.linalg.det(vh))
    flip = torch.cat([torch.ones_like(s[..., :-1]), d.unsqueeze(-1).to(s.dtype)], dim=-1)
    return u * flip.unsqueeze(-2).to(u.dtype), s * flip


class _SvdSpectral(torch.autograd.Function):
    """(A, kernel, rotation) ↦ (U diag(h(s)) Vᴴ, U, s, Vh); only the first output is differentiable."""

    generate_vmap_rule = True

    @staticmethod
    def forward(
        a: torch.Tensor, kernel: SvdKernel, rotation: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        u, s, vh = torch.linalg.svd(a, full_matrices=False)
        if rotation:
            u, s = det_corrected(u, s, vh)
        h = kernel.values(s, singular_value_tolerance(s, a.shape[-2], a.shape[-1]))
        f = (u * h.unsqueeze(-2).to(u.dtype)) @ vh
        return f, u, s, vh

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
        a, kernel, _ = inputs
        _, u, s, vh = output
        ctx.mark_non_differentiable(u, s, vh)
        ctx.save_for_backward(a, u, s, vh)
        ctx.kernel = kernel

    @staticmethod
    def backward(ctx: Any, grad_f: torch.Tensor, *_unused: Any) -> tuple[Any, None, None]:
        a, u, s, vh = ctx.saved_tensors
        grad_a = spectral_svd_backward(grad_f, u, s, vh, ctx.kernel)
        return first_order_only(grad_a, a), None, None


def spectral_svd_backward(
    grad_f: torch.Tensor, u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, kernel: SvdKernel
) -> torch.Tensor:
    """∂L/∂A from G = ∂L/∂f for f = U diag(h(s)) Vᴴ (the formula in the module docstring)."""
    m, k = u.shape[-2], u.shape[-1]
    n = vh.shape[-1]
    d_minus, d_plus, edge = kernel.derivatives(s, singular_value_tolerance(s, m, n))
    v = vh.mH
    if m > k:
        gv = grad_f @ v  # G V, m×k
        p = u.mH @ gv  # P = Uᴴ G V
    else:
        ug = u.mH @ grad_f  # Uᴴ G, k×n
        p = ug @ v
    core = d_plus * ((p - p.mH) * 0.5)  # D⁺ ∘ skew(P)
    if d_minus is not None:
        core = core + d_minus * ((p + p.mH) * 0.5)  # + D⁻ ∘ sym(P)
    grad_a = u @ core @ vh
    if m > k:
        # (I − UUᴴ) G V diag(h/s) Vᴴ = (GV − U P) diag(h/s) Vᴴ
        grad_a = grad_a + ((gv - u @ p) * edge.unsqueeze(-2)) @ vh
    if n > k:
        # U diag(h/s) Uᴴ G (I − VVᴴ) = U diag(h/s) (UᴴG − P Vᴴ)
        grad_a = grad_a + u @ (edge.unsqueeze(-1) * (ug - p @ vh))
    return grad_a


def svd_spectral(
    a: torch.Tensor, kernel: SvdKernel, *, rotation: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(U diag(h(s)) Vᴴ, s) with the exact backward; ``a`` already checked.

    ``rotation=True`` (square real only) uses the det-corrected factors of
    :func:`det_corrected`; the returned s are then the signed σ.
    """
    apply = cast(Callable[..., tuple[torch.Tensor, ...]], _SvdSpectral.apply)  # untyped in torch
    f, _, s, _ = apply(a, kernel, rotation)
    return f, s
