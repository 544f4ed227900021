"""The divided-difference kernels against 50-digit decimal arithmetic, for gaps down to 0."""

from __future__ import annotations

from decimal import Decimal, getcontext

import pytest
import torch

from svdguard.linalg.divided_differences import (
    inv_sqrt_difference,
    log_difference,
    reciprocal_difference,
    sqrt_difference,
    sum_quotient,
)
from svdguard.tolerances import machine_eps

getcontext().prec = 50

BASES = [1e-3, 1.0, 7.5e4]
REL_GAPS = [1.0, 1e-2, 1e-6, 1e-10, 1e-14, 0.0]


def kernel_tolerance(dtype: torch.dtype) -> float:
    """A handful of roundings: each closed form does ≤ 5 operations without cancellation."""
    return 8 * machine_eps(dtype)


def pair(x: float, rel_gap: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.tensor(x * (1 + rel_gap), dtype=dtype)
    return a, torch.tensor(x, dtype=dtype)


def exact_divided_difference(f, derivative, a: float, b: float) -> Decimal:
    """(f(a) − f(b))/(a − b) in 50 digits from the *stored* a, b (f' at a tie)."""
    da, db = Decimal(a), Decimal(b)
    if da == db:
        return derivative(da)
    return (f(da) - f(db)) / (da - db)


def assert_close(got: torch.Tensor, exact: Decimal, dtype: torch.dtype) -> None:
    rel = abs((Decimal(float(got)) - exact) / exact)
    assert rel <= Decimal(kernel_tolerance(dtype)), (float(got), float(exact), float(rel))


CASES = [(dt, x, g) for dt in (torch.float32, torch.float64) for x in BASES for g in REL_GAPS]


@pytest.mark.parametrize(("dtype", "x", "rel_gap"), CASES)
def test_log_difference(dtype: torch.dtype, x: float, rel_gap: float) -> None:
    a, b = pair(x, rel_gap, dtype)
    exact = exact_divided_difference(lambda t: t.ln(), lambda t: 1 / t, float(a), float(b))
    assert_close(log_difference(a, b), exact, dtype)
    assert float(log_difference(a, b)) == float(log_difference(b, a))


@pytest.mark.parametrize(("dtype", "x", "rel_gap"), CASES)
def test_inv_sqrt_difference(dtype: torch.dtype, x: float, rel_gap: float) -> None:
    lam_a, lam_b = pair(x, rel_gap, dtype)
    exact = exact_divided_difference(
        lambda t: 1 / t.sqrt(), lambda t: -1 / (2 * t * t.sqrt()), float(lam_a), float(lam_b)
    )
    # The kernel takes r = √λ; its own rounding of √ adds ε/2 relative per factor.
    assert_close(inv_sqrt_difference(lam_a.sqrt(), lam_b.sqrt()), exact, dtype)


@pytest.mark.parametrize(("dtype", "x", "rel_gap"), CASES)
def test_sqrt_difference(dtype: torch.dtype, x: float, rel_gap: float) -> None:
    lam_a, lam_b = pair(x, rel_gap, dtype)
    exact = exact_divided_difference(
        lambda t: t.sqrt(), lambda t: 1 / (2 * t.sqrt()), float(lam_a), float(lam_b)
    )
    drop = torch.tensor(False)
    assert_close(sqrt_difference(lam_a.sqrt(), lam_b.sqrt(), drop), exact, dtype)


@pytest.mark.parametrize(("dtype", "x", "rel_gap"), CASES)
def test_reciprocal_difference(dtype: torch.dtype, x: float, rel_gap: float) -> None:
    a, b = pair(x, rel_gap, dtype)
    exact = exact_divided_difference(lambda t: 1 / t, lambda t: -1 / (t * t), float(a), float(b))
    assert_close(reciprocal_difference(a, b), exact, dtype)


def test_naive_log_difference_would_fail() -> None:
    """The reference is meaningful: away from 1, log x carries an absolute error ε·|log x|,
    so the textbook formula keeps only about ε·|log x|/gap of relative accuracy."""
    a, b = pair(7.5e4, 1e-14, torch.float64)
    naive = (torch.log(a) - torch.log(b)) / (a - b)
    exact = exact_divided_difference(lambda t: t.ln(), lambda t: 1 / t, float(a), float(b))
    assert abs((Decimal(float(naive)) - exact) / exact) > Decimal(1e-3)


def test_dropped_terms_are_zero_not_nan() -> None:
    zero = torch.zeros(())
    tol = torch.tensor(1e-12)
    assert float(sum_quotient(2.0, zero, zero, tol)) == 0.0
    assert float(sqrt_difference(zero, zero, torch.tensor(True))) == 0.0
    s = torch.tensor(3.0)
    assert float(sum_quotient(2.0, s, s, tol)) == pytest.approx(1 / 3)
