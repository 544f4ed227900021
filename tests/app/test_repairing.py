"""``svdguard.app.repairing.repair`` on files: bounds met in the storage dtype, every other byte kept.

References: safetensors' own reader (safe_open) and the raw header bytes, numpy.load,
zipfile, numpy's SVD, and ``svdguard.inspect`` for the worked example of docs/repair.md.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import svdguard
from svdguard.app.repairing import Status, repair
from svdguard.errors import InputError
from svdguard.io import rewrite
from svdguard.tolerances import machine_eps
from tests.helpers import norm_agreement_tolerance, svd_resolution, with_singular_values

SAMPLES = Path(__file__).resolve().parents[2] / "sample_data"
CHECKPOINT = SAMPLES / "checkpoint.safetensors"


def assert_meets(
    values: np.ndarray, shape: tuple[int, int], max_cond: float, min_gap: float
) -> None:
    """Check κ₂ ≤ K and every gap ≥ G·σ_max on a float64 spectrum, up to its resolution."""
    s = np.linalg.svd(values.astype(np.float64).reshape(shape), compute_uv=False)
    tol = svd_resolution(*shape, s[0])
    assert s[-1] * max_cond >= s[0] - tol * max_cond
    assert np.diff(s).max() <= -min_gap * s[0] + tol


def header_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return raw[: 8 + length]


def raw_tensors(path: Path) -> dict[str, bytes]:
    """Every tensor's bytes through safetensors' own reader."""
    with safe_open(os.fspath(path), framework="pt") as handle:
        return {
            key: handle.get_tensor(key).contiguous().view(torch.uint8).numpy().tobytes()
            for key in handle.keys()
        }


def compressed_bytes(path: Path, info: zipfile.ZipInfo) -> bytes:
    """A member's stored (compressed) bytes, found from its local header (ZIP APPNOTE 4.3.7)."""
    with open(path, "rb") as stream:
        stream.seek(info.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", stream.read(4))
        stream.seek(info.header_offset + 30 + name_length + extra_length)
        return stream.read(info.compress_size)


def default_bounds(dtype: torch.dtype) -> tuple[float, float]:
    """What repair uses when no bound is given: inspect's thresholds (1/√ε_w, √ε_w)."""
    working = torch.float32 if torch.finfo(dtype).bits < 32 else dtype
    eps = machine_eps(working)
    return 1 / math.sqrt(eps), math.sqrt(eps)


@pytest.fixture
def repaired_sample(tmp_path: Path):
    out = tmp_path / "repaired.safetensors"
    result = repair(CHECKPOINT, out, skip_nonfinite=True)
    return result, out


def test_sample_checkpoint_layout_and_untouched_bytes(repaired_sample) -> None:
    result, out = repaired_sample
    assert result.written
    assert out.stat().st_size == CHECKPOINT.stat().st_size
    assert header_bytes(out) == header_bytes(CHECKPOINT)  # order, dtypes, shapes, __metadata__
    with safe_open(os.fspath(out), framework="pt") as handle:
        with safe_open(os.fspath(CHECKPOINT), framework="pt") as original:
            assert handle.metadata() == original.metadata()
    before, after = raw_tensors(CHECKPOINT), raw_tensors(out)
    repaired = {r.key for r in result.records if r.status is Status.REPAIRED}
    assert repaired == {
        "classifier.weight",
        "encoder.layer1.ill_conditioned.weight",
        "encoder.layer1.rank_deficient.weight",
        "encoder.layer2.near_tie.weight",
        "encoder.layer2.orthogonal.weight",
    }
    for key in before:
        assert (before[key] == after[key]) == (key not in repaired), key


def test_sample_checkpoint_repaired_matrices_meet_bounds_in_storage_dtype(repaired_sample) -> None:
    result, out = repaired_sample
    with safe_open(os.fspath(out), framework="pt") as handle:
        for row in result.records:
            if row.status is not Status.REPAIRED:
                continue
            stored = handle.get_tensor(row.key)
            max_cond, min_gap = default_bounds(stored.dtype)
            assert row.max_cond == pytest.approx(max_cond) and row.min_gap == pytest.approx(min_gap)
            assert_meets(stored.double().numpy(), row.matrix_shape, max_cond, min_gap)
            # The recorded change is the stored one (‖ΔW‖_F/‖W‖_F), measured here independently.
            original = svdguard.io.read_tensor(CHECKPOINT, row.key).double().numpy()
            change = np.linalg.norm(stored.double().numpy() - original) / np.linalg.norm(original)
            tol = norm_agreement_tolerance(stored.numel())
            assert row.rel_change == pytest.approx(change, rel=tol)


def test_sample_singular_vectors_are_kept(repaired_sample) -> None:
    """Mirsky's minimiser keeps U and V: Uᵀ W′ V is diagonal (up to the storage rounding)."""
    _, out = repaired_sample
    key = "encoder.layer1.ill_conditioned.weight"
    original = svdguard.io.read_tensor(CHECKPOINT, key).double().numpy()
    stored = svdguard.io.read_tensor(out, key).double().numpy()
    u, _, vt = np.linalg.svd(original)
    core = u.T @ stored @ vt.T
    off_diagonal = core - np.diag(np.diag(core))
    assert (
        np.abs(off_diagonal).max()
        <= machine_eps(torch.float32) * math.sqrt(32) * np.abs(core).max()
    )


def test_worked_example_inspect_shows_repaired_findings_gone(repaired_sample) -> None:
    """docs/repair.md: repair, then inspect the output: the repaired findings are gone, nothing else changed."""
    result, out = repaired_sample
    before = {
        row.key: row for row in svdguard.inspect(CHECKPOINT, device="cpu", profile="svd-grad")
    }
    after = {row.key: row for row in svdguard.inspect(out, device="cpu", profile="svd-grad")}
    assert before.keys() == after.keys()
    repaired = {r.key for r in result.records if r.status is Status.REPAIRED}
    assert all(getattr(before[key], "flags", ()) for key in repaired)
    for key, row in after.items():
        if key in repaired:
            assert row.flags == (), (key, row.flags)
        else:
            old, new = before[key].to_dict(), row.to_dict()
            for changed in ("name", "path"):
                old.pop(changed), new.pop(changed)
            assert old == new, key


def test_repairing_the_output_again_changes_nothing(repaired_sample, tmp_path: Path) -> None:
    _, out = repaired_sample
    again = repair(out, tmp_path / "again.safetensors", skip_nonfinite=True)
    assert again.count(Status.REPAIRED) == 0
    assert (tmp_path / "again.safetensors").read_bytes() == out.read_bytes()


def test_sharded_checkpoint(tmp_path: Path) -> None:
    source = SAMPLES / "sharded"
    out = tmp_path / "out"
    result = repair(source / "model.safetensors.index.json", out)
    assert result.exit_status == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in source.iterdir())
    index = "model.safetensors.index.json"
    assert (out / index).read_bytes() == (source / index).read_bytes()
    weight_map = json.loads((out / index).read_text())["weight_map"]
    repaired = {r.key for r in result.records if r.status is Status.REPAIRED}
    assert repaired == {"encoder.layer1.weight"}
    for shard in sorted(set(weight_map.values())):
        assert header_bytes(out / shard) == header_bytes(source / shard)
        before, after = raw_tensors(source / shard), raw_tensors(out / shard)
        for key in before:
            assert (before[key] == after[key]) == (key not in repaired)
    stored = svdguard.io.read_tensor(
        out / weight_map["encoder.layer1.weight"], "encoder.layer1.weight"
    )
    assert_meets(stored.double().numpy(), (16, 16), *default_bounds(torch.float32))


