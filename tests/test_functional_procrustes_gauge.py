"""procrustes(A, B) with scipy.linalg.orthogonal_procrustes's meaning (closed form from numpy's
SVD, finite differences), and the gauge check of polar/procrustes outside their domain."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from helpers import (
    central_difference_grad,
    exactness_tolerance,
    finite_difference_tolerance,
    random_matrix,
    relative_error,
    with_singular_values,
)

from svdguard import functional
from svdguard.errors import InputError, SvdguardWarning

F64 = torch.float64


def numpy_polar(m: np.ndarray) -> np.ndarray:
    u, _, vh = np.linalg.svd(m, full_matrices=False)
    return u @ vh


@pytest.mark.parametrize(
    "shape_a, shape_b", [((7, 3), (7, 3)), ((6, 4), (6, 2)), ((2, 5, 3), (5, 3))]
)
@pytest.mark.parametrize("dtype", [torch.float32, F64, torch.complex128])
def test_two_matrices_give_the_polar_factor_of_a_h_b(shape_a, shape_b, dtype):
    a = random_matrix(*shape_a, dtype=dtype, seed=1)
    b = random_matrix(*shape_b, dtype=dtype, seed=2)
    r = functional.procrustes(a, b)
    an, bn = a.numpy().astype(np.complex128 if dtype.is_complex else np.float64), b.numpy()
    expected = numpy_polar(np.conj(np.swapaxes(an, -1, -2)) @ bn)
    assert r.dtype == dtype
    tol = exactness_tolerance(torch.float32 if dtype == torch.float32 else F64)
    assert (
        relative_error(
            r.to(torch.complex128 if dtype.is_complex else F64), torch.from_numpy(expected)
        )
        <= tol
    )


def test_two_matrices_minimize_the_residual():
    """R = polar(AᵀB) beats random orthogonal matrices on ‖A R − B‖ (the defining property)."""
    a, b = random_matrix(9, 3, seed=3), random_matrix(9, 3, seed=4)
    best = float(torch.linalg.matrix_norm(a @ functional.procrustes(a, b) - b))
    g = torch.Generator().manual_seed(5)
    for _ in range(20):
        q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=F64, generator=g))
        assert best <= float(torch.linalg.matrix_norm(a @ q - b))


def test_special_rotation_of_two_point_clouds():
    x = random_matrix(10, 3, seed=6)
    reflect = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=F64))
    y = x @ reflect + 1e-3 * random_matrix(10, 3, seed=7)
    r = functional.procrustes(x, y, special=True)
    u, _, vh = np.linalg.svd(x.numpy().T @ y.numpy())
    d = np.sign(np.linalg.det(u @ vh))
    kabsch = u @ np.diag([1.0, 1.0, d]) @ vh
    assert abs(float(torch.linalg.det(r)) - 1.0) <= exactness_tolerance(F64)
    assert relative_error(r, torch.from_numpy(kabsch)) <= exactness_tolerance(F64)


def test_gradient_of_two_matrix_procrustes_matches_finite_differences():
    a, b = random_matrix(6, 3, seed=8), random_matrix(6, 3, seed=9)
    w = random_matrix(3, 3, seed=10)

    def loss_a(x):
        return (functional.procrustes(x, b) * w).sum()

    def loss_b(y):
        return (functional.procrustes(a, y) * w).sum()

    for loss, point in ((loss_a, a), (loss_b, b)):
        x = point.clone().requires_grad_()
        (g,) = torch.autograd.grad(loss(x), x)
        assert relative_error(
            g, central_difference_grad(loss, point)
        ) <= finite_difference_tolerance(1e4)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: functional.procrustes(torch.eye(3), False), TypeError, "pass special= by keyword"),
        (lambda: functional.procrustes(torch.eye(3), [[1.0]]), TypeError, "must be a torch.Tensor"),
        (
            lambda: functional.procrustes(torch.eye(3), torch.eye(4)),
            InputError,
            "same number of rows",
        ),
        (
            lambda: functional.procrustes(torch.eye(3), torch.eye(3, dtype=F64)),
            InputError,
            "same dtype",
        ),
    ],
)
def test_bad_second_argument_is_refused_clearly(call, error, message):
    with pytest.raises(error, match=message):
        call()


# --- gauge check -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, m, n, labels",
    [([3.0, 2.0, 0.0, 0.0, 0.0], 8, 5, "s3..s5"), ([3.0, 2.0, 1.0, 0.0, 0.0], 5, 5, "s4..s5")],
)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_polar_gauge_check_warns_outside_the_domain(values, m, n, labels, dtype):
    a = with_singular_values(values, m, n, seed=11).to(dtype).requires_grad_()
    w = random_matrix(m, n, seed=12).to(dtype)
    with pytest.warns(
        SvdguardWarning, match=rf"polar gauge check: singular values {labels} are zero"
    ):
        (functional.polar(a, gauge_check=True) * w).sum().backward()
    assert torch.isfinite(a.grad).all()


def test_polar_gauge_check_is_silent_in_the_domain():
    w = random_matrix(5, 5, seed=13)
    inside = [
        with_singular_values([3.0, 2.0, 2.0, 1.0, 0.0], 5, 5, seed=14),  # one zero, a tie
        torch.eye(5, dtype=F64),
    ]
    for a in inside:
        a = a.clone().requires_grad_()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            (functional.polar(a, gauge_check=True) * w).sum().backward()


def test_procrustes_gauge_check_names_the_batch_element_and_the_tie():
    """det < 0 with the two smallest values tied: the rotation is not unique (a circle of them)."""
    good = with_singular_values([3.0, 2.0, 1.0], 3, 3, seed=15)
    bad = with_singular_values([3.0, 1.0, 1.0], 3, 3, seed=16)
    if torch.linalg.det(bad) > 0:
        bad = bad @ torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=F64))
    batch = torch.stack([good, bad]).requires_grad_()
    w = random_matrix(3, 3, seed=17)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (functional.procrustes(batch, check=False, gauge_check=True) * w).sum().backward()
    messages = [str(c.message) for c in caught if issubclass(c.category, SvdguardWarning)]
    assert len(messages) == 1
    assert "batch element (1,)" in messages[0] and "s2..s3 are tied" in messages[0]
