"""Diagnose one matrix: its singular values → condition number, rank, gaps and flags.

Notation (MATH.md §5): A is m×n, k = min(m, n), s_1 ≥ … ≥ s_k ≥ 0 its singular
values, σ_max = s_1, σ_min = s_k. ε_w is the ε of the tensor's *working dtype*
(``tolerances.compute_dtype`` of its storage dtype: float32 for bf16/fp16/fp8),
ε_p the ε of the dtype the singular values are computed in (``precision``).

* κ₂ = σ_max/σ_min (∞ when σ_min = 0).
* numerical rank = #{s_i > τ_rank}, τ_rank = max(m, n)·max(ε_w, ε_p)·σ_max
  (numpy's ``matrix_rank`` default; ``tolerances.inspect_rank_tolerance``).
* gap_i as LAPACK's xDISNA defines it for singular vectors:
  gap_i = min_{j≠i} |s_i − s_j|, and for a non-square matrix also s_i itself
  (the longer side's factor has a null space at singular value 0):
  gap_i = min(min_{j≠i} |s_i − s_j|, s_i). LAPACK bounds the angle error of
  computed singular vector i by ε·σ_max/gap_i; ``vector_error_bound`` is
  ε_w·σ_max/min_i gap_i.
* tied pairs: i < j with |s_i − s_j| ≤ τ_tie, near-degenerate pairs:
  |s_i − s_j| ≤ τ_near (tolerances.inspect_tie_tolerance / _near_degenerate_).

This module is the math of ``svdguard inspect`` and of ``svdguard.diagnose``;
it reads no files and imports neither rich nor typer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from svdguard import tolerances
from svdguard.errors import InputError, NumericalError
from svdguard.linalg.spectrum import singular_gaps
from svdguard.report import Finding, Flag, MatrixReport, Severity

#: cuSOLVER drivers tried in turn on CUDA: gesvd (QR iteration, the most accurate), then
#: gesvdj (Jacobi) when gesvd fails to converge. On CPU torch always uses LAPACK gesdd.
CUDA_DRIVERS = ("gesvd", "gesvdj")

#: The precisions ``--precision`` accepts.
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


@dataclass(frozen=True)
class Spectrum:
    """Singular values (float64, CPU, descending) and where they were computed."""

    values: torch.Tensor
    dtype: torch.dtype
    device: str


def tall(a: torch.Tensor) -> torch.Tensor:
    """``a`` or its transpose, whichever has at least as many rows as columns (a view).

    σ(A) = σ(Aᵀ), and torch's CPU svdvals is several times faster on the tall
    orientation (measured: 0.28 s for 3072×768 against 1.36 s for 768×3072,
    float64, one thread), so a wide matrix is decomposed as its transpose.
    """
    return a.mT if a.shape[-2] < a.shape[-1] else a


def _power_of_two_scale(a: torch.Tensor) -> float:
    """2^-e with 2^(e-1) ≤ max|a_ij| < 2^e: an exact scaling that brings entries into [½, 1)."""
    biggest = float(a.abs().max()) if a.numel() else 0.0
    if biggest == 0.0 or not math.isfinite(biggest):
        return 1.0
    return math.ldexp(1.0, -math.frexp(biggest)[1])


def singular_values(
    matrix: torch.Tensor,
    *,
    precision: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Spectrum:
    """s_1 ≥ … ≥ s_k of a finite matrix, retried once when the decomposition fails.

    First attempt: in ``analysis_dtype(storage, precision)`` (cuSOLVER's gesvd
    on CUDA). On ``torch.linalg.LinAlgError`` (non-convergence), another
    runtime error, or non-finite singular values (an overflow), the retry runs
    in float64 on the matrix scaled by a power of two into [½, 1) (exact; it
    removes overflow and underflow), with cuSOLVER's gesvdj on CUDA.
    Raises :class:`NumericalError` naming both failures when the retry fails too.
    """
    target = torch.device(device) if device is not None else matrix.device
    on_cuda = target.type == "cuda"
    attempts = [
        (analysis_dtype(matrix.dtype, precision), CUDA_DRIVERS[0] if on_cuda else None, False),
        (analysis_dtype(matrix.dtype, torch.float64), CUDA_DRIVERS[1] if on_cuda else None, True),
    ]
    failures: list[str] = []
    for dtype, driver, rescale in attempts:
        a = tall(matrix).to(device=target, dtype=dtype)
        scale = _power_of_two_scale(a) if rescale else 1.0
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
    s = torch.linalg.svdvals(stack, driver=driver) if driver else torch.linalg.svdvals(stack)
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


@dataclass(frozen=True)
class Subject:
    """Where a matrix comes from and how it is stored (the non-numeric part of a report)."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    path: str | None = None
    key: str | None = None

    @property
    def matrix_shape(self) -> tuple[int, int]:
        rest = math.prod(self.shape[1:])
        return (self.shape[0], rest) if len(self.shape) >= 2 else (0, 0)


