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
* tied pairs: |s_i − s_j| ≤ τ_tie (``tolerances.reference_tie_tolerance``),
  near-degenerate pairs: |s_i − s_j| ≤ gap_rtol·σ_max (√ε_w by default).
* stable rank Σ s_i²/s_1², effective rank exp(−Σ p_i log p_i) with p_i = s_i/Σ s_j.

The spectrum itself comes from :mod:`svdguard.linalg.spectrum_analysis`; this
module judges it for a profile (``health`` or ``svd-grad``) with the rules of
:mod:`svdguard.app.rules`. Each :class:`~svdguard.app.report.Finding` carries a
stable code, the numbers, the consequence, and the library parameter whose
threshold raised it; remedies that name command-line flags are the CLI's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np
import torch

from svdguard import tolerances
from svdguard.app.report import Finding, Flag, MatrixReport, Profile, Severity
from svdguard.app.rules import PROFILE_RULES, RuleSelection
from svdguard.errors import InputError
from svdguard.linalg.matrix_input import check_matrix
from svdguard.linalg.spectrum_analysis import (
    PRECISIONS,
    as_matrix,
    count_close_pairs,
    count_nonfinite,
    dtype_name,
    singular_values,
)

__all__ = [
    "Judgement",
    "Subject",
    "check_thresholds",
    "diagnose",
    "nonfinite_report",
    "report_from_spectrum",
]


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


def nonfinite_report(
    subject: Subject, count: int, device: str, judgement: Judgement | None = None
) -> MatrixReport:
    """The report of a matrix holding NaN/Inf: no spectrum, one error finding (unless ignored)."""
    numel = math.prod(subject.shape)
    finding = Finding(
        Flag.NONFINITE,
        Severity.ERROR,
        f"{count} of {numel} entries are NaN or Inf: no singular values exist and anything "
        "computed from this weight is NaN; find the step that produced them (divergence, "
        "overflow, uninitialised memory)",
    )
    runs = judgement is None or judgement.runs(Flag.NONFINITE)
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
        findings=(finding,) if runs else (),
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
    margin: float  #: how far the computed s_i may lie from float64's (analysis_margin)
    reference_rank_tol: float  #: max(m, n)·ε_w·σ_max, whatever the precision
    stable_rank: float | None
    effective_rank: float | None
    sketch: tuple[float, ...] | None


#: Points of the log-spectrum kept for the sparkline of a row.
SKETCH_POINTS = 12


def _ranks_and_sketch(
    s: np.ndarray,
) -> tuple[float | None, float | None, tuple[float, ...] | None]:
    """Stable rank Σs²/s_1², effective rank exp(entropy of s/Σs), and the log-spectrum sketch.

    O(k) on the spectrum already computed: no further decomposition.
    """
    if s.size == 0 or float(s[0]) == 0.0:
        return None, None, None
    stable = float(np.square(s / s[0]).sum())
    p = s / s.sum()
    nonzero = p[p > 0]
    effective = math.exp(float(-(nonzero * np.log(nonzero)).sum()))
    k = s.size
    picks = sorted({round(i * (k - 1) / (SKETCH_POINTS - 1)) for i in range(SKETCH_POINTS)})
    tiny = np.finfo(np.float64).tiny
    points = np.log10(np.maximum(s[picks] / s[0], tiny))  # one vector op, not one per point
    sketch = tuple(points.tolist())
    return stable, effective, sketch


