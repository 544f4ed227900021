"""Stabilizers as values; auto's rounding rule on rank-deficient matrices; clamp, seed, taylor, lorentz
at ties. References: torch's own backward where it is right, closed forms, float64 finite differences,
numpy."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
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

import svdguard
from svdguard.errors import InputError
from svdguard.linalg import (
    METHODS,
    Auto,
    BackwardContext,
    Clamp,
    Lorentz,
    Native,
    Seed,
    Stabilizer,
    Taylor,
    Trivialize,
    stabilizer_from_name,
)
from svdguard.linalg.stabilizers import auto_inverse_singular_values, exact_sum_part
from svdguard.linalg.svd_backward import svd_backward
from svdguard.tolerances import machine_eps, tie_tolerance

F64, F32 = torch.float64, torch.float32


def thin(x, **options):
    return svdguard.svd(x, full_matrices=False, **options)


def torch_thin(x):
    return torch.linalg.svd(x, full_matrices=False)


def grad_of(loss, a, svd_fn):
    x = a.detach().clone().requires_grad_()
    (g,) = torch.autograd.grad(loss(svd_fn(x)), x)
    return g


def polar_loss(w):
    return lambda f: ((f[0] @ f[2]) * w).sum()


def spectral_loss(w, h):
    """⟨W, U diag(h(S)) Vᴴ⟩: gauge invariant; with h(0) = 0 its gradient exists at zero values."""
    return lambda f: (((f[0] * h(f[1]).unsqueeze(-2)) @ f[2]) * w).sum()


# --- 1. values, names, the Protocol ----------------------------------------------------------

EQUIVALENT = [
    ("auto", {}, Auto()),
    ("clamp", {"eps": 1e-6}, Clamp(1e-6)),
    ("seed", {"eps": 1e-6}, Seed(eps=1e-6)),
    ("lorentz", {"eps": 1e-4}, Lorentz(1e-4)),
    ("taylor", {"degree": 5}, Taylor(5)),
    ("trivialize", {"max_cond": 1e3}, Trivialize(1e3)),
    ("native", {}, Native()),
]


@pytest.mark.parametrize("name, params, value", EQUIVALENT, ids=[e[0] for e in EQUIVALENT])
def test_a_name_and_its_value_give_the_same_gradient(name, params, value):
    a = with_singular_values([3.0, 2.0 + 1e-7, 2.0, 0.5], 6, 4, seed=1)
    w = random_matrix(6, 4, seed=2)
    loss = spectral_loss(w, lambda s: s**3)
    by_name = grad_of(loss, a, lambda x: thin(x, method=name, **params))
    by_value = grad_of(loss, a, lambda x: thin(x, method=value))
    assert torch.equal(by_name, by_value)
    assert stabilizer_from_name(name, **params) == value
    assert isinstance(value, Stabilizer)
    assert name in METHODS


@dataclasses.dataclass(frozen=True)
class SumPartOnly:
    """A user-written stabilizer: keeps only the sum part (right for losses of U Vᴴ alone)."""

    name = "sum-part-only"

    def inner(self, ctx: BackwardContext) -> torch.Tensor:
        return exact_sum_part(ctx)

    def inverse_singular_values(self, ctx, projected, raw):
        return auto_inverse_singular_values(ctx, projected, raw)

    def finalize(self, ctx, grad):
        return grad

    def notes(self, s, m, n):
        return []

    def acting_pairs(self, s, m, n):
        k = s.shape[-1]
        return torch.ones(*s.shape, k, dtype=torch.bool).triu(1)

    def inverse_differences(self, values, scale, tau):
        return torch.zeros(*values.shape, values.shape[-1], dtype=values.dtype)

    def describe(self):
        return self.name

    def to_dict(self):
        return {"method": self.name}


@pytest.mark.parametrize("shape", [(5, 5), (7, 4), (4, 7)])
def test_a_user_written_stabilizer_is_accepted(shape):
    a = random_matrix(*shape, seed=3)
    w = random_matrix(*shape, seed=4)
    ours = grad_of(polar_loss(w), a, lambda x: thin(x, method=SumPartOnly()))
    theirs = grad_of(polar_loss(w), a, torch_thin)
    assert isinstance(SumPartOnly(), Stabilizer)
    assert relative_error(ours, theirs) <= exactness_tolerance(F64)
    s = torch.tensor([3.0, 2.0, 1.0], dtype=F64)
    assert svdguard.linalg.svd.guarded_pairs(s, 3, 3, method=SumPartOnly()).sum() == 3


@pytest.mark.parametrize("bad", [math.inf, math.nan, 0.0, -1.0, "1e-6"])
@pytest.mark.parametrize("cls", [Clamp, Seed, Lorentz])
def test_eps_is_validated_where_the_value_is_made(cls, bad):
    with pytest.raises(InputError, match="eps must be a positive finite number"):
        cls(bad)
    with pytest.raises(InputError, match="eps must be a positive finite number"):
        thin(torch.eye(3), method=cls.name, eps=bad)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Taylor(-1), "degree must be a non-negative integer, got -1"),
        (lambda: Taylor(1.5), "degree must be a non-negative integer"),
        (lambda: Taylor(True), "degree must be a non-negative integer"),
        (lambda: Trivialize(0.5), "max_cond must be a number of at least 1, got 0.5"),
        (lambda: Trivialize(math.nan), "max_cond must be"),
        (lambda: stabilizer_from_name("magic"), "unknown method 'magic'"),
        (lambda: stabilizer_from_name("auto", eps=1e-6), "eps applies to method='clamp'"),
        (lambda: stabilizer_from_name("clamp", degree=3), "degree applies to method='taylor'"),
        (lambda: stabilizer_from_name("auto", max_cond=10.0), "max_cond applies"),
        (lambda: stabilizer_from_name(Clamp(), eps=1e-3), "cannot be combined"),
        (lambda: stabilizer_from_name(3), "method must be one of"),
    ],
)
def test_invalid_parameters_name_the_parameter(make, message):
    with pytest.raises(InputError, match=message):
        make()


def test_values_describe_themselves():
    assert Auto().describe() == "auto" and Auto().to_dict() == {"method": "auto"}
    assert Clamp(1e-6).describe() == "clamp(eps=1e-06)"
    assert Clamp(1e-6).to_dict() == {"method": "clamp", "eps": 1e-6}
    assert Taylor().to_dict() == {"method": "taylor", "degree": 9}
    assert Trivialize().to_dict() == {"method": "trivialize", "max_cond": None}
    assert Seed(2e-3).describe() == "seed(eps=0.002)"


def test_no_method_string_dispatch_remains_in_linalg():
    from pathlib import Path

    root = Path(svdguard.__file__).parent / "linalg"
    for path in root.glob("*.py"):
        assert "method ==" not in path.read_text(), path.name


# --- the generic guarded reciprocal of a difference (an eigh kernel is 1/(λ_j − λ_i)) ----------


def eigenvalues(seed: int) -> torch.Tensor:
    x = random_matrix(6, 6, seed=seed)
    return torch.linalg.eigvalsh(x @ x.T)  # ascending, positive, separated


def test_inverse_differences_auto_is_exact_and_drops_only_rounding_level():
    lam = eigenvalues(5)
    scale = lam.abs().max().reshape(1, 1)
    tau = tie_tolerance(scale, F64, 6, 6)
    expected = 1 / (lam.numpy()[None, :] - lam.numpy()[:, None] + np.eye(6)) * (1 - np.eye(6))
    got = Auto().inverse_differences(lam, scale, tau)
    assert relative_error(got, torch.from_numpy(expected)) <= exactness_tolerance(F64)
    tied = torch.tensor([1.0, 1.0, 2.0], dtype=F64)
    assert Auto().inverse_differences(tied, scale, tau)[0, 1] == 0


def test_inverse_differences_clamp_lorentz_taylor_against_their_formulas():
    lam = eigenvalues(6)
    d = lam.numpy()[None, :] - lam.numpy()[:, None]
    off = 1 - np.eye(6)
    scale = lam.abs().max().reshape(1, 1)
    tau = tie_tolerance(scale, F64, 6, 6)
    eps = float(np.median(np.abs(d[off > 0])))  # clamps about half the pairs
    clamp = Clamp(eps).inverse_differences(lam, scale, tau).numpy()
    assert np.all(np.abs(clamp) <= 1 / eps * (1 + machine_eps(F64)))
    free = np.abs(d) >= eps
    assert np.allclose(clamp[free], 1 / d[free], rtol=exactness_tolerance(F64), atol=0)
    lorentz = Lorentz(eps).inverse_differences(lam, scale, tau).numpy()
    assert np.allclose(lorentz, d / (d * d + eps) * off, rtol=exactness_tolerance(F64), atol=0)
    degree = 4
    taylor = Taylor(degree).inverse_differences(lam, scale, tau).numpy()
    ratio = np.minimum.outer(lam.numpy(), lam.numpy()) / np.maximum.outer(lam.numpy(), lam.numpy())
    exact = np.where(off > 0, 1 / np.where(off > 0, d, 1), 0)
    # the series misses Σ_{p>P} r^p: relative truncation r^{P+1}
    rel = np.abs(taylor - exact)[off > 0] / np.abs(exact[off > 0])
    assert np.all(rel <= ratio[off > 0] ** (degree + 1) + exactness_tolerance(F64))


# --- 2. auto on rank-deficient matrices: as accurate as torch where torch is right -------------

RANK_DEFICIENT = {
    "6x4-rank3": ([3.0, 2.0, 1.0, 0.0], 6, 4),
    "4x6-rank3": ([3.0, 2.0, 1.0, 0.0], 4, 6),
    "5x5-two-zeros": ([3.0, 2.0, 1.0, 0.0, 0.0], 5, 5),
    "5x5-kappa-1e10": ([1.0, 0.5, 0.2, 1e-5, 1e-10], 5, 5),
}
H = {"s": lambda s: s, "s^3": lambda s: s**3, "tanh": torch.tanh}


@pytest.mark.parametrize("case", list(RANK_DEFICIENT))
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("h_name", list(H))
def test_spectral_losses_on_rank_deficient_matrices_match_torch(case, dtype, h_name):
    values, m, n = RANK_DEFICIENT[case]
    a = with_singular_values(values, m, n, seed=7).to(dtype)
    w = random_matrix(m, n, seed=8).to(dtype)
    s = torch.linalg.svdvals(a)
    tau = tie_tolerance(s[:1], dtype, m, n)
    if case != "5x5-kappa-1e10" or dtype == F32:
        assert 0 < float(s[-1]) <= float(tau)  # LAPACK returns the zero at rounding level
    loss = spectral_loss(w, H[h_name])
    ours = grad_of(loss, a, thin)
    theirs = grad_of(loss, a, torch_thin)
    assert relative_error(ours, theirs) <= exactness_tolerance(dtype)
    a64, w64 = a.double(), w.double()
    closed = {  # ∂⟨W, A⟩ = W;  ∂⟨W, A Aᵀ A⟩ = W AᵀA + A Wᵀ A + A Aᵀ W
        "s": w64,
        "s^3": w64 @ a64.T @ a64 + a64 @ w64.T @ a64 + a64 @ a64.T @ w64,
    }
    if h_name in closed:
        assert relative_error(ours.double(), closed[h_name]) <= exactness_tolerance(dtype)


@pytest.mark.parametrize("case", ["6x4-rank3", "4x6-rank3", "5x5-two-zeros"])
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128], ids=["c64", "c128"])
def test_complex_reconstruction_on_rank_deficient_matrices(case, dtype):
    """Re⟨W, U diag(S) Vᴴ⟩ = Re⟨W, A⟩: the gradient is W, also with complex rounding-level zeros."""
    values, m, n = RANK_DEFICIENT[case]
    a = with_singular_values(values, m, n, dtype=torch.complex128, seed=27).to(dtype)
    w = random_matrix(m, n, dtype=torch.complex128, seed=28).to(dtype)

    def loss(f):
        U, S, Vh = f
        return (((U * S.unsqueeze(-2).to(U.dtype)) @ Vh) * w.conj()).real.sum()

    got = grad_of(loss, a, thin)
    real = torch.float32 if dtype == torch.complex64 else F64
    assert relative_error(got.to(torch.complex128), w.to(torch.complex128)) <= exactness_tolerance(
        real
    )


def test_rank_deficient_under_vmap_grad_and_jacrev():
    from torch.func import grad, jacrev, vmap

    batch = torch.stack(
        [with_singular_values(RANK_DEFICIENT[c][0], 5, 5, seed=9) for c in ("5x5-two-zeros",)]
        + [with_singular_values([3.0, 2.0, 1.0, 0.0, 0.0], 5, 5, seed=10)]
    )
    w = random_matrix(5, 5, seed=11)

    def f(x):
        return spectral_loss(w, lambda s: s)(thin(x))

    per_element = vmap(grad(f))(batch)
    assert relative_error(per_element, w.expand(2, 5, 5)) <= exactness_tolerance(F64)

    def reconstruct(x):
        U, S, Vh = thin(x)
        return (U * S.unsqueeze(-2)) @ Vh

    jac = jacrev(reconstruct)(batch[0])  # A ↦ U S Vᴴ is the identity map
    assert relative_error(jac, torch.eye(25, dtype=F64).reshape(5, 5, 5, 5)) <= exactness_tolerance(
        F64
    )


def test_rank_deficient_double_backward_is_finite():
    a = with_singular_values([3.0, 2.0, 1.0, 0.0], 6, 4, seed=12).requires_grad_()
    w = random_matrix(6, 4, seed=13)
    (g,) = torch.autograd.grad(spectral_loss(w, lambda s: s**3)(thin(a)), a, create_graph=True)
    (hv,) = torch.autograd.grad((g * w).sum(), a)
    assert torch.isfinite(hv).all()


def test_polar_of_a_rank_deficient_matrix_has_no_derivative_and_stays_finite():
    """8×5 of rank 2: the difference quotients of U Vᴴ along a direction do not converge."""
    a = with_singular_values([3.0, 2.0, 0.0, 0.0, 0.0], 8, 5, seed=14)
    w = random_matrix(8, 5, seed=15)
    e = random_matrix(8, 5, seed=16)
    loss = polar_loss(w)
    quotients = [
        float((loss(torch_thin(a + t * e)) - loss(torch_thin(a - t * e))) / (2 * t))
        for t in (1e-2, 1e-4, 1e-6)
    ]
    assert abs(quotients[2]) > 1e2 * abs(quotients[0])  # grows like 1/t: no derivative
    g = grad_of(loss, a, thin)
    assert torch.isfinite(g).all()


# --- 3. clamp keeps what the factors determine; seed is the literal rule ------------------------


def polar_cases():
    g = torch.Generator().manual_seed(17)
    q = haar_unitary(5, dtype=F64, generator=g)
    return {
        "identity": (torch.eye(5, dtype=F64), "closed"),
        "orthogonal": (q, "closed"),
        "tied-square": (with_singular_values([3.0, 2.0, 2.0, 2.0, 1.0], 5, 5, seed=18), "fd"),
        "tied-tall": (with_singular_values([3.0, 2.0, 2.0, 1.0], 7, 4, seed=19), "fd"),
        "tied-wide": (with_singular_values([2.0, 2.0, 1.0, 1.0], 4, 7, seed=20), "fd"),
    }


def polar_reference(a: torch.Tensor, w: torch.Tensor, kind: str) -> tuple[torch.Tensor, float]:
    """The gradient of ⟨W, U Vᴴ⟩ and the tolerance of that reference.

    Square orthogonal Q (I included): polar(Q + E) = Q + Q (QᵀE − EᵀQ)/2 + O(E²), so the
    gradient is Q (QᵀW − WᵀQ)/2. Otherwise fourth-order central differences of torch's
    forward U Vᴴ, which is smooth on full-rank matrices even at ties.
    """
    if kind == "closed":
        return a @ (a.T @ w - w.T @ a) / 2, exactness_tolerance(F64)
    return central_difference_grad(
        lambda x: polar_loss(w)(torch_thin(x)), a
    ), finite_difference_tolerance()


@pytest.mark.parametrize("case", list(polar_cases()))
@pytest.mark.parametrize("stabilizer", [Clamp(), Clamp(1e-6), Lorentz(), Taylor(), Auto()])
def test_polar_gradient_is_exact_at_ties_for_every_split_stabilizer(case, stabilizer):
    a, kind = polar_cases()[case]
    w = random_matrix(*a.shape, seed=21)
    expected, tol = polar_reference(a, w, kind)
    got = grad_of(polar_loss(w), a, lambda x: thin(x, method=stabilizer))
    assert relative_error(got, expected) <= tol


@pytest.mark.parametrize("case", list(polar_cases()))
def test_clamp_from_torch_factors_and_upstream_gradients(case):
    """gU = W V, gVh = Uᴴ W computed from torch's factors and fed into the backward."""
    a, kind = polar_cases()[case]
    w = random_matrix(*a.shape, seed=22)
    expected, tol = polar_reference(a, w, kind)
    U, S, Vh = torch.linalg.svd(a, full_matrices=False)
    grad_u, grad_vh = w @ Vh.mT, U.mT @ w
    got = svd_backward(Clamp(1e-6), U, S, Vh, grad_u, None, grad_vh, values_visible=True)
    assert relative_error(got, expected) <= tol


