"""svdguard.diagnose and svdguard.linalg.spectrum_analysis against numpy float64 references and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import haar_unitary, random_matrix, with_singular_values

from svdguard.app.diagnose import diagnose
from svdguard.app.report import Flag, Severity
from svdguard.cli.hints import finding_text
from svdguard.errors import InputError, NumericalError
from svdguard.linalg import spectrum_analysis as diagnostics
from svdguard.linalg.spectrum import singular_gaps
from svdguard.linalg.spectrum_analysis import (
    as_matrix,
    count_close_pairs,
    singular_values,
)
from svdguard.tolerances import machine_eps

EPS64 = machine_eps(torch.float64)


def spectrum_atol(sigma_max: float, m: int, n: int) -> float:
    """Absolute agreement of two float64 SVDs of the same matrix: 10·max(m, n)·ε·σ_max.

    Each backward-stable SVD perturbs every singular value by at most
    p(m, n)·ε·σ_max (LAPACK Users' Guide §4.9); 10·max(m, n) covers p for two
    different drivers (gesdd here and in numpy, with different blockings).
    """
    return 10 * max(m, n) * EPS64 * sigma_max


def reference(a: np.ndarray) -> dict[str, float]:
    """κ₂, xDISNA minimum gap/σ_max and σ's of ``a`` in numpy float64, computed independently."""
    m, n = a.shape
    s = np.linalg.svd(a.astype(np.float64), compute_uv=False)
    k = s.size
    gaps = []
    for i in range(k):
        others = [abs(s[i] - s[j]) for j in range(k) if j != i]
        gap = min(others) if others else math.inf
        if m != n:
            gap = min(gap, s[i])
        gaps.append(gap)
    return {
        "sigma_max": s[0],
        "sigma_min": s[-1],
        "cond": s[0] / s[-1] if s[-1] > 0 else math.inf,
        "rel_min_gap": min(gaps) / s[0],
        "s": s,
    }


def pairs_within(s: np.ndarray, tol: float) -> int:
    """Brute force #{i < j : |s_i − s_j| ≤ tol}."""
    return sum(abs(s[i] - s[j]) <= tol for i in range(s.size) for j in range(i + 1, s.size))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(12, 12), (20, 9), (7, 15)])
def test_numbers_match_numpy(dtype: torch.dtype, shape: tuple[int, int]) -> None:
    m, n = shape
    a = random_matrix(m, n, dtype=dtype, seed=m * n)
    report = diagnose(a)
    a64 = a.double().numpy()  # the stored values, exactly
    ref = reference(a64)
    atol = spectrum_atol(ref["sigma_max"], m, n)
    assert report.compute_dtype == "float64"
    assert abs(report.sigma_max - ref["sigma_max"]) <= atol
    assert abs(report.sigma_min - ref["sigma_min"]) <= atol
    # κ = σ_max/σ_min: relative error ≤ atol/σ_max + atol/σ_min.
    cond_rtol = atol / ref["sigma_max"] + atol / ref["sigma_min"]
    assert report.cond == pytest.approx(ref["cond"], rel=cond_rtol)
    assert report.rel_min_gap == pytest.approx(ref["rel_min_gap"], abs=2 * atol / ref["sigma_max"])
    # numpy's matrix_rank default on the array in its own dtype is the documented tolerance.
    assert report.rank == np.linalg.matrix_rank(a.numpy())
    eps_w = machine_eps(dtype)
    assert report.rank_tol == pytest.approx(max(m, n) * eps_w * ref["sigma_max"], rel=1e-12)
    assert report.vector_error_bound == pytest.approx(eps_w / report.rel_min_gap, rel=1e-12)
    assert report.tied_pairs == 0  # a Gaussian matrix has no ties
    assert report.near_degenerate_pairs == pairs_within(ref["s"], report.near_degenerate_tol)


def test_conv_kernel_is_analysed_as_out_by_rest() -> None:
    kernel = random_matrix(6, 2 * 3 * 3, seed=3).reshape(6, 2, 3, 3)
    report = diagnose(kernel)
    assert report.shape == (6, 2, 3, 3) and report.matrix_shape == (6, 18) and report.reshaped
    ref = reference(kernel.reshape(6, 18).numpy())
    assert report.cond == pytest.approx(ref["cond"], rel=1e-12)
    assert as_matrix(kernel).shape == (6, 18)


