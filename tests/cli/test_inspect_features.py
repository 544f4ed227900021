"""`svdguard inspect` on checkpoints as people have them, rule control, and the views."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from helpers import haar_unitary, with_singular_values
from safetensors.torch import save_file
from typer.testing import CliRunner

import svdguard
from svdguard.cli.app import app
from svdguard.tolerances import rounding_level

SAMPLES = Path(__file__).resolve().parents[2] / "sample_data"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
CHECKPOINT = SAMPLES / "checkpoint.safetensors"


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, ["inspect", "--isolated", *args], env=env)


def ill(seed: int = 1) -> torch.Tensor:
    """A 16×16 float32 weight with κ₂ = 1e5: ill-conditioned in both profiles (above
    max(1/√ε₃₂, κ_0.99(16, 16)) ≈ 3.2e3, below the rank tolerance's 1/(16·ε₃₂) = 5.2e5)."""
    s = np.geomspace(1.0, 1e-5, 16).tolist()
    return with_singular_values(s, 16, 16, seed=seed, dtype=torch.float32)


def trainer_dir(root: Path) -> Path:
    """A Hugging Face Trainer checkpoint: weights, a .bin copy, and files without weights."""
    ckpt = root / "checkpoint-500"
    (ckpt / "2_Dense").mkdir(parents=True)
    save_file(
        {"encoder.layer.0.weight": ill(), "encoder.layer.1.weight": ill(2)},
        str(ckpt / "model.safetensors"),
    )
    torch.save({"encoder.layer.0.weight": ill()}, ckpt / "pytorch_model.bin")
    save_file({"linear.weight": ill(3)}, str(ckpt / "2_Dense" / "model.safetensors"))
    torch.save({"state": {0: {"exp_avg": torch.randn(16, 16)}}}, ckpt / "optimizer.pt")
    torch.save({"last_epoch": 3}, ckpt / "scheduler.pt")
    torch.save({"cpu": torch.zeros(5, dtype=torch.uint8)}, ckpt / "rng_state.pth")
    (ckpt / "training_args.bin").write_bytes(b"\x80\x04not a state dict")
    return ckpt


def test_trainer_directory_recursive_with_reasons(tmp_path: Path) -> None:
    ckpt = trainer_dir(tmp_path)
    result = run(str(ckpt), "--format", "json")
    assert result.exit_code == 0, result.stderr  # warnings only
    document = json.loads(result.stdout)
    names = sorted(row["name"] for row in document["rows"])
    # Two model.safetensors: shown by their relative paths, never alike.
    assert names == [
        "2_Dense/model.safetensors[linear.weight]",
        "model.safetensors[encoder.layer.0.weight]",
        "model.safetensors[encoder.layer.1.weight]",
    ]
    skipped = {Path(s["path"]).name: s for s in document["skipped"]}
    assert skipped["training_args.bin"]["reason"] == "not-weights"
    assert skipped["optimizer.pt"]["reason"] == "not-weights"
    assert skipped["scheduler.pt"]["reason"] == "not-weights"
    assert skipped["rng_state.pth"]["reason"] == "not-weights"
    assert skipped["pytorch_model.bin"]["reason"] == "duplicate"
    assert "model.safetensors" in skipped["pytorch_model.bin"]["detail"]
    table = run(str(ckpt)).stdout
    assert "training_args.bin: pickled training arguments" in table


def test_optimizer_state_skipped_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "optimizer.pt"
    torch.save({"state": {0: {"exp_avg": ill(), "exp_avg_sq": ill(2).abs()}}}, path)
    result = run(str(path))
    assert result.exit_code == 2 and "no matrix analysed" in result.stderr
    assert "--include-optimizer" in result.stderr
    asked = run(str(path), "--include-optimizer", "--format", "json")
    assert len(json.loads(asked.stdout)["rows"]) == 2


def test_lightning_checkpoint_reads_its_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "epoch=3.ckpt"
    torch.save(
        {
            "epoch": 3,
            "state_dict": {"model.layer.weight": ill(), "model.layer.bias": torch.zeros(16)},
            "optimizer_states": [{"state": {0: {"exp_avg": torch.randn(16, 16)}}}],
        },
        path,
    )
    rows = [r for r in svdguard.inspect(path) if hasattr(r, "findings")]
    assert [r.key for r in rows] == ["model.layer.weight"]
    assert rows[0].flags == ("ill-conditioned",)


def test_batch_analyses_a_stack_of_experts(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    experts = torch.stack([torch.randn(8, 6, generator=g) for _ in range(3)])
    experts[1] = haar_unitary(8, dtype=torch.float64, generator=g)[:, :6].to(torch.float32)
    path = tmp_path / "moe.safetensors"
    save_file({"experts.w": experts}, str(path))
    rows = [r for r in svdguard.inspect(path, batch=["experts.*"], profile="svd-grad")]
    assert [r.key for r in rows] == ["experts.w[0]", "experts.w[1]", "experts.w[2]"]
    assert rows[1].flags == ("tied",) and rows[0].matrix_shape == (8, 6)
    for row, matrix in zip(rows, experts, strict=True):
        s = np.linalg.svd(matrix.double().numpy(), compute_uv=False)
        # Two float64 SVDs of the same entries agree to the rounding level 8·ε₆₄·σ_max.
        assert abs(row.sigma_max - s[0]) <= rounding_level(s[0], torch.float64, 8, 6)
    plain = [r for r in svdguard.inspect(path)]
    assert plain[0].matrix_shape == (3, 48)


def test_select_ignore_and_thresholds_switch_checks_off(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file({"a.weight": ill(), "b.weight": torch.eye(8)}, str(path))
    assert "SG201 ill-conditioned" in run(str(path)).stdout
    assert "SG201" not in run(str(path), "--ignore", "SG201").stdout
    assert "SG201" not in run(str(path), "--max-cond", "inf").stdout
    assert "SG201" not in run(str(path), "--select", "SG3").stdout
    assert "SG301 tied" in run(str(path), "--select", "tied").stdout
    grad = run(str(path), "--profile", "svd-grad")
    assert grad.exit_code == 1 and "SG301 tied" in grad.stdout and "ERROR" in grad.stdout
    assert (
        run(str(path), "--profile", "svd-grad", "--gap-tol", "0", "--ignore", "SG301").exit_code
        == 0
    )


def test_pyproject_settings_and_per_tensor_ignores(tmp_path: Path, monkeypatch: Any) -> None:
    path = tmp_path / "w.safetensors"
    save_file({"emb.position_embeddings.weight": ill(), "head.weight": ill(2)}, str(path))
    (tmp_path / "pyproject.toml").write_text(
        '[tool.svdguard]\nprofile = "health"\nfail-on = "warning"\n'
        'per-tensor-ignores = {"*.position_embeddings.*" = ["SG201"]}\n',
        encoding="utf-8",
    )
    sub = tmp_path / "sub"
    sub.mkdir()
    monkeypatch.chdir(sub)  # found upward from the working directory
    result = CliRunner().invoke(app, ["inspect", str(path), "--format", "json"])
    document = json.loads(result.stdout)
    flagged = {row["key"]: row["codes"] for row in document["rows"]}
    assert flagged == {"emb.position_embeddings.weight": [], "head.weight": ["SG201"]}
    assert result.exit_code == 1  # fail-on = "warning" from the file
    assert document["settings"]["config"].endswith("pyproject.toml")
    (tmp_path / "pyproject.toml").write_text("[tool.svdguard]\nmax-cnd = 3\n", encoding="utf-8")
    bad = CliRunner().invoke(app, ["inspect", str(path)])
    assert bad.exit_code == 2 and "max-cnd: unknown key" in bad.stderr
    (tmp_path / "pyproject.toml").write_text('[tool.svdguard]\nfail-on = "often"\n', "utf-8")
    bad = CliRunner().invoke(app, ["inspect", str(path)])
    assert bad.exit_code == 2 and "[tool.svdguard] fail-on must be one of" in bad.stderr
    (tmp_path / "pyproject.toml").write_text('[tool.svdguard]\nignore = ["SG9"]\n', "utf-8")
    bad = CliRunner().invoke(app, ["inspect", str(path)])
    assert bad.exit_code == 2 and "[tool.svdguard] ignore: unknown rule 'SG9'" in bad.stderr
    isolated = CliRunner().invoke(app, ["inspect", str(path), "--isolated"])
    assert isolated.exit_code == 0


def test_empty_runs_fail_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file({"encoder.attention.weight": ill()}, str(path))
    result = run(str(path), "--include", "attention")
    assert result.exit_code == 2
    assert "did you mean --include '*attention*'" in result.stderr
    assert run(str(path), "--include", "attention", "--allow-empty").exit_code == 0
    assert run(str(path), "--include", "*attention*").exit_code == 0


def test_top_sort_hide_clean_rollup_and_spectrum() -> None:
    top = json.loads(run(str(CHECKPOINT), "-f", "json", "--top", "3").stdout)
    assert len(top["rows"]) == 3 and top["rows_not_shown"] == 10
    assert top["summary"]["matrices"] == 13
    hidden = run(str(CHECKPOINT), "--hide-clean").stdout
    assert "pooler.dense.weight" not in hidden and "classifier.weight" in hidden
    by_gap = json.loads(run(str(CHECKPOINT), "-f", "json", "--sort", "gap").stdout)["rows"]
    gaps = [r["rel_min_gap"] for r in by_gap if isinstance(r.get("rel_min_gap"), float)]
    assert gaps == sorted(gaps)
    spectrum = json.loads(
        run(str(CHECKPOINT), "-f", "json", "--spectrum", "--include", "pooler.*").stdout
    )["rows"][0]["singular_values"]
    assert np.allclose(spectrum, np.linspace(5.0, 1.0, 16), rtol=1e-12)


def test_rollup_collapses_layer_numbers(tmp_path: Path) -> None:
    path = tmp_path / "bert.safetensors"
    tensors = {f"encoder.layer.{i}.attention.query.weight": ill(i + 1) for i in range(3)}
    tensors["pooler.weight"] = torch.eye(16)
    save_file(tensors, str(path))
    document = json.loads(run(str(path), "-f", "json").stdout)
    (group,) = [g for g in document["rollup"] if g["count"] > 1]
    assert group["group"] == "encoder.layer.*.attention.query.weight" and group["count"] == 3
    assert group["findings"] == {"SG201 ill-conditioned": 3}
    assert "by layer type" in run(str(path)).stdout


def test_narrow_terminal_shortens_names_in_the_middle(tmp_path: Path) -> None:
    key = "encoder." + "very_long_module_name." * 6 + "tail_that_matters.weight"
    path = tmp_path / "long.safetensors"
    save_file({key: ill()}, str(path))
    terminal = {"COLUMNS": "110", "TTY_COMPATIBLE": "1", "NO_COLOR": "1"}
    narrow = run(str(path), env=terminal).stdout
    row = next(line for line in narrow.splitlines() if "SG201" in line and "…" in line)
    assert "tail_that_matters.weight" in row and len(ANSI.sub("", row).rstrip()) <= 110
    # A pipe keeps every name whole, with or without COLUMNS.
    for env in ({"COLUMNS": None}, {"COLUMNS": "110"}):
        piped = run(str(path), env=env).stdout  # type: ignore[arg-type]
        assert any(key in line for line in piped.splitlines())


def test_help_version_threads_and_explain() -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["-V"]).stdout.startswith("svdguard ")
    help_text = runner.invoke(app, ["inspect", "-h"]).stdout
    for flag in ("--profile", "--select", "--ignore", "--threads", "--top", "--allow-empty"):
        assert flag in help_text
    assert run(str(CHECKPOINT), "--threads", "1").exit_code == 1
    explained = runner.invoke(app, ["explain", "SG301"])
    assert explained.exit_code == 0 and "svd-grad: error" in explained.stdout
    assert runner.invoke(app, ["explain", "ill-conditioned"]).stdout.startswith("SG201")
    assert runner.invoke(app, ["explain", "SG999"]).exit_code == 2
    listing = runner.invoke(app, ["explain"]).stdout
    assert all(code in listing for code in ("SG101", "SG202", "SG302", "SG402"))


def test_inputs_sharing_a_name_are_told_apart(tmp_path: Path) -> None:
    for folder, seed in (("a", 1), ("b", 2)):
        (tmp_path / folder).mkdir()
        save_file({"w": ill(seed)}, str(tmp_path / folder / "model.safetensors"))
    result = run(
        str(tmp_path / "a" / "model.safetensors"), str(tmp_path / "b" / "model.safetensors")
    )
    assert "a/model.safetensors[w]" in result.stdout and "b/model.safetensors[w]" in result.stdout
    assert "svdguard inspect a/model.safetensors b/model.safetensors" in result.stdout


def test_diffusers_layout_reads_each_module_once(tmp_path: Path) -> None:
    for module in ("unet", "vae"):
        (tmp_path / module).mkdir()
        save_file({"w": ill()}, str(tmp_path / module / "diffusion_pytorch_model.safetensors"))
        half = {"w": ill().to(torch.float16)}
        save_file(half, str(tmp_path / module / "diffusion_pytorch_model.fp16.safetensors"))
    document = json.loads(run(str(tmp_path), "-f", "json").stdout)
    assert sorted(r["name"] for r in document["rows"]) == [
        "unet/diffusion_pytorch_model.safetensors[w]",
        "vae/diffusion_pytorch_model.safetensors[w]",
    ]
    assert [s["reason"] for s in document["skipped"]] == ["duplicate", "duplicate"]


def test_a_dangling_link_in_a_directory_is_reported(tmp_path: Path) -> None:
    save_file({"w": ill()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "gone.safetensors").symlink_to(tmp_path / "deleted.safetensors")
    result = run(str(tmp_path))
    assert result.exit_code == 2 and "gone.safetensors" in result.stdout + result.stderr
    assert "SG201 ill-conditioned" in result.stdout  # the other file is still analysed