def test_directory_input_gives_a_directory(tmp_path: Path) -> None:
    out = tmp_path / "dir_out"
    result = repair(SAMPLES / "sharded", out, dry_run=True)
    assert not out.exists() and result.count(Status.REPAIRED) == 1
    repair(SAMPLES / "sharded", out)
    assert (out / "model.safetensors.index.json").is_file()


@pytest.mark.parametrize("fortran", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.dtype(">f8")])
def test_npy_keeps_header_byte_order_and_memory_order(tmp_path: Path, fortran: bool, dtype) -> None:
    s = np.array([3.0, 2.0, 2.0, 1e-9])
    matrix = with_singular_values(s, 6, 4, seed=3).numpy().astype(dtype)
    if fortran:
        matrix = np.asfortranarray(matrix)
    source = tmp_path / "w.npy"
    np.save(source, matrix)
    out = tmp_path / "out.npy"
    result = repair(source, out, max_cond=100.0, min_gap=0.01)
    assert result.count(Status.REPAIRED) == 1 and result.exit_status == 0
    raw_in, raw_out = source.read_bytes(), out.read_bytes()
    header_length = len(raw_in) - matrix.nbytes
    assert raw_out[:header_length] == raw_in[:header_length]
    loaded = np.load(out)
    assert loaded.dtype == matrix.dtype and loaded.flags.f_contiguous == fortran
    assert_meets(loaded, (6, 4), 100.0, 0.01)


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_members_keep_bytes_order_and_compression(tmp_path: Path, compressed: bool) -> None:
    bad = with_singular_values([1.0, 1.0, 1e-8], 5, 3, seed=1).numpy()
    good = with_singular_values([2.0, 1.0, 0.5], 3, 3, seed=2).numpy().astype(np.float32)
    arrays = {"z_first": good, "bad": bad, "bias": np.arange(4.0), "a_last": good.T.copy()}
    source = tmp_path / "w.npz"
    (np.savez_compressed if compressed else np.savez)(source, **arrays)
    out = tmp_path / "out.npz"
    result = repair(source, out, max_cond=10.0, min_gap=0.05)
    assert [r.status for r in result.records] == [
        Status.UNTOUCHED,
        Status.REPAIRED,
        Status.SKIPPED,
        Status.UNTOUCHED,
    ]
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(out) as new:
        assert new.testzip() is None  # every member's CRC-32 checks
        assert [i.filename for i in new.infolist()] == [i.filename for i in old.infolist()]
        for old_info, new_info in zip(old.infolist(), new.infolist(), strict=True):
            assert new_info.compress_type == old_info.compress_type
            assert new_info.date_time == old_info.date_time
            assert new_info.external_attr == old_info.external_attr
            untouched = old_info.filename != "bad.npy"
            assert (old.read(old_info) == new.read(new_info)) == untouched
            if untouched:  # copied raw: the very same compressed bytes
                assert new_info.CRC == old_info.CRC
                assert compressed_bytes(out, new_info) == compressed_bytes(source, old_info)
            else:  # the .npy header is kept, the payload is new
                header = len(old.read(old_info)) - bad.nbytes
                assert new.read(new_info)[:header] == old.read(old_info)[:header]
    loaded = np.load(out)
    assert_meets(loaded["bad"], (5, 3), 10.0, 0.05)


