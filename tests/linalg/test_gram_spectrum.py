"""The Gram route of ``singular_values``: certified against numpy's float64 SVD, or refused.

Every comparison is with ``numpy.linalg.svd(compute_uv=False)`` of the stored
matrix upcast to float64/complex128. The accuracy contract is the report's:
κ₂ and every gap within ``spectrum_report_rtol`` relative, or within the
storage dtype's floor u_w·σ_max, whichever is looser.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from svdguard import tolerances
from svdguard.errors import InputError
from svdguard.linalg.gram_spectrum import gram_certified, gram_singular_values
from svdguard.linalg.spectrum_analysis import singular_values
from tests.helpers import random_matrix, svd_resolution, with_singular_values

RTOL = tolerances.spectrum_report_rtol()


def reference(a: torch.Tensor) -> np.ndarray:
    """numpy's float64 (complex128) singular values of the stored matrix."""
    wide = torch.complex128 if a.is_complex() else torch.float64
    return np.linalg.svd(a.to(wide).numpy(), compute_uv=False)


def assert_report_accuracy(s: torch.Tensor, ref: np.ndarray, storage: torch.dtype, m: int, n: int):
    """κ₂ and every neighbouring gap within RTOL relative, or the storage floor, or the SVD's own error."""
    got = s.numpy()
    assert got.shape == ref.shape
    floor = tolerances.spectrum_storage_floor(storage, float(ref[0]))
    # Two float64 SVD-quality answers may differ by the reference's own error.
    slack = svd_resolution(m, n, float(ref[0]))
    if ref[-1] > 0:
        kappa, kappa_ref = got[0] / got[-1], ref[0] / ref[-1]
        assert abs(kappa - kappa_ref) <= max(RTOL * kappa_ref, floor / ref[-1] * kappa_ref), (
            kappa,
            kappa_ref,
        )
    gaps, gaps_ref = got[:-1] - got[1:], ref[:-1] - ref[1:]
    assert np.all(np.abs(gaps - gaps_ref) <= np.maximum(RTOL * gaps_ref, floor) + slack)


def test_the_contract_is_six_digits():
    assert RTOL <= 1e-6


@pytest.mark.parametrize("storage", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(40, 12), (12, 40), (24, 24), (300, 5)])
def test_well_conditioned_matrices_take_the_gram_route(storage, shape):
    a = random_matrix(*shape, seed=sum(shape)).to(storage)
    spectrum = singular_values(a)
    assert spectrum.method == "gram" and spectrum.dtype == torch.float64
    assert_report_accuracy(spectrum.values, reference(a), storage, *shape)


@pytest.mark.parametrize("storage", [torch.bfloat16, torch.float16])
def test_low_precision_storage_takes_the_gram_route(storage):
    a = random_matrix(30, 10, seed=3).to(storage)
    spectrum = singular_values(a)
    assert spectrum.method == "gram"
    assert_report_accuracy(spectrum.values, reference(a.float()), storage, 30, 10)


@pytest.mark.parametrize("storage", [torch.complex64, torch.complex128])
def test_complex_matrices(storage):
    a = random_matrix(20, 8, dtype=storage, seed=4)
    spectrum = singular_values(a)
    assert spectrum.method == "gram"
    assert_report_accuracy(spectrum.values, reference(a), storage, 20, 8)


@pytest.mark.parametrize("storage", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(9, 5), (5, 9), (6, 6)])
def test_rank_deficient_matrices_go_to_the_svd(storage, shape):
    k = min(shape)
    values = [3.0, 2.0, 1.0] + [0.0] * (k - 3)
    a = with_singular_values(values, *shape, seed=k).to(storage)
    spectrum = singular_values(a)
    assert spectrum.method == "svd"
    ref = reference(a)
    assert np.allclose(spectrum.values.numpy(), ref, rtol=0, atol=svd_resolution(*shape, ref[0]))


def test_exact_tie_in_float64_goes_to_the_svd():
    a = with_singular_values([3.0, 2.0, 2.0, 1.0], 7, 4, seed=5)
    spectrum = singular_values(a)
    assert spectrum.method == "svd"
    ref = reference(a)
    assert np.allclose(spectrum.values.numpy(), ref, rtol=0, atol=svd_resolution(7, 4, ref[0]))


def test_tie_in_float32_storage_is_resolved_to_the_storage_floor():
    """Storing in float32 splits a tie at ε₃₂ level; the Gram route sees the split as the SVD does."""
    a = with_singular_values([3.0, 2.0, 2.0, 1.0], 7, 4, seed=5).to(torch.float32)
    spectrum = singular_values(a)
    assert spectrum.method == "gram"
    ref = reference(a)
    assert_report_accuracy(spectrum.values, ref, torch.float32, 7, 4)
    gap_ref, gap = ref[1] - ref[2], float(spectrum.values[1] - spectrum.values[2])
    assert abs(gap - gap_ref) <= tolerances.spectrum_storage_floor(torch.float32, ref[0])


