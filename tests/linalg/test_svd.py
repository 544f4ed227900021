"""svdguard.svd: exactness against torch and finite differences, finiteness everywhere."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import (
    central_difference_grad,
    exactness_tolerance,
    finite_difference_tolerance,
    haar_unitary,
    near_tie_tolerance,
    random_matrix,
    relative_error,
    with_singular_values,
)
from torch.autograd import gradcheck, gradgradcheck

import svdguard
from svdguard.errors import IllDefinedGradientError, InputError, SvdguardWarning
from svdguard.linalg.svd import guarded_pairs

STABILIZED = ("auto", "clamp", "seed", "lorentz", "taylor", "trivialize")
SHAPES = {"square": (5, 5), "tall": (7, 4), "wide": (4, 7), "batched": (3, 5, 4)}


# --- gauge-invariant losses (docs/backward.md): their gradients are meaningful ------------------


def weights(shape, dtype, seed):
    return random_matrix(*shape, dtype=dtype, seed=seed)


def loss_polar(factors, w):
    U, _, Vh = factors
    return ((U @ Vh) * w.conj()).real.sum()


def loss_abs_u(factors, w):
    U, _, _ = factors
    return (U.abs() * w[..., : U.shape[-1]].real).sum()


def loss_values(factors, w):
    _, S, _ = factors
    return (S * torch.arange(1, S.shape[-1] + 1, dtype=S.dtype)).sum()


def loss_reconstruct(factors, w):
    U, S, Vh = factors
    return (((U * S.unsqueeze(-2).to(U.dtype)) @ Vh) * w.conj()).real.sum()


LOSSES = {
    "polar": loss_polar,
    "absU": loss_abs_u,
    "S": loss_values,
    "USVh": loss_reconstruct,
}


def grad_of(loss, a, svd_fn, w):
    x = a.detach().clone().requires_grad_()
    (g,) = torch.autograd.grad(loss(svd_fn(x), w), x)
    return g


def torch_thin(x):
    return torch.linalg.svd(x, full_matrices=False)


def thin_svd(x, **options):
    return svdguard.svd(x, full_matrices=False, **options)


# --- exactness on well-separated inputs ----------------------------------------------------------


@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("loss_name", list(LOSSES))
def test_gradcheck_and_gradgradcheck(shape_name, dtype, loss_name):
    shape = SHAPES[shape_name]
    a = random_matrix(*shape, dtype=dtype, seed=1).requires_grad_()
    w = weights(shape, dtype, seed=2)
    loss = LOSSES[loss_name]

    def f(x):
        return loss(svdguard.svd(x, False), w)

    assert gradcheck(f, (a,))
    assert gradgradcheck(f, (a,))


@pytest.mark.parametrize("shape", [(6, 6), (9, 5), (5, 9), (4, 6, 5), (2, 3, 5, 7)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("full_matrices", [False, True])
def test_agrees_with_torch_backward(shape, dtype, full_matrices):
    a = random_matrix(*shape, dtype=dtype, seed=3)
    w = weights(shape, dtype, seed=4)

    def every_factor(factors, w):
        U, S, Vh = factors
        k = S.shape[-1]
        U, Vh = U[..., :k], Vh[..., :k, :]  # a gauge-invariant use of each factor
        return loss_polar((U, S, Vh), w) + loss_abs_u((U, S, Vh), w) + loss_values((U, S, Vh), w)

    ours = grad_of(every_factor, a, lambda x: svdguard.svd(x, full_matrices), w)
    theirs = grad_of(every_factor, a, lambda x: torch.linalg.svd(x, full_matrices=full_matrices), w)
    assert relative_error(ours, theirs) <= exactness_tolerance(torch.float64)


def test_outputs_match_torch_svd():
    a = random_matrix(3, 6, 4, dtype=torch.float64, seed=5)
    ours, theirs = svdguard.svd(a, full_matrices=True), torch.linalg.svd(a, full_matrices=True)
    assert type(ours) is type(theirs)
    for x, y in zip(ours, theirs, strict=True):
        assert torch.equal(x, y)
    assert ours.U.shape == (3, 6, 6) and svdguard.svd(a, False).U.shape == (3, 6, 4)


def test_full_matrices_ignores_extra_columns():
    a = random_matrix(6, 4, dtype=torch.float64, seed=6)
    w = weights((6, 6), torch.float64, seed=7)

    def uses_extra(factors, w):
        U, S, _ = factors
        return (
            (U * w).sum() * 0 + (U[..., :4].abs() * w[:, :4]).sum() + (U[..., 4:] * w[:, 4:]).sum()
        )

    full = grad_of(uses_extra, a, lambda x: svdguard.svd(x, full_matrices=True), w)
    thin_only = grad_of(
        lambda f, w: (f.U[..., :4].abs() * w[:, :4]).sum(),
        a,
        lambda x: svdguard.svd(x, full_matrices=True),
        w,
    )
    assert torch.equal(full, thin_only)


# --- finiteness on ill-posed inputs ------------------------------------------------------------


def ill_posed_cases():
    g = torch.Generator().manual_seed(8)
    cases = {
        "identity": torch.eye(5, dtype=torch.float64),
        "orthogonal": haar_unitary(5, dtype=torch.float64, generator=g),
        "repeated": with_singular_values([3, 2, 2, 2, 1], 5, 5, seed=9),
        "zero-square": with_singular_values([3, 2, 1, 0, 0], 5, 5, seed=10),
        "zero-tall": with_singular_values([3, 2, 0, 0], 7, 4, seed=11),
        "zero-wide": with_singular_values([3, 2, 0, 0], 4, 7, seed=12),
        "zero-matrix": torch.zeros(4, 3, dtype=torch.float64),
        "zero-column": random_matrix(5, 4, seed=13) * torch.tensor([1.0, 1.0, 0.0, 1.0]),
    }
    for exponent in (3, 6, 9, 12, 15):
        gap = 10.0**-exponent
        cases[f"gap-1e-{exponent}"] = with_singular_values([3, 2 + gap, 2, 1], 4, 4, seed=exponent)
    return cases


def basis_dependent_loss(factors, w):
    """Touches U, S and Vh directly: not gauge invariant, the harshest upstream gradients."""
    U, S, Vh = factors
    k = S.shape[-1]
    return (U * w[..., : U.shape[-2], :k]).sum() + (Vh * w[..., :k, : Vh.shape[-1]]).sum() + S.sum()


@pytest.mark.filterwarnings(
    "ignore::svdguard.errors.SvdguardWarning"
)  # trivialize announces itself
@pytest.mark.parametrize("method", STABILIZED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_finite_on_ill_posed_inputs(method, dtype):
    for name, a in ill_posed_cases().items():
        w = weights((7, 7), torch.float64, seed=14).to(dtype)
        a = a.to(dtype)
        for loss in (basis_dependent_loss, loss_polar_padded, loss_reconstruct_padded):
            g = grad_of(loss, a, lambda x, m=method: svdguard.svd(x, False, method=m), w)
            assert torch.isfinite(g).all(), f"{method} {dtype} {name} {loss.__name__}"


def loss_polar_padded(factors, w):
    U, _, Vh = factors
    return ((U @ Vh) * w[: U.shape[-2], : Vh.shape[-1]]).sum()


def loss_reconstruct_padded(factors, w):
    U, S, Vh = factors
    return (((U * S.unsqueeze(-2)) @ Vh) * w[: U.shape[-2], : Vh.shape[-1]]).sum()


def test_native_backward_is_not_finite_where_svdguard_is():
    """The failure svdguard exists for: torch's backward at a tie and at a zero singular value."""
    w = weights((7, 7), torch.float64, seed=15)
    tall_rank2 = torch.cat(
        [torch.diag(torch.tensor([3.0, 2.0, 0.0, 0.0], dtype=torch.float64)), torch.zeros(3, 4)]
    )
    for a in (torch.eye(4, dtype=torch.float64), tall_rank2):
        native = grad_of(loss_polar_padded, a, lambda x: svdguard.svd(x, False, method="native"), w)
        ours = grad_of(loss_polar_padded, a, thin_svd, w)
        assert not torch.isfinite(native).all()
        assert torch.isfinite(ours).all()


