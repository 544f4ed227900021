"""The inner k×k matrix of the SVD backward, one function per method.

Notation (MATH.md §1–§3): s descending, d_ij = s_j − s_i, σ_ij = s_i + s_j,
J = skew(Uᴴ gU), K = skew(Vᴴ gV) with skew(X) = X − Xᴴ. The exact off-diagonal
entry has two equivalent forms:

    combined:  X_ij = (J_ij s_j + s_i K_ij) / (s_j² − s_i²)
    split:     X_ij = (J + K)_ij / (2 d_ij)  +  (J − K)_ij / (2 σ_ij)

Each method returns ``X`` with the off-diagonal entries and the complex phase
term on the diagonal (``(J − K)_ii / (4 s_i)``, which is torch's
``i·Im(diag(Uᴴ gU)) / s_i`` for a phase-invariant loss); the caller adds
diag(gS). :func:`inverse_singular_values` gives the ``1/s`` of the rectangular
terms, guarded like each method's kernel. Masked reciprocals are computed as ``where(ok, 1 / where(ok, x, 1), 0)``
so that neither branch produces inf/NaN, which would poison double backward.

``tau`` is the rounding level of the singular values
(:func:`svdguard.tolerances.tie_tolerance`), shaped ``(..., 1, 1)``.
"""

from __future__ import annotations

import torch