def crossover_kappa(k: int, storage: torch.dtype) -> float:
    """κ where the certificate on σ_min flips, from its documented form (σ_max = 1).

    δ = c·√k·ε₆₄; σ_min² ≥ δ, and e_k = δ/σ_min ≤ max(RTOL/2·σ_min, u_w):
    σ_min ≥ max(min(√(2δ/RTOL), δ/u_w), √δ).
    """
    delta = tolerances.GRAM_ERROR_FACTOR * math.sqrt(k) * float(np.finfo(np.float64).eps)
    unit = float(torch.finfo(storage).eps) / 2
    return 1.0 / max(min(math.sqrt(2 * delta / RTOL), delta / unit), math.sqrt(delta))


def signed_permuted_diagonal(values: torch.Tensor, m: int, seed: int) -> torch.Tensor:
    """An m×k matrix P diag(values) Q with signed permutations P, Q: exact in any dtype."""
    g = torch.Generator().manual_seed(seed)
    k = values.numel()
    a = torch.zeros(m, k, dtype=values.dtype)
    rows, columns = torch.randperm(m, generator=g)[:k], torch.randperm(k, generator=g)
    signs = torch.randint(0, 2, (k,), generator=g).to(values.dtype) * 2 - 1
    a[rows, columns] = values * signs
    return a


def realized(values: list[float], m: int, k: int, storage: torch.dtype) -> torch.Tensor:
    """A matrix stored in ``storage`` whose singular values are ``values`` (rounded to it).

    float64: Haar-random factors. float32 rounding would move a σ_min near the
    float32 crossover (κ ~ 1e7) by more than itself, so there the factors are
    signed permutations, which store exactly.
    """
    if storage == torch.float64:
        return with_singular_values(values, m, k, seed=7)
    return signed_permuted_diagonal(torch.tensor(values, dtype=storage), m, seed=7)


@pytest.mark.parametrize("storage", [torch.float64, torch.float32])
def test_the_certificate_switches_to_the_svd_at_the_crossover(storage):
    k = 4
    kappa_star = crossover_kappa(k, storage)
    methods = {}
    for factor in (0.5, 2.0):
        kappa = factor * kappa_star
        a = realized([1.0, 0.7, 0.4, 1.0 / kappa], k + 8, k, storage)
        ref = reference(a)
        spectrum = singular_values(a)
        methods[factor] = spectrum.method
        got = spectrum.values.numpy()
        kappa_ref = ref[0] / ref[-1]
        # Served by either method, κ meets six digits of the float64 SVD's (or the storage floor).
        allowed = max(RTOL, tolerances.spectrum_storage_floor(storage, 1.0) * kappa_ref)
        assert abs(got[0] / got[-1] / kappa_ref - 1) <= allowed
    assert methods == {0.5: "gram", 2.0: "svd"}


def test_just_below_the_crossover_the_gram_kappa_is_within_six_digits():
    """The worst matrix the Gram route still serves in float64: κ to 1e-6 of numpy's."""
    kappa = 0.9 * crossover_kappa(6, torch.float64)
    a = with_singular_values([1.0, 0.8, 0.6, 0.4, 0.2, 1.0 / kappa], 50, 6, seed=8)
    spectrum = singular_values(a)
    assert spectrum.method == "gram"
    assert_report_accuracy(spectrum.values, reference(a), torch.float64, 50, 6)


@pytest.mark.parametrize("scale", [1e-200, 1e200, 1e-30])
def test_extreme_scales_are_rescaled_exactly(scale):
    base = random_matrix(10, 6, seed=9)
    a = base * scale
    spectrum = singular_values(a)
    assert spectrum.method == "gram"
    ref = reference(base) * scale  # scaling commutes with the SVD
    assert np.all(np.isfinite(spectrum.values.numpy()))
    assert_report_accuracy(spectrum.values, ref, torch.float64, 10, 6)


def test_zero_matrix_is_exact():
    spectrum = singular_values(torch.zeros(5, 3))
    assert spectrum.values.tolist() == [0.0, 0.0, 0.0]


def test_route_svd_skips_the_gram_route_and_unknown_routes_are_refused():
    a = random_matrix(8, 4, seed=10)
    assert singular_values(a, route="svd").method == "svd"
    assert singular_values(a, precision=torch.float32).method == "svd"
    with pytest.raises(InputError, match="route"):
        singular_values(a, route="eig")


