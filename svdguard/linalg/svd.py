"""``svdguard.svd``: a drop-in for ``torch.linalg.svd`` whose backward stays finite.

The forward is torch's. The backward (:mod:`svdguard.linalg.svd_backward`) uses
all three upstream gradients, the rectangular terms, and one of the stabilizers
of :mod:`svdguard.linalg.stabilizers` for the inner matrix.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from svdguard.errors import InputError, SvdguardWarning
from svdguard.linalg.gauge import check_complex_phase, find_gauge_violations
from svdguard.linalg.spectrum import condition_number
from svdguard.linalg.svd_backward import BackwardConfig, svd_backward
from svdguard.tolerances import (
    compute_dtype,
    default_clamp_eps,
    default_lorentz_eps,
    stabilizer_bias_tolerance,
    tie_tolerance,
)

#: What :func:`svd` returns: torch's ``torch.return_types.linalg_svd`` named tuple (U, S, Vh).
SVDResult = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

METHODS = ("auto", "clamp", "lorentz", "taylor", "trivialize", "native")

#: Default degree P of ``method="taylor"`` (Wang et al. report P ≈ 9 as a good trade-off).
DEFAULT_TAYLOR_DEGREE = 9


def _values_visible(t: torch.Tensor) -> bool:
    """False under torch.func.vmap, where data-dependent Python (warnings, checks) is not allowed."""
    return not torch._C._functorch.is_batchedtensor(t) and not (
        torch._C._functorch.is_functorch_wrapped_tensor(t)
        and torch._C._functorch.is_batchedtensor(torch._C._functorch.get_unwrapped(t))
    )


def _thresholds(
    config: BackwardConfig, S: torch.Tensor, m: int, n: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(τ, eps) per matrix, shaped (..., 1, 1); thresholds are constants for autograd."""
    sigma_max = S.detach()[..., :1].unsqueeze(-1)
    tau = tie_tolerance(sigma_max, S.dtype, m, n)
    eps: torch.Tensor | None = None
    if config.method == "clamp":
        eps = (
            default_clamp_eps(sigma_max, S.dtype)
            if config.eps is None
            else torch.full_like(sigma_max, config.eps)
        )
    elif config.method == "lorentz":
        eps = (
            default_lorentz_eps(sigma_max, S.dtype)
            if config.eps is None
            else torch.full_like(sigma_max, config.eps)
        )
    return tau, eps


