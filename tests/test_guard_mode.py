"""svdguard.guard: what it reaches, that torch's forward is kept bit for bit, that leaving
restores torch, nesting, threads, torch.func, and the call-site report."""

from __future__ import annotations

import inspect
import sys
import threading
from pathlib import Path

import pytest
import torch
from torch.linalg import svd as svd_bound_at_import  # reached although bound before the guard

from svdguard.errors import InputError, SvdguardWarning
from svdguard.guard_mode import CallSite, GuardReport, guard
from svdguard.linalg.svd import svd as svdguard_svd
from tests.helpers import exactness_tolerance, random_matrix, relative_error

SCRIPTS = Path(__file__).parent / "scripts"


def polar_weights(n: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, n, dtype=torch.float64, generator=g)


def polar_gradient_at_identity(decompose) -> torch.Tensor:
    """∂⟨W, U Vᴴ⟩/∂A at A = I via ``decompose`` (returns U and Vh); closed form (W − Wᵀ)/2."""
    A = torch.eye(3, dtype=torch.float64, requires_grad=True)
    U, Vh = decompose(A)
    (g,) = torch.autograd.grad((polar_weights() * (U @ Vh)).sum(), A)
    return g


def closed_form_polar_gradient() -> torch.Tensor:
    W = polar_weights()
    return (W - W.mT) / 2


ROUTES = {
    "torch.linalg.svd": lambda a: (lambda u, s, vh: (u, vh))(*torch.linalg.svd(a)),
    "bound at import": lambda a: (lambda u, s, vh: (u, vh))(*svd_bound_at_import(a, False)),
    "torch.svd": lambda a: (lambda u, s, v: (u, v.mT))(*torch.svd(a)),
    "Tensor.svd": lambda a: (lambda u, s, v: (u, v.mT))(*a.svd(some=False)),
}


@pytest.mark.parametrize("route", ROUTES)
def test_each_svd_entry_point_is_routed(route):
    with guard():
        got = polar_gradient_at_identity(ROUTES[route])
    assert relative_error(got, closed_form_polar_gradient()) <= exactness_tolerance(torch.float64)


@pytest.mark.parametrize("route", ROUTES)
def test_outside_the_guard_torch_is_untouched(route):
    got = polar_gradient_at_identity(ROUTES[route])
    assert not torch.isfinite(got).all()  # torch's own backward at a tie


def test_eigh_is_routed():
    A = torch.eye(3, dtype=torch.float64, requires_grad=True)
    with guard():
        lam, V = torch.linalg.eigh(A)
    (g,) = torch.autograd.grad((V @ torch.diag_embed(lam**2) @ V.mT).diagonal().sum(), A)
    assert relative_error(g, 2 * torch.eye(3, dtype=torch.float64)) <= exactness_tolerance(
        torch.float64
    )


def test_values_only_functions_are_routed_with_a_guarded_second_derivative():
    # svdvals/eigvalsh: their first derivative is finite in torch too; the guard gives them
    # svdguard's decompositions, whose nodes carry the guarded backward.
    A = torch.eye(3, dtype=torch.float64, requires_grad=True)
    with guard():
        s = torch.linalg.svdvals(A)
        lam = torch.linalg.eigvalsh(A)
    assert "SVDFunction" in type(s.grad_fn).__name__
    assert "EighFunction" in type(lam.grad_fn).__name__
    torch.autograd.grad(s.sum() + lam.sum(), A)


def test_svd_lowrank_is_reached():
    A = random_matrix(6, 5).requires_grad_(True)
    with guard(report=True) as g:
        torch.svd_lowrank(A, q=2)
        line = inspect.currentframe().f_lineno - 1
        torch.pca_lowrank(A, q=2)
    sites = {(s.file, s.line, s.function) for s in g.report().sites}
    assert (__file__, line, "torch.linalg.svd") in sites
    assert (__file__, line + 2, "torch.linalg.svd") in sites  # pca_lowrank, two lines down


