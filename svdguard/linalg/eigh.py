r"""``svdguard.eigh`` / ``svdguard.eigvalsh``: symmetric eigendecomposition with a finite backward.

For a Hermitian A = V diag(λ) Vᴴ (λ ascending, as torch returns them) the backward is
(docs/guard.md, section "eigh")

    gA = V ( diag(gλ) + F ∘ skew(Vᴴ gV) / 2 ) Vᴴ,     F_ij = 1 / (λ_j − λ_i)  (i ≠ j),

with skew(X) = X − Xᴴ. skew/2 projects onto the tangent space of the unitary group;
F is antisymmetric, so F ∘ skew(·) is Hermitian and so is gA. torch's own
backward is the same formula with every F_ij exact, which is inf or NaN as soon
as two eigenvalues are equal. The single place where 1/(λ_j − λ_i) is formed is
:func:`guarded_reciprocal`; each method replaces it by a finite value:

``"auto"``
    exact where |λ_j − λ_i| > τ = n·ε·max|λ| (:func:`eigh_tie_tolerance`), 0 at or
    below τ (a tie at rounding level). Exact wherever the factors determine the
    gradient: functions of the eigenvalues alone, projectors onto eigenspaces
    separated from the rest, eigenvectors of simple eigenvalues while others
    are tied — losses for which skew(Vᴴ gV) vanishes inside every tied block.
    For a smooth spectral function V f(Λ) Vᴴ the in-block limit
    (f(λ_j) − f(λ_i))/(λ_j − λ_i) → f'(λ) is finite but not contained in the
    factors, so that part is lost at an exact tie (as for the SVD; the
    Daleckii–Krein route of docs/matrix-functions.md keeps it). Above τ the
    accuracy is that of the gap: a relative ε·max|λ|/|λ_j − λ_i|.
``"clamp"`` with ``eps`` (absolute, default √ε·max|λ|)
    1/(λ_j − λ_i) → 1/(sign·max(|λ_j − λ_i|, eps)), sign = +1 for j > i.
``"lorentz"`` with ``eps`` (units of λ², default ε·max|λ|²)
    1/(λ_j − λ_i) → (λ_j − λ_i) / ((λ_j − λ_i)² + eps).
``"native"``
    torch's own backward (torch.linalg.eigh itself), for comparison.

The forward is ``torch.linalg.eigh`` itself (same LAPACK call, bitwise the same
result). The backward is made of differentiable torch ops (double backward works)
without data-dependent Python control flow (``torch.func.vmap`` works; under vmap
the value-dependent checks below are skipped).

``gauge_check=True`` warns (:class:`~svdguard.SvdguardWarning`) when the loss depends on
the basis chosen inside a tied eigenspace; for complex inputs a loss that depends on the
phase of the eigenvectors raises :class:`~svdguard.errors.IllDefinedGradientError`, like torch.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch

from svdguard.errors import IllDefinedGradientError, InputError, SvdguardWarning
from svdguard.linalg.gauge import tied_blocks
from svdguard.linalg.stabilizer_values import Native, stabilizer_from_name
from svdguard.linalg.stabilizers import Stabilizer
from svdguard.tolerances import (
    complex_phase_tolerance,
    compute_dtype,
    gauge_tolerance,
    tie_tolerance,
)

#: The backward methods :func:`eigh` implements.
EIGH_METHODS = ("auto", "clamp", "lorentz", "native")

#: What :func:`eigh` returns: torch's ``torch.return_types.linalg_eigh`` (eigenvalues, eigenvectors).
EighResult = tuple[torch.Tensor, torch.Tensor]


# --- thresholds (dtype- and shape-derived, documented here) ---------------------------


def eigh_tie_tolerance(lam_absmax: torch.Tensor, dtype: torch.dtype, n: int) -> torch.Tensor:
    """Rounding level of the eigenvalues of an n×n Hermitian matrix: τ = n · ε · max|λ|.

    A computed symmetric eigendecomposition is backward stable: each eigenvalue
    carries an absolute error of order p(n)·ε·‖A‖₂ = p(n)·ε·max|λ| (LAPACK Users'
    Guide §4.7). Two eigenvalues closer than τ cannot be told apart from a tie,
    so ``method="auto"`` drops their term and computes every larger gap exactly.
    The same rule as the SVD's tie tolerance, with ‖A‖₂ = max|λ|.
    """
    return tie_tolerance(lam_absmax, dtype, n, n)


# --- configuration --------------------------------------------------------------------


@dataclass(frozen=True)
class EighConfig:
    """A stabilizer value (:mod:`svdguard.linalg.stabilizer_values`) applied to eigenvalues."""

    stabilizer: Stabilizer

    def tau(self, lam: torch.Tensor) -> torch.Tensor:
        """τ per matrix, shaped (..., 1, 1), from detached eigenvalues (..., n)."""
        return eigh_tie_tolerance(_absmax(lam), lam.dtype, lam.shape[-1])


def _absmax(lam: torch.Tensor) -> torch.Tensor:
    """max|λ| per matrix, shaped (..., 1, 1): ‖A‖₂, the scale of every default threshold."""
    return lam.detach().abs().amax(dim=-1, keepdim=True).unsqueeze(-1)


def make_eigh_config(method: str | Stabilizer, eps: float | None = None) -> EighConfig | None:
    """Map ``method=``/``eps=`` of :func:`eigh` to a stabilizer value; None for torch's own backward.

    Names are those of :data:`EIGH_METHODS`; a value following
    :class:`~svdguard.linalg.stabilizers.Stabilizer` acts through its guarded
    reciprocal of a difference (``inverse_differences``), which is all the eigh
    kernel needs.
    """
    if isinstance(method, str) and method not in EIGH_METHODS:
        raise InputError(
            f"svdguard.eigh: unknown method={method!r}; choose one of {', '.join(EIGH_METHODS)}"
        )
    stabilizer = stabilizer_from_name(method, eps=eps)
    return None if isinstance(stabilizer, Native) else EighConfig(stabilizer)


# --- the kernel -----------------------------------------------------------------------


def guarded_reciprocal(config: EighConfig, lam: torch.Tensor) -> torch.Tensor:
    """F_ij ≈ 1/(λ_j − λ_i) for ascending λ (..., n); 0 on the diagonal; finite in every derivative.

    The stabilizer's ``inverse_differences`` is written for descending values (the
    SVD's order; an exact tie takes the sign distinct descending values would have),
    so it is applied to −λ, which is descending: 1/((−λ_j) − (−λ_i)) = −1/(λ_j − λ_i).
    auto: 1/d where |d| > τ = n·ε·max|λ|, else 0; clamp: 1/(sign·max(|d|, eps)),
    eps = √ε·max|λ| by default; lorentz: d/(d² + eps), eps = ε·max|λ|² by default
    (the SVD's defaults with σ_max → max|λ|, see docs/stabilizers.md).
    """
    return -config.stabilizer.inverse_differences(-lam, _absmax(lam), config.tau(lam))


def eigh_backward(
    config: EighConfig,
    lam: torch.Tensor,
    V: torch.Tensor,
    g_lam: torch.Tensor | None,
    gV: torch.Tensor | None,
) -> torch.Tensor:
    """gA = V (diag(gλ) + F ∘ skew(Vᴴ gV)/2) Vᴴ from λ (..., n), V (..., n, n); None = zero."""
    if gV is None:
        if g_lam is None:
            return torch.zeros(*V.shape, dtype=V.dtype, device=V.device)
        inner = torch.diag_embed(g_lam.to(V.dtype))
    else:
        vh_gv = V.mH @ gV
        half_skew = (vh_gv - vh_gv.mH) / 2  # tangent direction; its diagonal is the phase
        inner = half_skew * guarded_reciprocal(config, lam).to(V.dtype)
        if g_lam is not None:
            inner = inner + torch.diag_embed(g_lam.to(V.dtype))
    return V @ inner @ V.mH


# --- checks that read values (skipped under torch.func.vmap) ---------------------------


def _values_visible(t: torch.Tensor) -> bool:
    """False under torch.func.vmap, where data-dependent Python is not allowed."""
    functorch = torch._C._functorch
    if functorch.is_batchedtensor(t):
        return False
    return not (
        functorch.is_functorch_wrapped_tensor(t)
        and functorch.is_batchedtensor(functorch.get_unwrapped(t))
    )


def check_eigenvector_phase(V: torch.Tensor, gV: torch.Tensor) -> None:
    """Raise like torch when a complex loss depends on the phase of the eigenvectors.

    Each eigenvector is defined up to e^{iφ}; a phase-invariant loss has
    Im(diag(Vᴴ gV)) = 0.
    """
    im = torch.imag((V.mH @ gV).diagonal(dim1=-2, dim2=-1))
    rtol, atol = complex_phase_tolerance()
    if not torch.allclose(im, torch.zeros_like(im), rtol=rtol, atol=atol):
        raise IllDefinedGradientError(
            "eigh backward: the eigenvectors of a complex Hermitian matrix are defined only up "
            "to a phase e^{iφ} each, and this loss depends on that phase, so its gradient is "
            "ill-defined (make the loss invariant, e.g. use V diag(f(λ)) Vᴴ or |V|)"
        )


def find_eigenspace_gauge_violations(
    lam: torch.Tensor, V: torch.Tensor, gV: torch.Tensor, tau: torch.Tensor
) -> list[str]:
    """Descriptions of tied eigenspaces (per batch element) inside which the loss picks a basis.

    For a loss invariant under rotations inside a tied block, skew(Vᴴ gV) vanishes
    on that block up to rounding; relative to ‖gV‖ above √ε
    (:func:`svdguard.tolerances.gauge_tolerance`) it does not.
    """
    vh_gv = V.mH @ gV
    skew = (vh_gv - vh_gv.mH).abs()
    scale = torch.linalg.matrix_norm(gV)
    n = lam.shape[-1]
    batch_shape = lam.shape[:-1]
    flat_lam, flat_skew = lam.reshape(-1, n), skew.reshape(-1, n, n)
    flat_tau, flat_scale = tau.reshape(-1), scale.reshape(-1)
    limit = gauge_tolerance(lam.dtype)
    found = []
    for b in range(flat_lam.shape[0]):
        for block in tied_blocks(flat_lam[b], flat_tau[b]):
            index = list(block)
            size = float(flat_skew[b][index][:, index].fill_diagonal_(0).max())
            relative = size / max(float(flat_scale[b]), torch.finfo(lam.dtype).tiny)
            if relative > limit:
                where = ""
                if batch_shape:
                    flat = torch.tensor(b)
                    where = f"batch element {tuple(int(i) for i in torch.unravel_index(flat, batch_shape))}, "
                found.append(
                    f"{where}eigenvalues {index} are tied and the loss depends on the basis chosen "
                    f"inside their eigenspace: |skew(Vᴴ gV)| = {size:.3g} ({relative:.3g} of the "
                    "upstream gradient); its gradient is undefined there"
                )
    return found


# --- the autograd Function and the public functions ----------------------------------


class _EighFunction(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(
        A: torch.Tensor, UPLO: str, config: EighConfig, gauge_check: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        L, V = torch.linalg.eigh(A, UPLO=UPLO)
        return L, V

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Any, ...]) -> None:
        _, _, config, gauge_check = inputs
        ctx.save_for_backward(*output)
        ctx.config = config
        ctx.gauge_check = gauge_check
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(
        ctx: Any, g_lam: torch.Tensor | None, gV: torch.Tensor | None
    ) -> tuple[torch.Tensor, None, None, None]:
        lam, V = ctx.saved_tensors
        config: EighConfig = ctx.config
        if gV is not None and _values_visible(lam):
            if V.is_complex():
                check_eigenvector_phase(V.detach(), gV.detach())
            if ctx.gauge_check:
                tau = config.tau(lam)
                for message in find_eigenspace_gauge_violations(
                    lam.detach(), V.detach(), gV.detach(), tau.reshape(lam.shape[:-1])
                ):
                    warnings.warn(f"svdguard.eigh gauge check: {message}", SvdguardWarning, 3)
        return eigh_backward(config, lam, V, g_lam, gV), None, None, None


def _check_hermitian_input(A: Any, what: str) -> torch.Tensor:
    if not isinstance(A, torch.Tensor):
        raise InputError(f"{what} expects a torch.Tensor, got {type(A).__name__}")
    if A.dim() < 2 or A.shape[-1] != A.shape[-2]:
        raise InputError(
            f"{what} expects a square matrix or a batch of them (..., n, n), "
            f"got shape {tuple(A.shape)}"
        )
    if not (A.dtype.is_floating_point or A.dtype.is_complex):
        raise InputError(f"{what} expects a floating or complex tensor, got dtype {A.dtype}")
    target = compute_dtype(A.dtype)
    return A if A.dtype == target else A.to(target)


def _check_uplo(UPLO: Any, what: str) -> str:
    if UPLO not in ("L", "U"):
        raise InputError(f"{what}: UPLO= must be 'L' or 'U', got {UPLO!r}")
    return str(UPLO)


def eigh(
    A: torch.Tensor,
    UPLO: str = "L",
    *,
    method: str | Stabilizer = "auto",
    eps: float | None = None,
    gauge_check: bool = False,
) -> EighResult:
    """Eigenvalues (ascending) and eigenvectors of a Hermitian matrix, with a finite backward.

    Returns ``(eigenvalues, eigenvectors)`` exactly like :func:`torch.linalg.eigh`
    (same named tuple, batch shape ``(..., n, n)``, only the ``UPLO`` triangle is
    read). float16/bfloat16 inputs are computed, and returned, in float32. The
    backward and its ``method=`` / ``eps=`` are described in the module docstring.

    The gradient of a function of the eigenvalues stays finite and exact at the
    identity, where torch's own backward would divide 0 by 0 when an eigenvector
    gradient is present:

    >>> import torch
    >>> from svdguard.linalg.eigh import eigh
    >>> A = torch.eye(3, dtype=torch.float64, requires_grad=True)
    >>> lam, V = eigh(A)
    >>> (V @ torch.diag_embed(lam**2) @ V.mT).diagonal().sum().backward()
    >>> A.grad
    tensor([[2., 0., 0.],
            [0., 2., 0.],
            [0., 0., 2.]], dtype=torch.float64)
    """
    A = _check_hermitian_input(A, "svdguard.eigh")
    UPLO = _check_uplo(UPLO, "svdguard.eigh")
    config = make_eigh_config(method, eps)
    if config is None:  # torch's own backward
        return cast(EighResult, torch.linalg.eigh(A, UPLO=UPLO))
    apply = cast(Callable[..., EighResult], _EighFunction.apply)  # torch leaves apply untyped
    lam, V = apply(A, UPLO, config, bool(gauge_check))
    named_tuple = getattr(torch.return_types, "linalg_eigh")  # noqa: B009 (absent from torch's stubs)
    return cast(EighResult, named_tuple((lam, V)))


def eigvalsh(A: torch.Tensor, UPLO: str = "L") -> torch.Tensor:
    """Eigenvalues (ascending) of a Hermitian matrix, like :func:`torch.linalg.eigvalsh`.

    The gradient is V diag(gλ) Vᴴ, finite everywhere. Without autograd only the
    values are computed; with it the eigenvectors come from :func:`eigh`
    (``auto``), so second derivatives stay finite at ties as well.
    """
    A = _check_hermitian_input(A, "svdguard.eigvalsh")
    UPLO = _check_uplo(UPLO, "svdguard.eigvalsh")
    if not (torch.is_grad_enabled() and A.requires_grad):
        return cast(torch.Tensor, torch.linalg.eigvalsh(A, UPLO=UPLO))
    return eigh(A, UPLO)[0]
