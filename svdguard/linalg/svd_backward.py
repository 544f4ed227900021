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
from svdguard.tolerances import default_max_cond


@dataclass(frozen=True)
class BackwardConfig:
    """A method and its parameter, as validated by :func:`svdguard.svd`."""

    method: str  # auto | clamp | lorentz | taylor | trivialize
    eps: float | None = (
        None  # clamp: absolute floor of |s_i − s_j|; lorentz: broadening (units of s²)
    )
    degree: int = 9  # taylor: P
    max_cond: float | None = None  # trivialize: κ above which the gradient is zero

    def cond_limit(self, dtype: torch.dtype) -> float:
        """trivialize's threshold: max_cond, or :func:`svdguard.tolerances.default_max_cond`."""
        return default_max_cond(dtype) if self.max_cond is None else self.max_cond


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
    *,
    fast_path_allowed: bool = False,
) -> torch.Tensor:
    """dL/dA from thin factors (U: m×k, S: k, Vh: k×n) and upstream gradients (None = 0).

    ``tau`` and ``eps`` are per-matrix thresholds shaped ``(..., 1, 1)``.
    ``fast_path_allowed``: values may be read (not under torch.func.vmap), so the
    auto kernel may skip its masks when none is active.
    """
    m, k, n = U.shape[-2], S.shape[-1], Vh.shape[-1]
    uh_gu = U.mH @ gU if gU is not None else None
    vh_gv = Vh @ gVh.mH if gVh is not None else None  # Vᴴ gV = Vh (gVh)ᴴ

    if uh_gu is None and vh_gv is None:
        inner = torch.diag_embed(gS.to(U.dtype)) if gS is not None else None
    else:
        J = skew(uh_gu) if uh_gu is not None else None
        K = skew(vh_gv) if vh_gv is not None else None
        if (
            config.method in ("auto", "trivialize")
            and fast_path_allowed
            and not U.is_complex()
            and not stabilizers.needs_guard(S, tau)
        ):
            inner = stabilizers.unguarded_inner(S, J, K)
        else:
            inner = inner_matrix(config, S, tau, eps, J, K)
        if gS is not None:
            inner.diagonal(dim1=-2, dim2=-1).add_(gS.to(inner.dtype))

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
        too_ill = condition_number(S.detach()) > config.cond_limit(S.dtype)
        grad = torch.where(too_ill[..., None, None], torch.zeros_like(grad), grad)
    return grad
