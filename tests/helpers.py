"""Independent references for the tests: matrices with chosen spectra, finite differences.

Test tolerances are derived here from the dtype (``svdguard.tolerances.machine_eps``)
and documented where they are defined; tests do not invent bare constants.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from svdguard.tolerances import machine_eps


def haar_unitary(size: int, *, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """A Haar-random orthogonal (unitary for complex dtypes) size×size matrix (QR of a Gaussian)."""
    real = torch.randn(size, size, dtype=torch.float64, generator=generator)
    if dtype.is_complex:
        real = torch.complex(
            real, torch.randn(size, size, dtype=torch.float64, generator=generator)
        )
    q, r = torch.linalg.qr(real)
    # Fix the phases so the distribution is Haar: Q · diag(r_ii / |r_ii|).
    d = torch.diagonal(r)
    q = q * (d / d.abs()).unsqueeze(-2)
    return q.to(dtype)


def with_singular_values(
    singular_values: Sequence[float] | torch.Tensor,
    m: int,
    n: int,
    *,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
) -> torch.Tensor:
    """A random m×n matrix U diag(s) Vᴴ with exactly the given singular values (float64 build)."""
    g = torch.Generator().manual_seed(seed)
    s = torch.as_tensor(singular_values, dtype=torch.float64)
    k = min(m, n)
    if s.numel() != k:
        raise ValueError(f"need {k} singular values for a {m}x{n} matrix, got {s.numel()}")
    build = torch.complex128 if dtype.is_complex else torch.float64
    u = haar_unitary(m, dtype=build, generator=g)[:, :k]
    v = haar_unitary(n, dtype=build, generator=g)[:, :k]
    a = (u * s.to(build)) @ v.mH
    return a.to(dtype)


def random_matrix(*shape: int, dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.Tensor:
    """A Gaussian matrix (complex Gaussian for complex dtypes); its singular values are well separated."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(*shape, dtype=torch.float64, generator=g)
    if dtype.is_complex:
        a = torch.complex(a, torch.randn(*shape, dtype=torch.float64, generator=g))
    return a.to(dtype)


def central_difference_grad(
    f: Callable[[torch.Tensor], torch.Tensor], a: torch.Tensor, *, step: float | None = None
) -> torch.Tensor:
    """∂f/∂a by fourth-order central differences, in float64 (real a only).

    f'(x) ≈ [8(f(x+h) − f(x−h)) − (f(x+2h) − f(x−2h))] / (12h); the truncation
    error is O(h⁴ f⁽⁵⁾) and the rounding error O(ε/h), so h = ε^(1/5) ≈ 7e-4
    balances them (error near ε^(4/5) ≈ 3e-13 for O(1) derivatives).
    """
    if a.dtype != torch.float64:
        raise TypeError("finite differences are taken in float64")
    h = machine_eps(torch.float64) ** 0.2 if step is None else step
    flat = a.detach().clone().reshape(-1)
    grad = torch.empty_like(flat)
    for idx in range(flat.numel()):

        def at(delta: float, idx: int = idx) -> float:
            x = flat.clone()
            x[idx] += delta
            return float(f(x.reshape(a.shape)))

        grad[idx] = (8 * (at(h) - at(-h)) - (at(2 * h) - at(-2 * h))) / (12 * h)
    return grad.reshape(a.shape)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """‖actual − expected‖ / max(‖expected‖, tiny): one number per comparison."""
    actual, expected = actual.detach(), expected.detach()
    scale = max(float(expected.abs().max()), torch.finfo(torch.float64).tiny)
    return float((actual - expected).abs().max()) / scale


def exactness_tolerance(dtype: torch.dtype, factor: float = 1e3) -> float:
    """Tolerance of an exact computation in ``dtype``: ``factor``·ε (1e3·ε by default).

    The factor absorbs the condition of the test problems (random matrices of
    size ≤ 32 with relative gaps ≥ 1e-2); the float64 default is 2.2e-13.
    """
    return factor * machine_eps(dtype)


