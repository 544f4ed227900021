"""The .npy format, parsed by ``numpy.lib.format`` (never executed), the payload read into a tensor.

Format: magic ``\\x93NUMPY``, version (major, minor), a little-endian header
length (uint16 for 1.0, uint32 for 2.0/3.0), then a Python dict literal
``{'descr': ..., 'fortran_order': ..., 'shape': ...}`` (latin-1; utf-8 for
3.0), then the raw array bytes. numpy's own header reader
(``read_magic``, ``read_array_header_1_0`` / ``_2_0``, with numpy's default
``max_header_size``) decides what a valid header is, so svdguard accepts no
file ``numpy.load(allow_pickle=False)`` refuses; when numpy refuses, the
header is examined again here only to say *why* (see :func:`_explain`).
svdguard is stricter in a few places: negative or boolean dimensions, sub-array
dtypes, and non-ASCII 3.0 headers are refused. An object dtype lists but never
loads (its payload is a pickle).
"""

from __future__ import annotations

import ast
import io
import struct
import warnings
from dataclasses import dataclass
from io import BufferedReader
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.lib import format as npy_format

from svdguard.errors import InputError, ResourceLimitError, UnsafeInputError
from svdguard.io.dtypes import numpy_dtype_name, torch_dtype
from svdguard.io.limits import MAX_NPY_HEADER_BYTES, element_count
from svdguard.io.records import TensorRecord, error_key

if TYPE_CHECKING:
    import torch

    from svdguard.io.payload import ByteStream

MAGIC = b"\x93NUMPY"
_LENGTH_FORMATS = {1: "<H", 2: "<I", 3: "<I"}
#: The most bytes a valid header can take: magic, version, length, and the literal.
MAX_PREFIX_BYTES = len(MAGIC) + 2 + 4 + MAX_NPY_HEADER_BYTES


@dataclass(frozen=True)
class NpyHeader:
    """What a .npy header declares; ``data_offset`` is where the payload starts."""

    dtype: np.dtype
    dtype_name: str
    shape: tuple[int, ...]
    fortran_order: bool
    data_offset: int

    @property
    def nbytes(self) -> int:
        return element_count(self.shape) * self.dtype.itemsize


def _bad(message: str, path: str | Path, key: str | None) -> InputError:
    return InputError(f"not a valid .npy array: {message}", path=path, key=error_key(key))


def _literal(text: str) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "invalid escape sequence" from the parser
        return ast.literal_eval(text)


def _explain(head: bytes, refusal: BaseException) -> str:
    """Why numpy refused ``head`` (the file's first bytes), in svdguard's words."""
    if not head:
        return "the file is empty"
    if head[: len(MAGIC)] != MAGIC:
        if MAGIC.startswith(head):
            return "the file ends inside the magic bytes (truncated)"
        return f"bad magic bytes {head[: len(MAGIC)]!r} (expected {MAGIC!r})"
    if len(head) < len(MAGIC) + 2:
        return "the file ends inside the version (truncated)"
    major, minor = head[len(MAGIC)], head[len(MAGIC) + 1]
    if major not in _LENGTH_FORMATS or minor != 0:
        return f"unsupported format version {major}.{minor} (1.0, 2.0 and 3.0 are read)"
    length_format = _LENGTH_FORMATS[major]
    start = len(MAGIC) + 2 + struct.calcsize(length_format)
    if len(head) < start:
        return "the file ends inside the header length (truncated)"
    (length,) = struct.unpack(length_format, head[len(MAGIC) + 2 : start])
    raw = head[start : start + length]
    if len(raw) < length:
        return "the file ends inside the header (truncated)"
    try:
        fields = _literal(raw.decode("utf-8" if major == 3 else "latin-1"))
    except Exception:  # noqa: BLE001 - whatever ast raises, the header is no literal
        return "the header is not a Python dict literal"
    if not isinstance(fields, dict) or set(fields) != {"descr", "fortran_order", "shape"}:
        return "the header must be a dict with keys descr, fortran_order, shape"
    shape = fields["shape"]
    if not isinstance(shape, tuple) or not all(isinstance(dim, int) for dim in shape):
        return f"shape {shape!r} is not a tuple of non-negative integers"
    if not isinstance(fields["fortran_order"], bool):
        return f"fortran_order {fields['fortran_order']!r} is not True/False"
    descr = str(fields["descr"])[:40]
    if "descr" in str(refusal):
        return f"dtype {descr!r} is not a numpy dtype; re-save the array as float32/float64"
    return f"numpy refuses the header ({' '.join(str(refusal).split())[:120]})"


def _declared_length(head: bytes) -> int | None:
    """The header length the prefix of ``head`` declares, None if the prefix is not there."""
    length_format = _LENGTH_FORMATS.get(head[len(MAGIC)]) if len(head) > len(MAGIC) else None
    if head[: len(MAGIC)] != MAGIC or length_format is None:
        return None
    start = len(MAGIC) + 2
    field = head[start : start + struct.calcsize(length_format)]
    if len(field) < struct.calcsize(length_format):
        return None
    (length,) = struct.unpack(length_format, field)
    return int(length)