# --- exact at exact ties where the factors determine the gradient ------------------------------


def test_polar_gradient_at_identity_matches_closed_form():
    # polar(I + E) = I + (E − Eᵀ)/2 + O(E²), so ∂⟨W, polar⟩/∂A at I is (W − Wᵀ)/2.
    w = weights((5, 5), torch.float64, seed=17)
    g = grad_of(loss_polar, torch.eye(5, dtype=torch.float64), thin_svd, w)
    assert relative_error(g, (w - w.T) / 2) <= exactness_tolerance(torch.float64)


def test_polar_gradient_at_orthogonal_matrix_matches_closed_form():
    # polar(Q + E) = Q + Q (QᵀE − EᵀQ)/2 + O(E²), so the gradient is Q (QᵀW − WᵀQ)/2.
    q = haar_unitary(5, dtype=torch.float64, generator=torch.Generator().manual_seed(18))
    w = weights((5, 5), torch.float64, seed=19)
    g = grad_of(loss_polar, q, thin_svd, w)
    assert relative_error(g, q @ (q.T @ w - w.T @ q) / 2) <= exactness_tolerance(torch.float64)


@pytest.mark.parametrize("m,n", [(4, 4), (6, 4), (4, 6)])
def test_polar_gradient_at_repeated_values_matches_finite_differences(m, n):
    a = with_singular_values([3, 2, 2, 1], m, n, seed=20)
    w = weights((m, n), torch.float64, seed=21)
    expected = central_difference_grad(lambda x: loss_polar(torch_thin(x), w), a)
    g = grad_of(loss_polar, a, thin_svd, w)
    assert relative_error(g, expected) <= finite_difference_tolerance()