def test_conv_kernel_is_repaired_as_its_matrix_view(tmp_path: Path) -> None:
    matrix = with_singular_values([1.0, 0.5, 1e-7, 1e-8], 4, 18, seed=5)
    source = tmp_path / "conv.safetensors"
    save_file({"conv.weight": matrix.reshape(4, 2, 3, 3).float().contiguous()}, source)
    out = tmp_path / "out.safetensors"
    result = repair(source, out, max_cond=50.0)
    (row,) = result.records
    assert row.status is Status.REPAIRED and row.matrix_shape == (4, 18)
    stored = svdguard.io.read_tensor(out, "conv.weight")
    assert stored.shape == (4, 2, 3, 3) and stored.dtype == torch.float32
    assert_meets(stored.reshape(4, 18).double().numpy(), (4, 18), 50.0, 0.0)


def test_bfloat16_bound_the_dtype_cannot_hold_is_unreachable(tmp_path: Path) -> None:
    """(k−1)·G = 0.89 leaves no room for bf16's rounding (≈ 4e-3·σ_max per singular value)."""
    k = 64
    source = tmp_path / "bf16.safetensors"
    matrix = with_singular_values(torch.linspace(1.0, 0.5, k), k, k, seed=9).to(torch.bfloat16)
    save_file({"w": matrix}, source)
    result = repair(source, tmp_path / "out.safetensors", min_gap=0.89 / (k - 1))
    (row,) = result.records
    assert row.status is Status.UNREACHABLE and result.exit_status == 1
    assert "bfloat16" in row.detail


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_reachable_bound_is_met_after_rounding(tmp_path: Path, dtype: torch.dtype) -> None:
    source = tmp_path / "w.safetensors"
    matrix = with_singular_values([4.0, 4.0, 2.0, 1e-4] + [1.0] * 12, 16, 16, seed=4)
    save_file({"w": matrix.to(dtype)}, source)
    out = tmp_path / "out.safetensors"
    result = repair(source, out, max_cond=20.0, min_gap=0.02)
    (row,) = result.records
    assert row.status is Status.REPAIRED and result.exit_status == 0
    stored = svdguard.io.read_tensor(out, "w")
    assert stored.dtype == dtype
    assert_meets(stored.double().numpy(), (16, 16), 20.0, 0.02)


