"""Every numeric threshold of svdguard, derived from the dtype and the shape.

No other module holds a bare tolerance: they call the functions here, so that
one place documents what "rounding level" means.

Notation: ε = ``torch.finfo(dtype).eps`` of the *real* dtype that the
computation runs in (float32: 1.19e-7, float64: 2.22e-16); σ_max the largest
singular value of the matrix at hand; m×n its shape.
"""

from __future__ import annotations

import functools
import math

import torch

#: dtypes that LAPACK/cuSOLVER cannot factor; svdguard computes them in float32.
LOW_PRECISION_DTYPES = (torch.float16, torch.bfloat16)


def real_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for complex128, float32 for complex64, the dtype itself otherwise."""
    return torch.empty((), dtype=dtype).real.dtype if dtype.is_complex else dtype


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype an SVD of a ``dtype`` tensor runs in.

    float16/bfloat16 (and the 8-bit float types) are not supported by the SVD
    drivers, so they are computed (and returned) in float32; complex32 in
    complex64. Integer and bool inputs are not floating and are rejected by the
    callers.
    """
    if dtype.is_complex:
        return torch.complex64 if dtype == torch.complex32 else dtype
    if dtype.is_floating_point and torch.finfo(dtype).bits < 32:
        return torch.float32
    return dtype


@functools.cache
def machine_eps(dtype: torch.dtype) -> float:
    """ε of ``dtype`` (the real part's for complex dtypes); cached, it sits on the backward's path."""
    return float(torch.finfo(real_dtype(dtype)).eps)


def tie_tolerance(sigma_max: torch.Tensor, dtype: torch.dtype, m: int, n: int) -> torch.Tensor:
    """Rounding level of singular values: τ = max(m, n) · ε · σ_max.

    A computed SVD is backward stable: each singular value carries an absolute
    error of order p(m, n)·ε·σ_max (LAPACK Users' Guide §4.9). Two singular
    values closer than τ, a sum s_i + s_j below τ, or a single s_i below τ
    cannot be told apart from a tie or from zero, so the ``auto`` backward
    treats such a denominator as zero (drops its term) and computes every
    larger one exactly. The same τ is numpy's ``matrix_rank`` tolerance, so
    "tied", "zero" and "outside the numerical rank" agree.

    ``sigma_max`` is a tensor of shape ``(...,)`` or ``(..., 1)``; the result
    has the same shape.
    """
    return sigma_max * (max(m, n, 1) * machine_eps(dtype))


def rounding_level(sigma_max: float, dtype: torch.dtype, m: int, n: int) -> float:
    """:func:`tie_tolerance` of one matrix, as a float: max(m, n) · ε(dtype) · σ_max."""
    return float(sigma_max) * (max(m, n, 1) * machine_eps(dtype))  # the same float64 product


def gauge_tolerance(dtype: torch.dtype) -> float:
    """Relative size of (J + K) inside a tied block above which a loss is gauge dependent.

    For a gauge-invariant loss (J + K)_ij is zero up to rounding, i.e. of order
    k·ε·‖G‖; a loss on an arbitrary basis gives (J + K)_ij of order ‖G‖. √ε
    separates the two with many orders of margin on both sides (1.5e-8 in
    float64, 3.5e-4 in float32).
    """
    return math.sqrt(machine_eps(dtype))


def complex_phase_tolerance() -> tuple[float, float]:
    """(rtol, atol) of torch's own check that a complex loss ignores the phase.

    Deliberately lax (torch uses the same 1e-2 in ``linalg_svd_backward``): the
    check must not fire on rounding, only on a loss that depends on the phase.
    """
    return 1e-2, 1e-2


def noise_floor(storage_dtype: torch.dtype, sigma_max: float) -> float:
    """ε(storage) · σ_max: singular values and gaps below this are rounding of the stored entries."""
    return machine_eps(storage_dtype) * sigma_max