def test_xdisna_gap_includes_s_i_for_non_square_only() -> None:
    # s = (4, 3, 0.5): pair gaps (1, 1, 2.5); a tall matrix also counts s_3 = 0.5 itself.
    square = with_singular_values([4.0, 3.0, 0.5], 3, 3, seed=1)
    tall = with_singular_values([4.0, 3.0, 0.5], 6, 3, seed=1)
    assert diagnose(square).rel_min_gap == pytest.approx(1.0 / 4.0, rel=1e-13)
    assert diagnose(tall).rel_min_gap == pytest.approx(0.5 / 4.0, rel=1e-13)


def test_xdisna_gaps_match_the_pairwise_definition() -> None:
    g = torch.Generator().manual_seed(5)
    s = torch.cat([torch.rand(9, generator=g, dtype=torch.float64), torch.tensor([0.5, 0.5])])
    s = s.sort(descending=True).values
    pairwise = (s[:, None] - s[None, :]).abs().fill_diagonal_(math.inf).amin(dim=1)
    for m, n in ((11, 11), (15, 11), (11, 13)):
        expected = pairwise if m == n else torch.minimum(pairwise, s)  # xDISNA, brute force
        assert torch.equal(singular_gaps(s, m, n), expected)
        assert torch.equal(singular_gaps(torch.stack([s, s]), m, n), torch.stack([expected] * 2))
    assert singular_gaps(torch.tensor([2.0]), 1, 1).item() == math.inf


def test_one_by_one_square_has_infinite_gap() -> None:
    report = diagnose(torch.tensor([[2.5]], dtype=torch.float64))
    assert report.rel_min_gap == math.inf and report.vector_error_bound == 0.0
    assert report.cond == 1.0 and report.findings == ()


def test_count_close_pairs_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    # Clusters of repeated values (ties of size 1..4) plus spread values.
    values = torch.cat([torch.full((c,), float(v)) for v, c in [(5, 3), (4, 1), (2, 4), (1, 2)]])
    values = torch.cat([values, torch.rand(20, generator=g, dtype=torch.float64) * 6])
    s = values.double().sort(descending=True).values
    for tol in (0.0, 1e-3, 0.05, 0.3):
        assert count_close_pairs(s, tol) == pairs_within(s.numpy(), tol)


def test_tied_singular_values_error_in_svd_grad_info_in_health() -> None:
    # diag(3, 2, 2, 1) rotated: one exactly tied pair in exact arithmetic.
    a = with_singular_values([3.0, 2.0, 2.0, 1.0], 4, 4, seed=7)
    report = diagnose(a, profile="svd-grad")
    assert report.tied_pairs == 1 and report.near_degenerate_pairs == 1
    assert report.flags == ("tied",) and report.severity is Severity.ERROR
    assert report.findings[0].code == "SG301"
    # The library speaks of numbers and consequences; the CLI adds where to go next.
    message = report.findings[0].message
    assert "svdguard grad" not in message and "--" not in message
    assert "svdguard grad" in finding_text(report.findings[0])
    # Using the weight is not affected by a tie: info, saying which question it answers.
    health = diagnose(a)
    assert health.flags == ("tied",) and health.severity is Severity.INFO
    assert "svd-grad" in health.findings[0].message
    # The tie tolerance is max(max(m, n)·ε_p·σ_max, ε_w·σ_max) = 4·ε·3 for float64 data.
    assert report.tie_tol == pytest.approx(4 * EPS64 * 3.0, rel=1e-12)


def test_identity_every_pair_tied() -> None:
    report = diagnose(torch.eye(5, dtype=torch.float32))
    assert report.tied_pairs == 10 and report.cond == 1.0 and report.rank == 5


def test_near_degenerate_pair_is_a_warning() -> None:
    # Relative gap 1e-10 in float64: above the tie level (~1e-15), below √ε (1.5e-8).
    a = with_singular_values([1.0, 0.5, 0.5 - 1e-10, 0.1], 4, 4, seed=2)
    report = diagnose(a, profile="svd-grad")
    assert report.tied_pairs == 0 and report.near_degenerate_pairs == 1
    assert report.flags == ("near-degenerate",) and report.severity is Severity.WARNING
    assert report.near_degenerate_tol == pytest.approx(math.sqrt(EPS64), rel=1e-12)
    # The amplification σ_max/gap = 1e10 is named.
    assert "1.0e+10×" in report.findings[0].message
    # gap_rtol below the gap removes the flag; above it keeps it; 0 switches it off.
    assert diagnose(a, profile="svd-grad", gap_rtol=1e-11).findings == ()
    assert diagnose(a, profile="svd-grad", gap_rtol=1e-9).flags == ("near-degenerate",)
    assert diagnose(a, profile="svd-grad", gap_rtol=0).findings == ()
    # The health profile does not evaluate near ties unless selected.
    assert diagnose(a).findings == ()
    assert diagnose(a, select=["SG302"]).flags == ("near-degenerate",)