# --- forward bitwise ---------------------------------------------------------------------


def functions_under_test():
    return {
        "linalg.svd": lambda a: torch.linalg.svd(a),
        "linalg.svd thin": lambda a: torch.linalg.svd(a, full_matrices=False),
        "svd": lambda a: torch.svd(a),
        "svd full": lambda a: torch.svd(a, some=False),
        "Tensor.svd": lambda a: a.svd(),
        "svdvals": lambda a: (torch.linalg.svdvals(a),),
        "eigh": lambda a: torch.linalg.eigh(a.mH @ a),
        "eigh U": lambda a: torch.linalg.eigh(a.mH @ a, UPLO="U"),
        "eigvalsh": lambda a: (torch.linalg.eigvalsh(a.mH @ a),),
    }


@pytest.mark.parametrize("name", functions_under_test())
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64, torch.complex128))
@pytest.mark.parametrize("requires_grad", (False, True))
def test_forward_is_torch_bitwise(name, dtype, requires_grad):
    f = functions_under_test()[name]
    A = random_matrix(2, 5, 4, dtype=dtype).requires_grad_(requires_grad)
    expected = f(A)
    with guard():
        got = f(A)
    assert type(got) is type(expected)
    assert all(torch.equal(x, y) for x, y in zip(got, expected, strict=True))


def test_calls_without_gradient_go_to_torch():
    A = torch.eye(3, requires_grad=True)
    with guard():
        assert torch.linalg.svd(A.detach()).U.grad_fn is None
        with torch.no_grad():
            assert torch.linalg.eigh(A).eigenvectors.grad_fn is None
        out = torch.empty(3)
        torch.linalg.svdvals(A.detach(), out=out)
        assert torch.equal(out, torch.ones(3))


@pytest.mark.parametrize(
    "call, A",
    [
        (torch.linalg.svd, torch.eye(3, dtype=torch.float16)),
        (torch.linalg.svd, torch.ones(3)),
        (torch.linalg.eigh, torch.ones(3, 4)),
        (torch.linalg.eigvalsh, torch.ones(3, 4)),
        (lambda a: torch.linalg.eigh(a, UPLO="X"), torch.eye(3)),
    ],
)
def test_inputs_torch_rejects_keep_torchs_own_error(call, A):
    A = A.requires_grad_(True)
    with pytest.raises(RuntimeError) as plain:
        call(A)
    with guard(), pytest.raises(RuntimeError) as guarded:
        call(A)
    assert type(guarded.value) is type(plain.value)
    assert str(guarded.value) == str(plain.value)


# --- scope ----------------------------------------------------------------------------


def test_leaving_restores_torch_also_on_exceptions():
    with pytest.raises(ZeroDivisionError), guard():
        _ = 1 / 0
    assert not torch.isfinite(polar_gradient_at_identity(ROUTES["torch.linalg.svd"])).all()


def test_torch_results_outside_are_bitwise_unchanged_by_a_guard_having_run():
    A = random_matrix(5, 4)

    def forward_and_backward():
        x = A.clone().requires_grad_(True)
        U, S, Vh = torch.linalg.svd(x, full_matrices=False)
        lam, V = torch.linalg.eigh(x.mT @ x)
        ((U @ Vh).sum() + (V.abs() * lam).sum() + S.sum()).backward()
        return U, S, Vh, lam, V, x.grad

    before = forward_and_backward()
    with guard(report=True):
        forward_and_backward()
    after = forward_and_backward()
    assert all(torch.equal(x, y) for x, y in zip(before, after, strict=True))


def test_backward_after_leaving_the_block_is_still_guarded():
    A = torch.eye(3, dtype=torch.float64, requires_grad=True)
    with guard():
        U, _, Vh = torch.linalg.svd(A)
    (g,) = torch.autograd.grad((polar_weights() * (U @ Vh)).sum(), A)
    assert relative_error(g, closed_form_polar_gradient()) <= exactness_tolerance(torch.float64)


