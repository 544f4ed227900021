"""compare_gradients: values against closed forms, numpy float64 and finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import (
    central_difference_grad,
    exactness_tolerance,
    random_matrix,
    relative_error,
    with_singular_values,
)

import svdguard
from svdguard.app.gradient_report import compare_gradients, resolve_method
from svdguard.app.probes import factor_shapes, make_probe, upstream_from_tensors
from svdguard.errors import InputError
from svdguard.tolerances import machine_eps

DTYPES = (torch.float32, torch.float64)


def library_gradient(a: torch.Tensor, probe, **options) -> torch.Tensor:
    """What a user of svdguard.svd gets for the same probe: the reference for bitwise equality."""
    leaf = a.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(probe(*svdguard.svd(leaf, False, **options)), leaf)
    return grad


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "options", [{"method": "auto"}, {"method": "clamp", "eps": 1e-6}, {"method": "lorentz"}]
)
def test_gradient_is_bitwise_the_library_gradient(dtype, options):
    a = random_matrix(2, 5, 3, dtype=dtype, seed=3)
    probe = make_probe("polar", a.shape, seed=1, dtype=dtype)
    result = compare_gradients(a, probe, **options)
    assert result.gradient.dtype == dtype and result.gradient.shape == a.shape
    assert torch.equal(result.gradient, library_gradient(a, probe, **options))


@pytest.mark.parametrize("dtype", DTYPES)
def test_identity_native_nan_stabilized_exact(dtype):
    """At A = I: polar(I + E) = I + (E − Eᵀ)/2 + O(E²), so d⟨W, polar(A)⟩/dA = (W − Wᵀ)/2."""
    a = torch.eye(4, dtype=dtype)
    probe = make_probe("polar", a.shape, seed=0, dtype=dtype)
    result = compare_gradients(a, probe)
    w = probe.weights[0].to(torch.float64)
    assert relative_error(result.gradient.double(), (w - w.mT) / 2) <= exactness_tolerance(dtype)
    (facts,) = result.report.elements
    assert not facts.native_finite and math.isnan(facts.native_norm)
    assert bool(torch.isnan(result.native_gradient).any())
    assert facts.stabilized_finite
    assert facts.stabilized_norm == pytest.approx(
        float(torch.linalg.norm((w - w.mT) / 2)), rel=1e-5
    )
    assert facts.relative_difference is None
    assert facts.condition_number == 1.0 and facts.min_relative_gap == 0.0
    assert facts.guarded_pairs == 6  # every pair i < j of 4 tied values
    assert facts.has_ties and facts.gauge_invariant
    assert result.report.native_nonfinite == 1 and result.report.stabilized_nonfinite == 0


def test_reconstruct_probe_gradient_is_w_and_at_a_tie_loses_only_the_in_block_part():
    """⟨W, U diag(S) Vᴴ⟩ = ⟨W, A⟩: the true gradient is W whatever the spectrum.

    At an exact tie the symmetric in-block part of Uᵀ W V is not recoverable from
    the factors and their upstream gradients (docs/backward.md#at-an-exact-tie): the stabilized gradient
    must equal W everywhere else, and differ from it only there.
    """
    tol = exactness_tolerance(torch.float64)
    separated = with_singular_values([3.0, 2.0, 1.5, 1.0], 5, 4, seed=2)
    probe = make_probe("reconstruct", separated.shape, seed=4)
    assert relative_error(compare_gradients(separated, probe).gradient, probe.weights[0]) <= tol

    tied = with_singular_values([3.0, 2.0, 2.0, 1.0], 5, 4, seed=2)
    result = compare_gradients(tied, probe)
    assert result.report.elements[0].stabilized_finite
    u, _, vh = np.linalg.svd(tied.numpy(), full_matrices=False)
    lost = u.T @ (probe.weights[0].numpy() - result.gradient.numpy()) @ vh.T
    outside = np.ones((4, 4), dtype=bool)
    outside[1, 2] = outside[2, 1] = False  # the off-diagonal pair of the tied block {1, 2}
    assert np.abs(lost[outside]).max() <= tol * np.abs(lost).max()
    assert lost[1, 2] == pytest.approx(lost[2, 1], rel=tol)  # symmetric, as predicted
    assert abs(lost[1, 2]) > 1e-3  # and really lost: the limitation is real, not rounding


def test_eps_alone_means_clamp_and_reproduces_it():
    assert resolve_method(None, 1e-6) == "clamp"
    assert resolve_method(None, None) == "auto"
    assert resolve_method("taylor", None) == "taylor"
    with pytest.raises(InputError, match="unknown method 'best'"):
        resolve_method("best", None)
    a = with_singular_values([2.0, 1.0 + 1e-9, 1.0], 3, 3, seed=1)
    probe = make_probe("vectors", a.shape, seed=0)
    result = compare_gradients(a, probe, method=resolve_method(None, 1e-6), eps=1e-6)
    assert result.report.method == "clamp" and result.report.eps == 1e-6
    assert torch.equal(result.gradient, library_gradient(a, probe, method="clamp", eps=1e-6))
    # The clamp acts on the one pair 1e-9 apart: |s_i − s_j| < eps.
    assert result.report.elements[0].guarded_pairs == 1


def test_eps_with_auto_is_an_input_error():
    a = random_matrix(3, 3)
    with pytest.raises(InputError, match="eps applies to"):
        compare_gradients(a, make_probe("polar", a.shape), method="auto", eps=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_well_separated_gradients_agree_and_match_finite_differences(dtype):
    a64 = with_singular_values([4.0, 2.5, 1.0], 4, 3, seed=6)
    a = a64.to(dtype)
    probe = make_probe("vectors", a.shape, seed=2, dtype=dtype)
    result = compare_gradients(a, probe)
    (facts,) = result.report.elements
    tol = exactness_tolerance(dtype)
    assert facts.native_finite and facts.stabilized_finite and facts.guarded_pairs == 0
    assert not facts.has_ties and facts.gauge_invariant
    assert facts.relative_difference <= tol
    probe64 = make_probe("vectors", a.shape, seed=2)

    def loss(x: torch.Tensor) -> torch.Tensor:
        # Fix the sign gauge of the singular vectors the way LAPACK chose it at a64,
        # so the (gauge dependent) vectors loss is a smooth function near a64.
        u, s, vh = torch.linalg.svd(x, full_matrices=False)
        u0, _, _ = torch.linalg.svd(a64, full_matrices=False)
        signs = torch.sign((u * u0).sum(-2))
        return probe64(u * signs, s, signs.unsqueeze(-1) * vh)

    expected = central_difference_grad(loss, a64)
    # Fourth-order central differences are accurate to about ε^(4/5) (tests/helpers.py).
    difference_tolerance = 1e3 * machine_eps(torch.float64) ** 0.8
    assert relative_error(result.gradient.double(), expected) <= max(tol, difference_tolerance)
    # κ and the smallest relative gap against numpy float64.
    s = np.linalg.svd(a64.numpy(), compute_uv=False)
    assert facts.condition_number == pytest.approx(s[0] / s[-1], rel=tol)
    xdisna = min(min(abs(s[i] - s[j]) for j in range(3) if j != i) for i in range(3))
    xdisna = min(xdisna, s.min())  # m ≠ n: the null space of the long side sits at 0
    assert facts.min_relative_gap == pytest.approx(xdisna / s[0], rel=tol)


def test_gauge_verdict_flips_between_polar_and_vectors_at_tied_values():
    a = with_singular_values([3.0, 2.0, 2.0, 1.0], 4, 4, seed=9)
    polar = compare_gradients(a, make_probe("polar", a.shape)).report.elements[0]
    vectors = compare_gradients(a, make_probe("vectors", a.shape)).report.elements[0]
    assert polar.has_ties and polar.gauge_invariant
    assert not vectors.gauge_invariant
    (violation,) = vectors.gauge_violations
    assert violation.indices == (1, 2)  # the tied pair s_1 = s_2 = 2 (0-based)
    assert violation.relative > math.sqrt(machine_eps(torch.float64))


def test_nan_element_is_reported_and_the_others_are_untouched():
    a = random_matrix(3, 4, 3, seed=5)
    a[1, 2, 0] = math.nan
    probe = make_probe("polar", a.shape, seed=0)
    result = compare_gradients(a, probe)
    report = result.report
    assert [e.input_finite for e in report.elements] == [True, False, True]
    assert report.stabilized_nonfinite == 1 and report.native_nonfinite == 1
    assert bool(torch.isnan(result.gradient[1]).all())
    for b in (0, 2):
        single = make_probe("polar", a.shape[1:])
        single = type(single)(single.name, single.seed, (probe.weights[0][b],))
        expected = library_gradient(a[b], single)
        assert relative_error(result.gradient[b], expected) <= exactness_tolerance(torch.float64)
        assert report.elements[b].stabilized_finite and report.elements[b].native_finite
    verdicts = {"derivative": 2, "unverified": 0, "biased": 0, "undefined": 0, "nonfinite": 1}
    assert report.to_dict()["totals"] == {
        "elements": 3,
        "native_nonfinite": 1,
        "stabilized_nonfinite": 1,
        "gauge_dependent": 0,
        "acting_pairs": 0,
        "verdicts": verdicts,
        "native_verdicts": verdicts,
    }
    assert "NaN/Inf entries" in report.elements[1].verdict.causes[0]


def test_trivialize_zeroes_and_flags_ill_conditioned_elements():
    a = torch.stack(
        [
            with_singular_values([1.0, 0.5, 0.25], 3, 3, seed=1),
            with_singular_values([1.0, 1e-3, 1e-9], 3, 3, seed=2),
        ]
    )
    result = compare_gradients(a, make_probe("polar", a.shape), method="trivialize", max_cond=1e6)
    assert [e.trivialized for e in result.report.elements] == [False, True]
    assert torch.count_nonzero(result.gradient[1]) == 0
    assert torch.count_nonzero(result.gradient[0]) == 9
    assert any("trivialize" in note for note in result.report.notes)


def test_upstream_singular_value_gradient_is_u_vh():
    """d(Σ s_i)/dA = U Vᴴ (thin factors); numpy float64 reference."""
    a = random_matrix(5, 3, seed=8)
    upstream = upstream_from_tensors({"S": torch.ones(3, dtype=torch.float64)}, a.shape)
    result = compare_gradients(a, upstream)
    u, _, vh = np.linalg.svd(a.numpy(), full_matrices=False)
    assert relative_error(result.gradient, torch.from_numpy(u @ vh)) <= exactness_tolerance(
        torch.float64
    )
    assert result.report.objective == "upstream S from upstream"


def test_bfloat16_input_keeps_its_dtype_and_is_computed_in_float32():
    a = with_singular_values([3.0, 2.0, 1.0], 3, 3, seed=2).to(torch.bfloat16)
    probe = make_probe("reconstruct", a.shape, dtype=torch.float32)
    result = compare_gradients(a, probe)
    assert result.gradient.dtype == torch.bfloat16
    assert result.report.compute_dtype == "float32" and result.report.dtype == "bfloat16"
    # The gradient of ⟨W, A⟩ is W, rounded once to bfloat16.
    assert relative_error(result.gradient.double(), probe.weights[0].double()) <= 4 * machine_eps(
        torch.bfloat16
    )


def test_compare_gradients_rejects_what_has_no_svd_gradient():
    probe = make_probe("values", (3, 3))
    with pytest.raises(InputError, match=r"compare_gradients: shape \(3,\) is not a matrix"):
        compare_gradients(torch.zeros(3), probe)
    with pytest.raises(InputError, match="dtype torch.int64 is not a floating dtype"):
        compare_gradients(torch.zeros(3, 3, dtype=torch.int64), probe)
    with pytest.raises(InputError, match=r"shape \(0, 3\) has no entries"):
        compare_gradients(torch.zeros(0, 3), probe)


def test_report_to_dict_round_trips_the_facts():
    a = torch.eye(3, dtype=torch.float64)
    report = compare_gradients(a, make_probe("vectors", a.shape)).report
    data = report.to_dict()
    assert data["schema_version"] == 2 and data["shape"] == [3, 3] and data["method"] == "auto"
    (element,) = data["elements"]
    assert element["native"]["finite"] is False and element["stabilized"]["finite"] is True
    assert element["gauge_invariant"] is False
    assert element["gauge_violations"][0]["indices"] == [0, 1, 2]
    assert factor_shapes(tuple(data["shape"]))[1] == (3,)
