"""``svdguard grad`` through typer's CliRunner: written gradients, table/JSON, every exit code."""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from corpus.make_corpus import MARKER_FILES, CorpusCase, make_corpus
from helpers import central_difference_grad, random_matrix, relative_error, with_singular_values
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import svdguard
from svdguard.app.probes import factor_shapes, make_probe
from svdguard.cli import exit_codes
from svdguard.cli.app import app
from svdguard.tolerances import machine_eps

runner = CliRunner()


def invoke(*args: str | Path, env: dict[str, str] | None = None):
    result = runner.invoke(app, ["grad", *map(str, args)], env=env)
    assert "Traceback" not in result.output, result.output
    return result


def library_gradient(
    a: torch.Tensor, loss: str = "polar", seed: int = 0, **options
) -> torch.Tensor:
    """The same probe through svdguard.svd and torch.autograd.grad: the bitwise reference."""
    leaf = a.detach().clone().requires_grad_(True)
    probe = make_probe(loss, a.shape, seed=seed, dtype=svdguard.svd(leaf).S.dtype)
    (grad,) = torch.autograd.grad(probe(*svdguard.svd(leaf, False, **options)), leaf)
    return grad


def save(path: Path, tensor: torch.Tensor) -> Path:
    """A .npy file, or tensor "w" of an .npz/.safetensors file."""
    if path.suffix == ".npy":
        np.save(path, tensor.numpy())
    elif path.suffix == ".npz":
        np.savez(path, w=tensor.numpy())
    else:
        save_file({"w": tensor.contiguous()}, str(path))
    return path


def load(path: Path) -> torch.Tensor:
    if path.suffix == ".npy":
        return torch.from_numpy(np.load(path))
    if path.suffix == ".npz":
        with np.load(path) as data:
            return torch.from_numpy(data["w"])
    return load_file(str(path))["w"]


@pytest.fixture
def identity(tmp_path: Path) -> Path:
    return save(tmp_path / "identity.npy", torch.eye(4, dtype=torch.float64))


@pytest.fixture
def tied(tmp_path: Path) -> Path:
    return save(tmp_path / "tied.npy", with_singular_values([3.0, 2.0, 2.0, 1.0], 4, 4, seed=9))


def test_eps_reproduces_clamp_and_reports_native_nan(identity: Path, tmp_path: Path):
    out = tmp_path / "grad.npy"
    result = invoke("--eps", "1e-6", identity, "-o", out)
    assert result.exit_code == exit_codes.OK, result.output
    expected = library_gradient(torch.eye(4, dtype=torch.float64), method="clamp", eps=1e-6)
    assert torch.equal(load(out), expected)
    assert "method clamp (eps 1e-06)" in result.stdout
    row = next(line for line in result.stdout.splitlines() if "✗" in line or "✓" in line)
    assert "✗ NaN" in row and "✓" in row  # torch's gradient NaN, the clamp one finite
    assert "torch's gradient is not finite" in result.stderr
    assert "exit 0: the clamp gradient is the derivative of the loss" in result.stderr
    assert f"wrote dL/dA (4×4 float64) to {out}" in result.stderr


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".safetensors"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_format_round_trips_shape_dtype_and_values(tmp_path: Path, suffix: str, dtype):
    a = random_matrix(2, 4, 3, dtype=dtype, seed=4)
    a[1] = torch.eye(4, 3, dtype=dtype)  # tied singular values in one batch element
    source = save(tmp_path / f"a{suffix}", a)
    out = tmp_path / f"g{suffix}"
    key = [] if suffix == ".npy" else ["--key", "w"]
    result = invoke(source, *key, "--batch", "--loss", "reconstruct", "--seed", "3", "-o", out)
    assert result.exit_code == exit_codes.OK, result.output
    written = load(out)
    assert written.shape == a.shape and written.dtype == dtype
    assert torch.equal(written, library_gradient(a, "reconstruct", seed=3))
    assert "all 2" in result.stdout  # a batch gets a totals row


