"""The rules of ``inspect``: a stable code and name per finding kind, and which ones run.

Like a linter's rules: every kind of finding has a code (``SG201``) and a name
(``ill-conditioned``); a :class:`RuleSelection` says which run, from the
profile's defaults, ``select`` (replaces them), ``extend_select`` (adds),
``ignore`` (removes) and per-tensor ignores by name glob. A selector is a code,
a code prefix (``SG3`` is every tie rule), a rule name, or ``ALL``.

The table below is the one source of the codes, the names and the explanations
printed by ``svdguard explain``; ``docs/diagnostics.md#rules`` shows the same table.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from svdguard.app.report import Flag, Profile
from svdguard.errors import InputError

__all__ = ["PROFILE_RULES", "RULES", "Rule", "RuleSelection", "find_rule", "resolve_selectors"]


@dataclass(frozen=True)
class Rule:
    """One kind of finding: its code, name, a one-line summary and the full explanation."""

    flag: Flag
    summary: str
    severities: str  #: the severity in each profile, in words
    explanation: str
    parameter: str | None = None  #: the library parameter holding its threshold

    @property
    def code(self) -> str:
        return self.flag.code

    @property
    def name(self) -> str:
        return self.flag.value


RULES: tuple[Rule, ...] = (
    Rule(
        Flag.NONFINITE,
        "the matrix holds NaN or ±Inf entries",
        "error in every profile",
        "No singular values exist and anything computed from the weight is NaN. Usually a "
        "diverged training step, an overflow in low precision, or uninitialised memory saved "
        "to disk. Find the step that produced it; the checkpoint is not usable as it is.",
    ),
    Rule(
        Flag.ZERO,
        "every entry is zero",
        "warning in every profile",
        "Rank 0 and κ₂ = ∞: the layer passes nothing on. Either it was never trained "
        "(a head left at zero, a pruned block) or it was zeroed by mistake. Through an SVD "
        "every singular vector is arbitrary (null-space gauge freedom).",
    ),
    Rule(
        Flag.ILL_CONDITIONED,
        "κ₂ beyond half the working digits and unusual for the shape",
        "warning; threshold max(1/√ε_w, κ_0.99(m, n)) in health, 1/√ε_w in svd-grad",
        "κ₂ = σ_max/σ_min: solving with the matrix, inverting it, or dividing by σ_min "
        "(pseudo-inverses, whitening, the 1/s terms of the SVD backward) loses about "
        "log10 κ₂ digits. The health profile warns only when κ₂ ≥ 1/√ε_w (fewer than half the "
        "working digits left) and κ₂ is beyond what 1 in 100 Gaussian matrices of the same "
        "shape reach (κ_0.99(m, n), about 200·n for a square n×n matrix): random square "
        "weights routinely have κ₂ of several thousand. Set the threshold with max_cond; "
        "max_cond = inf switches the rule off.",
        parameter="max_cond",
    ),
    Rule(
        Flag.RANK_DEFICIENT,
        "numerical rank < min(m, n) at the working precision",
        "health: warning when κ₂ also reaches the ill-conditioned threshold, else info; "
        "svd-grad: warning",
        "A singular value at or below max(m, n)·ε_w·σ_max (numpy's matrix_rank tolerance in "
        "the working dtype) cannot be told from zero. Using the weight is fine unless you "
        "solve with it or invert it; through an SVD, the singular vectors of those values "
        "span a null space in which any basis is as good as another (gauge freedom), so a "
        "loss that depends on them has no gradient.",
    ),
    Rule(
        Flag.TIED,
        "singular values tied at rounding level",
        "health: info; svd-grad: error",
        "Two singular values closer than max(ε_w·σ_max, max(m, n)·ε₆₄·σ_max): their "
        "singular vectors are not determined (any rotation inside the tie is as good), "
        "and torch.linalg.svd's backward divides by their difference: NaN or ±Inf. This "
        "matters only if you differentiate through the SVD of this weight (spectral "
        "normalisation, orthogonality penalties, low-rank projections); orthogonal and "
        "identity initialisations are tied by construction and are healthy weights. "
        "svdguard.svd gives a finite gradient for losses that do not depend on the basis.",
    ),
    Rule(
        Flag.NEAR_DEGENERATE,
        "a pair of singular values closer than gap_tol·σ_max",
        "svd-grad: warning; not evaluated in health unless selected",
        "A gap below √ε_w·σ_max leaves fewer than half the working digits in the singular "
        "vectors, and the SVD backward multiplies by σ_max/gap (the amplification the "
        "message names). Random float32 weights of transformer size have such gaps; they "
        "matter only when differentiating through U or V. Set the threshold with gap_tol; "
        "gap_tol = 0 switches the rule off.",
        parameter="gap_rtol",
    ),
    Rule(
        Flag.NOISE_FLOOR,
        "bf16/fp16/fp8 storage: singular values or gaps below ε(storage)·σ_max",
        "info in every profile",
        "The stored entries carry a rounding error of ε(storage) each, so singular values "
        "and gaps below about ε(storage)·σ_max are that rounding, whatever precision the "
        "SVD is computed in. Context for reading the other numbers, not a defect.",
    ),
    Rule(
        Flag.UNRESOLVED,
        "the analysis precision cannot decide a check",
        "info in every profile",
        "A coarser analysis precision (precision = float32) moves every computed singular "
        "value by up to max(m, n)·ε_p·σ_max. A verdict that holds across that margin is "
        "reported at its severity; one that does not is reported here, at info, so that "
        "float32 never reports a severity the float64 analysis would not. Rerun in float64 "
        "to settle it.",
        parameter="precision",
    ),
)

_BY_CODE = {rule.code: rule for rule in RULES}
_BY_NAME = {rule.name: rule for rule in RULES}

#: The rules a profile runs when nothing is selected.
PROFILE_RULES: dict[Profile, frozenset[str]] = {
    Profile.HEALTH: frozenset(r.code for r in RULES if r.flag is not Flag.NEAR_DEGENERATE),
    Profile.SVD_GRAD: frozenset(r.code for r in RULES),
}


def find_rule(selector: str) -> Rule | None:
    """The rule named by a code (any case) or a name; None when there is none."""
    return _BY_CODE.get(selector.strip().upper()) or _BY_NAME.get(selector.strip().lower())


def resolve_selectors(selectors: Iterable[str], parameter: str) -> frozenset[str]:
    """The codes named by ``selectors``: codes, code prefixes (``SG3``), names, or ``ALL``.

    An unknown selector raises InputError naming ``parameter`` and the known codes.
    """
    codes: set[str] = set()
    for raw in selectors:
        for selector in (part.strip() for part in raw.split(",")):
            if not selector:
                continue
            if selector.upper() == "ALL":
                codes.update(_BY_CODE)
                continue
            rule = find_rule(selector)
            if rule is not None:
                codes.add(rule.code)
                continue
            prefixed = {code for code in _BY_CODE if code.startswith(selector.upper())}
            if selector.upper().startswith("SG") and prefixed:
                codes.update(prefixed)
                continue
            known = ", ".join(f"{r.code} ({r.name})" for r in RULES)
            raise InputError(f"{parameter}: unknown rule {selector!r}; the rules are {known}")
    return frozenset(codes)


@dataclass(frozen=True)
class RuleSelection:
    """Which rules run, per tensor: the profile's set, adjusted, minus per-tensor ignores."""

    profile: Profile = Profile.HEALTH
    select: frozenset[str] | None = None  #: replaces the profile's rules when given
    extend_select: frozenset[str] = frozenset()
    ignore: frozenset[str] = frozenset()
    per_tensor_ignores: tuple[tuple[str, frozenset[str]], ...] = field(default=())

    @classmethod
    def build(
        cls,
        profile: Profile | str = Profile.HEALTH,
        *,
        select: Sequence[str] | None = None,
        extend_select: Sequence[str] = (),
        ignore: Sequence[str] = (),
        per_tensor_ignores: Mapping[str, Sequence[str]] | None = None,
    ) -> RuleSelection:
        """From selectors as users write them (codes, prefixes, names, ``ALL``)."""
        try:
            chosen = Profile(profile)
        except ValueError:
            raise InputError(
                f"profile must be one of {', '.join(p.value for p in Profile)}, got {profile!r}"
            ) from None
        per_tensor = tuple(
            (glob, resolve_selectors(codes, f"per_tensor_ignores[{glob!r}]"))
            for glob, codes in (per_tensor_ignores or {}).items()
        )
        return cls(
            profile=chosen,
            select=None if select is None else resolve_selectors(select, "select"),
            extend_select=resolve_selectors(extend_select, "extend_select"),
            ignore=resolve_selectors(ignore, "ignore"),
            per_tensor_ignores=per_tensor,
        )

    @property
    def codes(self) -> frozenset[str]:
        """The rules that run on a tensor no per-tensor ignore matches."""
        base = PROFILE_RULES[self.profile] if self.select is None else self.select
        return (base | self.extend_select) - self.ignore

    def active(self, name: str) -> frozenset[str]:
        """The rules that run on tensor ``name`` (its key, or the file name of a bare array)."""
        codes = self.codes
        for glob, ignored in self.per_tensor_ignores:
            if fnmatch.fnmatchcase(name, glob):
                codes = codes - ignored
        return codes
