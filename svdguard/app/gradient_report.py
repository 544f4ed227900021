"""torch's own SVD gradient beside the stabilized one, with the facts that explain the difference.

:func:`compare_gradients` backpropagates one objective (a seeded probe loss or
saved upstream gradients, :mod:`svdguard.app.probes`) through two SVDs of the same
matrix or batch ``(..., m, n)``:

* *native*: ``torch.linalg.svd`` and torch's ``linalg_svd_backward``, which
  divides by s_j² − s_i² and returns inf/NaN at tied singular values;
* *stabilized*: :func:`svdguard.linalg.svd.svd` with the requested method.

Per batch element it records κ₂, the smallest relative singular-value gap
(min_i gap_i / σ_max, gap_i as LAPACK's xDISNA defines it), how many pairs the
method's stabilizer acts on, whether each gradient is finite and its Frobenius
norm, their relative difference, and the gauge check (``docs/backward.md``): inside a block
of tied singular values a loss that depends on the basis the SVD picked has no
gradient, whatever the backward does.

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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from svdguard.app.report import SCHEMA_VERSION
from svdguard.errors import InputError, SvdguardWarning
from svdguard.linalg.gauge import GaugeViolation, find_gauge_violations
from svdguard.linalg.matrix_input import check_matrix
from svdguard.linalg.spectrum import condition_number, singular_gaps, tied_pairs
from svdguard.linalg.spectrum_analysis import dtype_name
from svdguard.linalg.svd import METHODS, guarded_pairs, svd
from svdguard.linalg.svd_backward import BackwardConfig
from svdguard.tolerances import compute_dtype, tie_tolerance

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


@dataclass(frozen=True)
class ElementFacts:
    """What one matrix of the batch tells about its two gradients."""

    index: tuple[int, ...]  #: position in the batch (() for a single matrix)
    input_finite: bool  #: False when the matrix has NaN/Inf entries (not decomposed)
    condition_number: float  #: κ₂ = σ_max / σ_min (inf when σ_min = 0)
    min_relative_gap: float  #: min_i gap_i / σ_max (0 for the zero matrix)
    guarded_pairs: int  #: pairs i < j whose kernel the method changes
    native_finite: bool  #: torch's gradient has only finite entries
    native_norm: float | None  #: ‖dL/dA‖_F of torch's gradient (None if its backward raised)
    stabilized_finite: bool  #: the stabilized gradient has only finite entries
    stabilized_norm: float  #: ‖dL/dA‖_F of the stabilized gradient
    relative_difference: float | None  #: ‖g_stab − g_native‖_F / ‖g_native‖_F (both finite only)
    has_ties: bool  #: some singular values are tied to rounding level
    gauge_violations: tuple[GaugeViolation, ...]  #: blocks where the loss picks a basis
    trivialized: bool  #: method trivialize zeroed this gradient (κ > max_cond)

    @property
    def gauge_invariant(self) -> bool:
        return not self.gauge_violations

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": list(self.index),
            "input_finite": self.input_finite,
            "condition_number": self.condition_number,
            "min_relative_gap": self.min_relative_gap,
            "guarded_pairs": self.guarded_pairs,
            "native": {"finite": self.native_finite, "norm": self.native_norm},
            "stabilized": {"finite": self.stabilized_finite, "norm": self.stabilized_norm},
            "relative_difference": self.relative_difference,
            "has_ties": self.has_ties,
            "gauge_invariant": self.gauge_invariant,
            "gauge_violations": [
                {"indices": list(v.indices), "size": v.size, "relative": v.relative}
                for v in self.gauge_violations
            ],
            "trivialized": self.trivialized,
        }


@dataclass(frozen=True)
class GradientReport:
    """Both gradients of one matrix or batch, summarised per element and in total."""

    shape: tuple[int, ...]
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

    @property
    def count(self) -> int:
        return len(self.elements)

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

    def totals(self) -> dict[str, int]:
        return {
            "elements": self.count,
            "native_nonfinite": self.native_nonfinite,
            "stabilized_nonfinite": self.stabilized_nonfinite,
            "gauge_dependent": self.gauge_dependent,
            "guarded_pairs": self.total_guarded_pairs,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "compute_dtype": self.compute_dtype,
            "method": self.method,
            "eps": self.eps,
            "degree": self.degree,
            "max_cond": self.max_cond,
            "objective": self.objective,
            "native_error": self.native_error,
            "notes": list(self.notes),
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
) -> GradientComparison:
    """torch's SVD gradient and the stabilized one for ``objective``, with per-element facts.

    ``a`` is a float or complex ``(..., m, n)`` tensor; ``objective(U, S, Vh)`` a
    scalar loss of the thin factors in the compute dtype (see
    :func:`svdguard.app.probes.make_probe`, :func:`svdguard.app.probes.upstream_from_tensors`).
    ``method``, ``eps``, ``degree``, ``max_cond`` go to :func:`svd` unchanged; an
    invalid combination raises :class:`~svdguard.errors.InputError`. The returned
    ``gradient`` equals ``torch.autograd.grad(objective(*svd(a, method=...)), a)``.
    """
    check_matrix(a, "compare_gradients")
    if a.dtype == torch.complex32 or (a.dtype.is_floating_point and a.element_size() == 1):
        # 8-bit floats and complex32 have almost no torch kernels (not even isfinite): the
        # whole comparison, and the gradient returned, are in their compute dtype.
        a = a.to(compute_dtype(a.dtype))
    m, n = a.shape[-2:]
    finite_input = _all_finite(a)
    every_finite = bool(finite_input.all())
    # The SVD drivers reject NaN/Inf: decompose the identity in place of such matrices
    # (batched LAPACK factors each matrix on its own, so the others are unaffected; κ = 1
    # keeps trivialize quiet about them) and report NaN for them.
    stand_in = torch.eye(m, n, dtype=a.dtype, device=a.device)
    work = a if every_finite else torch.where(finite_input[..., None, None], a, stand_in)

    def stabilized_svd(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return svd(x, full_matrices=False, method=method, eps=eps, degree=degree, max_cond=max_cond)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SvdguardWarning)
        gradient = _backprop(work, stabilized_svd, objective)
    notes = tuple(
        dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, SvdguardWarning))
    )

    run = _native_run(work, objective)
    native, native_error = run.gradient, run.error

    nan = torch.full((), math.nan, dtype=a.dtype)
    if not every_finite:
        gradient = torch.where(finite_input[..., None, None], gradient, nan)
        if native is not None:
            native = torch.where(finite_input[..., None, None], native, nan)

    elements = _element_facts(
        run,
        gradient,
        native,
        finite_input,
        method=method,
        eps=eps,
        degree=degree,
        max_cond=max_cond,
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
    )
    return GradientComparison(gradient=gradient, native_gradient=native, report=report)


def _element_facts(
    run: _NativeRun,
    gradient: torch.Tensor,
    native: torch.Tensor | None,
    finite_input: torch.Tensor,
    *,
    method: str,
    eps: float | None,
    degree: int | None,
    max_cond: float | None,
) -> tuple[ElementFacts, ...]:
    """The per-matrix facts, from torch's factors and both gradients."""
    u, s, vh = run.factors
    m, n = u.shape[-2], vh.shape[-1]
    batch = tuple(s.shape[:-1])
    violations = find_gauge_violations(u, s, vh, run.grad_u, run.grad_vh)
    tau = tie_tolerance(s[..., :1], s.dtype, m, n)
    ties = tied_pairs(s, tau.squeeze(-1)).flatten(-2).any(dim=-1)

    s64 = s.to(torch.float64)
    kappa = condition_number(s64)
    sigma_max = s64[..., 0]
    gap = singular_gaps(s64, m, n).amin(dim=-1)
    rel_gap = torch.where(sigma_max > 0, gap / torch.where(sigma_max > 0, sigma_max, 1.0), 0.0)
    guarded = guarded_pairs(s, m, n, method=method, eps=eps, degree=degree).flatten(-2).sum(-1)
    stab_finite = _all_finite(gradient)
    stab_norm = _frobenius(gradient)
    native_finite = torch.zeros(batch, dtype=torch.bool)
    native_norm = rel_diff = None
    if native is not None:
        native_finite = _all_finite(native)
        native_norm = _frobenius(native)
        rel_diff = _relative_difference(gradient, native, stab_finite & native_finite)
    trivial = torch.zeros(batch, dtype=torch.bool)
    if method == "trivialize":  # the library's own rule, in the dtype it runs in
        limit = BackwardConfig(method=method, max_cond=max_cond).cond_limit(s.dtype)
        trivial = condition_number(s) > limit

    by_element: dict[tuple[int, ...], list[GaugeViolation]] = {}
    for violation in violations:
        by_element.setdefault(tuple(violation.batch_index), []).append(violation)

    elements = []
    for index in _batch_indices(batch):
        ok = bool(finite_input[index])  # matrices with NaN/Inf were not decomposed
        elements.append(
            ElementFacts(
                index=index,
                input_finite=ok,
                condition_number=float(kappa[index]) if ok else math.nan,
                min_relative_gap=float(rel_gap[index]) if ok else math.nan,
                guarded_pairs=int(guarded[index]) if ok else 0,
                native_finite=bool(native_finite[index]),
                native_norm=_optional_float(native_norm, index, keep_nan=True),
                stabilized_finite=bool(stab_finite[index]),
                stabilized_norm=float(stab_norm[index]),
                relative_difference=_optional_float(rel_diff, index),
                has_ties=bool(ties[index]) if ok else False,
                gauge_violations=tuple(by_element.get(index, ())) if ok else (),
                trivialized=bool(trivial[index]) if ok else False,
            )
        )
    return tuple(elements)


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