# --- near ties: exact to the accuracy the factors allow; clamp's bias documented ----------------

NEAR_GAP = 1e-9
NEAR_SPECTRUM = [3.0, 2.0 + NEAR_GAP, 2.0, 1.0, 0.5]


def loss_cube(factors, w):
    """⟨W, U diag(S³) Vᴴ⟩ = ⟨W, A Aᵀ A⟩: smooth at ties, and its difference part is not zero."""
    U, S, Vh = factors
    return (((U * S.unsqueeze(-2) ** 3) @ Vh) * w).sum()


@pytest.mark.parametrize("loss", [loss_polar, loss_cube])
def test_auto_is_accurate_at_a_near_tie(loss):
    a = with_singular_values(NEAR_SPECTRUM, 5, 5, seed=22)
    w = weights((5, 5), torch.float64, seed=23)
    expected = central_difference_grad(lambda x: loss(torch_thin(x), w), a)
    g = grad_of(loss, a, thin_svd, w)
    assert relative_error(g, expected) <= near_tie_tolerance(NEAR_GAP, sigma_max=3.0)


def test_clamp_is_biased_at_a_near_tie_only_in_the_difference_part():
    """clamp's default eps (√ε·σ_max ≈ 4.5e-8) exceeds the 1e-9 gap: the cube
    loss, whose difference part is not zero, is off by tens of percent; the polar gradient
    (sum part only) stays exact. The seed's rule clamps the combined kernel and loses both."""
    a = with_singular_values(NEAR_SPECTRUM, 5, 5, seed=22)
    w = weights((5, 5), torch.float64, seed=23)
    for loss, biased in ((loss_cube, True), (loss_polar, False)):
        expected = central_difference_grad(lambda x, f=loss: f(torch_thin(x), w), a)
        clamped = grad_of(loss, a, lambda x: thin_svd(x, method="clamp"), w)
        if biased:
            assert relative_error(clamped, expected) > 1e-2
        else:
            assert relative_error(clamped, expected) <= near_tie_tolerance(NEAR_GAP, 3.0)
    expected = central_difference_grad(lambda x: loss_polar(torch_thin(x), w), a)
    seed = grad_of(loss_polar, a, lambda x: thin_svd(x, method="seed"), w)
    assert relative_error(seed, expected) > 1e-2
    spectrum = torch.tensor(NEAR_SPECTRUM, dtype=torch.float64)
    assert guarded_pairs(spectrum, 5, 5, method="clamp").nonzero().tolist() == [[1, 2]]


