"""torch's own SVD gradient beside the stabilized one, with the facts that explain the difference.

:func:`compare_gradients` backpropagates one objective (a seeded probe loss or
saved upstream gradients, :mod:`svdguard.app.probes`) through two SVDs of the same
matrix or batch ``(..., m, n)``:

* *native*: ``torch.linalg.svd`` and torch's ``linalg_svd_backward``, which
  divides by s_j² − s_i² and returns inf/NaN at tied singular values;
* *stabilized*: :func:`svdguard.linalg.svd.svd` with the requested method.

Per batch element it records κ₂, the smallest relative singular-value gap
(min_i gap_i / σ_max, gap_i as LAPACK's xDISNA defines it), the pairs the
method's stabilizer changes (its ``acting_pairs``), each gradient's finiteness
and Frobenius norm, their relative difference, and a :class:`Verdict` for each
gradient, mildest first:

* ``derivative`` — finite, and the derivative of the loss;
* ``unverified`` — finite; at a tie the in-block part of the gradient is not in
  the factors (docs/backward.md) and the loss behind saved upstream gradients is
  unknown: the derivative for losses of U Vᴴ and S only;
* ``biased`` — a derivative exists and this is not it: the stabilizer changed
  kernel entries whose numerators carry signal (measured against the exact
  ``auto`` backward, beyond its rounding noise), trivialize zeroed the matrix,
  torch divided rounding by rounding, or a tie dropped a loss's in-block part;
* ``undefined`` — the loss depends on the basis inside tied singular values or
  on the singular vectors of zero ones (docs/backward.md, gauge freedom): no
  derivative exists, whatever the backward does;
* ``nonfinite`` — NaN/Inf, with its cause (NaN/Inf input, torch's division by a
  zero gap or a zero singular value, an overflow).

The stabilized gradient is exactly what ``svd(A, method=...)`` followed by the
objective and ``torch.autograd.grad`` gives: the CLI's output can be reproduced
bitwise from the library. Matrices with NaN/Inf entries are not decomposed (the
SVD drivers reject them); their gradients are NaN and they are reported as such.
No rich/typer here: the CLI renders :class:`GradientReport`.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from svdguard.app.report import SCHEMA_VERSION
from svdguard.errors import InputError, SvdguardWarning
from svdguard.linalg.gauge import NULL_SPACE, GaugeViolation, find_gauge_violations, value_labels
from svdguard.linalg.matrix_input import check_matrix
from svdguard.linalg.spectrum import condition_number, singular_gaps, tied_pairs
from svdguard.linalg.spectrum_analysis import dtype_name
from svdguard.linalg.stabilizer_values import Auto, Trivialize, stabilizer_from_name
from svdguard.linalg.stabilizers import (
    BackwardContext,
    Stabilizer,
    pair_grids,
    rounding_terms_kept,
    upper_pairs,
)
from svdguard.linalg.svd import METHODS, svd
from svdguard.tolerances import (
    compute_dtype,
    machine_eps,
    stabilizer_bias_tolerance,
    tie_tolerance,
)

__all__ = [
    "ElementFacts",
    "GradientComparison",
    "GradientReport",
    "Objective",
    "compare_gradients",
    "resolve_method",
]

Objective = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
SvdFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def resolve_method(method: str | None, eps: float | None) -> str:
    """The method requested: the explicit one, else ``clamp`` if ``eps`` is given, else ``auto``.

    ``eps`` alone selecting ``clamp`` is the seed's rule (its only knob was the
    clamp floor). Whether ``eps`` suits the method is left to :func:`svd`, which
    raises :class:`~svdguard.errors.InputError` for e.g. ``auto`` with ``eps``.
    """
    if method is None:
        return "clamp" if eps is not None else "auto"
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return method


#: What a computed gradient is, mildest first (the order of severity).
DERIVATIVE = "derivative"  #: finite, and the derivative of the loss exists and is this
UNVERIFIED = "unverified"  #: finite; at a tie it is the derivative only for some losses
BIASED = "biased"  #: finite, and a derivative exists, but this differs from it here
UNDEFINED = "undefined"  #: finite, but the loss has no derivative here
NONFINITE = "nonfinite"  #: NaN/Inf entries
VERDICTS = (DERIVATIVE, UNVERIFIED, BIASED, UNDEFINED, NONFINITE)


@dataclass(frozen=True)
class Verdict:
    """What one backward computed for one matrix, and why (``causes``, one sentence each)."""

    kind: str
    causes: tuple[str, ...] = ()
    where: str = ""  #: in a few words where: ``s2..s3``, ``s3..s5 null space``, ``zeroed``

    @property
    def severity(self) -> int:
        return VERDICTS.index(self.kind)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "where": self.where, "causes": list(self.causes)}


def value_runs(indices: Iterable[int]) -> str:
    """1-based labels of singular values, consecutive ones as runs: {1, 2, 4} → ``s2..s3, s5``."""
    ordered = sorted(set(indices))
    runs: list[list[int]] = []
    for i in ordered:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return ", ".join(value_labels(tuple(run)) for run in runs)


@dataclass(frozen=True)
class ElementFacts:
    """What one matrix of the batch tells about its two gradients."""

    index: tuple[int, ...]  #: position in the batch (() for a single matrix)
    input_finite: bool  #: False when the matrix has NaN/Inf entries (not decomposed)
    condition_number: float  #: κ₂ = σ_max / σ_min (inf when σ_min = 0)
    min_relative_gap: float  #: min_i gap_i / σ_max (0 for the zero matrix)
    acting_pairs: tuple[tuple[int, int], ...]  #: pairs i < j (0-based) the method changes
    native_finite: bool  #: torch's gradient has only finite entries
    native_norm: float | None  #: ‖dL/dA‖_F of torch's gradient (None if its backward raised)
    stabilized_finite: bool  #: the stabilized gradient has only finite entries
    stabilized_norm: float  #: ‖dL/dA‖_F of the stabilized gradient
    relative_difference: float | None  #: ‖g_stab − g_native‖_F / ‖g_native‖_F (both finite only)
    #: singular values (0-based) tied to rounding level whose difference term is dropped
    tied_values: tuple[int, ...]
    gauge_violations: tuple[GaugeViolation, ...]  #: choices the SVD leaves open the loss uses
    trivialized: bool  #: method trivialize zeroed this gradient (κ > max_cond)
    #: ‖g_stab − g_auto‖_F / ‖g_auto‖_F: the method against the exact backward (None for auto)
    bias: float | None
    verdict: Verdict  #: what the stabilized gradient is
    native_verdict: Verdict  #: what torch's gradient is

    @property
    def has_ties(self) -> bool:
        """Some singular values are tied to rounding level and their difference term dropped."""
        return bool(self.tied_values)

    @property
    def gauge_invariant(self) -> bool:
        return not self.gauge_violations

    @property
    def guarded_pairs(self) -> int:
        """How many pairs i < j the method changed."""
        return len(self.acting_pairs)

    @property
    def acting_labels(self) -> str:
        """The singular values of the changed pairs, 1-based: ``s1..s4``."""
        return value_runs(i for pair in self.acting_pairs for i in pair)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": list(self.index),
            "input_finite": self.input_finite,
            "condition_number": self.condition_number,
            "min_relative_gap": self.min_relative_gap,
            "acting_pairs": self.guarded_pairs,
            "acting_values": self.acting_labels,
            "native": {
                "finite": self.native_finite,
                "norm": self.native_norm,
                "verdict": self.native_verdict.to_dict(),
            },
            "stabilized": {
                "finite": self.stabilized_finite,
                "norm": self.stabilized_norm,
                "verdict": self.verdict.to_dict(),
            },
            "relative_difference": self.relative_difference,
            "bias": self.bias,
            "has_ties": self.has_ties,
            "tied_values": value_runs(self.tied_values),
            "gauge_invariant": self.gauge_invariant,
            "gauge_violations": [v.to_dict() for v in self.gauge_violations],
            "trivialized": self.trivialized,
        }


@dataclass(frozen=True)
class GradientReport:
    """Both gradients of one matrix or batch, summarised per element and in total."""

    shape: tuple[int, ...]  #: the (..., m, n) shape differentiated
    dtype: str  #: storage dtype of the input (and of the gradients)
    compute_dtype: str  #: dtype the SVDs ran in
    method: str
    eps: float | None
    degree: int | None
    max_cond: float | None
    objective: str  #: e.g. "probe polar (seed 0)" or "upstream U, Vh from g.npz"
    elements: tuple[ElementFacts, ...]
    native_error: str | None = None  #: torch's backward raised (e.g. complex phase dependence)
    notes: tuple[str, ...] = field(default=())  #: warnings svdguard emitted while computing
    #: the stored shape when it was viewed as the matrix ``shape`` (e.g. a conv kernel)
    stored_shape: tuple[int, ...] | None = None

    @property
    def count(self) -> int:
        return len(self.elements)

    @property
    def batched(self) -> bool:
        return len(self.shape) > 2

    @property
    def native_nonfinite(self) -> int:
        """Elements whose native gradient is not finite (all when torch's backward raised)."""
        return sum(not e.native_finite for e in self.elements)

    @property
    def stabilized_nonfinite(self) -> int:
        return sum(not e.stabilized_finite for e in self.elements)

    @property
    def gauge_dependent(self) -> int:
        return sum(not e.gauge_invariant for e in self.elements)

    @property
    def total_guarded_pairs(self) -> int:
        return sum(e.guarded_pairs for e in self.elements)

    def verdict_counts(self, *, native: bool = False) -> dict[str, int]:
        """How many elements got each verdict (every kind present, mildest first)."""
        counts = dict.fromkeys(VERDICTS, 0)
        for e in self.elements:
            counts[(e.native_verdict if native else e.verdict).kind] += 1
        return counts

    def totals(self) -> dict[str, Any]:
        return {
            "elements": self.count,
            "native_nonfinite": self.native_nonfinite,
            "stabilized_nonfinite": self.stabilized_nonfinite,
            "gauge_dependent": self.gauge_dependent,
            "acting_pairs": self.total_guarded_pairs,
            "verdicts": self.verdict_counts(),
            "native_verdicts": self.verdict_counts(native=True),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "stored_shape": list(self.stored_shape or self.shape),
            "shape": list(self.shape),
            "batched": self.batched,
            "dtype": self.dtype,
            "compute_dtype": self.compute_dtype,
            "method": self.method,
            "eps": self.eps,
            "degree": self.degree,
            "max_cond": self.max_cond,
            "objective": self.objective,
            "native_error": self.native_error,
            "library_notes": list(self.notes),
            "elements": [e.to_dict() for e in self.elements],
            "totals": self.totals(),
        }


@dataclass(frozen=True)
class GradientComparison:
    """The stabilized gradient dL/dA (input's shape and dtype), torch's own, and the report."""

    gradient: torch.Tensor
    native_gradient: torch.Tensor | None
    report: GradientReport


def _backprop(a: torch.Tensor, decompose: SvdFn, objective: Objective) -> torch.Tensor:
    """dL/dA for L = objective(decompose(A))."""
    leaf = a.detach().requires_grad_(True)
    u, s, vh = decompose(leaf)
    (grad,) = torch.autograd.grad(objective(u, s, vh), leaf)
    return grad


def _torch_svd(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """torch.linalg.svd, run in the compute dtype (LAPACK has no bfloat16/float16)."""
    u, s, vh = torch.linalg.svd(a.to(compute_dtype(a.dtype)), full_matrices=False)
    return u, s, vh


@dataclass(frozen=True)
class _NativeRun:
    """torch.linalg.svd's factors, the upstream gradients it receives, and its dL/dA."""

    factors: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    grad_u: torch.Tensor | None
    grad_vh: torch.Tensor | None
    gradient: torch.Tensor | None  #: None when torch's backward raised
    error: str | None


def _native_run(work: torch.Tensor, objective: Objective) -> _NativeRun:
    """One torch SVD serves the native gradient, the gauge check and the spectrum facts."""
    leaf = work.detach().requires_grad_(True)
    u, s, vh = _torch_svd(leaf)
    loss = objective(u, s, vh)
    # (∂L/∂U, ∂L/∂S, ∂L/∂Vh): what the SVD backward receives from the loss.
    grad_u, _, grad_vh = torch.autograd.grad(loss, (u, s, vh), allow_unused=True, retain_graph=True)
    gradient, error = None, None
    try:
        (gradient,) = torch.autograd.grad(loss, leaf)
    except RuntimeError as err:  # e.g. torch's check that a complex loss ignores the phase
        error = str(err).strip().splitlines()[0]
    factors = (u.detach(), s.detach(), vh.detach())
    return _NativeRun(factors, grad_u, grad_vh, gradient, error)


def _frobenius(x: torch.Tensor) -> torch.Tensor:
    """Per-matrix ‖x‖_F in float64, shape (...)."""
    wide = x.to(torch.complex128 if x.is_complex() else torch.float64)
    norm: torch.Tensor = torch.linalg.vector_norm(wide, dim=(-2, -1))
    return norm


def _all_finite(x: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(x).flatten(-2).all(dim=-1)


def _relative_difference(
    stabilized: torch.Tensor, native: torch.Tensor, both_finite: torch.Tensor
) -> torch.Tensor:
    """‖g_s − g_n‖_F / ‖g_n‖_F per matrix (NaN where either is not finite; 0/0 := 0)."""
    diff = _frobenius(stabilized.to(native.dtype) - native)
    scale = _frobenius(native)
    ratio = torch.where(
        scale > 0, diff / torch.where(scale > 0, scale, 1.0), torch.where(diff > 0, math.inf, 0.0)
    )
    return torch.where(both_finite, ratio, math.nan)


def compare_gradients(
    a: torch.Tensor,
    objective: Objective,
    *,
    method: str = "auto",
    eps: float | None = None,
    degree: int | None = None,
    max_cond: float | None = None,
    objective_name: str | None = None,
    stored_shape: tuple[int, ...] | None = None,
) -> GradientComparison:
    """torch's SVD gradient and the stabilized one for ``objective``, with per-element facts.

    ``a`` is a float or complex ``(..., m, n)`` tensor; ``objective(U, S, Vh)`` a
    scalar loss of the thin factors in the compute dtype (see
    :func:`svdguard.app.probes.make_probe`, :func:`svdguard.app.probes.upstream_from_tensors`).
    ``method``, ``eps``, ``degree``, ``max_cond`` go to :func:`svd` unchanged; an
    invalid combination raises :class:`~svdguard.errors.InputError`. The returned
    ``gradient`` equals ``torch.autograd.grad(objective(*svd(a, method=...)), a)``.
    ``stored_shape`` is only reported: the shape ``a`` was reshaped from.

    Each gradient gets a :class:`Verdict` (see :func:`_verdict`): the derivative,
    biased by the stabilizer, undefined (the loss uses a choice the SVD leaves
    open), unverified (a tie, and the loss behind upstream gradients is unknown),
    or not finite.
    """
    check_matrix(a, "compare_gradients")
    if a.dtype == torch.complex32 or (a.dtype.is_floating_point and a.element_size() == 1):
        # 8-bit floats and complex32 have almost no torch kernels (not even isfinite): the
        # whole comparison, and the gradient returned, are in their compute dtype.
        a = a.to(compute_dtype(a.dtype))
    stabilizer = stabilizer_from_name(method, eps=eps, degree=degree, max_cond=max_cond)
    m, n = a.shape[-2:]
    finite_input = _all_finite(a)
    every_finite = bool(finite_input.all())
    # The SVD drivers reject NaN/Inf: decompose the identity in place of such matrices
    # (batched LAPACK factors each matrix on its own, so the others are unaffected; κ = 1
    # keeps trivialize quiet about them) and report NaN for them.
    stand_in = torch.eye(m, n, dtype=a.dtype, device=a.device)
    work = a if every_finite else torch.where(finite_input[..., None, None], a, stand_in)

    def stabilized_svd(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return svd(x, full_matrices=False, method=stabilizer)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SvdguardWarning)
        gradient = _backprop(work, stabilized_svd, objective)
    notes = tuple(
        dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, SvdguardWarning))
    )
    exact = gradient
    if method != "auto":  # the exact backward, the reference a stabilizer's bias is measured by

        def auto_svd(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            return svd(x, full_matrices=False)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SvdguardWarning)
            exact = _backprop(work, auto_svd, objective)

    run = _native_run(work, objective)
    native, native_error = run.gradient, run.error

    nan = torch.full((), math.nan, dtype=a.dtype)
    if not every_finite:
        gradient = torch.where(finite_input[..., None, None], gradient, nan)
        if native is not None:
            native = torch.where(finite_input[..., None, None], native, nan)

    elements = _element_facts(
        run,
        _Gradients(gradient, native, exact),
        finite_input,
        stabilizer=stabilizer,
        exact_at_ties=getattr(objective, "exact_at_ties", None),
        storage_dtype=a.dtype,
    )
    report = GradientReport(
        shape=tuple(a.shape),
        dtype=dtype_name(a.dtype),
        compute_dtype=dtype_name(compute_dtype(a.dtype)),
        method=method,
        eps=eps,
        degree=degree,
        max_cond=max_cond,
        objective=objective_name or _describe(objective),
        elements=elements,
        native_error=native_error,
        notes=notes,
        stored_shape=None if stored_shape is None else tuple(stored_shape),
    )
    return GradientComparison(gradient=gradient, native_gradient=native, report=report)


@dataclass(frozen=True)
class _Gradients:
    """The three dL/dA of one run: the method's, torch's (None if it raised), auto's."""

    stabilized: torch.Tensor
    native: torch.Tensor | None
    exact: torch.Tensor


@dataclass(frozen=True)
class _Spectrum:
    """Per-batch tensors the verdicts read, computed once from torch's factors."""

    s: torch.Tensor  #: (..., k) singular values
    tau: torch.Tensor  #: (...) rounding level
    rounding_pairs: torch.Tensor  #: (..., k, k) pairs with a denominator at rounding level
    tied: torch.Tensor  #: (..., k, k) tied pairs whose difference term is dropped
    noise: torch.Tensor  #: (...) rounding noise of the exact backward, ‖·‖_F (see _noise)
    upstream_finite: torch.Tensor  #: (...) the loss's gradients w.r.t. the factors are finite


def _context(run: _NativeRun) -> BackwardContext | None:
    """The backward's view of torch's factors and the loss's gradients (None: no gU, gV)."""
    u, s, vh = run.factors
    g_u, g_vh = run.grad_u, run.grad_vh
    if g_u is None and g_vh is None:
        return None
    uh_gu = None if g_u is None else u.mH @ g_u
    vh_gv = None if g_vh is None else vh @ g_vh.mH
    return BackwardContext(s, u.shape[-2], vh.shape[-1], uh_gu, vh_gv, g_u, g_vh)


def _noise(run: _NativeRun, ctx: BackwardContext | None, tau: torch.Tensor) -> torch.Tensor:
    """The rounding noise ‖δg‖_F of the exact backward at these factors, per matrix, float64.

    A numerator (J + K)_ij is a sum of dot products of length max(m, n), computed to
    about max(m, n)·ε·Σ_ij (Σ_ij its summands; :func:`svdguard.tolerances.tie_tolerance`
    is that bound for a quantity of size Σ); divided by |d_ij| > τ it puts
    max(m, n)·ε·Σ_ij/|d_ij| of noise in the gradient. Likewise each rectangular column
    (I − UUᴴ) gU_i over s_i > τ. U and V are orthonormal, so the Frobenius norms add
    in squares. Near a tie above τ this noise is real: a stabilizer that differs from
    the exact backward by less has changed rounding, not the derivative.
    """
    u, s, vh = run.factors
    m, n, k = u.shape[-2], vh.shape[-1], s.shape[-1]
    total = torch.zeros(s.shape[:-1], dtype=torch.float64)
    if ctx is None:
        return total
    s_i, s_j = pair_grids(s)
    d = (s_j - s_i).abs()
    apart = (d > tau[..., None, None]) & upper_pairs(k, s.device)
    pair_noise = tie_tolerance(ctx.summands, s.dtype, m, n) / torch.where(apart, d, 1.0)
    total = total + torch.where(apart, pair_noise, 0.0).square().sum((-2, -1)).double()
    above = s > tau[..., None]
    g_u, g_vh = run.grad_u, run.grad_vh
    for raw, long_side in ((g_u, m), (None if g_vh is None else g_vh.mH, n)):
        if raw is not None and long_side > k:
            norms = torch.linalg.vector_norm(raw, dim=-2)
            column = tie_tolerance(norms, s.dtype, m, n) / torch.where(above, s, 1.0)
            total = total + torch.where(above, column, 0.0).square().sum(-1).double()
    return total.sqrt()


def _spectrum(run: _NativeRun) -> _Spectrum:
    """The spectrum facts; ``tied``: pairs at rounding level whose difference term is dropped.

    In a tie of non-zero values the exact backward drops (J + K)_ij/(2 d_ij) (its
    numerator is rounding); among zero singular values it keeps the term when the
    numerator vanishes with d_ij ≠ 0 (the rounding rule) and drops it at d_ij = 0.
    Where it is dropped, a loss with an in-block part (docs/backward.md) loses it.
    """
    u, s, vh = run.factors
    m, n = u.shape[-2], vh.shape[-1]
    tau = tie_tolerance(s[..., 0], s.dtype, m, n)
    s_i, s_j = pair_grids(s)
    ties = tied_pairs(s, tau)
    ctx = _context(run)
    if ctx is None:  # no difference part: only ties of non-zero values matter (for S alone)
        tied = ties & (torch.minimum(s_i, s_j) > tau[..., None, None])
    else:
        jk_sum, _ = ctx.split
        d2 = (s_j - s_i) * 2
        kept = rounding_terms_kept(jk_sum, ctx.summands, d2, ctx.sigma_max, ctx.upstream_scale)
        tied = ties & ~kept
    upstream_finite = torch.ones(s.shape[:-1], dtype=torch.bool)
    for g in (run.grad_u, run.grad_vh):
        if g is not None:
            upstream_finite = upstream_finite & _all_finite(g)
    return _Spectrum(
        s=s,
        tau=tau,
        rounding_pairs=Auto().acting_pairs(s, m, n),
        tied=tied,
        noise=_noise(run, ctx, tau),
        upstream_finite=upstream_finite,
    )


def _element_facts(
    run: _NativeRun,
    grads: _Gradients,
    finite_input: torch.Tensor,
    *,
    stabilizer: Stabilizer,
    exact_at_ties: bool | None,
    storage_dtype: torch.dtype,
) -> tuple[ElementFacts, ...]:
    """The per-matrix facts and verdicts, from torch's factors and the three gradients."""
    u, s, vh = run.factors
    m, n = u.shape[-2], vh.shape[-1]
    batch = tuple(s.shape[:-1])
    violations = find_gauge_violations(u, s, vh, run.grad_u, run.grad_vh)
    spectrum = _spectrum(run)

    s64 = s.to(torch.float64)
    kappa = condition_number(s64)
    sigma_max = s64[..., 0]
    gap = singular_gaps(s64, m, n).amin(dim=-1)
    rel_gap = torch.where(sigma_max > 0, gap / torch.where(sigma_max > 0, sigma_max, 1.0), 0.0)
    acting = stabilizer.acting_pairs(s, m, n)
    gradient = grads.stabilized
    stab_finite = _all_finite(gradient)
    stab_norm = _frobenius(gradient)
    exact_norm = _frobenius(grads.exact)
    bias = _frobenius(gradient.to(grads.exact.dtype) - grads.exact)
    native_finite = torch.zeros(batch, dtype=torch.bool)
    native_norm = rel_diff = native_bias = None
    if grads.native is not None:
        native_finite = _all_finite(grads.native)
        native_norm = _frobenius(grads.native)
        rel_diff = _relative_difference(gradient, grads.native, stab_finite & native_finite)
        native_bias = _frobenius(grads.native.to(grads.exact.dtype) - grads.exact)
    trivial = torch.zeros(batch, dtype=torch.bool)
    if isinstance(stabilizer, Trivialize):  # the library's own rule, in the dtype it runs in
        trivial = stabilizer.too_ill(s)
    # Both gradients are rounded to the storage dtype, and a kernel entry changed by less
    # than √ε (compute dtype) is not a change (stabilizer_bias_tolerance).
    tolerance = max(stabilizer_bias_tolerance(s.dtype), machine_eps(storage_dtype))

    by_element: dict[tuple[int, ...], list[GaugeViolation]] = {}
    for violation in violations:
        by_element.setdefault(tuple(violation.batch_index), []).append(violation)

    elements = []
    for index in _batch_indices(batch):
        ok = bool(finite_input[index])  # matrices with NaN/Inf were not decomposed
        mine = tuple(by_element.get(index, ())) if ok else ()
        limit = tolerance * float(exact_norm[index]) + float(spectrum.noise[index])
        tied = _values_of(spectrum.tied[index]) if ok else ()
        common = _Common(
            input_finite=ok,
            upstream_finite=bool(spectrum.upstream_finite[index]),
            violations=mine,
            tied=tied,
            exact_at_ties=exact_at_ties,
            s=spectrum.s[index],
        )
        pairs = _pairs_of(acting[index]) if ok else ()
        stab_bias = float(bias[index])
        verdict = _verdict(
            common,
            finite=bool(stab_finite[index]),
            method=stabilizer.name,
            changed=pairs
            if stabilizer.name != "native"
            else _pairs_of(spectrum.rounding_pairs[index]),
            excess=stab_bias > limit,
            bias=stab_bias / max(float(exact_norm[index]), _TINY),
            trivialized=bool(trivial[index]) and ok,
            kappa=float(kappa[index]),
            max_cond=stabilizer.cond_limit(s.dtype) if isinstance(stabilizer, Trivialize) else None,
        )
        native_excess = native_bias is not None and float(native_bias[index]) > limit
        native_verdict = _verdict(
            common,
            finite=bool(native_finite[index]) and native_norm is not None,
            method="native",
            changed=_pairs_of(spectrum.rounding_pairs[index]),
            excess=native_excess,
            bias=None
            if native_bias is None
            else float(native_bias[index]) / max(float(exact_norm[index]), _TINY),
            trivialized=False,
            kappa=float(kappa[index]),
            max_cond=None,
            raised=native_norm is None,
        )
        elements.append(
            ElementFacts(
                index=index,
                input_finite=ok,
                condition_number=float(kappa[index]) if ok else math.nan,
                min_relative_gap=float(rel_gap[index]) if ok else math.nan,
                acting_pairs=pairs,
                native_finite=bool(native_finite[index]),
                native_norm=_optional_float(native_norm, index, keep_nan=True),
                stabilized_finite=bool(stab_finite[index]),
                stabilized_norm=float(stab_norm[index]),
                relative_difference=_optional_float(rel_diff, index),
                tied_values=tied,
                gauge_violations=mine,
                trivialized=bool(trivial[index]) if ok else False,
                bias=None
                if stabilizer.name == "auto" or not ok
                else _finite_or_none(stab_bias / max(float(exact_norm[index]), _TINY)),
                verdict=verdict,
                native_verdict=native_verdict,
            )
        )
    return tuple(elements)


_TINY = torch.finfo(torch.float64).tiny


@dataclass(frozen=True)
class _Common:
    """What both verdicts of one matrix share."""

    input_finite: bool
    upstream_finite: bool
    violations: tuple[GaugeViolation, ...]
    tied: tuple[int, ...]  #: tied non-zero values, 0-based
    exact_at_ties: bool | None
    s: torch.Tensor  #: (k,) singular values


def _pairs_of(mask: torch.Tensor) -> tuple[tuple[int, int], ...]:
    return tuple((int(i), int(j)) for i, j in mask.nonzero().tolist())


def _values_of(mask: torch.Tensor) -> tuple[int, ...]:
    """The values (0-based) that take part in the pairs of a (k, k) mask."""
    return tuple(sorted({int(i) for pair in mask.nonzero().tolist() for i in pair}))


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _nonfinite_cause(common: _Common, method: str, raised: bool) -> str:
    """Why a gradient has NaN/Inf entries, the real cause first."""
    if not common.input_finite:
        return "the matrix has NaN/Inf entries, so it was not decomposed"
    if not common.upstream_finite:
        return "the loss's gradients with respect to U, S, Vh have NaN/Inf entries"
    if raised:
        return "torch's backward raised"
    if method == "native":
        s = common.s
        exact_ties = _values_of(tied_pairs(s, 0.0))
        zeros = tuple(int(i) for i in (s == 0).nonzero().flatten().tolist())
        causes = []
        if exact_ties:
            causes.append(
                f"the singular values {value_runs(exact_ties)} are tied and torch's backward "
                "divides by s_j² − s_i² = 0"
            )
        if zeros:
            causes.append(
                f"the singular values {value_runs(zeros)} are zero and torch's backward "
                "divides by them"
            )
        if causes:
            return "; ".join(causes)
    return "an overflow in the backward (a quotient beyond the dtype's range)"


def _verdict(
    common: _Common,
    *,
    finite: bool,
    method: str,
    changed: tuple[tuple[int, int], ...],
    excess: bool,
    bias: float | None,
    trivialized: bool,
    kappa: float,
    max_cond: float | None,
    raised: bool = False,
) -> Verdict:
    """What one backward computed for one matrix, the most severe finding first.

    * not finite: NaN/Inf input or upstream, torch's 0 divisions, or an overflow;
    * undefined: the loss depends on the basis inside tied values or on null-space
      vectors (:func:`svdguard.linalg.gauge.find_gauge_violations`): no derivative exists;
    * biased: the method zeroed the matrix (trivialize), or it differs from the exact
      backward (auto) by more than rounding (√ε, the storage dtype's ε, and the noise of
      :func:`_noise`) where it changed pairs; or at a tie the loss has an in-block part
      (``exact_at_ties`` False), which no SVD backward sees;
    * unverified: a tie, and the loss behind upstream gradients is unknown;
    * derivative otherwise.
    """
    if not finite:
        where = "NaN/Inf input" if not common.input_finite else ""
        return Verdict(NONFINITE, (_nonfinite_cause(common, method, raised),), where)
    if common.violations:
        return Verdict(
            UNDEFINED,
            tuple(_violation_cause(v) for v in common.violations),
            ", ".join(
                v.labels + (" null space" if v.kind == NULL_SPACE else " basis")
                for v in common.violations
            ),
        )
    causes, places = [], []
    if trivialized:
        places.append("zeroed")
        causes.append(
            f"trivialize set the gradient to zero: κ₂ = {kappa:.3g} is above max_cond = "
            f"{max_cond:.3g}"
        )
    elif excess:
        where = value_runs(i for pair in changed for i in pair)
        places.append(where)
        size = "" if bias is None else f" by {bias:.2g} (relative)"
        if method == "native":
            causes.append(
                f"at {where or 'singular values'} within rounding of each other or of zero "
                f"torch's backward divides rounding noise by rounding noise: it differs from "
                f"the exact backward{size}"
            )
        else:
            place = f" of {where}" if where else ""
            causes.append(
                f"{method} changed the kernel{place}: it differs from the exact backward{size}"
            )
    tied = value_runs(common.tied)
    if common.tied and common.exact_at_ties is False:
        places.append(f"tie {tied}")
        causes.append(
            f"at the tie {tied} the symmetric in-block part of this loss's gradient is not in "
            "the factors, so it is missing"
        )
    if causes:
        return Verdict(BIASED, tuple(causes), ", ".join(dict.fromkeys(p for p in places if p)))
    if common.tied and common.exact_at_ties is None:
        return Verdict(
            UNVERIFIED,
            (
                f"at the tie {tied} the symmetric in-block part of the gradient is not in the "
                "upstream gradients: this is the derivative if the loss is a function of U Vᴴ "
                "and S, not otherwise",
            ),
            f"tie {tied}",
        )
    return Verdict(DERIVATIVE)


def _violation_cause(violation: GaugeViolation) -> str:
    if violation.kind == NULL_SPACE:
        return (
            f"the loss depends on the singular vectors of the zero singular values "
            f"{violation.labels} (the null space), which the matrix does not determine"
        )
    return (
        f"the loss depends on the basis chosen inside the tied singular values "
        f"{violation.labels}, which the matrix does not determine"
    )


def _batch_indices(batch: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Every index into a batch shape, row-major; [()] for a single matrix."""
    return list(itertools.product(*(range(size) for size in batch)))


def _optional_float(
    values: torch.Tensor | None, index: tuple[int, ...], *, keep_nan: bool = False
) -> float | None:
    """values[index] as a float; None when there are no values (or NaN, unless ``keep_nan``)."""
    if values is None:
        return None
    value = float(values[index])
    return None if math.isnan(value) and not keep_nan else value


def _describe(objective: Objective) -> str:
    describe = getattr(objective, "describe", None)
    return describe() if callable(describe) else getattr(objective, "__name__", "objective")
