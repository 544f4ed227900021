"""``svdguard grad`` end to end: written gradients against closed forms, verdicts, views, batches.

References are independent of svdguard: numpy float64 SVDs in closed-form gradients
(polar: U X Vᵀ with X_ij = (B_ij − B_ji)/(s_i + s_j), B = Uᵀ W V, plus the rectangular
term; reconstruct: W), and float64 central differences.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    central_difference_grad,
    exactness_tolerance,
    haar_unitary,
    random_matrix,
    relative_error,
    with_singular_values,
)
from typer.testing import CliRunner

from svdguard.app.probes import make_probe
from svdguard.cli import exit_codes
from svdguard.cli.app import app

runner = CliRunner()
DTYPES = (torch.float32, torch.float64)


def invoke(*args: str | Path):
    result = runner.invoke(app, ["grad", *map(str, args)])
    assert "Traceback" not in result.output, result.output
    return result


def save(path: Path, tensor: torch.Tensor) -> Path:
    np.save(path, tensor.numpy())
    return path


def polar_gradient(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """d⟨W, U Vᵀ⟩/dA of a full-rank real matrix (numpy float64, closed form).

    U Vᵀ is smooth where A has full rank: dP = U X Vᵀ with X_ij = (B_ij − B_ji)/(s_i + s_j)
    on the k×k block, B = Uᵀ W V, plus (I − UUᵀ) W V S⁻¹ Vᵀ (tall) or U S⁻¹ Uᵀ W (I − VVᵀ)
    (wide). Within a tie the expression does not depend on the basis.
    """
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    v = vt.T
    b = u.T @ w @ v
    x = (b - b.T) / (s[:, None] + s[None, :])
    grad = u @ x @ vt
    m, n = a.shape
    if m > n:
        grad += (np.eye(m) - u @ u.T) @ w @ v @ np.diag(1 / s) @ vt
    elif n > m:
        grad += u @ np.diag(1 / s) @ u.T @ w @ (np.eye(n) - v @ vt)
    return grad


def weights(shape: tuple[int, ...], loss: str = "polar") -> np.ndarray:
    """The probe's W in float64 (drawn in float64 whatever the dtype: docs/cli.md)."""
    return make_probe(loss, shape).weights[0].numpy()


def orthogonal(n: int) -> torch.Tensor:
    return haar_unitary(n, dtype=torch.float64, generator=torch.Generator().manual_seed(5))


POLAR_CASES = {
    "identity": lambda: torch.eye(4, dtype=torch.float64),
    "orthogonal": lambda: orthogonal(4),
    "tied square": lambda: with_singular_values([3.0, 2.0, 2.0, 1.0], 4, 4, seed=9),
    "tied tall": lambda: with_singular_values([3.0, 2.0, 2.0, 1.0], 6, 4, seed=3),
    "tied wide": lambda: with_singular_values([2.0, 2.0, 0.5], 3, 5, seed=4),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POLAR_CASES)
def test_eps_writes_the_polar_gradient_at_ties(tmp_path: Path, case: str, dtype) -> None:
    """`grad --eps 1e-6 A.npy -o g.npy`: the derivative, written, and exit 0 saying so."""
    a = POLAR_CASES[case]().to(dtype)
    out = tmp_path / "g.npy"
    result = invoke("--eps", "1e-6", save(tmp_path / "a.npy", a), "-o", out)
    assert result.exit_code == exit_codes.OK, result.output
    expected = polar_gradient(a.double().numpy(), weights(tuple(a.shape)))
    written = np.load(out)
    assert written.dtype == a.numpy().dtype
    assert relative_error(torch.from_numpy(written).double(), torch.from_numpy(expected)) <= (
        exactness_tolerance(dtype)
    )
    assert "method clamp (eps 1e-06)" in result.stdout and "✓" in result.stdout
    assert "exit 0: the clamp gradient is the derivative of the loss" in result.stderr
    if case == "identity":  # (W − Wᵀ)/2, the closed form at I
        w = weights((4, 4))
        assert np.allclose(expected, (w - w.T) / 2, rtol=0, atol=exactness_tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["identity", "tied tall", "tied wide"])
