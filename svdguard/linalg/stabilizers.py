"""Stabilizers of the SVD backward, as values (docs/stabilizers.md, docs/backward.md).

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
:func:`stabilizer_from_name` maps a method name and its parameters to a value.

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

import dataclasses
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from svdguard.errors import InputError
from svdguard.linalg.spectrum import condition_number
from svdguard.tolerances import (
    default_clamp_eps,
    default_lorentz_eps,
    default_max_cond,
    rounding_quotient_bound,
    rounding_resolution,
    stabilizer_bias_tolerance,
    tie_tolerance,
)

#: Default degree P of :class:`Taylor` (Wang et al. report P ≈ 9 as a good trade-off).
DEFAULT_TAYLOR_DEGREE = 9


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

    Implement it with a frozen dataclass; the helpers of this module
    (:func:`exact_sum_part`, :func:`auto_difference_part`,
    :func:`auto_inverse_singular_values`, :func:`masked_reciprocal`) build the
    usual pieces.
    """

    @property
    def name(self) -> str:
        """Short name used in reports (``"auto"``, ``"clamp"``, ...)."""
        ...

    def inner(self, ctx: BackwardContext) -> torch.Tensor:
        """X (..., k, k): off-diagonal entries and the complex phase diagonal."""
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


def _pair_grids(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
    s_i, s_j = _pair_grids(ctx.s)
    sigma2 = (s_i + s_j) * 2
    keep = (sigma2 > 2 * ctx.tau) | rounding_terms_kept(
        jk_diff, ctx.summands, sigma2, ctx.sigma_max, ctx.upstream_scale
    )
    return jk_diff * masked_reciprocal(sigma2, keep)


def auto_difference_part(ctx: BackwardContext) -> torch.Tensor:
    """(J + K)_ij / (2 d_ij), exact for |d_ij| > τ; at rounding level the rounding rule decides.

    At an exact tie (d = 0, also the diagonal) the term is dropped: the in-block
    limit is not contained in the factors (docs/backward.md).
    """
    jk_sum, _ = ctx.split
    s_i, s_j = _pair_grids(ctx.s)
    d2 = (s_j - s_i) * 2
    keep = (d2.abs() > 2 * ctx.tau) | rounding_terms_kept(
        jk_sum, ctx.summands, d2, ctx.sigma_max, ctx.upstream_scale
    )
    return jk_sum * masked_reciprocal(d2, keep)


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
    s_i, s_j = _pair_grids(s)
    denominator = s_j * s_j - s_i * s_i
    denominator.diagonal(dim1=-2, dim2=-1).fill_(1.0)
    return _combined_numerator(J, K, s_i, s_j) / denominator


def _combined_numerator(
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


def tie_signs(k: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The sign d_ij = s_j − s_i has for distinct descending values: −1 above the diagonal, +1 below."""
    upper = torch.ones(k, k, dtype=torch.bool, device=device).triu(1)
    return torch.where(upper, -torch.ones((), dtype=dtype), torch.ones((), dtype=dtype)).to(device)


def _signs(d: torch.Tensor) -> torch.Tensor:
    """sign(d_ij), an exact tie taking the sign distinct descending values would have."""
    return torch.where(d != 0, torch.sign(d), tie_signs(d.shape[-1], d.dtype, d.device))


def _upper(k: int, device: torch.device) -> torch.Tensor:
    return torch.ones(k, k, dtype=torch.bool, device=device).triu(1)


def _off_diagonal(x: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(x.shape[-1], dtype=torch.bool, device=x.device)
    return torch.where(eye, torch.zeros((), dtype=x.dtype, device=x.device), x)


def _rounding_pairs(s: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """Pairs i < j with |d_ij| ≤ τ or σ_ij ≤ τ: the denominators at rounding level."""
    s = s.detach()
    tau = tie_tolerance(s[..., :1].unsqueeze(-1), s.dtype, m, n)
    s_i, s_j = _pair_grids(s)
    acting = ((s_j - s_i).abs() <= tau) | (s_i + s_j <= tau)
    return acting & _upper(s.shape[-1], s.device)


def _check_eps(eps: float | None) -> None:
    if eps is not None and not (isinstance(eps, int | float) and math.isfinite(eps) and eps > 0):
        raise InputError(f"eps must be a positive finite number, got {eps!r}")


def _dict_of(stabilizer: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"method": stabilizer.name}
    for field in dataclasses.fields(stabilizer):
        out[field.name] = getattr(stabilizer, field.name)
    return out


def _describe(stabilizer: Any) -> str:
    params = ", ".join(
        f"{f.name}={getattr(stabilizer, f.name)!r}"
        for f in dataclasses.fields(stabilizer)
        if getattr(stabilizer, f.name) is not None
    )
    return f"{stabilizer.name}({params})" if params else stabilizer.name


class _Common:
    """Shared defaults: no final step, no notes, a description from the dataclass fields."""

    name: ClassVar[str]

    def finalize(self, ctx: BackwardContext, grad: torch.Tensor) -> torch.Tensor:
        return grad

    def notes(self, s: torch.Tensor, m: int, n: int) -> list[str]:
        return []

    def describe(self) -> str:
        return _describe(self)

    def to_dict(self) -> dict[str, Any]:
        return _dict_of(self)


# --- the stabilizers ---------------------------------------------------------------------


@dataclass(frozen=True)
class Auto(_Common):
    """Every reciprocal exact above rounding level; the rounding rule at it (the default).

    X_ij = (J+K)_ij / (2 d_ij) + (J−K)_ij / (2 σ_ij), 1/s_i in the rectangular
    terms; a denominator at rounding level (≤ τ) keeps its term only under the
    rounding rule of the module docstring. Exact (to rounding) wherever the
    factors determine the gradient. At an exact tie the difference part is
    dropped: exact for losses of U Vᴴ or of S, the in-block part of other
    losses is not in the factors (docs/backward.md).
    """

    name: ClassVar[str] = "auto"

    def inner(self, ctx: BackwardContext) -> torch.Tensor:
        J, K = ctx.skews
        if (
            ctx.values_visible
            and not ctx.s.is_complex()
            and not (J is not None and J.is_complex())
            and not (K is not None and K.is_complex())
            and not needs_guard(ctx.s, ctx.tau)
        ):
            return unguarded_inner(ctx.s, J, K)
        return auto_difference_part(ctx) + exact_sum_part(ctx)

    def inverse_singular_values(
        self, ctx: BackwardContext, projected: torch.Tensor, raw: torch.Tensor
    ) -> torch.Tensor:
        return auto_inverse_singular_values(ctx, projected, raw)

    def acting_pairs(self, s: torch.Tensor, m: int, n: int) -> torch.Tensor:
        return _rounding_pairs(s, m, n)

    def inverse_differences(
        self, values: torch.Tensor, scale: torch.Tensor, tau: torch.Tensor
    ) -> torch.Tensor:
        v_i, v_j = _pair_grids(values)
        d = v_j - v_i
        return masked_reciprocal(d, d.abs() > tau)


@dataclass(frozen=True)
class Trivialize(Auto):
    """``auto``, except that a matrix with κ = σ_max/σ_min above ``max_cond`` gets a zero gradient.

    ``max_cond`` defaults to :func:`svdguard.tolerances.default_max_cond` (1/√ε).
    Trades all gradient signal of those matrices for safety; :meth:`notes`
    names them.
    """

    name: ClassVar[str] = "trivialize"
    max_cond: float | None = None

    def __post_init__(self) -> None:
        mc = self.max_cond
        if mc is not None and not (isinstance(mc, int | float) and mc >= 1 and not math.isnan(mc)):
            raise InputError(f"max_cond must be a number of at least 1, got {mc!r}")

    def cond_limit(self, dtype: torch.dtype) -> float:
        """The κ threshold: ``max_cond``, or :func:`svdguard.tolerances.default_max_cond`."""
        return default_max_cond(dtype) if self.max_cond is None else float(self.max_cond)

    def too_ill(self, s: torch.Tensor) -> torch.Tensor:
        """Bool (...): matrices whose gradient is set to zero."""
        return condition_number(s.detach()) > self.cond_limit(s.dtype)

    def finalize(self, ctx: BackwardContext, grad: torch.Tensor) -> torch.Tensor:
        bad = self.too_ill(ctx.s)[..., None, None]
        return torch.where(bad, torch.zeros_like(grad), grad)

    def notes(self, s: torch.Tensor, m: int, n: int) -> list[str]:
        bad = self.too_ill(s).nonzero().tolist()
        if not bad:
            return []
        which = ", ".join(str(tuple(b)) for b in bad[:10]) + (" ..." if len(bad) > 10 else "")
        where = f"batch elements {which}" if s.dim() > 1 else "the matrix"
        return [
            f"method='trivialize': condition number above {self.cond_limit(s.dtype):.3g} "
            f"for {where}; their gradient is set to zero"
        ]


@dataclass(frozen=True)
class Clamp(_Common):
    """Clamped difference part, exact sum part: 1/d → 1/d̃, d̃ = sign(d)·max(|d|, eps).

    X_ij = (J+K)_ij / (2 d̃_ij) + exact sum part (auto's rule); an exact tie takes
    the sign distinct descending values would have. Inside a rounding-level tie
    (|d_ij| ≤ τ) a numerator that rule (a) does not resolve is rounding itself
    and is dropped, as by auto (clamped, it would add rounding/eps). The rectangular 1/s_i →
    1/max(s_i, eps) (0 where s_i ≤ τ: the singular vector on the long side is
    arbitrary there). ``eps`` is absolute (units of s), default √ε·σ_max
    (:func:`svdguard.tolerances.default_clamp_eps`). Bounded by ~1/eps; biased
    where a gap is below eps, equal to auto (to rounding) elsewhere. At a tie
    the polar gradient, which lives in the sum part, stays exact.
    """

    name: ClassVar[str] = "clamp"
    eps: float | None = None

    def __post_init__(self) -> None:
        _check_eps(self.eps)

    def eps_for(self, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if self.eps is None:
            return default_clamp_eps(scale, dtype)
        return torch.full_like(scale, self.eps)

    def inverse_differences(
        self, values: torch.Tensor, scale: torch.Tensor, tau: torch.Tensor
    ) -> torch.Tensor:
        v_i, v_j = _pair_grids(values)
        d = v_j - v_i
        clamped = _signs(d) * torch.maximum(d.abs(), self.eps_for(scale, values.dtype))
        return _off_diagonal(clamped.reciprocal())

    def inner(self, ctx: BackwardContext) -> torch.Tensor:
        jk_sum, _ = ctx.split
        half = self.inverse_differences(ctx.s, ctx.sigma_max, ctx.tau) / 2
        # In a rounding-level tie an unresolved numerator is rounding itself: clamping would
        # return rounding/eps (√ε relative for the default eps), so it is dropped as by auto.
        s_i, s_j = _pair_grids(ctx.s)
        resolved = jk_sum.detach().abs() > rounding_resolution(ctx.dtype) * ctx.summands
        keep = ((s_j - s_i).abs() > ctx.tau) | resolved
        return torch.where(keep, jk_sum * half, 0.0) + exact_sum_part(ctx)

    def inverse_singular_values(
        self, ctx: BackwardContext, projected: torch.Tensor, raw: torch.Tensor
    ) -> torch.Tensor:
        eps = self.eps_for(ctx.sigma_max, ctx.dtype).squeeze(-1)
        keep = ctx.s > ctx.tau.squeeze(-1)
        return torch.where(keep, 1.0 / torch.maximum(ctx.s, eps), 0.0)

    def acting_pairs(self, s: torch.Tensor, m: int, n: int) -> torch.Tensor:
        s = s.detach()
        eps = self.eps_for(s[..., :1].unsqueeze(-1), s.dtype)
        s_i, s_j = _pair_grids(s)
        return ((s_j - s_i).abs() < eps) & _upper(s.shape[-1], s.device)


@dataclass(frozen=True)
class Seed(Clamp):
    """The literal rule of Ionescu et al. (2015)'s ``compute_grad_V``, reproduced.

    On the combined kernel: X_ij = (J_ij s_j + s_i K_ij) / (d̃_ij σ_ij),
    d̃ = sign(d)·max(|d|, eps), evaluated as (J_ij (s_j/σ_ij) + (s_i/σ_ij) K_ij)/d̃_ij
    so that σ → 0 does not overflow. Made finite where that code divides by
    zero: an exact tie takes the sign distinct values would have (its sign(0)
    = 0), and σ_ij = 0 gives 0. Unlike :class:`Clamp` it also clamps the sum
    part, so at a tie it loses the polar gradient. Rectangular terms as Clamp.
    """

    name: ClassVar[str] = "seed"

    def inner(self, ctx: BackwardContext) -> torch.Tensor:
        s = ctx.s
        s_i, s_j = _pair_grids(s)
        sigma = s_i + s_j
        inv_clamped = self.inverse_differences(s, ctx.sigma_max, ctx.tau)
        inv_sigma = masked_reciprocal(sigma, sigma > 0)
        J, K = ctx.skews
        off = _combined_numerator(J, K, s_i * inv_sigma, s_j * inv_sigma) * inv_clamped
        _, jk_diff = ctx.split
        phase = torch.diag_embed(
            jk_diff.diagonal(dim1=-2, dim2=-1) * inv_sigma.diagonal(dim1=-2, dim2=-1) / 2
        )
        return off + phase


@dataclass(frozen=True)
class Lorentz(_Common):
    """Lorentzian broadening (Liao et al. 2019) of the difference part only: 1/d → d/(d² + eps).

    X_ij = (J+K)_ij d_ij / (2 (d_ij² + eps)) + exact sum part (auto's rule);
    1/s_i → s_i/(s_i² + eps) (0 where s_i ≤ τ). ``eps`` in units of s², default
    ε·σ_max² (:func:`svdguard.tolerances.default_lorentz_eps`). Smooth, bounded
    by 1/(2√eps), biased by eps/(d² + eps) at every gap.
    """

    name: ClassVar[str] = "lorentz"
    eps: float | None = None

    def __post_init__(self) -> None:
        _check_eps(self.eps)

    def eps_for(self, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if self.eps is None:
            return default_lorentz_eps(scale, dtype)
        return torch.full_like(scale, self.eps)

    def inverse_differences(
        self, values: torch.Tensor, scale: torch.Tensor, tau: torch.Tensor
    ) -> torch.Tensor:
        v_i, v_j = _pair_grids(values)
        d = v_j - v_i
        return d / (d * d + self.eps_for(scale, values.dtype))

    def inner(self, ctx: BackwardContext) -> torch.Tensor:
        jk_sum, _ = ctx.split
        half = self.inverse_differences(ctx.s, ctx.sigma_max, ctx.tau) / 2
        return jk_sum * half + exact_sum_part(ctx)

    def inverse_singular_values(
        self, ctx: BackwardContext, projected: torch.Tensor, raw: torch.Tensor
    ) -> torch.Tensor:
        eps = self.eps_for(ctx.sigma_max, ctx.dtype).squeeze(-1)
        keep = ctx.s > ctx.tau.squeeze(-1)
        return torch.where(keep, ctx.s / (ctx.s * ctx.s + eps), 0.0)

    def acting_pairs(self, s: torch.Tensor, m: int, n: int) -> torch.Tensor:
        s = s.detach()
        eps = self.eps_for(s[..., :1].unsqueeze(-1), s.dtype)
        s_i, s_j = _pair_grids(s)
        d = s_j - s_i
        bias = eps / (d * d + eps) > stabilizer_bias_tolerance(s.dtype)
        return bias & _upper(s.shape[-1], s.device)


@dataclass(frozen=True)
class Taylor(_Common):
    """Wang et al. (TPAMI 2021): a degree-P Taylor series for 1/(λ_j − λ_i), λ = s², difference part only.

    For λ_a ≥ λ_b: 1/(λ_a − λ_b) ≈ (1/λ_a) Σ_{p=0..P} (λ_b/λ_a)^p, bounded by
    (P+1)/λ_a. Since 1/(2 d_ij) = σ_ij / (2 (λ_j − λ_i)), the series replaces
    the difference part: X_ij = (J+K)_ij σ_ij F̃_ij / 2 + exact sum part
    (auto's rule), so the polar gradient stays exact at ties (the paper applies
    the series to the combined kernel, which loses it). Biased by the relative
    factor (λ_b/λ_a)^{P+1} at every pair. Rectangular terms as auto.
    """

    name: ClassVar[str] = "taylor"
    degree: int = DEFAULT_TAYLOR_DEGREE

    def __post_init__(self) -> None:
        deg = self.degree
        if isinstance(deg, bool) or not isinstance(deg, int) or deg < 0:
            raise InputError(f"degree must be a non-negative integer, got {deg!r}")

    def inverse_differences(
        self, values: torch.Tensor, scale: torch.Tensor, tau: torch.Tensor
    ) -> torch.Tensor:
        """The series for 1/(v_j − v_i) of non-negative values; 0 where both are ≤ τ."""
        v_i, v_j = _pair_grids(values)
        big = torch.maximum(v_i, v_j)
        small = torch.minimum(v_i, v_j)
        inv_big = masked_reciprocal(big, big > tau)
        ratio = small * inv_big
        series = torch.ones_like(ratio)
        for _ in range(self.degree):  # Horner: 1 + r(1 + r(1 + ...))
            series = 1 + ratio * series
        return _off_diagonal(_signs(v_j - v_i) * series * inv_big)

    def inner(self, ctx: BackwardContext) -> torch.Tensor:
        jk_sum, _ = ctx.split
        s_i, s_j = _pair_grids(ctx.s)
        lam = ctx.s * ctx.s
        f = self.inverse_differences(lam, ctx.sigma_max**2, ctx.tau * ctx.tau)
        return jk_sum * ((s_i + s_j) * f / 2) + exact_sum_part(ctx)

    def inverse_singular_values(
        self, ctx: BackwardContext, projected: torch.Tensor, raw: torch.Tensor
    ) -> torch.Tensor:
        return auto_inverse_singular_values(ctx, projected, raw)

    def acting_pairs(self, s: torch.Tensor, m: int, n: int) -> torch.Tensor:
        s = s.detach()
        lam_i, lam_j = _pair_grids(s * s)
        big = torch.maximum(lam_i, lam_j)
        ratio = torch.minimum(lam_i, lam_j) * masked_reciprocal(big, big > 0)
        bias = ratio ** (self.degree + 1) > stabilizer_bias_tolerance(s.dtype)
        return bias & _upper(s.shape[-1], s.device)


@dataclass(frozen=True)
class Native(_Common):
    """torch's own backward, for comparison: :func:`svdguard.svd` hands the call to torch.

    As a kernel (for callers that run the backward themselves) it is the
    unguarded formula: NaN/inf at ties and, for rectangular matrices, at zero
    singular values.
    """

    name: ClassVar[str] = "native"

    def inner(self, ctx: BackwardContext) -> torch.Tensor:
        jk_sum, jk_diff = ctx.split
        s_i, s_j = _pair_grids(ctx.s)
        d, sigma = s_j - s_i, s_i + s_j
        return _off_diagonal(jk_sum / (2 * d)) + jk_diff / (2 * sigma)

    def inverse_singular_values(
        self, ctx: BackwardContext, projected: torch.Tensor, raw: torch.Tensor
    ) -> torch.Tensor:
        return ctx.s.reciprocal()

    def acting_pairs(self, s: torch.Tensor, m: int, n: int) -> torch.Tensor:
        k = s.shape[-1]
        return torch.zeros(*s.shape, k, dtype=torch.bool, device=s.device)

    def inverse_differences(
        self, values: torch.Tensor, scale: torch.Tensor, tau: torch.Tensor
    ) -> torch.Tensor:
        v_i, v_j = _pair_grids(values)
        return _off_diagonal((v_j - v_i).reciprocal())


# --- names ------------------------------------------------------------------------------

#: Method names accepted by :func:`stabilizer_from_name`, and the class each one maps to.
STABILIZERS: dict[str, type] = {
    cls.name: cls for cls in (Auto, Clamp, Lorentz, Taylor, Trivialize, Native, Seed)
}

#: The method names, in a stable order (``svdguard.svd(method=...)``).
METHODS: tuple[str, ...] = tuple(STABILIZERS)


def stabilizer_from_name(
    method: str | Stabilizer = "auto",
    *,
    eps: float | None = None,
    degree: int | None = None,
    max_cond: float | None = None,
) -> Stabilizer:
    """The stabilizer value for ``method`` and its parameters.

    ``method`` is a name of :data:`METHODS` or already a value following
    :class:`Stabilizer` (then no parameter may be given). A parameter that the
    method does not take raises :class:`~svdguard.errors.InputError` naming it,
    as does an invalid value (checked by the value's ``__post_init__``).
    """
    given = {"eps": eps, "degree": degree, "max_cond": max_cond}
    given = {key: value for key, value in given.items() if value is not None}
    if not isinstance(method, str):
        if not isinstance(method, Stabilizer):
            raise InputError(
                f"method must be one of {', '.join(METHODS)} or a Stabilizer value, "
                f"got {type(method).__name__}"
            )
        if given:
            raise InputError(
                f"{', '.join(given)} cannot be combined with a Stabilizer value; "
                f"set it on the value itself, e.g. Clamp(eps=...)"
            )
        return method
    cls = STABILIZERS.get(method)
    if cls is None:
        raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    accepted = {field.name for field in dataclasses.fields(cls)}
    for key in given:
        if key not in accepted:
            takers = [f"{n!r}" for n, c in STABILIZERS.items() if key in _field_names(c)]
            raise InputError(f"{key} applies to method={' or '.join(takers)}, not {method!r}")
    value: Stabilizer = cls(**given)
    return value


def _field_names(cls: type) -> set[str]:
    return {field.name for field in dataclasses.fields(cls)}