def test_bfloat16_safetensors_gives_a_bfloat16_gradient(tmp_path: Path):
    a = with_singular_values([3.0, 2.0, 1.0], 3, 3, seed=1).to(torch.bfloat16)
    source = save(tmp_path / "a.safetensors", a)
    out = tmp_path / "g.safetensors"
    assert invoke(source, "-o", out).exit_code == exit_codes.OK
    written = load(out)
    assert written.dtype == torch.bfloat16
    assert torch.equal(written, library_gradient(a))


def test_upstream_gradients_are_backpropagated(tmp_path: Path):
    a = random_matrix(5, 3, seed=2)
    source = save(tmp_path / "a.npy", a)
    g = torch.Generator().manual_seed(1)
    shapes = dict(zip(("U", "S", "Vh"), factor_shapes(a.shape), strict=True))
    saved = {key: torch.randn(shapes[key], dtype=torch.float64, generator=g) for key in ("U", "Vh")}
    upstream = tmp_path / "up.npz"
    np.savez(upstream, U=saved["U"].numpy(), Vh=saved["Vh"].numpy())
    out = tmp_path / "g.npy"
    result = invoke(source, "--upstream", upstream, "-o", out, "--format", "json")
    assert result.exit_code == exit_codes.OK, result.output
    leaf = a.clone().requires_grad_(True)
    u, _, vh = svdguard.svd(leaf, False)
    (expected,) = torch.autograd.grad((u, vh), leaf, (saved["U"], saved["Vh"]))
    assert torch.allclose(load(out), expected, rtol=1e-12, atol=1e-12)
    assert json.loads(result.stdout)["objective"] == "upstream U, Vh from up.npz"


def test_json_is_the_report_with_nonfinite_numbers_as_strings(identity: Path):
    result = invoke(identity, "--format", "json")
    assert result.exit_code == exit_codes.OK
    data = json.loads(result.stdout)  # stdout holds only the data
    assert data["schema_version"] == 2 and data["method"] == "auto" and data["shape"] == [4, 4]
    (element,) = data["elements"]
    assert element["native"]["finite"] is False and element["native"]["norm"] == "NaN"
    assert element["native"]["verdict"]["kind"] == "nonfinite"
    assert element["stabilized"]["verdict"] == {"kind": "derivative", "where": "", "causes": []}
    assert element["stabilized"]["finite"] is True
    # auto at A = I: the polar probe's gradient is (W − Wᵀ)/2 (closed form).
    w = make_probe("polar", (4, 4)).weights[0]
    assert math.isclose(element["stabilized"]["norm"], float(torch.linalg.norm((w - w.T) / 2)))
    assert element["acting_pairs"] == 6 and element["acting_values"] == "s1..s4"
    assert element["gauge_invariant"] is True
    assert data["totals"]["native_nonfinite"] == 1 and data["output"] is None
    assert data["exit_code"] == 0 and data["fail_on"] == ["undefined"]
    assert data["notes"] == result.stderr.splitlines() and data["notes"]


def test_gauge_verdict_flips_between_polar_and_vectors(tied: Path):
    polar = invoke(tied, "--fail-on", "undefined")
    assert polar.exit_code == exit_codes.OK, polar.output
    assert "✓" in polar.stdout and "derivative" in polar.stdout
    vectors = invoke(tied, "--loss", "vectors")  # undefined fails by default
    assert vectors.exit_code == exit_codes.FINDINGS
    assert "undefined s2..s3 basis" in vectors.stdout  # the tie (3, 2, 2, 1), 1-based
    assert "--fail-on undefined" in vectors.stderr
    reported = invoke(tied, "--loss", "vectors", "--fail-on", "none")
    assert reported.exit_code == exit_codes.OK  # reported, not failed
    assert "exit 0: the auto gradient is finite (1 undefined)" in reported.stderr


def test_fail_on_native_nonfinite(identity: Path, tmp_path: Path):
    failed = invoke(identity, "--fail-on", "native-nonfinite")
    assert failed.exit_code == exit_codes.FINDINGS
    assert "--fail-on native-nonfinite" in failed.stderr
    fine = save(tmp_path / "fine.npy", with_singular_values([3.0, 2.0, 1.0], 3, 3))
    assert invoke(fine, "--fail-on", "native-nonfinite", "--fail-on", "undefined").exit_code == 0


