"""Probe losses and upstream gradients: values against numpy float64, seeded weights, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import exactness_tolerance, haar_unitary, random_matrix

from svdguard.app.probes import (
    LOSSES,
    Upstream,
    factor_shapes,
    inner,
    make_probe,
    upstream_from_tensors,
)
from svdguard.errors import InputError

DTYPES = (torch.float32, torch.float64)


def numpy_factors(a: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    u, s, vh = np.linalg.svd(a.to(torch.float64).numpy(), full_matrices=False)
    return u, s, vh


def torch_factors(u: np.ndarray, s: np.ndarray, vh: np.ndarray, dtype: torch.dtype):
    return tuple(torch.from_numpy(x).to(dtype) for x in (u, s, vh))


def test_weights_are_seeded_float64_draws_cast_to_the_factor_dtype():
    shape = (2, 5, 3)
    reference = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    probe64 = make_probe("polar", shape, seed=7)
    probe32 = make_probe("polar", shape, seed=7, dtype=torch.float32)
    assert torch.equal(probe64.weights[0], reference)
    assert probe32.weights[0].dtype == torch.float32
    assert torch.equal(probe32.weights[0], reference.to(torch.float32))
    assert not torch.equal(make_probe("polar", shape, seed=8).weights[0], reference)


def test_vectors_draws_w_like_u_then_w_prime_like_vh():
    shape = (5, 3)
    generator = torch.Generator().manual_seed(3)
    w_u = torch.randn((5, 3), dtype=torch.float64, generator=generator)
    w_vh = torch.randn((3, 3), dtype=torch.float64, generator=generator)
    probe = make_probe("vectors", shape, seed=3)
    assert torch.equal(probe.weights[0], w_u) and torch.equal(probe.weights[1], w_vh)
    assert make_probe("values", shape).weights == ()


def test_factor_shapes_are_the_thin_ones():
    assert factor_shapes((2, 5, 3)) == ((2, 5, 3), (2, 3), (2, 3, 3))
    assert factor_shapes((3, 5)) == ((3, 3), (3,), (3, 5))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (2, 4, 4)])
def test_loss_values_match_numpy_float64(dtype, shape):
    a = random_matrix(*shape, seed=1)
    u, s, vh = numpy_factors(a)
    factors = torch_factors(u, s, vh, dtype)
    tol = exactness_tolerance(dtype)
    w = make_probe("polar", shape, seed=2).weights[0].numpy()
    expected = {
        "polar": np.sum(w * (u @ vh)),
        # ⟨W, U diag(S) Vᴴ⟩ = ⟨W, A⟩: no SVD in the reference at all.
        "reconstruct": np.sum(w * a.numpy()),
        "values": np.linalg.norm(a.numpy(), "nuc", axis=(-2, -1)).sum(),
    }
    wu, wvh = (x.numpy() for x in make_probe("vectors", shape, seed=2).weights)
    expected["vectors"] = np.sum(wu * u) + np.sum(wvh * vh)
    for name in LOSSES:
        probe = make_probe(name, shape, seed=2, dtype=dtype)
        value = float(probe(*factors))
        assert abs(value - expected[name]) <= tol * max(1.0, abs(expected[name])), name


def test_gauge_invariant_probes_ignore_the_basis_inside_a_tied_block():
    """Rotating U and V by the same orthogonal Q inside a tied block is another valid SVD."""
    a = torch.diag(torch.tensor([3.0, 2.0, 2.0, 1.0], dtype=torch.float64))
    u, s, vh = torch.eye(4, dtype=torch.float64), torch.diag(a), torch.eye(4, dtype=torch.float64)
    q = torch.eye(4, dtype=torch.float64)
    q[1:3, 1:3] = haar_unitary(2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    rotated = (u @ q, s, q.mT @ vh)
    assert torch.allclose(rotated[0] * s @ rotated[2], a)  # still an SVD of A
    tol = exactness_tolerance(torch.float64)
    for name in ("polar", "reconstruct", "values"):
        probe = make_probe(name, (4, 4), seed=0)
        assert abs(float(probe(u, s, vh)) - float(probe(*rotated))) <= tol, name
    vectors = make_probe("vectors", (4, 4), seed=0)
    assert abs(float(vectors(u, s, vh)) - float(vectors(*rotated))) > 1e-3


def test_complex_inner_product_is_the_real_part_of_vdot():
    g = torch.Generator().manual_seed(0)
    x, y = (
        torch.complex(*(torch.randn(3, 2, dtype=torch.float64, generator=g) for _ in range(2)))
        for _ in range(2)
    )
    expected = np.vdot(x.numpy(), y.numpy()).real
    assert abs(float(inner(x, y)) - expected) <= exactness_tolerance(torch.float64)


def test_probe_errors():
    with pytest.raises(InputError, match="unknown probe loss 'nope'"):
        make_probe("nope", (3, 3))
    with pytest.raises(InputError, match=r"\(..., m, n\) matrix shape, got \(3,\)"):
        make_probe("polar", (3,))


@pytest.mark.parametrize("dtype", DTYPES)
def test_upstream_objective_backpropagates_exactly_the_saved_gradients(dtype):
    shape = (5, 3)
    g = torch.Generator().manual_seed(4)
    saved = {
        key: torch.randn(fs, dtype=torch.float64, generator=g)
        for key, fs in zip(("U", "S", "Vh"), factor_shapes(shape), strict=True)
    }
    upstream = upstream_from_tensors(saved, shape, path="grads.npz")
    assert upstream.names() == ("U", "S", "Vh")
    assert upstream.describe() == "upstream U, S, Vh from grads.npz"
    factors = tuple(
        torch.randn(fs, dtype=dtype, generator=g).requires_grad_(True)
        for fs in factor_shapes(shape)
    )
    grads = torch.autograd.grad(upstream(*factors), factors)
    for got, key in zip(grads, ("U", "S", "Vh"), strict=True):
        assert torch.equal(got, saved[key].to(dtype))


def test_upstream_subset_leaves_the_other_factors_unused():
    upstream = upstream_from_tensors({"S": torch.ones(3)}, (4, 3))
    assert isinstance(upstream, Upstream)
    assert upstream.names() == ("S",) and upstream.grad_u is None and upstream.grad_vh is None
    u, s, vh = (torch.randn(fs, dtype=torch.float64) for fs in factor_shapes((4, 3)))
    assert float(upstream(u, s, vh)) == pytest.approx(float(s.sum()), rel=1e-15)


def test_upstream_validation_names_file_key_and_expected_shape():
    with pytest.raises(InputError) as err:
        upstream_from_tensors({"U": torch.zeros(4, 4)}, (2, 4, 3), path="up.npz")
    message = str(err.value)
    assert message.startswith("up.npz[U]: ")
    assert "(4, 4)" in message and "expected (2, 4, 3)" in message
    with pytest.raises(InputError, match=r"up.npz\[Vh\]: .*expected \(4, 5\)"):
        upstream_from_tensors({"Vh": torch.zeros(5, 3)}, (4, 5), path="up.npz")
    with pytest.raises(InputError, match=r"up.npz\[S\]: dtype torch.int64 is not a floating"):
        upstream_from_tensors({"S": torch.zeros(3, dtype=torch.int64)}, (4, 3), path="up.npz")
    with pytest.raises(InputError, match=r"up.npz: unexpected entries \['V'\]"):
        upstream_from_tensors({"V": torch.zeros(3, 3)}, (4, 3), path="up.npz")
    with pytest.raises(InputError, match="up.npz: no upstream gradients"):
        upstream_from_tensors({}, (4, 3), path="up.npz")


def test_exact_at_ties_says_whether_the_in_block_part_vanishes():
    """polar: J + K ≡ 0; values: no gU, gV; reconstruct: J + K = (B + Bᵀ)(s_j − s_i) ≠ 0 off ties."""
    assert {name: make_probe(name, (3, 3)).exact_at_ties for name in LOSSES} == {
        "polar": True,
        "reconstruct": False,
        "vectors": False,
        "values": True,
    }
    assert upstream_from_tensors({"S": torch.ones(3)}, (3, 3)).exact_at_ties is None