def test_decorator():
    @guard()
    def gradient() -> torch.Tensor:
        return polar_gradient_at_identity(ROUTES["torch.svd"])

    assert torch.isfinite(gradient()).all()
    assert not torch.isfinite(polar_gradient_at_identity(ROUTES["torch.svd"])).all()


def test_nested_guards_the_innermost_decides_and_only_it_counts():
    with guard(report=True) as outer:
        with guard(method="native", report=True) as inner:
            native = polar_gradient_at_identity(ROUTES["torch.linalg.svd"])
        guarded = polar_gradient_at_identity(ROUTES["torch.linalg.svd"])
    assert not torch.isfinite(native).all()
    assert torch.isfinite(guarded).all()
    assert inner.report().calls == 1 and outer.report().calls == 1


def test_the_guard_is_thread_local():
    seen = {}

    def worker():
        seen["grad"] = polar_gradient_at_identity(ROUTES["torch.linalg.svd"])

    with guard():
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
        here = polar_gradient_at_identity(ROUTES["torch.linalg.svd"])
    assert not torch.isfinite(seen["grad"]).all()
    assert torch.isfinite(here).all()


def test_torch_func_vmap_of_grad_inside_the_guard():
    W = polar_weights()

    def loss(a):
        U, _, Vh = torch.linalg.svd(a)
        return (W * (U @ Vh)).sum()

    batch = torch.stack([torch.eye(3, dtype=torch.float64), random_matrix(3, 3)])
    with guard():
        got = torch.func.vmap(torch.func.grad(loss))(batch)
    for i in range(2):
        a = batch[i].clone().requires_grad_(True)
        U, _, Vh = svdguard_svd(a, full_matrices=True)
        (expected,) = torch.autograd.grad((W * (U @ Vh)).sum(), a)
        assert relative_error(got[i], expected) <= exactness_tolerance(torch.float64)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_forward_mode_inside_the_guard_is_torchs():
    A = random_matrix(4, 3)
    T = random_matrix(4, 3, seed=1)

    def f(a):
        return torch.linalg.svd(a, full_matrices=False).S

    expected = torch.func.jvp(f, (A,), (T,))
    with guard():
        got = torch.func.jvp(f, (A,), (T,))
    assert all(torch.equal(x, y) for x, y in zip(got, expected, strict=True))


def test_options_are_validated_when_the_guard_is_made():
    with pytest.raises(InputError, match="method"):
        guard(method="bogus")
    with pytest.raises(InputError, match="method="):
        guard(eigh_method="taylor")
    with pytest.raises(InputError, match="eps"):
        guard(method="auto", eps=1e-3)


def test_gauge_check_reaches_svd_and_eigh():
    A = torch.eye(3, dtype=torch.float64, requires_grad=True)
    with guard(gauge_check=True):
        U = torch.linalg.svd(A).U
        V = torch.linalg.eigh(A).eigenvectors
    basis_dependent = torch.arange(3.0, dtype=torch.float64)
    with pytest.warns(SvdguardWarning, match="svdguard.svd gauge check"):
        (U[:, 0] * basis_dependent).sum().backward()
    with pytest.warns(SvdguardWarning, match="svdguard.eigh gauge check"):
        (V[:, 0] * basis_dependent).sum().backward()


def test_svd_options_reach_svdguard():
    A = torch.eye(3, dtype=torch.float64, requires_grad=True)
    with guard(method="native"):
        U, _, Vh = torch.linalg.svd(A)
    assert type(U.grad_fn).__name__ == "LinalgSvdBackward0"


# --- the report -----------------------------------------------------------------------


