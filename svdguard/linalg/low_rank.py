"""Best rank-k approximation U_k S_k V_kᴴ and the projector U_k U_kᴴ onto the top-k left subspace.

Both are spectral functions with a cut after the k-th singular value
("in" = the top k, "out" = the rest):

* low_rank: f = U diag(h(s)) Vᴴ, h(s_i) = s_i in, 0 out.
  D⁻: in–in 1, across (h_i − h_j)/(s_i − s_j), out–out 0;
  D⁺ = (h_i + h_j)/(s_i + s_j); h(s)/s = 1 in, 0 out.
* projector: Φ(AAᴴ) with Φ(λ) = 1 in, 0 out, i.e. the Gram function of Aᴴ.
  E_ij = (Φ_i − Φ_j)/((s_i − s_j)(s_i + s_j)) across, 0 otherwise;
  s e0 = Φ/s (the pairing with the zero eigenvalues of AAᴴ when m > n).

Both exist and are smooth exactly when s_k > s_{k+1} (for the projector with
k = n < m: s_k > 0, the eigenvalue 0 of AAᴴ being the next one). At
s_k = s_{k+1} the top-k subspace is not unique: neither the value nor a
gradient exists, and ``check=True`` raises :class:`~svdguard.errors.InputError`.
Ties inside the top k or inside the rest are fine (exact).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from svdguard.errors import InputError
from svdguard.linalg.divided_differences import (
    pairwise,
    quotient_where,
    sum_quotient,
)
from svdguard.linalg.gram import gram_spectral
from svdguard.linalg.matrix_input import matrix_batch, rank_argument
from svdguard.linalg.spectral_svd import singular_value_tolerance, svd_spectral


def _top(s: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the top k of a descending spectrum, shape ``s.shape``."""
    return (torch.arange(s.shape[-1], device=s.device) < k).expand(s.shape)


