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
from svdguard.io import (
    DEFAULT_MAX_ELEMENTS,
    FailedUnit,
    TensorRecord,
    find_record,
    iter_records,
    iter_units,
    read_tensor,
)
from svdguard.io import limits as limits_module

TERA = 10**12
#: Python-side allocations a header parse may make (the header, dicts, records): far below
#: the 4 TB (float32) or 8 TB (float64) that the declared tensors would need.
HEADER_PARSE_BUDGET = 2**20


def _huge_files(directory: Path) -> list[Path]:
    """Headers that declare a tera-element tensor with no payload behind it: corrupt files."""
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


def _spy_on_empty(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, ...]]:
    allocations: list[tuple[object, ...]] = []
    real_empty = torch.empty

    def spy_empty(*args: object, **kwargs: object) -> torch.Tensor:
        allocations.append(args)
        return real_empty(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch, "empty", spy_empty)
    return allocations


def test_declared_tera_tensor_is_corrupt_not_too_large(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 100-byte file declaring 4-8 TB is refused as corrupt at listing, allocating nothing."""
    files = _huge_files(tmp_path)
    allocations = _spy_on_empty(monkeypatch)
    tracemalloc.start()
    try:
        for path in files:
            with pytest.raises(InputError) as info:
                list(iter_records(path))
            assert not isinstance(info.value, ResourceLimitError), info.value
            assert str(info.value).startswith(str(path))
            assert "cut short" in str(info.value) or "payload truncated" in str(info.value)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert allocations == []  # no tensor buffer was ever requested
    assert peak < HEADER_PARSE_BUDGET


def test_valid_but_too_large_is_a_resource_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A valid (sparse) file whose tensor exceeds max_elements lists, then load() refuses it."""
    numel = DEFAULT_MAX_ELEMENTS + 1
    npy_path = tmp_path / "big.npy"
    header = npy_bytes(f"{{'descr': '|u1', 'fortran_order': False, 'shape': ({numel},), }}")
    with open(npy_path, "wb") as stream:
        stream.write(header)
        stream.truncate(len(header) + numel)  # a sparse file: no disk blocks written
    st_path = tmp_path / "big.safetensors"
    st_header = safetensors_bytes(
        {"w": {"dtype": "U8", "shape": [numel], "data_offsets": [0, numel]}}
    )
    with open(st_path, "wb") as stream:
        stream.write(st_header)
        stream.truncate(len(st_header) + numel)
    allocations = _spy_on_empty(monkeypatch)
    for path in (npy_path, st_path):
        (record,) = iter_records(path)
        assert record.numel == numel
        with pytest.raises(ResourceLimitError, match=f"{numel:,} elements") as info:
            record.load()
        assert str(path) in str(info.value) and "max_elements=" in str(info.value)
        assert "--" not in str(info.value)  # the library names parameters, not flags
    assert allocations == []


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
    available = limits_module._read_memory_available()
    assert available is None or available > 0


def test_memory_reading_is_reused_for_its_time_to_live(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checking every tensor must not read /proc/meminfo every time; a stale reading is renewed."""
    reads: list[int] = []

    def fake_read() -> int:
        reads.append(1)
        return 123 * len(reads)

    clock = [1000.0]
    monkeypatch.setattr(limits_module, "_read_memory_available", fake_read)
    monkeypatch.setattr(limits_module, "_last_reading", None)
    monkeypatch.setattr(limits_module.time, "monotonic", lambda: clock[0])
    assert [limits_module.memory_available() for _ in range(100)] == [123] * 100
    assert len(reads) == 1
    clock[0] += limits_module.MEMORY_READING_TTL_S
    assert limits_module.memory_available() == 246 and len(reads) == 2


def test_one_unreadable_dtype_does_not_stop_a_file(tmp_path: Path) -> None:
    """F4 is a valid safetensors dtype svdguard cannot hold: only that tensor fails to load."""
    good = np.arange(16, dtype="<f4")
    header = {
        "good": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]},
        "packed": {"dtype": "F4", "shape": [4, 4], "data_offsets": [64, 72]},
    }
    path = tmp_path / "partial.safetensors"
    path.write_bytes(safetensors_bytes(header, good.tobytes() + bytes(8)))
    records = {record.key: record for record in iter_records(path)}
    assert set(records) == {"good", "packed"} and records["packed"].dtype == "F4"
    assert np.array_equal(records["good"].load().numpy(), good.reshape(4, 4))
    with pytest.raises(InputError, match="cannot hold dtype 'F4'") as info:
        records["packed"].load()
    assert "partial.safetensors[packed]" in str(info.value)


def test_truncated_safetensors_is_one_failed_unit(tmp_path: Path) -> None:
    """safe_open refuses a file whose data section is cut short: so does svdguard, as a whole."""
    good = np.arange(16, dtype="<f4").tobytes()
    entry = {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}
    header = {"good": entry, "cut": {**entry, "data_offsets": [64, 128]}}
    path = tmp_path / "cut.safetensors"
    path.write_bytes(safetensors_bytes(header, good + good[:10]))
    (unit,) = iter_units(path)
    assert isinstance(unit, FailedUnit) and unit.whole_file and unit.key is None
    assert "cut short" in str(unit.error)
    with pytest.raises(InputError, match="cut short"):
        list(iter_records(path))


def _npy_member(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_one_bad_npz_member(tmp_path: Path) -> None:
    """Members a, bad b, c: a and c list and load, b is one failed unit naming it."""
    path = tmp_path / "mixed.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a.npy", _npy_member(np.arange(6.0)))
        archive.writestr("b.npy", _npy_member(np.arange(6.0))[:-8])
        archive.writestr("c.npy", _npy_member(np.eye(3)))
    units = list(iter_units(path))
    assert [unit.key for unit in units] == ["a", "b", "c"]
    assert isinstance(units[1], FailedUnit) and not units[1].whole_file
    assert units[1].display_name == "mixed.npz[b]"
    assert "payload truncated" in str(units[1].error)
    assert np.array_equal(units[0].load().numpy(), np.arange(6.0))  # type: ignore[union-attr]
    assert np.array_equal(units[2].load().numpy(), np.eye(3))  # type: ignore[union-attr]
    listed = []
    with pytest.raises(InputError, match="member 'b': payload truncated") as info:
        listed.extend(record.key for record in iter_records(path))
    assert listed == ["a", "c"] and str(info.value).startswith(str(path))
    assert np.array_equal(read_tensor(path, "c").numpy(), np.eye(3))  # b does not stop c


def test_bad_shard_does_not_hide_the_others(tmp_path: Path) -> None:
    """Shards a, b (corrupt), c: a and c list and load, b is one failed unit naming its file."""
    save_file({"a": torch.ones(2, 2)}, tmp_path / "s1.safetensors")
    (tmp_path / "s2.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    save_file({"c": torch.eye(2)}, tmp_path / "s3.safetensors")
    index = tmp_path / "model.safetensors.index.json"
    weight_map = {"a": "s1.safetensors", "b": "s2.safetensors", "c": "s3.safetensors"}
    index.write_text(json.dumps({"weight_map": weight_map}))
    units = list(iter_units(index))
    assert [type(unit).__name__ for unit in units] == ["TensorRecord", "FailedUnit", "TensorRecord"]
    failed = units[1]
    assert isinstance(failed, FailedUnit) and failed.path == tmp_path / "s2.safetensors"
    assert failed.source == index and not failed.whole_file
    assert "not valid JSON" in str(failed.error) and "s2.safetensors" in str(failed.error)
    assert torch.equal(units[2].load(), torch.eye(2))  # type: ignore[union-attr]
    listed = []
    with pytest.raises(InputError, match="shard s2.safetensors: invalid safetensors") as info:
        listed.extend(record.key for record in iter_records(index))
    assert listed == ["a", "c"] and str(info.value).startswith(str(index))


def test_missing_shard_is_one_failed_unit(tmp_path: Path) -> None:
    save_file({"a": torch.ones(2, 2)}, tmp_path / "s1.safetensors")
    save_file({"c": torch.eye(2)}, tmp_path / "s3.safetensors")
    index = tmp_path / "model.safetensors.index.json"
    weight_map = {"a": "s1.safetensors", "b": "s2.safetensors", "c": "s3.safetensors"}
    index.write_text(json.dumps({"weight_map": weight_map}))
    units = list(iter_units(index))
    assert [unit.key for unit in units] == ["a", None, "c"]
    assert isinstance(units[1], FailedUnit) and "s2.safetensors" in str(units[1].error)
    assert "missing" in str(units[1].error)


def test_find_record_reads_only_the_shard_holding_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_file({"a": torch.ones(2, 2)}, tmp_path / "s1.safetensors")
    (tmp_path / "s2.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{]")
    save_file({"c": torch.eye(2)}, tmp_path / "s3.safetensors")
    index = tmp_path / "model.safetensors.index.json"
    weight_map = {"a": "s1.safetensors", "b": "s2.safetensors", "c": "s3.safetensors"}
    index.write_text(json.dumps({"weight_map": weight_map}))
    opened: list[str] = []
    real_open = open

    def spy_open(file: object, *args: object, **kwargs: object) -> object:
        opened.append(Path(str(file)).name)
        return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr("builtins.open", spy_open)
    record = find_record(index, "c")
    assert torch.equal(record.load(), torch.eye(2))
    assert "s3.safetensors" in opened
    assert not {"s1.safetensors", "s2.safetensors"} & set(opened), opened
    with pytest.raises(InputError, match="s2.safetensors"):
        find_record(index, "b")
    with pytest.raises(InputError, match="no tensor named 'zz'"):
        find_record(index, "zz")


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


#: Side of the matrix timed against the estimate: large enough that LAPACK's time dominates
#: the call overhead, small enough for a test (about 0.1 s).
RATE_CHECK_SIDE = 600
#: Timed repetitions; the fastest is kept, so that another process on the machine does not
#: make the measurement slower than LAPACK is.
RATE_CHECK_REPEATS = 3


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_svd_time_estimate_errs_on_the_long_side(dtype: torch.dtype) -> None:
    import time

    side = RATE_CHECK_SIDE
    matrix = torch.randn(side, side, dtype=dtype, generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the estimate is for one core
    try:
        fastest = float("inf")
        for _ in range(RATE_CHECK_REPEATS):
            start = time.perf_counter()
            torch.linalg.svdvals(matrix)
            fastest = min(fastest, time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    estimate = limits_module.estimated_svd_seconds(side, side, is_complex=dtype.is_complex)
    assert estimate == side**3 * (4 if dtype.is_complex else 1) / limits_module.SVD_RATE
    assert fastest < estimate, (fastest, estimate)


def test_svd_time_estimate_is_symmetric_and_exact_in_its_formula() -> None:
    estimate = limits_module.estimated_svd_seconds
    assert estimate(3000, 200) == estimate(200, 3000) == 3000 * 200 * 200 / limits_module.SVD_RATE
    assert limits_module.DEFAULT_MAX_TIME == 600.0
