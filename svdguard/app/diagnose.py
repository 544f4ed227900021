"""Diagnose one matrix: its singular values → condition number, rank, gaps, and findings.

Notation (``docs/diagnostics.md``): A is m×n, k = min(m, n), s_1 ≥ … ≥ s_k ≥ 0
its singular values, σ_max = s_1, σ_min = s_k. ε_w is the ε of the tensor's
*working dtype* (``tolerances.compute_dtype`` of its storage dtype: float32 for
bf16/fp16/fp8), ε_p the ε of the dtype the singular values are computed in
(``precision``).

* κ₂ = σ_max/σ_min (∞ when σ_min = 0).
* numerical rank = #{s_i > τ_rank}, τ_rank = max(m, n)·max(ε_w, ε_p)·σ_max
  (numpy's ``matrix_rank`` default; ``tolerances.inspect_rank_tolerance``).
* gap_i as LAPACK's xDISNA defines it for singular vectors
  (``svdguard.linalg.spectrum.singular_gaps``); ``vector_error_bound`` is
  ε_w·σ_max/min_i gap_i, LAPACK's bound on the angle error of a computed
  singular vector.
* tied pairs: i < j with |s_i − s_j| ≤ τ_tie, near-degenerate pairs:
  |s_i − s_j| ≤ τ_near (tolerances.inspect_tie_tolerance / _near_degenerate_).

The spectrum itself comes from :mod:`svdguard.linalg.spectrum_analysis`; this
module judges it. Each :class:`~svdguard.app.report.Finding` carries a stable
code (its flag), the numbers, the consequence, and the library parameter whose
threshold raised it; remedies that name command-line flags are the CLI's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from svdguard import tolerances
from svdguard.app.report import Finding, Flag, MatrixReport, Severity
from svdguard.errors import InputError
from svdguard.linalg.matrix_input import check_matrix
from svdguard.linalg.spectrum import singular_gaps
from svdguard.linalg.spectrum_analysis import (
    PRECISIONS,
    as_matrix,
    count_close_pairs,
    count_nonfinite,
    dtype_name,
    singular_values,
)

__all__ = ["Subject", "diagnose", "nonfinite_report", "report_from_spectrum"]


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
    computed_rounding = tolerances.rounding_level(sigma_max, computed_in, m, n)
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
    x: _Numbers,
    m: int,
    n: int,
    storage: torch.dtype,
    computed_in: torch.dtype,
    max_cond: float,
) -> tuple[Finding, ...]:
    """Judge the numbers: the flags, each with a sentence naming the numbers and the consequence.

    ``parameter`` names the argument of :func:`diagnose` whose threshold raised a
    finding (``max_cond``, ``gap_rtol``, ``precision``), so that a front end can
    say how to change it.
    """
    if x.sigma_max == 0.0:
        return (Finding(Flag.ZERO, Severity.WARNING, "every entry is zero: rank 0, κ₂ = ∞"),)
    found: list[Finding] = []
    k = min(m, n)
    if x.tied_pairs:
        found.append(
            Finding(
                Flag.DEGENERATE,
                Severity.ERROR,
                f"{x.tied_pairs} pair(s) of singular values tied at rounding level "
                f"(|s_i − s_j| ≤ {x.tie_tol:.2e}): their singular vectors are not determined "
                "and gradients through U or V are infinite or undefined",
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
                f"U or V are amplified up to {x.sigma_max / gap:.1e}×",
                parameter="gap_rtol",
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
                f"κ₂ = {x.cond:.2e} ≥ {max_cond:.2e}: about log10(κ₂) = "
                f"{math.log10(x.cond):.1f} digits are lost solving with it or dividing by σ_min",
                parameter="max_cond",
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
                f"{x.cond_lower_bound:.2e} but the value is not resolved",
                parameter="precision",
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
    method: str | None = "svd",
) -> MatrixReport:
    """Turn the descending spectrum ``s`` (k,) of ``subject`` into its report.

    ``max_cond`` is the κ₂ threshold of the ``ill-conditioned`` flag; None takes
    ``tolerances.default_max_cond`` of the working dtype. ``gap_rtol`` is the
    relative gap |s_i − s_j|/σ_max at or below which a pair is near-degenerate;
    None takes ``tolerances.inspect_near_degenerate_tolerance`` (√ε_w).
    """
    m, n = subject.matrix_shape
    s = s.to(dtype=torch.float64, device="cpu")
    x = _spectrum_numbers(s, m, n, subject.dtype, computed_in, gap_rtol)
    if max_cond is None:
        max_cond = tolerances.default_max_cond(tolerances.compute_dtype(subject.dtype))
    return MatrixReport(
        name=subject.name,
        path=subject.path,
        key=subject.key,
        shape=subject.shape,
        matrix_shape=(m, n),
        dtype=dtype_name(subject.dtype),
        compute_dtype=dtype_name(computed_in),
        device=device,
        method=method,
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
    check_matrix(tensor, name if path is None else None, path=path, key=key)
    if precision not in PRECISIONS.values():
        raise InputError(
            f"svdguard.diagnose: precision must be torch.float64 or torch.float32, got {precision}"
        )
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
        method=spectrum.method,
    )