def test_float32_working_dtype_thresholds() -> None:
    # A tie stored in float32: the rounding of the entries splits it by ~ε₃₂·σ_max, which
    # a float64 SVD resolves, but the tie level of float32 data is ε₃₂·σ_max: still tied.
    a = with_singular_values([1.0, 0.5, 0.5, 0.1], 4, 4, seed=2, dtype=torch.float32)
    report = diagnose(a)
    assert report.dtype == "float32" and report.compute_dtype == "float64"
    assert report.tie_tol == pytest.approx(machine_eps(torch.float32) * report.sigma_max, rel=1e-9)
    assert report.tied_pairs == 1
    assert diagnose(a, profile="svd-grad").severity is Severity.ERROR


def test_rank_deficient_and_ill_conditioned() -> None:
    deficient = with_singular_values([2.0, 1.0, 0.0], 5, 3, seed=4)
    report = diagnose(deficient)
    assert report.rank == np.linalg.matrix_rank(deficient.numpy()) == 2
    assert report.flags == ("rank-deficient",) and report.severity is Severity.WARNING
    assert report.findings[0].code == "SG202"
    assert report.cond_resolved is False
    # σ_min is rounding (≤ τ = 5·ε·σ_max): κ ≥ σ_max/(σ_min + τ) lies in [1/(10ε), 1/(5ε)].
    assert 1 / (10 * EPS64) <= report.cond_lower_bound <= 1 / (5 * EPS64)

    ill = with_singular_values([1.0, 0.7, 1e-9], 3, 3, seed=5)
    report = diagnose(ill)
    assert report.rank == 3 and report.flags == ("ill-conditioned",)
    assert report.cond == pytest.approx(1e9, rel=1e-5)
    assert diagnose(ill, max_cond=1e10).findings == ()
    assert diagnose(ill, max_cond=math.inf).findings == ()
    assert diagnose(ill, ignore=["ill-conditioned"]).findings == ()
    with pytest.raises(InputError, match="max_cond"):
        diagnose(ill, max_cond=0.5)
    with pytest.raises(InputError, match="gap_rtol"):
        diagnose(ill, gap_rtol=-1.0)
    # The finding names the library parameter behind its threshold, never a flag;
    # the CLI's rendering adds the flag.
    (finding,) = report.findings
    assert finding.parameter == "max_cond" and "--" not in finding.message
    assert finding.to_dict()["parameter"] == "max_cond"
    assert finding_text(finding).endswith("(threshold: --max-cond)")


def test_zero_matrix_is_one_warning() -> None:
    report = diagnose(torch.zeros(3, 4))
    assert report.flags == ("zero",) and report.severity is Severity.WARNING
    assert report.cond == math.inf and report.rank == 0 and report.rel_min_gap is None


def test_nonfinite_is_reported_not_raised() -> None:
    a = torch.ones(3, 3)
    a[1, 2] = float("nan")
    a[0, 0] = float("inf")
    report = diagnose(a)
    assert report.nonfinite == 2 and report.flags == ("nonfinite",)
    assert report.severity is Severity.ERROR and report.sigma_max is None


@pytest.mark.parametrize("storage", [torch.bfloat16, torch.float16])
def test_low_precision_noise_floor(storage: torch.dtype) -> None:
    eps_s = machine_eps(storage)
    # A gap of eps_s/2·σ_max, well above √ε₃₂ (so not near-degenerate in float32), is
    # below the storage noise floor ε_s·σ_max: an info finding.
    spectrum = [1.0, 0.6, 0.6 - eps_s / 2, 0.2]
    a = with_singular_values(spectrum, 6, 4, seed=8).to(storage)
    report = diagnose(a)
    ref = reference(a.double().numpy())
    assert report.dtype == str(storage).removeprefix("torch.")
    assert report.noise_floor == pytest.approx(eps_s * ref["sigma_max"], rel=1e-12)
    assert report.sigma_max == pytest.approx(ref["sigma_max"], rel=1e-12)
    assert Flag.NOISE_FLOOR.value in report.flags
    assert report.severity is Severity.INFO


