"""The .safetensors format, with the header validated here before any payload is touched.

Layout: an 8-byte little-endian unsigned header length N, N bytes of UTF-8
JSON ``{name: {"dtype": code, "shape": [..], "data_offsets": [begin, end]},
"__metadata__": {str: str}}``, then the data buffer; offsets are relative to
the buffer's start. The parse is our own (rather than ``safe_open``) so that
every defect maps to a message naming the file and tensor, and so that one
bad tensor does not hide the others: a defect of the header as a whole raises
when the file is listed; a tensor whose dtype is unknown or whose bytes lie
past the end of the file raises only from its own load().
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from svdguard.errors import InputError, ResourceLimitError
from svdguard.io import dtypes
from svdguard.io.limits import MAX_SAFETENSORS_HEADER_BYTES, element_count
from svdguard.io.payload import read_exact, torch_bytes_to_tensor
from svdguard.io.records import TensorRecord

_LENGTH = struct.Struct("<Q")
METADATA_KEY = "__metadata__"


@dataclass(frozen=True)
class SafetensorsEntry:
    """One tensor of a safetensors header; offsets are absolute file positions."""

    key: str
    code: str  # the safetensors dtype code, e.g. "BF16"
    dtype: str  # torch's name, or the raw code when the code is unknown
    shape: tuple[int, ...]
    begin: int
    end: int


def _bad(message: str, path: Path, key: str | None = None) -> InputError:
    return InputError(f"invalid safetensors header: {message}", path=path, key=key)


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_entry(key: str, entry: object, data_start: int, path: Path) -> SafetensorsEntry:
    if not isinstance(entry, dict):
        raise _bad(f"the entry is not a JSON object (got {_json_type(entry)})", path, key)
    code, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(code, str):
        raise _bad(f"dtype {code!r} is not a string", path, key)
    if not isinstance(shape, list) or not all(_is_int(dim) and dim >= 0 for dim in shape):
        raise _bad(f"shape {shape!r} is not a list of non-negative integers", path, key)
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(offset) and offset >= 0 for offset in offsets)
    ):
        raise _bad(f"data_offsets {offsets!r} is not a pair of non-negative integers", path, key)
    begin, end = offsets
    if end < begin:
        raise _bad(f"data_offsets [{begin}, {end}] end before they begin", path, key)
    name = dtypes.SAFETENSORS_DTYPES.get(code, code)
    itemsize = dtypes.itemsize(name) if code in dtypes.SAFETENSORS_DTYPES else None
    if itemsize is not None and element_count(shape) * itemsize != end - begin:
        raise _bad(
            f"shape {tuple(shape)} {code} needs {element_count(shape) * itemsize:,} bytes but "
            f"data_offsets [{begin}, {end}] hold {end - begin:,}",
            path,
            key,
        )
    return SafetensorsEntry(key, code, name, tuple(shape), data_start + begin, data_start + end)


def read_header(path: Path) -> list[SafetensorsEntry]:
    """Every tensor entry of the header, in file order; InputError if the header is malformed."""
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
                    f"{file_size:,}-byte file (truncated or not a safetensors file)",
                    path,
                )
            raw = stream.read(length)
    except OSError as err:
        raise InputError(f"cannot read: {err.strerror or err}", path=path) from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise _bad("the header is not valid UTF-8 JSON", path) from None
    if not isinstance(header, dict):
        raise _bad(f"the header is not a JSON object (got {_json_type(header)})", path)
    data_start = _LENGTH.size + length
    entries = [
        _parse_entry(key, entry, data_start, path)
        for key, entry in header.items()
        if key != METADATA_KEY
    ]
    entries.sort(key=lambda entry: (entry.begin, entry.end))
    for before, after in zip(entries[:-1], entries[1:], strict=True):
        if after.begin < before.end:
            raise _bad(
                f"tensors {before.key!r} and {after.key!r} overlap (data_offsets intersect)", path
            )
    return entries


def iter_safetensors_records(path: Path, *, max_elements: int) -> list[TensorRecord]:
    """One record per tensor, in file order."""
    return [
        TensorRecord(
            path, entry.key, entry.shape, entry.dtype, max_elements, partial(_load_entry, entry)
        )
        for entry in read_header(path)
    ]


def _load_entry(entry: SafetensorsEntry, record: TensorRecord) -> torch.Tensor:
    path, key = record.path, record.key
    known = entry.code in dtypes.SAFETENSORS_DTYPES
    dtype = dtypes.torch_dtype(entry.dtype) if known else None
    if dtype is None:
        readable = ", ".join(
            code for code, name in dtypes.SAFETENSORS_DTYPES.items() if dtypes.torch_dtype(name)
        )
        raise InputError(
            f"unknown dtype {entry.code!r} (svdguard reads {readable}); convert the tensor "
            "to a supported dtype",
            path=path,
            key=key,
        )
    try:
        with open(path, "rb") as stream:
            file_size = stream.seek(0, 2)
            if entry.end > file_size:
                raise InputError(
                    f"payload truncated: data_offsets end at byte {entry.end:,} of a "
                    f"{file_size:,}-byte file; the file was cut short (re-download or re-save it)",
                    path=path,
                    key=key,
                )
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