def _spectrum_numbers(
    s: np.ndarray,
    m: int,
    n: int,
    storage: torch.dtype,
    computed_in: torch.dtype,
    gap_rtol: float | None,
) -> _Numbers:
    """Every number of the report from the float64 spectrum ``s`` (k,) of an m×n matrix.

    numpy on the float64 values: a handful of vector operations per matrix, so that
    a checkpoint of many small matrices costs little beyond their decompositions.
    """
    working = tolerances.compute_dtype(storage)
    k = s.size
    sigma_max, sigma_min = float(s[0]), float(s[-1])
    # κ₂ = σ_max/σ_min; the computation resolves σ_min only above its own rounding level
    # τ_p = max(m, n)·ε_p·σ_max, and the true σ_min ≤ computed + τ_p: κ₂ ≥ σ_max/(σ_min + τ_p).
    cond = sigma_max / sigma_min if sigma_min > 0 else math.inf
    computed_rounding = tolerances.rounding_level(sigma_max, computed_in, m, n)
    cond_resolved = sigma_min > computed_rounding
    # A subnormal matrix: τ_p underflows to 0 and σ_min may be 0 too; the bound is then ∞.
    resolvable = sigma_min + computed_rounding
    cond_lower_bound = sigma_max / resolvable if sigma_max > 0 and resolvable > 0 else math.inf
    rank_tol = tolerances.inspect_rank_tolerance(sigma_max, working, computed_in, m, n)
    rank = int(np.count_nonzero(s > rank_tol))
    # Thresholds are those of the float64 analysis; a coarser precision only widens the margin.
    tie_tol = tolerances.reference_tie_tolerance(sigma_max, working, m, n)
    if gap_rtol is None:
        near_tol = tolerances.inspect_near_degenerate_tolerance(sigma_max, working)
    else:
        near_tol = gap_rtol * sigma_max
    near_tol = max(near_tol, tie_tol) if gap_rtol != 0 else 0.0
    # min_i gap_i, gap_i as xDISNA's (svdguard.linalg.spectrum.singular_gaps): the smallest
    # step between neighbours, and for m ≠ n also the smallest value s_k; ∞ for one value.
    min_pair_gap = float((s[:-1] - s[1:]).min()) if k > 1 else None
    min_gap = math.inf if min_pair_gap is None else min_pair_gap
    if m != n:
        min_gap = min(min_gap, sigma_min)
    # gap/σ_max is 0/0 for the zero matrix: undefined, reported as None.
    rel_min_gap = min_gap / sigma_max if sigma_max > 0 else None
    bound = None
    if rel_min_gap is not None:
        eps_w = tolerances.machine_eps(working)
        bound = eps_w / rel_min_gap if rel_min_gap > 0 else math.inf
    noise_floor = below = None
    if storage.is_floating_point and torch.finfo(storage).bits < 32:
        noise_floor = tolerances.noise_floor(storage, sigma_max)
        below = int(np.count_nonzero(s <= noise_floor))
    stable, effective, sketch = _ranks_and_sketch(s)
    as_tensor = torch.from_numpy(s)  # shares the memory
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
        tied_pairs=count_close_pairs(as_tensor, tie_tol),
        near_pairs=count_close_pairs(as_tensor, near_tol) if near_tol > 0 else 0,
        vector_error_bound=bound,
        noise_floor=noise_floor,
        below_noise_floor=below,
        margin=tolerances.analysis_margin(sigma_max, computed_in, m, n),
        reference_rank_tol=tolerances.rounding_level(sigma_max, working, m, n),
        stable_rank=stable,
        effective_rank=effective,
        sketch=sketch,
    )


class _Verdict(Enum):
    """A check on a computed spectrum: holds for every spectrum within the margin, for some, none."""

    YES = "yes"
    UNRESOLVED = "unresolved"
    NO = "no"


def _at_most(value: float, threshold: float, margin: float) -> _Verdict:
    """``value ≤ threshold`` when ``value`` is known only to ± ``margin``."""
    if value + margin <= threshold:
        return _Verdict.YES
    return _Verdict.UNRESOLVED if value - margin <= threshold else _Verdict.NO


@dataclass(frozen=True)
class Judgement:
    """How a run judges a spectrum: the profile, the rules that run, the thresholds given."""

    profile: Profile = Profile.HEALTH
    rules: frozenset[str] = PROFILE_RULES[Profile.HEALTH]
    max_cond: float | None = None  #: None: derived per tensor; inf: ill-conditioned is off
    gap_rtol: float | None = None  #: None: √ε_w; 0: near-degenerate is off

    def runs(self, flag: Flag) -> bool:
        return flag.code in self.rules


_AMPLIFICATION = "the SVD backward divides by their difference"