def test_clamp_polar_at_identity_in_float32():
    w = random_matrix(4, 4, seed=23)
    got = grad_of(polar_loss(w.float()), torch.eye(4), lambda x: thin(x, method="clamp"))
    assert relative_error(got.double(), (w - w.T) / 2) <= exactness_tolerance(F32)


def test_seed_loses_the_polar_gradient_at_the_identity():
    """The literal rule clamps the combined kernel, whose sum part carries all of it: 0, not (W − Wᵀ)/2."""
    w = random_matrix(4, 4, seed=24)
    got = grad_of(
        polar_loss(w), torch.eye(4, dtype=F64), lambda x: thin(x, method="seed", eps=1e-6)
    )
    assert float(got.abs().max()) == 0.0


@pytest.mark.parametrize("shape", [(5, 5), (7, 4), (4, 7)])
@pytest.mark.parametrize("method", ["clamp", "seed"])
def test_clamp_and_seed_equal_auto_away_from_their_clamp_zone(shape, method):
    a = random_matrix(*shape, seed=25)
    s = torch.linalg.svdvals(a)
    eps = float((s[:-1] - s[1:]).min().minimum(s.min())) / 10  # below every gap and every s_i
    w = random_matrix(*shape, seed=26)

    def every_factor(f):
        U, S, Vh = f
        return (U.abs() * w[:, : U.shape[-1]]).sum() + polar_loss(w)(f) + (S**2).sum()

    auto = grad_of(every_factor, a, thin)
    clamped = grad_of(every_factor, a, lambda x: thin(x, method=method, eps=eps))
    assert relative_error(clamped, auto) <= exactness_tolerance(F64)


