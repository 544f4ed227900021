"""Read a tensor payload into one preallocated buffer, and view it with its dtype.

The buffer is the tensor's own storage: the bytes are read straight into it in
bounded chunks, so the peak memory of a load is the tensor plus one chunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from svdguard.errors import InputError

#: Bytes per read call: bounds the extra copy a compressed (zip) stream makes.
CHUNK_BYTES = 16 * 2**20


class ByteStream(Protocol):
    """What the readers need of a binary file or a zip member: read, readinto, tell."""

    def read(self, size: int = -1, /) -> bytes: ...

    def readinto(self, buffer: memoryview, /) -> int | None: ...

    def tell(self) -> int: ...


def read_exact(
    stream: ByteStream, nbytes: int, *, path: str | Path, key: str | None, what: str
) -> torch.Tensor:
    """``nbytes`` bytes of ``stream`` as a uint8 tensor; InputError if the stream ends early."""
    buffer = torch.empty(nbytes, dtype=torch.uint8)
    view = memoryview(buffer.numpy())  # type: ignore[arg-type]  # ndarray is a buffer
    filled = 0
    while filled < nbytes:
        count = stream.readinto(view[filled : filled + CHUNK_BYTES])
        if not count:
            raise InputError(
                f"{what} is truncated: expected {nbytes:,} bytes of data, found {filled:,}; "
                "the file was cut short (re-download or re-save it)",
                path=path,
                key=key,
            )
        filled += count
    return buffer


def numpy_bytes_to_tensor(
    buffer: torch.Tensor, dtype: np.dtype, shape: Sequence[int], *, fortran_order: bool
) -> torch.Tensor:
    """View raw bytes written by numpy as a C-contiguous torch tensor in native byte order.

    Big-endian data is swapped in place; Fortran-ordered data costs one copy to C order.
    """
    array = buffer.numpy().view(dtype)
    if not dtype.isnative:
        array = array.byteswap(inplace=True).view(dtype.newbyteorder("="))
    if dtype.kind == "b":
        array = array != 0  # a byte other than 0/1 is not a valid bool; normalise it
    array = array.reshape(tuple(shape), order="F" if fortran_order else "C")
    if not array.flags.c_contiguous:
        array = array.copy(order="C")  # (not np.ascontiguousarray: it turns 0-d into 1-d)
    return torch.from_numpy(array)


def torch_bytes_to_tensor(
    buffer: torch.Tensor, dtype: torch.dtype, shape: Sequence[int]
) -> torch.Tensor:
    """View raw little-endian bytes as a tensor of ``dtype`` and ``shape`` (no copy)."""
    if dtype == torch.bool:
        return (buffer != 0).reshape(tuple(shape))
    return buffer.view(dtype).reshape(tuple(shape))
