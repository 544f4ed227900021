"""Dtype names across formats: safetensors codes, numpy dtypes, and torch's spelling.

A :class:`~svdguard.io.records.TensorRecord` carries its dtype as torch spells
it (``"bfloat16"``, ``"float8_e4m3fn"``); a numpy dtype that torch lacks keeps
numpy's name (``"U10"``, ``"object"``, ``"float128"``) so it can be reported,
and fails only when loaded.
"""

from __future__ import annotations

import numpy as np
import torch


def _torch_dtype_or_none(name: str) -> torch.dtype | None:
    dtype = getattr(torch, name, None)
    return dtype if isinstance(dtype, torch.dtype) else None


#: safetensors dtype code → torch dtype name (the codes of the safetensors format spec).
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

#: torch dtype → safetensors code, for writing.
TORCH_TO_SAFETENSORS: dict[torch.dtype, str] = {
    dtype: code
    for code, name in SAFETENSORS_DTYPES.items()
    if (dtype := _torch_dtype_or_none(name)) is not None
}


def torch_dtype(name: str) -> torch.dtype | None:
    """Torch's dtype ``name`` (``"bfloat16"`` → torch.bfloat16); None if torch lacks it."""
    return _torch_dtype_or_none(name)


def itemsize(name: str) -> int | None:
    """Bytes per element of the dtype called ``name`` (torch or numpy spelling), None if unknown."""
    dtype = torch_dtype(name)
    if dtype is not None:
        return dtype.itemsize
    try:
        return int(np.dtype(name).itemsize)
    except (TypeError, ValueError, SyntaxError):
        return None


def numpy_dtype_name(dtype: np.dtype) -> str:
    """Torch's name for a numpy dtype torch can hold (any byte order), else numpy's own name.

    >>> numpy_dtype_name(np.dtype(">f8")), numpy_dtype_name(np.dtype("U10"))
    ('float64', 'U10')
    """
    if dtype.fields is None and dtype.subdtype is None and dtype.kind in "biufc":
        native = dtype.newbyteorder("=")
        try:
            return str(torch.from_numpy(np.empty(0, dtype=native)).dtype).removeprefix("torch.")
        except TypeError:
            pass  # e.g. float128, which torch does not have
    if dtype.kind in "USV" and dtype.fields is None:
        return dtype.str[1:]  # 'U10', 'S5', 'V16': numpy's spelling with the byte order cut
    return dtype.name
