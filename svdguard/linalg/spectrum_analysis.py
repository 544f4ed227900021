"""The spectrum of one stored matrix, computed robustly: the math behind ``svdguard.diagnose``.

* :func:`as_matrix`: the matrix a tensor is analysed as (≥3-D tensors are
  flattened to ``shape[0] × ∏ shape[1:]``);
* :func:`singular_values`: s_1 ≥ … ≥ s_k from the cheapest certified method
  (the float64 Gram route of :mod:`svdguard.linalg.gram_spectrum`, else the SVD),
  with one retry of the SVD (float64, an exact power-of-two rescaling, another
  CUDA driver) when the decomposition fails;
  :func:`batched_singular_values` for a stack of same-shape matrices;
* :func:`count_close_pairs`: #{i < j : |s_i − s_j| ≤ tol} in O(k log k);
* :func:`all_finite`, :func:`count_nonfinite`: NaN/±Inf entries, every float dtype.

Torch only: no files, no findings, no messages for a command line (those are
``svdguard.app.diagnose``'s and the CLI's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from svdguard.errors import InputError, NumericalError
from svdguard.linalg.gram_spectrum import gram_singular_values
from svdguard.linalg.scaling import largest_magnitude, power_of_two_scale

__all__ = [
    "CUDA_DRIVERS",
    "ROUTES",
    "PRECISIONS",
    "Spectrum",
    "all_finite",
    "analysis_dtype",
    "as_matrix",
    "batched_singular_values",
    "count_close_pairs",
    "count_nonfinite",
    "dtype_name",
    "narrows",
    "singular_values",
    "tall",
]

#: cuSOLVER drivers tried in turn on CUDA: gesvd (QR iteration, the most accurate), then
#: gesvdj (Jacobi) when gesvd fails to converge. On CPU torch always uses LAPACK gesdd.
CUDA_DRIVERS = ("gesvd", "gesvdj")

#: The dtypes singular values may be computed in (``precision=``), by name.
PRECISIONS = {"float64": torch.float64, "float32": torch.float32}


def dtype_name(dtype: torch.dtype) -> str:
    """torch's spelling without the module: ``torch.bfloat16`` → ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def as_matrix(tensor: torch.Tensor) -> torch.Tensor:
    """The matrix a tensor is analysed as: itself when 2-D, ``(shape[0], ∏ shape[1:])`` when ≥3-D.

    A conv kernel (out, in, kh, kw) becomes out × (in·kh·kw): the map from a
    flattened receptive field to the output channels, whose spectrum is what
    spectral norms of conv layers usually mean.
    """
    if tensor.ndim < 2:
        raise InputError(
            f"a matrix needs at least 2 dimensions, got shape {tuple(tensor.shape)}; "
            "1-D tensors (biases, norms) have no singular values to inspect"
        )
    return tensor if tensor.ndim == 2 else tensor.reshape(tensor.shape[0], -1)


def analysis_dtype(storage: torch.dtype, precision: torch.dtype) -> torch.dtype:
    """The dtype singular values are computed in: ``precision``, complex when the storage is."""
    if storage.is_complex:
        return torch.complex128 if precision == torch.float64 else torch.complex64
    return precision


def count_close_pairs(s: torch.Tensor, tol: float) -> int:
    """#{(i, j) : i < j, |s_i − s_j| ≤ tol} for descending ``s`` of shape (k,), in O(k log k).

    For each i, the values within [s_i − tol, s_i + tol] are a contiguous run of
    the sorted spectrum; two binary searches count them (s_i itself included,
    hence the −1), and every pair is counted from both ends (hence the /2).
    """
    ascending = s.flip(0).contiguous()
    upper = torch.searchsorted(ascending, s + tol, right=True)
    lower = torch.searchsorted(ascending, s - tol, right=False)
    return int((upper - lower - 1).sum()) // 2


#: The routes :func:`singular_values` may take: ``"auto"`` (the Gram route where it is
#: certified, else the SVD) or ``"svd"`` (always the SVD).
ROUTES = ("auto", "svd")


@dataclass(frozen=True)
class Spectrum:
    """Singular values (float64, CPU, descending), where and how they were computed.

    ``method`` is ``"gram"`` (eigenvalues of the float64 Gram matrix, certified
    to ``tolerances.spectrum_report_rtol`` by :mod:`svdguard.linalg.gram_spectrum`)
    or ``"svd"``.
    """

    values: torch.Tensor
    dtype: torch.dtype
    device: str
    method: str = "svd"


def tall(a: torch.Tensor) -> torch.Tensor:
    """``a`` or its transpose, whichever has at least as many rows as columns (a view).

    σ(A) = σ(Aᵀ), and torch's CPU svdvals is several times faster on the tall
    orientation (measured: 0.28 s for 3072×768 against 1.36 s for 768×3072,
    float64, one thread), so a wide matrix is decomposed as its transpose.
    """
    return a.mT if a.shape[-2] < a.shape[-1] else a