def nonfinite_report(subject: Subject, count: int, device: str) -> MatrixReport:
    """The report of a matrix holding NaN/Inf: no spectrum, one error finding."""
    numel = math.prod(subject.shape)
    finding = Finding(
        Flag.NONFINITE,
        Severity.ERROR,
        f"{count} of {numel} entries are NaN or Inf: no singular values exist; "
        "find the step that produced them (divergence, overflow, uninitialised memory)",
    )
    return MatrixReport(
        name=subject.name,
        path=subject.path,
        key=subject.key,
        shape=subject.shape,
        matrix_shape=subject.matrix_shape,
        dtype=dtype_name(subject.dtype),
        compute_dtype=dtype_name(subject.dtype),
        device=device,
        nonfinite=count,
        findings=(finding,),
    )


@dataclass(frozen=True)
class _Numbers:
    """The scalars of one spectrum, before they are judged."""

    sigma_max: float
    sigma_min: float
    cond: float
    cond_resolved: bool
    cond_lower_bound: float
    rank: int
    rank_tol: float
    rel_min_gap: float | None
    min_pair_gap: float | None
    tie_tol: float
    near_tol: float
    tied_pairs: int
    near_pairs: int
    vector_error_bound: float | None
    noise_floor: float | None
    below_noise_floor: int | None


def _spectrum_numbers(
    s: torch.Tensor,
    m: int,
    n: int,
    storage: torch.dtype,
    computed_in: torch.dtype,
    gap_rtol: float | None,
) -> _Numbers:
    """Every number of the report from the float64 spectrum ``s`` (k,) of an m×n matrix."""
    working = tolerances.compute_dtype(storage)
    k = s.numel()
    sigma_max, sigma_min = float(s[0]), float(s[-1])
    # κ₂ = σ_max/σ_min; the computation resolves σ_min only above its own rounding level
    # τ_p = max(m, n)·ε_p·σ_max, and the true σ_min ≤ computed + τ_p: κ₂ ≥ σ_max/(σ_min + τ_p).
    cond = sigma_max / sigma_min if sigma_min > 0 else math.inf
    computed_rounding = max(m, n) * tolerances.machine_eps(computed_in) * sigma_max
    cond_resolved = sigma_min > computed_rounding
    cond_lower_bound = sigma_max / (sigma_min + computed_rounding) if sigma_max > 0 else math.inf
    rank_tol = tolerances.inspect_rank_tolerance(sigma_max, working, computed_in, m, n)
    rank = int((s > rank_tol).sum())
    tie_tol = tolerances.inspect_tie_tolerance(sigma_max, working, computed_in, m, n)
    if gap_rtol is None:
        near_tol = tolerances.inspect_near_degenerate_tolerance(sigma_max, working)
    else:
        near_tol = gap_rtol * sigma_max
    near_tol = max(near_tol, tie_tol)  # every tied pair is also near-degenerate
    gaps = singular_gaps(s, m, n)
    min_gap = float(gaps.min())
    # gap/σ_max is 0/0 for the zero matrix: undefined, reported as None.
    rel_min_gap = min_gap / sigma_max if sigma_max > 0 else None
    bound = None
    if rel_min_gap is not None:
        eps_w = tolerances.machine_eps(working)
        bound = eps_w / rel_min_gap if rel_min_gap > 0 else math.inf
    min_pair_gap = float((s[:-1] - s[1:]).min()) if k > 1 else None
    noise_floor = below = None
    if storage.is_floating_point and torch.finfo(storage).bits < 32:
        noise_floor = tolerances.noise_floor(storage, sigma_max)
        below = int((s <= noise_floor).sum())
    return _Numbers(
        sigma_max=sigma_max,
        sigma_min=sigma_min,
        cond=cond,
        cond_resolved=cond_resolved,
        cond_lower_bound=cond_lower_bound,
        rank=rank,
        rank_tol=rank_tol,
        rel_min_gap=rel_min_gap,
        min_pair_gap=min_pair_gap,
        tie_tol=tie_tol,
        near_tol=near_tol,
        tied_pairs=count_close_pairs(s, tie_tol),
        near_pairs=count_close_pairs(s, near_tol),
        vector_error_bound=bound,
        noise_floor=noise_floor,
        below_noise_floor=below,
    )