# --- the seed's rule -----------------------------------------------------------------------------


def seed_compute_grad_v(a: torch.Tensor, grad_v: torch.Tensor, eps: float) -> torch.Tensor:
    """The seed's ``compute_grad_V`` (Ionescu et al. 2015, eq. 13), transcribed as the oracle:
    tall A, a loss through V only, K_ij = 1/((sign·max(|s_i − s_j|, eps)) (s_i + s_j))."""
    U, S, Vh = torch.linalg.svd(a, full_matrices=False)
    V = Vh.T
    n = S.shape[0]
    diff = S.view(n, 1) - S.view(1, n)
    plus = S.view(n, 1) + S.view(1, n)
    k_neg = torch.sign(diff) * torch.maximum(diff.abs(), torch.full_like(diff, eps))
    k_neg[torch.arange(n), torch.arange(n)] = eps
    k = (1 / k_neg) * (1 / plus) * (1 - torch.eye(n, dtype=a.dtype))
    inner = k.T * (V.T @ grad_v)
    inner = (inner + inner.T) / 2
    return 2 * U @ torch.diag(S) @ inner @ V.T


def loss_on_v(factors, w):
    return (factors.Vh.mT * w).sum()


def test_seed_reproduces_the_seed_on_its_own_case():
    eps = 1e-6
    # A near tie below eps (clamping active) and well-separated pairs, tall matrix, loss via V only.
    a = with_singular_values([3.0, 2.0 + 1e-8, 2.0, 1.0], 8, 4, seed=24)
    w = weights((4, 4), torch.float64, seed=25)
    ours = grad_of(loss_on_v, a, lambda x: thin_svd(x, method="seed", eps=eps), w)
    seed = seed_compute_grad_v(a, w, eps)
    assert relative_error(ours, seed) <= exactness_tolerance(torch.float64)


@pytest.mark.parametrize("spectrum", [[3.0, 2.0, 2.0, 1.0], [3.0, 2.0, 0.0, 0.0]])
def test_seed_and_clamp_are_finite_where_the_seed_divides_by_zero(spectrum):
    a = torch.cat([torch.diag(torch.tensor(spectrum, dtype=torch.float64)), torch.zeros(4, 4)])
    w = weights((4, 4), torch.float64, seed=26)
    assert not torch.isfinite(seed_compute_grad_v(a, w, 1e-6)).all()
    for method in ("seed", "clamp"):
        ours = grad_of(loss_on_v, a, lambda x, m=method: thin_svd(x, method=m, eps=1e-6), w)
        assert torch.isfinite(ours).all()


# --- gauge check and complex phase ---------------------------------------------------------------


def test_gauge_check_warns_for_a_basis_dependent_loss():
    a = with_singular_values([3, 2, 2, 1], 4, 4, seed=27).requires_grad_()
    with pytest.warns(SvdguardWarning, match=r"singular values s2..s3 are tied"):
        svdguard.svd(a, False, gauge_check=True).U[:, 1].sum().backward()


