"""Dtype names across formats: safetensors codes, numpy dtypes, and torch's spelling.

A :class:`~svdguard.io.records.TensorRecord` carries its dtype as torch spells
it (``"bfloat16"``, ``"float8_e4m3fn"``); a numpy dtype that torch lacks keeps
numpy's name (``"U10"``, ``"object"``, ``"float128"``) so it can be reported,
and fails only when loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

#: safetensors dtype code → torch dtype name (the codes of the safetensors format spec that
#: torch can hold; F4 and F6_* are packed sub-byte formats svdguard does not read).
SAFETENSORS_DTYPES: dict[str, str] = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "I16": "int16",
    "U16": "uint16",
    "I32": "int32",
    "U32": "uint32",
    "I64": "int64",
    "U64": "uint64",
    "F16": "float16",
    "BF16": "bfloat16",
    "F32": "float32",
    "F64": "float64",
    "C64": "complex64",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2": "float8_e5m2",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F8_E8M0": "float8_e8m0fnu",
}

#: Bytes per element of the torch dtypes numpy lacks (the rest: numpy knows the same names).
_TORCH_ONLY_ITEMSIZES: dict[str, int] = {
    "bfloat16": 2,
    "complex32": 4,
    "float8_e4m3fn": 1,
    "float8_e4m3fnuz": 1,
    "float8_e5m2": 1,
    "float8_e5m2fnuz": 1,
    "float8_e8m0fnu": 1,
}

#: numpy (kind, itemsize) → torch's name for the same numeric type.
_NUMPY_TO_TORCH: dict[tuple[str, int], str] = {
    ("b", 1): "bool",
    ("u", 1): "uint8",
    ("i", 1): "int8",
    ("i", 2): "int16",
    ("u", 2): "uint16",
    ("i", 4): "int32",
    ("u", 4): "uint32",
    ("i", 8): "int64",
    ("u", 8): "uint64",
    ("f", 2): "float16",
    ("f", 4): "float32",
    ("f", 8): "float64",
    ("c", 8): "complex64",
    ("c", 16): "complex128",
}


def torch_dtype(name: str) -> torch.dtype | None:
    """Torch's dtype ``name`` (``"bfloat16"`` → torch.bfloat16); None if torch lacks it.

    Imports torch (only the payload readers and the application need a torch dtype).
    """
    import torch

    dtype = getattr(torch, name, None)
    return dtype if isinstance(dtype, torch.dtype) else None


def itemsize(name: str) -> int | None:
    """Bytes per element of the dtype called ``name`` (torch or numpy spelling), None if unknown."""
    if name in _TORCH_ONLY_ITEMSIZES:
        return _TORCH_ONLY_ITEMSIZES[name]
    try:
        return int(np.dtype(name).itemsize)
    except (TypeError, ValueError, SyntaxError):
        pass
    dtype = torch_dtype(name)
    return None if dtype is None else dtype.itemsize


def numpy_dtype_name(dtype: np.dtype) -> str:
    """Torch's name for a numpy dtype torch can hold (any byte order), else numpy's own name.

    >>> numpy_dtype_name(np.dtype(">f8")), numpy_dtype_name(np.dtype("U10"))
    ('float64', 'U10')
    """
    if dtype.fields is None and dtype.subdtype is None:
        name = _NUMPY_TO_TORCH.get((dtype.kind, dtype.itemsize))
        if name is not None:
            return name
    if dtype.kind in "USV" and dtype.fields is None:
        return dtype.str[1:]  # 'U10', 'S5', 'V16': numpy's spelling with the byte order cut
    return dtype.name
