"""svdguard.inspect: every input format, skip reasons, failed rows, batching, bounded memory."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import random_matrix, with_singular_values
from safetensors.torch import load_file, save_file

import svdguard
from svdguard.app.inspection import Selection
from svdguard.app.report import FailedReport, MatrixReport, Severity, SkippedTensor
from svdguard.errors import InputError
from svdguard.linalg import spectrum_analysis as diagnostics
from svdguard.tolerances import (
    compute_dtype,
    machine_eps,
    spectrum_report_rtol,
    spectrum_storage_floor,
)

SAMPLES = Path(__file__).resolve().parents[2] / "sample_data"
EPS64 = machine_eps(torch.float64)

#: What sample_data/make_samples.py documents for each tensor of checkpoint.safetensors,
#: in the health profile and in the svd-grad profile.
W, E, INFO = Severity.WARNING, Severity.ERROR, Severity.INFO
EXPECTED_SAMPLE = {
    "encoder.layer0.attention.weight": ((None, ()), (None, ())),
    "encoder.layer0.ffn.weight": ((None, ()), (None, ())),
    "encoder.layer1.ill_conditioned.weight": (
        (W, ("ill-conditioned",)),
        (W, ("ill-conditioned",)),
    ),
    "encoder.layer1.rank_deficient.weight": ((W, ("rank-deficient",)), (W, ("rank-deficient",))),
    "encoder.layer2.orthogonal.weight": ((INFO, ("tied",)), (E, ("tied",))),
    "encoder.layer2.near_tie.weight": ((None, ()), (W, ("near-degenerate",))),
    "embeddings.word.weight": ((INFO, ("noise-floor",)), (INFO, ("noise-floor",))),
    "conv1.weight": ((None, ()), (None, ())),
    "head.diverged.weight": ((E, ("nonfinite",)), (E, ("nonfinite",))),
    "head.unused.weight": ((W, ("zero",)), (W, ("zero",))),
    "head.fp16.weight": ((None, ()), (None, ())),
    "pooler.dense.weight": ((None, ()), (None, ())),
    "classifier.weight": ((W, ("ill-conditioned",)), (W, ("ill-conditioned",))),
}


def cond_rtol(s: np.ndarray, m: int, n: int) -> float:
    """Agreement of κ₂ between two float64 SVDs: each σ_i moves by ≤ 10·max(m, n)·ε·σ_max."""
    atol = 10 * max(m, n) * EPS64 * s[0]
    return atol / s[0] + atol / s[-1]


def numpy_reference(tensor: torch.Tensor) -> tuple[np.ndarray, float, int]:
    """(s, κ₂, numpy matrix_rank in the working dtype) of the stored values, float64 numpy."""
    a = tensor.double().numpy().reshape(tensor.shape[0], -1)
    s = np.linalg.svd(a, compute_uv=False)
    working = compute_dtype(tensor.dtype)
    rank = int(
        np.linalg.matrix_rank(a.astype(np.float32 if working == torch.float32 else np.float64))
    )
    return s, (s[0] / s[-1] if s[-1] > 0 else math.inf), rank


def rows(items: list) -> dict[str, MatrixReport | FailedReport | SkippedTensor]:
    return {item.key or item.name: item for item in items}


def test_sample_checkpoint_matches_numpy_and_documented_flags() -> None:
    path = SAMPLES / "checkpoint.safetensors"
    stored = load_file(str(path))
    found = rows(list(svdguard.inspect(path)))
    grad = rows(list(svdguard.inspect(path, profile="svd-grad")))
    assert set(found) == set(stored)
    for key, (expected, expected_grad) in EXPECTED_SAMPLE.items():
        report = found[key]
        assert isinstance(report, MatrixReport), key
        assert (report.severity, report.flags) == expected, key
        assert (grad[key].severity, grad[key].flags) == expected_grad, key
        if report.nonfinite:
            assert report.nonfinite == int((~torch.isfinite(stored[key])).sum())
            continue
        s, cond, rank = numpy_reference(stored[key])
        m, n = report.matrix_shape
        if s[0] == 0:
            assert report.cond == math.inf and report.rank == 0
            continue
        # The Gram route is certified to the report's accuracy (or the storage's), not the SVD's.
        storage_floor = spectrum_storage_floor(stored[key].dtype, s[0]) / s[-1]
        gram_rtol = max(spectrum_report_rtol(), storage_floor)
        rtol = cond_rtol(s, m, n) if report.method == "svd" else gram_rtol
        assert report.cond == pytest.approx(cond, rel=rtol), key
        assert report.sigma_max == pytest.approx(s[0], rel=10 * max(m, n) * EPS64), key
        assert report.rank == rank, key
    assert found["conv1.weight"].matrix_shape == (8, 27)
    assert found["embeddings.word.weight"].dtype == "bfloat16"
    assert found["head.fp16.weight"].dtype == "float16"
    assert found["position_ids"].reason.value == "integer"
    assert found["encoder.layer0.attention.bias"].reason.value == "1-d"


def test_sharded_checkpoint_and_directory() -> None:
    by_index = list(svdguard.inspect(SAMPLES / "sharded" / "model.safetensors.index.json"))
    by_directory = list(svdguard.inspect(SAMPLES / "sharded"))
    assert [r.name for r in by_index] == [r.name for r in by_directory]
    found = rows(by_index)
    assert set(found) == {
        "encoder.layer0.weight",
        "encoder.layer0.bias",
        "encoder.layer1.weight",
        "lm_head.weight",
    }
    assert found["encoder.layer1.weight"].flags == ("tied",)  # eye(16)
    assert found["encoder.layer1.weight"].tied_pairs == 16 * 15 // 2
    shard_2 = load_file(str(SAMPLES / "sharded" / "model-00002-of-00002.safetensors"))
    s, cond, _ = numpy_reference(shard_2["lm_head.weight"])
    assert found["lm_head.weight"].cond == pytest.approx(cond, rel=cond_rtol(s, 32, 16))


def test_npy_npz_and_torch_state_dict(tmp_path: Path) -> None:
    a = random_matrix(9, 5, seed=1)
    b = random_matrix(4, 6, dtype=torch.float32, seed=2)
    np.save(tmp_path / "a.npy", a.numpy())
    np.savez(tmp_path / "ab.npz", first=a.numpy(), second=b.numpy())
    torch.save({"model": {"layer": {"weight": b}, "step": 3}}, tmp_path / "state.pt")
    found = {r.name: r for r in svdguard.inspect(sorted(tmp_path.iterdir()))}
    assert set(found) == {
        "a.npy",
        "ab.npz[first]",
        "ab.npz[second]",
        "state.pt[model.layer.weight]",
    }
    for name, tensor in [("a.npy", a), ("ab.npz[second]", b), ("state.pt[model.layer.weight]", b)]:
        s, cond, rank = numpy_reference(tensor)
        m, n = tensor.shape
        assert found[name].cond == pytest.approx(cond, rel=cond_rtol(s, m, n)), name
        assert found[name].rank == rank
        assert found[name].rel_min_gap == pytest.approx(
            min(np.min(-np.diff(s)), s[-1] if m != n else math.inf) / s[0],
            abs=20 * max(m, n) * EPS64,
        )


def test_glob_and_conv_and_low_precision(tmp_path: Path) -> None:
    conv = random_matrix(4, 18, dtype=torch.float32, seed=3).reshape(4, 2, 3, 3)
    half = with_singular_values([2.0, 1.5, 1.0], 3, 3, seed=4).to(torch.float16)
    save_file({"conv.weight": conv, "half": half}, str(tmp_path / "m1.safetensors"))
    save_file({"bf": half.to(torch.bfloat16)}, str(tmp_path / "m2.safetensors"))
    found = rows(list(svdguard.inspect(str(tmp_path / "m*.safetensors"))))
    assert found["conv.weight"].matrix_shape == (4, 18) and found["conv.weight"].reshaped
    s, cond, _ = numpy_reference(conv)
    assert found["conv.weight"].cond == pytest.approx(cond, rel=cond_rtol(s, 4, 18))
    for key, dtype in (("half", torch.float16), ("bf", torch.bfloat16)):
        report = found[key]
        s, cond, _ = numpy_reference(half.to(dtype))
        assert report.compute_dtype == "float64" and report.dtype == str(dtype)[6:]
        assert report.cond == pytest.approx(cond, rel=cond_rtol(s, 3, 3))
        assert report.noise_floor == pytest.approx(machine_eps(dtype) * s[0], rel=1e-12)


def test_skip_reasons(tmp_path: Path) -> None:
    tensors = {
        "scalar": torch.tensor(1.0),
        "vector": torch.ones(3),
        "empty": torch.ones(0, 3),
        "ids": torch.arange(6).reshape(2, 3),
        "mask": torch.ones(2, 2, dtype=torch.bool),
        "big": torch.ones(20, 20),
        "ok": random_matrix(3, 3, dtype=torch.float32),
        "other.ok": random_matrix(3, 3, dtype=torch.float32),
    }
    save_file(tensors, str(tmp_path / "m.safetensors"))
    np.savez(tmp_path / "labels.npz", names=np.array([["a", "b"], ["c", "d"]]))
    items = list(
        svdguard.inspect(
            [tmp_path / "m.safetensors", tmp_path / "labels.npz"],
            max_elements=100,
            exclude=["other.*"],
        )
    )
    reasons = {i.key: i.reason.value for i in items if isinstance(i, SkippedTensor)}
    assert reasons == {
        "scalar": "scalar",
        "vector": "1-d",
        "empty": "empty",
        "ids": "integer",
        "mask": "bool",
        "big": "too-large",
        "other.ok": "excluded",
        "names": "unsupported-dtype",
    }
    assert [i.key for i in items if isinstance(i, MatrixReport)] == ["ok"]
    big = next(i for i in items if i.key == "big")
    assert "400 elements exceed max_elements = 100" in big.detail


def test_selection_globs() -> None:
    selection = Selection(include=("encoder.*",), exclude=("*.bias",))
    assert selection.wants("encoder.layer0.weight")
    assert not selection.wants("encoder.layer0.bias")
    assert not selection.wants("decoder.weight")
    assert Selection().wants("anything")


def test_bad_files_become_rows_and_the_run_goes_on(tmp_path: Path) -> None:
    good = tmp_path / "good.npy"
    np.save(good, np.eye(2) * [2.0, 1.0])
    broken_header = tmp_path / "broken.safetensors"
    broken_header.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    truncated = tmp_path / "truncated.safetensors"
    save_file({"a": torch.eye(3), "b": torch.ones(64, 64)}, str(truncated))
    # Cutting b's payload (the last one) makes the whole file invalid, as safe_open says too.
    truncated.write_bytes(truncated.read_bytes()[:-100])
    items = list(svdguard.inspect([broken_header, truncated, good]))
    failed = [i for i in items if isinstance(i, FailedReport)]
    assert [(f.name, f.stage, f.file_level) for f in failed] == [
        ("broken.safetensors", "read", True),
        ("truncated.safetensors", "read", True),
    ]
    assert "cut short" in failed[1].reason
    analysed = [i.name for i in items if isinstance(i, MatrixReport)]
    assert analysed == ["good.npy"]


def test_svd_failure_is_a_failed_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = torch.linalg.svdvals

    def fails_on_5x5(a: torch.Tensor, **kwargs: object) -> torch.Tensor:
        if a.shape[-2:] == (5, 5):
            raise torch.linalg.LinAlgError("did not converge")
        return real(a)

    monkeypatch.setattr(diagnostics.torch.linalg, "svdvals", fails_on_5x5)
    monkeypatch.setattr(diagnostics, "gram_singular_values", lambda *args: None)  # SVD only
    save_file({"a": torch.eye(5), "b": torch.eye(4) * 2}, str(tmp_path / "m.safetensors"))
    found = rows(list(svdguard.inspect(tmp_path / "m.safetensors")))
    assert isinstance(found["a"], FailedReport) and found["a"].stage == "svd"
    assert "after a retry" in found["a"].reason
    assert isinstance(found["b"], MatrixReport) and found["b"].cond == 1.0


def test_batched_path_matches_one_by_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tensors = {f"w{i}": random_matrix(6, 4, dtype=torch.float32, seed=i) for i in range(5)}
    tensors["odd"] = random_matrix(3, 7, dtype=torch.float32, seed=9)
    save_file(tensors, str(tmp_path / "m.safetensors"))
    single = rows(list(svdguard.inspect(tmp_path / "m.safetensors", batched=False)))
    batched = rows(list(svdguard.inspect(tmp_path / "m.safetensors", batched=True)))
    assert set(single) == set(batched)
    for key, report in single.items():
        other = batched[key]
        assert other.cond == pytest.approx(report.cond, rel=1e-12) and other.rank == report.rank
    # A batch whose call fails is redone one matrix at a time (with the retry).
    real = torch.linalg.svdvals

    def no_batches(a: torch.Tensor, **kwargs: object) -> torch.Tensor:
        if a.ndim == 3:
            raise torch.linalg.LinAlgError("batched call failed")
        return real(a)

    monkeypatch.setattr(diagnostics.torch.linalg, "svdvals", no_batches)
    fallback = rows(list(svdguard.inspect(tmp_path / "m.safetensors", batched=True)))
    assert all(fallback[k].cond == pytest.approx(single[k].cond, rel=1e-12) for k in single)


def test_arguments_are_checked_at_the_call(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such"):
        svdguard.inspect(tmp_path / "missing.safetensors")
    np.save(tmp_path / "a.npy", np.eye(2))
    with pytest.raises(InputError, match="precision"):
        svdguard.inspect(tmp_path / "a.npy", precision="float16")
    with pytest.raises(InputError, match="max_cond"):
        svdguard.inspect(tmp_path / "a.npy", max_cond=-1.0)
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            svdguard.inspect(tmp_path / "a.npy", device="cuda")


def test_diagnose_is_the_library_entry() -> None:
    report = svdguard.diagnose(torch.eye(3), name="eye")
    assert report.name == "eye" and report.flags == ("tied",)
    assert json.loads(json.dumps(report.to_dict()))["cond"] == 1.0


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_memory_stays_bounded_on_a_large_checkpoint(tmp_path: Path) -> None:
    """40 float64 tensors of 256×256 (20 MiB): peak RSS grows by far less than the file."""
    path = tmp_path / "big.safetensors"
    g = torch.Generator().manual_seed(0)
    save_file(
        {
            f"layer{i}.weight": torch.randn(256, 256, dtype=torch.float64, generator=g)
            for i in range(40)
        },
        str(path),
    )
    checkpoint_bytes = path.stat().st_size
    tensor_bytes = 256 * 256 * 8
    script = f"""
import resource, torch, svdguard
torch.set_num_threads(1)
warm = list(svdguard.inspect({str(path)!r}, include=["layer0.*"]))  # imports and first allocations
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
rows = list(svdguard.inspect({str(path)!r}))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(after - before, len(rows))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    growth, count = map(int, out.stdout.split())
    assert count == 40
    # One tensor in memory at a time: a few tensor-sized buffers (payload, float64 copy, LAPACK
    # workspace), never the checkpoint (20 MiB).
    assert growth < 8 * tensor_bytes < checkpoint_bytes / 2, growth
