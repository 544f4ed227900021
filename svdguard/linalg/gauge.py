"""Does a loss depend on a choice the SVD leaves arbitrary? (docs/backward.md, gauge freedom)

Two freedoms are checked, per batch element:

* **tied blocks** — inside a block of tied singular values any orthonormal
  basis is a valid SVD; a gauge-invariant loss gives (J + K)_ij ≈ 0 for i, j in
  the block, with J = skew(Uᴴ gU) and K = skew(Vᴴ gV).
* **null space** — the singular vectors of (numerically) zero singular values
  are just as arbitrary. A loss that depends on them has no derivative (e.g.
  the polar factor of a rank-deficient matrix): these are exactly the terms
  whose denominator is at rounding level and that the rounding rule of
  :mod:`svdguard.linalg.stabilizers` drops because the numerator does not
  vanish with it — a sum-part pair (J − K)_ij / (2 σ_ij) with σ_ij ≤ τ, or a
  rectangular column (I − UUᴴ) gU_i / s_i with s_i ≤ τ.

For complex inputs each singular pair is also defined only up to a common phase
e^{iφ}; a phase-invariant loss has Im(diag(Uᴴ gU)) = −Im(diag(Vᴴ gV)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from svdguard.errors import IllDefinedGradientError
from svdguard.linalg.stabilizers import (
    BackwardContext,
    Stabilizer,
    rounding_terms_kept,
)
from svdguard.tolerances import (
    complex_phase_tolerance,
    gauge_tolerance,
    rounding_quotient_bound,
    rounding_resolution,
    tie_tolerance,
)

#: GaugeViolation.kind of a tied block.
TIE = "tie"
#: GaugeViolation.kind of singular vectors of zero singular values.
NULL_SPACE = "null space"


def value_labels(indices: tuple[int, ...]) -> str:
    """1-based labels of singular values: ``s2..s3`` for (1, 2), ``s4`` for (3,)."""
    if not indices:
        return ""
    first, last = indices[0] + 1, indices[-1] + 1
    if len(indices) == last - first + 1:
        return f"s{first}" if first == last else f"s{first}..s{last}"
    return ", ".join(f"s{i + 1}" for i in indices)


@dataclass(frozen=True)
class GaugeViolation:
    """A choice the SVD leaves arbitrary (tied block or null space) that the loss depends on."""

    batch_index: tuple[int, ...]  #: which matrix of the batch (() for a single matrix)
    indices: tuple[int, ...]  #: the singular-value indices involved (0-based)
    size: float  #: the largest offending numerator: |(J+K)_ij|, |(J−K)_ij| or a column norm
    relative: float  #: size / (‖gU‖_F + ‖gVh‖_F) of that matrix
    kind: str = TIE  #: ``"tie"`` or ``"null space"``

    @property
    def labels(self) -> str:
        """The values involved, 1-based: ``s2..s3``."""
        return value_labels(self.indices)

    def describe(self) -> str:
        where = f"batch element {self.batch_index}, " if self.batch_index else ""
        if self.kind == NULL_SPACE:
            return (
                f"{where}singular values {self.labels} are zero to rounding and the loss depends "
                f"on their singular vectors (the null space): size {self.size:.3g} "
                f"({self.relative:.3g} of the upstream gradient); no derivative exists there and "
                "those terms are dropped"
            )
        return (
            f"{where}singular values {self.labels} are tied and the loss depends on the "
            f"basis chosen inside them: |(J+K)| = {self.size:.3g} ({self.relative:.3g} of the "
            "upstream gradient); its gradient is undefined there"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "batch_index": list(self.batch_index),
            "indices": list(self.indices),
            "labels": self.labels,
            "size": self.size,
            "relative": self.relative,
        }


@dataclass(frozen=True)
class ElementGauge:
    """Per batch element: gauge dependence (tied blocks, null space) and the stabilizer's pairs."""

    batch_index: tuple[int, ...]
    ties: tuple[GaugeViolation, ...]
    null_space: tuple[GaugeViolation, ...]
    acting_pairs: tuple[tuple[int, int], ...]  #: pairs i < j (0-based) the stabilizer changes

    @property
    def gauge_invariant(self) -> bool:
        return not self.ties and not self.null_space


