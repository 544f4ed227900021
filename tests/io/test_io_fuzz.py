"""Fuzzing the loaders: mutated or random files either load consistently or raise an svdguard error.

Never another exception type, never a hang (each example has a deadline), never an
allocation beyond ``FUZZ_MAX_ELEMENTS`` (mutated headers often declare huge shapes).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
from corpus.make_corpus import npy_bytes, safetensors_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as safetensors_save

from svdguard.errors import SvdguardError
from svdguard.io import iter_records
from svdguard.io.dtypes import SAFETENSORS_DTYPES

#: Records above this many elements are refused, so a mutated shape cannot allocate much.
FUZZ_MAX_ELEMENTS = 10_000
#: A longer, randomised hunt: SVDGUARD_FUZZ_EXAMPLES=20000 pytest tests/test_io_fuzz.py
FUZZ_EXAMPLES = int(os.environ.get("SVDGUARD_FUZZ_EXAMPLES", "0"))
FUZZ_SETTINGS = settings(
    max_examples=FUZZ_EXAMPLES or 120,
    deadline=timedelta(seconds=5),  # generous for a loaded 2-core runner; a hang is far beyond
    derandomize=not FUZZ_EXAMPLES,  # by default the same examples on every run (reproducible CI)
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _npz(arrays: dict[str, np.ndarray], compression: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for key, array in arrays.items():
            archive.writestr(f"{key}.npy", _npy(array))
    return buffer.getvalue()


def _torch_save(state: dict[str, object]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


ORIGINALS: dict[str, torch.Tensor] = {
    "w": torch.arange(12, dtype=torch.float32).reshape(3, 4),
    "b": torch.linspace(-1, 1, 4, dtype=torch.float64),
}
FIXTURES: dict[str, bytes] = {
    ".safetensors": safetensors_save(
        {"w": ORIGINALS["w"], "b": ORIGINALS["b"], "h": torch.ones(2, 2, dtype=torch.bfloat16)}
    ),
    ".npy": _npy(np.asarray(ORIGINALS["w"].numpy(), order="F")),
    ".npz": _npz({key: t.numpy() for key, t in ORIGINALS.items()}, zipfile.ZIP_STORED),
    "deflated.npz": _npz({key: t.numpy() for key, t in ORIGINALS.items()}, zipfile.ZIP_DEFLATED),
    ".pt": _torch_save({"w": ORIGINALS["w"], "nested": {"b": ORIGINALS["b"]}, "step": 3}),
}


def _load_all(content: bytes, suffix: str) -> dict[str, tuple[str, tuple[int, ...], torch.Tensor]]:
    """Write ``content``, list it and load every record; record → (dtype, shape, tensor)."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / f"fuzz{suffix}"
        path.write_bytes(content)
        loaded = {}
        for record in iter_records(path, max_elements=FUZZ_MAX_ELEMENTS):
            try:
                tensor = record.load()
            except SvdguardError:
                continue  # one bad record; the others must still load
            loaded[record.key] = (record.dtype, record.shape, tensor)
        return loaded


def _check_consistent(loaded: dict[str, tuple[str, tuple[int, ...], torch.Tensor]]) -> None:
    for dtype, shape, tensor in loaded.values():
        assert tuple(tensor.shape) == shape
        assert str(tensor.dtype) == f"torch.{dtype}"


mutations = st.lists(
    st.tuples(st.integers(min_value=0, max_value=2**16), st.integers(min_value=0, max_value=255)),
    min_size=1,
    max_size=6,
)


@FUZZ_SETTINGS
@given(
    fixture=st.sampled_from(sorted(FIXTURES)),
    changes=mutations,
    cut=st.one_of(st.none(), st.integers(min_value=0, max_value=2**12)),
)
def test_mutated_bytes(fixture: str, changes: list[tuple[int, int]], cut: int | None) -> None:
    original = FIXTURES[fixture]
    content = bytearray(original)
    for position, value in changes:
        content[position % len(content)] = value
    if cut is not None:
        content = content[: cut % (len(content) + 1)]
    suffix = ".npz" if fixture.endswith(".npz") else fixture
    original_keys = {"nested.b": "b"} if suffix == ".pt" else {}
    try:
        loaded = _load_all(bytes(content), suffix)
    except SvdguardError:
        return
    _check_consistent(loaded)
    if bytes(content) == original or suffix == ".npz":
        # Unchanged files load exactly; .npz members carry a CRC-32, so a member that
        # loads under an original key holds the original values.
        for key, (_, _, tensor) in loaded.items():
            name = original_keys.get(key, key)
            if name in ORIGINALS and tensor.dtype == ORIGINALS[name].dtype:
                assert torch.equal(tensor, ORIGINALS[name]), key


dims = st.one_of(
    st.integers(min_value=0, max_value=5),
    st.integers(min_value=-3, max_value=-1),
    st.sampled_from([10**6, 2**31, 2**63, 10**30]),
)
offsets = st.one_of(
    st.integers(min_value=0, max_value=96), st.sampled_from([-1, 2**63, 10**20, 1.5, "0", None])
)
entries = st.fixed_dictionaries(
    {
        "dtype": st.one_of(st.sampled_from(sorted(SAFETENSORS_DTYPES)), st.text(max_size=4)),
        "shape": st.one_of(st.lists(dims, max_size=3), st.just("2x2"), st.none()),
        "data_offsets": st.one_of(st.lists(offsets, min_size=0, max_size=3), st.none()),
    }
)


@FUZZ_SETTINGS
@given(
    header=st.dictionaries(st.text(max_size=3), entries, max_size=3),
    data=st.binary(max_size=96),
    length_shift=st.sampled_from([0, 0, 0, -1, 1, 2**40]),
)
def test_random_safetensors_headers(
    header: dict[str, object], data: bytes, length_shift: int
) -> None:
    raw = json.dumps(header).encode()
    content = safetensors_bytes(raw, data, length=len(raw) + length_shift)
    try:
        loaded = _load_all(content, ".safetensors")
    except SvdguardError:
        return
    _check_consistent(loaded)


npy_shapes = st.one_of(
    st.tuples(), st.lists(dims, max_size=3).map(tuple), st.just([2, 2]), st.just("(2, 2)")
)


@FUZZ_SETTINGS
@given(
    descr=st.sampled_from(["<f8", ">f4", "|b1", "<c16", "<U3", "|O", "|V4", "<f16", "x", "<m8"]),
    fortran_order=st.sampled_from([True, False, 1, None]),
    shape=npy_shapes,
    data=st.binary(max_size=128),
    version=st.sampled_from([1, 2]),
)
def test_random_npy_headers(
    descr: str, fortran_order: object, shape: object, data: bytes, version: int
) -> None:
    literal = f"{{'descr': {descr!r}, 'fortran_order': {fortran_order!r}, 'shape': {shape!r}, }}"
    content = npy_bytes(literal, data, version=version)
    try:
        loaded = _load_all(content, ".npy")
    except SvdguardError:
        return
    _check_consistent(loaded)
    if not loaded:
        return  # the one record raised an svdguard error from load()
    ((_, _, tensor),) = loaded.values()
    expected = np.frombuffer(data, dtype=np.dtype(descr), count=tensor.numel())
    expected = expected.reshape(tensor.shape, order="F" if fortran_order else "C")
    assert np.array_equal(tensor.numpy(), expected, equal_nan=expected.dtype.kind in "fc")
