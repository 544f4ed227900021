"""Size limits are enforced from headers, before allocation; one bad tensor does not stop a file."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from corpus.make_corpus import npy_bytes, safetensors_bytes
from safetensors.torch import save_file

from svdguard.errors import InputError, ResourceLimitError
from svdguard.io import DEFAULT_MAX_ELEMENTS, TensorRecord, iter_records
from svdguard.io import limits as limits_module

TERA = 10**12
#: Python-side allocations a header parse may make (the header, dicts, records): far below
#: the 4 TB (float32) or 8 TB (float64) that the declared tensors would need.
HEADER_PARSE_BUDGET = 2**20


def _huge_files(directory: Path) -> list[Path]:
    huge_st = directory / "huge.safetensors"
    huge_st.write_bytes(
        safetensors_bytes({"w": {"dtype": "F32", "shape": [TERA], "data_offsets": [0, 4 * TERA]}})
    )
    huge_npy = directory / "huge.npy"
    huge_npy.write_bytes(
        npy_bytes(f"{{'descr': '<f8', 'fortran_order': False, 'shape': ({TERA},), }}")
    )
    huge_npz = directory / "huge.npz"
    with zipfile.ZipFile(huge_npz, "w") as archive:
        archive.writestr("w.npy", huge_npy.read_bytes())
    return [huge_st, huge_npy, huge_npz]


def test_declared_tera_tensor_refused_without_allocating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    allocations: list[tuple[object, ...]] = []
    real_empty = torch.empty

    def spy_empty(*args: object, **kwargs: object) -> torch.Tensor:
        allocations.append(args)
        return real_empty(*args, **kwargs)  # type: ignore[arg-type]

    files = _huge_files(tmp_path)
    monkeypatch.setattr(torch, "empty", spy_empty)
    tracemalloc.start()
    try:
        for path in files:
            (record,) = iter_records(path)
            assert record.numel == TERA
            with pytest.raises(ResourceLimitError, match="1,000,000,000,000 elements") as info:
                record.load()
            assert str(path) in str(info.value)
            assert f"{DEFAULT_MAX_ELEMENTS:,}" in str(info.value)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert allocations == []  # no tensor buffer was ever requested
    assert peak < HEADER_PARSE_BUDGET


def test_max_elements_is_per_record(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.arange(12.0).reshape(3, 4))
    (strict,) = iter_records(tmp_path / "a.npy", max_elements=11)
    assert strict.max_elements == 11
    with pytest.raises(ResourceLimitError, match="exceeds the limit of 11 elements"):
        strict.load()
    (exact,) = iter_records(tmp_path / "a.npy", max_elements=12)
    assert np.array_equal(exact.load().numpy(), np.arange(12.0).reshape(3, 4))


def test_memory_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_file({"w": torch.zeros(200, dtype=torch.float64)}, tmp_path / "w.safetensors")
    (record,) = iter_records(tmp_path / "w.safetensors")
    monkeypatch.setattr(limits_module, "memory_available", lambda: 1000)
    with pytest.raises(
        ResourceLimitError, match=r"needs 1\.6 KiB but only 1000 B of memory"
    ) as info:
        record.load()
    assert "w.safetensors[w]" in str(info.value)
    monkeypatch.setattr(limits_module, "memory_available", lambda: 1600)
    assert torch.equal(record.load(), torch.zeros(200, dtype=torch.float64))


def test_memory_available_reads_meminfo() -> None:
    available = limits_module.memory_available()
    meminfo = Path("/proc/meminfo")
    if not meminfo.exists():
        pytest.skip("no /proc/meminfo")
    total_kb = next(
        int(line.split()[1])
        for line in meminfo.read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    assert available is not None and 0 < available <= total_kb * 1024


def test_memory_available_fallback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(limits_module, "_MEMINFO", tmp_path / "no_meminfo")
    available = limits_module.memory_available()
    assert available is None or available > 0


def test_one_bad_tensor_does_not_stop_a_file(tmp_path: Path) -> None:
    good = np.arange(16, dtype="<f4")
    entry = {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}
    header = {
        "good": entry,
        "cut": {**entry, "data_offsets": [64, 128]},
        "new": {"dtype": "F4", "shape": [4, 4], "data_offsets": [128, 136]},
    }
    path = tmp_path / "partial.safetensors"
    path.write_bytes(safetensors_bytes(header, good.tobytes() + good.tobytes()[:10]))
    records = {record.key: record for record in iter_records(path)}
    assert set(records) == {"good", "cut", "new"} and records["new"].dtype == "F4"
    assert np.array_equal(records["good"].load().numpy(), good.reshape(4, 4))
    with pytest.raises(InputError, match="payload truncated") as info:
        records["cut"].load()
    assert "partial.safetensors[cut]" in str(info.value)
    with pytest.raises(InputError, match="unknown dtype 'F4'"):
        records["new"].load()


def test_one_bad_npz_member(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.arange(6.0))
    member = buffer.getvalue()
    path = tmp_path / "mixed.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("good.npy", member)
        archive.writestr("cut.npy", member[:-8])
    records = {record.key: record for record in iter_records(path)}
    assert np.array_equal(records["good"].load().numpy(), np.arange(6.0))
    with pytest.raises(InputError, match="payload truncated"):
        records["cut"].load()


def test_bad_shard_does_not_hide_earlier_shards(tmp_path: Path) -> None:
    save_file({"a": torch.ones(2, 2)}, tmp_path / "s1.safetensors")
    (tmp_path / "s2.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}}))
    records = iter_records(index)
    first = next(records)
    assert first.key == "a" and torch.equal(first.load(), torch.ones(2, 2))
    with pytest.raises(InputError, match="not valid UTF-8 JSON") as info:
        next(records)
    assert "s2.safetensors" in str(info.value)


def test_handmade_record_checks_limits(tmp_path: Path) -> None:
    record = TensorRecord(tmp_path / "nowhere.npy", "", (TERA,), "float64")
    with pytest.raises(ResourceLimitError, match="exceeds the limit"):
        record.load()


_STREAMING_SCRIPT = """
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from svdguard.io import iter_records


def high_water_mark():
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:"))


path, tensor_bytes, count = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
tensors = {f"t{i}": torch.full((tensor_bytes // 8,), float(i), dtype=torch.float64) for i in range(count)}
save_file(tensors, path)
del tensors
try:
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter (Linux >= 4.0)
except OSError:
    print("skip")
    raise SystemExit(0)
before = high_water_mark()
values = []
for record in iter_records(path):
    tensor = record.load()
    values.append(float(tensor[0]))
    del tensor
assert values == [float(i) for i in range(count)], values
print(high_water_mark() - before)
"""


def test_streaming_peak_memory(tmp_path: Path) -> None:
    """Loading 6 tensors of 8 MiB one at a time peaks near one tensor, not the 48 MiB file.

    Measured in a fresh process whose malloc returns every block of 1 MiB or more to the
    system on free (a fixed mmap threshold), so the peak RSS counts live tensors only.
    """
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc to measure the peak RSS")
    tensor_bytes, count = 8 * 2**20, 6
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20)}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _STREAMING_SCRIPT,
            str(tmp_path / "big.safetensors"),
            str(tensor_bytes),
            str(count),
        ],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
        check=True,
    )
    if result.stdout.strip() == "skip":
        pytest.skip("cannot reset the peak-RSS counter here")
    growth = int(result.stdout.strip())
    # One tensor, plus the interpreter's own small allocations: well under two tensors.
    assert growth < 2 * tensor_bytes, growth