def _findings(
    x: _Numbers, m: int, n: int, storage: torch.dtype, computed_in: torch.dtype, max_cond: float
) -> tuple[Finding, ...]:
    """Judge the numbers: the flags, each with a sentence naming the numbers and the fix."""
    if x.sigma_max == 0.0:
        return (Finding(Flag.ZERO, Severity.WARNING, "every entry is zero: rank 0, κ₂ = ∞"),)
    found: list[Finding] = []
    k = min(m, n)
    grad_hint = "see `svdguard grad` for a gradient that stays finite"
    if x.tied_pairs:
        found.append(
            Finding(
                Flag.DEGENERATE,
                Severity.ERROR,
                f"{x.tied_pairs} pair(s) of singular values tied at rounding level "
                f"(|s_i − s_j| ≤ {x.tie_tol:.2e}): their singular vectors are not determined "
                f"and gradients through U or V are infinite or undefined; {grad_hint}",
            )
        )
    elif x.near_pairs:
        gap = x.min_pair_gap if x.min_pair_gap is not None else 0.0
        found.append(
            Finding(
                Flag.DEGENERATE,
                Severity.WARNING,
                f"{x.near_pairs} near-degenerate pair(s) (|s_i − s_j| ≤ "
                f"{x.near_tol:.2e}, smallest {gap / x.sigma_max:.2e}·σ_max): gradients through "
                f"U or V are amplified up to {x.sigma_max / gap:.1e}×; {grad_hint}",
            )
        )
    if x.rank < k:
        found.append(
            Finding(
                Flag.RANK_DEFICIENT,
                Severity.WARNING,
                f"numerical rank {x.rank} < {k} (tolerance max(m, n)·ε·σ_max = {x.rank_tol:.2e}); "
                "κ₂ and the 1/s terms of the SVD backward are dominated by rounding",
            )
        )
    elif x.cond >= max_cond:
        found.append(
            Finding(
                Flag.ILL_CONDITIONED,
                Severity.WARNING,
                f"κ₂ = {x.cond:.2e} ≥ {max_cond:.2e} (--max-cond): about log10(κ₂) = "
                f"{math.log10(x.cond):.1f} digits are lost solving with it or dividing by σ_min",
            )
        )
    if x.noise_floor is not None and (
        x.below_noise_floor or (x.min_pair_gap is not None and x.min_pair_gap <= x.noise_floor)
    ):
        found.append(
            Finding(
                Flag.NOISE_FLOOR,
                Severity.INFO,
                f"stored in {dtype_name(storage)}: singular values and gaps below "
                f"ε·σ_max = {x.noise_floor:.2e} are rounding of the stored entries "
                f"({x.below_noise_floor} singular value(s) below it"
                + (
                    f", smallest gap {x.min_pair_gap:.2e})"
                    if x.min_pair_gap is not None and x.min_pair_gap <= x.noise_floor
                    else ")"
                ),
            )
        )
    working = tolerances.compute_dtype(storage)
    if not x.cond_resolved and tolerances.machine_eps(computed_in) > tolerances.machine_eps(
        working
    ):
        found.append(
            Finding(
                Flag.UNRESOLVED,
                Severity.INFO,
                f"σ_min is below the resolution of {dtype_name(computed_in)}: κ₂ ≥ "
                f"{x.cond_lower_bound:.2e} but the value is not resolved; "
                "rerun with --precision float64",
            )
        )
    return tuple(found)