def tied_blocks(s: torch.Tensor, tau: torch.Tensor | float) -> list[tuple[int, ...]]:
    """Runs of consecutive singular values (of one matrix) whose neighbours differ by ≤ τ."""
    close = ((s[:-1] - s[1:]).abs() <= tau).tolist()
    blocks: list[tuple[int, ...]] = []
    start = 0
    for i in range(len(close) + 1):
        if i == len(close) or not close[i]:
            if i > start:
                blocks.append(tuple(range(start, i + 1)))
            start = i + 1
    return blocks


def _null_space_sizes(
    U: torch.Tensor,
    S: torch.Tensor,
    Vh: torch.Tensor,
    gU: torch.Tensor | None,
    gVh: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(size (..., k), flagged (..., k)): per singular value, the largest dropped resolved numerator.

    Flags value i where a sum-part pair (i, j) with σ_ij ≤ τ, or its rectangular
    column with s_i ≤ τ, carries a numerator that rule (a) resolves but rule (b)
    refuses (or whose denominator is exactly 0): the loss depends on the singular
    vectors of zero singular values.
    """
    m, n, k = U.shape[-2], Vh.shape[-1], S.shape[-1]
    uh_gu = None if gU is None else U.mH @ gU
    vh_gv = None if gVh is None else Vh @ gVh.mH
    ctx = BackwardContext(S, m, n, uh_gu, vh_gv, gU, gVh)
    s_i, s_j = S.unsqueeze(-1), S.unsqueeze(-2)
    sigma = s_i + s_j
    _, jk_diff = ctx.split
    at_rounding = sigma <= ctx.tau
    dropped = at_rounding & ~rounding_terms_kept(
        jk_diff, ctx.summands, sigma, ctx.sigma_max, ctx.upstream_scale
    )
    resolved = jk_diff.abs() > rounding_resolution(S.dtype) * ctx.summands
    pair_flag = dropped & resolved
    pair_size = torch.where(pair_flag, jk_diff.abs(), 0.0).amax(dim=-1)
    size = pair_size.to(S.dtype)
    flag = pair_flag.any(dim=-1)
    tau = ctx.tau.squeeze(-1)
    g = ctx.upstream_scale.squeeze(-1)
    bound = ctx.sigma_max.squeeze(-1) / rounding_quotient_bound(S.dtype)
    sides: list[tuple[torch.Tensor, torch.Tensor]] = []
    if gU is not None and uh_gu is not None and m > k:
        sides.append((gU - U @ uh_gu, gU))  # columns (I − UUᴴ) gU_i against gU_i
    if gVh is not None and vh_gv is not None and n > k:
        sides.append(((gVh - vh_gv.mH @ Vh).mT, gVh.mT))  # (I − VVᴴ) gV_i against gV_i
    for projected, raw in sides:
        numerator = torch.linalg.vector_norm(projected, dim=-2)
        summands = torch.linalg.vector_norm(raw, dim=-2)
        resolved_col = numerator > rounding_resolution(S.dtype) * summands
        kept = (S != 0) & (numerator * bound <= g * S)
        col_flag = (S <= tau) & resolved_col & ~kept
        size = torch.maximum(size, torch.where(col_flag, numerator, 0.0).to(S.dtype))
        flag = flag | col_flag
    return size, flag


def find_gauge_violations(
    U: torch.Tensor,
    S: torch.Tensor,
    Vh: torch.Tensor,
    gU: torch.Tensor | None,
    gVh: torch.Tensor | None,
    tau: torch.Tensor | None = None,
    *,
    null_space: bool = True,
) -> list[GaugeViolation]:
    """Every tied block (per batch element) in which the loss is not gauge invariant,
    and (``null_space=True``) every set of zero singular values whose vectors it depends on.

    Thin factors: U (..., m, k), S (..., k), Vh (..., k, n); gU, gVh shaped like them
    (None = 0). ``tau`` (shape (...)) defaults to :func:`svdguard.tolerances.tie_tolerance`.
    Tied-block violations come first for each element, then null-space ones.
    """
    if gU is None and gVh is None:
        return []
    U, S, Vh = U.detach(), S.detach(), Vh.detach()
    k = S.shape[-1]
    if k == 0:
        return []
    U, Vh = U[..., :k], Vh[..., :k, :]
    gU = None if gU is None else gU.detach()[..., :k]
    gVh = None if gVh is None else gVh.detach()[..., :k, :]
    if tau is None:
        tau = tie_tolerance(S[..., 0], S.dtype, U.shape[-2], Vh.shape[-1])
    jk = torch.zeros(*S.shape, k, dtype=U.dtype, device=U.device)
    scale = torch.zeros(S.shape[:-1], dtype=S.dtype, device=S.device)
    if gU is not None:
        uhgu = U.mH @ gU
        jk = jk + (uhgu - uhgu.mH)
        scale = scale + torch.linalg.matrix_norm(gU)
    if gVh is not None:
        vhgv = Vh @ gVh.mH
        jk = jk + (vhgv - vhgv.mH)
        scale = scale + torch.linalg.matrix_norm(gVh)
    null_size, null_flag = _null_space_sizes(U, S, Vh, gU, gVh) if null_space else (None, None)
    limit = gauge_tolerance(S.dtype)
    tiny = torch.finfo(S.dtype).tiny
    found = []
    batch_shape = S.shape[:-1]
    flat_s, flat_jk = S.reshape(-1, k), jk.reshape(-1, k, k)
    flat_tau, flat_scale = tau.reshape(-1), scale.reshape(-1)
    for b in range(flat_s.shape[0]):
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(b), batch_shape))
        for block in tied_blocks(flat_s[b], flat_tau[b]):
            sub = flat_jk[b][list(block)][:, list(block)].abs()
            size = float(sub.fill_diagonal_(0).max())  # the diagonal is the phase, checked apart
            rel = size / max(float(flat_scale[b]), tiny)
            if rel > limit:
                found.append(GaugeViolation(index, block, size, rel))
        if null_flag is not None and null_size is not None:
            flags = null_flag.reshape(-1, k)[b]
            if bool(flags.any()):
                which = tuple(int(i) for i in flags.nonzero().flatten().tolist())
                size = float(null_size.reshape(-1, k)[b].max())
                rel = size / max(float(flat_scale[b]), tiny)
                found.append(GaugeViolation(index, which, size, rel, NULL_SPACE))
    return found


def gauge_report(
    U: torch.Tensor,
    S: torch.Tensor,
    Vh: torch.Tensor,
    gU: torch.Tensor | None,
    gVh: torch.Tensor | None,
    stabilizer: Stabilizer | None = None,
) -> list[ElementGauge]:
    """One :class:`ElementGauge` per batch element (row-major): tied blocks, null space, pairs.

    ``stabilizer`` (default none) gives the pairs it changes (its ``acting_pairs``).
    """
    S = S.detach()
    k = S.shape[-1]
    m, n = U.shape[-2], Vh.shape[-1]
    violations = find_gauge_violations(U, S, Vh, gU, gVh)
    batch_shape = tuple(S.shape[:-1])
    count = int(torch.tensor(batch_shape).prod()) if batch_shape else 1
    acting = (
        stabilizer.acting_pairs(S, m, n).reshape(count, k, k)
        if stabilizer is not None
        else torch.zeros(count, k, k, dtype=torch.bool)
    )
    report = []
    for b in range(count):
        index = (
            tuple(int(i) for i in torch.unravel_index(torch.tensor(b), batch_shape))
            if batch_shape
            else ()
        )
        mine = [v for v in violations if v.batch_index == index]
        pairs = tuple((int(i), int(j)) for i, j in acting[b].nonzero().tolist())
        report.append(
            ElementGauge(
                index,
                tuple(v for v in mine if v.kind == TIE),
                tuple(v for v in mine if v.kind == NULL_SPACE),
                pairs,
            )
        )
    return report


def check_complex_phase(
    U: torch.Tensor, Vh: torch.Tensor, gU: torch.Tensor | None, gVh: torch.Tensor | None
) -> None:
    """Raise like torch does when a complex loss depends on the phase of the singular vectors."""
    if gU is None and gVh is None:
        return
    zeros = torch.zeros(U.shape[:-2] + U.shape[-1:], dtype=U.real.dtype, device=U.device)
    im_u = torch.imag((U.mH @ gU).diagonal(dim1=-2, dim2=-1)) if gU is not None else zeros
    im_v = torch.imag((Vh @ gVh.mH).diagonal(dim1=-2, dim2=-1)) if gVh is not None else zeros
    rtol, atol = complex_phase_tolerance()
    if not torch.allclose(im_u, -im_v, rtol=rtol, atol=atol):
        raise IllDefinedGradientError(
            "svd backward: the singular vectors of a complex matrix are defined only up to a "
            "phase e^{iφ} per singular pair, and this loss depends on that phase, so its gradient "
            "is ill-defined (make the loss invariant, e.g. use U Vᴴ, |U| or U diag(S) Vᴴ)"
        )