def test_nonfinite_input_exits_1(tmp_path: Path):
    a = random_matrix(2, 3, 3)
    a[0, 1, 1] = math.nan
    result = invoke(save(tmp_path / "nan.npy", a), "--batch")
    assert result.exit_code == exit_codes.FINDINGS
    assert "NaN/Inf" in result.stdout
    assert "the auto gradient is not finite for 1 of 2 matrices" in result.stderr
    assert "[0]: the matrix has NaN/Inf entries" in result.stderr


def test_existing_output_needs_force_and_the_input_is_never_overwritten(identity: Path, tmp_path):
    out = tmp_path / "g.npy"
    out.write_bytes(b"keep")
    refused = invoke(identity, "-o", out)
    assert refused.exit_code == exit_codes.USAGE
    assert "exists; pass --force to overwrite" in refused.stderr
    assert out.read_bytes() == b"keep"
    assert invoke(identity, "-o", out, "--force").exit_code == exit_codes.OK
    assert torch.equal(load(out), library_gradient(torch.eye(4, dtype=torch.float64)))
    before = identity.read_bytes()
    same = invoke(identity, "-o", identity, "--force")
    assert same.exit_code == exit_codes.USAGE
    assert "refusing to overwrite the input" in same.stderr
    assert identity.read_bytes() == before


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_output_refuses_devices_and_the_upstream_file(
    identity: Path, tmp_path: Path, force: list[str]
) -> None:
    link = tmp_path / "null.npy"
    link.symlink_to(os.devnull)
    for target in (os.devnull, link):
        result = invoke(identity, "-o", target, *force)
        assert result.exit_code == exit_codes.USAGE
        assert "is not a regular file" in result.stderr and "--force" not in result.stderr
    upstream = tmp_path / "up.npz"
    np.savez(upstream, S=np.ones(4))
    before = upstream.read_bytes()
    onto_upstream = invoke(identity, "--upstream", upstream, "-o", upstream, *force)
    assert onto_upstream.exit_code == exit_codes.USAGE
    assert "refusing to overwrite the input" in onto_upstream.stderr
    assert upstream.read_bytes() == before and link.is_symlink()


def test_cli_choices_are_the_library_lists() -> None:
    from svdguard.app import probes
    from svdguard.cli import grad_cmd

    assert grad_cmd.METHODS == svdguard.METHODS
    assert grad_cmd.LOSSES == probes.LOSSES
    assert (grad_cmd.DEFAULT_LOSS, grad_cmd.DEFAULT_SEED) == (
        probes.DEFAULT_LOSS,
        probes.DEFAULT_SEED,
    )


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing file", "missing.npy"),
        ("bad key", "nope"),
        ("wrong upstream shape", r"up.npz\[U\].*expected \(4, 4\)"),
        ("eps with auto", "eps applies to"),
        ("1-D input", r"shape \(4,\) is not a matrix"),
        ("integer dtype", "int64 is not a floating dtype"),
        ("loss with upstream", "--loss and --upstream are exclusive"),
        ("bad output suffix", "cannot write '.txt'"),
    ],
)
def test_usage_and_input_errors_exit_2(tmp_path: Path, case: str, message: str):
    matrix = save(tmp_path / "m.npz", torch.eye(4, dtype=torch.float64))
    upstream = tmp_path / "up.npz"
    np.savez(upstream, U=np.zeros((4, 3)))
    cases: dict[str, list[str | Path]] = {
        "missing file": [tmp_path / "missing.npy"],
        "bad key": [matrix, "--key", "nope"],
        "wrong upstream shape": [matrix, "--upstream", upstream],
        "eps with auto": [matrix, "--method", "auto", "--eps", "1e-6"],
        "1-D input": [save(tmp_path / "v.npy", torch.ones(4))],
        "integer dtype": [save(tmp_path / "i.npy", torch.ones(3, 3, dtype=torch.int64))],
        "loss with upstream": [matrix, "--upstream", upstream, "--loss", "values"],
        "bad output suffix": [matrix, "-o", tmp_path / "g.txt"],
    }
    result = invoke(*cases[case])
    assert result.exit_code == exit_codes.USAGE, result.output
    assert result.stderr.startswith("svdguard: error: ")
    assert re.search(message, result.stderr), result.stderr
    assert result.stdout == ""


