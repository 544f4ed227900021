"""The stabilizers of the SVD backward as values (docs/stabilizers.md).

Each is a frozen dataclass following :class:`~svdguard.linalg.stabilizers.Stabilizer`,
built from the pieces of :mod:`svdguard.linalg.stabilizers` (whose docstring
holds the notation and the rounding rule). :func:`stabilizer_from_name` maps
a method name and its parameters to a value, once, at the edge.

With J = skew(Uᴴ gU), K = skew(Vᴴ gV), d_ij = s_j − s_i, σ_ij = s_i + s_j:

=============  ===========================================  ==============================
value          difference part (J+K)_ij / (2 d_ij)           sum part, rectangular 1/s_i
=============  ===========================================  ==============================
Auto()         exact; rounding rule at |d| ≤ τ              exact; rounding rule at ≤ τ
Clamp(eps)     1/d → 1/(sign(d)·max(|d|, eps))              exact; 1/max(s, eps)
Seed(eps)      combined kernel (J s_j + s_i K)/(d̃ σ)        (clamped with it); as Clamp
Lorentz(eps)   1/d → d/(d² + eps)                           exact; s/(s² + eps)
Taylor(P)      σ·series for 1/(λ_j − λ_i), λ = s²           exact; as Auto
Trivialize(κ)  as Auto; zero gradient where cond > κ        as Auto
Native()       torch's own backward                         torch's
=============  ===========================================  ==============================

A value and its name are interchangeable; the gradient of ⟨W, U Vᴴ⟩ at the
identity is (W − Wᵀ)/2 with clamp too, since clamp leaves the sum part exact:

>>> import torch, svdguard
>>> A = torch.eye(3, dtype=torch.float64, requires_grad=True)
>>> W = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
>>> U, S, Vh = svdguard.svd(A, method=Clamp(eps=1e-6))
>>> (W * (U @ Vh)).sum().backward()
>>> A.grad[0, 1].item(), A.grad[1, 0].item()
(0.5, -0.5)
>>> stabilizer_from_name("clamp", eps=1e-6) == Clamp(1e-6)
True
>>> Clamp(eps=float("inf"))
Traceback (most recent call last):
...
svdguard.errors.InputError: eps must be a positive finite number, got inf
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from svdguard.errors import InputError
from svdguard.linalg.spectrum import condition_number
from svdguard.linalg.stabilizers import (
    BackwardContext,
    Stabilizer,
    auto_difference_part,
    auto_inverse_singular_values,
    combined_numerator,
    exact_sum_part,
    masked_reciprocal,
    needs_guard,
    off_diagonal,
    pair_grids,
    signs_of,
    unguarded_inner,
    upper_pairs,
)
from svdguard.tolerances import (
    default_clamp_eps,
    default_lorentz_eps,
    default_max_cond,
    rounding_resolution,
    stabilizer_bias_tolerance,
    tie_tolerance,
)

#: Default degree P of :class:`Taylor` (Wang et al. report P ≈ 9 as a good trade-off).
DEFAULT_TAYLOR_DEGREE = 9


def _rounding_pairs(s: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """Pairs i < j with |d_ij| ≤ τ or σ_ij ≤ τ: the denominators at rounding level."""
    s = s.detach()
    tau = tie_tolerance(s[..., :1].unsqueeze(-1), s.dtype, m, n)
    s_i, s_j = pair_grids(s)
    acting = ((s_j - s_i).abs() <= tau) | (s_i + s_j <= tau)
    return acting & upper_pairs(s.shape[-1], s.device)


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
        v_i, v_j = pair_grids(values)
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
class _WithEps(_Common):
    """A stabilizer with one parameter, ``eps``: the value given, or a default scaled by σ_max."""

    eps: float | None = None

    def __post_init__(self) -> None:
        _check_eps(self.eps)

    def default_eps(self, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        raise NotImplementedError

    def eps_for(self, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``eps`` per matrix, shaped like ``scale`` (σ_max, (..., 1, 1))."""
        if self.eps is None:
            return self.default_eps(scale, dtype)
        return torch.full_like(scale, self.eps)


