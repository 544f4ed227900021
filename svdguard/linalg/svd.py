"""``svdguard.svd``: a drop-in for ``torch.linalg.svd`` whose backward stays finite.

The forward is torch's. The backward (:mod:`svdguard.linalg.svd_backward`) uses
all three upstream gradients, the rectangular terms, and one of the stabilizers
of :mod:`svdguard.linalg.stabilizers` for the inner matrix.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, cast

import torch

from svdguard.errors import InputError, SvdguardWarning
from svdguard.linalg.gauge import check_complex_phase, find_gauge_violations
from svdguard.linalg.matrix_input import check_matrix
from svdguard.linalg.stabilizer_values import (
    DEFAULT_TAYLOR_DEGREE,
    METHODS,
    Native,
    stabilizer_from_name,
)
from svdguard.linalg.stabilizers import Stabilizer
from svdguard.linalg.svd_backward import svd_backward

__all__ = [
    "DEFAULT_TAYLOR_DEGREE",
    "METHODS",
    "SVDResult",
    "guarded_pairs",
    "svd",
    "svdvals",
]

#: What :func:`svd` returns: torch's ``torch.return_types.linalg_svd`` named tuple (U, S, Vh).
SVDResult = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

Grads = tuple[torch.Tensor | None, None, None, None, None]


def _values_visible(t: torch.Tensor) -> bool:
    """False under torch.func.vmap, where data-dependent Python (warnings, checks) is not allowed."""
    functorch = torch._C._functorch
    return not functorch.is_batchedtensor(t) and not (
        functorch.is_functorch_wrapped_tensor(t)
        and functorch.is_batchedtensor(functorch.get_unwrapped(t))
    )


class _SVDFunction(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(
        A: torch.Tensor,
        full_matrices: bool,
        driver: str | None,
        stabilizer: Stabilizer,
        gauge_check: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        U, S, Vh = torch.linalg.svd(A, full_matrices=full_matrices, driver=driver)
        return U, S, Vh

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Any, ...]) -> None:
        _, _, _, stabilizer, gauge_check = inputs
        ctx.save_for_backward(*output)
        ctx.stabilizer = stabilizer
        ctx.gauge_check = gauge_check
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(
        ctx: Any,
        gU: torch.Tensor | None,
        gS: torch.Tensor | None,
        gVh: torch.Tensor | None,
    ) -> Grads:
        U, S, Vh = ctx.saved_tensors
        k = S.shape[-1]
        m, n = U.shape[-2], Vh.shape[-1]
        if U.shape[-1] != k or Vh.shape[-2] != k:
            # full_matrices=True: gradients on the extra columns are ignored, as torch documents.
            U, Vh = U[..., :k], Vh[..., :k, :]
            gU = None if gU is None else gU[..., :k]
            gVh = None if gVh is None else gVh[..., :k, :]
        if k == 0:
            zero = torch.zeros(*U.shape[:-2], m, n, dtype=U.dtype, device=U.device)
            return zero, None, None, None, None
        stabilizer: Stabilizer = ctx.stabilizer
        visible = _values_visible(S)
        if visible:
            _inspect_before_backward(ctx.gauge_check, stabilizer, U, S, Vh, gU, gVh)
        grad = svd_backward(stabilizer, U, S, Vh, gU, gS, gVh, values_visible=visible)
        return grad, None, None, None, None


def _inspect_before_backward(
    gauge_check: bool,
    stabilizer: Stabilizer,
    U: torch.Tensor,
    S: torch.Tensor,
    Vh: torch.Tensor,
    gU: torch.Tensor | None,
    gVh: torch.Tensor | None,
) -> None:
    """The value-dependent checks: complex phase (raises), gauge check and the stabilizer's notes."""
    if U.dtype.is_complex:
        check_complex_phase(U.detach(), Vh.detach(), _detach(gU), _detach(gVh))
    if gauge_check:
        for violation in find_gauge_violations(U, S, Vh, _detach(gU), _detach(gVh)):
            warnings.warn(f"svdguard.svd gauge check: {violation.describe()}", SvdguardWarning, 4)
    for note in stabilizer.notes(S.detach(), U.shape[-2], Vh.shape[-1]):
        warnings.warn(f"svdguard.svd: {note}", SvdguardWarning, 4)