def test_float32_precision_is_marked_unresolved() -> None:
    # κ = 1e12 in float64 data: float32 cannot resolve σ_min; κ must not be shown as exact.
    a = with_singular_values([1.0, 0.5, 1e-12], 3, 3, seed=6)
    report = diagnose(a, precision=torch.float32)
    assert report.compute_dtype == "float32" and report.cond_resolved is False
    # float64 says ill-conditioned (warning); float32 cannot decide it: unresolved (info).
    assert report.flags == ("unresolved",) and report.severity is Severity.INFO
    assert diagnose(a).flags == ("ill-conditioned",)
    lower = report.cond_lower_bound
    assert lower is not None and lower <= 1e12  # a true lower bound of the exact κ
    exact = diagnose(a)
    assert exact.cond == pytest.approx(1e12, rel=1e-3) and exact.cond_resolved


def test_complex_matrix() -> None:
    a = with_singular_values([3.0, 2.0, 1.0], 4, 3, dtype=torch.complex128, seed=9)
    report = diagnose(a)
    assert report.compute_dtype == "complex128"
    assert report.cond == pytest.approx(3.0, rel=1e-12)


def test_retry_after_a_failed_svd(monkeypatch: pytest.MonkeyPatch) -> None:
    real = torch.linalg.svdvals
    calls: list[torch.dtype] = []

    def flaky(a: torch.Tensor, **kwargs: object) -> torch.Tensor:
        calls.append(a.dtype)
        if len(calls) == 1:
            raise torch.linalg.LinAlgError("did not converge")
        return real(a)

    monkeypatch.setattr(diagnostics.torch.linalg, "svdvals", flaky)
    a = with_singular_values([2.0, 1.0], 2, 2, dtype=torch.float32, seed=1) * 1e3
    spectrum = singular_values(a, precision=torch.float32)
    assert calls == [torch.float32, torch.float64]  # the retry runs in float64
    assert spectrum.dtype == torch.float64
    # The retry scales by a power of two and unscales: the values are the true ones.
    np.testing.assert_allclose(spectrum.values.numpy(), [2e3, 1e3], rtol=1e-6)


def test_failure_after_retry_raises_numerical_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(a: torch.Tensor, **kwargs: object) -> torch.Tensor:
        raise torch.linalg.LinAlgError("did not converge")

    monkeypatch.setattr(diagnostics.torch.linalg, "svdvals", broken)
    monkeypatch.setattr(diagnostics, "gram_singular_values", lambda *args: None)  # SVD only
    with pytest.raises(NumericalError, match="after a retry"):
        diagnose(torch.eye(3))


def test_overflowing_float32_cast_falls_back_to_float64() -> None:
    a = torch.diag(torch.tensor([1e300, 1e299], dtype=torch.float64))
    report = diagnose(a, precision=torch.float32)
    assert report.compute_dtype == "float64"
    assert report.cond == pytest.approx(10.0, rel=1e-12)


@pytest.mark.parametrize(
    "bad",
    [torch.ones(3, dtype=torch.float64), torch.ones(2, 2, dtype=torch.int64), torch.ones(0, 3)],
)
def test_non_matrices_are_input_errors(bad: torch.Tensor) -> None:
    with pytest.raises(InputError):
        diagnose(bad)


def test_orthogonal_float32_every_pair_tied() -> None:
    q = haar_unitary(8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    report = diagnose(q.to(torch.float32), profile="svd-grad")
    assert report.tied_pairs == 8 * 7 // 2 and report.severity is Severity.ERROR
    assert diagnose(q.to(torch.float32)).severity is Severity.INFO


@pytest.mark.parametrize(
    "dtype",
    [
        torch.float64,
        torch.float32,
        torch.bfloat16,
        torch.float16,
        torch.float8_e4m3fn,
        torch.complex64,
    ],
)
def test_count_nonfinite_matches_numpy(dtype: torch.dtype) -> None:
    values = np.ones((4, 5))
    values[0, 1], values[2, 2], values[3, 4] = np.nan, np.inf, -np.inf
    stored = torch.from_numpy(values).to(dtype)
    # float8_e4m3fn has no infinity (±inf saturates to ±448): count what was stored.
    wide = stored.to(torch.complex128 if dtype.is_complex else torch.float64).numpy()
    expected = int((~np.isfinite(wide)).sum())
    assert expected == (1 if dtype == torch.float8_e4m3fn else 3)
    assert diagnostics.count_nonfinite(stored) == expected
    assert diagnostics.count_nonfinite(torch.ones(4, 5, dtype=dtype)) == 0