def singular_values(
    matrix: torch.Tensor,
    *,
    precision: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    route: str = "auto",
) -> Spectrum:
    """s_1 ≥ … ≥ s_k of a finite matrix by the cheapest certified method; SVDs retried once.

    ``route="auto"`` with float64 ``precision`` on the CPU first tries the
    Gram route (:func:`~svdguard.linalg.gram_spectrum.gram_singular_values`):
    κ₂ and every gap within ``tolerances.spectrum_report_rtol`` (1e-6) relative
    of a float64 SVD, or within the storage dtype's own resolution, else the
    SVD below runs (``Spectrum.method`` says which served). ``route="svd"``
    skips it.

    SVD: first in ``analysis_dtype(storage, precision)`` (cuSOLVER's gesvd
    on CUDA). On ``torch.linalg.LinAlgError`` (non-convergence), another
    runtime error, or non-finite singular values (an overflow), the retry runs
    in float64 on the matrix scaled by a power of two into [½, 1) (exact; it
    removes overflow and underflow), with cuSOLVER's gesvdj on CUDA.
    Raises :class:`NumericalError` naming both failures when the retry fails too.
    """
    if route not in ROUTES:
        raise InputError(f"route must be one of {', '.join(ROUTES)}, got {route!r}")
    target = torch.device(device) if device is not None else matrix.device
    on_cuda = target.type == "cuda"
    if route == "auto" and precision == torch.float64 and not on_cuda:
        s = gram_singular_values(matrix.to(device=target), matrix.dtype)
        if s is not None:
            dtype = analysis_dtype(matrix.dtype, torch.float64)
            return Spectrum(values=s, dtype=dtype, device=str(target), method="gram")
    attempts = [
        (analysis_dtype(matrix.dtype, precision), CUDA_DRIVERS[0] if on_cuda else None, False),
        (analysis_dtype(matrix.dtype, torch.float64), CUDA_DRIVERS[1] if on_cuda else None, True),
    ]
    failures: list[str] = []
    for dtype, driver, rescale in attempts:
        a = tall(matrix).to(device=target, dtype=dtype)
        scale = power_of_two_scale(largest_magnitude(a)) if rescale else 1.0
        if scale != 1.0:
            a = a * scale
        elif narrows(matrix.dtype, dtype) and not all_finite(a):
            failures.append(f"{dtype_name(dtype)}: entries overflow the dtype")
            continue
        try:
            s = torch.linalg.svdvals(a, driver=driver) if driver else torch.linalg.svdvals(a)
        except RuntimeError as err:  # LinAlgError, cuSOLVER errors, out of memory
            failures.append(f"{dtype_name(dtype)}{'/' + driver if driver else ''}: {err}")
            continue
        s = s.to(device="cpu", dtype=torch.float64) / scale
        if not bool(torch.isfinite(s).all()):
            failures.append(f"{dtype_name(dtype)}: non-finite singular values")
            continue
        return Spectrum(values=s, dtype=dtype, device=str(target))
    raise NumericalError("the SVD failed even after a retry (" + "; ".join(failures) + ")")


def batched_singular_values(stack: torch.Tensor, *, driver: str | None = None) -> torch.Tensor:
    """Singular values of a ``(batch, m, n)`` stack in one call (float64 on CPU, descending).

    No retry here: a caller that gets an error falls back to
    :func:`singular_values` one matrix at a time, which retries.
    """
    stack = tall(stack)
    s: torch.Tensor = (
        torch.linalg.svdvals(stack, driver=driver) if driver else torch.linalg.svdvals(stack)
    )
    return s.to(device="cpu", dtype=torch.float64)


def narrows(source: torch.dtype, target: torch.dtype) -> bool:
    """True when casting ``source`` to ``target`` can overflow (float64 → float32, say)."""
    real_source, real_target = (torch.empty((), dtype=d).real.dtype for d in (source, target))
    return torch.finfo(real_target).max < torch.finfo(real_source).max


def all_finite(matrix: torch.Tensor) -> bool:
    """True when no entry is NaN or ±Inf, from two reductions that allocate nothing.

    amax and amin propagate NaN, and an infinite entry is the max or the min.
    """
    values = torch.view_as_real(matrix) if matrix.is_complex() else matrix
    if torch.finfo(values.dtype).bits == 8:
        values = values.to(torch.float32)  # reductions are not implemented for every fp8 type
    return bool(torch.isfinite(values.amax())) and bool(torch.isfinite(values.amin()))


def count_nonfinite(matrix: torch.Tensor) -> int:
    """Number of NaN/±Inf entries (every float dtype, bf16 and fp8 included).

    A finite matrix (the usual case) costs two reductions; only otherwise are they counted.
    """
    if all_finite(matrix):
        return 0
    if matrix.dtype.is_floating_point and torch.finfo(matrix.dtype).bits == 8:
        matrix = matrix.to(torch.float32)  # isfinite is not implemented for every fp8 type
    return int(matrix.numel() - int(torch.isfinite(matrix).sum()))
