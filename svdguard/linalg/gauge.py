"""Does a loss depend on a choice the SVD leaves arbitrary? (MATH.md §3)

Inside a block of tied singular values any orthonormal basis is a valid SVD; a
gauge-invariant loss then gives (J + K)_ij ≈ 0 for i, j in the block, with
J = skew(Uᴴ gU) and K = skew(Vᴴ gV). For complex inputs, each singular pair is
also defined only up to a common phase e^{iφ}; a phase-invariant loss has
Im(diag(Uᴴ gU)) = −Im(diag(Vᴴ gV)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from svdguard.errors import IllDefinedGradientError
from svdguard.tolerances import complex_phase_tolerance, gauge_tolerance, tie_tolerance


@dataclass(frozen=True)
class GaugeViolation:
    """A block of tied singular values in which the loss picks out a basis."""

    batch_index: tuple[int, ...]  #: which matrix of the batch (() for a single matrix)
    indices: tuple[int, ...]  #: the block's singular-value indices (0-based)
    size: float  #: max |(J + K)_ij| over i ≠ j in the block
    relative: float  #: size / (‖gU‖_F + ‖gVh‖_F) of that matrix

    def describe(self) -> str:
        where = f"batch element {self.batch_index}, " if self.batch_index else ""
        return (
            f"{where}singular values {list(self.indices)} are tied and the loss depends on the "
            f"basis chosen inside them: |(J+K)| = {self.size:.3g} ({self.relative:.3g} of the "
            "upstream gradient); its gradient is undefined there"
        )


def tied_blocks(s: torch.Tensor, tau: torch.Tensor) -> list[tuple[int, ...]]:
    """Runs of consecutive singular values (of one matrix) whose neighbours differ by ≤ τ."""
    close = ((s[:-1] - s[1:]).abs() <= tau).tolist()
    blocks, start = [], 0
    for i in range(len(close) + 1):
        if i == len(close) or not close[i]:
            if i > start:
                blocks.append(tuple(range(start, i + 1)))
            start = i + 1
    return blocks


def find_gauge_violations(
    U: torch.Tensor,
    S: torch.Tensor,
    Vh: torch.Tensor,
    gU: torch.Tensor | None,
    gVh: torch.Tensor | None,
    tau: torch.Tensor | None = None,
) -> list[GaugeViolation]:
    """Every tied block (per batch element) in which the loss is not gauge invariant.

    Thin factors: U (..., m, k), S (..., k), Vh (..., k, n); gU, gVh shaped like them
    (None = 0). ``tau`` (shape (...)) defaults to :func:`svdguard.tolerances.tie_tolerance`.
    """
    if gU is None and gVh is None:
        return []
    U, S, Vh = U.detach(), S.detach(), Vh.detach()
    k = S.shape[-1]
    U, Vh = U[..., :k], Vh[..., :k, :]
    if tau is None:
        tau = tie_tolerance(S[..., 0], S.dtype, U.shape[-2], Vh.shape[-1])
    jk = torch.zeros(*S.shape, k, dtype=U.dtype, device=U.device)
    scale = torch.zeros(S.shape[:-1], dtype=S.dtype, device=S.device)
    if gU is not None:
        gU = gU.detach()[..., :k]
        uhgu = U.mH @ gU
        jk = jk + (uhgu - uhgu.mH)
        scale = scale + torch.linalg.matrix_norm(gU)
    if gVh is not None:
        gVh = gVh.detach()[..., :k, :]
        vhgv = Vh @ gVh.mH
        jk = jk + (vhgv - vhgv.mH)
        scale = scale + torch.linalg.matrix_norm(gVh)
    limit = gauge_tolerance(S.dtype)
    found = []
    batch_shape = S.shape[:-1]
    flat_s, flat_jk = S.reshape(-1, k), jk.reshape(-1, k, k)
    flat_tau, flat_scale = tau.reshape(-1), scale.reshape(-1)
    for b in range(flat_s.shape[0]):
        for block in tied_blocks(flat_s[b], flat_tau[b]):
            sub = flat_jk[b][list(block)][:, list(block)].abs()
            size = float(sub.fill_diagonal_(0).max())  # the diagonal is the phase, checked apart
            rel = size / max(float(flat_scale[b]), torch.finfo(S.dtype).tiny)
            if rel > limit:
                index = tuple(int(i) for i in torch.unravel_index(torch.tensor(b), batch_shape))
                found.append(GaugeViolation(index, block, size, rel))
    return found


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