def test_complex_npy(tmp_path: Path) -> None:
    matrix = with_singular_values([2.0, 2.0, 1.0, 1e-9], 5, 4, dtype=torch.complex128, seed=6)
    source = tmp_path / "c.npy"
    np.save(source, matrix.numpy().astype(np.complex64))
    out = tmp_path / "out.npy"
    result = repair(source, out, max_cond=50.0, min_gap=0.01)
    assert result.records[0].status is Status.REPAIRED
    loaded = np.load(out)
    assert loaded.dtype == np.complex64
    s = np.linalg.svd(loaded.astype(np.complex128), compute_uv=False)
    tol = svd_resolution(5, 4, s[0])
    assert s[-1] * 50.0 >= s[0] - tol * 50.0 and np.diff(s).max() <= -0.01 * s[0] + tol
    # The imaginary parts were repaired too, not dropped.
    assert np.abs(loaded.imag).max() > 0.1 * np.abs(loaded).max()


def test_nonfinite_is_never_repaired(tmp_path: Path) -> None:
    out = tmp_path / "out.safetensors"
    result = repair(CHECKPOINT, out, max_cond=100.0)
    assert result.exit_status == 2 and not result.written and not out.exists()
    assert list(tmp_path.iterdir()) == []
    skipped = repair(CHECKPOINT, out, max_cond=100.0, skip_nonfinite=True)
    assert skipped.written
    key = "head.diverged.weight"
    assert raw_tensors(out)[key] == raw_tensors(CHECKPOINT)[key]


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out.safetensors"
    result = repair(CHECKPOINT, out, dry_run=True, skip_nonfinite=True)
    assert result.count(Status.REPAIRED) == 5 and not out.exists() and not result.written
    assert list(tmp_path.iterdir()) == []


def test_output_safety(tmp_path: Path) -> None:
    source = tmp_path / "in.safetensors"
    shutil.copy(CHECKPOINT, source)
    with pytest.raises(InputError, match="is the input"):
        repair(source, source, skip_nonfinite=True, force=True)
    link = tmp_path / "link.safetensors"
    link.symlink_to(source)
    with pytest.raises(InputError, match="is the input"):
        repair(source, link, skip_nonfinite=True, force=True)
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="device, FIFO"):
        repair(source, fifo, skip_nonfinite=True, force=True)
    existing = tmp_path / "out.safetensors"
    existing.write_bytes(b"old")
    with pytest.raises(InputError, match="exists"):
        repair(source, existing, skip_nonfinite=True)
    assert existing.read_bytes() == b"old"
    repair(source, existing, skip_nonfinite=True, force=True)
    assert existing.stat().st_size == source.stat().st_size
    with pytest.raises(InputError, match="must be a .safetensors file"):
        repair(source, tmp_path / "out.npz", skip_nonfinite=True)
    with pytest.raises(InputError, match="is the input's directory"):
        repair(SAMPLES / "sharded", SAMPLES / "sharded", force=True, dry_run=False)


