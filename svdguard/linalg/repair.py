"""The nearest matrix whose singular values meet a condition bound and a gap bound.

Notation: A is m×n, k = min(m, n), A = U diag(s) Vᴴ with s_0 ≥ s_1 ≥ … ≥ s_{k−1} ≥ 0.
Bounds, relative to the largest singular value s′_0 of the result:

* condition:  s′_{k−1} ≥ s′_0 / K                      (κ₂ ≤ K, ``max_cond=K``)
* gap:        s′_i − s′_{i+1} ≥ G · s′_0   for every i   (``min_gap=G``)

The problem solved (see docs/repair.md): hold s′_0 = s_0 (the spectral norm is kept:
the bounds are relative to it, and it is the Lipschitz constant of the layer), then

    minimise ‖A′ − A‖_F  over A′ with s′_0 = s_0 and both bounds.

By Mirsky's theorem ‖A′ − A‖_F ≥ ‖s′ − s‖₂ for the sorted spectra, with equality for
A′ = U diag(s′) Vᴴ; the constraints depend on the sorted spectrum only, so the matrix
problem is the vector problem min ‖s′ − s‖₂ over the feasible s′. With the absolute floor
f = s_0/K and gap g = G·s_0, substitute t_i = s′_i − (k−1−i)·g, y_i = s_i − (k−1−i)·g:

    gap bounds   ⇔  t non-increasing;
    floor        ⇔  t_{k−1} ≥ f  (then every t_i ≥ f);
    s′_0 = s_0   ⇔  t_0 = y_0 =: c, hence t_i ≤ c for i ≥ 1;

and the objective is Σ (t_i − y_i)² (the shift cancels). For i ≥ 1 this is isotonic
(non-increasing) least squares with the constant box f ≤ t_i ≤ c, whose exact solution is
the pool-adjacent-violators fit of y_{1..k−1} clipped to [f, c]. It exists iff f ≤ c,
i.e. (k−1)·G ≤ 1 − 1/K: otherwise no spectrum meets both bounds.

``margin`` η makes the result robust to a later perturbation E with ‖E‖₂ ≤ η (rounding
to the storage dtype): by Weyl's inequality every singular value moves by at most η, so
f = (s_0 + η)/K + η and g = G·(s_0 + η) + 2η guarantee the bounds after the perturbation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from svdguard.errors import InputError


def _check_bounds(max_cond: float | None, min_gap: float | None) -> None:
    if max_cond is not None and not (max_cond >= 1.0 and not math.isnan(max_cond)):
        raise InputError(f"max_cond={max_cond} is below 1; κ₂ ≥ 1 always")
    if min_gap is not None and not (0.0 <= min_gap < 1.0):
        raise InputError(f"min_gap={min_gap} is outside [0, 1); it is a gap relative to σ_max")


def bounds_feasible(k: int, max_cond: float | None, min_gap: float | None) -> bool:
    """True when some k values meet both bounds: (k−1)·G ≤ 1 − 1/K (s′_0 − s′_{k−1} ≥ (k−1)·G·s′_0)."""
    spread = (k - 1) * (min_gap or 0.0)
    floor = 0.0 if max_cond is None else 1.0 / max_cond
    return spread <= 1.0 - floor


def pava_nonincreasing(y: torch.Tensor) -> torch.Tensor:
    """The non-increasing t minimising Σ (t_i − y_i)² (pool adjacent violators), float64.

    Scans left to right keeping blocks (sum, count) whose means decrease; a new value
    whose mean exceeds the previous block's is pooled with it (and the pooled block
    with its predecessor, while they violate). Each fitted value is its block's mean.
    O(k) amortised.
    """
    values = y.to(torch.float64).tolist()
    sums: list[float] = []
    counts: list[int] = []
    for value in values:
        sums.append(value)
        counts.append(1)
        while len(sums) > 1 and sums[-2] * counts[-1] < sums[-1] * counts[-2]:
            total, count = sums.pop(), counts.pop()
            sums[-1] += total
            counts[-1] += count
    fitted = [
        total / count for total, count in zip(sums, counts, strict=True) for _ in range(count)
    ]
    return torch.tensor(fitted, dtype=torch.float64)


def nearest_spectrum(
    s: torch.Tensor,
    max_cond: float | None = None,
    min_gap: float | None = None,
    *,
    margin: float = 0.0,
) -> torch.Tensor:
    """The nearest (ℓ₂) spectrum to ``s`` with s′_0 = s_0 that meets both bounds, float64.

    ``s``: descending singular values, shape (k,). ``max_cond``: K of s′_{k−1} ≥ s′_0/K
    (None: no condition bound; the floor is then 0, since singular values are ≥ 0).
    ``min_gap``: G of s′_i − s′_{i+1} ≥ G·s′_0 (None: no gap bound). ``margin``: η ≥ 0,
    an absolute perturbation the bounds must survive (module docstring). Values that
    need no change are returned bit for bit. InputError when s_0 = 0 (no scale to keep)
    or when the bounds cannot hold together for k values.
    """
    _check_bounds(max_cond, min_gap)
    s = s.detach().to(device="cpu", dtype=torch.float64)
    k = s.numel()
    if k == 0:
        return s.clone()
    s0 = float(s[0])
    if not s0 > 0.0:
        raise InputError("σ_max = 0: the bounds are relative to σ_max, there is no scale to keep")
    eta = float(margin)
    floor = 0.0 if max_cond is None else (s0 + eta) / max_cond + eta
    gap = 0.0 if min_gap is None else min_gap * (s0 + eta) + 2.0 * eta
    ceiling = s0 - (k - 1) * gap  # c = t_0
    if floor > ceiling:
        raise InputError(
            f"max_cond={max_cond} and min_gap={min_gap} cannot hold together for {k} singular "
            f"values: they need (k−1)·min_gap ≤ 1 − 1/max_cond"
            + (f" (with the rounding margin {eta / s0:.1e}·σ_max)" if eta else "")
        )
    if k == 1:
        return s.clone()
    shift = gap * torch.arange(k - 2, -1, -1, dtype=torch.float64)  # (k−1−i)·g for i = 1..k−1
    y = s[1:] - shift
    t = pava_nonincreasing(y).clamp(min=floor, max=ceiling)
    result = s.clone()
    result[1:] = s[1:] + (t - y)  # s′ = s + (t − y): exactly s where nothing moved
    return result


def meets_bounds(s: torch.Tensor, max_cond: float | None, min_gap: float | None) -> bool:
    """True when the descending spectrum ``s`` satisfies s_{k−1}·K ≥ s_0 and every gap ≥ G·s_0.

    The zero matrix has κ₂ = ∞: it fails any condition bound (and meets any gap bound).
    """
    s = s.detach().to(device="cpu", dtype=torch.float64)
    if s.numel() == 0:
        return True
    s0 = float(s[0])
    if max_cond is not None and (s0 == 0.0 or float(s[-1]) * max_cond < s0):
        return False  # the zero matrix has κ₂ = ∞
    if min_gap is not None and s.numel() > 1:
        return float((s[:-1] - s[1:]).min()) >= min_gap * s0
    return True


@dataclass(frozen=True)
class ConditionedRepair:
    """A repaired matrix in float64 (complex128) and the spectra before and after."""

    matrix: torch.Tensor
    before: torch.Tensor
    after: torch.Tensor

    @property
    def relative_change(self) -> float:
        """‖ΔA‖_F/‖A‖_F = ‖s′ − s‖₂/‖s‖₂ (Mirsky's equality: U, V are kept)."""
        norm = float(torch.linalg.vector_norm(self.before))
        change = float(torch.linalg.vector_norm(self.after - self.before))
        return change / norm if norm > 0 else 0.0


class SpectralEditor:
    """One SVD of A (float64, complex128 when complex), reused for every target spectrum.

    ``apply(target)`` returns A′ = A + U_J diag(s′_J − s_J) V_Jᴴ over the indices J that
    move: directions that keep their singular value are not recomputed, so rounding
    touches only what the bounds require. A wide matrix is decomposed as Aᴴ = V diag(s) Uᴴ
    (torch's CPU SVD is several times faster on the tall orientation, see
    ``diagnostics.tall``) and the result transposed back: the same A′.
    """

    def __init__(self, a: torch.Tensor) -> None:
        if a.ndim != 2:
            raise InputError(f"expected a matrix (2-D), got shape {tuple(a.shape)}")
        work = a.detach().to(torch.complex128 if a.is_complex() else torch.float64)
        if not bool(torch.isfinite(work).all()):
            raise InputError(
                "the matrix holds NaN or Inf entries; a non-finite matrix is not repaired"
            )
        self.flipped = work.shape[0] < work.shape[1]
        self.tall = work.mH if self.flipped else work
        self.u, self.s, self.vh = torch.linalg.svd(self.tall, full_matrices=False)

    def apply(self, target: torch.Tensor) -> torch.Tensor:
        """The matrix with these singular vectors and the singular values ``target`` (k,)."""
        delta = target.to(torch.float64) - self.s
        moved = torch.nonzero(delta != 0).flatten()
        if moved.numel() == 0:
            result = self.tall.clone()
        else:
            scaled = self.u.index_select(1, moved)
            scaled *= delta[moved].to(scaled.dtype)
            result = torch.addmm(self.tall, scaled, self.vh.index_select(0, moved))
        return result.mH.resolve_conj() if self.flipped else result

    def nearest(
        self, max_cond: float | None, min_gap: float | None, *, margin: float = 0.0
    ) -> ConditionedRepair:
        """:func:`nearest_spectrum` of this matrix's singular values, applied."""
        target = nearest_spectrum(self.s, max_cond, min_gap, margin=margin)
        return ConditionedRepair(self.apply(target), self.s, target)


def conditioned_repair(
    a: torch.Tensor,
    max_cond: float | None = None,
    min_gap: float | None = None,
    *,
    margin: float = 0.0,
) -> ConditionedRepair:
    """:func:`nearest_conditioned` in float64 (complex128), with both spectra."""
    return SpectralEditor(a).nearest(max_cond, min_gap, margin=margin)


def nearest_conditioned(
    a: torch.Tensor, max_cond: float | None = None, min_gap: float | None = None
) -> torch.Tensor:
    """The nearest matrix (Frobenius) to ``a`` with the same σ_max, κ₂ ≤ max_cond and gaps ≥ min_gap·σ_max.

    Same singular vectors as ``a``, singular values from :func:`nearest_spectrum`
    (docs/repair.md states the problem and its optimality). Computed in float64
    (complex128), returned in ``a``'s dtype (rounding there may move the singular
    values by about ε(dtype)·σ_max; ``svdguard.app.repairing`` re-checks and compensates).

    >>> import torch
    >>> a = torch.diag(torch.tensor([1.0, 1.0, 1e-6], dtype=torch.float64))
    >>> torch.linalg.svdvals(nearest_conditioned(a, max_cond=100.0, min_gap=0.1))
    tensor([1.0000, 0.9000, 0.0100], dtype=torch.float64)
    """
    _check_bounds(max_cond, min_gap)
    return conditioned_repair(a, max_cond, min_gap).matrix.to(a.dtype)
