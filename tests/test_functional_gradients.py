"""Gradients of svdguard.functional against independent references.

References: plain autograd through torch.linalg.svd / eigh (valid where the
singular values are well separated), torch.autograd.gradcheck, and fourth-order
central differences (valid everywhere the function is smooth, ties included).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from helpers import (
    central_difference_grad,
    exactness_tolerance,
    finite_difference_tolerance,
    haar_unitary,
    random_matrix,
    relative_error,
    with_singular_values,
)

from svdguard import functional
from svdguard.tolerances import machine_eps

F64 = torch.float64
EPS_WHITEN = 0.1  # regularization of gram_inv_sqrt in these tests (a parameter, not a tolerance)


def fd_tolerance() -> float:
    """Agreement with fourth-order central differences (helpers.finite_difference_tolerance)."""
    return finite_difference_tolerance(derivative_scale=1e4)


def sqrt_eps() -> float:
    """√ε: a gradient off by more than this has lost at least half of its digits."""
    return machine_eps(F64) ** 0.5


# --- plain autograd through torch.linalg.svd / eigh: the same functions, composed from factors ---


def _svd(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.linalg.svd(a, full_matrices=False)


def plain_polar(a: torch.Tensor) -> torch.Tensor:
    u, _, vh = _svd(a)
    return u @ vh


def plain_procrustes(a: torch.Tensor) -> torch.Tensor:
    u, s, vh = _svd(a)
    d = torch.sign(torch.linalg.det(u @ vh)).detach()
    flip = torch.cat([torch.ones_like(s[..., :-1]), d.unsqueeze(-1)], dim=-1)
    return (u * flip.unsqueeze(-2)) @ vh


def plain_gram(phi: Callable[[torch.Tensor], torch.Tensor], phi0: float):
    def gram(a: torch.Tensor) -> torch.Tensor:
        _, s, vh = _svd(a)
        f = (vh.mH * phi(s * s).unsqueeze(-2)) @ vh
        n = a.shape[-1]
        if n > s.shape[-1]:
            f = f + phi0 * (torch.eye(n, dtype=a.dtype) - vh.mH @ vh)
        return f

    return gram


def plain_pinv(a: torch.Tensor) -> torch.Tensor:
    u, s, vh = _svd(a)
    return (vh.mH / s.unsqueeze(-2)) @ u.mH


def plain_low_rank(k: int):
    def low_rank(a: torch.Tensor) -> torch.Tensor:
        u, s, vh = _svd(a)
        return (u[..., :k] * s[..., None, :k]) @ vh[..., :k, :]

    return low_rank


def plain_projector(k: int):
    def projector(a: torch.Tensor) -> torch.Tensor:
        u, _, _ = _svd(a)
        return u[..., :k] @ u[..., :k].mH

    return projector


def plain_spd(phi: Callable[[torch.Tensor], torch.Tensor]):
    def spd(b: torch.Tensor) -> torch.Tensor:
        lam, q = torch.linalg.eigh((b + b.mH) / 2)
        return (q * phi(lam).unsqueeze(-2)) @ q.mH

    return spd


# name: (svdguard function, plain reference, input kind). "spd" inputs are made positive definite.
CASES: dict[str, tuple[Callable, Callable, str]] = {
    "polar": (functional.polar, plain_polar, "any"),
    "procrustes": (functional.procrustes, plain_procrustes, "square"),
    "gram_sqrt": (functional.gram_sqrt, plain_gram(torch.sqrt, 0.0), "any"),
    "gram_inv_sqrt": (
        lambda a: functional.gram_inv_sqrt(a, EPS_WHITEN),
        plain_gram(lambda lam: torch.rsqrt(lam + EPS_WHITEN), EPS_WHITEN**-0.5),
        "any",
    ),
    "gram_inv_sqrt_eps0": (functional.gram_inv_sqrt, plain_gram(torch.rsqrt, 0.0), "tall"),
    "pinv": (functional.pinv, plain_pinv, "any"),
    "low_rank": (lambda a: functional.low_rank(a, 2), plain_low_rank(2), "any"),
    "projector": (lambda a: functional.projector(a, 2), plain_projector(2), "any"),
    "spd_sqrt": (functional.spd_sqrt, plain_spd(torch.sqrt), "spd"),
    "spd_inv_sqrt": (functional.spd_inv_sqrt, plain_spd(torch.rsqrt), "spd"),
    "spd_log": (functional.spd_log, plain_spd(torch.log), "spd"),
}

SHAPES = {"tall": (5, 3), "wide": (3, 5), "square": (4, 4), "batched": (2, 5, 3)}


def shapes_for(kind: str) -> list[str]:
    if kind in ("square", "spd"):
        return ["square"]
    if kind == "tall":
        return ["tall", "square", "batched"]
    return list(SHAPES)


def separated_input(kind: str, shape: tuple[int, ...], seed: int = 3) -> torch.Tensor:
    """A Gaussian matrix (relative gaps ~1e-1), or a well-conditioned SPD one for eigh cases."""
    a = random_matrix(*shape, seed=seed)
    if kind == "spd":
        a = a @ a.mT + 0.5 * torch.eye(shape[-1], dtype=F64)
    return a


def linear_loss(f: Callable, probe: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """L(A) = <probe, f(A)>: its gradient is the vector-Jacobian product with ``probe``."""
    return lambda a: (f(a) * probe).sum()


def grad_of(loss: Callable[[torch.Tensor], torch.Tensor], a: torch.Tensor) -> torch.Tensor:
    x = a.detach().clone().requires_grad_()
    (g,) = torch.autograd.grad(loss(x), x)
    return g


def probe_for(f: Callable, a: torch.Tensor, seed: int = 11) -> torch.Tensor:
    return random_matrix(*f(a).shape, dtype=a.dtype, seed=seed)


PARAMS = [(name, shape) for name, (_, _, kind) in CASES.items() for shape in shapes_for(kind)]


@pytest.mark.parametrize(("name", "shape_name"), PARAMS)
def test_matches_plain_autograd_where_separated(name: str, shape_name: str) -> None:
    mine, plain, kind = CASES[name]
    a = separated_input(kind, SHAPES[shape_name])
    probe = probe_for(plain, a)
    assert relative_error(mine(a), plain(a)) <= exactness_tolerance(F64)
    expected = grad_of(linear_loss(plain, probe), a)
    # ≤ 1e-10 required; 1e3·ε = 2.2e-13 measured to hold with a margin of 10.
    assert relative_error(grad_of(linear_loss(mine, probe), a), expected) <= exactness_tolerance(
        F64
    )


@pytest.mark.parametrize(("name", "shape_name"), PARAMS)
def test_gradcheck(name: str, shape_name: str) -> None:
    mine, _, kind = CASES[name]
    a = separated_input(kind, SHAPES[shape_name], seed=5).requires_grad_()
    assert torch.autograd.gradcheck(mine, (a,))


COMPLEX_CASES = {
    "polar": functional.polar,
    "gram_inv_sqrt": lambda a: functional.gram_inv_sqrt(a, EPS_WHITEN),
    "pinv": functional.pinv,
    "low_rank": lambda a: functional.low_rank(a, 1),
    "projector": lambda a: functional.projector(a, 1),
}


@pytest.mark.parametrize("name", list(COMPLEX_CASES))
@pytest.mark.parametrize("shape", [(4, 3), (3, 4)])
def test_gradcheck_complex(name: str, shape: tuple[int, int]) -> None:
    a = random_matrix(*shape, dtype=torch.complex128, seed=1).requires_grad_()
    assert torch.autograd.gradcheck(COMPLEX_CASES[name], (a,))


def test_gradcheck_complex_hermitian() -> None:
    b = random_matrix(3, 3, dtype=torch.complex128, seed=2)
    b = (b @ b.mH + torch.eye(3, dtype=torch.complex128)).requires_grad_()
    for f in (functional.spd_sqrt, functional.spd_inv_sqrt, functional.spd_log):
        assert torch.autograd.gradcheck(f, (b,))


# --- exact ties: the functions are smooth there, so finite differences are a valid reference ---


def _rotation(seed: int) -> torch.Tensor:
    q = haar_unitary(4, dtype=F64, generator=torch.Generator().manual_seed(seed))
    if torch.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]  # det +1: a proper rotation (Procrustes is then in its domain)
    return q


TIE_POINTS = {
    "identity": torch.eye(4, dtype=F64),
    "orthogonal": _rotation(7),
    "3221_rotated": with_singular_values([3.0, 2.0, 2.0, 1.0], 4, 4, seed=2),
    "3222_rotated": with_singular_values([3.0, 2.0, 2.0, 2.0], 4, 4, seed=5),
    "tall_322": with_singular_values([3.0, 2.0, 2.0], 5, 3, seed=4),
    "wide_322": with_singular_values([3.0, 2.0, 2.0], 3, 5, seed=4),
}

# Functions smooth at a point: the cut of low_rank/projector must not sit inside a tie.
TIE_CASES = {
    "polar": (functional.polar, plain_polar, TIE_POINTS),
    "procrustes": (
        functional.procrustes,
        plain_procrustes,
        {k: v for k, v in TIE_POINTS.items() if v.shape[-1] == v.shape[-2]},
    ),
    "gram_sqrt": (functional.gram_sqrt, CASES["gram_sqrt"][1], TIE_POINTS),
    "gram_inv_sqrt": (CASES["gram_inv_sqrt"][0], CASES["gram_inv_sqrt"][1], TIE_POINTS),
    "pinv": (functional.pinv, plain_pinv, TIE_POINTS),
    "low_rank_1": (
        lambda a: functional.low_rank(a, 1),
        plain_low_rank(1),
        {k: v for k, v in TIE_POINTS.items() if k.startswith(("3", "tall", "wide"))},
    ),
    "low_rank_3": (
        lambda a: functional.low_rank(a, 3),
        plain_low_rank(3),
        {"3221_rotated": TIE_POINTS["3221_rotated"]},
    ),
    "projector_1": (
        lambda a: functional.projector(a, 1),
        plain_projector(1),
        {k: v for k, v in TIE_POINTS.items() if k.startswith(("3", "tall", "wide"))},
    ),
    "projector_3": (
        lambda a: functional.projector(a, 3),
        plain_projector(3),
        {"3221_rotated": TIE_POINTS["3221_rotated"], "tall_322": TIE_POINTS["tall_322"]},
    ),
}
TIE_PARAMS = [(name, point) for name, (_, _, pts) in TIE_CASES.items() for point in pts]


def plain_is_broken(plain_grad: torch.Tensor, reference: torch.Tensor) -> bool:
    """torch's generic SVD backward at a tie: NaN/inf, or (when LAPACK returns the tied values
    differing in the last bits) a finite number that has lost more than half of its digits."""
    if not bool(plain_grad.isfinite().all()):
        return True
    return relative_error(plain_grad, reference) > sqrt_eps()


@pytest.mark.parametrize(("name", "point"), TIE_PARAMS)
def test_exact_at_ties(name: str, point: str) -> None:
    mine, plain, points = TIE_CASES[name]
    a = points[point]
    probe = probe_for(mine, a)
    loss = linear_loss(mine, probe)
    reference = central_difference_grad(loss, a)
    got = grad_of(loss, a)
    assert relative_error(got, reference) <= fd_tolerance()
    if name.startswith("projector") or name.endswith("_1"):
        # No claim about the generic backward here: when the tie lies in the discarded part
        # (k = 1) or the output sees the tied block only through U_k U_kᴴ, its numerator vanishes
        # and it returns 0/gap, which is right, NaN or wrong depending on LAPACK's rounding.
        return
    assert plain_is_broken(grad_of(linear_loss(plain, probe), a), reference)


def test_plain_autograd_is_nan_at_computed_ties() -> None:
    """Where the computed singular values are exactly equal, torch's backward returns NaN/inf."""
    a = TIE_POINTS["identity"]
    for name in ("polar", "gram_inv_sqrt", "pinv", "spd_log"):
        mine, plain, _ = CASES[name]
        probe = probe_for(mine, a)
        assert not bool(grad_of(linear_loss(plain, probe), a).isfinite().all()), name
        assert bool(grad_of(linear_loss(mine, probe), a).isfinite().all()), name


