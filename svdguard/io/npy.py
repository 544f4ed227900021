"""The .npy format: a header parsed here (never executed), a payload read into the tensor.

Format (numpy.lib.format): magic ``\\x93NUMPY``, version (major, minor), a
little-endian header length (uint16 for 1.0, uint32 for 2.0/3.0), then a
Python dict literal ``{'descr': ..., 'fortran_order': ..., 'shape': ...}``
(latin-1; utf-8 for 3.0), then the raw array bytes. The literal is read with
``ast.literal_eval``, which evaluates literals only; an object dtype is refused
because its payload is a pickle.
"""

from __future__ import annotations

import ast
import struct
import warnings
from dataclasses import dataclass
from io import BufferedReader
from pathlib import Path

import numpy as np
import torch

from svdguard.errors import InputError, ResourceLimitError, UnsafeInputError
from svdguard.io.dtypes import numpy_dtype_name, torch_dtype
from svdguard.io.limits import MAX_NPY_HEADER_BYTES, element_count
from svdguard.io.payload import ByteStream, numpy_bytes_to_tensor, read_exact
from svdguard.io.records import TensorRecord, error_key

MAGIC = b"\x93NUMPY"
_LENGTH_FORMATS = {1: "<H", 2: "<I", 3: "<I"}


@dataclass(frozen=True)
class NpyHeader:
    """What a .npy header declares; ``data_offset`` is where the payload starts."""

    dtype: np.dtype | None  # None when the descr is not a dtype numpy knows
    dtype_name: str
    shape: tuple[int, ...]
    fortran_order: bool
    data_offset: int

    @property
    def nbytes(self) -> int:
        itemsize = 0 if self.dtype is None else self.dtype.itemsize
        return element_count(self.shape) * itemsize


def _bad(message: str, path: str | Path, key: str | None) -> InputError:
    return InputError(f"not a valid .npy array: {message}", path=path, key=error_key(key))


def _read_bytes(
    stream: ByteStream, count: int, what: str, path: str | Path, key: str | None
) -> bytes:
    data = stream.read(count)
    if len(data) != count:
        raise _bad(f"the file ends inside the {what} (truncated)", path, key)
    return data


