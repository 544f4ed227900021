"""Round trips through every format: what is loaded equals what numpy/torch/safetensors wrote."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from svdguard.errors import InputError
from svdguard.io import (
    TensorRecord,
    expand_inputs,
    iter_records,
    read_tensor,
    read_tensors,
    write_tensor,
)


def _tensor(*shape: int, dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, dtype=torch.float64, generator=generator).to(dtype)


@pytest.mark.parametrize("dtype", ["<f4", "<f8", ">f8", ">i4", "<c16", "?", "<u2", "<f2"])
@pytest.mark.parametrize("order", ["C", "F"])
def test_npy_round_trip(tmp_path: Path, dtype: str, order: str) -> None:
    array = np.asarray(np.random.default_rng(0).standard_normal((3, 5, 2)) * 10, order=order)
    array = np.asarray(array.astype(dtype), order=order)
    path = tmp_path / "a.npy"
    np.save(path, array)
    (record,) = iter_records(path)
    assert (record.key, record.shape, record.display_name) == ("", (3, 5, 2), "a.npy")
    loaded = record.load()
    assert loaded.is_contiguous()
    assert np.array_equal(loaded.numpy(), array.astype(array.dtype.newbyteorder("=")))
    assert torch.equal(read_tensor(path), loaded)
    assert str(loaded.dtype) == f"torch.{record.dtype}"


def test_npy_big_endian_dtype_name(tmp_path: Path) -> None:
    np.save(tmp_path / "b.npy", np.arange(4, dtype=">f8"))
    (record,) = iter_records(tmp_path / "b.npy")
    assert record.dtype == "float64"
    assert torch.equal(record.load(), torch.arange(4, dtype=torch.float64))


def test_npy_scalar_and_empty(tmp_path: Path) -> None:
    np.save(tmp_path / "s.npy", np.float32(2.5))
    np.save(tmp_path / "e.npy", np.zeros((0, 4), dtype=np.float32))
    scalar = read_tensor(tmp_path / "s.npy")
    assert scalar.shape == () and scalar.item() == 2.5
    empty = read_tensor(tmp_path / "e.npy")
    assert empty.shape == (0, 4) and empty.dtype == torch.float32


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_round_trip(tmp_path: Path, compressed: bool) -> None:
    arrays = {
        "U": np.random.default_rng(1).standard_normal((4, 3)),
        "S": np.arange(3, dtype=np.float32),
        "conv": np.random.default_rng(2).standard_normal((2, 3, 3, 3)).astype(">f4"),
    }
    path = tmp_path / "g.npz"
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    records = list(iter_records(path))
    assert {record.key: record.shape for record in records} == {
        key: array.shape for key, array in arrays.items()
    }
    assert {record.display_name for record in records} == {"g.npz[U]", "g.npz[S]", "g.npz[conv]"}
    loaded = read_tensors(path)
    for key, array in arrays.items():
        assert np.array_equal(loaded[key].numpy(), array), key
    assert np.array_equal(read_tensor(path, "S").numpy(), arrays["S"])


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int64, torch.bool]
)
def test_safetensors_round_trip(tmp_path: Path, dtype: torch.dtype) -> None:
    tensors = {
        "w": _tensor(6, 4, dtype=dtype),
        "conv.weight": _tensor(8, 3, 3, 3, dtype=dtype, seed=1),
        "scalar": _tensor(dtype=dtype, seed=2),
    }
    path = tmp_path / "m.safetensors"
    save_file(tensors, path)
    records = {record.key: record for record in iter_records(path)}
    assert set(records) == set(tensors)
    dtype_name = str(dtype).removeprefix("torch.")
    for key, tensor in tensors.items():
        assert records[key].shape == tuple(tensor.shape)
        assert records[key].dtype == dtype_name
        loaded = records[key].load()
        assert loaded.dtype == dtype  # bf16 stays bf16
        assert torch.equal(loaded, tensor), key


def test_safetensors_float8(tmp_path: Path) -> None:
    tensor = _tensor(4, 4).to(torch.float8_e4m3fn)
    save_file({"q": tensor}, tmp_path / "f8.safetensors")
    (record,) = iter_records(tmp_path / "f8.safetensors")
    assert record.dtype == "float8_e4m3fn"
    loaded = record.load()
    assert loaded.dtype == torch.float8_e4m3fn
    assert torch.equal(loaded.view(torch.uint8), tensor.view(torch.uint8))


def _write_sharded(directory: Path) -> dict[str, torch.Tensor]:
    shard_a = {"layer.0.weight": _tensor(4, 4), "layer.0.bias": _tensor(4, seed=1)}
    shard_b = {"layer.1.weight": _tensor(4, 3, dtype=torch.bfloat16, seed=2)}
    save_file(shard_a, directory / "model-00001-of-00002.safetensors")
    save_file(shard_b, directory / "model-00002-of-00002.safetensors")
    weight_map = {key: "model-00001-of-00002.safetensors" for key in shard_a}
    weight_map |= {key: "model-00002-of-00002.safetensors" for key in shard_b}
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return shard_a | shard_b


def test_sharded_round_trip(tmp_path: Path) -> None:
    tensors = _write_sharded(tmp_path)
    records = list(iter_records(tmp_path / "model.safetensors.index.json"))
    assert [record.path.name for record in records] == [
        "model-00001-of-00002.safetensors",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    assert {record.key for record in records} == set(tensors)
    for record in records:
        assert torch.equal(record.load(), tensors[record.key]), record.key
    # The directory expands to the index only (not the shards again).
    assert expand_inputs([tmp_path]) == [tmp_path / "model.safetensors.index.json"]


def test_torch_state_dict_round_trip(tmp_path: Path) -> None:
    state = {
        "encoder": {"weight": _tensor(5, 3), "conv": {"kernel": _tensor(2, 2, 3, 3, seed=1)}},
        "head.bias": _tensor(3, dtype=torch.bfloat16, seed=2),
        "step": 7,
        "names": ["a", "b"],
    }
    path = tmp_path / "ckpt.pt"
    torch.save(state, path)
    records = {record.key: record for record in iter_records(path)}
    assert set(records) == {"encoder.weight", "encoder.conv.kernel", "head.bias"}
    assert torch.equal(records["encoder.weight"].load(), state["encoder"]["weight"])
    assert torch.equal(records["encoder.conv.kernel"].load(), state["encoder"]["conv"]["kernel"])
    assert records["head.bias"].load().dtype == torch.bfloat16
    assert records["head.bias"].display_name == "ckpt.pt[head.bias]"


def test_torch_legacy_format(tmp_path: Path) -> None:
    """Pre-1.6 (non-zip) checkpoints cannot be memory-mapped; they are read whole."""
    state = {"w": _tensor(4, 2), "b": _tensor(2, dtype=torch.float16, seed=1)}
    torch.save(state, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
    loaded = read_tensors(tmp_path / "legacy.bin")
    assert set(loaded) == {"w", "b"}
    assert all(torch.equal(loaded[key], state[key]) for key in state)


def test_torch_bare_tensor(tmp_path: Path) -> None:
    tensor = _tensor(3, 3)
    torch.save(tensor, tmp_path / "t.bin")
    assert torch.equal(read_tensor(tmp_path / "t.bin"), tensor)


def test_read_tensor_key_rules(tmp_path: Path) -> None:
    save_file({"a": _tensor(2, 2), "b": _tensor(2, 2, seed=1)}, tmp_path / "two.safetensors")
    with pytest.raises(InputError, match="choose one with a key: 'a', 'b'"):
        read_tensor(tmp_path / "two.safetensors")
    with pytest.raises(InputError, match="no tensor named 'c'; available: 'a', 'b'") as info:
        read_tensor(tmp_path / "two.safetensors", "c")
    assert "two.safetensors[c]" in str(info.value)
    save_file({"only": _tensor(2, 2)}, tmp_path / "one.safetensors")
    assert torch.equal(read_tensor(tmp_path / "one.safetensors"), _tensor(2, 2))


def test_npy_key_rules(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.eye(2))
    assert torch.equal(read_tensor(tmp_path / "a.npy", ""), torch.eye(2, dtype=torch.float64))
    with pytest.raises(InputError, match="holds one unnamed tensor; drop the key") as info:
        read_tensor(tmp_path / "a.npy", "w")
    assert "a.npy[w]" in str(info.value)


def test_expand_hugging_face_directory(tmp_path: Path) -> None:
    """safetensors weights win over .bin copies of the same weights; arrays always count."""
    save_file({"w": _tensor(2, 2)}, tmp_path / "model.safetensors")
    torch.save({"w": _tensor(2, 2)}, tmp_path / "pytorch_model.bin")
    np.save(tmp_path / "extra.npy", np.zeros(2))
    (tmp_path / "config.json").write_text("{}")
    assert expand_inputs([tmp_path]) == [tmp_path / "model.safetensors", tmp_path / "extra.npy"]
    (tmp_path / "model.safetensors").unlink()
    assert expand_inputs([str(tmp_path)]) == [
        tmp_path / "pytorch_model.bin",
        tmp_path / "extra.npy",
    ]


def test_unknown_suffix_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "w.h5").write_bytes(b"x")
    with pytest.raises(InputError, match="unknown file type '.h5'; svdguard reads .npy"):
        list(iter_records(tmp_path / "w.h5"))
    with pytest.raises(InputError, match="no such file") as info:
        list(iter_records(tmp_path / "gone.npy"))
    assert str(tmp_path / "gone.npy") in str(info.value)


def test_handmade_record_loads(tmp_path: Path) -> None:
    save_file({"w": _tensor(3, 2)}, tmp_path / "x.safetensors")
    record = TensorRecord(tmp_path / "x.safetensors", "w", (3, 2), "float64")
    assert torch.equal(record.load(), _tensor(3, 2))


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".safetensors"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_write_then_read(tmp_path: Path, suffix: str, dtype: torch.dtype) -> None:
    tensor = _tensor(4, 3, dtype=dtype)
    out = write_tensor(tmp_path / f"grad{suffix}", tensor)
    assert out == tmp_path / f"grad{suffix}"
    key = None if suffix == ".npy" else "grad"
    loaded = read_tensor(out, key)
    assert loaded.dtype == dtype and torch.equal(loaded, tensor)
    assert [entry.name for entry in tmp_path.iterdir()] == [f"grad{suffix}"]  # no temp left


def test_write_bf16(tmp_path: Path) -> None:
    tensor = _tensor(3, 3, dtype=torch.bfloat16)
    with pytest.raises(InputError, match=r"\.safetensors"):
        write_tensor(tmp_path / "g.npy", tensor)
    with pytest.raises(InputError, match=r"\.safetensors"):
        write_tensor(tmp_path / "g.npz", tensor)
    write_tensor(tmp_path / "g.safetensors", tensor)
    assert torch.equal(read_tensor(tmp_path / "g.safetensors", "grad"), tensor)
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["g.safetensors"]


def test_expand_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("b.npy", "a.npy"):
        np.save(tmp_path / name, np.zeros(2))
    (tmp_path / "notes.txt").write_text("x")
    monkeypatch.chdir(tmp_path)
    assert expand_inputs(["*.npy"]) == [Path("a.npy"), Path("b.npy")]
    assert expand_inputs(["b.npy", "*.npy", str(tmp_path / "b.npy")]) == [
        Path("b.npy"),
        Path("a.npy"),
    ]
    assert expand_inputs([tmp_path]) == [tmp_path / "a.npy", tmp_path / "b.npy"]
    with pytest.raises(InputError, match="no file matches") as info:
        expand_inputs(["*.safetensors"])
    assert "*.safetensors" in str(info.value)
    with pytest.raises(InputError, match="no such file") as info:
        expand_inputs(["missing.npy"])
    assert "missing.npy" in str(info.value)
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(InputError, match="holds no") as info:
        expand_inputs([empty])
    assert "empty_dir" in str(info.value)


def test_torch_sharded_index(tmp_path: Path) -> None:
    """pytorch_model.bin.index.json: the same weight_map layout, torch shards."""
    torch.save({"a": _tensor(2, 2)}, tmp_path / "pytorch_model-00001-of-00002.bin")
    torch.save({"b": _tensor(3, seed=1)}, tmp_path / "pytorch_model-00002-of-00002.bin")
    weight_map = {"a": "pytorch_model-00001-of-00002.bin", "b": "pytorch_model-00002-of-00002.bin"}
    index = tmp_path / "pytorch_model.bin.index.json"
    index.write_text(json.dumps({"weight_map": weight_map}))
    loaded = read_tensors(index)
    assert torch.equal(loaded["a"], _tensor(2, 2)) and torch.equal(loaded["b"], _tensor(3, seed=1))


def test_null_byte_path() -> None:
    for call in (
        lambda: expand_inputs(["bad\0name.npy"]),
        lambda: list(iter_records(Path("bad\0name.npy"))),
    ):
        with pytest.raises(InputError, match="bad"):
            call()


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_npy_every_format_version(tmp_path: Path, version: tuple[int, int]) -> None:
    array = np.arange(12.0).reshape(3, 4)
    with open(tmp_path / "v.npy", "wb") as stream:
        np.lib.format.write_array(stream, array, version=version)
    assert np.array_equal(np.load(tmp_path / "v.npy"), array)  # the reference reads it
    (record,) = iter_records(tmp_path / "v.npy")
    assert np.array_equal(record.load().numpy(), array)
