"""Calibration of inspect's findings: thresholds against Monte Carlo, false alarms, precision."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    HEALTH_FALSE_ALARM_RATE,
    haar_unitary,
    quantile_tolerance,
    with_singular_values,
)

import svdguard
from svdguard.app.report import Severity
from svdguard.tolerances import health_max_cond, machine_eps, typical_cond

SEVERITY_RANK = {None: 0, Severity.INFO: 1, Severity.WARNING: 2, Severity.ERROR: 3}


@pytest.mark.parametrize(("m", "n"), [(12, 12), (16, 12), (24, 12), (20, 16)])
def test_typical_cond_matches_monte_carlo(m: int, n: int) -> None:
    samples, quantile = 20_000, 0.99
    rng = np.random.default_rng(m * 100 + n)
    s = np.linalg.svd(rng.standard_normal((samples, m, n)), compute_uv=False)
    empirical = float(np.quantile(s[:, 0] / s[:, -1], quantile))
    model = typical_cond(m, n, quantile)
    assert abs(model / empirical - 1) <= quantile_tolerance(quantile, samples), (model, empirical)
    assert typical_cond(n, m, quantile) == model  # σ(A) = σ(Aᵀ)


def test_typical_cond_square_follows_edelman() -> None:
    # P(κ₂ > x·n) ≈ 2/x for square Gaussian matrices: the 99 % quantile is ≈ 200·n.
    for n in (64, 384, 1024):
        assert typical_cond(n, n) == pytest.approx(200 * n, rel=0.02)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_health_profile_rarely_warns_on_random_matrices(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(11)
    shapes = [(24, 24), (32, 24), (48, 24), (24, 96)]
    reports = [
        svdguard.diagnose(torch.randn(m, n, generator=g, dtype=torch.float64).to(dtype))
        for m, n in shapes
        for _ in range(100)
    ]
    warned = sum(1 for r in reports if SEVERITY_RANK[r.severity] >= 2)
    assert warned <= HEALTH_FALSE_ALARM_RATE * len(reports), warned
    # …while every one of them has near ties in the svd-grad sense at float32.
    if dtype == torch.float32:
        grad = svdguard.diagnose(torch.randn(384, 384, generator=g), profile="svd-grad")
        assert "near-degenerate" in grad.flags


def test_health_threshold_is_shape_and_precision_aware() -> None:
    eps32 = machine_eps(torch.float32)
    assert health_max_cond(torch.float32, 384, 384) == pytest.approx(typical_cond(384, 384))
    assert health_max_cond(torch.float32, 1536, 384) == pytest.approx(1 / eps32**0.5)
    # A square float32 weight with κ₂ = 5e3 is ordinary (Gaussian 384×384 reach 7.7e4 once in
    # a hundred); the same κ₂ in a tall 1536×384 weight is unusual and beyond half the digits
    # (and above its rank tolerance 1536·ε₃₂ = 1.8e-4 = 1/5.5e3: not rank-deficient).
    s_square = np.geomspace(1.0, 1 / 5e3, 384)
    square = with_singular_values(s_square.tolist(), 384, 384, seed=1, dtype=torch.float32)
    tall = with_singular_values(s_square.tolist(), 1536, 384, seed=1, dtype=torch.float32)
    assert svdguard.diagnose(square).findings == ()
    assert svdguard.diagnose(tall).flags == ("ill-conditioned",)
    assert "beyond what 1 in 100 random 1536×384" in svdguard.diagnose(tall).findings[0].message


def test_orthogonal_weights_error_only_in_svd_grad() -> None:
    q = haar_unitary(32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for weight in (q.to(torch.float32), torch.eye(32)):
        health = svdguard.diagnose(weight)
        grad = svdguard.diagnose(weight, profile="svd-grad")
        assert health.severity is Severity.INFO and health.flags == ("tied",)
        assert grad.severity is Severity.ERROR and grad.flags == ("tied",)
        assert "svd-grad" in health.findings[0].message
        assert "NaN" in grad.findings[0].message


def _minilm_like(g: torch.Generator) -> list[torch.Tensor]:
    """float32 weights with transformer-like spectra: Gaussian, and Gaussian with a decayed tail."""
    weights = []
    for m, n in [(96, 96), (384, 96), (96, 384)]:
        a = torch.randn(m, n, generator=g, dtype=torch.float64) / n**0.5
        weights.append(a.to(torch.float32))
        u, s, vh = torch.linalg.svd(a, full_matrices=False)
        s = s * torch.logspace(0, -5, s.numel(), dtype=torch.float64)  # κ₂ up to ~1e5–1e6
        weights.append(((u * s) @ vh).to(torch.float32))
    return weights


@pytest.mark.parametrize("profile", ["health", "svd-grad"])
def test_float32_never_reports_a_severity_float64_would_not(profile: str) -> None:
    g = torch.Generator().manual_seed(5)
    weights = _minilm_like(g) + [
        with_singular_values([1.0, 0.5, 1e-12], 3, 3, seed=6),  # float64 data, κ = 1e12
        haar_unitary(16, dtype=torch.float64, generator=g).to(torch.float32),
        with_singular_values([2.0, 1.0, 1.0 - 1e-5, 0.5], 4, 4, seed=3, dtype=torch.float32),
    ]
    for weight in weights:
        exact = svdguard.diagnose(weight, profile=profile)
        coarse = svdguard.diagnose(weight, profile=profile, precision=torch.float32)
        assert SEVERITY_RANK[coarse.severity] <= SEVERITY_RANK[exact.severity], (
            exact.findings,
            coarse.findings,
        )
        for finding in coarse.findings:
            if finding.flag.value != "unresolved":
                assert finding.severity.rank <= (exact.severity.rank if exact.severity else 0)


def test_float32_sample_checkpoint_is_never_worse() -> None:
    sample = Path(__file__).resolve().parents[2] / "sample_data" / "checkpoint.safetensors"
    for profile in ("health", "svd-grad"):
        exact = {r.name: r for r in svdguard.inspect(sample, profile=profile)}
        coarse = {r.name: r for r in svdguard.inspect(sample, profile=profile, precision="float32")}
        for name, row in coarse.items():
            severity = getattr(row, "severity", None)
            assert SEVERITY_RANK[severity] <= SEVERITY_RANK[getattr(exact[name], "severity", None)]


def test_stable_and_effective_rank_match_their_definitions() -> None:
    s = np.array([4.0, 2.0, 1.0, 0.5])
    a = with_singular_values(s.tolist(), 6, 4, seed=9)
    report = svdguard.diagnose(a)
    ref = np.linalg.svd(a.numpy(), compute_uv=False)
    assert report.stable_rank == pytest.approx(np.linalg.norm(a.numpy()) ** 2 / ref[0] ** 2)
    p = ref / ref.sum()
    assert report.effective_rank == pytest.approx(np.exp(-(p * np.log(p)).sum()))
    assert report.sketch is not None and report.sketch[0] == 0.0
    assert report.sketch[-1] == pytest.approx(np.log10(ref[-1] / ref[0]))
