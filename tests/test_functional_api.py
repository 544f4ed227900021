"""svdguard.functional: Procrustes on isotropic point clouds, domains (errors, warnings),
torch.func, the pseudo-inverse's rank cut, dtypes and devices, and an end-to-end whitening layer."""

from __future__ import annotations

import itertools

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
from svdguard.errors import InputError, SvdguardWarning

F64 = torch.float64


def fd_tolerance() -> float:
    """Agreement with fourth-order central differences (helpers.finite_difference_tolerance)."""
    return finite_difference_tolerance(derivative_scale=1e4)


def rotation(n: int, seed: int, det: float = 1.0) -> torch.Tensor:
    q = haar_unitary(n, dtype=F64, generator=torch.Generator().manual_seed(seed))
    if torch.linalg.det(q) * det < 0:
        q[:, 0] = -q[:, 0]
    return q


def grad_of(loss, a: torch.Tensor) -> torch.Tensor:
    x = a.detach().clone().requires_grad_()
    (g,) = torch.autograd.grad(loss(x), x)
    return g


# --- Procrustes on isotropic point clouds: XᵀX = c·I, every singular value of Yᵀ X tied ---

CUBE = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=3)), dtype=F64)  # XᵀX = 8 I
SIMPLEX = torch.tensor(  # regular tetrahedron, XᵀX = 4 I
    [[1.0, 1.0, 1.0], [1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]], dtype=F64
)


@pytest.mark.parametrize("cloud", [CUBE, SIMPLEX], ids=["cube", "simplex"])
def test_procrustes_isotropic_cloud_exact(cloud: torch.Tensor) -> None:
    r_true = rotation(3, seed=4)
    y = cloud @ r_true.mT  # y_i = R x_i
    probe = random_matrix(3, 3, seed=8)

    def loss(points: torch.Tensor) -> torch.Tensor:
        # the rotation that best maps ``points`` onto y, probed linearly
        return (functional.procrustes(y.mT @ points) * probe).sum()

    assert relative_error(functional.procrustes(y.mT @ cloud), r_true) <= exactness_tolerance(F64)
    s = torch.linalg.svdvals(y.mT @ cloud)
    assert float(s.max() - s.min()) <= exactness_tolerance(F64) * float(s.max())  # a triple tie
    reference = central_difference_grad(loss, cloud)
    assert relative_error(grad_of(loss, cloud), reference) <= fd_tolerance()

    def plain_loss(points: torch.Tensor) -> torch.Tensor:
        u, _, vh = torch.linalg.svd(y.mT @ points)
        return ((u @ vh) * probe).sum()  # det(U Vᵀ) = +1 here: same function

    plain = grad_of(plain_loss, cloud)
    assert (
        not bool(plain.isfinite().all()) or relative_error(plain, reference) > 1e3 * fd_tolerance()
    )


def test_procrustes_det_correction_in_domain() -> None:
    # det A < 0 and the tie is in the middle: the flipped direction (s_4 = 1) is separated.
    a = with_singular_values([3.0, 2.0, 2.0, 1.0], 4, 4, seed=2)
    if torch.linalg.det(a) > 0:
        a = a * torch.tensor([1.0, 1.0, 1.0, -1.0], dtype=F64)
    r = functional.procrustes(a)
    assert abs(float(torch.linalg.det(r)) - 1.0) <= exactness_tolerance(F64)
    assert relative_error(r.mT @ r, torch.eye(4, dtype=F64)) <= exactness_tolerance(F64)
    # R maximizes tr(Rᵀ A) over rotations: it beats the polar factor's best rotation neighbours.
    u, s, vh = torch.linalg.svd(a)
    assert float((r * a).sum()) == pytest.approx(float(s[:-1].sum() - s[-1]), rel=1e-14)
    probe = random_matrix(4, 4, seed=3)
    loss = lambda x: (functional.procrustes(x) * probe).sum()  # noqa: E731
    assert relative_error(grad_of(loss, a), central_difference_grad(loss, a)) <= fd_tolerance()


def test_procrustes_warns_outside_domain() -> None:
    # A reflected isotropic cloud: det < 0 and every singular value tied: no unique rotation.
    m = CUBE.mT @ (CUBE @ rotation(3, seed=1, det=-1.0).mT)
    with pytest.warns(SvdguardWarning, match="not unique"):
        r = functional.procrustes(m)
    assert abs(float(torch.linalg.det(r)) - 1.0) <= exactness_tolerance(F64)
    x = m.clone().requires_grad_()
    with pytest.warns(SvdguardWarning):
        (functional.procrustes(x) * random_matrix(3, 3, seed=2)).sum().backward()
    assert x.grad is not None
    assert bool(x.grad.isfinite().all())  # finite (a dropped term), documented as arbitrary


def test_procrustes_special_false_is_polar() -> None:
    a = random_matrix(4, 3, seed=1)
    assert torch.equal(functional.procrustes(a, special=False), functional.polar(a))


# --- domains: errors and their messages ---


