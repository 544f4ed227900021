"""The verdicts of compare_gradients are honest: ✓ only where the gradient is the derivative.

Each case has an independent reference: reconstruct's gradient is W (⟨W, U S Vᵀ⟩ = ⟨W, A⟩),
the polar gradient has a closed form from a numpy float64 SVD, and where neither
applies float64 central differences.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import (
    exactness_tolerance,
    near_tie_tolerance,
    random_matrix,
    relative_error,
    with_singular_values,
)

from svdguard.app.gradient_report import (
    BIASED,
    DERIVATIVE,
    NONFINITE,
    UNDEFINED,
    UNVERIFIED,
    compare_gradients,
    value_runs,
)
from svdguard.app.probes import make_probe, upstream_from_tensors

DTYPES = (torch.float32, torch.float64)


def polar_reference(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """d⟨W, U Vᵀ⟩/dA for a full-rank square real matrix: U X Vᵀ, X_ij = (B_ij − B_ji)/(s_i + s_j)."""
    u, s, vt = np.linalg.svd(a.double().numpy())
    b = u.T @ w.double().numpy() @ vt.T
    return torch.from_numpy(u @ ((b - b.T) / (s[:, None] + s[None, :])) @ vt)


def reference(a: torch.Tensor, loss: str) -> torch.Tensor:
    w = make_probe(loss, a.shape).weights[0]
    return w if loss == "reconstruct" else polar_reference(a, w)


SQUARE = [3.0, 2.7, 2.5, 1.0]
TIED = [3.0, 2.0, 2.0, 1.0]
CASES = [
    # (name, singular values, loss, options, verdict)
    ("separated auto", SQUARE, "reconstruct", {}, DERIVATIVE),
    ("tie polar auto", TIED, "polar", {}, DERIVATIVE),
    ("tie polar clamp", TIED, "polar", {"method": "clamp", "eps": 1e-6}, DERIVATIVE),
    ("tie polar lorentz", TIED, "polar", {"method": "lorentz"}, DERIVATIVE),
    ("tie polar taylor", TIED, "polar", {"method": "taylor"}, DERIVATIVE),
    ("tie polar seed", TIED, "polar", {"method": "seed", "eps": 1e-6}, BIASED),
    ("tie reconstruct auto", TIED, "reconstruct", {}, BIASED),
    ("separated lorentz", SQUARE, "reconstruct", {"method": "lorentz", "eps": 1.0}, BIASED),
    ("separated taylor", SQUARE, "reconstruct", {"method": "taylor", "degree": 1}, BIASED),
    ("separated clamp", SQUARE, "reconstruct", {"method": "clamp", "eps": 0.5}, BIASED),
    ("clamp outside zone", SQUARE, "reconstruct", {"method": "clamp", "eps": 1e-3}, DERIVATIVE),
    ("trivialize", SQUARE, "polar", {"method": "trivialize", "max_cond": 2.0}, BIASED),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("name", "values", "loss", "options", "verdict"), CASES, ids=[c[0] for c in CASES]
)
def test_verdict_agrees_with_the_reference(name, values, loss, options, verdict, dtype):
    a = with_singular_values(values, 4, 4, seed=2).to(dtype)
    result = compare_gradients(a, make_probe(loss, a.shape, dtype=dtype), **options)
    (element,) = result.report.elements
    assert element.verdict.kind == verdict, element.verdict
    error = relative_error(result.gradient.double(), reference(a, loss))
    if verdict == DERIVATIVE:
        assert error <= exactness_tolerance(dtype)
    else:
        assert error > exactness_tolerance(dtype)  # biased means really not the derivative
        assert element.verdict.causes
    if element.bias is not None and name != "trivialize":
        # The bias is measured against the exact backward; where that is the derivative
        # (no tie) it is the error itself, in the Frobenius norm.
        g = result.gradient.double()
        ref = reference(a, loss)
        measured = float(torch.linalg.norm(g - ref) / torch.linalg.norm(ref))
        if not element.has_ties:
            assert element.bias == pytest.approx(measured, abs=exactness_tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_stabilizer_acting_on_rounding_noise_near_a_tie_is_not_called_biased(dtype):
    """Gap 1e-5 (above rounding, inside clamp's default zone in float32): polar's numerator
    there is rounding, so clamp changes noise, not the derivative; both are within the
    accuracy any backward has at that gap (ε·σ_max/gap)."""
    gap = 1e-5
    a = with_singular_values([3.0, 2.0 + gap, 2.0, 1.0], 4, 4, seed=2).to(dtype)
    probe = make_probe("polar", a.shape, dtype=dtype)
    result = compare_gradients(a, probe, method="clamp")
    (element,) = result.report.elements
    assert element.verdict.kind == DERIVATIVE
    error = relative_error(result.gradient.double(), polar_reference(a, probe.weights[0]))
    assert error <= max(exactness_tolerance(dtype), near_tie_tolerance(gap, 3.0, dtype))
    # reconstruct's numerator there is signal: the same clamp is biased.
    if dtype == torch.float32:
        recon = compare_gradients(
            a, make_probe("reconstruct", a.shape, dtype=dtype), method="clamp"
        )
        assert recon.report.elements[0].verdict.kind == BIASED


@pytest.mark.parametrize("dtype", DTYPES)
def test_null_space_and_tie_dependence_are_undefined(dtype):
    rank2 = (random_matrix(8, 2, seed=0) @ random_matrix(2, 5, seed=1)).to(dtype)
    element = compare_gradients(rank2, make_probe("polar", rank2.shape, dtype=dtype)).report
    (facts,) = element.elements
    assert facts.verdict.kind == UNDEFINED and facts.verdict.where == "s3..s5 null space"
    assert facts.native_verdict.kind == UNDEFINED  # torch's finite value is no derivative either
    tied = with_singular_values(TIED, 4, 4, seed=9).to(dtype)
    vectors = compare_gradients(tied, make_probe("vectors", tied.shape, dtype=dtype))
    assert vectors.report.elements[0].verdict.where == "s2..s3 basis"


def test_upstream_at_a_tie_is_unverified_and_apart_from_ties_a_derivative():
    tied = with_singular_values(TIED, 4, 4, seed=9)
    upstream = upstream_from_tensors({"S": torch.ones(4, dtype=torch.float64)}, tied.shape)
    facts = compare_gradients(tied, upstream).report.elements[0]
    assert facts.verdict.kind == UNVERIFIED and facts.verdict.where == "tie s2..s3"
    apart = with_singular_values(SQUARE, 4, 4, seed=9)
    assert compare_gradients(apart, upstream).report.elements[0].verdict.kind == DERIVATIVE


def test_native_nonfinite_cause_is_the_tie():
    a = torch.eye(3, dtype=torch.float64)
    facts = compare_gradients(a, make_probe("polar", a.shape), method="native").report.elements[0]
    assert facts.verdict.kind == NONFINITE
    assert facts.verdict.causes == (
        "the singular values s1..s3 are tied and torch's backward divides by s_j² − s_i² = 0",
    )


def test_value_runs_are_one_based():
    assert value_runs([1, 2]) == "s2..s3"
    assert value_runs([0, 1, 3]) == "s1..s2, s4"
    assert value_runs([]) == ""


@pytest.mark.parametrize("dtype", DTYPES)
def test_exactly_zero_tied_values_lose_the_in_block_part_and_say_so(dtype):
    """diag(1, 0, 0): s2 = s3 = 0 exactly, so d_23 = 0 and the term is dropped; the gradient
    of ⟨W, A⟩ is W, and the reported verdict is not ✓."""
    a = torch.diag(torch.tensor([1.0, 0.0, 0.0], dtype=dtype))
    probe = make_probe("reconstruct", a.shape, dtype=dtype)
    result = compare_gradients(a, probe)
    (facts,) = result.report.elements
    assert relative_error(result.gradient.double(), probe.weights[0].double()) > (
        exactness_tolerance(dtype)
    )
    assert facts.verdict.kind == BIASED and facts.verdict.where == "tie s2..s3"