def parse_header(head: bytes, *, path: str | Path, key: str | None = None) -> NpyHeader:
    """The header at the start of ``head`` (the file's first MAX_PREFIX_BYTES bytes, or all)."""
    length = _declared_length(head)
    if length is not None and length > MAX_NPY_HEADER_BYTES:
        raise ResourceLimitError(
            f".npy header length {length:,} bytes exceeds the limit of "
            f"{MAX_NPY_HEADER_BYTES:,} that numpy.load also applies (a corrupt or hostile file)",
            path=path,
            key=error_key(key),
        )
    stream = io.BytesIO(head)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy warns when it re-parses a Python 2 header
            version = npy_format.read_magic(stream)
            if version == (3, 0):
                # 3.0 is 2.0 with a UTF-8 header; numpy exposes no 3.0 reader, and a
                # numeric array's header is ASCII, where the two encodings agree.
                if not head[stream.tell() + 4 :][: length or 0].isascii():
                    raise _bad("a 3.0 header with non-ASCII text (not a numeric array)", path, key)
                version = (2, 0)
            if version == (1, 0):
                shape, fortran_order, dtype = npy_format.read_array_header_1_0(
                    stream, max_header_size=MAX_NPY_HEADER_BYTES
                )
            elif version == (2, 0):
                shape, fortran_order, dtype = npy_format.read_array_header_2_0(
                    stream, max_header_size=MAX_NPY_HEADER_BYTES
                )
            else:
                raise ValueError(f"unsupported version {version}")
    except InputError:
        raise
    except Exception as refusal:  # noqa: BLE001 - numpy's refusal takes many forms (ast, tokenize)
        raise _bad(_explain(head, refusal), path, key) from None
    if not all(not isinstance(dim, bool) and dim >= 0 for dim in shape):
        raise _bad(f"shape {shape!r} is not a tuple of non-negative integers", path, key)
    if dtype.subdtype is not None:
        raise _bad(
            f"dtype {dtype} is a sub-array dtype, which numpy.load cannot shape either", path, key
        )
    return NpyHeader(dtype, numpy_dtype_name(dtype), tuple(shape), fortran_order, stream.tell())


def read_header(stream: ByteStream, *, path: str | Path, key: str | None = None) -> NpyHeader:
    """Parse a .npy header from ``stream`` (positioned at its start); InputError if malformed.

    Reads at most MAX_PREFIX_BYTES, so the stream may be left past the
    header: callers seek to ``header.data_offset`` before the payload.
    """
    return parse_header(stream.read(MAX_PREFIX_BYTES), path=path, key=key)


def check_loadable(header: NpyHeader, *, path: str | Path, key: str | None) -> np.dtype:
    """The numpy dtype of a payload svdguard will read; refuse object, text and structured data."""
    dtype = header.dtype
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


def check_payload_size(
    header: NpyHeader, available: int, *, path: str | Path, key: str | None
) -> None:
    """InputError when fewer than the declared payload bytes follow the header (object: no check)."""
    if header.dtype.hasobject or available >= header.nbytes:
        return
    raise InputError(
        f"payload truncated: the header declares shape {header.shape} {header.dtype_name} "
        f"({header.nbytes:,} bytes) but only {available:,} bytes follow; re-save the file",
        path=path,
        key=error_key(key),
    )


def read_payload(
    stream: ByteStream,
    header: NpyHeader,
    *,
    path: str | Path,
    key: str | None,
    available: int | None,
) -> torch.Tensor:
    """Read the payload after ``header``; ``available``: bytes left in the stream, if known.

    ``stream`` must be positioned at the payload's start.
    """
    from svdguard.io.payload import numpy_bytes_to_tensor, read_exact

    dtype = check_loadable(header, path=path, key=key)
    if available is not None:
        check_payload_size(header, available, path=path, key=key)
    buffer = read_exact(stream, header.nbytes, path=path, key=error_key(key), what="payload")
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
    """The one record of a .npy file (header parsed now, payload read by load()).

    A payload shorter than the header declares makes the file invalid (numpy
    refuses it too) whatever its size: a 100-byte file that declares a 8 TB
    array is corrupt, not too large.
    """
    with _open(path) as stream:
        header = read_header(stream, path=path)
        size = stream.seek(0, 2)
    check_payload_size(header, size - header.data_offset, path=path, key=None)
    return [TensorRecord(path, "", header.shape, header.dtype_name, max_elements, _load_npy)]


def _load_npy(record: TensorRecord) -> torch.Tensor:
    path = record.path
    with _open(path) as stream:
        try:
            header = read_header(stream, path=path)
            size = path.stat().st_size
            stream.seek(header.data_offset)
            return read_payload(
                stream, header, path=path, key="", available=size - header.data_offset
            )
        except OSError as err:
            raise InputError(f"cannot read: {err.strerror or err}", path=path) from None