def test_report_counts_calls_backwards_and_ties_per_site():
    A = torch.eye(3, dtype=torch.float64, requires_grad=True)
    B = random_matrix(4, 3).requires_grad_(True)
    with guard(report=True) as g:
        for i in range(4):
            U, S, Vh = torch.linalg.svd(A)  # tie, vectors used: torch would be NaN
            line_tie = inspect.currentframe().f_lineno - 1
            # the last time only the values are used: no tie problem there
            (S.sum() if i == 3 else (U @ Vh).sum()).backward()
            u, s, vh = torch.linalg.svd(B, full_matrices=False)  # separated
            line_fine = inspect.currentframe().f_lineno - 1
            if i < 3:
                (u @ vh).sum().backward()
    report = g.report()
    by_line = {site.line: site for site in report.sites}
    assert by_line[line_tie] == CallSite(__file__, line_tie, "torch.linalg.svd", 4, 4, 3, 3)
    assert by_line[line_fine] == CallSite(__file__, line_fine, "torch.linalg.svd", 4, 3, 0, 0)
    assert report.calls == 8 and report.tie_backwards == 3 and report.torch_nonfinite == 3
    as_dict = report.to_dict()
    assert as_dict["method"] == "auto" and len(as_dict["sites"]) == 2
    assert {"file", "line", "function", "calls"} <= set(as_dict["sites"][0])


def test_report_counts_rectangular_zero_singular_values():
    # A 4×3 matrix of rank 2: torch's tall term divides by s_3 = 0.
    A = torch.zeros(4, 3, dtype=torch.float64)
    A[0, 0], A[1, 1] = 2.0, 1.0
    A.requires_grad_(True)
    with guard(report=True) as g:
        U, S, Vh = torch.linalg.svd(A, full_matrices=False)
        (U * polar_weights(4)[:, :3]).sum().backward()
    (site,) = g.report().sites
    assert (site.tie_backwards, site.torch_nonfinite) == (1, 1)
    assert torch.isfinite(A.grad).all()


def test_report_needs_report_true():
    with pytest.raises(InputError, match="report=True"):
        guard().report()


def test_report_is_plain_data():
    report = GuardReport(method="auto", sites=())
    assert report.to_dict() == {
        "method": "auto",
        "calls": 0,
        "tie_backwards": 0,
        "torch_nonfinite": 0,
        "sites": [],
    }


def test_a_module_that_bound_svd_at_import_is_reached_and_its_line_reported(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    sys.modules.pop("kabsch_align", None)
    import kabsch_align  # noqa: PLC0415 - imported from the scripts folder on purpose

    source = (SCRIPTS / "kabsch_align.py").read_text().splitlines()
    line = next(i for i, text in enumerate(source, 1) if "svd(" in text and "import" not in text)
    octahedron = torch.cat([torch.eye(3), -torch.eye(3)]).double().requires_grad_(True)
    target = 1.5 * octahedron.detach()
    with guard(report=True) as g:
        kabsch_residual = kabsch_align.kabsch_residual(octahedron, target)
        kabsch_residual.pow(2).sum().backward()
    assert torch.isfinite(octahedron.grad).all()
    (site,) = g.report().sites
    assert Path(site.file).name == "kabsch_align.py" and site.line == line


def test_the_report_keeps_no_output_alive():
    # The counting hook lives on the outputs' graph; it must not hold the outputs
    # themselves (a cycle through C++ autograd nodes that the collector cannot break).
    import gc
    import weakref

    refs = []
    enabled = gc.isenabled()
    gc.disable()
    try:
        with guard(report=True):
            for _ in range(2):
                A = random_matrix(5, 4).requires_grad_(True)
                U, S, Vh = torch.linalg.svd(A, full_matrices=False)
                (U @ Vh).sum().backward()
                lam, V = torch.linalg.eigh(A.mT @ A)
                refs += [weakref.ref(t) for t in (U, S, Vh, lam, V)]
                del A, U, S, Vh, lam, V
        assert all(ref() is None for ref in refs)
    finally:
        if enabled:
            gc.enable()