def test_unknown_option_values_are_usage_errors(identity: Path):
    assert invoke(identity, "--method", "best").exit_code == exit_codes.USAGE
    assert invoke(identity, "--fail-on", "everything").exit_code == exit_codes.USAGE


COLOR = re.compile(r"\x1b\[[0-9;]*(3[0-9]|9[0-7])[0-9;]*m")  # SGR with a foreground colour


def test_no_color_is_respected(identity: Path):
    colored = invoke(identity, env={"FORCE_COLOR": "1", "NO_COLOR": ""})
    assert COLOR.search(colored.stdout)
    plain = invoke(identity, env={"FORCE_COLOR": "1", "NO_COLOR": "1"})
    assert plain.exit_code == exit_codes.OK
    assert not COLOR.search(plain.stdout)
    assert "✗ NaN" in plain.stdout


def test_near_tie_torch_is_finite_but_wrong_and_the_written_gradient_is_right(tied: Path, tmp_path):
    """At a computed gap of ~1e-16 torch divides noise by noise; the polar factor is smooth there."""
    out = tmp_path / "g.npy"
    result = invoke(tied, "-o", out)
    assert result.exit_code == exit_codes.OK
    assert "torch's gradient is finite but biased" in result.stderr
    assert "at s2..s3 within rounding of each other" in result.stderr
    assert "exit 0: the auto gradient is the derivative of the loss" in result.stderr
    a = torch.from_numpy(np.load(tied))
    w = make_probe("polar", a.shape).weights[0]

    def polar_loss(x: torch.Tensor) -> torch.Tensor:
        u, _, vh = torch.linalg.svd(x)
        return (w * (u @ vh)).sum()

    expected = central_difference_grad(polar_loss, a)
    # Fourth-order central differences are accurate to about ε^(4/5) (tests/helpers.py).
    difference_tolerance = 1e3 * machine_eps(torch.float64) ** 0.8
    assert relative_error(load(out), expected) <= difference_tolerance
    data = json.loads(invoke(tied, "--format", "json").stdout)
    # torch's finite gradient is off by orders of magnitude more than that.
    assert data["elements"][0]["relative_difference"] > 1e6 * difference_tolerance


def test_complex_matrix_with_a_phase_dependent_probe_is_a_usage_error(tmp_path: Path):
    source = save(tmp_path / "c.npy", random_matrix(3, 3, dtype=torch.complex128, seed=1))
    assert invoke(source).exit_code == exit_codes.OK  # polar ignores the phase
    result = invoke(source, "--loss", "vectors")
    assert result.exit_code == exit_codes.USAGE
    assert "choose --loss polar, reconstruct or values" in result.stderr


with tempfile.TemporaryDirectory() as _scratch:
    CORPUS = make_corpus(_scratch)  # names and expectations, for parametrisation


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("corpus")
    make_corpus(directory)
    return directory


@pytest.mark.parametrize("case", CORPUS, ids=[case.filename for case in CORPUS])
def test_malformed_and_hostile_inputs(corpus: Path, case: CorpusCase):
    """Each corpus file: exit 2 with the file and the problem named, or 1 for the NaN matrix."""
    result = invoke(corpus / case.filename)
    if case.filename == "nan_matrix.npy":
        assert result.exit_code == exit_codes.FINDINGS
    elif case.error is not None:
        assert result.exit_code == exit_codes.USAGE, result.output
        # grad reads one file: a directory is refused as such, before looking inside.
        message = "is a directory" if (corpus / case.filename).is_dir() else case.message
        assert case.filename in result.stderr and message in result.stderr
    for marker in MARKER_FILES:
        assert not (corpus / marker).exists()


def test_piped_output_never_wraps_or_cuts_names(tmp_path: Path) -> None:
    """A pipe gets whole lines whatever the terminal width; a greppable name stays on one line."""
    name = "a" * 150 + ".npy"
    path = save(tmp_path / name, torch.eye(3, dtype=torch.float64))
    result = runner.invoke(app, ["grad", str(path)], env={"COLUMNS": None})
    assert result.exit_code == exit_codes.OK
    assert any(name in line for line in result.stdout.splitlines()), result.stdout