def _findings(
    x: _Numbers,
    m: int,
    n: int,
    storage: torch.dtype,
    computed_in: torch.dtype,
    judgement: Judgement,
) -> tuple[Finding, ...]:
    """Judge the numbers: each finding with a sentence naming the numbers and the consequence.

    Each check is a threshold on the float64 spectrum; with a coarser precision the
    computed values carry ± margin (``tolerances.analysis_margin``) and a check that
    the margin leaves open becomes one ``unresolved`` (info) finding instead, when
    it could have been a warning or an error (an open info verdict is dropped).
    ``parameter`` names the argument whose threshold raised a finding.
    """
    health = judgement.profile is Profile.HEALTH
    question = "health" if health else "svd-grad"
    if x.sigma_max == 0.0:
        if not judgement.runs(Flag.ZERO):
            return ()
        consequence = (
            "the layer passes nothing on (never trained, pruned, or zeroed by mistake)"
            if health
            else "every singular vector is arbitrary (gauge freedom): a loss through U or V "
            "has no gradient"
        )
        return (
            Finding(
                Flag.ZERO, Severity.WARNING, "every entry is zero: rank 0, κ₂ = ∞; " + consequence
            ),
        )
    found: list[Finding] = []
    open_checks: list[str] = []
    working = tolerances.compute_dtype(storage)
    eps_w = tolerances.machine_eps(working)
    k = min(m, n)
    margin = x.margin
    typical = tolerances.typical_cond(m, n)
    # A subnormal matrix: the margin underflows to 0 and σ_min may be 0 too.
    cond_low = x.sigma_max / (x.sigma_min + margin) if x.sigma_min + margin > 0 else math.inf
    cond_high = x.sigma_max / (x.sigma_min - margin) if x.sigma_min > margin else math.inf
    gap = x.min_pair_gap

    # --- ties and near ties: the singular vectors -------------------------------------------
    tie = _Verdict.NO if gap is None else _at_most(gap, x.tie_tol, 2 * margin)
    if judgement.runs(Flag.TIED):
        if tie is _Verdict.YES:
            pairs = x.tied_pairs
            if health:
                found.append(
                    Finding(
                        Flag.TIED,
                        Severity.INFO,
                        f"{pairs} pair(s) of singular values tied (|s_i − s_j| ≤ "
                        f"{x.tie_tol:.2e}), as in orthogonal or identity initialisations: "
                        "harmless for using this weight; it matters only if you differentiate "
                        "through the SVD of this weight (the svd-grad profile answers that question)",
                    )
                )
            else:
                found.append(
                    Finding(
                        Flag.TIED,
                        Severity.ERROR,
                        f"{pairs} pair(s) of singular values tied (|s_i − s_j| ≤ "
                        f"{x.tie_tol:.2e}): their singular vectors are not determined and "
                        f"{_AMPLIFICATION} (0): torch.linalg.svd's gradient through U or V "
                        "is NaN or ±Inf",
                    )
                )
        elif tie is _Verdict.UNRESOLVED and not health:  # in health a tie is only info
            open_checks.append("whether singular values are tied")
    if judgement.runs(Flag.NEAR_DEGENERATE) and tie is not _Verdict.YES and gap is not None:
        near = _Verdict.NO if x.near_tol <= 0 else _at_most(gap, x.near_tol, 2 * margin)
        if near is _Verdict.YES:
            amplification = x.sigma_max / gap if gap > 0 else math.inf
            found.append(
                Finding(
                    Flag.NEAR_DEGENERATE,
                    Severity.WARNING,
                    f"{x.near_pairs} near-degenerate pair(s) (|s_i − s_j| ≤ {x.near_tol:.2e}, "
                    f"smallest {gap / x.sigma_max:.2e}·σ_max): {_AMPLIFICATION}, so gradients "
                    f"through U or V are amplified up to σ_max/gap = {amplification:.1e}×",
                    parameter="gap_rtol",
                )
            )
        elif near is _Verdict.UNRESOLVED:
            open_checks.append("whether a pair is near-degenerate")

    # --- rank and conditioning: solving, inverting, 1/s terms ---------------------------------
    max_cond = judgement.max_cond
    if max_cond is None:
        max_cond = (
            tolerances.health_max_cond(working, m, n)
            if health
            else tolerances.default_max_cond(working)
        )
    digits = -math.log10(eps_w)
    deficient = _at_most(x.sigma_min, x.reference_rank_tol, margin)
    if judgement.runs(Flag.RANK_DEFICIENT):
        if deficient is _Verdict.YES:
            # health: as serious as SG201 would be (κ₂ unusual for the shape and beyond half
            # the working digits), else context; svd-grad: the null space is the problem.
            unusual = cond_low >= max_cond
            severity = Severity.WARNING if unusual or not health else Severity.INFO
            if health:
                consequence = (
                    f"κ₂ ≥ {cond_low:.1e} is beyond what 1 in 100 random {m}×{n} matrices "
                    f"reach ({typical:.1e}): solving with it or inverting it loses about "
                    f"{min(math.log10(cond_low), digits):.0f} of the {digits:.0f} digits"
                    if unusual
                    else f"κ₂ = {x.cond:.1e} is below the ill-conditioned threshold "
                    f"{max_cond:.1e} (ordinary for a random {m}×{n} matrix, or more than half "
                    f"of the {digits:.0f} digits left): harmless for using the weight unless "
                    "you solve with it or invert it"
                )
            else:
                consequence = (
                    "the singular vectors of those values span a null space in which any "
                    "basis is as good (gauge freedom): a loss that depends on them has no "
                    "gradient, and the 1/s terms of the SVD backward are rounding"
                )
            found.append(
                Finding(
                    Flag.RANK_DEFICIENT,
                    severity,
                    f"numerical rank {x.rank} < {k} (singular values ≤ max(m, n)·ε_w·σ_max = "
                    f"{x.reference_rank_tol:.2e} are zero at {dtype_name(working)} precision); "
                    + consequence,
                )
            )
        elif deficient is _Verdict.UNRESOLVED and (not health or cond_high >= max_cond):
            open_checks.append("whether the rank is deficient")
    rank_covers = deficient is _Verdict.YES and judgement.runs(Flag.RANK_DEFICIENT)
    if judgement.runs(Flag.ILL_CONDITIONED) and math.isfinite(max_cond) and not rank_covers:
        if cond_low >= max_cond:
            shape_note = (
                f", beyond what 1 in 100 random {m}×{n} matrices reach ({typical:.1e})"
                if cond_low >= typical
                else ""
            )
            found.append(
                Finding(
                    Flag.ILL_CONDITIONED,
                    Severity.WARNING,
                    f"κ₂ = {x.cond:.2e} ≥ {max_cond:.2e}{shape_note}: about "
                    f"{math.log10(x.cond):.1f} of the {-math.log10(eps_w):.0f} "
                    f"{dtype_name(working)} digits are lost solving with it, inverting it or "
                    "dividing by σ_min",
                    parameter="max_cond",
                )
            )
        elif cond_high >= max_cond:
            open_checks.append(f"whether κ₂ ≥ {max_cond:.1e} (κ₂ ≥ {cond_low:.1e} is certain)")

    # --- context ------------------------------------------------------------------------------
    if (
        judgement.runs(Flag.NOISE_FLOOR)
        and x.noise_floor is not None
        and (x.below_noise_floor or (gap is not None and gap <= x.noise_floor))
    ):
        found.append(
            Finding(
                Flag.NOISE_FLOOR,
                Severity.INFO,
                f"stored in {dtype_name(storage)}: singular values and gaps below "
                f"ε·σ_max = {x.noise_floor:.2e} are rounding of the stored entries "
                f"({x.below_noise_floor} singular value(s) below it"
                + (
                    f", smallest gap {gap:.2e})"
                    if gap is not None and gap <= x.noise_floor
                    else ")"
                ),
            )
        )
    if open_checks and judgement.runs(Flag.UNRESOLVED):
        found.append(
            Finding(
                Flag.UNRESOLVED,
                Severity.INFO,
                f"computed in {dtype_name(computed_in)}, each singular value is known to "
                f"± {margin:.1e} only, which leaves open " + "; ".join(open_checks) + " "
                f"({question} profile; the float64 analysis decides)",
                parameter="precision",
            )
        )
    return tuple(found)