def test_upstream_saved_from_torch_factors_gives_the_polar_gradient(
    tmp_path: Path, case: str, dtype
) -> None:
    """Upstream gradients of ⟨W, U Vᴴ⟩ taken through torch's own factors; the tie is `?`."""
    a = POLAR_CASES[case]().to(dtype)
    w = torch.from_numpy(weights(tuple(a.shape))).to(dtype)
    u, s, vh = torch.linalg.svd(a.clone().requires_grad_(True), full_matrices=False)
    g_u, g_vh = torch.autograd.grad((w * (u @ vh)).sum(), (u, vh))
    upstream = tmp_path / "up.npz"
    np.savez(upstream, U=g_u.numpy(), Vh=g_vh.numpy())
    out = tmp_path / "g.npy"
    source = save(tmp_path / "a.npy", a)
    result = invoke("--eps", "1e-6", source, "--upstream", upstream, "-o", out)
    assert result.exit_code == exit_codes.OK, result.output
    expected = polar_gradient(a.double().numpy(), w.double().numpy())
    assert relative_error(torch.from_numpy(np.load(out)).double(), torch.from_numpy(expected)) <= (
        exactness_tolerance(dtype)
    )
    # The loss behind saved gradients is unknown: at a tie this is the derivative only for
    # losses of U Vᴴ and S, and the report says so rather than claiming ✓.
    assert "? " in result.stdout and "unverified tie" in result.stdout
    assert "exit 0: the clamp gradient is finite (1 unverified)" in result.stderr
    failed = invoke("--eps", "1e-6", source, "--upstream", upstream, "--fail-on", "unverified")
    assert failed.exit_code == exit_codes.FINDINGS


def test_method_seed_exists_and_is_reported_biased_at_the_identity(tmp_path: Path) -> None:
    """seed clamps the sum part too: at I it returns 0 where the derivative is (W − Wᵀ)/2."""
    source = save(tmp_path / "i.npy", torch.eye(4, dtype=torch.float64))
    out = tmp_path / "g.npy"
    result = invoke(source, "--method", "seed", "--eps", "1e-6", "-o", out, "--format", "json")
    data = json.loads(result.stdout)
    (element,) = data["elements"]
    w = weights((4, 4))
    error = relative_error(torch.from_numpy(np.load(out)), torch.from_numpy((w - w.T) / 2))
    assert error > exactness_tolerance(torch.float64)  # really not the derivative
    assert element["stabilized"]["verdict"]["kind"] == "biased"
    assert result.exit_code == exit_codes.OK  # biased is not in the default --fail-on
    assert invoke(source, "--method", "seed", "--fail-on", "biased").exit_code == 1


@pytest.mark.parametrize("dtype", DTYPES)
def test_rank_deficient_polar_has_no_derivative(tmp_path: Path, dtype) -> None:
    """8×5 of rank 2, polar probe: U Vᵀ depends on the null-space vectors; ∄, exit 1."""
    a = (random_matrix(8, 2, seed=0) @ random_matrix(2, 5, seed=1)).to(dtype)
    source = save(tmp_path / "r.npy", a)
    result = invoke(source)
    assert result.exit_code == exit_codes.FINDINGS, result.output
    assert "∄" in result.stdout and "undefined s3..s5 null space" in result.stdout
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("│")]
    assert "✓" not in row and row.count("∄") == 2  # neither torch's nor auto's is a derivative
    assert "zero singular values s3..s5" in result.stderr
    assert "--fail-on undefined: the loss has no derivative" in result.stderr
    kept = invoke(source, "--fail-on", "none")
    assert kept.exit_code == exit_codes.OK
    assert "exit 0: the auto gradient is finite (1 undefined)" in kept.stderr

    # Independent check that no derivative exists: central differences do not converge.
    a64 = a.double()
    w = torch.from_numpy(weights((8, 5)))

    def polar_loss(x: torch.Tensor) -> torch.Tensor:
        u, _, vh = torch.linalg.svd(x, full_matrices=False)
        return (w * (u @ vh)).sum()

    coarse = central_difference_grad(polar_loss, a64, step=1e-3)
    fine = central_difference_grad(polar_loss, a64, step=1e-5)
    assert relative_error(fine, coarse) > 1.0  # a derivative would agree to O(h²)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rank_deficient_reconstruct_is_the_derivative(tmp_path: Path, dtype) -> None:
    """⟨W, U diag(S) Vᵀ⟩ = ⟨W, A⟩ is smooth everywhere: gradient W, verdict ✓."""
    a = (random_matrix(8, 2, seed=0) @ random_matrix(2, 5, seed=1)).to(dtype)
    out = tmp_path / "g.npy"
    result = invoke(save(tmp_path / "r.npy", a), "--loss", "reconstruct", "-o", out)
    assert result.exit_code == exit_codes.OK, result.output
    assert "derivative" in result.stdout
    w = torch.from_numpy(weights((8, 5), "reconstruct"))
    assert relative_error(torch.from_numpy(np.load(out)).double(), w) <= exactness_tolerance(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "options",
    [
        ("--method", "lorentz", "--eps", "1"),
        ("--method", "taylor", "--degree", "1"),
        ("--method", "clamp", "--eps", "0.5"),
    ],
)
def test_a_stabilizer_that_changes_the_result_is_biased(tmp_path: Path, options, dtype) -> None:
    """reconstruct has the closed-form gradient W; the reported bias is the measured error."""
    a = with_singular_values([3.0, 2.7, 2.5, 1.0], 4, 4, seed=2).to(dtype)
    source = save(tmp_path / "a.npy", a)
    out = tmp_path / "g.npy"
    result = invoke(source, "--loss", "reconstruct", *options, "-o", out, "--format", "json")
    assert result.exit_code == exit_codes.OK, result.output
    data = json.loads(result.stdout)
    (element,) = data["elements"]
    assert element["stabilized"]["verdict"]["kind"] == "biased"
    assert element["acting_pairs"] > 0
    w = weights((4, 4), "reconstruct")
    written = np.load(out).astype(np.float64)
    measured = np.linalg.norm(written - w) / np.linalg.norm(w)
    assert measured > exactness_tolerance(dtype)
    assert element["bias"] == pytest.approx(measured, rel=exactness_tolerance(dtype))
    failed = invoke(source, "--loss", "reconstruct", *options, "--fail-on", "biased")
    assert failed.exit_code == exit_codes.FINDINGS
    assert "≈" in failed.stdout and "--fail-on biased" in failed.stderr