def default_clamp_eps(sigma_max: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Default floor of |s_i − s_j| for ``method="clamp"``: √ε · σ_max.

    Gaps below √ε·σ_max leave fewer than half the digits in the difference part
    (its numerator carries an absolute error ≈ ε·σ_max), so clamping there
    trades little accuracy; gaps above it are untouched. Floored at the
    smallest normal number so that the zero matrix does not divide by zero.
    """
    floor = torch.finfo(real_dtype(dtype)).tiny
    return (sigma_max * math.sqrt(machine_eps(dtype))).clamp_min(floor)


def default_lorentz_eps(sigma_max: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Default broadening of ``method="lorentz"``: (√ε · σ_max)² = ε · σ_max² (units of s²).

    Floored at the smallest normal number, as :func:`default_clamp_eps`.
    """
    floor = torch.finfo(real_dtype(dtype)).tiny
    return (sigma_max * sigma_max * machine_eps(dtype)).clamp_min(floor)


def default_max_cond(dtype: torch.dtype) -> float:
    """Default κ threshold of ``method="trivialize"``: 1/√ε (6.7e7 in float64, 2.9e3 in float32).

    The rectangular and sum terms divide by s_min, so beyond this κ the
    gradient amplifies the forward's rounding by more than 1/√ε: fewer than
    half the digits are left.
    """
    return 1.0 / math.sqrt(machine_eps(dtype))


def stabilizer_bias_tolerance(dtype: torch.dtype) -> float:
    """Relative change of a kernel entry from which a stabilizer counts as acting on a pair: √ε."""
    return math.sqrt(machine_eps(dtype))


def rounding_resolution(dtype: torch.dtype) -> float:
    """Rule (a) of the rounding rule (docs/backward.md): a numerator counts as resolved above √ε.

    A term N/den whose denominator is at rounding level is kept only if
    |N| > √ε·Σ|summands of N|. N is a sum of products computed to about
    ε·Σ|summands|, so this leaves it (and the quotient) at least half its digits;
    a numerator that is pure rounding (a gauge-invariant loss at an exact tie)
    falls below it by many orders in float32 and float64.
    """
    return math.sqrt(machine_eps(dtype))


def rounding_quotient_bound(dtype: torch.dtype) -> float:
    """Rules (b) and (c) of the rounding rule: quotients within G/(√ε·σ_max); this returns 1/√ε.

    G is the largest summand of the backward (largest column norm of gU, gV),
    so G/σ_max is the gradient's natural scale. (b): a kept quotient |N|/den
    stays below 1/√ε times that scale. A numerator that vanishes with its
    denominator (a loss of U diag(h(S)) Vᴴ with h(0) = 0) gives a quotient of
    that scale; one that does not (the loss depends on singular vectors of a
    zero singular value, where no derivative exists) about 1/ε times it, so
    1/√ε separates the two with √ε margin on each side. (c): when the summands
    themselves satisfy Σ/den ≤ G/(√ε·σ_max), the numerator's rounding (ε·Σ)
    adds at most √ε·G/σ_max to the quotient, so the term is kept even if the
    numerator is not resolved to √ε; in a tie of non-zero values Σ/den is about
    G/(ε·σ_max) and (c) does not apply.
    """
    return 1.0 / math.sqrt(machine_eps(dtype))


# --- thresholds of `svdguard inspect` -------------------------------------------------
# ε_w below is the ε of the tensor's *working dtype*, ``compute_dtype(storage)``: the
# dtype its users decompose it in (float32 for bf16/fp16/fp8 storage). ε_p is the ε of
# the dtype inspect computes the singular values in (``precision=``, float64 default).


def inspect_tie_tolerance(
    sigma_max: float, working: torch.dtype, precision: torch.dtype, m: int, n: int
) -> float:
    """Gap at or below which ``inspect`` counts two singular values as tied (severity error).

    τ_tie = max(max(m, n)·ε_p·σ_max, ε_w·σ_max). The first term is
    :func:`tie_tolerance` of our own computation: below it the computed gap is
    rounding. The second is where LAPACK's angle bound ε_w·σ_max/gap on the
    singular vectors, computed in the working dtype, reaches 1 radian: no digit
    of u_i, v_i is determined and a gradient through U or V is infinite or
    arbitrary. (Not max(m, n)·ε_w·σ_max: that worst-case factor would call the
    ordinary gaps of a random 768×2304 float32 matrix, ~3e-5·σ_max, ties.)
    """
    return max(rounding_level(sigma_max, precision, m, n), machine_eps(working) * sigma_max)


def inspect_near_degenerate_tolerance(sigma_max: float, working: torch.dtype) -> float:
    """Gap at or below which ``inspect`` counts a pair as near-degenerate (severity warning).

    √ε_w·σ_max, the same floor as :func:`default_clamp_eps`: at this gap
    LAPACK's bound ε_w·σ_max/gap on the singular vectors' angle error is √ε_w
    (half the working digits are gone) and the difference part of the SVD
    backward is amplified by σ_max/gap ≥ 1/√ε_w (2.9e3 in float32, 6.7e7 in
    float64) relative to a well-separated spectrum.
    """
    return math.sqrt(machine_eps(working)) * sigma_max


def inspect_rank_tolerance(
    sigma_max: float, working: torch.dtype, precision: torch.dtype, m: int, n: int
) -> float:
    """Numerical-rank tolerance of ``inspect``: max(m, n)·max(ε_w, ε_p)·σ_max.

    numpy's ``matrix_rank`` default on the matrix held in its working dtype
    (so ``inspect`` agrees with ``np.linalg.matrix_rank(W)`` for a float32 W),
    coarsened to ε_p when the computation itself is coarser (``precision=torch.float32``
    on float64 data), so that a singular value we cannot resolve is never
    counted as rank. This is :func:`tie_tolerance` in the coarser of the two dtypes.
    """
    coarser = working if machine_eps(working) >= machine_eps(precision) else precision
    return rounding_level(sigma_max, coarser, m, n)


def reference_tie_tolerance(sigma_max: float, working: torch.dtype, m: int, n: int) -> float:
    """The tie threshold whatever ``precision=`` the spectrum was computed in.

    :func:`inspect_tie_tolerance` with float64 as the precision: max(m, n)·ε₆₄·σ_max
    (the rounding level of the reference computation) or ε_w·σ_max, whichever is
    larger. Fixing the threshold to the float64 computation makes a coarser
    ``precision`` change only how sure a verdict is (:func:`analysis_margin`),
    never what the verdict means.
    """
    return inspect_tie_tolerance(sigma_max, working, torch.float64, m, n)


def analysis_margin(sigma_max: float, precision: torch.dtype, m: int, n: int) -> float:
    """How far a computed singular value may lie from the float64 one: 0 or max(m, n)·ε_p·σ_max.

    The thresholds of ``inspect`` are those of a float64 computation, whose own
    rounding level is already part of them (ties, κ₂ shown as a lower bound). A
    coarser precision p adds its rounding level τ_p = max(m, n)·ε_p·σ_max (the
    backward-stability bound of :func:`tie_tolerance`) to every singular value
    and 2·τ_p to every gap: a verdict is reported only when it holds across that
    margin, and is ``unresolved`` otherwise.
    """
    if machine_eps(precision) <= machine_eps(torch.float64):
        return 0.0
    return rounding_level(sigma_max, precision, m, n)


#: The quantile of κ₂ over Gaussian matrices of the same shape beyond which a matrix
#: counts as unusually ill-conditioned for its shape (one in a hundred).
TYPICAL_COND_QUANTILE = 0.99


def typical_cond(m: int, n: int, quantile: float = TYPICAL_COND_QUANTILE) -> float:
    """The ``quantile`` of κ₂ over m×n matrices with i.i.d. Gaussian entries (a model).

    With p = max(m, n) ≥ q = min(m, n):

        κ_q ≈ κ_ref · (0.5 / (1 − quantile))^(1/(p − q + 1)),
        κ_ref = (√p + √q) / (√p − √(q − 1)).

    κ_ref is the ratio of the edges of the Marchenko–Pastur law with the lower
    edge taken at q − 1 (close to the median of κ₂); the tail factor is the
    small-σ_min law P(σ_min < t·edge) ∝ t^(p−q+1). For square matrices this
    gives κ_0.99 ≈ 200·n, Edelman's P(κ₂ > x·n) ≈ 2/x. Monte Carlo (numpy,
    float64) 99 % quantiles against the model: 32×32 6766 (6350), 64×64 11827
    (12750), 36×32 58.3 (59), 40×32 24.6 (24.3), 64×32 6.6 (6.3); see
    ``docs/diagnostics.md``. Trained weights are not Gaussian, but a κ₂ beyond
    what one random matrix in a hundred reaches is unusual for the shape.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must lie in (0, 1), got {quantile}")
    p, q = max(m, n), min(m, n)
    if q < 1:
        return math.inf
    reference = (math.sqrt(p) + math.sqrt(q)) / (math.sqrt(p) - math.sqrt(q - 1))
    tail: float = (0.5 / (1.0 - quantile)) ** (1.0 / (p - q + 1))
    return reference * tail


def health_max_cond(working: torch.dtype, m: int, n: int) -> float:
    """κ₂ threshold of ``ill-conditioned`` in the ``health`` profile: max(1/√ε_w, κ_0.99(m, n)).

    Both conditions must hold for a warning: κ₂ beyond half the working digits
    (:func:`default_max_cond`) and beyond what one Gaussian matrix of the same
    shape in a hundred shows (:func:`typical_cond`). A square 384×384 float32
    weight needs κ₂ ≥ 7.7e4, not 2.9e3: random square matrices routinely reach
    κ₂ of several thousand.
    """
    return max(default_max_cond(working), typical_cond(m, n))


# --- the Gram route of inspect's spectra (docs/benchmarks.md) --------------------------

#: c in δ = c·√k·ε₆₄·σ_max², the absolute error allowed for an eigenvalue of the float64
#: Gram matrix. Measured worst case of |λ̂_i − s_i²|/(ε₆₄·σ_max²) (numpy syrk + syevd against
#: a float64 SVD, on s_i ≤ σ_max/100 where the reference is exact enough), over shapes
#: 2×2 … 100000×64, 768×3072, 2048×2048 and 8192×1024, Gaussian, all-positive and
#: low-rank-plus-noise matrices with κ 1e4…1e9, stored in float32 and float64: 1.09
#: (20000×8), 0.94 (4×4), 0.58 (2×2), ≤ 0.52 for every k ≥ 64 (0.23 at k = 2048). It does not
#: grow with the size; √k keeps the growth of rounding errors that accumulate at random.
#: c = 4 leaves ≥ 8× margin at every measured size, ≥ 60× for k ≥ 64.
GRAM_ERROR_FACTOR = 4.0


def gram_eigenvalue_error(sigma_max: float, k: int) -> float:
    """δ = c·√k·ε₆₄·σ_max²: the error the Gram route certifies against (k×k Gram matrix).

    Rounding the Gram matrix moves its entries by ≲ ε·Σ_l|a_li||a_lj| and a
    backward-stable symmetric eigensolver adds ≲ ε·‖B‖₂ = ε·σ_max². Worst-case
    analysis multiplies these by k and by the length of the sums; measured
    errors stay below ε·σ_max² at every size, so the constant
    :data:`GRAM_ERROR_FACTOR` and the √k come from the measured worst case.
    """
    return GRAM_ERROR_FACTOR * math.sqrt(max(k, 1)) * machine_eps(torch.float64) * sigma_max**2


def spectrum_report_rtol() -> float:
    """Relative accuracy of κ₂ and of every gap ``inspect`` reports: 1e-6.

    Six digits of a number whose own meaning (how badly a matrix is
    conditioned, how close two singular values are) needs one or two; the
    Gram route is used only where it meets this against a float64 SVD.
    """
    return 1e-6


def spectrum_storage_floor(storage: torch.dtype, sigma_max: float) -> float:
    """u_w·σ_max = ε_w/2·σ_max: how finely the storage dtype itself resolves singular values.

    Rounding A to its working dtype moves each entry by up to u_w·|a_ij|, and
    each singular value by up to ‖ΔA‖₂ (Weyl), which reaches u_w·σ_max for a
    perturbation along the top singular pair: no method resolves the stored
    matrix's σ and gaps more finely than the matrix resolves itself. Half of
    :func:`noise_floor`, so that a tie stays within ``inspect``'s tie tolerance.
    """
    return machine_eps(compute_dtype(storage)) / 2 * sigma_max