def test_gauge_check_is_silent_for_the_polar_factor():
    a = with_singular_values([3, 2, 2, 1], 4, 4, seed=27).requires_grad_()
    w = weights((4, 4), torch.float64, seed=28)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss_polar(svdguard.svd(a, False, gauge_check=True), w).backward()
    assert torch.isfinite(a.grad).all()


def test_gauge_check_names_the_batch_element():
    batch = torch.stack(
        [random_matrix(4, 4, seed=29), with_singular_values([3, 2, 2, 1], 4, 4, seed=30)]
    )
    batch.requires_grad_()
    with pytest.warns(SvdguardWarning, match=r"batch element \(1,\)"):
        svdguard.svd(batch, False, gauge_check=True).U[..., 1].sum().backward()


def test_complex_phase_dependent_loss_raises():
    a = random_matrix(4, 4, dtype=torch.complex128, seed=31).requires_grad_()
    with pytest.raises(IllDefinedGradientError, match="phase"):
        svdguard.svd(a, False).U[:, 0].real.sum().backward()


# --- stabilizer behaviour -----------------------------------------------------------------------


def test_trivialize_zeroes_ill_conditioned_elements_and_says_which():
    good = random_matrix(4, 4, seed=32)
    bad = with_singular_values([1, 1e-3, 1e-6, 1e-12], 4, 4, seed=33)
    batch = torch.stack([good, bad])
    w = weights((4, 4), torch.float64, seed=34)
    with pytest.warns(SvdguardWarning, match=r"batch elements \(1,\)"):
        g = grad_of(
            loss_polar,
            batch,
            lambda x: svdguard.svd(x, False, method="trivialize", max_cond=1e6),
            w,
        )
    assert torch.equal(g[1], torch.zeros_like(g[1]))
    expected = grad_of(loss_polar, good, torch_thin, w)
    assert relative_error(g[0], expected) <= exactness_tolerance(torch.float64)


def test_guarded_pairs_counts_only_rounding_level_ties_for_auto():
    s = torch.tensor([3.0, 2.0, 2.0, 1.0, 1.0 - 1e-9], dtype=torch.float64)
    assert guarded_pairs(s, 5, 5).nonzero().tolist() == [[1, 2]]
    assert guarded_pairs(s, 5, 5, method="clamp", eps=1e-6).nonzero().tolist() == [[1, 2], [3, 4]]
    assert not guarded_pairs(s, 5, 5, method="native").any()


@pytest.mark.parametrize("method", ["lorentz", "taylor"])
def test_broadening_methods_are_biased_at_moderate_gaps(method):
    """lorentz and taylor perturb the kernel even where auto is exact (here gaps of 1e-3)."""
    a = with_singular_values([3.0, 2.0 + 1e-3, 2.0, 1.0], 4, 4, seed=35)
    w = weights((4, 4), torch.float64, seed=36)
    exact = grad_of(loss_cube, a, torch_thin, w)
    eps = {"lorentz": {"eps": 1e-4}, "taylor": {}}[method]
    biased = grad_of(loss_cube, a, lambda x: svdguard.svd(x, False, method=method, **eps), w)
    assert relative_error(biased, exact) > 1e-3
    assert relative_error(grad_of(loss_cube, a, thin_svd, w), exact) <= 1e-9


# --- dtypes, transforms, devices, validation ------------------------------------------------------