def masked_reciprocal(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """1/x where ``keep``, 0 elsewhere; finite in value and in every derivative.

    The inner ``where`` replaces masked entries by 1 before dividing, the outer
    one zeroes them: neither branch holds inf/NaN, so double backward never
    meets inf·0.
    """
    return torch.where(keep, torch.where(keep, x, 1.0).reciprocal(), 0.0)


def _pair_grids(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(s_i as a column, s_j as a row), each broadcasting to (..., k, k)."""
    return s.unsqueeze(-1), s.unsqueeze(-2)


def split_parts(
    J: torch.Tensor | None, K: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(J + K, J − K), treating a missing upstream gradient as zero."""
    if J is not None and K is not None:
        return J + K, J - K
    if J is not None:
        return J, J
    if K is not None:
        return K, -K
    raise ValueError("at least one of J, K is needed")


def combined_numerator(
    J: torch.Tensor | None, K: torch.Tensor | None, left: torch.Tensor, right: torch.Tensor
) -> torch.Tensor:
    """J_ij·right_j + left_i·K_ij (the combined form's numerator), a missing J or K counting as 0.

    ``left`` is a column (…, k, 1) or a k×k grid, ``right`` a row (…, 1, k) or a grid:
    s_i and s_j for the exact and Taylor kernels, s_i/σ_ij and s_j/σ_ij for clamp.
    """
    if J is not None and K is not None:
        return J * right + left * K
    if J is not None:
        return J * right
    if K is not None:
        return left * K
    raise ValueError("at least one of J, K is needed")


def _phase_diagonal(jk_diff: torch.Tensor, inv_sigma: torch.Tensor) -> torch.Tensor:
    """(J − K)_ii / (2 · 2 s_i): zero for real inputs, the phase term for complex ones."""
    return torch.diag_embed(
        jk_diff.diagonal(dim1=-2, dim2=-1) * inv_sigma.diagonal(dim1=-2, dim2=-1) / 2
    )


def exact_sum_part(s: torch.Tensor, tau: torch.Tensor, jk_diff: torch.Tensor) -> torch.Tensor:
    """(J − K)_ij / (2 σ_ij), dropped only where σ_ij ≤ τ (both values at rounding level of zero).

    The numerator has no cancellation, so this is accurate for every σ above
    rounding level; it carries the whole gradient of the polar factor U Vᴴ.
    On the diagonal it is (J − K)_ii / (4 s_i): zero for real inputs (J, K are
    skew) and the complex phase term i·Im(diag(Uᴴ gU)) / s_i otherwise.
    """
    return jk_diff * _half_inverse_sums(s, tau)


def _half_inverse_sums(s: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """1 / (2 σ_ij), 0 where σ_ij ≤ τ."""
    s2_i, s2_j = _pair_grids(s + s)
    sigma2 = s2_i + s2_j
    return masked_reciprocal(sigma2, sigma2 > 2 * tau)


def _half_inverse_differences(s: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """1 / (2 d_ij), 0 where |d_ij| ≤ τ, so also on the diagonal (d_ii = 0)."""
    s2_i, s2_j = _pair_grids(s + s)
    d2 = s2_j - s2_i
    return masked_reciprocal(d2, d2.abs() > 2 * tau)


def needs_guard(s: torch.Tensor, tau: torch.Tensor) -> bool:
    """Whether any denominator of the auto kernel is at rounding level, checked on O(k) values.

    s is sorted, so a tie exists iff some neighbouring gap s_i − s_{i+1} ≤ τ, and
    some σ_ij ≤ τ iff 2 s_min ≤ τ; both in one reduction over (gaps, 2 s_min).
    Reads values (a host sync on GPUs), so it is only called outside
    torch.func transforms.
    """
    edges = torch.cat((s[..., :-1] - s[..., 1:], s[..., -1:] * 2), dim=-1)
    return bool((edges <= tau.squeeze(-1)).any())


def auto_inner(
    s: torch.Tensor, tau: torch.Tensor, jk_sum: torch.Tensor, jk_diff: torch.Tensor
) -> torch.Tensor:
    """Split form with every reciprocal exact above rounding level.

    X_ij = (J+K)_ij / (2 d_ij) [dropped iff |d_ij| ≤ τ] + (J−K)_ij / (2 σ_ij) [dropped iff σ_ij ≤ τ].
    """
    difference_part = jk_sum * _half_inverse_differences(s, tau)
    return torch.addcmul(difference_part, jk_diff, _half_inverse_sums(s, tau))


def unguarded_inner(
    s: torch.Tensor, J: torch.Tensor | None, K: torch.Tensor | None
) -> torch.Tensor:
    """The exact kernel in combined form, for real inputs with no denominator at rounding level.

    X_ij = (J_ij s_j + s_i K_ij) / (s_j² − s_i²), the diagonal of the denominator set
    to 1 (the numerator's diagonal is 0: J and K are real skew matrices). With every
    |d_ij| and σ_ij above τ this is the split form's value, obtained in fewer
    passes over the k×k arrays (the difference of squares and the cancelling
    numerator carry the same ε·s/|d_ij| relative error as the split form's
    difference part).
    """
    s_i, s_j = _pair_grids(s)
    denominator = s_j * s_j - s_i * s_i
    denominator.diagonal(dim1=-2, dim2=-1).fill_(1.0)
    return combined_numerator(J, K, s_i, s_j) / denominator


def lorentz_inner(
    s: torch.Tensor,
    tau: torch.Tensor,
    jk_sum: torch.Tensor,
    jk_diff: torch.Tensor,
    eps: torch.Tensor,
) -> torch.Tensor:
    """Lorentzian broadening of the difference part only: 1/d → d / (d² + eps).

    X_ij = (J+K)_ij d_ij / (2 (d_ij² + eps)) + exact sum part. eps has the units of s².
    """
    s_i, s_j = _pair_grids(s)
    d = s_j - s_i
    return jk_sum * (d / (d * d + eps)) / 2 + exact_sum_part(s, tau, jk_diff)


def tie_signs(k: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The sign d_ij = s_j − s_i has for distinct descending values: −1 above the diagonal, +1 below."""
    upper = torch.ones(k, k, dtype=torch.bool, device=device).triu(1)
    return torch.where(upper, -torch.ones((), dtype=dtype), torch.ones((), dtype=dtype)).to(device)


def clamp_inner(
    s: torch.Tensor, J: torch.Tensor | None, K: torch.Tensor | None, eps: torch.Tensor
) -> torch.Tensor:
    """The seed's rule (Ionescu et al. 2015) on the combined kernel, made finite everywhere.

    X_ij = (J_ij s_j + s_i K_ij) / (d̃_ij σ_ij), d̃_ij = sign(d_ij) · max(|d_ij|, eps),
    evaluated as (J_ij (s_j/σ_ij) + (s_i/σ_ij) K_ij) / d̃_ij so that σ_ij → 0 does
    not overflow. Fixes of the seed: an exact tie takes the sign distinct values
    would have (the seed's sign(0) = 0 divides by zero), and σ_ij = 0 (two zero
    singular values, numerator 0) gives 0 (the seed divides by zero).
    """
    s_i, s_j = _pair_grids(s)
    d = s_j - s_i
    sigma = s_i + s_j
    sign = torch.where(d != 0, torch.sign(d), tie_signs(s.shape[-1], s.dtype, s.device))
    clamped = sign * torch.maximum(d.abs(), eps)
    inv_sigma = masked_reciprocal(sigma, sigma > 0)
    numerator = combined_numerator(J, K, s_i * inv_sigma, s_j * inv_sigma)
    eye = torch.eye(s.shape[-1], dtype=torch.bool, device=s.device)
    off = torch.where(eye, torch.zeros_like(numerator), numerator / clamped)
    jk_diff = split_parts(J, K)[1]
    return off + _phase_diagonal(jk_diff, masked_reciprocal(sigma, sigma > 0))


def taylor_inner(
    s: torch.Tensor,
    tau: torch.Tensor,
    J: torch.Tensor | None,
    K: torch.Tensor | None,
    degree: int,
) -> torch.Tensor:
    """Wang et al. (TPAMI 2021): a degree-P Taylor series of the combined kernel in λ = s².

    For λ_a ≥ λ_b: 1/(λ_a − λ_b) ≈ (1/λ_a) Σ_{p=0..P} (λ_b/λ_a)^p, bounded by (P+1)/λ_a,
    so F_ij = 1/(λ_j − λ_i) ≈ ∓ that series (− above the diagonal, + below), and
    X_ij = F_ij (J_ij s_j + s_i K_ij). Pairs with λ_a ≤ τ² (both at zero) give 0.
    """
    lam = s * s
    lam_i, lam_j = _pair_grids(lam)
    big = torch.maximum(lam_i, lam_j)
    small = torch.minimum(lam_i, lam_j)
    keep = big > tau * tau
    inv_big = masked_reciprocal(big, keep)
    ratio = small * inv_big
    series = torch.ones_like(ratio)
    for _ in range(degree):  # Horner: 1 + r(1 + r(1 + ...))
        series = 1 + ratio * series
    kernel = tie_signs(s.shape[-1], s.dtype, s.device) * series * inv_big
    s_i, s_j = _pair_grids(s)
    numerator = combined_numerator(J, K, s_i, s_j)
    eye = torch.eye(s.shape[-1], dtype=torch.bool, device=s.device)
    off = torch.where(eye, torch.zeros_like(kernel), kernel) * numerator
    jk_diff = split_parts(J, K)[1]
    sigma = s_i + s_j
    return off + _phase_diagonal(jk_diff, masked_reciprocal(sigma, sigma > tau))


def inverse_singular_values(
    method: str, s: torch.Tensor, tau: torch.Tensor, eps: torch.Tensor | None
) -> torch.Tensor:
    """The 1/s_i of the rectangular terms, guarded the way each method guards its kernel.

    Every method drops the term where s_i ≤ τ (a zero singular value: its
    singular vector on the long side is arbitrary). Above τ: auto, taylor,
    trivialize exact; clamp 1/max(s_i, eps); lorentz s_i / (s_i² + eps).
    """
    keep = s > tau.squeeze(-1)
    if method == "clamp" and eps is not None:
        return torch.where(keep, 1.0 / torch.maximum(s, eps.squeeze(-1)), 0.0)
    if method == "lorentz" and eps is not None:
        return torch.where(keep, s / (s * s + eps.squeeze(-1)), 0.0)
    return masked_reciprocal(s, keep)