@dataclass(frozen=True)
class Clamp(_WithEps):
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

    def default_eps(self, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return default_clamp_eps(scale, dtype)

    def inverse_differences(
        self, values: torch.Tensor, scale: torch.Tensor, tau: torch.Tensor
    ) -> torch.Tensor:
        v_i, v_j = pair_grids(values)
        d = v_j - v_i
        clamped = signs_of(d) * torch.maximum(d.abs(), self.eps_for(scale, values.dtype))
        return off_diagonal(clamped.reciprocal())

    def inner(self, ctx: BackwardContext) -> torch.Tensor:
        jk_sum, _ = ctx.split
        half = self.inverse_differences(ctx.s, ctx.sigma_max, ctx.tau) / 2
        # In a rounding-level tie an unresolved numerator is rounding itself: clamping would
        # return rounding/eps (√ε relative for the default eps), so it is dropped as by auto.
        s_i, s_j = pair_grids(ctx.s)
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
        s_i, s_j = pair_grids(s)
        return ((s_j - s_i).abs() < eps) & upper_pairs(s.shape[-1], s.device)


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
        s_i, s_j = pair_grids(s)
        sigma = s_i + s_j
        inv_clamped = self.inverse_differences(s, ctx.sigma_max, ctx.tau)
        inv_sigma = masked_reciprocal(sigma, sigma > 0)
        J, K = ctx.skews
        off = combined_numerator(J, K, s_i * inv_sigma, s_j * inv_sigma) * inv_clamped
        _, jk_diff = ctx.split
        phase = torch.diag_embed(
            jk_diff.diagonal(dim1=-2, dim2=-1) * inv_sigma.diagonal(dim1=-2, dim2=-1) / 2
        )
        return off + phase


@dataclass(frozen=True)
class Lorentz(_WithEps):
    """Lorentzian broadening (Liao et al. 2019) of the difference part only: 1/d → d/(d² + eps).

    X_ij = (J+K)_ij d_ij / (2 (d_ij² + eps)) + exact sum part (auto's rule);
    1/s_i → s_i/(s_i² + eps) (0 where s_i ≤ τ). ``eps`` in units of s², default
    ε·σ_max² (:func:`svdguard.tolerances.default_lorentz_eps`). Smooth, bounded
    by 1/(2√eps), biased by eps/(d² + eps) at every gap.
    """

    name: ClassVar[str] = "lorentz"

    def default_eps(self, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return default_lorentz_eps(scale, dtype)

    def inverse_differences(
        self, values: torch.Tensor, scale: torch.Tensor, tau: torch.Tensor
    ) -> torch.Tensor:
        v_i, v_j = pair_grids(values)
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
        s_i, s_j = pair_grids(s)
        d = s_j - s_i
        bias = eps / (d * d + eps) > stabilizer_bias_tolerance(s.dtype)
        return bias & upper_pairs(s.shape[-1], s.device)


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
        v_i, v_j = pair_grids(values)
        big = torch.maximum(v_i, v_j)
        small = torch.minimum(v_i, v_j)
        inv_big = masked_reciprocal(big, big > tau)
        ratio = small * inv_big
        series = torch.ones_like(ratio)
        for _ in range(self.degree):  # Horner: 1 + r(1 + r(1 + ...))
            series = 1 + ratio * series
        return off_diagonal(signs_of(v_j - v_i) * series * inv_big)

    def inner(self, ctx: BackwardContext) -> torch.Tensor:
        jk_sum, _ = ctx.split
        s_i, s_j = pair_grids(ctx.s)
        lam = ctx.s * ctx.s
        f = self.inverse_differences(lam, ctx.sigma_max**2, ctx.tau * ctx.tau)
        return jk_sum * ((s_i + s_j) * f / 2) + exact_sum_part(ctx)

    def inverse_singular_values(
        self, ctx: BackwardContext, projected: torch.Tensor, raw: torch.Tensor
    ) -> torch.Tensor:
        return auto_inverse_singular_values(ctx, projected, raw)

    def acting_pairs(self, s: torch.Tensor, m: int, n: int) -> torch.Tensor:
        s = s.detach()
        lam_i, lam_j = pair_grids(s * s)
        big = torch.maximum(lam_i, lam_j)
        ratio = torch.minimum(lam_i, lam_j) * masked_reciprocal(big, big > 0)
        bias = ratio ** (self.degree + 1) > stabilizer_bias_tolerance(s.dtype)
        return bias & upper_pairs(s.shape[-1], s.device)


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
        s_i, s_j = pair_grids(ctx.s)
        d, sigma = s_j - s_i, s_i + s_j
        return off_diagonal(jk_sum / (2 * d)) + jk_diff / (2 * sigma)

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
        v_i, v_j = pair_grids(values)
        return off_diagonal((v_j - v_i).reciprocal())


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