def _detach(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach()


def _check_matrix(A: Any, what: str) -> torch.Tensor:
    """The one matrix validator (:func:`svdguard.linalg.matrix_input.check_matrix`); empty allowed."""
    return check_matrix(A, what, allow_empty=True)


def _check_out(out: Any, count: int, what: str, A: torch.Tensor) -> None:
    """out= works as in torch, without autograd (torch refuses it too): say so clearly."""
    tensors = out if isinstance(out, tuple | list) else (out,)
    if len(tensors) != count or not all(isinstance(t, torch.Tensor) for t in tensors):
        shape = "a tuple of three tensors (U, S, Vh)" if count == 3 else "a tensor"
        raise InputError(f"{what}: out= must be {shape}, got {type(out).__name__}")
    if torch.is_grad_enabled() and A.requires_grad:
        raise InputError(
            f"{what}: out= does not support automatic differentiation (as in torch.linalg); "
            "call it without out= to get a gradient"
        )


def svd(
    A: torch.Tensor,
    full_matrices: bool = True,
    *,
    driver: str | None = None,
    out: Any = None,
    method: str | Stabilizer = "auto",
    eps: float | None = None,
    degree: int | None = None,
    max_cond: float | None = None,
    gauge_check: bool = False,
) -> SVDResult:
    r"""Singular value decomposition ``A = U diag(S) Vh`` with a backward that stays finite.

    A drop-in for :func:`torch.linalg.svd`: the same arguments with the same
    defaults (``full_matrices=True``, ``driver=None``, ``out=None``) and the same
    return value (the named tuple (U, S, Vh), S descending, batch shape
    ``(..., m, n)``, real and complex). ``driver`` is passed to torch (which
    accepts it on CUDA only). ``out=`` works as in torch, without autograd.
    float16 and bfloat16 inputs are computed, and returned, in float32.

    The backward (docs/backward.md) uses all three upstream gradients and the
    rectangular terms; for ``full_matrices=True`` gradients on the extra columns
    of U and rows of Vh are ignored, as torch documents. ``method`` is a name
    or a stabilizer value (:mod:`svdguard.linalg.stabilizers`, docs/stabilizers.md);
    ``eps``, ``degree``, ``max_cond`` are the named method's parameter. With
    J = skew(Uᴴ gU), K = skew(Vᴴ gV), d_ij = s_j − s_i, σ_ij = s_i + s_j:

    ``"auto"`` / :class:`~svdguard.linalg.stabilizers.Auto` (default)
        X_ij = (J+K)_ij / (2 d_ij) + (J−K)_ij / (2 σ_ij), every reciprocal exact
        above rounding level τ = max(m, n)·ε·σ_max. A term whose denominator is
        at rounding level is kept only if its numerator vanishes with it
        (resolved to √ε, quotient within 1/√ε of the gradient's scale), so
        losses such as ⟨W, U diag(S) Vᴴ⟩ stay exact on rank-deficient matrices;
        otherwise it is dropped. At an exact tie the result is exact for losses
        of U Vᴴ or of S; for other spectral functions the in-block part is not
        in the factors (use :mod:`svdguard.functional`).
    ``"clamp"`` / ``Clamp(eps)`` (absolute; default √ε·σ_max)
        Difference part with d̃ = sign(d)·max(|d|, eps), sum part exact;
        rectangular 1/s → 1/max(s, eps). Biased where a gap is below eps.
    ``"seed"`` / ``Seed(eps)``
        The literal rule of Ionescu et al. (2015): the clamped difference times
        1/σ on the combined kernel (also loses the sum part at a tie).
    ``"lorentz"`` / ``Lorentz(eps)`` (units of s²; default ε·σ_max²)
        Difference part with 1/d → d/(d² + eps), sum part exact; 1/s → s/(s² + eps).
    ``"taylor"`` / ``Taylor(degree)`` (default P = 9)
        Wang et al. (TPAMI 2021): the degree-P series for 1/(λ_j − λ_i), λ = s²,
        in the difference part (1/(2d) = σ/(2(λ_j − λ_i))); sum part exact.
    ``"trivialize"`` / ``Trivialize(max_cond)`` (default 1/√ε)
        ``auto``, except that a matrix with κ above ``max_cond`` gets a zero
        gradient; a :class:`~svdguard.SvdguardWarning` names the batch elements.
    ``"native"`` / ``Native()``
        torch's own backward, for comparison.

    ``gauge_check=True`` warns (:class:`~svdguard.SvdguardWarning`) when the loss
    depends on a choice the SVD leaves arbitrary: the basis inside a block of
    tied singular values, or the singular vectors of numerically zero singular
    values (no derivative exists there), naming the batch element and the
    values. For complex inputs a loss that depends on the phase of the singular
    vectors raises :class:`~svdguard.errors.IllDefinedGradientError`, like torch.

    Double backward works, and so do ``torch.func.vmap/grad/jacrev`` (under vmap
    the value-dependent warnings and checks are skipped).

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
    stabilizer = stabilizer_from_name(method, eps=eps, degree=degree, max_cond=max_cond)
    if out is not None:
        if not isinstance(A, torch.Tensor):
            _check_matrix(A, "svdguard.svd")
        _check_out(out, 3, "svdguard.svd", A)
        return cast(
            SVDResult, torch.linalg.svd(A, full_matrices=full_matrices, driver=driver, out=out)
        )
    A = _check_matrix(A, "svdguard.svd")
    if isinstance(stabilizer, Native):
        return cast(SVDResult, torch.linalg.svd(A, full_matrices=full_matrices, driver=driver))
    apply = cast(Callable[..., SVDResult], _SVDFunction.apply)  # torch leaves apply untyped
    U, S, Vh = apply(A, full_matrices, driver, stabilizer, bool(gauge_check))
    named_tuple = getattr(torch.return_types, "linalg_svd")  # noqa: B009 (absent from torch's stubs)
    return cast(SVDResult, named_tuple((U, S, Vh)))


def svdvals(A: torch.Tensor, *, driver: str | None = None, out: Any = None) -> torch.Tensor:
    """Singular values, descending: a drop-in for :func:`torch.linalg.svdvals`.

    The same arguments and defaults (``driver`` goes to torch, ``out=`` works as
    in torch, without autograd). The gradient is U diag(gS) Vᴴ, finite for
    every input. Without autograd only the values are computed; with it, U and
    V come from :func:`svd` (``auto``), so second derivatives stay finite as
    well. float16/bfloat16 inputs are computed and returned in float32.
    """
    if out is not None:
        if not isinstance(A, torch.Tensor):
            _check_matrix(A, "svdguard.svdvals")
        _check_out(out, 1, "svdguard.svdvals", A)
        return cast(torch.Tensor, torch.linalg.svdvals(A, driver=driver, out=out))
    A = _check_matrix(A, "svdguard.svdvals")
    if not (torch.is_grad_enabled() and A.requires_grad):
        return cast(torch.Tensor, torch.linalg.svdvals(A, driver=driver))
    return svd(A, full_matrices=False, driver=driver)[1]


def guarded_pairs(
    S: torch.Tensor,
    m: int,
    n: int,
    *,
    method: str | Stabilizer = "auto",
    eps: float | None = None,
    degree: int | None = None,
) -> torch.Tensor:
    """Pairs i < j whose backward kernel the method changes, as a bool tensor (..., k, k).

    The stabilizer's ``acting_pairs``: auto/trivialize the pairs with a
    denominator at rounding level (|s_i − s_j| ≤ τ or s_i + s_j ≤ τ); clamp and
    seed |s_i − s_j| < eps; lorentz eps/(d² + eps) > √ε (the relative bias);
    taylor (λ_b/λ_a)^{P+1} > √ε (the truncation error); native none.
    """
    stabilizer = stabilizer_from_name(method, eps=eps, degree=degree)
    return stabilizer.acting_pairs(S.detach(), m, n)
