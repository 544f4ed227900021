"""The SVD backward (MATH.md §1–§2) with a pluggable stabilizer for the inner matrix.

    gA = U (X + diag(gS)) Vᴴ
       + (I_m − U Uᴴ) gU diag(1/s) Vᴴ      (only when m > k)
       + U diag(1/s) gVᴴ (I_n − V Vᴴ)      (only when n > k)

X comes from :mod:`svdguard.linalg.stabilizers`. Everything is written with
differentiable torch ops, so double backward works, and without data-dependent
Python control flow, so torch.func.vmap works.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from svdguard.linalg import stabilizers
from svdguard.linalg.spectrum import condition_number


@dataclass(frozen=True)
class BackwardConfig:
    """A method and its parameter, as validated by :func:`svdguard.svd`."""

    method: str  # auto | clamp | lorentz | taylor | trivialize
    eps: float | None = None  # clamp: absolute floor of |s_i − s_j|; lorentz: broadening (units of s²)
    degree: int = 9  # taylor: P
    max_cond: float | None = None  # trivialize: κ above which the gradient is zero


def skew(x: torch.Tensor) -> torch.Tensor:
    """X − Xᴴ."""
    return x - x.mH


def inner_matrix(
    config: BackwardConfig,
    s: torch.Tensor,
    tau: torch.Tensor,
    eps: torch.Tensor | None,
    J: torch.Tensor | None,
    K: torch.Tensor | None,
) -> torch.Tensor:
    """X of the backward (off-diagonal terms + complex phase diagonal), for the configured method."""
    if config.method == "clamp":
        assert eps is not None
        return stabilizers.clamp_inner(s, J, K, eps)
    if config.method == "taylor":
        return stabilizers.taylor_inner(s, tau, J, K, config.degree)
    jk_sum, jk_diff = stabilizers.split_parts(J, K)
    if config.method == "lorentz":
        assert eps is not None
        return stabilizers.lorentz_inner(s, tau, jk_sum, jk_diff, eps)
    return stabilizers.auto_inner(s, tau, jk_sum, jk_diff)  # auto, trivialize


def svd_backward(
    config: BackwardConfig,
    U: torch.Tensor,
    S: torch.Tensor,
    Vh: torch.Tensor,
    gU: torch.Tensor | None,
    gS: torch.Tensor | None,
    gVh: torch.Tensor | None,
    tau: torch.Tensor,
    eps: torch.Tensor | None,
) -> torch.Tensor:
    """dL/dA from thin factors (U: m×k, S: k, Vh: k×n) and upstream gradients (None = 0).

    ``tau`` and ``eps`` are per-matrix thresholds shaped ``(..., 1, 1)``.
    """
    m, k, n = U.shape[-2], S.shape[-1], Vh.shape[-1]
    J = skew(U.mH @ gU) if gU is not None else None
    K = skew(Vh @ gVh.mH) if gVh is not None else None  # Vᴴ gV = Vh (gVh)ᴴ

    if J is None and K is None:
        inner = torch.diag_embed(gS.to(U.dtype)) if gS is not None else None
    else:
        inner = inner_matrix(config, S, tau, eps, J, K)
        if gS is not None:
            inner = inner + torch.diag_embed(gS.to(inner.dtype))

    grad = U @ (inner @ Vh) if inner is not None else None

    if (gU is not None and m > k) or (gVh is not None and n > k):
        inv_s = stabilizers.inverse_singular_values(config.method, S, tau, eps).to(U.dtype)
        if gU is not None and m > k:
            # (I − U Uᴴ) gU diag(1/s) Vᴴ
            tall = (gU - U @ (U.mH @ gU)) * inv_s.unsqueeze(-2)
            grad = tall @ Vh if grad is None else grad + tall @ Vh
        if gVh is not None and n > k:
            # U diag(1/s) gVᴴ (I − V Vᴴ), with gVᴴ = gVh
            wide = inv_s.unsqueeze(-1) * (gVh - (gVh @ Vh.mH) @ Vh)
            grad = U @ wide if grad is None else grad + U @ wide

    if grad is None:
        grad = torch.zeros(*U.shape[:-2], m, n, dtype=U.dtype, device=U.device)
    if config.method == "trivialize":
        assert config.max_cond is not None
        too_ill = condition_number(S.detach()) > config.max_cond
        grad = torch.where(too_ill[..., None, None], torch.zeros_like(grad), grad)
    return grad
