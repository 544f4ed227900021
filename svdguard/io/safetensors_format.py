"""The .safetensors format, validated by the rules of ``safetensors.safe_open`` before any payload.

Layout: an 8-byte little-endian unsigned header length N, N bytes of UTF-8
JSON ``{name: {"dtype": code, "shape": [..], "data_offsets": [begin, end]},
"__metadata__": {str: str} | null}``, then the data section; offsets are
relative to its start. A file is valid when (the rules of the safetensors
library, checked here in this order so that each defect gets its own message):

* N ≤ 100 MB and 8 + N ≤ the file's size;
* the header is UTF-8 JSON (no NaN literal, no lone surrogate, no integer
  beyond 2⁶⁴ − 1), an object, ``__metadata__`` absent, null or str → str;
* every entry has a known dtype code, a shape and a pair of offsets of
  non-negative integers;
* sorted by offsets, the entries tile the data section: each begins where the
  one before ended (no gap, no overlap), spans exactly ∏shape × bits / 8
  bytes, and the last ends at the end of the file.

svdguard refuses one thing more than the library: a name that appears twice in
the header (the library keeps the last). A file that breaks a rule is one
failed unit as a whole: nothing in it is listed. Then ``safe_open`` itself
opens the file, so a rule it adds in a later version is still honoured. A
valid file whose tensor has a dtype svdguard cannot hold (``F4``, ``F6_*``)
lists that tensor, and only its ``load()`` fails.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from svdguard.errors import InputError, ResourceLimitError
from svdguard.io import dtypes
from svdguard.io.limits import MAX_SAFETENSORS_HEADER_BYTES
from svdguard.io.records import TensorRecord
from svdguard.io.strict_json import JsonProblem, parse_json

if TYPE_CHECKING:
    import torch

_LENGTH = struct.Struct("<Q")
METADATA_KEY = "__metadata__"
#: The largest value a usize of the safetensors library holds (offsets, dims, byte counts).
USIZE_MAX = 2**64 - 1

#: Bits per element of every dtype code the safetensors format defines (its ``Dtype`` enum).
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}


@dataclass(frozen=True)
class SafetensorsEntry:
    """One tensor of a safetensors header; offsets are absolute file positions."""

    key: str
    code: str  # the safetensors dtype code, e.g. "BF16"
    dtype: str  # torch's name, or the code when svdguard cannot hold the dtype
    shape: tuple[int, ...]
    begin: int
    end: int


def _bad(message: str, path: Path) -> InputError:
    return InputError(f"invalid safetensors file: {message}; re-save or re-download it", path=path)


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _is_usize(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= USIZE_MAX


def _byte_span(key: str, code: str, shape: list[int], path: Path) -> int:
    """∏shape × bits / 8 with the library's checks: no usize overflow, whole bytes."""
    count = 1
    for dim in shape:  # in order, as the library multiplies: an overflow before a 0 counts
        count *= dim
        if count > USIZE_MAX:
            raise _bad(f"tensor {key!r}: shape {shape} has more elements than a usize holds", path)
    bits = count * DTYPE_BITS[code]
    if bits > USIZE_MAX:
        raise _bad(f"tensor {key!r}: shape {shape} {code} needs more bits than a usize holds", path)
    if bits % 8:
        raise _bad(f"tensor {key!r}: shape {shape} {code} does not fill whole bytes", path)
    return bits // 8


def _parse_entry(key: str, entry: object, path: Path) -> tuple[str, str, list[int], int, int]:
    if not isinstance(entry, dict):
        raise _bad(f"tensor {key!r}: the entry is a JSON {_json_type(entry)}, not an object", path)
    code, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(code, str) or code not in DTYPE_BITS:
        raise _bad(
            f"tensor {key!r}: unknown dtype {code!r} (the format defines {', '.join(DTYPE_BITS)})",
            path,
        )
    if not isinstance(shape, list) or not all(_is_usize(dim) for dim in shape):
        raise _bad(f"tensor {key!r}: shape {shape!r} is not a list of non-negative integers", path)
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_usize, offsets)):
        raise _bad(
            f"tensor {key!r}: data_offsets {offsets!r} is not a pair of non-negative integers",
            path,
        )
    return key, code, shape, offsets[0], offsets[1]


