"""What a stabilizer of the SVD backward sees and the pieces it is built from (docs/stabilizers.md).

Notation: s descending, d_ij = s_j − s_i, σ_ij = s_i + s_j, M = Uᴴ gU,
P = Vᴴ gV, J = skew(M), K = skew(P) with skew(X) = X − Xᴴ. The exact
off-diagonal entry of the inner k×k matrix X has two equivalent forms:

    combined:  X_ij = (J_ij s_j + s_i K_ij) / (s_j² − s_i²)
    split:     X_ij = (J + K)_ij / (2 d_ij)  +  (J − K)_ij / (2 σ_ij)
                      └─ difference part ─┘     └──── sum part ────┘

A stabilizer is a frozen dataclass following :class:`Stabilizer`: it builds X
(off-diagonal entries and, for complex inputs, the phase term
(J − K)_ii / (4 s_i) on the diagonal; the caller adds diag(gS)), the guarded
1/s of the rectangular terms, a final step on the gradient, the pairs it
changes, a generic guarded reciprocal of a difference (reusable by an eigh
backward, whose kernel is 1/(λ_j − λ_i)), and a description for reports.
The values themselves (Auto, Clamp, Seed, Lorentz, Taylor, Trivialize, Native)
and :func:`~svdguard.linalg.stabilizer_values.stabilizer_from_name` live in
:mod:`svdguard.linalg.stabilizer_values`.

The rounding rule shared by every stabilizer (:func:`rounding_terms_kept`).
τ = max(m, n)·ε·σ_max (:func:`svdguard.tolerances.tie_tolerance`) is the
rounding level of the singular values. A term N/den whose denominator is
above τ is computed exactly. One whose denominator is at rounding level
(0 < den ≤ τ) is kept only where the numerator vanishes with it. With
Σ the size of N's summands (for J ± K: |M_ij| + |M_ji| + |P_ij| + |P_ji|; for a
rectangular term ‖gU_i‖ against the numerator ‖(I − UUᴴ) gU_i‖) and
G = max_i max(‖gU_i‖, ‖gV_i‖), which bounds every summand, so that G/σ_max is
the gradient's natural scale:

(b) the quotient stays within 1/√ε of that scale: |N|/den ≤ G/(√ε·σ_max); and
    either
(a) N is resolved above its own rounding, |N| > √ε·Σ, so the quotient keeps
    at least half its digits, or
(c) the summands themselves vanish with the denominator, Σ/den ≤ G/(√ε·σ_max),
    so N's rounding (≈ ε·Σ) adds at most √ε·G/σ_max to the quotient — usually
    far less — while dropping it would lose up to √ε·Σ/den.

Why: for a loss such as ⟨W, U diag(h(S)) Vᴴ⟩ with h(0) = 0 the upstream
gradients scale with s (gU = W V diag(h(s))), the numerators vanish with the
denominators and carry no cancellation, so the quotient is accurate even when
LAPACK returns a zero singular value at rounding level: torch's exact
backward is right there and dropping the term would not be. (c) covers
numerators that are small for a reason other than rounding (a column of gU
almost inside range(U)). In a tie of non-zero values Σ/den is about G/(ε·σ),
so (c) fails and a numerator that is only rounding fails (a): dropped, as the
exact-tie limit requires. Where (b) fails the loss depends on singular
vectors of (numerically) zero singular values, which the matrix does not
determine: no derivative exists and the term is dropped
(:func:`svdguard.linalg.gauge.find_gauge_violations` reports it).

Masked reciprocals are ``where(ok, 1 / where(ok, x, 1), 0)``: neither branch
holds inf/NaN, so double backward never meets inf·0. Masks depend on values
only through ``torch.where`` (no Python branching on data) except in the
fast paths, which run only where values may be read (not under torch.func.vmap).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Protocol, runtime_checkable

import torch

from svdguard.tolerances import (
    rounding_quotient_bound,
    rounding_resolution,
    tie_tolerance,
)

# --- what a stabilizer sees ----------------------------------------------------------------


class BackwardContext:
    """One call of the SVD backward as a stabilizer sees it.

    ``s`` (..., k) the singular values, ``m × n`` the matrix shape; ``uh_gu`` =
    Uᴴ gU and ``vh_gv`` = Vᴴ gV (k×k, None when that upstream gradient is
    zero); ``grad_u`` (..., m, k) and ``grad_vh`` (..., k, n) the upstream
    gradients; ``values_visible``: values may be read (not under
    torch.func.vmap), so fast paths may branch on them.
    """

    def __init__(
        self,
        s: torch.Tensor,
        m: int,
        n: int,
        uh_gu: torch.Tensor | None = None,
        vh_gv: torch.Tensor | None = None,
        grad_u: torch.Tensor | None = None,
        grad_vh: torch.Tensor | None = None,
        *,
        values_visible: bool = False,
    ) -> None:
        self.s = s
        self.m = m
        self.n = n
        self.uh_gu = uh_gu
        self.vh_gv = vh_gv
        self.grad_u = grad_u
        self.grad_vh = grad_vh
        self.values_visible = values_visible

    @property
    def dtype(self) -> torch.dtype:
        return self.s.dtype

    @cached_property
    def sigma_max(self) -> torch.Tensor:
        """σ_max per matrix, shape (..., 1, 1), detached (thresholds are constants)."""
        return self.s.detach()[..., :1].unsqueeze(-1)

    @cached_property
    def tau(self) -> torch.Tensor:
        """Rounding level τ = max(m, n)·ε·σ_max, shape (..., 1, 1)."""
        return tie_tolerance(self.sigma_max, self.dtype, self.m, self.n)

    @cached_property
    def upstream_scale(self) -> torch.Tensor:
        """G = max_i max(‖gU_i‖, ‖gV_i‖) per matrix, shape (..., 1, 1), detached.

        |M_ij| = |u_iᴴ gU_j| ≤ ‖gU_j‖ (likewise for P), so G bounds every summand
        of every numerator of the backward.
        """
        scale = torch.zeros_like(self.sigma_max)
        if self.grad_u is not None:
            cols = torch.linalg.vector_norm(self.grad_u.detach(), dim=-2).amax(-1)
            scale = torch.maximum(scale, cols[..., None, None].to(scale.dtype))
        if self.grad_vh is not None:
            rows = torch.linalg.vector_norm(self.grad_vh.detach(), dim=-1).amax(-1)
            scale = torch.maximum(scale, rows[..., None, None].to(scale.dtype))
        return scale

    @cached_property
    def skews(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(J, K) = (skew(M), skew(P)), None where the upstream gradient is zero."""
        J = None if self.uh_gu is None else self.uh_gu - self.uh_gu.mH
        K = None if self.vh_gv is None else self.vh_gv - self.vh_gv.mH
        return J, K

    @cached_property
    def split(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(J + K, J − K), a missing upstream gradient counting as zero."""
        J, K = self.skews
        if J is not None and K is not None:
            return J + K, J - K
        if J is not None:
            return J, J
        if K is not None:
            return K, -K
        raise ValueError("the inner matrix needs Uᴴ gU or Vᴴ gV")

    @cached_property
    def summands(self) -> torch.Tensor:
        """|M_ij| + |M_ji| + |P_ij| + |P_ji|: the size of the summands of (J ± K)_ij, detached."""
        total: torch.Tensor | None = None
        for x in (self.uh_gu, self.vh_gv):
            if x is not None:
                a = x.detach().abs()
                total = a + a.mT if total is None else total + a + a.mT
        if total is None:
            raise ValueError("the inner matrix needs Uᴴ gU or Vᴴ gV")
        return total


@runtime_checkable
class Stabilizer(Protocol):
    """What :func:`svdguard.svd` asks of a stabilizer (see the module docstring).

    Implement it with a frozen dataclass; the building blocks of this module
    (:func:`exact_sum_part`, :func:`auto_difference_part`,
    :func:`auto_inverse_singular_values`, :func:`masked_reciprocal`) build the
    usual pieces.
    """

    @property
    def name(self) -> str:
        """Short name used in reports (``"auto"``, ``"clamp"``, ...)."""
        ...

    def inner(self, ctx: BackwardContext) -> torch.Tensor:
        """X (..., k, k): off-diagonal entries and the complex phase diagonal.

        A new tensor that the caller owns: the backward adds diag(gS) into it in place.
        """
        ...

    def inverse_singular_values(
        self, ctx: BackwardContext, projected: torch.Tensor, raw: torch.Tensor
    ) -> torch.Tensor:
        """The guarded 1/s_i (..., k) of a rectangular term.

        ``projected`` (..., L, k): the columns (I − UUᴴ) gU_i (tall) or
        (I − VVᴴ) gV_i (wide) that get divided by s_i; ``raw`` (..., L, k): gU_i or gV_i.
        """
        ...

    def finalize(self, ctx: BackwardContext, grad: torch.Tensor) -> torch.Tensor:
        """A last step on dL/dA (trivialize zeroes ill-conditioned matrices); usually identity."""
        ...

    def notes(self, s: torch.Tensor, m: int, n: int) -> list[str]:
        """Value-dependent messages for a warning (read outside torch.func transforms)."""
        ...

    def acting_pairs(self, s: torch.Tensor, m: int, n: int) -> torch.Tensor:
        """Bool (..., k, k), True for pairs i < j whose kernel entry this stabilizer changes."""
        ...

    def inverse_differences(
        self, values: torch.Tensor, scale: torch.Tensor, tau: torch.Tensor
    ) -> torch.Tensor:
        """F_ij ≈ 1/(v_j − v_i) (..., k, k), 0 on the diagonal, guarded by this stabilizer.

        ``values`` (..., k); ``scale`` (..., 1, 1) their magnitude (sets default eps);
        ``tau`` (..., 1, 1) their rounding level.
        """
        ...

    def describe(self) -> str:
        """One line for reports, e.g. ``clamp(eps=1e-06)``."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """``{"method": name, <parameter>: value, ...}`` for machine-readable reports."""
        ...


# --- building blocks ---------------------------------------------------------------------


def masked_reciprocal(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """1/x where ``keep``, 0 elsewhere; finite in value and in every derivative."""
    return torch.where(keep, torch.where(keep, x, 1.0).reciprocal(), 0.0)


def pair_grids(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(v_i as a column, v_j as a row), each broadcasting to (..., k, k)."""
    return v.unsqueeze(-1), v.unsqueeze(-2)


def rounding_terms_kept(
    numerator: torch.Tensor,
    summands: torch.Tensor,
    denominator: torch.Tensor,
    sigma_max: torch.Tensor,
    upstream_scale: torch.Tensor,
) -> torch.Tensor:
    """Where a term N/den with den at rounding level is kept: den ≠ 0, (b), and (a) or (c).

    (a) |N| > √ε·Σ;  (b) |N|·√ε·σ_max ≤ G·|den|;  (c) Σ·√ε·σ_max ≤ G·|den| — (b) and (c)
    are |N|/den, Σ/den ≤ G/(√ε σ_max) written without a division. Everything is
    detached: the mask is a constant for autograd. ``sigma_max`` and ``upstream_scale``
    (σ_max and G) broadcast against the terms; ε is that of ``denominator``'s dtype.
    """
    dtype = denominator.dtype
    n_abs = numerator.detach().abs()
    den = denominator.detach().abs()
    scale = sigma_max / rounding_quotient_bound(dtype)  # √ε·σ_max
    limit = upstream_scale * den
    resolved = n_abs > rounding_resolution(dtype) * summands
    bounded = n_abs * scale <= limit
    vanishing = summands * scale <= limit
    return (den != 0) & bounded & (resolved | vanishing)


def exact_sum_part(ctx: BackwardContext) -> torch.Tensor:
    """(J − K)_ij / (2 σ_ij), exact for σ_ij > τ; at rounding level the rounding rule decides.

    The numerator has no cancellation, so this is accurate for every σ above
    rounding level; it carries the whole gradient of the polar factor U Vᴴ.
    On the diagonal it is (J − K)_ii / (4 s_i): zero for real inputs (J, K are
    skew) and the complex phase term i·Im(diag(Uᴴ gU)) / s_i otherwise.
    """
    _, jk_diff = ctx.split
    s_i, s_j = pair_grids(ctx.s)
    sigma2 = (s_i + s_j) * 2
    keep = _kept(ctx, jk_diff, sigma2, sigma2 > 2 * ctx.tau)
    return jk_diff * masked_reciprocal(sigma2, keep)


def auto_difference_part(ctx: BackwardContext) -> torch.Tensor:
    """(J + K)_ij / (2 d_ij), exact for |d_ij| > τ; at rounding level the rounding rule decides.

    At an exact tie (d = 0, also the diagonal) the term is dropped: the in-block
    limit is not contained in the factors (docs/backward.md).
    """
    jk_sum, _ = ctx.split
    s_i, s_j = pair_grids(ctx.s)
    d2 = (s_j - s_i) * 2
    keep = _kept(ctx, jk_sum, d2, d2.abs() > 2 * ctx.tau)
    return jk_sum * masked_reciprocal(d2, keep)


def _kept(
    ctx: BackwardContext, numerator: torch.Tensor, denominator: torch.Tensor, above: torch.Tensor
) -> torch.Tensor:
    """``above`` (den > τ), or else the rounding rule: the mask of the terms kept.

    When values can be read, the rule is evaluated only on the few pairs at rounding
    level (the diagonal, ties, zero values): the same mask as evaluating it on the whole
    k×k grid, without the dozen extra k×k passes. Under torch.func.vmap it runs on the
    grid. Either way the mask is a constant for autograd.
    """
    if not ctx.values_visible or torch._C._functorch.is_functorch_wrapped_tensor(numerator):
        # Under a torch.func transform (jacrev batches the upstream gradients even where
        # the singular values are plain) data-dependent indexing is not allowed: the grid.
        rule = rounding_terms_kept(
            numerator, ctx.summands, denominator, ctx.sigma_max, ctx.upstream_scale
        )
        return above | rule
    where = (~above).nonzero(as_tuple=True)
    if where[0].numel() == 0:
        return above
    summands = _summands_at(ctx, where)
    rule = rounding_terms_kept(
        numerator.detach()[where],
        summands,
        denominator.detach()[where],
        ctx.sigma_max.expand_as(denominator)[where],
        ctx.upstream_scale.expand_as(denominator)[where],
    )
    keep = above.clone()
    keep[where] = rule
    return keep


def _summands_at(ctx: BackwardContext, where: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """:attr:`BackwardContext.summands` at the index tuple ``where`` only (|M_ij| + |M_ji| + …)."""
    total: torch.Tensor | None = None
    for x in (ctx.uh_gu, ctx.vh_gv):
        if x is not None:
            a = x.detach()
            part = a[where].abs() + a.mT[where].abs()
            total = part if total is None else total + part
    if total is None:
        raise ValueError("the inner matrix needs Uᴴ gU or Vᴴ gV")
    return total


def auto_inverse_singular_values(
    ctx: BackwardContext, projected: torch.Tensor, raw: torch.Tensor
) -> torch.Tensor:
    """1/s_i exact for s_i > τ; at rounding level kept by the rounding rule on the column norms.

    Fast path (values readable, no s_i ≤ τ): plain 1/s, no column norms computed.
    """
    s, tau = ctx.s, ctx.tau.squeeze(-1)
    above = s > tau
    if ctx.values_visible and bool(above.all()):
        return s.reciprocal()
    numerator = torch.linalg.vector_norm(projected.detach(), dim=-2)
    summands = torch.linalg.vector_norm(raw.detach(), dim=-2)
    sigma_max, g = ctx.sigma_max.squeeze(-1), ctx.upstream_scale.squeeze(-1)
    keep = above | rounding_terms_kept(numerator, summands, s, sigma_max, g)
    return masked_reciprocal(s, keep)


def needs_guard(s: torch.Tensor, tau: torch.Tensor) -> bool:
    """Whether any denominator of the exact kernel is at rounding level, checked on O(k) values.

    s is sorted, so a tie exists iff some neighbouring gap s_i − s_{i+1} ≤ τ, and
    some σ_ij ≤ τ iff 2 s_min ≤ τ; both in one reduction over (gaps, 2 s_min).
    Reads values (a host sync on GPUs): only called where values are visible.
    """
    edges = torch.cat((s[..., :-1] - s[..., 1:], s[..., -1:] * 2), dim=-1)
    return bool((edges <= tau.squeeze(-1)).any())


def unguarded_inner(
    s: torch.Tensor, J: torch.Tensor | None, K: torch.Tensor | None
) -> torch.Tensor:
    """The exact kernel in combined form, for real inputs with no denominator at rounding level.

    X_ij = (J_ij s_j + s_i K_ij) / (s_j² − s_i²), the diagonal of the denominator
    set to 1 (the numerator's diagonal is 0 for real skew J, K). With every
    |d_ij| and σ_ij above τ this is the split form's value in fewer passes.
    """
    s_i, s_j = pair_grids(s)
    denominator = s_j * s_j - s_i * s_i
    denominator.diagonal(dim1=-2, dim2=-1).fill_(1.0)
    return combined_numerator(J, K, s_i, s_j) / denominator


def combined_numerator(
    J: torch.Tensor | None, K: torch.Tensor | None, left: torch.Tensor, right: torch.Tensor
) -> torch.Tensor:
    """J_ij·right_j + left_i·K_ij, a missing J or K counting as 0."""
    if J is not None and K is not None:
        return J * right + left * K
    if J is not None:
        return J * right
    if K is not None:
        return left * K
    raise ValueError("the inner matrix needs Uᴴ gU or Vᴴ gV")


def tiesigns_of(k: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The sign d_ij = s_j − s_i has for distinct descending values: −1 above the diagonal, +1 below."""
    upper = torch.ones(k, k, dtype=torch.bool, device=device).triu(1)
    return torch.where(upper, -torch.ones((), dtype=dtype), torch.ones((), dtype=dtype)).to(device)


def signs_of(d: torch.Tensor) -> torch.Tensor:
    """sign(d_ij), an exact tie taking the sign distinct descending values would have."""
    return torch.where(d != 0, torch.sign(d), tiesigns_of(d.shape[-1], d.dtype, d.device))


def upper_pairs(k: int, device: torch.device) -> torch.Tensor:
    return torch.ones(k, k, dtype=torch.bool, device=device).triu(1)


def off_diagonal(x: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(x.shape[-1], dtype=torch.bool, device=x.device)
    return torch.where(eye, torch.zeros((), dtype=x.dtype, device=x.device), x)