def test_float32_agrees_with_float64():
    a = random_matrix(6, 4, seed=37)
    w = weights((6, 4), torch.float64, seed=38)
    g64 = grad_of(loss_polar, a, thin_svd, w)
    g32 = grad_of(loss_polar, a.float(), thin_svd, w.float())
    assert g32.dtype == torch.float32
    assert relative_error(g32.double(), g64) <= exactness_tolerance(torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(dtype):
    a = random_matrix(5, 3, seed=39).to(dtype).requires_grad_()
    U, S, Vh = svdguard.svd(a, False)
    assert U.dtype == S.dtype == Vh.dtype == torch.float32
    loss_polar((U, S, Vh), torch.ones(5, 3)).backward()
    assert a.grad.dtype == dtype and torch.isfinite(a.grad).all()


def test_vmap_matches_batched_call():
    from torch.func import grad, vmap

    batch = random_matrix(4, 5, 3, seed=40)
    w = weights((5, 3), torch.float64, seed=41)

    def f(x):
        return loss_polar(svdguard.svd(x, False), w) + loss_values(svdguard.svd(x, False), w)

    per_element = vmap(grad(f))(batch)
    batched = grad_of(lambda fac, w: loss_polar(fac, w) + loss_values(fac, w), batch, thin_svd, w)
    assert relative_error(per_element, batched) <= exactness_tolerance(torch.float64)


@pytest.mark.parametrize("method", [m for m in STABILIZED if m != "taylor"])  # taylor is biased
@pytest.mark.parametrize("shape", [(4, 4), (6, 4), (4, 6)])
def test_every_exact_stabilizer_passes_gradcheck_and_gradgradcheck(method, shape):
    """On separated spectra the default eps of clamp/seed/lorentz leaves them exact to rounding."""
    a = random_matrix(*shape, seed=61).requires_grad_()
    w = weights(shape, torch.float64, seed=62)

    def f(x):
        return loss_reconstruct(thin_svd(x, method=method), w) + loss_abs_u(
            thin_svd(x, method=method), w
        )

    assert gradcheck(f, (a,))
    assert gradgradcheck(f, (a,))


@pytest.mark.filterwarnings("ignore::svdguard.errors.SvdguardWarning")
@pytest.mark.parametrize("method", STABILIZED)
def test_double_backward_is_finite_at_a_tie(method):
    a = torch.eye(4, dtype=torch.float64).requires_grad_()
    w = weights((4, 4), torch.float64, seed=42)
    svd_fn = lambda x: thin_svd(x, method=method)  # noqa: E731
    (g,) = torch.autograd.grad(loss_cube(svd_fn(a), w), a, create_graph=True)
    (hv,) = torch.autograd.grad((g * w).sum(), a)
    assert torch.isfinite(hv).all()


def test_svdvals_values_and_gradient():
    a = torch.eye(4, dtype=torch.float64).requires_grad_()
    s = svdguard.svdvals(a)
    assert torch.equal(s.detach(), torch.linalg.svdvals(a.detach()))
    (g,) = torch.autograd.grad(
        (s * torch.arange(4.0, dtype=torch.float64)).sum(), a, create_graph=True
    )
    U, S, Vh = torch.linalg.svd(a.detach())
    assert relative_error(
        g, U @ torch.diag(torch.arange(4.0, dtype=torch.float64)) @ Vh
    ) <= exactness_tolerance(torch.float64)
    (h,) = torch.autograd.grad(g.sum(), a)
    assert torch.isfinite(h).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    a = random_matrix(3, 6, 4, seed=43)
    w = weights((6, 4), torch.float64, seed=44)
    cpu = grad_of(loss_polar, a, thin_svd, w)
    gpu = grad_of(loss_polar, a.cuda(), thin_svd, w.cuda())
    assert gpu.device.type == "cuda"
    assert relative_error(gpu.cpu(), cpu) <= exactness_tolerance(torch.float64)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: svdguard.svd(torch.ones(3)), "shape"),
        (lambda: svdguard.svd(torch.ones(3, 3, dtype=torch.int64)), "dtype"),
        (lambda: svdguard.svd(torch.ones(3, 3), method="magic"), "unknown method"),
        (lambda: svdguard.svd(torch.ones(3, 3), eps=1e-6), "eps applies"),
        (lambda: svdguard.svd(torch.ones(3, 3), method="clamp", eps=-1.0), "positive"),
        (lambda: svdguard.svd(torch.ones(3, 3), method="taylor", degree=-1), "degree"),
        (lambda: svdguard.svd([[1.0]]), "torch.Tensor"),
    ],
)
def test_invalid_arguments_raise_input_error(call, message):
    with pytest.raises(InputError, match=message):
        call()