def report_from_spectrum(
    s: torch.Tensor,
    subject: Subject,
    *,
    computed_in: torch.dtype,
    device: str,
    max_cond: float | None = None,
    gap_rtol: float | None = None,
) -> MatrixReport:
    """Turn the descending spectrum ``s`` (k,) of ``subject`` into its report.

    ``max_cond`` is the κ₂ threshold of the ``ill-conditioned`` flag; None takes
    ``tolerances.inspect_max_cond`` of the working dtype. ``gap_rtol`` is the
    relative gap |s_i − s_j|/σ_max at or below which a pair is near-degenerate;
    None takes ``tolerances.inspect_near_degenerate_tolerance`` (√ε_w).
    """
    m, n = subject.matrix_shape
    s = s.to(dtype=torch.float64, device="cpu")
    x = _spectrum_numbers(s, m, n, subject.dtype, computed_in, gap_rtol)
    if max_cond is None:
        max_cond = tolerances.inspect_max_cond(tolerances.compute_dtype(subject.dtype))
    return MatrixReport(
        name=subject.name,
        path=subject.path,
        key=subject.key,
        shape=subject.shape,
        matrix_shape=(m, n),
        dtype=dtype_name(subject.dtype),
        compute_dtype=dtype_name(computed_in),
        device=device,
        sigma_max=x.sigma_max,
        sigma_min=x.sigma_min,
        cond=x.cond,
        cond_resolved=x.cond_resolved,
        cond_lower_bound=x.cond_lower_bound,
        rank=x.rank,
        rank_tol=x.rank_tol,
        rel_min_gap=x.rel_min_gap,
        tie_tol=x.tie_tol,
        near_degenerate_tol=x.near_tol,
        tied_pairs=x.tied_pairs,
        near_degenerate_pairs=x.near_pairs,
        vector_error_bound=x.vector_error_bound,
        noise_floor=x.noise_floor,
        below_noise_floor=x.below_noise_floor,
        findings=_findings(x, m, n, subject.dtype, computed_in, max_cond),
    )


def check_analysable(tensor: torch.Tensor, name: str = "tensor") -> None:
    """Raise InputError unless ``tensor`` is floating or complex with ≥ 2 non-empty dims."""
    shape = tuple(tensor.shape)
    if not (tensor.dtype.is_floating_point or tensor.dtype.is_complex):
        raise InputError(
            f"{name}: dtype {dtype_name(tensor.dtype)} is not floating point; "
            "only float and complex tensors have a spectrum to inspect"
        )
    if tensor.ndim < 2:
        raise InputError(
            f"{name}: shape {shape} is not a matrix (needs ≥ 2 dimensions); "
            "1-D tensors and scalars have no singular values"
        )
    if tensor.numel() == 0:
        raise InputError(f"{name}: shape {shape} is empty; there are no singular values")


def diagnose(
    tensor: torch.Tensor,
    *,
    name: str = "matrix",
    precision: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    max_cond: float | None = None,
    gap_rtol: float | None = None,
    path: str | None = None,
    key: str | None = None,
) -> MatrixReport:
    """Diagnostics of one matrix (a ≥3-D tensor is analysed as ``shape[0] × ∏ shape[1:]``).

    ``precision`` (float64 by default) is the dtype the singular values are
    computed in; bf16/fp16/fp8 are upcast. ``device`` defaults to the tensor's.
    ``max_cond`` and ``gap_rtol``: see :func:`report_from_spectrum`.
    NaN/Inf entries give a report with the ``nonfinite`` flag, never an
    exception; a decomposition that fails after its retry raises
    :class:`NumericalError`.

    >>> import torch
    >>> report = diagnose(torch.diag(torch.tensor([3.0, 2.0, 2.0, 1.0], dtype=torch.float64)))
    >>> report.cond, report.rank, report.tied_pairs, report.flags
    (3.0, 4, 1, ('degenerate',))
    >>> report.severity.value
    'error'
    """
    check_analysable(tensor, name)
    if precision not in PRECISIONS.values():
        raise InputError(f"precision must be torch.float64 or torch.float32, got {precision}")
    matrix = as_matrix(tensor)
    subject = Subject(name=name, shape=tuple(tensor.shape), dtype=tensor.dtype, path=path, key=key)
    target = torch.device(device) if device is not None else tensor.device
    bad = count_nonfinite(matrix)
    if bad:
        return nonfinite_report(subject, bad, str(target))
    spectrum = singular_values(matrix, precision=precision, device=target)
    return report_from_spectrum(
        spectrum.values,
        subject,
        computed_in=spectrum.dtype,
        device=spectrum.device,
        max_cond=max_cond,
        gap_rtol=gap_rtol,
    )
