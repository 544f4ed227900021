"""``svdguard repair`` through Typer's CliRunner: exit codes, JSON, messages in flag names."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from svdguard.tolerances import machine_eps

SAMPLES = Path(__file__).resolve().parents[2] / "sample_data"
CHECKPOINT = SAMPLES / "checkpoint.safetensors"


def make_app() -> typer.Typer:
    from svdguard.cli.app import app

    return app


runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(make_app(), ["repair", *args])


def test_json_report_and_exit_1_for_the_zero_matrix(tmp_path: Path) -> None:
    out = tmp_path / "out.safetensors"
    result = invoke(str(CHECKPOINT), "-o", str(out), "--skip-nonfinite", "--format", "json")
    assert result.exit_code == 1, result.output
    document = json.loads(result.stdout)
    rows = {row["key"]: row for row in document["tensors"]}
    assert rows["head.unused.weight"]["status"] == "unreachable"
    assert rows["head.unused.weight"]["cond_before"] == "Infinity"  # never a bare Infinity token
    assert rows["classifier.weight"]["status"] == "repaired"
    assert rows["classifier.weight"]["cond_before"] > 1e9
    assert rows["classifier.weight"]["cond_after"] <= rows["classifier.weight"]["max_cond"]
    assert document["counts"]["repaired"] == 5 and document["written"] is True
    assert out.is_file()


def test_exit_0_when_every_bound_is_met(tmp_path: Path) -> None:
    out = tmp_path / "out.safetensors"
    result = invoke(
        str(CHECKPOINT), "-o", str(out), "--skip-nonfinite", "--exclude", "head.unused.*"
    )
    assert result.exit_code == 0, result.output
    assert "repaired" in result.stdout and "encoder.layer2.orthogonal.weight" in result.stdout


def test_nonfinite_is_exit_2_and_nothing_written(tmp_path: Path) -> None:
    out = tmp_path / "out.safetensors"
    result = invoke(str(CHECKPOINT), "-o", str(out), "--max-cond", "100")
    assert result.exit_code == 2
    assert "head.diverged.weight" in result.stderr and "--skip-nonfinite" in result.stderr
    assert not out.exists()


def test_dry_run_prints_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out.safetensors"
    result = invoke(str(CHECKPOINT), "-o", str(out), "--dry-run", "--skip-nonfinite")
    assert result.exit_code == 1  # the zero matrix
    assert "dry run, nothing written" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_include_selects_tensors(tmp_path: Path) -> None:
    result = invoke(
        str(CHECKPOINT), "--dry-run", "--format", "json", "--include", "encoder.layer1.*"
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["tensors"]
    repaired = sorted(row["key"] for row in rows if row["status"] == "repaired")
    assert repaired == [
        "encoder.layer1.ill_conditioned.weight",
        "encoder.layer1.rank_deficient.weight",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-cond", "0.5"], "--max-cond 0.5 is below 1"),
        (["--min-gap", "2"], "--min-gap 2.0 is outside [0, 1)"),
        (["--max-cond", "2", "--min-gap", "0.05"], "--max-cond 2 and --min-gap 0.05, cannot hold"),
    ],
)
def test_bad_bounds_are_one_line_usage_errors(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = invoke(str(CHECKPOINT), "-o", str(tmp_path / "o.safetensors"), *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output


def test_existing_output_needs_force_and_inputs_never_overwritten(tmp_path: Path) -> None:
    source = tmp_path / "in.safetensors"
    shutil.copy(CHECKPOINT, source)
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"x")
    result = invoke(str(source), "-o", str(out), "--skip-nonfinite")
    assert result.exit_code == 2 and "pass --force" in result.stderr
    result = invoke(str(source), "-o", str(source), "--skip-nonfinite", "--force")
    assert result.exit_code == 2 and "is the input" in result.stderr
    assert source.read_bytes() == CHECKPOINT.read_bytes()
    result = invoke(str(source), "-o", str(out), "--skip-nonfinite", "--force")
    assert result.exit_code == 1  # written; the zero matrix stays unreachable


def test_missing_output_and_missing_input(tmp_path: Path) -> None:
    result = invoke(str(CHECKPOINT))
    assert result.exit_code == 2 and "-o/--output" in result.stderr
    result = invoke(str(tmp_path / "nope.safetensors"), "-o", str(tmp_path / "o.safetensors"))
    assert result.exit_code == 2 and "nope.safetensors" in result.stderr


def test_npy_round_trip_from_the_cli(tmp_path: Path) -> None:
    source = tmp_path / "eye.npy"
    np.save(source, np.eye(5, dtype=np.float32))
    out = tmp_path / "out.npy"
    result = invoke(str(source), "-o", str(out), "--min-gap", "0.01")
    assert result.exit_code == 0, result.output
    s = np.linalg.svd(np.load(out).astype(np.float64), compute_uv=False)
    # σ_max is kept up to float32 rounding (Weyl: ≤ (ε/2)·‖W′‖_F ≤ (ε/2)·√5); gaps as bounded.
    assert s[0] == pytest.approx(1.0, abs=math.sqrt(5) * machine_eps(torch.float32))
    assert np.diff(s).max() <= -0.01 + 5 * machine_eps(torch.float64)
