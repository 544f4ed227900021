"""svdguard's readers against the reference loaders, on random valid files and their mutations.

For every generated file: whatever svdguard loads, the reference loads to the
identical array (dtype, shape and bytes); whatever the reference refuses,
svdguard refuses (with its own InputError). References: ``numpy.load`` with
``allow_pickle=False`` (.npy, .npz members) and ``safetensors.safe_open``
(.safetensors). svdguard may refuse more (negative dimensions, duplicate
names, members with bytes beyond their header), never less.

The safetensors case is run twice: as shipped, and with the final
``safe_open`` confirmation switched off, so that svdguard's own validation
rules are held to the library's.
"""

from __future__ import annotations

import io
import json
import os
import struct
import tempfile
import zipfile
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import SafetensorError, safe_open

from svdguard.errors import SvdguardError
from svdguard.io import FailedUnit, iter_units
from svdguard.io.safetensors_format import DTYPE_BITS

#: Tensors above this many elements are refused, so a mutated shape cannot allocate much.
MAX_ELEMENTS = 4096
#: A longer hunt: SVDGUARD_FUZZ_EXAMPLES=5000 pytest tests/test_io_differential.py
EXAMPLES = int(os.environ.get("SVDGUARD_FUZZ_EXAMPLES", "0"))
DIFFERENTIAL = settings(
    max_examples=EXAMPLES or 150,
    deadline=timedelta(seconds=5),  # generous for a loaded 2-core runner
    derandomize=not EXAMPLES,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)

NUMPY_DTYPES = ["<f2", "<f4", ">f4", "<f8", ">f8", "<c8", "<c16", "|i1", "<i2", ">i4", "<i8"]
NUMPY_DTYPES += ["|u1", "<u2", "<u4", "<u8", "|b1"]


def _svdguard(path: Path) -> dict[str, torch.Tensor | SvdguardError] | SvdguardError:
    """Every unit of ``path``: key → tensor or the error of its load; the error if the file fails."""
    result: dict[str, torch.Tensor | SvdguardError] = {}
    for unit in iter_units(path, max_elements=MAX_ELEMENTS):
        if isinstance(unit, FailedUnit):
            if unit.whole_file:
                return unit.error
            result[unit.key or ""] = unit.error
            continue
        try:
            result[unit.key] = unit.load()
        except SvdguardError as err:
            result[unit.key] = err
    return result


def _same_as_numpy(tensor: torch.Tensor, reference: np.ndarray) -> bool:
    """Identical dtype, shape and bytes (numpy's bool bytes other than 0/1 read as True)."""
    native = reference.astype(reference.dtype.newbyteorder("="), copy=False)
    if native.dtype == np.bool_:
        native = native.view(np.uint8) != 0
    ours = tensor.numpy()
    return (
        ours.dtype == native.dtype
        and ours.shape == native.shape
        and np.ascontiguousarray(ours).tobytes() == np.ascontiguousarray(native).tobytes()
    )


def _mutate(content: bytes, flips: list[tuple[int, int]], cut: int | None, extra: bytes) -> bytes:
    mutated = bytearray(content)
    for position, value in flips:
        mutated[position % len(mutated)] = value
    if cut is not None:
        mutated = mutated[: cut % (len(mutated) + 1)]
    return bytes(mutated) + extra


flips = st.lists(
    st.tuples(st.integers(min_value=0, max_value=200), st.integers(min_value=0, max_value=255)),
    max_size=3,
)
cuts = st.one_of(st.none(), st.integers(min_value=0, max_value=400))
extras = st.sampled_from([b"", b"", b"\0", b"\0" * 8])
shapes = st.lists(st.integers(min_value=0, max_value=4), max_size=3).map(tuple)