# --- property: any rank deficiency, any shape ---------------------------------------------------

from hypothesis import assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(
    m=st.integers(1, 7),
    n=st.integers(1, 7),
    rank_drop=st.integers(1, 4),
    seed=st.integers(0, 10_000),
    dtype=st.sampled_from([F32, F64]),
)
def test_reconstruction_gradient_is_w_for_every_rank_deficient_matrix(m, n, rank_drop, seed, dtype):
    """∂⟨W, U diag(S) Vᴴ⟩/∂A = W exactly, whatever rounding-level values LAPACK returns.

    A singular value returned as exactly 0 (e.g. the zero matrix) makes gU, gVh exactly 0 in
    its column: the 0/0 limit is not in the upstream gradients, so such draws are skipped.
    """
    k = min(m, n)
    rank = max(k - rank_drop, 1)
    g = torch.Generator().manual_seed(seed)
    values = torch.rand(k, dtype=F64, generator=g) + 0.5
    values[rank:] = 0.0
    a = with_singular_values(values.sort(descending=True).values, m, n, seed=seed).to(dtype)
    assume(bool((torch.linalg.svdvals(a) > 0).all()))
    w = random_matrix(m, n, seed=seed + 1).to(dtype)
    got = grad_of(spectral_loss(w, lambda s: s), a, thin)
    assert torch.isfinite(got).all()
    assert relative_error(got.double(), w.double()) <= exactness_tolerance(dtype)


