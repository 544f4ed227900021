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
* ``MAX_NPY_HEADER_BYTES = 10 000``: the dict literal of a ``.npy`` header,
  numpy's own default (``numpy.load(allow_pickle=False)`` refuses longer
  headers, so svdguard does too; numpy writes about 128 bytes for a plain array).
* ``MAX_PICKLE_BYTES = 256 MiB``: the pickle (``data.pkl``) of a torch
  checkpoint, inflated before torch reads it. A state dict costs about 100
  bytes of pickle per tensor, so this admits two million tensors.
* memory: a tensor is refused when what its analysis needs exceeds the memory
  available (``MemAvailable`` of ``/proc/meminfo``, else ``os.sysconf``); see
  :func:`analysis_bytes` for the count.
* time: ``DEFAULT_MAX_TIME = 600`` seconds per SVD, estimated before it starts
  by :func:`estimated_svd_seconds` (m·n·min(m, n) at :data:`SVD_RATE`). A
  square float64 matrix of side 8 400 is at the limit; a 128 256 × 16 384
  embedding is estimated at 3.4e4 s and skipped unless ``max_time`` is raised.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

from svdguard.errors import ResourceLimitError

DEFAULT_MAX_ELEMENTS: int = 2**31
MAX_SAFETENSORS_HEADER_BYTES: int = 100_000_000
MAX_INDEX_BYTES: int = 100_000_000
MAX_NPY_HEADER_BYTES: int = 10_000
MAX_PICKLE_BYTES: int = 256 * 2**20

#: Bytes per element of the working copy an analysis makes: float64, the widest real
#: compute dtype; complex tensors are analysed in complex128 (twice that).
WORKING_ITEMSIZE: int = 8
#: Matrix-sized float64 buffers an SVD of the working copy needs beside it: LAPACK's
#: ``gesdd`` overwrites its input, so torch hands it a copy (1 matrix); a decomposition
#: with vectors adds U (m×k) and Vᴴ (k×n), (m + n)·k ≤ 2·m·n elements (2 matrices).
SVD_MATRIX_COPIES: int = 1 + 2

#: Seconds an SVD may be estimated to take before it is skipped (``max_time=``): ten
#: minutes, long enough for every matrix of today's public checkpoints but their largest
#: embeddings on one CPU core, short enough that a run over a whole checkpoint ends.
DEFAULT_MAX_TIME: float = 600.0

#: Conservative speed of LAPACK's singular values (``torch.linalg.svdvals``), in units of
#: m·n·min(m, n) per second: measured 6e9 to 8e9 for float64 square matrices of side 500
#: to 2000 on one idle core of a 2-core x86-64 machine, 2.3e9 to 3.6e9 while other
#: processes shared it; 1e9 stays below both, so that a busy or slower machine still
#: finishes within the estimate (tests/io/test_io_limits.py times it).
SVD_RATE: float = 1e9
#: Cost of a complex SVD relative to a real one of the same shape (a complex multiply-add
#: is four real ones).
COMPLEX_SVD_FACTOR: int = 4

_MEMINFO = Path("/proc/meminfo")


#: How long a reading of the available memory is reused (seconds). A run checks every
#: tensor before loading it; reading /proc/meminfo each time cost about 40 µs per tensor
#: (4 % of a 64×64 float64 analysis). Within a quarter of a second the figure moves by
#: what this process allocates itself, which the check counts anyway (``analysis_bytes``).
MEMORY_READING_TTL_S = 0.25

_last_reading: tuple[float, int | None] | None = None


def memory_available() -> int | None:
    """Bytes of memory a new allocation can use without swapping, or None when unknown.

    ``MemAvailable`` (Linux ≥ 3.14) counts free memory plus reclaimable page
    cache; the ``os.sysconf`` fallback counts free pages only, a lower bound.
    A reading is reused for :data:`MEMORY_READING_TTL_S` seconds.
    """
    global _last_reading
    now = time.monotonic()
    if _last_reading is not None and now - _last_reading[0] < MEMORY_READING_TTL_S:
        return _last_reading[1]
    value = _read_memory_available()
    _last_reading = (now, value)
    return value


def _read_memory_available() -> int | None:
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


def estimated_svd_seconds(rows: int, columns: int, *, is_complex: bool = False) -> float:
    """Seconds the singular values of a rows × columns matrix are expected to take, at most.

    t = m·n·min(m, n) / SVD_RATE (times COMPLEX_SVD_FACTOR for complex data):
    the flop count of a bidiagonal reduction is a small multiple of m·n·min(m, n).
    """
    units = rows * columns * min(rows, columns)
    return units * (COMPLEX_SVD_FACTOR if is_complex else 1) / SVD_RATE


def analysis_bytes(shape: Sequence[int], itemsize: int, *, is_complex: bool = False) -> int:
    """Bytes a tensor of ``shape`` needs to be loaded and decomposed: the count checked.

    payload (numel·itemsize) + working copy (numel·w) + SVD buffers
    (SVD_MATRIX_COPIES·numel·w), with w = WORKING_ITEMSIZE (doubled for a
    complex tensor). A scalar or a vector is never decomposed: its payload is
    all it costs. The count uses the shape the tensor materialises to, so a
    stride-0 ``expand`` saved in a tiny file is judged by the matrix it
    becomes. LAPACK's scalar workspace (O(m + n) for singular values) is below
    one matrix copy and is covered by the factors.
    """
    numel = element_count(shape)
    payload = numel * itemsize
    if len(shape) < 2:
        return payload
    working = WORKING_ITEMSIZE * (2 if is_complex else 1)
    return payload + numel * working * (1 + SVD_MATRIX_COPIES)


def check_memory(nbytes: int, what: str, *, path: str | Path, key: str | None) -> None:
    """Raise ResourceLimitError when ``nbytes`` exceed the memory available (if known)."""
    available = memory_available()
    if available is not None and nbytes > available:
        raise ResourceLimitError(
            f"{what} needs {format_bytes(nbytes)} but only {format_bytes(available)} "
            "of memory is available; free memory or run on a larger machine",
            path=path,
            key=key,
        )


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

    Called with the header's numbers only, before anything is allocated; the
    memory needed is :func:`analysis_bytes`.
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
            "raise max_elements= if the tensor is expected",
            path=path,
            key=key,
        )
    if itemsize is None:
        return
    needed = analysis_bytes(shape, itemsize, is_complex=dtype.startswith("complex"))
    check_memory(needed, described, path=path, key=key)