def finite_difference_tolerance(derivative_scale: float = 1e3) -> float:
    """Agreement of an exact float64 gradient with :func:`central_difference_grad`.

    The stencil's error is about ε^(4/5) ≈ 3e-13 times the size of the
    function's fifth derivative along the step; ``derivative_scale`` bounds that
    factor for the test problem (default 1e3: 3e-10; the matrix-function tests,
    with s_min ≥ 1 and ‖G‖ = O(1), measured ≤ 1e2 and use 1e4: 3e-9).
    """
    return derivative_scale * machine_eps(torch.float64) ** 0.8


def near_tie_tolerance(gap: float, sigma_max: float, dtype: torch.dtype = torch.float64) -> float:
    """Accuracy of the difference part at a gap (docs/backward.md#the-split-form): ε·σ_max/gap, relative.

    Its numerator carries an absolute error of about ε·σ_max·‖G‖, divided by
    the gap; nothing computed from the factors can do better.
    """
    return machine_eps(dtype) * sigma_max / gap


# --- tolerances of the repair tests ----------------------------------------------------


def spectrum_tolerance(k: int, scale: float) -> float:
    """Agreement of two float64 solutions of a k-value spectrum problem: 10·k·ε·scale.

    PAVA's block means sum at most k values (error ≤ k·ε·scale); an active-set
    reference solves a (2k)×(2k) system of condition number O(k). The factor 10 covers
    both, far below any real disagreement of a wrong solution.
    """
    return 10 * k * machine_eps(torch.float64) * scale


def svd_resolution(m: int, n: int, sigma_max: float) -> float:
    """Absolute error of a float64 singular value of an m×n matrix: max(m, n)·ε·σ_max.

    Two independent SVDs (torch's, numpy's) may differ by this much, so a bound
    met by one is checked with the other up to it.
    """
    return max(m, n) * machine_eps(torch.float64) * sigma_max


def storage_rounding_tolerance(dtype: torch.dtype, k: int, sigma_max: float) -> float:
    """How far rounding a k-value matrix to ``dtype`` moves one singular value, and more.

    Weyl: at most ‖E‖₂ ≤ ‖E‖_F ≤ (ε/2)·‖A‖_F ≤ (ε/2)·√k·σ_max; twice that, plus
    :func:`spectrum_tolerance` for the float64 computation that measures it.
    """
    return machine_eps(dtype) * k**0.5 * sigma_max + spectrum_tolerance(k, sigma_max)


def norm_agreement_tolerance(count: int) -> float:
    """Relative agreement of two float64 Frobenius norms of the same ``count`` entries.

    Recursive summation of ``count`` squares has relative error ≤ count·ε; the two
    libraries may sum in different orders.
    """
    return count * machine_eps(torch.float64)


#: Largest relative error of tolerances.typical_cond's model against the exact quantile of κ₂
#: for Gaussian matrices (measured at 32×32 … 64×32: at most 7 %; 10 % leaves room for small
#: shapes, where the model is least accurate).
TYPICAL_COND_MODEL_ERROR = 0.10


def quantile_tolerance(quantile: float, samples: int) -> float:
    """Relative tolerance of an empirical tail quantile of κ₂ from ``samples`` draws.

    About N·(1 − q) draws lie beyond the q-quantile, a count with relative standard
    error 1/√(N(1 − q)); κ₂ has a tail P(κ₂ > x) ∝ 1/x^(m−n+1), so a relative error of
    the count moves the quantile by at most the same relative amount. Three standard
    errors plus the model's own error.
    """
    return TYPICAL_COND_MODEL_ERROR + 3.0 / (samples * (1.0 - quantile)) ** 0.5


#: Fraction of healthy random matrices the health profile may warn on: 1 % by construction
#: of the κ_0.99 threshold, and a check that cannot fail is no check, so allow 3× that.
HEALTH_FALSE_ALARM_RATE = 0.03