SPD_TIES = {
    "identity": torch.eye(4, dtype=F64),
    "3221_rotated": torch.diag(torch.tensor([3.0, 2.0, 2.0, 1.0], dtype=F64)),
    "2222_scaled": 2 * torch.eye(4, dtype=F64),
}


@pytest.mark.parametrize("name", ["spd_sqrt", "spd_inv_sqrt", "spd_log"])
@pytest.mark.parametrize("point", list(SPD_TIES))
def test_spd_exact_at_repeated_eigenvalues(name: str, point: str) -> None:
    mine, plain, _ = CASES[name]
    q = _rotation(3)
    b = q @ SPD_TIES[point] @ q.mT
    probe = probe_for(mine, b)
    loss = linear_loss(mine, probe)
    reference = central_difference_grad(loss, b)
    assert relative_error(grad_of(loss, b), reference) <= fd_tolerance()
    assert plain_is_broken(grad_of(linear_loss(plain, probe), b), reference)


# --- near ties: the accuracy must not degrade as the gap shrinks ---

NEAR_TIE_CASES = {
    "polar": functional.polar,
    "procrustes": functional.procrustes,
    "gram_inv_sqrt": CASES["gram_inv_sqrt"][0],
    "pinv": functional.pinv,
    "low_rank_1": lambda a: functional.low_rank(a, 1),
    "projector_1": lambda a: functional.projector(a, 1),
    "spd_log": lambda a: functional.spd_log(a @ a.mT),
}
GAPS = [1e-6, 1e-10, 1e-14]


