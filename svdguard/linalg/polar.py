"""The orthonormal polar factor U Vᴴ and the nearest rotation (orthogonal Procrustes).

Polar factor: h(s) = 1, so D⁻ = 0 and D⁺_ij = 2/(s_i + s_j), h(s)/s = 1/s.
The whole gradient lives in the sum part (docs/backward.md), which is exact at ties.

Domain (where the gradient exists): s_{k−1} + s_k > 0 for a square matrix and
s_min > 0 for a non-square one, i.e. at most one zero singular value when
square, none otherwise. Outside it U Vᴴ is not unique; the terms whose
denominator is zero to rounding (s_i + s_j ≤ τ, s_i ≤ τ with τ the
``tie_tolerance``) are dropped, so the gradient stays finite but is that of
one arbitrary choice.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch

from svdguard.errors import InputError, SvdguardWarning
from svdguard.linalg.divided_differences import pairwise, quotient_where, sum_quotient
from svdguard.linalg.gauge import find_gauge_violations
from svdguard.linalg.matrix_input import matrix_batch, square_batch
from svdguard.linalg.spectral_svd import singular_value_tolerance, svd_spectral


@dataclass(frozen=True)
class PolarKernel:
    """h ≡ 1 on (possibly signed) singular values σ."""

    def values(self, s: torch.Tensor, tol: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(s)

    def derivatives(
        self, s: torch.Tensor, tol: torch.Tensor
    ) -> tuple[None, torch.Tensor, torch.Tensor]:
        s_i, s_j = pairwise(s)
        # D⁻ = (1 − 1)/(σ_i − σ_j) = 0, also at ties: None.
        d_plus = sum_quotient(2.0, s_i, s_j, tol.unsqueeze(-1))  # (1 + 1)/(σ_i + σ_j)
        edge = quotient_where(1.0, s, s.abs() > tol)  # h(s)/s = 1/s
        return None, d_plus, edge


def _check_gauge_in_backward(f: torch.Tensor, a: torch.Tensor, flip: bool, caller: str) -> None:
    """Warn in the backward when the loss depends on a choice the SVD of ``a`` leaves arbitrary.

    f = U D Vᴴ with D = I (polar) or diag(1, …, 1, d) (the rotation, d = sign det(U Vᴴ)).
    For an upstream G = ∂L/∂f the SVD sees gU = G V D and gVh = D Uᴴ G, so
    :func:`svdguard.linalg.gauge.find_gauge_violations` gives the verdict: a tie
    between the last two values with d = −1, or two or more zero singular values
    (zero singular values of a non-square matrix), is where no derivative exists.
    """
    if not f.requires_grad:
        return
    u, s, vh = torch.linalg.svd(a.detach(), full_matrices=False)
    ones = torch.ones_like(s)
    if flip:
        d = torch.sign(torch.linalg.det(u) * torch.linalg.det(vh)).to(s.dtype)
        ones = torch.cat([ones[..., :-1], d.unsqueeze(-1)], dim=-1)
    diag = ones.to(u.dtype)

    def hook(grad_f: torch.Tensor) -> None:
        g = grad_f.detach().to(u.dtype)
        grad_u = (g @ vh.mH) * diag.unsqueeze(-2)
        grad_vh = diag.unsqueeze(-1) * (u.mH @ g)
        for violation in find_gauge_violations(u, s, vh, grad_u, grad_vh):
            warnings.warn(f"{caller} gauge check: {violation.describe()}", SvdguardWarning, 2)

    register = cast(Callable[[Callable[[torch.Tensor], None]], object], f.register_hook)
    register(hook)  # torch leaves register_hook untyped


def polar(a: torch.Tensor, *, gauge_check: bool = False) -> torch.Tensor:
    """Orthonormal polar factor U Vᴴ of ``a`` (shape ``(..., m, n)``), with an exact gradient.

    The closest matrix with orthonormal columns (m ≥ n) or rows (m ≤ n) to A in
    the Frobenius norm. Real and complex, float32/float64 (float16/bfloat16 are
    computed in float32), any device.

    Domain of the gradient: at most one zero singular value for square A, none
    for non-square A. Repeated singular values are fine (the gradient is exact
    there). Outside the domain U Vᴴ is not unique and no derivative exists; the
    result is one valid choice and its gradient is finite (terms with a zero
    denominator dropped). ``gauge_check=True`` warns in the backward
    (:class:`~svdguard.SvdguardWarning`, naming the batch element and the
    singular values) when the loss depends on that choice; it costs one more
    SVD and is for eager mode (not inside torch.func transforms).

    >>> a = torch.tensor([[2.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    >>> q = polar(a)
    >>> torch.allclose(q.mT @ q, torch.eye(2, dtype=torch.float64))
    True
    >>> torch.allclose(polar(torch.eye(3)), torch.eye(3))  # every singular value tied
    True
    """
    work, out_dtype = matrix_batch(a, "polar")
    f, _ = svd_spectral(work, PolarKernel())
    if gauge_check:
        _check_gauge_in_backward(f, work, False, "polar")
    return f.to(out_dtype)


def _cross_covariance(a: torch.Tensor, b: object) -> torch.Tensor:
    """Aᴴ B for ``procrustes(A, B)``, with the shapes and dtypes checked."""
    if not isinstance(b, torch.Tensor) or isinstance(b, bool):
        raise TypeError(
            f"procrustes: the second argument is the target B of min ‖A R − B‖ and must be a "
            f"torch.Tensor, got {type(b).__name__}; pass special= by keyword"
        )
    work_a, _ = matrix_batch(a, "procrustes")
    work_b, _ = matrix_batch(b, "procrustes")
    if work_a.shape[-2] != work_b.shape[-2] or work_a.dtype != work_b.dtype:
        raise InputError(
            f"procrustes(A, B): A and B need the same number of rows and the same dtype, got "
            f"A {tuple(a.shape)} ({a.dtype}) and B {tuple(b.shape)} ({b.dtype})"
        )
    try:
        broadcast = cast(Callable[..., torch.Size], torch.broadcast_shapes)  # untyped in torch
        broadcast(work_a.shape[:-2], work_b.shape[:-2])
    except RuntimeError:
        raise InputError(
            f"procrustes(A, B): batch shapes do not broadcast: A {tuple(a.shape)}, B {tuple(b.shape)}"
        ) from None
    return work_a.mH @ work_b


def procrustes(
    a: torch.Tensor,
    b: torch.Tensor | None = None,
    *,
    special: bool | None = None,
    check: bool = True,
    gauge_check: bool = False,
) -> torch.Tensor:
    """The orthogonal matrix (``special=True``: the rotation) nearest to ``a``, or from A to B.

    ``procrustes(M)``: the R nearest to M in the Frobenius norm; for a
    cross-covariance M = Yᵀ X of two point clouds, the R minimizing ‖X − Y R‖
    (Kabsch / orthogonal Procrustes). ``special`` defaults to True here.

    ``procrustes(A, B)``: scipy.linalg.orthogonal_procrustes(A, B)'s meaning,
    the R minimizing ‖A R − B‖_F over orthogonal (unitary) R, i.e. the polar
    factor of M = Aᴴ B; ``special`` defaults to False here (True asks for the
    best rotation, Kabsch). A and B have the same number of rows.

    ``special=True`` (real square M only) returns U diag(1, …, 1, d) Vᵀ with
    d = sign(det(U Vᵀ)), i.e. flips the last singular direction when U Vᵀ
    would be a reflection; ``special=False`` is :func:`polar` of M.

    Domain of the gradient (special=True): s_{n−1} + d·s_n > 0, i.e. *not* both
    (a) the smallest singular value is tied with the next one and (b) the
    determinant correction is active (det A < 0), and not two zero singular
    values. At such points the nearest rotation is not unique (a circle of
    them); with ``check=True`` a :class:`~svdguard.errors.SvdguardWarning` says
    so, the output is one of them and its gradient is finite but arbitrary
    (the dropped term). Ties elsewhere in the spectrum are fine (exact).
    ``check=False`` skips the test (needed inside torch.func transforms,
    which cannot branch on data). ``gauge_check=True`` warns in the backward
    when the loss depends on the arbitrary choice (see :func:`polar`).

    >>> reflection = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    >>> r = procrustes(reflection @ torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)))
    >>> torch.linalg.det(r).item()
    1.0
    """
    if b is not None:
        m = _cross_covariance(a, b)
        special = False if special is None else special
        return procrustes(m, special=special, check=check, gauge_check=gauge_check).to(a.dtype)
    if special is None:
        special = True
    if not special:
        return polar(a, gauge_check=gauge_check)
    work, out_dtype = square_batch(a, "procrustes")
    if work.is_complex():
        raise InputError(
            f"procrustes: special=True needs real matrices (a rotation has det +1), got "
            f"{out_dtype} with shape {tuple(work.shape)}; use special=False for the unitary factor"
        )
    f, sigma = svd_spectral(work, PolarKernel(), rotation=True)
    if check and sigma.shape[-1] >= 2:
        n = work.shape[-1]
        pair_sum = (sigma[..., -2] + sigma[..., -1]).abs()
        tol = singular_value_tolerance(sigma, n, n).squeeze(-1)
        not_unique = pair_sum <= tol
        if bool(not_unique.any()):
            first = tuple(int(i) for i in torch.nonzero(not_unique)[0].tolist())
            warnings.warn(
                f"procrustes: the nearest rotation is not unique"
                f"{f' in batch element {first}' if first else ''}: "
                f"the two smallest singular values are tied with the determinant correction "
                f"active (|σ_(n-1) + σ_n| = {float(pair_sum[first]):.3g} <= {float(tol[first]):.3g}); "
                "the result is one of them and its gradient is arbitrary",
                SvdguardWarning,
                stacklevel=2,
            )
    if gauge_check:
        _check_gauge_in_backward(f, work, True, "procrustes")
    return f.to(out_dtype)