def _read_raw_header(path: Path) -> tuple[bytes, int]:
    """The header's bytes and the file's size; InputError for a bad length prefix."""
    try:
        with open(path, "rb") as stream:
            file_size = stream.seek(0, 2)
            stream.seek(0)
            prefix = stream.read(_LENGTH.size)
            if len(prefix) < _LENGTH.size:
                raise _bad(
                    f"the file has {len(prefix)} bytes, fewer than the 8-byte length prefix", path
                )
            (length,) = _LENGTH.unpack(prefix)
            if length > MAX_SAFETENSORS_HEADER_BYTES:
                raise ResourceLimitError(
                    f"header length {length:,} bytes exceeds the limit of "
                    f"{MAX_SAFETENSORS_HEADER_BYTES:,} (a corrupt or hostile file)",
                    path=path,
                )
            if _LENGTH.size + length > file_size:
                raise _bad(
                    f"header length {length:,} bytes runs past the end of the "
                    f"{file_size:,}-byte file (truncated, or not a safetensors file)",
                    path,
                )
            return stream.read(length), file_size
    except OSError as err:
        raise InputError(f"cannot read: {err.strerror or err}", path=path) from None


def _check_metadata(metadata: object, path: Path) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _bad(f"{METADATA_KEY} must map strings to strings (got {metadata!r:.60})", path)


def read_header(path: Path) -> list[SafetensorsEntry]:
    """Every tensor entry, in file order; InputError (naming the file) if the file is invalid."""
    raw, file_size = _read_raw_header(path)
    try:
        header = parse_json(raw)
    except JsonProblem as problem:
        raise _bad(f"the header is {problem}", path) from None
    if not isinstance(header, dict):
        raise _bad(f"the header is a JSON {_json_type(header)}, not an object", path)
    _check_metadata(header.get(METADATA_KEY), path)
    parsed = [
        _parse_entry(key, entry, path) for key, entry in header.items() if key != METADATA_KEY
    ]
    parsed.sort(key=lambda item: (item[3], item[4]))
    data_start = _LENGTH.size + len(raw)
    entries = []
    position = 0
    for key, code, shape, begin, end in parsed:
        if begin != position or end < begin:
            if end < begin:
                defect = "ends before it begins"
            else:
                defect = "overlaps the tensor before it" if begin < position else "leaves a gap"
            raise _bad(
                f"tensor {key!r}: data_offsets [{begin}, {end}] {defect} (the data section "
                f"must be tiled without gaps; the previous tensor ends at {position})",
                path,
            )
        span = _byte_span(key, code, shape, path)
        if end - begin != span:
            raise _bad(
                f"tensor {key!r}: shape {tuple(shape)} {code} needs {span:,} bytes but "
                f"data_offsets [{begin}, {end}] hold {end - begin:,}",
                path,
            )
        name = dtypes.SAFETENSORS_DTYPES.get(code, code)
        entries.append(
            SafetensorsEntry(key, code, name, tuple(shape), data_start + begin, data_start + end)
        )
        position = end
    if data_start + position != file_size:
        found = file_size - data_start
        cut = "is cut short" if found < position else "has bytes no tensor claims"
        raise _bad(
            f"the data section {cut}: the header's tensors span {position:,} bytes, "
            f"the file holds {found:,} after the header",
            path,
        )
    _confirm_with_library(path)
    return entries


def _confirm_with_library(path: Path) -> None:
    """Let ``safetensors.safe_open`` open the file too: a rule it adds later still applies."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy"):
            pass
    except SafetensorError as err:
        raise _bad(f"the safetensors library refuses it ({err})", path) from None
    except OSError as err:
        raise InputError(f"cannot read: {err.strerror or err}", path=path) from None


def iter_safetensors_records(path: Path, *, max_elements: int) -> list[TensorRecord]:
    """One record per tensor, in file order (the file validated as a whole first)."""
    return [
        TensorRecord(
            path, entry.key, entry.shape, entry.dtype, max_elements, partial(_load_entry, entry)
        )
        for entry in read_header(path)
    ]


def _load_entry(entry: SafetensorsEntry, record: TensorRecord) -> torch.Tensor:
    from svdguard.io.payload import read_exact, torch_bytes_to_tensor

    path, key = record.path, record.key
    known = entry.code in dtypes.SAFETENSORS_DTYPES
    dtype = dtypes.torch_dtype(entry.dtype) if known else None
    if dtype is None:
        readable = ", ".join(
            code for code, name in dtypes.SAFETENSORS_DTYPES.items() if dtypes.torch_dtype(name)
        )
        raise InputError(
            f"svdguard cannot hold dtype {entry.code!r} (it reads {readable}); convert the "
            "tensor to a supported dtype",
            path=path,
            key=key,
        )
    try:
        with open(path, "rb") as stream:
            stream.seek(entry.begin)
            buffer = read_exact(stream, entry.end - entry.begin, path=path, key=key, what="payload")
    except OSError as err:
        raise InputError(f"cannot read: {err.strerror or err}", path=path, key=key) from None
    try:
        return torch_bytes_to_tensor(buffer, dtype, entry.shape)
    except RuntimeError as err:  # torch refuses the shape
        raise InputError(
            f"cannot hold shape {entry.shape} {entry.dtype}: {err}", path=path, key=key
        ) from None