def read_header(stream: ByteStream, *, path: str | Path, key: str | None = None) -> NpyHeader:
    """Parse a .npy header from ``stream`` (positioned at its start); InputError if malformed."""
    magic = stream.read(len(MAGIC))
    if magic != MAGIC:
        if not magic:
            raise _bad("the file is empty", path, key)
        raise _bad(f"bad magic bytes {magic!r} (expected {MAGIC!r})", path, key)
    major, minor = _read_bytes(stream, 2, "version", path, key)
    if major not in _LENGTH_FORMATS or minor != 0:
        raise _bad(
            f"unsupported format version {major}.{minor} (1.0, 2.0 and 3.0 are read)", path, key
        )
    length_format = _LENGTH_FORMATS[major]
    length_bytes = _read_bytes(stream, struct.calcsize(length_format), "header length", path, key)
    (header_length,) = struct.unpack(length_format, length_bytes)
    if header_length > MAX_NPY_HEADER_BYTES:
        raise ResourceLimitError(
            f".npy header length {header_length:,} bytes exceeds the limit of "
            f"{MAX_NPY_HEADER_BYTES:,} (a corrupt or hostile file)",
            path=path,
            key=error_key(key),
        )
    raw = _read_bytes(stream, header_length, "header", path, key)
    try:
        text = raw.decode("utf-8" if major == 3 else "latin-1")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "invalid escape sequence" from the parser
            fields = ast.literal_eval(text)
    except (UnicodeDecodeError, ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise _bad("the header is not a Python dict literal", path, key) from None
    if not isinstance(fields, dict) or set(fields) != {"descr", "fortran_order", "shape"}:
        raise _bad("the header must be a dict with keys descr, fortran_order, shape", path, key)
    shape = fields["shape"]
    if not isinstance(shape, tuple) or not all(
        isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in shape
    ):
        raise _bad(f"shape {shape!r} is not a tuple of non-negative integers", path, key)
    fortran_order = fields["fortran_order"]
    if not isinstance(fortran_order, bool):
        raise _bad(f"fortran_order {fortran_order!r} is not True/False", path, key)
    descr = fields["descr"]
    try:
        parsed: np.dtype = np.lib.format.descr_to_dtype(descr)
        dtype: np.dtype | None = parsed
        name = numpy_dtype_name(parsed)
    except (TypeError, ValueError, KeyError, IndexError, SyntaxError, RecursionError):
        dtype, name = None, str(descr)[:40]
    if dtype is not None and dtype.subdtype is not None:
        # numpy folds a sub-array dtype into the shape: ('<f4', (3,)) is 3 more trailing dims.
        base, sub_shape = dtype.subdtype
        dtype, name, shape = base, numpy_dtype_name(base), shape + tuple(sub_shape)
    return NpyHeader(dtype, name, shape, fortran_order, stream.tell())


def check_loadable(header: NpyHeader, *, path: str | Path, key: str | None) -> np.dtype:
    """The numpy dtype of a payload svdguard will read; refuse object, text and structured data."""
    dtype = header.dtype
    if dtype is None:
        raise InputError(
            f"dtype {header.dtype_name!r} is not a numpy dtype; "
            "re-save the array as float32/float64",
            path=path,
            key=error_key(key),
        )
    if dtype.hasobject:
        raise UnsafeInputError(
            "object arrays are stored as pickles, which can run code when loaded, so they are "
            "refused; re-save the array with a numeric dtype (e.g. arr.astype(np.float64))",
            path=path,
            key=error_key(key),
        )
    if (
        dtype.fields is not None
        or dtype.kind not in "biufc"
        or torch_dtype(header.dtype_name) is None
    ):
        raise InputError(
            f"dtype {header.dtype_name!r} is not a numeric dtype torch can hold; "
            "re-save the array as float32/float64",
            path=path,
            key=error_key(key),
        )
    return dtype


def read_payload(
    stream: ByteStream,
    header: NpyHeader,
    *,
    path: str | Path,
    key: str | None,
    available: int | None,
) -> torch.Tensor:
    """Read the payload after ``header``; ``available``: bytes left in the stream, if known."""
    dtype = check_loadable(header, path=path, key=key)
    nbytes = header.nbytes
    if available is not None and available < nbytes:
        raise InputError(
            f"payload truncated: the header declares shape {header.shape} {header.dtype_name} "
            f"({nbytes:,} bytes) but only {available:,} bytes follow; re-save the file",
            path=path,
            key=error_key(key),
        )
    buffer = read_exact(stream, nbytes, path=path, key=error_key(key), what="payload")
    try:
        return numpy_bytes_to_tensor(
            buffer, dtype, header.shape, fortran_order=header.fortran_order
        )
    except (ValueError, TypeError, RuntimeError) as err:  # numpy/torch refuse the shape
        raise InputError(
            f"cannot hold shape {header.shape} {header.dtype_name}: {err}",
            path=path,
            key=error_key(key),
        ) from None


def _open(path: Path) -> BufferedReader:
    try:
        return open(path, "rb")  # noqa: SIM115 - closed by the callers' with-blocks
    except OSError as err:
        raise InputError(f"cannot open: {err.strerror or err}", path=path) from None


def iter_npy_records(path: Path, *, max_elements: int) -> list[TensorRecord]:
    """The one record of a .npy file (header parsed now, payload read by load())."""
    with _open(path) as stream:
        header = read_header(stream, path=path)
    return [TensorRecord(path, "", header.shape, header.dtype_name, max_elements, _load_npy)]


def _load_npy(record: TensorRecord) -> torch.Tensor:
    path = record.path
    with _open(path) as stream:
        try:
            header = read_header(stream, path=path)
            size = path.stat().st_size
            return read_payload(
                stream, header, path=path, key="", available=size - header.data_offset
            )
        except OSError as err:
            raise InputError(f"cannot read: {err.strerror or err}", path=path) from None