def test_symlink_to_a_device_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "null.safetensors"
    link.symlink_to("/dev/null")
    with pytest.raises(InputError, match="device, FIFO"):
        repair(CHECKPOINT, link, skip_nonfinite=True, force=True)


def test_interrupt_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(self, key, tensor):  # noqa: ANN001
        raise KeyboardInterrupt

    monkeypatch.setattr(rewrite.SafetensorsRewriter, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        repair(CHECKPOINT, tmp_path / "out.safetensors", skip_nonfinite=True)
    with pytest.raises(KeyboardInterrupt):
        repair(SAMPLES / "sharded", tmp_path / "outdir")
    assert list(tmp_path.iterdir()) == []


def test_pickle_checkpoints_are_refused_with_the_reason(tmp_path: Path) -> None:
    source = tmp_path / "model.pt"
    torch.save({"w": torch.eye(3)}, source)
    with pytest.raises(InputError, match="re-pickling objects from the file"):
        repair(source, tmp_path / "out.pt")


def test_infeasible_bounds_are_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(
        InputError,
        match=r"\[classifier.weight\]: max_cond=2 and min_gap=0.05, cannot hold together",
    ):
        repair(CHECKPOINT, tmp_path / "out.safetensors", max_cond=2.0, min_gap=0.05)
    assert list(tmp_path.iterdir()) == []


def test_hostile_input_gets_one_line_naming_the_file(tmp_path: Path) -> None:
    source = tmp_path / "bad.safetensors"
    source.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(InputError) as caught:
        repair(source, tmp_path / "out.safetensors")
    assert "bad.safetensors" in str(caught.value) and "\n" not in str(caught.value)


def test_default_bounds_that_cannot_hold_say_they_are_the_defaults(tmp_path: Path) -> None:
    """float32 working dtype: G = √ε = 3.45e-4, so k ≥ 2898 values cannot all be G·σ_max apart."""
    source = tmp_path / "wide.safetensors"
    save_file({"w": torch.zeros(2900, 2900, dtype=torch.float16)}, source)
    with pytest.raises(
        InputError, match=r"\[w\]: the default bounds for its dtype, .*2900 singular"
    ):
        repair(source, tmp_path / "out.safetensors")
    result = repair(source, tmp_path / "out.safetensors", max_cond=10.0, dry_run=True)
    assert result.records[0].status is Status.UNREACHABLE  # all zero, and nothing was refused


def _truncated_safetensors(path: Path) -> None:
    path.write_bytes(CHECKPOINT.read_bytes()[:-100])


def _truncated_npy(path: Path) -> None:
    np.save(path, np.eye(40))
    path.write_bytes(path.read_bytes()[:-8])


def _not_a_zip(path: Path) -> None:
    path.write_bytes(b"PK\x03\x04" + b"x" * 100)


def _bad_npy_header(path: Path) -> None:
    path.write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': 1}   \n")


@pytest.mark.parametrize(
    ("name", "spoil"),
    [
        ("t.safetensors", _truncated_safetensors),
        ("t.npy", _truncated_npy),
        ("t.npz", _not_a_zip),
        ("h.npy", _bad_npy_header),
    ],
)
def test_damaged_inputs_give_one_line_and_leave_nothing(tmp_path: Path, name: str, spoil) -> None:
    source = tmp_path / name
    spoil(source)
    with pytest.raises(InputError) as caught:
        repair(source, tmp_path / f"out{source.suffix}", max_cond=10.0)
    message = str(caught.value)
    assert message.startswith(str(source)) and "\n" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