class _SVDFunction(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(  # type: ignore[override]
        A: torch.Tensor, full_matrices: bool, config: BackwardConfig, gauge_check: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        U, S, Vh = torch.linalg.svd(A, full_matrices=full_matrices)
        return U, S, Vh

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        _, _, config, gauge_check = inputs
        ctx.save_for_backward(*output)
        ctx.config = config
        ctx.gauge_check = gauge_check
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx: Any, gU, gS, gVh):  # type: ignore[override]
        U, S, Vh = ctx.saved_tensors
        k = S.shape[-1]
        m, n = U.shape[-2], Vh.shape[-1]
        if U.shape[-1] != k or Vh.shape[-2] != k:
            # full_matrices=True: gradients on the extra columns are ignored, as torch documents.
            U, Vh = U[..., :k], Vh[..., :k, :]
            gU = None if gU is None else gU[..., :k]
            gVh = None if gVh is None else gVh[..., :k, :]
        if k == 0:
            return (
                torch.zeros(*U.shape[:-2], m, n, dtype=U.dtype, device=U.device),
                None,
                None,
                None,
            )
        config: BackwardConfig = ctx.config
        visible = _values_visible(S)
        if visible and (U.is_complex() or ctx.gauge_check or config.method == "trivialize"):
            _inspect_before_backward(ctx, config, U, S, Vh, gU, gVh)
        tau, eps = _thresholds(config, S, m, n)
        grad = svd_backward(config, U, S, Vh, gU, gS, gVh, tau, eps, fast_path_allowed=visible)
        return grad, None, None, None


def _inspect_before_backward(ctx, config, U, S, Vh, gU, gVh) -> None:
    """The value-dependent checks: complex phase (raises), gauge check and trivialize (warn)."""
    if U.dtype.is_complex:
        check_complex_phase(U.detach(), Vh.detach(), _detach(gU), _detach(gVh))
    if ctx.gauge_check:
        for violation in find_gauge_violations(U, S, Vh, _detach(gU), _detach(gVh)):
            warnings.warn(f"svdguard.svd gauge check: {violation.describe()}", SvdguardWarning, 3)
    if config.method == "trivialize":
        limit = config.cond_limit(S.dtype)
        bad = (condition_number(S.detach()) > limit).nonzero().tolist()
        if bad:
            which = ", ".join(str(tuple(b)) for b in bad[:10]) + (" ..." if len(bad) > 10 else "")
            where = f"batch elements {which}" if S.dim() > 1 else "the matrix"
            warnings.warn(
                f"svdguard.svd(method='trivialize'): condition number above {limit:.3g} "
                f"for {where}; their gradient is set to zero",
                SvdguardWarning,
                3,
            )


def _detach(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach()


def _check_matrix(A: Any, what: str) -> torch.Tensor:
    if not isinstance(A, torch.Tensor):
        raise InputError(f"{what} expects a torch.Tensor, got {type(A).__name__}")
    if A.dim() < 2:
        raise InputError(
            f"{what} expects a matrix or a batch of matrices (..., m, n), got shape {tuple(A.shape)}"
        )
    if not (A.dtype.is_floating_point or A.dtype.is_complex):
        raise InputError(f"{what} expects a floating or complex tensor, got dtype {A.dtype}")
    target = compute_dtype(A.dtype)
    return A if A.dtype == target else A.to(target)


def _make_config(
    method: str, eps: float | None, degree: int | None, max_cond: float | None
) -> BackwardConfig:
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if eps is not None and method not in ("clamp", "lorentz"):
        raise InputError(f"eps applies to method='clamp' or 'lorentz', not {method!r}")
    if eps is not None and not eps > 0:
        raise InputError(f"eps must be positive, got {eps}")
    if degree is not None and method != "taylor":
        raise InputError(f"degree applies to method='taylor', not {method!r}")
    if degree is not None and (int(degree) != degree or degree < 0):
        raise InputError(f"degree must be a non-negative integer, got {degree}")
    if max_cond is not None and method != "trivialize":
        raise InputError(f"max_cond applies to method='trivialize', not {method!r}")
    if max_cond is not None and not max_cond >= 1:
        raise InputError(f"max_cond must be at least 1, got {max_cond}")
    return BackwardConfig(
        method=method,
        eps=None if eps is None else float(eps),
        degree=DEFAULT_TAYLOR_DEGREE if degree is None else int(degree),
        max_cond=None if max_cond is None else float(max_cond),
    )


def svd(
    A: torch.Tensor,
    full_matrices: bool = False,
    *,
    method: str = "auto",
    eps: float | None = None,
    degree: int | None = None,
    max_cond: float | None = None,
    gauge_check: bool = False,
) -> SVDResult:
    r"""Singular value decomposition ``A = U diag(S) Vh`` with a backward that stays finite.

    Returns ``(U, S, Vh)`` exactly like :func:`torch.linalg.svd` (same named-tuple
    fields, S descending, batch shape ``(..., m, n)``, real and complex). Note
    that ``full_matrices`` defaults to False here (the thin SVD, which is what a
    differentiable computation wants); torch's default is True. float16 and
    bfloat16 inputs are computed, and returned, in float32.

    The backward (MATH.md §1) uses all three upstream gradients and the
    rectangular terms; for ``full_matrices=True`` gradients on the extra columns of
    U and rows of Vh are ignored, as torch documents. With J = skew(Uᴴ gU),
    K = skew(Vᴴ gV), d_ij = s_j − s_i and σ_ij = s_i + s_j, the methods are:

    ``"auto"`` (default)
        X_ij = (J+K)_ij / (2 d_ij) + (J−K)_ij / (2 σ_ij), every reciprocal exact.
        Only a denominator at rounding level — |d_ij|, σ_ij or s_i at most
        τ = max(m, n)·ε·σ_max (:func:`svdguard.tolerances.tie_tolerance`) —
        drops its own term. Exact (to rounding) wherever the factors determine
        the gradient; no bias anywhere else. At an exact tie it returns the
        finite part the factors determine: the whole gradient for losses of
        U Vᴴ (whose difference part vanishes) or of S alone. For a smooth
        spectral function such as U diag(S) Vᴴ or U diag(S³) Vᴴ the in-block
        limit of (J+K)_ij / (2 d_ij) is finite but not contained in the
        factors (MATH.md §2), so that part is lost: use
        :mod:`svdguard.functional` for those. For a loss on an arbitrary basis
        the in-block part is undefined and dropped (``gauge_check=True`` warns).
    ``"clamp"`` with ``eps`` (absolute; default √ε·σ_max)
        The seed's rule (Ionescu et al. 2015) on the combined kernel:
        X_ij = (J_ij s_j + s_i K_ij) / (d̃_ij σ_ij), d̃ = sign(d)·max(|d|, eps),
        and 1/s_i → 1/max(s_i, eps). Bounded by ~1/eps, but biased wherever a
        gap is below about eps, and at a tie it also loses the exact sum part.
    ``"lorentz"`` with ``eps`` (units of s²; default ε·σ_max²)
        Lorentzian broadening (Liao et al. 2019) of the difference part only:
        1/d → d/(d² + eps); the sum part stays exact; 1/s_i → s_i/(s_i² + eps).
        Smooth, bounded by 1/(2√eps), biased by eps/(d² + eps) at every gap.
    ``"taylor"`` with ``degree`` P (default 9)
        Wang et al. (TPAMI 2021): with λ = s², 1/(λ_a − λ_b) ≈ (1/λ_a) Σ_{p≤P} (λ_b/λ_a)^p
        for λ_a ≥ λ_b, bounded by (P+1)/λ_a. Biased by the relative factor
        (λ_b/λ_a)^{P+1} at every pair, most where values are close.
    ``"trivialize"`` with ``max_cond`` (default 1/√ε)
        ``auto``, except that a matrix with κ = σ_max/σ_min above ``max_cond`` gets
        a zero gradient; a :class:`~svdguard.SvdguardWarning` names the batch
        elements. Trades all gradient signal of those matrices for safety.
    ``"native"``
        torch's own backward, for comparison (NaN/inf at ties and, for
        rectangular matrices, at zero singular values).

    ``gauge_check=True`` warns (:class:`~svdguard.SvdguardWarning`) when, inside a
    block of tied singular values, the loss depends on the arbitrary basis
    (MATH.md §3), naming the batch element, the block and the offending size.
    For complex inputs a loss that depends on the phase of the singular
    vectors raises :class:`~svdguard.errors.IllDefinedGradientError`, like torch.

    Double backward works (the backward is made of differentiable torch ops),
    and so do ``torch.func.vmap/grad/jacrev`` (under vmap the value-dependent
    warnings and checks are skipped).

    The gradient of ⟨W, U Vᴴ⟩ at the identity (every singular value tied) is
    (W − Wᵀ)/2; torch.linalg.svd's backward returns NaN there:

    >>> import torch, svdguard
    >>> A = torch.eye(3, dtype=torch.float64, requires_grad=True)
    >>> W = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    >>> U, S, Vh = svdguard.svd(A)
    >>> (W * (U @ Vh)).sum().backward()
    >>> A.grad
    tensor([[ 0.0000,  0.5000,  0.0000],
            [-0.5000,  0.0000,  0.0000],
            [ 0.0000,  0.0000,  0.0000]], dtype=torch.float64)
    """
    A = _check_matrix(A, "svdguard.svd")
    config = _make_config(method, eps, degree, max_cond)
    if method == "native":
        return torch.linalg.svd(A, full_matrices=full_matrices)
    U, S, Vh = _SVDFunction.apply(A, full_matrices, config, bool(gauge_check))
    return torch.return_types.linalg_svd((U, S, Vh))  # type: ignore[attr-defined]


def svdvals(A: torch.Tensor) -> torch.Tensor:
    """Singular values, descending, like :func:`torch.linalg.svdvals`.

    The gradient is U diag(gS) Vᴴ, finite for every input. Without autograd
    only the values are computed; with it, U and V come from :func:`svd`
    (``auto``), so second derivatives stay finite as well. float16/bfloat16
    inputs are computed and returned in float32.
    """
    A = _check_matrix(A, "svdguard.svdvals")
    if not (torch.is_grad_enabled() and A.requires_grad):
        return torch.linalg.svdvals(A)
    return svd(A)[1]


def guarded_pairs(
    S: torch.Tensor,
    m: int,
    n: int,
    *,
    method: str = "auto",
    eps: float | None = None,
    degree: int | None = None,
) -> torch.Tensor:
    """Pairs i < j whose backward kernel the method changes, as a bool tensor (..., k, k).

    auto/trivialize: the pairs with |s_i − s_j| ≤ τ or s_i + s_j ≤ τ (dropped terms);
    clamp: |s_i − s_j| < eps; lorentz: eps/(d² + eps) > √ε (the relative bias);
    taylor: (λ_b/λ_a)^{P+1} > √ε (the truncation error); native: none.
    """
    config = _make_config(method, eps, degree, None if method != "trivialize" else 1.0)
    S = S.detach()
    k = S.shape[-1]
    upper = torch.ones(k, k, dtype=torch.bool, device=S.device).triu(1)
    if method == "native" or k == 0:
        return torch.zeros(*S.shape, k, dtype=torch.bool, device=S.device)
    tau, eps_t = _thresholds(config, S, m, n)
    s_i, s_j = S.unsqueeze(-1), S.unsqueeze(-2)
    d = (s_j - s_i).abs()
    bias = stabilizer_bias_tolerance(S.dtype)
    if method in ("clamp", "lorentz"):
        assert eps_t is not None  # _thresholds sets it for these two methods
        acting = d < eps_t if method == "clamp" else eps_t / (d * d + eps_t) > bias
    elif method == "taylor":
        lam_i, lam_j = s_i * s_i, s_j * s_j
        big = torch.maximum(lam_i, lam_j)
        ratio = torch.where(big > 0, torch.minimum(lam_i, lam_j) / torch.where(big > 0, big, 1), 0)
        acting = ratio ** (config.degree + 1) > bias
    else:
        acting = (d <= tau) | (s_i + s_j <= tau)
    return acting & upper
