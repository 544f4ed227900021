"""What ``inspect`` hands on: frozen dataclasses of plain numbers and strings.

This module is a leaf (standard library only): ``svdguard.app.diagnose``
fills a :class:`MatrixReport`, ``svdguard.app.inspection`` adds
:class:`FailedReport` and :class:`SkippedTensor` rows, and the CLI renders all
three through ``to_dict()``.

Units: every singular value, gap and tolerance is absolute (the units of the
matrix entries) unless its name starts with ``rel_`` or says ``relative``.
Floats may be ``inf`` (κ of a singular matrix) and ``None`` means "not
computed" (e.g. every number of a matrix holding NaN). ``to_dict()`` keeps the
floats as they are; :func:`svdguard.app.formatting.to_json` encodes them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

__all__ = [
    "SCHEMA_VERSION",
    "FailedReport",
    "Finding",
    "Flag",
    "InspectionItem",
    "INSPECT_SCHEMA_VERSION",
    "InspectionSummary",
    "MatrixReport",
    "Profile",
    "Severity",
    "SkipReason",
    "SkippedTensor",
    "item_severity",
    "worst_severity",
]

#: Version of every JSON document svdguard writes (the inspect report,
#: ``svdguard/cli/inspect_schema.json``, and the grad report); bumped when a field
#: changes meaning or goes away. 2: one encoding of NaN/±∞ ("NaN", "Infinity",
#: "-Infinity") in every document, and findings name their threshold's parameter.
SCHEMA_VERSION = 2

#: Version of the ``inspect`` JSON report. 3: findings carry a rule code (``SG…``), the
#: ``degenerate`` flag became ``tied`` and ``near-degenerate``, severities depend on the
#: profile (``health`` or ``svd-grad``), and rows carry stable and effective rank.
INSPECT_SCHEMA_VERSION = 3


class Severity(str, Enum):
    """How bad a finding is; ordered ``ERROR > WARNING > INFO``.

    Which severity a rule raises depends on the profile (``docs/diagnostics.md#rules``):

    * ``error``: the weight cannot be used as it is for the question asked
      (non-finite entries, a failed decomposition; tied singular values in svd-grad).
    * ``warning``: well defined but ill-posed, and unusual for the shape
      (ill-conditioned, rank-deficient, near-degenerate in svd-grad, all-zero).
    * ``info``: context that changes how to read the numbers (ties in health, the
      noise floor of low-precision storage, what a coarser precision cannot decide).
    """

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        """3 for error, 2 for warning, 1 for info (0 is "no finding")."""
        return {"error": 3, "warning": 2, "info": 1}[self.value]


class Profile(str, Enum):
    """The question a run answers (``docs/diagnostics.md#profiles``).

    * ``health``: is this checkpoint numerically healthy to use (multiply, solve, fine-tune)?
    * ``svd-grad``: will differentiating through the SVD of these weights break?
    """

    HEALTH = "health"
    SVD_GRAD = "svd-grad"


class Flag(str, Enum):
    """The kinds of finding ``inspect`` reports; ``value`` is the name users see, ``code`` the rule."""

    NONFINITE = "nonfinite"
    ZERO = "zero"
    ILL_CONDITIONED = "ill-conditioned"
    RANK_DEFICIENT = "rank-deficient"
    TIED = "tied"
    NEAR_DEGENERATE = "near-degenerate"
    NOISE_FLOOR = "noise-floor"
    UNRESOLVED = "unresolved"
    FAILED = "failed"

    @property
    def code(self) -> str:
        """The stable rule code (``SG101`` …), the name ``--select``/``--ignore`` also accept."""
        return _CODES[self]


_CODES = {
    Flag.NONFINITE: "SG101",
    Flag.ZERO: "SG102",
    Flag.ILL_CONDITIONED: "SG201",
    Flag.RANK_DEFICIENT: "SG202",
    Flag.TIED: "SG301",
    Flag.NEAR_DEGENERATE: "SG302",
    Flag.NOISE_FLOOR: "SG401",
    Flag.UNRESOLVED: "SG402",
    Flag.FAILED: "SG001",
}


class SkipReason(str, Enum):
    """Why a tensor was not analysed (each is counted in the summary)."""

    EXCLUDED = "excluded"  #: its name did not pass the ``include`` / ``exclude`` globs
    SCALAR = "scalar"  #: 0-D
    VECTOR = "1-d"  #: a vector (biases, norms)
    EMPTY = "empty"  #: a dimension of size 0
    INTEGER = "integer"  #: integer dtype (ids, counters, quantised payloads)
    BOOL = "bool"  #: masks
    UNSUPPORTED_DTYPE = "unsupported-dtype"  #: a dtype torch lacks (strings, float128, ...)
    TOO_LARGE = "too-large"  #: above ``max_elements`` or the memory available
    OPTIMIZER = "optimizer-state"  #: Adam moments, momentum buffers (``include_optimizer``)
    NOT_WEIGHTS = "not-weights"  #: a file of a checkpoint directory that holds no weights
    DUPLICATE = "duplicate"  #: a second copy of weights read from another file
    TOO_SLOW = "too-slow"  #: its SVD is estimated to take longer than ``max_time``
    ALIAS = "alias"  #: a second name of a tensor already analysed (tied weights)


@dataclass(frozen=True)
class Finding:
    """One flag raised on one matrix: its stable code, a sentence with the numbers and the consequence.

    ``flag`` is the code (stable across versions); ``parameter`` names the
    argument of :func:`svdguard.diagnose` / :func:`svdguard.inspect` whose
    threshold raised the finding (``"max_cond"``, ``"gap_rtol"``,
    ``"precision"``), None when no setting moves it.
    """

    flag: Flag
    severity: Severity
    message: str
    parameter: str | None = None

    @property
    def code(self) -> str:
        return self.flag.code

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.flag.code,
            "flag": self.flag.value,
            "severity": self.severity.value,
            "message": self.message,
            "parameter": self.parameter,
        }


@dataclass(frozen=True)
class MatrixReport:
    """Diagnostics of one matrix (a ≥3-D tensor is analysed as ``shape[0] × ∏ shape[1:]``).

    Spectrum ``s_1 ≥ … ≥ s_k`` (k = min(m, n)), computed in ``compute_dtype``;
    thresholds derived from the *working dtype* (the dtype the tensor is
    decomposed in by its users: its own dtype, float32 for bf16/fp16/fp8), see
    ``svdguard.tolerances``.
    """

    name: str  #: ``file[key]``, ``file`` for a bare .npy, or a caller's label
    shape: tuple[int, ...]  #: the stored shape
    matrix_shape: tuple[int, int]  #: (m, n) analysed
    dtype: str  #: the storage dtype, as torch spells it ("bfloat16")
    compute_dtype: str  #: the dtype the singular values were computed in
    device: str  #: where they were computed ("cpu", "cuda:0")
    method: str | None = None  #: "gram" or "svd" (``svdguard.linalg.spectrum_analysis.Spectrum``)
    path: str | None = None
    key: str | None = None
    nonfinite: int = 0  #: count of NaN/±Inf entries; when > 0 the numbers below are None
    sigma_max: float | None = None
    sigma_min: float | None = None
    cond: float | None = None  #: κ₂ = σ_max/σ_min as computed; inf when σ_min = 0
    cond_resolved: bool | None = None  #: False when σ_min is below the computation's resolution
    cond_lower_bound: float | None = None  #: σ_max/(σ_min + τ_compute): κ₂ is at least this
    rank: int | None = None  #: numerical rank: #{s_i > rank_tol}
    rank_tol: float | None = None
    rel_min_gap: float | None = (
        None  #: min_i gap_i/σ_max, gap_i as LAPACK xDISNA (docs/diagnostics.md)
    )
    tie_tol: float | None = None  #: pairs with |s_i − s_j| ≤ this are tied (rounding level)
    near_degenerate_tol: float | None = None  #: pairs with |s_i − s_j| ≤ this are near-degenerate
    tied_pairs: int | None = None
    near_degenerate_pairs: int | None = None  #: includes the tied pairs
    vector_error_bound: float | None = None  #: ε_w·σ_max/min_i gap_i (LAPACK, radians)
    noise_floor: float | None = None  #: ε(storage)·σ_max, for bf16/fp16/fp8 storage only
    below_noise_floor: int | None = None  #: singular values ≤ the noise floor
    typical_cond: float | None = None  #: κ₂ that 1 in 100 Gaussian matrices of this shape exceed
    stable_rank: float | None = None  #: ‖A‖_F²/σ_max² = Σ s_i²/s_1²
    effective_rank: float | None = None  #: exp(−Σ p_i log p_i), p_i = s_i/Σ s_j
    sketch: tuple[float, ...] | None = None  #: log10(s_i/σ_max) at evenly spaced i (sparkline)
    singular_values: tuple[float, ...] | None = None  #: s_1 ≥ … ≥ s_k, when asked for
    findings: tuple[Finding, ...] = field(default=())

    @property
    def severity(self) -> Severity | None:
        """The worst severity among the findings; None when the matrix is clean."""
        return worst_severity(f.severity for f in self.findings)

    @property
    def reshaped(self) -> bool:
        """True when a ≥3-D tensor was flattened to a matrix."""
        return len(self.shape) != 2

    @property
    def flags(self) -> tuple[str, ...]:
        return tuple(f.flag.value for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "matrix",
            "name": self.name,
            "path": self.path,
            "key": self.key,
            "shape": list(self.shape),
            "matrix_shape": list(self.matrix_shape),
            "reshaped": self.reshaped,
            "dtype": self.dtype,
            "compute_dtype": self.compute_dtype,
            "device": self.device,
            "method": self.method,
            "nonfinite": self.nonfinite,
            "sigma_max": self.sigma_max,
            "sigma_min": self.sigma_min,
            "cond": self.cond,
            "cond_resolved": self.cond_resolved,
            "cond_lower_bound": self.cond_lower_bound,
            "rank": self.rank,
            "rank_tol": self.rank_tol,
            "rel_min_gap": self.rel_min_gap,
            "tie_tol": self.tie_tol,
            "near_degenerate_tol": self.near_degenerate_tol,
            "tied_pairs": self.tied_pairs,
            "near_degenerate_pairs": self.near_degenerate_pairs,
            "vector_error_bound": self.vector_error_bound,
            "noise_floor": self.noise_floor,
            "below_noise_floor": self.below_noise_floor,
            "typical_cond": self.typical_cond,
            "stable_rank": self.stable_rank,
            "effective_rank": self.effective_rank,
            "singular_values": (
                None if self.singular_values is None else list(self.singular_values)
            ),
            "severity": None if self.severity is None else self.severity.value,
            "flags": list(self.flags),
            "codes": [f.flag.code for f in self.findings],
            "findings": [f.to_dict() for f in self.findings],
        }


@dataclass(frozen=True)
class FailedReport:
    """A tensor (``key`` set) or a whole file (``key`` None) that could not be analysed.

    ``stage`` says where it broke: ``"read"`` (the file's header: nothing in it
    was analysed), ``"load"`` (this tensor's payload) or ``"svd"`` (the
    decomposition failed even after the retries). Always severity error.
    """

    name: str
    reason: str
    stage: str
    path: str | None = None
    key: str | None = None
    shape: tuple[int, ...] | None = None
    dtype: str | None = None

    severity = Severity.ERROR

    @property
    def file_level(self) -> bool:
        """True when a whole file could not be read (an input error: exit code 2)."""
        return self.stage == "read"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "failed",
            "name": self.name,
            "path": self.path,
            "key": self.key,
            "shape": None if self.shape is None else list(self.shape),
            "dtype": self.dtype,
            "stage": self.stage,
            "reason": self.reason,
            "severity": self.severity.value,
        }


@dataclass(frozen=True)
class SkippedTensor:
    """A tensor that is not a matrix to analyse (counted in the summary by ``reason``)."""

    name: str
    reason: SkipReason
    path: str | None = None
    key: str | None = None
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    detail: str = ""  #: a sentence for the unusual reasons (too-large, unsupported-dtype)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "skipped",
            "name": self.name,
            "path": self.path,
            "key": self.key,
            "shape": None if self.shape is None else list(self.shape),
            "dtype": self.dtype,
            "reason": self.reason.value,
            "detail": self.detail,
        }


InspectionItem = MatrixReport | FailedReport | SkippedTensor


def worst_severity(severities: Iterable[Severity | None]) -> Severity | None:
    """The highest severity in ``severities`` (None entries ignored); None when there is none."""
    present = [s for s in severities if s is not None]
    return max(present, key=lambda s: s.rank) if present else None


def item_severity(item: InspectionItem) -> Severity | None:
    """A row's severity: its worst finding, error for a failed row, None for a skipped one."""
    if isinstance(item, SkippedTensor):
        return None
    return item.severity


@dataclass(frozen=True)
class InspectionSummary:
    """Counts over every row of a run; what the one-line summary and the exit code read."""

    matrices: int
    errors: int  #: matrices whose worst finding is an error
    warnings: int
    infos: int
    clean: int
    failed: int  #: failed rows (tensor- and file-level)
    input_errors: int  #: files that could not be read at all
    skipped: dict[str, int]  #: reason → count
    worst: Severity | None

    @classmethod
    def of(cls, items: Iterable[InspectionItem]) -> InspectionSummary:
        by_severity: Counter[Severity | None] = Counter()
        skipped: Counter[str] = Counter()
        failed = input_errors = matrices = 0
        worst: Severity | None = None
        for item in items:
            if isinstance(item, SkippedTensor):
                skipped[item.reason.value] += 1
                continue
            worst = worst_severity((worst, item_severity(item)))
            if isinstance(item, FailedReport):
                failed += 1
                input_errors += item.file_level
            else:
                matrices += 1
                by_severity[item.severity] += 1
        return cls(
            matrices=matrices,
            errors=by_severity[Severity.ERROR],
            warnings=by_severity[Severity.WARNING],
            infos=by_severity[Severity.INFO],
            clean=by_severity[None],
            failed=failed,
            input_errors=input_errors,
            skipped=dict(sorted(skipped.items())),
            worst=worst,
        )

    def reaches(self, level: Severity | None) -> bool:
        """True when some row is at or above ``level`` (None: never)."""
        return level is not None and self.worst is not None and self.worst.rank >= level.rank

    def to_dict(self) -> dict[str, Any]:
        return {
            "matrices": self.matrices,
            "errors": self.errors,
            "warnings": self.warnings,
            "infos": self.infos,
            "clean": self.clean,
            "failed": self.failed,
            "input_errors": self.input_errors,
            "skipped": dict(self.skipped),
            "worst": None if self.worst is None else self.worst.value,
        }

    def line(self) -> str:
        """``"12 matrices: 2 error, 3 warning, 1 info, 6 clean; 3 skipped (1-d: 3)"``."""
        text = (
            f"{self.matrices} matri{'x' if self.matrices == 1 else 'ces'}: "
            f"{self.errors} error, {self.warnings} warning, {self.infos} info, {self.clean} clean"
        )
        if self.failed:
            text += f"; {self.failed} failed"
            if self.input_errors:
                text += f" ({self.input_errors} unreadable file{'s' * (self.input_errors > 1)})"
        total_skipped = sum(self.skipped.values())
        if total_skipped:
            reasons = ", ".join(f"{reason}: {count}" for reason, count in self.skipped.items())
            text += f"; {total_skipped} skipped ({reasons})"
        return text