@pytest.mark.parametrize("dtype", DTYPES)
def test_lorentz_reports_every_pair_it_changed_and_polar_stays_exact(tmp_path, dtype) -> None:
    """lorentz (eps 1) changes all 6 kernel entries of a 4×4, yet on a square matrix the polar
    gradient lives in the sum part, which lorentz leaves exact: ✓ and the closed form."""
    a = with_singular_values([3.0, 2.7, 2.5, 1.0], 4, 4, seed=2).to(dtype)
    out = tmp_path / "g.npy"
    result = invoke(save(tmp_path / "a.npy", a), "--method", "lorentz", "--eps", "1", "-o", out)
    assert result.exit_code == exit_codes.OK, result.output
    row = next(line for line in result.stdout.splitlines() if "derivative" in line)
    assert "│      6 │" in row  # acting: every pair i < j, not 0
    expected = polar_gradient(a.double().numpy(), weights((4, 4)))
    assert relative_error(torch.from_numpy(np.load(out)).double(), torch.from_numpy(expected)) <= (
        exactness_tolerance(dtype)
    )


def test_trivialize_zeroing_is_biased(tmp_path: Path) -> None:
    a = with_singular_values([3.0, 2.0, 1.0], 3, 3, seed=1)
    result = invoke(save(tmp_path / "a.npy", a), "--method", "trivialize", "--max-cond", "2")
    assert "biased zeroed" in result.stdout
    assert "trivialize set the gradient to zero: κ₂ = 3 is above max_cond = 2" in result.stderr


def test_native_nan_names_the_tie_not_the_input(tmp_path: Path) -> None:
    result = invoke(
        save(tmp_path / "i.npy", torch.eye(4, dtype=torch.float64)), "--method", "native"
    )
    assert result.exit_code == exit_codes.FINDINGS
    assert "s1..s4 are tied and torch's backward divides by s_j² − s_i² = 0" in result.stderr
    assert "NaN/Inf input" not in result.output and "overflow" not in result.output


def test_native_nan_at_a_zero_singular_value_names_it(tmp_path: Path) -> None:
    a = torch.zeros(4, 3, dtype=torch.float64)
    a[0, 0], a[1, 1] = 2.0, 1.0  # s = (2, 1, 0): torch divides by s_3 = 0 for a tall matrix
    result = invoke(save(tmp_path / "z.npy", a), "--method", "native", "--loss", "reconstruct")
    assert result.exit_code == exit_codes.FINDINGS
    assert "singular values s3 are zero and torch's backward divides by them" in result.stderr


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "0", "-1"])
def test_eps_must_be_positive_and_finite(tmp_path: Path, value: str) -> None:
    result = invoke(save(tmp_path / "i.npy", torch.eye(3)), "--eps", value)
    assert result.exit_code == exit_codes.USAGE
    assert "Invalid value for '--eps'" in result.output
    assert "positive finite" in result.output


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_conv_kernel_is_read_as_inspect_reads_it(tmp_path: Path, dtype) -> None:
    """8×4×3×3 is the 8×36 matrix shape[0] × ∏shape[1:]; the gradient keeps the stored shape."""
    kernel = random_matrix(8, 4, 3, 3, seed=6).to(dtype)
    out = tmp_path / "g.npy"
    result = invoke(save(tmp_path / "k.npy", kernel), "-o", out)
    assert result.exit_code == exit_codes.OK, result.output
    assert "k.npy: 8×36 ← 8×4×3×3" in result.stdout
    assert "matrix" not in result.stdout.splitlines()[2]  # one matrix, not a batch of 32
    written = np.load(out)
    assert written.shape == (8, 4, 3, 3)
    matrix = kernel.double().numpy().reshape(8, 36)
    expected = polar_gradient(matrix, weights((8, 36))).reshape(8, 4, 3, 3)
    assert relative_error(torch.from_numpy(written).double(), torch.from_numpy(expected)) <= (
        exactness_tolerance(dtype)
    )
    assert f"wrote dL/dA (8×4×3×3 {str(dtype)[6:]})" in result.stderr
    data = json.loads(invoke(tmp_path / "k.npy", "--format", "json").stdout)
    assert data["stored_shape"] == [8, 4, 3, 3] and data["shape"] == [8, 36]
    assert data["view"] == "8×36 ← 8×4×3×3" and data["batched"] is False