@pytest.mark.parametrize("case", sorted(RANK_DEFICIENT))
def test_rounding_rule_on_the_few_pairs_equals_the_rule_on_the_grid(case):
    """With values readable the rule runs only on the pairs at rounding level; otherwise (under
    torch.func) on the whole k×k grid. Both must keep the same terms: identical parts."""
    from svdguard.linalg.stabilizers import BackwardContext, auto_difference_part

    values, m, n = RANK_DEFICIENT[case]
    a = with_singular_values(values, m, n, seed=21)
    U, S, Vh = torch.linalg.svd(a, full_matrices=False)
    w = random_matrix(m, n, seed=22)
    gU = w @ Vh.mT * S.unsqueeze(-2)  # the upstream gradients of ⟨W, U diag(S) Vᴴ⟩ …
    gVh = (U.mT @ w) * S.unsqueeze(-1)
    gU = gU + random_matrix(m, S.shape[-1], seed=23)  # … plus a part that does not vanish
    parts = {}
    for visible in (True, False):
        ctx = BackwardContext(S, m, n, U.mT @ gU, Vh @ gVh.mT, gU, gVh, values_visible=visible)
        parts[visible] = (auto_difference_part(ctx), exact_sum_part(ctx))
    assert torch.equal(parts[True][0], parts[False][0])
    assert torch.equal(parts[True][1], parts[False][1])