def _array(dtype: str, shape: tuple[int, ...], seed: int, fortran: bool) -> np.ndarray:
    values = np.random.default_rng(seed).standard_normal(shape) * 50
    array = values.astype(np.dtype(dtype)) if dtype != "|b1" else values > 0
    return np.asarray(array, order="F" if fortran else "C")


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@DIFFERENTIAL
@given(
    dtype=st.sampled_from(NUMPY_DTYPES),
    shape=shapes,
    seed=st.integers(min_value=0, max_value=99),
    fortran=st.booleans(),
    flips=flips,
    cut=cuts,
    extra=extras,
)
def test_npy_agrees_with_numpy(
    dtype: str,
    shape: tuple[int, ...],
    seed: int,
    fortran: bool,
    flips: list[tuple[int, int]],
    cut: int | None,
    extra: bytes,
) -> None:
    content = _mutate(_npy(_array(dtype, shape, seed, fortran)), flips, cut, extra)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "x.npy"
        path.write_bytes(content)
        ours = _svdguard(path)
        try:
            reference: np.ndarray | Exception = np.load(path, allow_pickle=False)
        except Exception as err:  # noqa: BLE001 - numpy's refusal takes many forms
            reference = err
    loaded = {} if isinstance(ours, SvdguardError) else ours
    for tensor in loaded.values():
        if isinstance(tensor, torch.Tensor):
            assert isinstance(reference, np.ndarray), f"numpy refuses: {reference!r}"
            assert _same_as_numpy(tensor, reference)
    if not isinstance(reference, np.ndarray):
        assert not any(isinstance(tensor, torch.Tensor) for tensor in loaded.values())


def _npz(arrays: dict[str, np.ndarray], compressed: bool) -> bytes:
    buffer = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        for key, array in arrays.items():
            archive.writestr(f"{key}.npy", _npy(array))
    return buffer.getvalue()


@DIFFERENTIAL
@given(
    dtypes=st.lists(st.sampled_from(NUMPY_DTYPES), min_size=1, max_size=3),
    shape=shapes,
    compressed=st.booleans(),
    flips=st.lists(
        st.tuples(st.integers(min_value=0, max_value=2000), st.integers(0, 255)), max_size=3
    ),
    cut=st.one_of(st.none(), st.integers(min_value=0, max_value=2000)),
)
def test_npz_agrees_with_numpy(
    dtypes: list[str],
    shape: tuple[int, ...],
    compressed: bool,
    flips: list[tuple[int, int]],
    cut: int | None,
) -> None:
    arrays = {f"m{i}": _array(dtype, shape, i, False) for i, dtype in enumerate(dtypes)}
    content = _mutate(_npz(arrays, compressed), flips, cut, b"")
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "x.npz"
        path.write_bytes(content)
        ours = _svdguard(path)
        if isinstance(ours, SvdguardError):
            return
        for key, tensor in ours.items():
            if not isinstance(tensor, torch.Tensor):
                continue
            try:
                with np.load(path, allow_pickle=False) as archive:
                    reference = archive[key]
            except Exception as err:  # noqa: BLE001 - numpy's refusal takes many forms
                raise AssertionError(f"svdguard loads {key!r}, numpy refuses: {err!r}") from None
            assert isinstance(reference, np.ndarray) and _same_as_numpy(tensor, reference), key


# --- safetensors: a valid layout, then structured and byte-level damage ------------------------

SAFETENSORS_CODES = sorted(DTYPE_BITS)

entries = st.lists(st.tuples(st.sampled_from(SAFETENSORS_CODES), shapes), min_size=0, max_size=3)
damage = st.fixed_dictionaries(
    {
        "offset_shift": st.lists(st.integers(min_value=-9, max_value=9), max_size=3),
        "swap_code": st.one_of(st.none(), st.sampled_from([*SAFETENSORS_CODES, "F7", "f32"])),
        "data_delta": st.sampled_from([0, 0, 0, -1, 1, 8]),
        "metadata": st.sampled_from([None, {"a": "b"}, {"a": 1}, "x", "null"]),
        "duplicate": st.booleans(),
        "reorder": st.booleans(),
    }
)


