"""The SVD backward (docs/backward.md) with a stabilizer value for the guarded terms.

    gA = U (X + diag(gS)) Vᴴ
       + (I_m − U Uᴴ) gU diag(1/s) Vᴴ      (only when m > k)
       + U diag(1/s) gVᴴ (I_n − V Vᴴ)      (only when n > k)

X and the guarded 1/s come from a :class:`~svdguard.linalg.stabilizers.Stabilizer`.
Everything is written with differentiable torch ops, so double backward works,
and without data-dependent Python control flow outside the stabilizers' fast
paths (taken only when values are visible), so torch.func.vmap works.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from svdguard.linalg.stabilizer_values import Trivialize, stabilizer_from_name
from svdguard.linalg.stabilizers import BackwardContext, Stabilizer
from svdguard.tolerances import default_max_cond


@dataclass(frozen=True)
class BackwardConfig:
    """A method name and its parameters, as a record; :meth:`stabilizer` gives the value."""

    method: str
    eps: float | None = None
    degree: int | None = None
    max_cond: float | None = None

    def stabilizer(self) -> Stabilizer:
        """The stabilizer value (:func:`~svdguard.linalg.stabilizers.stabilizer_from_name`)."""
        return stabilizer_from_name(
            self.method, eps=self.eps, degree=self.degree, max_cond=self.max_cond
        )

    def cond_limit(self, dtype: torch.dtype) -> float:
        """trivialize's threshold: max_cond, or :func:`svdguard.tolerances.default_max_cond`."""
        if self.max_cond is None:
            return default_max_cond(dtype)
        return Trivialize(self.max_cond).cond_limit(dtype)


def svd_backward(
    stabilizer: Stabilizer,
    U: torch.Tensor,
    S: torch.Tensor,
    Vh: torch.Tensor,
    gU: torch.Tensor | None,
    gS: torch.Tensor | None,
    gVh: torch.Tensor | None,
    *,
    values_visible: bool = False,
) -> torch.Tensor:
    """dL/dA from thin factors (U: m×k, S: k, Vh: k×n) and upstream gradients (None = 0).

    ``values_visible``: values may be read (not under torch.func.vmap), so the
    stabilizer may take a mask-free fast path where no denominator is at rounding level.
    """
    m, k, n = U.shape[-2], S.shape[-1], Vh.shape[-1]
    uh_gu = U.mH @ gU if gU is not None else None  # M = Uᴴ gU
    vh_gv = Vh @ gVh.mH if gVh is not None else None  # P = Vᴴ gV = Vh (gVh)ᴴ
    ctx = BackwardContext(S, m, n, uh_gu, vh_gv, gU, gVh, values_visible=values_visible)

    if uh_gu is None and vh_gv is None:
        inner = torch.diag_embed(gS.to(U.dtype)) if gS is not None else None
    else:
        inner = stabilizer.inner(ctx)
        if gS is not None:
            # X + diag(gS), written into X's diagonal: X is a fresh tensor (no other op
            # holds it), so the in-place add saves a k×k pass and double backward still works.
            inner.diagonal(dim1=-2, dim2=-1).add_(gS.to(inner.dtype))

    grad = U @ (inner @ Vh) if inner is not None else None

    if gU is not None and uh_gu is not None and m > k:
        # (I − U Uᴴ) gU diag(1/s) Vᴴ
        projected = gU - U @ uh_gu
        inv_s = stabilizer.inverse_singular_values(ctx, projected, gU).to(U.dtype)
        tall = (projected * inv_s.unsqueeze(-2)) @ Vh
        grad = tall if grad is None else grad + tall
    if gVh is not None and vh_gv is not None and n > k:
        # U diag(1/s) gVᴴ (I − V Vᴴ), with gVᴴ = gVh and gVh V = Pᴴ
        projected = gVh - vh_gv.mH @ Vh
        inv_s = stabilizer.inverse_singular_values(ctx, projected.mT, gVh.mT).to(U.dtype)
        wide = U @ (inv_s.unsqueeze(-1) * projected)
        grad = wide if grad is None else grad + wide

    if grad is None:
        grad = torch.zeros(*U.shape[:-2], m, n, dtype=U.dtype, device=U.device)
    return stabilizer.finalize(ctx, grad)