@pytest.mark.parametrize("fn", [functional.low_rank, functional.projector])
def test_tie_at_the_cut_raises(fn) -> None:
    a = with_singular_values([3.0, 2.0, 2.0, 1.0], 4, 4, seed=2)
    with pytest.raises(InputError, match=r"s_2 = 2 and s_3 = 2 .*not unique.*check=False"):
        fn(a, 2)
    batch = torch.stack([with_singular_values([4.0, 3.0, 2.0, 1.0], 4, 4, seed=1), a])
    with pytest.raises(InputError, match=r"batch element \(1,\)"):
        fn(batch, 2)
    assert fn(a, 3).shape[-1] == 4  # a tie inside the top 3: fine


def test_projector_onto_all_columns_needs_full_rank() -> None:
    tall = with_singular_values([3.0, 2.0, 0.0], 5, 3, seed=2)
    with pytest.raises(InputError, match=r"s_3 = \S+ and s_4 = 0 "):
        functional.projector(tall, 3)


def test_tie_unchecked_gives_a_non_finite_gradient() -> None:
    a = torch.diag(torch.tensor([3.0, 2.0, 2.0, 1.0], dtype=F64)).requires_grad_()
    out = functional.low_rank(a, 2, check=False)
    assert bool(out.isfinite().all())
    (out * random_matrix(4, 4, seed=1)).sum().backward()
    assert a.grad is not None
    assert not bool(a.grad.isfinite().all())  # no gradient exists there, and it shows


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: functional.polar(torch.ones(3)), r"shape \(3,\)"),
        (lambda: functional.polar(torch.ones(2, 0)), "m, n >= 1"),
        (lambda: functional.polar(torch.ones(2, 2, dtype=torch.int64)), "torch.int64"),
        (
            lambda: functional.polar([[1.0]]),  # type: ignore[arg-type]
            "expected a torch.Tensor, got list",
        ),
        (lambda: functional.procrustes(torch.ones(3, 2)), r"square.*\(3, 2\)"),
        (lambda: functional.procrustes(torch.eye(2, dtype=torch.complex128)), "special=False"),
        (lambda: functional.spd_log(torch.ones(2, 3)), "square"),
        (lambda: functional.gram_inv_sqrt(torch.ones(2, 3)), "pass eps > 0"),
        (lambda: functional.gram_inv_sqrt(torch.eye(2), eps=-1.0), "eps must be >= 0"),
        (lambda: functional.pinv(torch.eye(2), rtol=-1.0), "rtol must be >= 0"),
        (lambda: functional.low_rank(torch.eye(3), 4), r"0 <= k <= min\(m, n\) = 3"),
        (lambda: functional.low_rank(torch.eye(3), True), "k must be an int"),
        (lambda: functional.projector(torch.eye(3), -1), "got k=-1"),
    ],
)
def test_input_errors(call, message: str) -> None:
    with pytest.raises(InputError, match=message):
        call()


def test_second_derivatives_raise() -> None:
    a = random_matrix(3, 3, seed=1).requires_grad_()
    (g,) = torch.autograd.grad((functional.polar(a) ** 3).sum(), a, create_graph=True)
    with pytest.raises(NotImplementedError, match="second derivatives"):
        g.sum().backward()


# --- torch.func ---

VMAP_CASES = {
    "polar": functional.polar,
    "procrustes": lambda a: functional.procrustes(a, check=False),
    "gram_inv_sqrt": lambda a: functional.gram_inv_sqrt(a, 0.1),
    "pinv": functional.pinv,
    "low_rank": lambda a: functional.low_rank(a, 2, check=False),
    "projector": lambda a: functional.projector(a, 2, check=False),
    "spd_log": lambda a: functional.spd_log(a @ a.mT),
}


@pytest.mark.parametrize("name", list(VMAP_CASES))
def test_vmap_grad_matches_batched_call(name: str) -> None:
    f = VMAP_CASES[name]
    batch = torch.stack([torch.eye(4, dtype=F64), random_matrix(4, 4, seed=1)])
    if name.startswith(("low_rank", "projector")):
        batch[0] = with_singular_values([3.0, 2.0, 1.0, 1.0], 4, 4, seed=6)  # tie below the cut
    probe = random_matrix(4, 4, seed=2)

    def loss(a: torch.Tensor) -> torch.Tensor:
        return (f(a) * probe).sum()

    per_sample = torch.func.vmap(torch.func.grad(loss))(batch)
    batched = grad_of(lambda x: loss(x), batch)
    assert relative_error(per_sample, batched) <= exactness_tolerance(F64)
    assert bool(batched.isfinite().all())


# --- pseudo-inverse: the rank cut ---


def test_pinv_rank_deficient_matches_constant_rank_formula() -> None:
    # Exactly rank 2: the discarded singular value is 0 up to rounding, where the truncated
    # derivative equals Golub–Pereyra's constant-rank formula used by torch.linalg.pinv's backward.
    a = with_singular_values([3.0, 1.0, 0.0], 5, 3, seed=3)
    probe = random_matrix(3, 5, seed=4)
    assert relative_error(functional.pinv(a), torch.linalg.pinv(a)) <= exactness_tolerance(F64)
    mine = grad_of(lambda x: (functional.pinv(x) * probe).sum(), a)
    theirs = grad_of(lambda x: (torch.linalg.pinv(x) * probe).sum(), a)
    assert relative_error(mine, theirs) <= exactness_tolerance(F64)