def test_mask_free_path_equals_guarded_path():
    """The backward skips its masks when no denominator is at rounding level; same numbers."""
    from svdguard.linalg import Auto
    from svdguard.linalg.svd_backward import svd_backward

    a = random_matrix(4, 6, 5, seed=45)
    U, S, Vh = torch.linalg.svd(a, full_matrices=False)
    gU, gVh = random_matrix(4, 6, 5, seed=46), random_matrix(4, 5, 5, seed=47)
    gS = random_matrix(4, 5, seed=48)
    fast = svd_backward(Auto(), U, S, Vh, gU, gS, gVh, values_visible=True)
    guarded = svd_backward(Auto(), U, S, Vh, gU, gS, gVh, values_visible=False)
    assert relative_error(fast, guarded) <= exactness_tolerance(torch.float64)


def test_jacrev_matches_torch_on_separated_input():
    from torch.func import jacrev

    a = random_matrix(4, 3, seed=49)

    def polar_of(svd_fn):
        return lambda x: (lambda f: f.U @ f.Vh)(svd_fn(x))

    ours = jacrev(polar_of(thin_svd))(a)
    theirs = jacrev(polar_of(torch_thin))(a)
    assert ours.shape == (4, 3, 4, 3)
    assert relative_error(ours, theirs) <= exactness_tolerance(torch.float64)


# --- a drop-in for torch.linalg.svd / svdvals -----------------------------------------------------


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (2, 5, 5)])
def test_defaults_are_torchs(shape):
    a = random_matrix(*shape, seed=50)
    ours, theirs = svdguard.svd(a), torch.linalg.svd(a)
    assert type(ours) is type(theirs)
    for x, y in zip(ours, theirs, strict=True):
        assert x.shape == y.shape and torch.equal(x, y)
    assert torch.equal(svdguard.svdvals(a), torch.linalg.svdvals(a))


def _outcome(call):
    try:
        return "ok", call()
    except Exception as err:  # the comparison is with whatever torch does
        return type(err), str(err)


@pytest.mark.parametrize("driver", ["gesvd", "gesvdj", "gesvda"])
def test_driver_behaves_exactly_like_torch(driver):
    a = random_matrix(5, 4, seed=51)
    for ours_fn, torch_fn in (
        (lambda: svdguard.svd(a, driver=driver), lambda: torch.linalg.svd(a, driver=driver)),
        (
            lambda: svdguard.svdvals(a, driver=driver),
            lambda: torch.linalg.svdvals(a, driver=driver),
        ),
    ):
        ours, theirs = _outcome(ours_fn), _outcome(torch_fn)
        assert ours[0] == theirs[0]
        if ours[0] == "ok":
            for x, y in zip(ours[1], theirs[1], strict=True):
                assert torch.equal(x, y)
        else:
            assert ours[1] == theirs[1]


def test_out_fills_the_given_tensors_like_torch():
    a = random_matrix(5, 3, seed=52)
    out = tuple(torch.empty(0, dtype=torch.float64) for _ in range(3))
    result = svdguard.svd(a, out=out)
    for x, y, z in zip(out, torch.linalg.svd(a), result, strict=True):
        assert torch.equal(x, y) and z is x
    values = torch.empty(0, dtype=torch.float64)
    assert svdguard.svdvals(a, out=values) is values
    assert torch.equal(values, torch.linalg.svdvals(a))


def test_out_refuses_autograd_and_bad_containers_clearly():
    a = random_matrix(5, 3, seed=53).requires_grad_()
    out = tuple(torch.empty(0, dtype=torch.float64) for _ in range(3))
    with pytest.raises(InputError, match="out= does not support automatic differentiation"):
        svdguard.svd(a, out=out)
    with pytest.raises(InputError, match="out= does not support automatic differentiation"):
        svdguard.svdvals(a, out=out[1])
    with pytest.raises(InputError, match=r"out= must be a tuple of three tensors"):
        svdguard.svd(a.detach(), out=out[:2])


