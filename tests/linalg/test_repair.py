"""nearest_spectrum / nearest_conditioned against independent solutions of the same problem.

The problem (docs/repair.md): minimise ‖s′ − s‖₂ over s′ with s′_0 = s_0,
s′_{k−1} ≥ f and s′_i − s′_{i+1} ≥ g. References: an exhaustive active-set solve
of that quadratic program in numpy (every subset of constraints held as equalities,
the best feasible stationary point kept: the exact optimum of a convex QP), the
projection inequality ⟨s − s′, z − s′⟩ ≤ 0 for feasible z, closed forms, and
numpy's SVD for the matrix statements (Mirsky: same vectors, ‖ΔA‖_F = ‖Δs‖₂).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from svdguard.errors import InputError
from svdguard.linalg.repair import (
    bounds_feasible,
    meets_bounds,
    nearest_conditioned,
    nearest_spectrum,
    pava_nonincreasing,
)
from tests.helpers import spectrum_tolerance, storage_rounding_tolerance, with_singular_values


def floor_and_gap(s0: float, max_cond: float | None, min_gap: float | None) -> tuple[float, float]:
    return (0.0 if max_cond is None else s0 / max_cond), (0.0 if min_gap is None else min_gap * s0)


def active_set_reference(s: np.ndarray, floor: float, gap: float) -> np.ndarray:
    """Exact optimum by enumeration: x = s′_{1..k−1}, constraints a_j·x ≥ b_j.

    j = 0: s_0 − x_1 ≥ g; j = 1..k−2: x_j − x_{j+1} ≥ g; j = k−1: x_{k−1} ≥ f.
    For each subset held with equality, the KKT system [[I, Aᵀ], [A, 0]] gives the
    nearest point of that face's affine hull; the best feasible one is the projection.
    """
    k = s.size
    y = s[1:]
    rows, rhs = [], []
    first = np.zeros(k - 1)
    first[0] = -1.0
    rows.append(first)
    rhs.append(gap - s[0])
    for j in range(k - 2):
        row = np.zeros(k - 1)
        row[j], row[j + 1] = 1.0, -1.0
        rows.append(row)
        rhs.append(gap)
    last = np.zeros(k - 1)
    last[-1] = 1.0
    rows.append(last)
    rhs.append(floor)
    a_all, b_all = np.array(rows), np.array(rhs)
    tol = spectrum_tolerance(k, max(abs(s[0]), abs(floor), 1.0))
    best, best_value = None, math.inf
    for size in range(len(rows) + 1):
        for subset in itertools.combinations(range(len(rows)), size):
            a, b = a_all[list(subset)], b_all[list(subset)]
            system = np.block([[np.eye(k - 1), a.T], [a, np.zeros((size, size))]])
            solution = np.linalg.lstsq(system, np.concatenate([y, b]), rcond=None)[0]
            x = solution[: k - 1]
            if size and np.abs(a @ x - b).max() > tol:
                continue  # dependent, inconsistent equalities
            if (a_all @ x - b_all).min() < -tol:
                continue
            value = float(((x - y) ** 2).sum())
            if value < best_value:
                best, best_value = x, value
    assert best is not None
    return np.concatenate([[s[0]], best])


def random_spectrum(rng: np.random.Generator, k: int) -> np.ndarray:
    """Descending values with clusters and a tail near zero: the cases the bounds bite on."""
    base = rng.choice([1.0, 0.5, 0.2, 1e-3, 0.0], size=k) + rng.uniform(0, 0.05, size=k)
    return np.sort(base)[::-1] * rng.uniform(0.5, 3.0)


@pytest.mark.parametrize("seed", range(40))
def test_matches_exhaustive_active_set_solution(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 7))
    s = random_spectrum(rng, k)
    max_cond = None if seed % 5 == 0 else float(rng.choice([2.0, 10.0, 1e3]))
    room = 1.0 - (0.0 if max_cond is None else 1.0 / max_cond)  # (k−1)·G ≤ 1 − 1/K: feasible
    min_gap = None if seed % 5 == 1 else float(rng.uniform(0.0, room / (k - 1)))
    result = nearest_spectrum(torch.from_numpy(s.copy()), max_cond, min_gap).numpy()
    expected = active_set_reference(s, *floor_and_gap(s[0], max_cond, min_gap))
    np.testing.assert_allclose(result, expected, rtol=0, atol=spectrum_tolerance(k, s[0]))


@pytest.mark.parametrize("seed", range(5))
def test_projection_inequality_on_a_long_spectrum(seed: int) -> None:
    """s′ is the projection of s on the feasible set iff ⟨s − s′, z − s′⟩ ≤ 0 for every feasible z."""
    rng = np.random.default_rng(100 + seed)
    k = 40
    s = random_spectrum(rng, k)
    max_cond, min_gap = 50.0, 0.3 / k
    floor, gap = floor_and_gap(s[0], max_cond, min_gap)
    result = nearest_spectrum(torch.from_numpy(s.copy()), max_cond, min_gap).numpy()
    assert result[0] == s[0]
    assert result[-1] >= floor - spectrum_tolerance(k, s[0])
    assert np.diff(result).max() <= -gap + spectrum_tolerance(k, s[0])
    for _ in range(200):
        # A random feasible z: a floor value plus gaps g + (random slack), scaled to fit under s_0.
        slack = rng.exponential(size=k - 1)
        room = s[0] - gap - floor - (k - 2) * gap
        slack *= rng.uniform(0, 1) * room / slack.sum()
        tail = floor + np.cumsum(np.concatenate([[slack[0]], gap + slack[1:]]))[::-1]
        z = np.concatenate([[s[0]], tail])
        slack_tol = spectrum_tolerance(k, s[0])
        assert np.diff(z).max() <= -gap + slack_tol and z[-1] >= floor - slack_tol
        assert np.dot(s - result, z - result) <= spectrum_tolerance(k, s[0]) * s[0]


def test_orthogonal_spectrum_spreads_down_from_sigma_max() -> None:
    """All s = 1, gap bound only: every t_i is pooled and clipped at c, so s′_i = 1 − i·G."""
    k, min_gap = 16, 1e-3
    result = nearest_spectrum(torch.ones(k, dtype=torch.float64), None, min_gap)
    expected = 1.0 - min_gap * torch.arange(k, dtype=torch.float64)
    torch.testing.assert_close(result, expected, rtol=0, atol=spectrum_tolerance(k, 1.0))


def test_condition_bound_alone_is_a_clip() -> None:
    s = torch.tensor([4.0, 3.0, 0.5, 1e-3, 0.0], dtype=torch.float64)
    result = nearest_spectrum(s, max_cond=10.0)
    torch.testing.assert_close(result, torch.tensor([4.0, 3.0, 0.5, 0.4, 0.4], dtype=torch.float64))


def test_one_close_pair_moves_symmetrically() -> None:
    """min (x − a)² + (y − b)² s.t. x − y = g  →  x, y = (a + b ± g)/2, when neighbours are far."""
    s = torch.tensor([10.0, 6.0, 5.9, 2.0], dtype=torch.float64)
    result = nearest_spectrum(s, min_gap=0.05)  # g = 0.5
    expected = torch.tensor([10.0, (11.9 + 0.5) / 2, (11.9 - 0.5) / 2, 2.0], dtype=torch.float64)
    torch.testing.assert_close(result, expected, rtol=0, atol=spectrum_tolerance(4, 10.0))


def test_values_that_meet_the_bounds_are_returned_bit_for_bit() -> None:
    s = torch.tensor([3.0, 2.0, 1.0, 0.7], dtype=torch.float64)
    assert meets_bounds(s, 10.0, 0.05)
    assert torch.equal(nearest_spectrum(s, 10.0, 0.05), s)


def test_margin_survives_a_perturbation_of_that_size() -> None:
    """With margin η, any spectrum within η of the result (Weyl) still meets the bounds."""
    s = torch.tensor([1.0, 1.0, 0.5, 1e-6], dtype=torch.float64)
    eta = 1e-3
    result = nearest_spectrum(s, 100.0, 0.01, margin=eta)
    for signs in itertools.product((-1.0, 1.0), repeat=4):
        moved = result + eta * torch.tensor(signs, dtype=torch.float64)
        moved = moved.sort(descending=True).values
        assert meets_bounds(moved, 100.0, 0.01)


def test_infeasible_bounds_and_zero_matrix_are_refused() -> None:
    assert not bounds_feasible(11, 2.0, 0.06)  # (k−1)·G = 0.6 > 1 − 1/K = 0.5
    assert bounds_feasible(11, 2.0, 0.05)
    with pytest.raises(InputError, match=r"max_cond=2.0 and min_gap=0.06 cannot hold together"):
        nearest_spectrum(torch.ones(11, dtype=torch.float64), 2.0, 0.06)
    with pytest.raises(InputError, match="σ_max = 0"):
        nearest_spectrum(torch.zeros(3, dtype=torch.float64), 2.0, None)
    with pytest.raises(InputError, match="max_cond=0.5 is below 1"):
        nearest_spectrum(torch.ones(3, dtype=torch.float64), 0.5, None)
    with pytest.raises(InputError, match=r"min_gap=1.5 is outside \[0, 1\)"):
        nearest_spectrum(torch.ones(3, dtype=torch.float64), None, 1.5)


def test_pava_against_brute_force_on_short_sequences() -> None:
    """Non-increasing least squares on ≤ 5 values equals the active-set solution with f = −∞, no s_0."""
    rng = np.random.default_rng(7)
    for _ in range(30):
        y = rng.normal(size=int(rng.integers(1, 6)))
        fitted = pava_nonincreasing(torch.from_numpy(y)).numpy()
        # A fixed s_0 and a floor far outside the data (never active): the reference then
        # solves exactly PAVA's problem.
        far = 10 * (np.abs(y).max() + 1)
        reference = active_set_reference(np.concatenate([[far], y]), -far, 0.0)[1:]
        np.testing.assert_allclose(fitted, reference, rtol=0, atol=spectrum_tolerance(y.size, far))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.complex128])
@pytest.mark.parametrize("shape", [(12, 12), (20, 9), (7, 15)])
def test_matrix_keeps_vectors_and_takes_the_nearest_spectrum(
    dtype: torch.dtype, shape: tuple[int, int]
) -> None:
    m, n = shape
    k = min(m, n)
    s = torch.cat([torch.ones(k // 2), torch.logspace(-1, -9, k - k // 2)]).to(torch.float64)
    a = with_singular_values(s, m, n, dtype=dtype, seed=k)
    max_cond, min_gap = 1e3, 0.2 / k
    repaired = nearest_conditioned(a, max_cond=max_cond, min_gap=min_gap)
    assert repaired.dtype == dtype and repaired.shape == a.shape
    a_np = a.numpy().astype(np.complex128 if dtype.is_complex else np.float64)
    r_np = repaired.numpy().astype(a_np.dtype)
    s_in = np.linalg.svd(a_np, compute_uv=False)
    s_out = np.linalg.svd(r_np, compute_uv=False)
    target = active_set_reference(s_in, *floor_and_gap(s_in[0], max_cond, min_gap))
    tol = storage_rounding_tolerance(dtype, k, s_in[0])
    np.testing.assert_allclose(s_out, target, rtol=0, atol=tol)
    # Mirsky's equality: the change is exactly the spectral one (vectors kept).
    change = np.linalg.norm(r_np - a_np)
    assert change == pytest.approx(np.linalg.norm(target - s_in), abs=tol * math.sqrt(k))
    # And no feasible competitor with other vectors is nearer: a random one is farther.
    rng = np.random.default_rng(k)
    q1, _ = np.linalg.qr(rng.normal(size=(m, k)))
    q2, _ = np.linalg.qr(rng.normal(size=(n, k)))
    competitor = (q1 * target) @ q2.T
    assert np.linalg.norm(competitor - a_np) > change


def test_nearest_conditioned_rejects_non_matrices_and_nonfinite() -> None:
    with pytest.raises(InputError, match="expected a matrix"):
        nearest_conditioned(torch.ones(2, 2, 2), max_cond=10.0)
    bad = torch.eye(3)
    bad[0, 1] = math.nan
    with pytest.raises(InputError, match="NaN or Inf"):
        nearest_conditioned(bad, max_cond=10.0)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    values=st.lists(
        st.sampled_from([0.0, 1e-9, 1e-3, 0.2, 0.5, 0.5, 1.0, 1.0, 2.0]), min_size=2, max_size=6
    ),
    max_cond=st.one_of(st.none(), st.sampled_from([1.5, 10.0, 1e4])),
    gap_fraction=st.one_of(st.none(), st.floats(0.0, 0.95)),
    margin_fraction=st.sampled_from([0.0, 1e-3]),
)
def test_property_optimal_feasible_idempotent(
    values: list[float],
    max_cond: float | None,
    gap_fraction: float | None,
    margin_fraction: float,
) -> None:
    """Ties and zeros (the hard cases): the result is the QP optimum, feasible, and a fixed point."""
    s = np.sort(np.array(values))[::-1].copy()
    if s[0] == 0.0:
        s[0] = 1.0
    k = s.size
    room = 1.0 - (0.0 if max_cond is None else 1.0 / max_cond)
    min_gap = None if gap_fraction is None else gap_fraction * room / (k - 1)
    eta = margin_fraction * s[0]
    # The margin's bounds, from the formula of the module docstring, for the reference:
    floor = 0.0 if max_cond is None else (s[0] + eta) / max_cond + eta
    gap = 0.0 if min_gap is None else min_gap * (s[0] + eta) + 2 * eta
    if floor > s[0] - (k - 1) * gap:
        with pytest.raises(InputError, match="cannot hold together"):
            nearest_spectrum(torch.from_numpy(s), max_cond, min_gap, margin=eta)
        return
    result = nearest_spectrum(torch.from_numpy(s), max_cond, min_gap, margin=eta)
    tol = spectrum_tolerance(k, s[0])
    np.testing.assert_allclose(result.numpy(), active_set_reference(s, floor, gap), atol=tol)
    again = nearest_spectrum(result, max_cond, min_gap)
    torch.testing.assert_close(again, result, rtol=0, atol=tol)