def check_thresholds(max_cond: float | None, gap_rtol: float | None) -> None:
    """max_cond > 1 (inf switches ill-conditioned off); 0 ≤ gap_rtol < 1 (0 switches near ties off)."""
    if max_cond is not None and not (max_cond > 1.0):
        raise InputError(
            f"max_cond must be a number above 1 (inf switches the ill-conditioned check off), "
            f"got {max_cond}"
        )
    if gap_rtol is not None and not (0.0 <= gap_rtol < 1.0):
        raise InputError(
            f"gap_rtol must lie in [0, 1) (0 switches the near-degenerate check off), got {gap_rtol}"
        )


def report_from_spectrum(
    s: torch.Tensor,
    subject: Subject,
    *,
    computed_in: torch.dtype,
    device: str,
    judgement: Judgement | None = None,
    keep_spectrum: bool = False,
    method: str | None = "svd",
) -> MatrixReport:
    """Turn the descending spectrum ``s`` (k,) of ``subject`` into its report.

    ``judgement``: the profile, the rules that run and the thresholds
    (:class:`Judgement`; default: the health profile, every threshold derived).
    ``keep_spectrum``: carry s itself in the report (``singular_values``).
    """
    judgement = judgement or Judgement()
    m, n = subject.matrix_shape
    values = s.detach().to(dtype=torch.float64, device="cpu").numpy()
    x = _spectrum_numbers(values, m, n, subject.dtype, computed_in, judgement.gap_rtol)
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
        typical_cond=tolerances.typical_cond(m, n),
        stable_rank=x.stable_rank,
        effective_rank=x.effective_rank,
        sketch=x.sketch,
        singular_values=tuple(values.tolist()) if keep_spectrum else None,
        findings=_findings(x, m, n, subject.dtype, computed_in, judgement),
    )