def _safetensors(
    tensors: list[tuple[str, tuple[int, ...]]], hurt: dict[str, object], seed: int
) -> bytes:
    header: dict[str, object] = {}
    position = 0
    for index, (code, shape) in enumerate(tensors):
        count = int(np.prod(shape)) if shape else 1
        bits = count * DTYPE_BITS[code]
        if bits % 8:
            shape, bits = (*shape, 2), bits * 2  # a sub-byte dtype needs whole bytes
        size = bits // 8
        header[f"t{index}"] = {
            "dtype": code,
            "shape": list(shape),
            "data_offsets": [position, position + size],
        }
        position += size
    shifts = list(hurt["offset_shift"])  # type: ignore[call-overload]
    for name, shift in zip(list(header), shifts, strict=False):
        entry = header[name]
        assert isinstance(entry, dict)
        entry["data_offsets"] = [max(0, entry["data_offsets"][0] + shift), entry["data_offsets"][1]]
    if hurt["swap_code"] is not None and header:
        first = header[next(iter(header))]
        assert isinstance(first, dict)
        first["dtype"] = hurt["swap_code"]
    metadata = hurt["metadata"]
    if metadata == "null":
        header["__metadata__"] = None
    elif metadata is not None:
        header["__metadata__"] = metadata
    if hurt["reorder"]:
        header = dict(reversed(list(header.items())))
    text = json.dumps(header)
    if hurt["duplicate"] and len(header) > 1 and "t0" in header:
        copy = json.dumps({"t0": header["t0"]})[1:-1]
        text = "{" + copy + ", " + text[1:]
    raw = text.encode()
    data = np.random.default_rng(seed).integers(0, 256, position, dtype=np.uint8).tobytes()
    delta = int(hurt["data_delta"])  # type: ignore[call-overload]
    data = data[: len(data) + delta] if delta < 0 else data + b"\x3c" * delta
    return struct.pack("<Q", len(raw)) + raw + data


def _reference(path: Path) -> dict[str, torch.Tensor | Exception] | Exception:
    try:
        with safe_open(str(path), framework="pt") as handle:
            loaded: dict[str, torch.Tensor | Exception] = {}
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                try:
                    loaded[key] = handle.get_tensor(key)
                except Exception as err:  # noqa: BLE001 - a dtype torch lacks, e.g. F6
                    loaded[key] = err
            return loaded
    except SafetensorError as err:
        return err


def _check_safetensors(content: bytes, with_library: bool) -> None:
    confirm = (
        nullcontext()
        if with_library
        else mock.patch("svdguard.io.safetensors_format._confirm_with_library")
    )
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "x.safetensors"
        path.write_bytes(content)
        with confirm:
            ours = _svdguard(path)
        reference = _reference(path)
    if isinstance(reference, Exception):
        assert isinstance(ours, SvdguardError), f"safe_open refuses ({reference}); svdguard lists"
        return
    if isinstance(ours, SvdguardError):
        return  # stricter than the library (e.g. a duplicated name): allowed
    assert set(ours) == set(reference)
    for key, tensor in ours.items():
        if isinstance(tensor, torch.Tensor):
            expected = reference[key]
            assert isinstance(expected, torch.Tensor), key
            assert tensor.dtype == expected.dtype and tensor.shape == expected.shape, key
            ours_bytes = tensor.reshape(-1).view(torch.uint8)
            reference_bytes = expected.contiguous().reshape(-1).view(torch.uint8)
            if expected.dtype == torch.bool:  # a byte other than 0/1 is True, stored as 1
                reference_bytes = (reference_bytes != 0).to(torch.uint8)
            assert torch.equal(ours_bytes, reference_bytes), key


@DIFFERENTIAL
@given(tensors=entries, hurt=damage, seed=st.integers(0, 99), with_library=st.booleans())
def test_safetensors_agrees_with_safe_open(
    tensors: list[tuple[str, tuple[int, ...]]],
    hurt: dict[str, object],
    seed: int,
    with_library: bool,
) -> None:
    _check_safetensors(_safetensors(tensors, hurt, seed), with_library)


@DIFFERENTIAL
@given(
    tensors=entries,
    seed=st.integers(0, 99),
    flips=flips,
    cut=cuts,
    extra=extras,
    with_library=st.booleans(),
)
def test_safetensors_bytes_agree_with_safe_open(
    tensors: list[tuple[str, tuple[int, ...]]],
    seed: int,
    flips: list[tuple[int, int]],
    cut: int | None,
    extra: bytes,
    with_library: bool,
) -> None:
    unhurt = {
        "offset_shift": [],
        "swap_code": None,
        "data_delta": 0,
        "metadata": None,
        "duplicate": False,
        "reorder": False,
    }
    content = _mutate(_safetensors(tensors, unhurt, seed), flips, cut, extra)
    _check_safetensors(content, with_library)