def test_pinv_truncated_gradient_is_that_of_the_truncated_function() -> None:
    # s_4 = 0.01 lies far below the cut 0.1·3: a neighbourhood keeps the rank, the truncated
    # pinv is smooth there, and finite differences see its derivative.
    a = with_singular_values([3.0, 2.0, 2.0, 0.01], 4, 4, seed=5)
    probe = random_matrix(4, 4, seed=6)
    loss = lambda x: (functional.pinv(x, rtol=0.1) * probe).sum()  # noqa: E731
    assert relative_error(grad_of(loss, a), central_difference_grad(loss, a)) <= fd_tolerance()
    u, s, vh = torch.linalg.svd(a)
    expected = (vh[:3].mT / s[:3]) @ u[:, :3].mT
    assert relative_error(functional.pinv(a, rtol=0.1), expected) <= exactness_tolerance(F64)


def test_pinv_cut_defaults() -> None:
    a = torch.diag(torch.tensor([1.0, 1e-3, 1e-20], dtype=F64))
    # default: rtol = max(m, n)·ε, so 1e-3 is kept and 1e-20 discarded
    assert torch.allclose(functional.pinv(a).diagonal(), torch.tensor([1.0, 1e3, 0.0], dtype=F64))
    # atol alone sets rtol to 0 (torch.linalg.pinv's convention)
    assert torch.allclose(
        functional.pinv(a, atol=1e-2).diagonal(), torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    )


# --- dtypes and devices ---


def test_half_precision_is_computed_in_float32() -> None:
    a = random_matrix(4, 3, seed=2)
    out = functional.polar(a.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    reference = functional.polar(a.to(torch.bfloat16).float())
    assert torch.equal(out, reference.to(torch.bfloat16))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    a = torch.stack([torch.eye(4, dtype=F64), random_matrix(4, 4, seed=1)])
    probe = random_matrix(4, 4, seed=2)
    for f in (functional.polar, lambda x: functional.gram_inv_sqrt(x, 0.1), functional.spd_log):
        x_arg = a @ a.mT if f is functional.spd_log else a
        cpu = grad_of(lambda x, f=f: (f(x) * probe).sum(), x_arg)
        gpu = grad_of(lambda x, f=f: (f(x) * probe.cuda()).sum(), x_arg.cuda())
        assert gpu.device.type == "cuda"
        assert relative_error(gpu.cpu(), cpu) <= exactness_tolerance(F64, 1e4)


# --- end to end: a whitening layer started where every singular value is tied ---


def hadamard(n: int) -> torch.Tensor:
    """Sylvester's ±1 Hadamard matrix: HᵀH = n·I exactly in floating point."""
    h = torch.ones(1, 1, dtype=F64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def test_whitening_layer_trains_from_a_degenerate_start() -> None:
    samples, dim, eps = 16, 4, 1e-3
    z = hadamard(samples)[:, 1 : dim + 1]  # features with Gram matrix 16·I exactly
    target_rotation = rotation(dim, seed=0)
    target = z @ target_rotation

    def whiten(x: torch.Tensor) -> torch.Tensor:  # x (XᵀX/N + eps I)^{-1/2}
        return x @ functional.gram_inv_sqrt(x / samples**0.5, eps)

    def whiten_plain(x: torch.Tensor) -> torch.Tensor:  # the same through torch.linalg.svd
        u, s, vh = torch.linalg.svd(x.mT @ x / samples + eps * torch.eye(dim, dtype=F64))
        return x @ (u * s.rsqrt()) @ vh

    w_plain = torch.eye(dim, dtype=F64, requires_grad=True)
    ((whiten_plain(z @ w_plain) - target) ** 2).mean().backward()
    assert w_plain.grad is not None
    assert not bool(w_plain.grad.isfinite().all())  # NaN at the first step

    w = torch.eye(dim, dtype=F64, requires_grad=True)  # Gram of z @ w: a multiple of I
    opt = torch.optim.Adam([w], lr=0.05)
    losses = []
    for _ in range(300):
        opt.zero_grad()
        loss = ((whiten(z @ w) - target) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    # The output is z·U h(S) Vᵀ with h(s) = s/√(s² + eps): even with U Vᵀ equal to the target
    # rotation the loss cannot go below ‖h(S) − I‖²/dim (the price of eps), so the floor at the
    # final W is computed, and the loss must reach it: the rotation has converged.
    s = torch.linalg.svdvals(w.detach())
    floor = float(((1 - s / torch.sqrt(s * s + eps)) ** 2).sum() / dim)
    assert losses[0] > 1.0
    assert losses[-1] <= 1e-5
    assert losses[-1] <= 1.5 * floor + 1e-8
