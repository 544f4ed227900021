"""svdguard.eigh / eigvalsh: torch's forward, torch's backward away from ties, finite-difference
gradients at ties, the gauge and phase checks, double backward and vmap."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from svdguard.errors import IllDefinedGradientError, InputError, SvdguardWarning
from svdguard.linalg.eigh import (
    EighConfig,
    eigh,
    eigh_tie_tolerance,
    eigvalsh,
    guarded_reciprocal,
)
from svdguard.linalg.stabilizer_values import Auto, Clamp, Lorentz
from svdguard.tolerances import machine_eps
from tests.helpers import (
    central_difference_grad,
    exactness_tolerance,
    finite_difference_tolerance,
    haar_unitary,
    relative_error,
)

REAL = (torch.float32, torch.float64)


def sym(x: torch.Tensor) -> torch.Tensor:
    """The symmetric part, so that finite differences stay on symmetric matrices."""
    return (x + x.mT) / 2


def with_eigenvalues(values: list[float], *, dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    """Q diag(values) Qᵀ with a Haar-random Q (float64 build)."""
    g = torch.Generator().manual_seed(seed)
    q = haar_unitary(len(values), dtype=torch.float64, generator=g)
    a = (q * torch.tensor(values, dtype=torch.float64)) @ q.mT
    return sym(a).to(dtype)


def random_symmetric(*shape: int, dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, dtype=torch.float64, generator=g)
    if dtype.is_complex:
        x = torch.complex(x, torch.randn(*shape, dtype=torch.float64, generator=g))
    return ((x + x.mH) / 2).to(dtype)


def weights(n: int, dtype=torch.float64, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, n, dtype=torch.float64, generator=g).to(dtype)


def spectral_loss(decompose, A: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """⟨W, V sin(Λ) Vᴴ⟩ + ⟨W, v_n v_nᴴ⟩: gauge invariant, uses both λ and V."""
    lam, V = decompose(A)
    f = V @ torch.diag_embed(lam.sin().to(V.dtype)) @ V.mH
    top = V[..., :, -1:]
    return ((W * f).real.sum() + (W * (top @ top.mH)).real.sum()).to(torch.float64)


# --- forward --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", (*REAL, torch.complex128))
@pytest.mark.parametrize("requires_grad", (False, True))
def test_forward_is_torch_bitwise(dtype, requires_grad):
    A = random_symmetric(3, 5, 5, dtype=dtype).requires_grad_(requires_grad)
    lam, V = eigh(A)
    ref_lam, ref_V = torch.linalg.eigh(A)
    assert torch.equal(lam, ref_lam) and torch.equal(V, ref_V)
    assert torch.equal(eigvalsh(A), torch.linalg.eigvalsh(A))


def test_uplo_reads_the_named_triangle():
    A = weights(4)  # not symmetric: the two triangles give different matrices
    for uplo in ("L", "U"):
        assert torch.equal(eigh(A, uplo).eigenvalues, torch.linalg.eigh(A, UPLO=uplo).eigenvalues)


def test_returns_torch_named_tuple():
    out = eigh(random_symmetric(4, 4))
    assert isinstance(out, torch.return_types.linalg_eigh)
    assert out.eigenvectors is out[1]


# --- backward away from ties: torch's backward ------------------------------------------


@pytest.mark.parametrize("dtype", (*REAL, torch.complex64, torch.complex128))
def test_backward_matches_torch_on_separated_spectra(dtype):
    A = random_symmetric(2, 6, 6, dtype=dtype, seed=3).requires_grad_(True)
    W = weights(6, dtype=dtype)
    (ours,) = torch.autograd.grad(spectral_loss(eigh, A, W), A)
    (ref,) = torch.autograd.grad(spectral_loss(torch.linalg.eigh, A, W), A)
    assert relative_error(ours, ref) <= exactness_tolerance(dtype)


@pytest.mark.parametrize("uplo", ("L", "U"))
def test_backward_matches_torch_for_each_triangle(uplo):
    A = weights(5, seed=4).requires_grad_(True)
    W = weights(5)
    (ours,) = torch.autograd.grad(spectral_loss(lambda a: eigh(a, uplo), A, W), A)
    (ref,) = torch.autograd.grad(spectral_loss(lambda a: torch.linalg.eigh(a, UPLO=uplo), A, W), A)
    assert relative_error(ours, ref) <= exactness_tolerance(torch.float64)


def test_backward_with_only_eigenvalue_gradient_matches_torch():
    A = random_symmetric(5, 5, seed=5).requires_grad_(True)
    (ours,) = torch.autograd.grad((eigh(A)[0] ** 3).sum(), A)
    (ref,) = torch.autograd.grad((torch.linalg.eigh(A)[0] ** 3).sum(), A)
    assert relative_error(ours, ref) <= exactness_tolerance(torch.float64)


# --- at ties: finite differences ------------------------------------------------------


def fd_at(loss, A: torch.Tensor) -> torch.Tensor:
    return central_difference_grad(lambda x: loss(sym(x)), A)


def autograd_at(loss, A: torch.Tensor) -> torch.Tensor:
    x = A.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(sym(x)), x)
    return g


def test_function_of_eigenvalues_at_the_identity_matches_closed_form_and_fd():
    # Σ λ³ = tr(A³): gradient 3A² (symmetric A), so 3I at the identity.
    A = torch.eye(4, dtype=torch.float64)

    def loss(a):
        lam, V = eigh(a)
        return (V @ torch.diag_embed(lam**3) @ V.mT).diagonal().sum()

    got = autograd_at(loss, A)
    assert torch.isfinite(got).all()
    assert relative_error(got, 3 * A @ A) <= exactness_tolerance(torch.float64)
    assert relative_error(got, fd_at(loss, A)) <= finite_difference_tolerance()


def test_torch_is_not_finite_where_eigh_is():
    # The reason for this module: the same loss through torch's backward at the identity.
    x = torch.eye(3, dtype=torch.float64, requires_grad=True)
    lam, V = torch.linalg.eigh(x)
    (V @ torch.diag_embed(lam**3) @ V.mT).sum().backward()
    assert not torch.isfinite(x.grad).all()


def test_projector_onto_a_separated_eigenspace_at_ties_matches_fd():
    # λ = (1, 1, 1, 4, 4): the projector onto the λ=4 eigenspace is smooth (gap 3).
    A = with_eigenvalues([1.0, 1.0, 1.0, 4.0, 4.0])
    W = weights(5)

    def loss(a):
        V = eigh(a)[1]
        top = V[:, 3:]
        return (W * (top @ top.mT)).sum()

    got = autograd_at(loss, A)
    assert relative_error(got, fd_at(loss, A)) <= finite_difference_tolerance()


def test_simple_eigenvector_with_the_rest_tied_matches_fd():
    A = with_eigenvalues([-2.0, -2.0, -2.0, 3.0], seed=2)
    W = weights(4)

    def loss(a):
        v = eigh(a)[1][:, -1]
        return v @ W @ v  # sign invariant

    got = autograd_at(loss, A)
    assert relative_error(got, fd_at(loss, A)) <= finite_difference_tolerance()


def test_reconstruction_at_a_tie_loses_exactly_the_in_block_part():
    # ⟨W, V diag(λ) Vᵀ⟩ = ⟨W, A⟩: gradient sym(W). At a tie the in-block off-diagonal
    # (in the eigenbasis) of the gradient is not determined by the factors and is
    # dropped; everything else is exact.
    A = with_eigenvalues([1.0, 2.0, 2.0, 5.0], seed=4)
    W = weights(4)

    def loss(a):
        lam, V = eigh(a)
        return (W * (V @ torch.diag_embed(lam) @ V.mT)).sum()

    got = autograd_at(loss, A)
    expected = sym(W)
    V = torch.linalg.eigh(A)[1]
    missing = V.mT @ (expected - got) @ V
    in_block = torch.zeros(4, 4, dtype=torch.bool)
    in_block[1, 2] = in_block[2, 1] = True
    scale = float(expected.abs().max())
    assert float(missing[~in_block].abs().max()) <= exactness_tolerance(torch.float64) * scale
    assert torch.allclose(missing[in_block], (V.mT @ expected @ V)[in_block])


@pytest.mark.parametrize("dtype", REAL)
def test_ties_in_float32_and_float64_stay_finite_and_exact(dtype):
    A = torch.eye(3, dtype=dtype).requires_grad_(True)
    lam, V = eigh(A)
    loss = (V @ torch.diag_embed(lam**2) @ V.mT).diagonal().sum()
    (g,) = torch.autograd.grad(loss, A)
    assert relative_error(g.double(), 2 * torch.eye(3, dtype=torch.float64)) <= (
        exactness_tolerance(dtype)
    )


def test_batched_ties_and_separated_spectra_together():
    A = torch.stack([torch.eye(4, dtype=torch.float64), with_eigenvalues([1.0, 2.0, 3.0, 4.0])])
    A.requires_grad_(True)
    (g,) = torch.autograd.grad((eigh(A)[0] ** 3).sum(), A)
    expected = 3 * A.detach() @ A.detach()
    assert relative_error(g, expected) <= exactness_tolerance(torch.float64)


# --- other methods ---------------------------------------------------------------------


def test_guarded_reciprocal_closed_forms():
    # F_ij ≈ 1/(λ_j − λ_i) for ascending λ: +1/d above the diagonal, a tie dropped (auto),
    # clamped to ±1/eps with the sign ascending values have (clamp), or d/(d² + eps) (lorentz).
    lam = torch.tensor([1.0, 1.0, 1.5], dtype=torch.float64)
    auto = guarded_reciprocal(EighConfig(Auto()), lam)
    assert auto.tolist() == [[0.0, 0.0, 2.0], [0.0, 0.0, 2.0], [-2.0, -2.0, 0.0]]
    clamp = guarded_reciprocal(EighConfig(Clamp(eps=0.25)), lam)
    assert clamp.tolist() == [[0.0, 4.0, 2.0], [-4.0, 0.0, 2.0], [-2.0, -2.0, 0.0]]
    lorentz = guarded_reciprocal(EighConfig(Lorentz(eps=0.25)), lam)
    expected = 0.5 / (0.25 + 0.25)  # d/(d² + eps) at d = 0.5
    assert lorentz.tolist() == [
        [0.0, 0.0, expected],
        [0.0, 0.0, expected],
        [-expected, -expected, 0.0],
    ]


@pytest.mark.parametrize("method", ("clamp", "lorentz"))
def test_stabilizers_are_finite_at_ties_and_close_to_torch_elsewhere(method):
    eye = torch.eye(3, dtype=torch.float64, requires_grad=True)
    W = weights(3)
    (g,) = torch.autograd.grad(spectral_loss(lambda a: eigh(a, method=method), eye, W), eye)
    assert torch.isfinite(g).all()
    A = random_symmetric(5, 5, seed=6).requires_grad_(True)
    W = weights(5)
    (ours,) = torch.autograd.grad(spectral_loss(lambda a: eigh(a, method=method), A, W), A)
    (ref,) = torch.autograd.grad(spectral_loss(torch.linalg.eigh, A, W), A)
    # default eps is √ε·max|λ| (clamp) or ε·max|λ|² (lorentz): with gaps ≫ √ε·max|λ| the
    # relative bias is at most eps/gap² ≤ ε·(max|λ|/gap)², well inside √ε.
    assert relative_error(ours, ref) <= machine_eps(torch.float64) ** 0.5


def test_native_is_torch():
    A = torch.eye(3, dtype=torch.float64, requires_grad=True)
    lam, V = eigh(A, method="native")
    assert V.grad_fn.name() == torch.linalg.eigh(A)[1].grad_fn.name()


def test_tie_tolerance_scales_with_size_and_magnitude():
    value = eigh_tie_tolerance(torch.tensor(2.0, dtype=torch.float64), torch.float64, 10)
    assert float(value) == 10 * 2.0 * machine_eps(torch.float64)


# --- checks ---------------------------------------------------------------------------


def test_gauge_check_warns_for_a_basis_dependent_loss_at_a_tie():
    A = torch.eye(3, dtype=torch.float64, requires_grad=True)
    V = eigh(A, gauge_check=True)[1]
    with pytest.warns(SvdguardWarning, match=r"eigenvalues \[0, 1, 2\] are tied"):
        (V[:, 0] * torch.arange(3.0, dtype=torch.float64)).sum().backward()


def test_gauge_check_is_silent_for_an_invariant_loss():
    A = with_eigenvalues([1.0, 1.0, 3.0]).requires_grad_(True)
    lam, V = eigh(A, gauge_check=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (V @ torch.diag_embed(lam**2) @ V.mT).sum().backward()


def test_complex_phase_dependent_loss_raises_like_torch():
    A = random_symmetric(4, 4, dtype=torch.complex128).requires_grad_(True)
    with pytest.raises(RuntimeError):
        torch.linalg.eigh(A)[1][0, 0].imag.backward()
    with pytest.raises(IllDefinedGradientError, match="phase"):
        eigh(A)[1][0, 0].imag.backward()


def test_complex_phase_invariant_loss_is_fine():
    A = random_symmetric(4, 4, dtype=torch.complex128).requires_grad_(True)
    eigh(A)[1].abs().sum().backward()
    assert torch.isfinite(torch.view_as_real(A.grad)).all()


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(3, 4), "square"),
        (torch.zeros(3), "square"),
        (torch.zeros(3, 3, dtype=torch.int64), "dtype"),
        ([[1.0]], "torch.Tensor"),
    ],
)
def test_bad_input_names_the_problem(bad, match):
    with pytest.raises(InputError, match=match):
        eigh(bad)


def test_bad_parameters_name_the_parameter():
    A = torch.eye(2)
    with pytest.raises(InputError, match="method="):
        eigh(A, method="taylor")
    with pytest.raises(InputError, match="UPLO="):
        eigh(A, "X")
    with pytest.raises(InputError, match=r"\beps\b"):
        eigh(A, eps=1e-3)
    with pytest.raises(InputError, match=r"\beps\b"):
        eigh(A, method="clamp", eps=-1.0)


def test_half_precision_is_computed_in_float32():
    lam = eigh(torch.eye(3, dtype=torch.float16))[0]
    assert lam.dtype == torch.float32


# --- autograd machinery ---------------------------------------------------------------


def test_double_backward_matches_gradgradcheck():
    X = random_symmetric(4, 4, seed=7).requires_grad_(True)
    W = weights(4)
    assert torch.autograd.gradgradcheck(lambda x: spectral_loss(eigh, sym(x), W), (X,))


def test_double_backward_at_the_identity_is_finite_and_exact_outside_the_block():
    # Σ λ³: gradient 3A², its derivative along H at A = I is 3(AH + HA) = 6H. The first
    # backward is V diag(3λ²) Vᵀ; differentiating it through V at a full tie meets the
    # in-block limit (3λ_j² − 3λ_i²)/(λ_j − λ_i), which the factors do not carry: the
    # off-diagonal (eigenbasis, here V = I) part is dropped, the diagonal is exact.
    A = torch.eye(3, dtype=torch.float64, requires_grad=True)
    H = sym(weights(3))
    (g,) = torch.autograd.grad((eigvalsh(A) ** 3).sum(), A, create_graph=True)
    (hv,) = torch.autograd.grad((g * H).sum(), A)
    assert torch.isfinite(hv).all()
    assert relative_error(hv.diagonal(), 6 * H.diagonal()) <= exactness_tolerance(torch.float64)


def test_vmap_of_grad_matches_a_loop():
    A = torch.stack([random_symmetric(4, 4, seed=s) for s in range(3)] + [torch.eye(4).double()])
    W = weights(4)

    def loss(a):
        return spectral_loss(eigh, a, W)

    batched = torch.func.vmap(torch.func.grad(loss))(A)
    for i in range(A.shape[0]):
        a = A[i].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(loss(a), a)
        assert relative_error(batched[i], g) <= exactness_tolerance(torch.float64)


# --- property: clustered spectra -------------------------------------------------------

CLUSTER_GAP = 0.5  #: smallest distance between distinct clusters (the projector's gap)


@st.composite
def clustered_spectra(draw):
    """Eigenvalues in 2–3 clusters of exactly repeated values, clusters ≥ CLUSTER_GAP apart."""
    sizes = draw(st.lists(st.integers(1, 3), min_size=2, max_size=3))
    starts = draw(st.lists(st.floats(-2.0, 2.0), min_size=len(sizes), max_size=len(sizes)))
    centres = sorted(starts)
    for i in range(1, len(centres)):  # push clusters apart, keeping their order
        centres[i] = max(centres[i], centres[i - 1] + CLUSTER_GAP)
    values = [c for c, k in zip(centres, sizes, strict=True) for _ in range(k)]
    return values, sizes[-1], draw(st.integers(0, 2**16))


def cluster_sizes(values: list[float]) -> list[int]:
    """Lengths of the runs of equal values."""
    sizes = [1]
    for previous, value in zip(values, values[1:], strict=False):
        if value == previous:
            sizes[-1] += 1
        else:
            sizes.append(1)
    return sizes


@settings(max_examples=15, deadline=None)
@given(clustered_spectra())
def test_top_cluster_projector_and_eigenvalue_powers_match_fd(case):
    # L = ⟨W, P_top⟩ + Σ λ³: the projector onto the top cluster's eigenspace is smooth
    # (gap ≥ CLUSTER_GAP) and Σ λ³ = tr A³, whatever the ties inside the clusters.
    values, top, seed = case
    A = with_eigenvalues(values, seed=seed)
    n = len(values)
    W = weights(n, seed=seed + 1)
    # The claim is about ties at rounding level: the computed spread of each cluster must
    # be within τ. Building Q diag(λ) Qᵀ in float64 itself spreads a cluster by a few
    # n·ε·max|λ| now and then; such a matrix has distinct eigenvalues as far as τ is
    # concerned and is left out.
    lam = torch.linalg.eigh(A).eigenvalues
    tau = float(eigh_tie_tolerance(lam.abs().max(), torch.float64, n))
    start = 0
    for size in cluster_sizes(values):
        assume(float(lam[start + size - 1] - lam[start]) <= tau)
        start += size

    def loss(a):
        lam, V = eigh(a)
        block = V[:, n - top :]
        return (W * (block @ block.mT)).sum() + (lam**3).sum()

    got = autograd_at(loss, A)
    # derivatives of the projector scale like 1/gap^k: a gap of 0.5 and |λ| ≤ 4 give a
    # fifth-derivative bound of order 1e4 for the stencil's error.
    assert relative_error(got, fd_at(loss, A)) <= finite_difference_tolerance(1e4)