def test_batch_treats_leading_dims_as_a_batch(tmp_path: Path) -> None:
    a = random_matrix(2, 3, 4, 3, seed=7)
    out = tmp_path / "g.npy"
    result = invoke(save(tmp_path / "b.npy", a), "--batch", "-o", out)
    assert result.exit_code == exit_codes.OK, result.output
    assert "4×3, batch 2×3" in result.stdout and "all 6" in result.stdout
    w = weights((2, 3, 4, 3))
    written = np.load(out)
    for i in range(2):
        for j in range(3):
            expected = polar_gradient(a[i, j].numpy(), w[i, j])
            assert relative_error(torch.from_numpy(written[i, j]), torch.from_numpy(expected)) <= (
                exactness_tolerance(torch.float64)
            )


def test_upstream_shapes_follow_the_matrix_view(tmp_path: Path) -> None:
    kernel = random_matrix(4, 2, 3, seed=2)
    source = save(tmp_path / "k.npy", kernel)
    good = tmp_path / "up.npz"
    np.savez(good, S=np.ones(4))
    assert invoke(source, "--upstream", good).exit_code == exit_codes.OK  # 4×6: k = 4
    bad = tmp_path / "bad.npz"
    np.savez(bad, U=np.ones((4, 2, 2)))  # the batch view's U, not the matrix view's
    result = invoke(source, "--upstream", bad)
    assert result.exit_code == exit_codes.USAGE
    assert "expected (4, 4)" in result.stderr


def test_a_large_batch_shows_totals_and_the_worst_rows(tmp_path: Path) -> None:
    a = random_matrix(300, 3, 3, seed=3)
    a[17] = torch.eye(3, dtype=torch.float64)  # tied: torch ✗
    a[250] = with_singular_values([2.0, 1.0, 1.0], 3, 3, seed=1)
    source = save(tmp_path / "many.npy", a)
    result = invoke(source, "--batch", "--top", "5", "--loss", "reconstruct")
    lines = result.stdout.splitlines()
    assert len(lines) < 5 + 15  # title, header, 5 rows, "more", totals, legend
    rows = [line for line in lines if line.startswith("│ [")]
    assert len(rows) == 5
    assert rows[0].startswith("│ [17]") or rows[0].startswith("│ [250]")  # worst first
    assert {rows[0].split()[1], rows[1].split()[1]} == {"[17]", "[250]"}
    assert "… 295 more" in result.stdout and "all 300" in result.stdout
    assert "2 biased, 298 derivative" in result.stdout
    assert len(result.stderr.splitlines()) < 15  # the talk is bounded too
    data = json.loads(invoke(source, "--batch", "--loss", "reconstruct", "--format", "json").stdout)
    assert len(data["elements"]) == 300  # JSON has every row
    assert data["totals"]["verdicts"]["biased"] == 2


def test_json_carries_what_the_table_and_the_notes_say(tmp_path: Path) -> None:
    a = with_singular_values([3.0, 2.0, 2.0, 1.0], 4, 4, seed=9)
    source = save(tmp_path / "t.npy", a)
    result = invoke(source, "--loss", "vectors", "--format", "json")
    data = json.loads(result.stdout)
    assert data["exit_code"] == result.exit_code == exit_codes.FINDINGS
    assert data["notes"] and data["notes"] == result.stderr.splitlines()
    assert data["reasons"] == ["--fail-on undefined: the loss has no derivative"]
    (element,) = data["elements"]
    assert element["stabilized"]["verdict"]["kind"] == "undefined"
    assert element["stabilized"]["verdict"]["where"] == "s2..s3 basis"
    (violation,) = element["gauge_violations"]
    assert violation["labels"] == "s2..s3" and violation["indices"] == [1, 2]
    assert element["tied_values"] == "s2..s3" and element["acting_values"] == "s2..s3"