@pytest.mark.parametrize("name", list(NEAR_TIE_CASES))
def test_accuracy_does_not_degrade_near_ties(name: str) -> None:
    f = NEAR_TIE_CASES[name]
    errors = []
    for gap in GAPS:
        a = with_singular_values([3.0, 2.0 + gap, 2.0, 1.0], 4, 4, seed=2)
        loss = linear_loss(f, probe_for(f, a))
        errors.append(relative_error(grad_of(loss, a), central_difference_grad(loss, a)))
    # ≤ 1e-6 asked; the error at the 1e-14 gap is as small as at 1e-6: finite-difference level.
    assert max(errors) <= fd_tolerance(), errors


# --- float32 ---

F32_POINTS = {
    "identity": TIE_POINTS["identity"],
    "3221_rotated": TIE_POINTS["3221_rotated"],
    "tall_322": TIE_POINTS["tall_322"],
    "separated": with_singular_values([3.0, 2.5, 1.5, 1.0], 4, 4, seed=9),
}


# k = 2 would cut through a tie at these points: low_rank/projector are tested with k = 1.
F32_CASES = {name: (f, kind) for name, (f, _, kind) in CASES.items()}
F32_CASES["low_rank"] = (lambda a: functional.low_rank(a, 1), "cut")
F32_CASES["projector"] = (lambda a: functional.projector(a, 1), "cut")
F32_PARAMS = [
    (name, point)
    for name, (_, kind) in F32_CASES.items()
    for point, a in F32_POINTS.items()
    if kind not in ("square", "spd") or a.shape[-1] == a.shape[-2]
    if kind != "cut" or point != "identity"
]


@pytest.mark.parametrize(("name", "point"), F32_PARAMS)
def test_float32_close_to_float64(name: str, point: str) -> None:
    mine, kind = F32_CASES[name]
    a = F32_POINTS[point]
    if kind == "spd":
        a = a @ a.mT
    probe = probe_for(mine, a)
    g64 = grad_of(linear_loss(mine, probe), a)
    g32 = grad_of(linear_loss(mine, probe.float()), a.float())
    assert g32.dtype == torch.float32
    assert bool(g32.isfinite().all())
    # Measured ≤ 25·ε32; the helper's exact-computation tolerance is 1e3·ε32.
    assert relative_error(g32.double(), g64) <= exactness_tolerance(torch.float32)
