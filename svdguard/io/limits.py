"""Size limits checked from headers, before a tensor is allocated.

Each limit is a defence against a file that declares more than it holds or
more than this machine can hold; none of them changes what a valid file loads
to. The defaults:

* ``DEFAULT_MAX_ELEMENTS = 2**31`` elements per tensor (8 GiB in float32). The
  largest single matrices of today's public checkpoints stay below it (a
  128256 × 16384 embedding has 2.10e9 elements); a declared 10**12-element
  tensor, the typical hostile header, is far above it. Callers pass
  ``max_elements`` to raise or lower it.
* ``MAX_SAFETENSORS_HEADER_BYTES = 100 MB``: the JSON header of a
  ``.safetensors`` file; the ``safetensors`` library itself refuses headers
  above the same 100 MB (a 100 000-tensor header is about 10 MB).
* ``MAX_INDEX_BYTES = 100 MB``: a ``*.safetensors.index.json``, the same reasoning.
* ``MAX_NPY_HEADER_BYTES = 64 KiB``: the dict literal of a ``.npy`` header
  (numpy writes about 128 bytes for a plain array and refuses to parse more
  than 10 000 bytes by default; the headroom admits long shapes).
* memory: a tensor whose byte size exceeds the memory available
  (``MemAvailable`` of ``/proc/meminfo``, else ``os.sysconf``) is refused.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from svdguard.errors import ResourceLimitError

DEFAULT_MAX_ELEMENTS: int = 2**31
MAX_SAFETENSORS_HEADER_BYTES: int = 100_000_000
MAX_INDEX_BYTES: int = 100_000_000
MAX_NPY_HEADER_BYTES: int = 65_536

_MEMINFO = Path("/proc/meminfo")


def memory_available() -> int | None:
    """Bytes of memory a new allocation can use without swapping, or None when unknown.

    ``MemAvailable`` (Linux ≥ 3.14) counts free memory plus reclaimable page
    cache; the ``os.sysconf`` fallback counts free pages only, a lower bound.
    """
    try:
        for line in _MEMINFO.read_text(encoding="ascii", errors="replace").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # the value is in kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def format_bytes(nbytes: int) -> str:
    """A byte count for humans: ``'1.5 GiB'``."""
    size = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if size < 1024 or unit == "PiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def element_count(shape: Sequence[int]) -> int:
    """∏ shape as an exact Python int (no overflow, unlike numpy's int64 product)."""
    return math.prod(shape)


def check_tensor_size(
    shape: Sequence[int],
    itemsize: int | None,
    dtype: str,
    *,
    max_elements: int,
    path: str | Path,
    key: str | None,
) -> None:
    """Raise ResourceLimitError when a tensor of ``shape`` exceeds ``max_elements`` or the memory.

    Called with the header's numbers only, before anything is allocated.
    """
    numel = element_count(shape)
    described = f"shape {tuple(shape)} {dtype} ({numel:,} elements)"
    # A zero-length dimension makes numel 0 whatever the others are; numpy still refuses a
    # shape whose other dimensions multiply past 2**63, and no real tensor has such a shape.
    span = element_count([dim for dim in shape if dim])
    if numel == 0 and span > max_elements:
        raise ResourceLimitError(
            f"shape {tuple(shape)} {dtype}: its non-zero dimensions multiply to {span:,}, "
            f"beyond the limit of {max_elements:,} elements per tensor (a corrupt header)",
            path=path,
            key=key,
        )
    if numel > max_elements:
        raise ResourceLimitError(
            f"{described} exceeds the limit of {max_elements:,} elements per tensor; "
            "raise max_elements if the tensor is expected",
            path=path,
            key=key,
        )
    if itemsize is None:
        return
    nbytes = numel * itemsize
    available = memory_available()
    if available is not None and nbytes > available:
        raise ResourceLimitError(
            f"{described} needs {format_bytes(nbytes)} but only {format_bytes(available)} "
            "of memory is available; free memory or run on a larger machine",
            path=path,
            key=key,
        )