def diagnose(
    tensor: torch.Tensor,
    *,
    name: str = "matrix",
    precision: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    profile: Profile | str = Profile.HEALTH,
    max_cond: float | None = None,
    gap_rtol: float | None = None,
    select: Sequence[str] | None = None,
    ignore: Sequence[str] = (),
    path: str | None = None,
    key: str | None = None,
) -> MatrixReport:
    """Diagnostics of one matrix (a ≥3-D tensor is analysed as ``shape[0] × ∏ shape[1:]``).

    ``precision`` (float64 by default) is the dtype the singular values are
    computed in; bf16/fp16/fp8 are upcast. ``device`` defaults to the tensor's.
    ``profile``: ``"health"`` (is the weight healthy to use?) or ``"svd-grad"``
    (will differentiating through its SVD break?), see ``docs/diagnostics.md``.
    ``max_cond``: κ₂ threshold of ``ill-conditioned`` (None: derived from the
    dtype, the shape and the profile; inf: off). ``gap_rtol``: relative gap of
    ``near-degenerate`` (None: √ε_w; 0: off). ``select`` / ``ignore``: rule
    codes, prefixes or names (``svdguard.app.rules``).
    NaN/Inf entries give a report with the ``nonfinite`` flag, never an
    exception; a decomposition that fails after its retry raises
    :class:`NumericalError`.

    >>> import torch
    >>> a = torch.diag(torch.tensor([3.0, 2.0, 2.0, 1.0], dtype=torch.float64))
    >>> report = diagnose(a)
    >>> report.cond, report.rank, report.tied_pairs, report.flags, report.severity.value
    (3.0, 4, 1, ('tied',), 'info')
    >>> diagnose(a, profile="svd-grad").severity.value
    'error'
    """
    check_matrix(tensor, name if path is None else None, path=path, key=key)
    if precision not in PRECISIONS.values():
        raise InputError(
            f"svdguard.diagnose: precision must be torch.float64 or torch.float32, got {precision}"
        )
    check_thresholds(max_cond, gap_rtol)
    rules = RuleSelection.build(profile, select=select, ignore=ignore)
    judgement = Judgement(
        profile=rules.profile, rules=rules.active(name), max_cond=max_cond, gap_rtol=gap_rtol
    )
    matrix = as_matrix(tensor)
    subject = Subject(name=name, shape=tuple(tensor.shape), dtype=tensor.dtype, path=path, key=key)
    target = torch.device(device) if device is not None else tensor.device
    bad = count_nonfinite(matrix)
    if bad:
        return nonfinite_report(subject, bad, str(target), judgement)
    spectrum = singular_values(matrix, precision=precision, device=target)
    return report_from_spectrum(
        spectrum.values,
        subject,
        computed_in=spectrum.dtype,
        device=spectrum.device,
        judgement=judgement,
        method=spectrum.method,
    )