@dataclass(frozen=True)
class LowRankKernel:
    """h(s) = s on the top k, 0 on the rest."""

    k: int

    def values(self, s: torch.Tensor, tol: torch.Tensor) -> torch.Tensor:
        return torch.where(_top(s, self.k), s, 0.0)

    def derivatives(
        self, s: torch.Tensor, tol: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        top = _top(s, self.k)
        h = torch.where(top, s, 0.0)
        s_i, s_j = pairwise(s)
        h_i, h_j = pairwise(h)
        top_i, top_j = pairwise(top)
        both = top_i & top_j
        # in–in: (s_i − s_j)/(s_i − s_j) = 1 and (s_i + s_j)/(s_i + s_j) = 1, also at ties and
        # for zero pairs. Across the cut: s_i/(s_i − s_j), the only entry that blows up at
        # s_k = s_{k+1} (left ±inf/NaN there: no gradient exists). Out–out: 0.
        d_minus = torch.where(both, 1.0, quotient_where(h_i - h_j, s_i - s_j, top_i ^ top_j))
        d_plus = torch.where(both, 1.0, sum_quotient(h_i + h_j, s_i, s_j, tol.unsqueeze(-1)))
        return d_minus, d_plus, top.to(s.dtype)  # h(s)/s = 1 on the top k


@dataclass(frozen=True)
class ProjectorKernel:
    """Φ(λ) = 1 on the top k eigenvalues of the Gram matrix, 0 on the rest (and on its null space)."""

    k: int
    complement: float = 0.0

    def values(self, s: torch.Tensor, tol: torch.Tensor) -> torch.Tensor:
        return _top(s, self.k).to(s.dtype)

    def derivatives(self, s: torch.Tensor, tol: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        top = _top(s, self.k)
        phi = top.to(s.dtype)
        s_i, s_j = pairwise(s)
        phi_i, phi_j = pairwise(phi)
        top_i, top_j = pairwise(top)
        # E across the cut: (Φ_i − Φ_j)/(λ_i − λ_j) with λ_i − λ_j = (s_i − s_j)(s_i + s_j),
        # which does not cancel the way s_i² − s_j² would.
        e = quotient_where(phi_i - phi_j, (s_i - s_j) * (s_i + s_j), top_i ^ top_j)
        scaled_e = s_i * e
        scaled_e0 = quotient_where(phi, s, top)  # s (Φ − Φ(0))/s² = Φ/s
        return scaled_e, scaled_e0


def _where(index: tuple[int, ...]) -> str:
    """The phrase ' in batch element (i, j)' for a batched input, empty for one matrix."""
    return f" in batch element {index}" if index else ""


def _require_gap(s: torch.Tensor, k: int, rows: int, m: int, n: int, caller: str) -> None:
    """Raise when s_k − s_{k+1} ≤ τ in any batch element (s_{k+1} = 0 beyond min(m, n) < rows)."""
    if k == 0 or k == rows:
        return  # f = 0, or the identity on all rows: no cut
    if k < s.shape[-1]:
        s_next = s[..., k]
    else:  # k = min(m, n) < rows: the next eigenvalue of the Gram matrix is 0
        s_next = torch.zeros_like(s[..., k - 1])
    gap = s[..., k - 1] - s_next
    tol = singular_value_tolerance(s, m, n).squeeze(-1)
    tied = gap <= tol
    if bool(tied.any()):
        first = tuple(int(i) for i in torch.nonzero(tied)[0].tolist())
        raise InputError(
            f"{caller}: s_{k} = {float(s[..., k - 1][first]):.6g} and s_{k + 1} = "
            f"{float(s_next[first]):.6g} are equal to rounding (gap {float(gap[first]):.3g} <= "
            f"tolerance {float(tol[first]):.3g}){_where(first)} (shape "
            f"{tuple(s.shape[:-1]) + (m, n)}): the top-{k} singular subspace is not unique, so "
            f"neither the result nor its gradient is defined. Choose a k where the singular "
            f"values are separated, or pass check=False to accept an arbitrary choice "
            f"(its gradient is then non-finite)"
        )


def low_rank(a: torch.Tensor, k: int, *, check: bool = True) -> torch.Tensor:
    """Best rank-``k`` approximation U_k diag(s_k) V_kᴴ of ``a`` (Eckart–Young), exact gradient.

    Domain: s_k > s_{k+1} (see the module docstring). With ``check=True``
    (default) a tie to rounding (gap ≤ ``tie_tolerance``, this includes
    rank(A) < k) raises :class:`~svdguard.errors.InputError`; ``check=False``
    skips the test (needed inside torch.func transforms) and the gradient at
    a tie is then inf/NaN. k = min(m, n) returns A itself; k = 0 zeros.
    Real and complex, float32/float64, batched, any device.

    >>> a = torch.diag(torch.tensor([3.0, 2.0, 2.0, 1.0], dtype=torch.float64))
    >>> low_rank(a, 3).diagonal()  # the tie s_2 = s_3 lies inside the top 3: fine
    tensor([3., 2., 2., 0.], dtype=torch.float64)
    """
    work, out_dtype = matrix_batch(a, "low_rank")
    m, n = work.shape[-2:]
    rank_argument(k, m, n, "low_rank")
    if k == min(m, n):
        return work.clone().to(out_dtype)
    f, s = svd_spectral(work, LowRankKernel(k))
    if check:
        _require_gap(s, k, min(m, n), m, n, "low_rank")
    return f.to(out_dtype)


def projector(a: torch.Tensor, k: int, *, check: bool = True) -> torch.Tensor:
    """Orthogonal projector U_k U_kᴴ (m×m) onto the span of the top-``k`` left singular vectors.

    Domain: s_k > s_{k+1}, and s_k > 0 when k = n < m (see the module
    docstring); ``check`` as in :func:`low_rank`. k = m gives the identity.
    Computed as a function of AAᴴ from the SVD of A (never forming AAᴴ).

    >>> a = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    >>> projector(a, 1)
    tensor([[1., 0., 0.],
            [0., 0., 0.],
            [0., 0., 0.]], dtype=torch.float64)
    """
    work, out_dtype = matrix_batch(a, "projector")
    m, n = work.shape[-2:]
    rank_argument(k, m, n, "projector")
    f, s = gram_spectral(work.mH, ProjectorKernel(k))
    if check:
        _require_gap(s, k, m, m, n, "projector")
    return f.to(out_dtype)