def test_gram_singular_values_refuses_what_it_cannot_vouch_for():
    assert gram_singular_values(torch.ones(4, 3, dtype=torch.float64), torch.float64) is None


def test_certificate_closed_forms():
    """e_i = min(δ/s_i, √δ); hand-computed cases on either side of each condition."""
    s = torch.tensor([1.0, 0.5, 1e-2], dtype=torch.float64)
    # e = (1e-10, 2e-10, 1e-8): σ_min relative 1e-6 ≤ rtol/2 = 5e-6; gaps 0.49 ≫ errors.
    assert gram_certified(s, 1e-10, 0.0, 1e-5)
    # rtol/2 = 5e-7 < 1e-6: refused, unless the floor 1e-8 covers e_k = 1e-8.
    assert not gram_certified(s, 1e-10, 0.0, 1e-6)
    assert gram_certified(s, 1e-10, 1e-8, 1e-6)
    # A gap of 1e-9 between 0.5 and 0.5 − 1e-9 with e ≈ 2e-10 each: 4e-10 > 1e-6·1e-9.
    tied = torch.tensor([1.0, 0.5, 0.5 - 1e-9, 0.4], dtype=torch.float64)
    assert not gram_certified(tied, 1e-10, 0.0, 1e-6)
    assert gram_certified(tied, 1e-10, 1e-9, 1e-6)
    # A zero singular value: e_k = √δ > 0 = rtol·0, refused without a floor, and below √δ.
    assert not gram_certified(torch.tensor([1.0, 0.0], dtype=torch.float64), 1e-12, 0.0, 1e-6)
    # σ_min = 1e-6 < √δ = 1e-5: refused even with a floor that covers its error bound.
    assert not gram_certified(torch.tensor([1.0, 1e-6], dtype=torch.float64), 1e-10, 1.0, 1e-6)
    nan = torch.tensor([1.0, math.nan], dtype=torch.float64)
    assert not gram_certified(nan, 1e-12, 1.0, 1e-6)


def test_certificate_takes_numpy_arrays_and_a_zero_delta():
    """The same verdicts for a tensor and its numpy array; δ = 0 makes every e_i = 0."""
    cases = [
        ([1.0, 0.5, 1e-2], 1e-10, 0.0, 1e-5),
        ([1.0, 0.5, 1e-2], 1e-10, 0.0, 1e-6),
        ([1.0, 0.5, 0.5 - 1e-9, 0.4], 1e-10, 0.0, 1e-6),
        ([1.0, 0.0], 1e-12, 0.0, 1e-6),
    ]
    for values, delta, floor, rtol in cases:
        s = torch.tensor(values, dtype=torch.float64)
        assert gram_certified(s.numpy(), delta, floor, rtol) == gram_certified(
            s, delta, floor, rtol
        )
    # The zero matrix: δ = c·√k·ε·0² = 0, e_i = min(0/ŝ_i, 0) = 0 ≤ every allowance.
    assert gram_certified(np.zeros(3), 0.0, 0.0, 1e-6)
    # One value: only the ends are checked; e_1 = min(δ/2, √δ) = 5e-11 ≤ rtol/2·2 = 1e-6.
    assert gram_certified(np.array([2.0]), 1e-10, 0.0, 1e-6)


def test_ill_conditioned_float32_is_served_within_the_storage_bound():
    """κ = 1e4 in float32 storage: the Gram route serves it, κ₂ within max(RTOL, u₃₂·κ₂)."""
    values = torch.logspace(0, -4, 64, dtype=torch.float64)
    a = with_singular_values(values, 200, 64, seed=12).to(torch.float32)
    spectrum = singular_values(a)
    assert spectrum.method == "gram"
    assert_report_accuracy(spectrum.values, reference(a), torch.float32, 200, 64)


def test_inspect_rows_name_the_method(tmp_path):
    import svdguard

    np.save(tmp_path / "fine.npy", random_matrix(30, 10, seed=13).numpy())
    np.save(
        tmp_path / "deficient.npy", with_singular_values([2.0, 1.0, 0.0], 6, 3, seed=14).numpy()
    )
    rows = {row.name: row for row in svdguard.inspect(tmp_path)}
    assert rows["fine.npy"].to_dict()["method"] == "gram"
    assert rows["deficient.npy"].to_dict()["method"] == "svd"
    np.testing.assert_allclose(
        rows["fine.npy"].cond,
        (lambda s: s[0] / s[-1])(np.linalg.svd(np.load(tmp_path / "fine.npy"), compute_uv=False)),
        rtol=RTOL,
    )