# --- gauge check at zero singular values (the null space) ----------------------------------------

NULL_SPACE_CASES = [
    ([3.0, 2.0, 0.0, 0.0, 0.0], 8, 5, "s3..s5"),
    ([3.0, 2.0, 0.0, 0.0, 0.0], 5, 8, "s3..s5"),
    ([3.0, 2.0, 1.0, 0.0, 0.0], 5, 5, "s4..s5"),
]


@pytest.mark.parametrize("values, m, n, labels", NULL_SPACE_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gauge_check_warns_when_the_polar_factor_of_a_rank_deficient_matrix_is_used(
    values, m, n, labels, dtype
):
    a = with_singular_values(values, m, n, seed=54).to(dtype).requires_grad_()
    w = weights((m, n), torch.float64, seed=55).to(dtype)
    with pytest.warns(SvdguardWarning, match=rf"singular values {labels} are zero to rounding"):
        loss_polar(svdguard.svd(a, False, gauge_check=True), w).backward()
    assert torch.isfinite(a.grad).all()


@pytest.mark.parametrize("values, m, n", [(v, m, n) for v, m, n, _ in NULL_SPACE_CASES])
def test_gauge_check_is_silent_where_the_gradient_exists(values, m, n):
    """⟨W, U diag(S) Vᴴ⟩ on the same matrices, and the polar factor with one zero (square)."""
    a = with_singular_values(values, m, n, seed=54).requires_grad_()
    w = weights((m, n), torch.float64, seed=55)
    one_zero = with_singular_values([3.0, 2.0, 1.0, 1.0, 0.0], 5, 5, seed=56).requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss_reconstruct(svdguard.svd(a, False, gauge_check=True), w).backward()
        loss_polar(svdguard.svd(one_zero, False, gauge_check=True), w[:5, :5]).backward()
    assert relative_error(a.grad, w) <= exactness_tolerance(torch.float64)


def test_gauge_report_per_element_ties_null_space_and_acting_pairs():
    from svdguard.linalg import Clamp
    from svdguard.linalg.gauge import NULL_SPACE, TIE, gauge_report

    batch = torch.stack(
        [
            with_singular_values([3.0, 2.0, 2.0, 1.0, 0.5], 5, 5, seed=57),
            with_singular_values([3.0, 2.0, 1.0, 0.0, 0.0], 5, 5, seed=58),
            random_matrix(5, 5, seed=59),
        ]
    )
    U, S, Vh = torch.linalg.svd(batch, full_matrices=False)
    w = weights((5, 5), torch.float64, seed=60)
    e_1 = torch.zeros(5, 5, dtype=torch.float64)
    e_1[:, 1] = 1.0
    grad_u = w @ Vh.mT + e_1  # the polar factor plus the second singular vector itself
    grad_vh = U.mT @ w
    report = gauge_report(U, S, Vh, grad_u, grad_vh, Clamp(1e-3))
    assert [r.batch_index for r in report] == [(0,), (1,), (2,)]
    assert [v.indices for v in report[0].ties] == [(1, 2)] and not report[0].null_space
    assert report[0].ties[0].kind == TIE and report[0].ties[0].labels == "s2..s3"
    assert [v.indices for v in report[1].null_space] == [(3, 4)]
    assert report[1].null_space[0].kind == NULL_SPACE
    assert report[0].acting_pairs == ((1, 2),) and report[1].acting_pairs == ((3, 4),)
    assert report[2].gauge_invariant and report[2].acting_pairs == ()  # separated, full rank


def test_labels_are_one_based():
    from svdguard.linalg.gauge import value_labels

    assert value_labels((1, 2)) == "s2..s3"
    assert value_labels((3,)) == "s4"
    assert value_labels((0, 2)) == "s1, s3"
