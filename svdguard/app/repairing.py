"""``svdguard.repair``: the nearest well-posed checkpoint, every other byte unchanged.

For each selected matrix (2-D, or ≥3-D viewed as ``shape[0] × ∏ shape[1:]`` as
``inspect`` does) whose singular values violate a requested bound, the nearest
matrix (Frobenius, same σ_max and singular vectors) that meets both bounds
(:func:`svdguard.linalg.repair.nearest_spectrum`) replaces it, written in the
tensor's own dtype and shape. Everything else is copied byte for byte
(:mod:`svdguard.io.rewrite`). The plan:

1. **plan**: list the inputs' tensors from their headers, pick the matrices, fix each
   one's bounds and check that they can hold together (else InputError, nothing written);
2. **run**: one tensor at a time: load, singular values (float64); a matrix that meets
   its bounds is left alone; one that does not is decomposed with its vectors, repaired
   in float64, rounded to its storage dtype and re-checked there. Rounding moves each
   singular value by at most δ = ‖fl(A′) − A′‖₂ (Weyl), so a failed check is retried
   with the bounds tightened by a margin η ≥ 2δ, a few times;
3. **verify**: after writing, the output is read back and every repaired matrix is
   checked against its bounds in its storage dtype.

Exit status (:attr:`RepairResult.exit_status`): 0 every bound met; 1 some bound the
storage dtype cannot hold (or an all-zero matrix); 2 a non-finite matrix (never
repaired; the output is then not written unless ``skip_nonfinite``). Unusable inputs,
outputs or bounds raise InputError, an SVD that does not converge NumericalError;
either way nothing is written.

No rich, no typer: the CLI renders what this returns.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

import torch

from svdguard import tolerances
from svdguard.app.formatting import to_json
from svdguard.app.inspection import Selection, skip_reason
from svdguard.app.report import SCHEMA_VERSION
from svdguard.errors import InputError, NumericalError, ResourceLimitError
from svdguard.io import DEFAULT_MAX_ELEMENTS, TensorRecord, expand_inputs, iter_records
from svdguard.io.dtypes import torch_dtype
from svdguard.io.rewrite import (
    PICKLE_SUFFIXES,
    atomic_directory,
    atomic_file,
    copy_file,
    open_rewriter,
    refuse_pickle,
)
from svdguard.linalg.repair import SpectralEditor, bounds_feasible, meets_bounds
from svdguard.linalg.spectrum_analysis import as_matrix, dtype_name, tall

#: Tries of the repair → round → check loop before a bound is declared unreachable in the
#: storage dtype. Each retry takes η ≥ 2·(measured rounding), so the first retry succeeds
#: unless the rounding error itself changes by more than 2× between attempts.
MAX_ATTEMPTS = 4

INDEX_SUFFIX = ".safetensors.index.json"

#: torch.linalg.LinAlgError (non-convergence); torch's stubs do not export the name.
_LINALG_ERROR: type[Exception] = getattr(torch.linalg, "LinAlgError")  # noqa: B009


class Status(str, Enum):
    """What happened to one tensor."""

    UNTOUCHED = "untouched"  #: it met its bounds: bytes copied unchanged
    REPAIRED = "repaired"  #: replaced by the nearest matrix meeting the bounds (verified)
    UNREACHABLE = "unreachable"  #: the storage dtype (or an all-zero matrix) cannot hold a bound
    NONFINITE = "nonfinite"  #: NaN/Inf entries: never repaired
    SKIPPED = "skipped"  #: not a matrix, or not selected: bytes copied unchanged


@dataclass(frozen=True)
class Bounds:
    """κ₂ ≤ ``max_cond`` and s_i − s_{i+1} ≥ ``min_gap``·σ_max; None = no such bound.

    When both are None the defaults are those ``inspect`` flags against, from the
    tensor's working dtype: κ₂ ≤ :func:`tolerances.default_max_cond` (1/√ε_w) and the
    relative near-degenerate gap √ε_w (:func:`tolerances.inspect_near_degenerate_tolerance`).
    """

    max_cond: float | None = None
    min_gap: float | None = None

    def for_dtype(self, storage: torch.dtype) -> Bounds:
        if self.max_cond is not None or self.min_gap is not None:
            return self
        working = tolerances.compute_dtype(storage)
        return Bounds(
            max_cond=tolerances.default_max_cond(working),
            min_gap=tolerances.inspect_near_degenerate_tolerance(1.0, working),
        )


def _spectrum_facts(
    s: torch.Tensor, m: int, n: int, storage: torch.dtype
) -> dict[str, float | int]:
    """κ₂, min relative neighbour gap and numerical rank of a float64 spectrum (as inspect counts rank)."""
    k = s.numel()
    sigma_max, sigma_min = float(s[0]), float(s[-1])
    cond = sigma_max / sigma_min if sigma_min > 0 else math.inf
    gap = float((s[:-1] - s[1:]).min()) / sigma_max if k > 1 and sigma_max > 0 else math.inf
    tol = tolerances.inspect_rank_tolerance(
        sigma_max, tolerances.compute_dtype(storage), torch.float64, m, n
    )
    return {"cond": cond, "rel_min_gap": gap, "rank": int((s > tol).sum())}


@dataclass(frozen=True)
class TensorRepair:
    """One tensor's record: what was done and the numbers before → after (storage dtype)."""

    name: str
    path: str
    key: str | None
    shape: tuple[int, ...]
    dtype: str
    status: Status
    detail: str = ""
    matrix_shape: tuple[int, int] | None = None
    max_cond: float | None = None
    min_gap: float | None = None
    rel_change: float | None = None  #: ‖ΔW‖_F/‖W‖_F of the stored values
    cond_before: float | None = None
    cond_after: float | None = None
    rel_min_gap_before: float | None = None
    rel_min_gap_after: float | None = None
    rank_before: int | None = None
    rank_after: int | None = None
    attempts: int = 0  #: repair → round → check rounds used
    margin: float | None = None  #: η/σ_max of the last attempt (rounding allowance)

    def to_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, Enum):
                value = value.value
            elif isinstance(value, tuple):
                value = list(value)
            row[name] = value
        return row


@dataclass(frozen=True)
class RepairResult:
    """Every tensor's record, whether the output was written, and the exit status."""

    records: tuple[TensorRepair, ...]
    output: str | None
    written: bool
    dry_run: bool
    skip_nonfinite: bool

    def count(self, status: Status) -> int:
        return sum(1 for r in self.records if r.status is status)

    @property
    def exit_status(self) -> int:
        """2: a non-finite matrix stopped the run; 1: a bound is unreachable; 0: all met."""
        if self.count(Status.NONFINITE) and not self.skip_nonfinite:
            return 2
        return 1 if self.count(Status.UNREACHABLE) else 0

    def summary(self) -> str:
        parts = [f"{self.count(status)} {status.value}" for status in Status if self.count(status)]
        where = (
            "dry run, nothing written"
            if self.dry_run
            else (f"written to {self.output}" if self.written else "nothing written")
        )
        return f"{len(self.records)} tensors: {', '.join(parts) or 'none'}; {where}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "tool": "svdguard repair",
            "output": self.output,
            "written": self.written,
            "dry_run": self.dry_run,
            "exit_status": self.exit_status,
            "counts": {status.value: self.count(status) for status in Status},
            "tensors": [r.to_dict() for r in self.records],
        }

    def to_json(self) -> str:
        """The shared strict JSON encoding (non-finite numbers as "NaN"/"Infinity" strings)."""
        return to_json(self.to_dict())


# --- plan -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Unit:
    """One file of the output: copied verbatim (an index) or rewritten from ``source``."""

    source: Path
    name: str  # its name in the output directory (or the output file itself)
    rewrite: bool


@dataclass(frozen=True)
class RepairPlan:
    """What a run reads and writes; built from headers only."""

    units: tuple[_Unit, ...]
    directory: bool  #: the output is a directory (sharded or directory input)
    inputs: tuple[Path, ...]  #: every file read (for the never-over-an-input check)
    bounds: Bounds
    selection: Selection = field(default_factory=Selection)


def _shards(index: Path) -> list[str]:
    """Shard file names of a sharded checkpoint (the index is validated by iter_records first)."""
    for _ in iter_records(index):
        pass
    weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    names = sorted(set(weight_map.values()))
    for name in names:
        if Path(name).name != name:
            raise InputError(
                f"shard {name!r} is not a plain file name beside the index", path=index
            )
    return names


def _units_of(file: Path) -> list[_Unit]:
    if file.name.endswith(INDEX_SUFFIX):
        shards = [_Unit(file.parent / s, s, True) for s in _shards(file)]
        return [_Unit(file, file.name, False), *shards]
    if file.name.endswith(".index.json") or file.suffix.lower() in PICKLE_SUFFIXES:
        refuse_pickle(file)
    return [_Unit(file, file.name, True)]


def _check_feasible(plan: RepairPlan) -> None:
    """InputError naming the first tensor whose bounds cannot hold together (from its header)."""
    for unit in plan.units:
        if not unit.rewrite:
            continue
        for record in iter_records(unit.source, max_elements=plan.selection.max_elements):
            storage = torch_dtype(record.dtype)
            if storage is None or skip_reason(record, plan.selection) is not None:
                continue
            k = min(record.shape[0], math.prod(record.shape[1:]))
            bounds = plan.bounds.for_dtype(storage)
            if not bounds_feasible(k, bounds.max_cond, bounds.min_gap):
                defaulted = bounds is not plan.bounds
                raise InputError(
                    ("the default bounds for its dtype, " if defaulted else "")
                    + f"max_cond={bounds.max_cond:.4g} and min_gap={bounds.min_gap:.4g}, cannot "
                    f"hold together for its {k} singular values: they need (k−1)·min_gap ≤ "
                    "1 − 1/max_cond; give a smaller min_gap or exclude the tensor",
                    path=record.path,
                    key=record.key or None,
                )


def plan_repair(
    source: str | os.PathLike[str],
    *,
    bounds: Bounds = Bounds(),
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> RepairPlan:
    """Which files are rewritten and how the output is laid out; InputError when it cannot be done.

    ``source``: a .safetensors, .npy or .npz file (the output is a file of the same
    format), a ``*.safetensors.index.json`` or a directory (the output is a directory
    holding the same file names: the index verbatim and every shard). .pt/.bin/.pth
    are refused (pickles cannot be rewritten without executing them).
    """
    for name, value in (("max_cond", bounds.max_cond), ("min_gap", bounds.min_gap)):
        if value is not None and not math.isfinite(value):
            raise InputError(f"{name}={value} is not a finite number")
    if bounds.max_cond is not None and bounds.max_cond < 1.0:
        raise InputError(f"max_cond={bounds.max_cond} is below 1; κ₂ ≥ 1 always")
    if bounds.min_gap is not None and not 0.0 <= bounds.min_gap < 1.0:
        raise InputError(
            f"min_gap={bounds.min_gap} is outside [0, 1); it is a gap relative to σ_max"
        )
    if max_elements < 1:
        raise InputError(f"max_elements={max_elements} is below 1")
    raw = Path(source)
    files = expand_inputs([raw])
    directory = raw.is_dir() or raw.name.endswith(INDEX_SUFFIX)
    units = [unit for file in files for unit in _units_of(file)]
    names = [unit.name for unit in units]
    if len(set(names)) != len(names):
        raise InputError("two inputs share a file name; repair one at a time", path=raw)
    plan = RepairPlan(
        units=tuple(units),
        directory=directory,
        inputs=tuple(unit.source for unit in units),
        bounds=bounds,
        selection=Selection(tuple(include), tuple(exclude), max_elements),
    )
    _check_feasible(plan)
    return plan


# --- run --------------------------------------------------------------------------------


def _base_record(record: TensorRecord, status: Status, detail: str = "") -> TensorRepair:
    return TensorRepair(
        name=record.display_name,
        path=str(record.path),
        key=record.key or None,
        shape=tuple(record.shape),
        dtype=record.dtype,
        status=status,
        detail=detail,
    )


def _float64(matrix: torch.Tensor) -> torch.Tensor:
    """The matrix in float64 (complex128 when complex): the precision every check runs in."""
    return matrix.to(torch.complex128 if matrix.is_complex() else torch.float64)


def _repair_matrix(
    matrix: torch.Tensor, storage: torch.dtype, bounds: Bounds
) -> tuple[torch.Tensor | None, dict[str, Any]]:
    """(stored repaired matrix or None, record fields): the repair → round → check loop."""
    m, n = matrix.shape
    work = _float64(matrix)
    s = torch.linalg.svdvals(tall(work))
    facts = _spectrum_facts(s, m, n, storage)
    fields: dict[str, Any] = {
        "matrix_shape": (m, n),
        "max_cond": bounds.max_cond,
        "min_gap": bounds.min_gap,
        "cond_before": facts["cond"],
        "rel_min_gap_before": facts["rel_min_gap"],
        "rank_before": facts["rank"],
    }
    if meets_bounds(s, bounds.max_cond, bounds.min_gap):
        return None, {**fields, "status": Status.UNTOUCHED}
    sigma_max = float(s[0])
    if sigma_max == 0.0:
        detail = "every entry is zero: no σ_max for the bounds to be relative to; left unchanged"
        return None, {**fields, "status": Status.UNREACHABLE, "detail": detail}
    # The float64 check resolves singular values to τ = max(m, n)·ε₆₄·σ_max: aim that far inside.
    resolution = float(tolerances.tie_tolerance(torch.tensor(sigma_max), torch.float64, m, n))
    margin = resolution
    stored = None
    editor = SpectralEditor(work)  # one SVD with vectors; every retry reuses it
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            repair = editor.nearest(bounds.max_cond, bounds.min_gap, margin=margin)
        except InputError as err:  # the margin made the bounds infeasible
            detail = f"{dtype_name(storage)} cannot hold these bounds: {err.message}"
            return stored, {**fields, "status": Status.UNREACHABLE, "detail": detail}
        stored = repair.matrix.to(storage)
        target = repair.after
        del repair
        stored_work = stored.to(work.dtype)
        s_after = torch.linalg.svdvals(tall(stored_work))
        after = _spectrum_facts(s_after, m, n, storage)
        # Not in place: for float64 storage ``stored_work`` is ``stored`` itself.
        change = float(torch.linalg.matrix_norm(stored_work - work)) / float(
            torch.linalg.vector_norm(s)
        )
        del stored_work
        fields.update(
            cond_after=after["cond"],
            rel_min_gap_after=after["rel_min_gap"],
            rank_after=after["rank"],
            rel_change=change,
            attempts=attempt,
            margin=margin / sigma_max,
        )
        if meets_bounds(s_after, bounds.max_cond, bounds.min_gap):
            return stored, {**fields, "status": Status.REPAIRED}
        # How far rounding moved the singular values this time (a lower bound of ‖E‖₂, the
        # quantity Weyl's bound is about); the next rounding is of the same size.
        rounding = float((s_after - target).abs().max())
        margin = max(2.0 * margin, 2.0 * rounding + resolution)
    detail = (
        f"rounding to {dtype_name(storage)} moves the singular values by "
        f"more than the bounds allow after {MAX_ATTEMPTS} attempts"
    )
    return stored, {**fields, "status": Status.UNREACHABLE, "detail": detail}


def _process(
    record: TensorRecord, plan: RepairPlan, sink: Callable[[str, torch.Tensor], None] | None
) -> TensorRepair:
    """One tensor: skip, check, or repair (and hand the repaired tensor to ``sink``)."""
    skipped = skip_reason(record, plan.selection)
    if skipped is not None:
        return _base_record(record, Status.SKIPPED, skipped.reason.value)
    try:
        tensor = record.load()
    except ResourceLimitError as err:
        return _base_record(record, Status.SKIPPED, err.message)
    storage = tensor.dtype
    matrix = as_matrix(tensor)
    bad = int((~torch.isfinite(matrix)).sum())
    if bad:
        detail = (
            f"{bad} of {matrix.numel()} entries are NaN or Inf; a non-finite matrix is not repaired"
        )
        return replace(
            _base_record(record, Status.NONFINITE, detail),
            matrix_shape=(matrix.shape[0], matrix.shape[1]),
        )
    bounds = plan.bounds.for_dtype(storage)
    try:
        stored, fields = _repair_matrix(matrix, storage, bounds)
    except _LINALG_ERROR as err:
        raise NumericalError(f"{record.display_name}: the SVD did not converge ({err})") from None
    if stored is not None and sink is not None:
        sink(record.key, stored.reshape(tensor.shape))
    return replace(_base_record(record, fields.pop("status")), **fields)


def _run_units(plan: RepairPlan, target: Path | None) -> list[TensorRepair]:
    """Process every tensor; with a ``target`` write the output files there as it goes."""
    rows: list[TensorRepair] = []
    for unit in plan.units:
        out = None if target is None else (target / unit.name if plan.directory else target)
        if not unit.rewrite:
            if out is not None:
                copy_file(unit.source, out)
            continue
        rewriter = None if out is None else open_rewriter(unit.source, out)
        try:
            sink = None if rewriter is None else rewriter.replace
            for record in iter_records(unit.source, max_elements=plan.selection.max_elements):
                rows.append(_process(record, plan, sink))
            if rewriter is not None:
                rewriter.finish()
                rewriter = None
        finally:
            if rewriter is not None:
                rewriter.abort()
    return rows


def _verify(plan: RepairPlan, target: Path, rows: list[TensorRepair]) -> list[TensorRepair]:
    """Read the written output back; a repaired matrix that misses a bound becomes unreachable."""
    repaired = {
        (Path(r.path).name, r.key or ""): i
        for i, r in enumerate(rows)
        if r.status is Status.REPAIRED
    }
    for unit in plan.units:
        if not unit.rewrite:
            continue
        written = target / unit.name if plan.directory else target
        for record in iter_records(written, max_elements=plan.selection.max_elements):
            index = repaired.get((unit.source.name, record.key))
            if index is None:
                continue
            row = rows[index]
            s = torch.linalg.svdvals(tall(_float64(as_matrix(record.load()))))
            if not meets_bounds(s, row.max_cond, row.min_gap):
                detail = "the written tensor misses its bound when read back"
                rows[index] = replace(row, status=Status.UNREACHABLE, detail=detail)
    return rows


class _Abandon(Exception):
    """Raised inside the atomic output to discard it (a non-finite matrix, not skipped)."""


def repair(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str] | None,
    *,
    max_cond: float | None = None,
    min_gap: float | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    dry_run: bool = False,
    force: bool = False,
    skip_nonfinite: bool = False,
) -> RepairResult:
    """Write the nearest well-posed copy of ``source`` to ``output``; every other byte unchanged.

    ``max_cond``: K of κ₂ ≤ K. ``min_gap``: G of s_i − s_{i+1} ≥ G·σ_max. Both None:
    the thresholds ``inspect`` flags against, per tensor dtype (:class:`Bounds`).
    ``include``/``exclude``: ``fnmatch`` globs on tensor keys. ``dry_run``: compute and
    report, write nothing (``output`` may be None). ``force``: replace an existing
    output (never an input). ``skip_nonfinite``: copy NaN/Inf matrices unchanged instead
    of writing nothing. Raises InputError for unusable inputs, outputs or bounds.
    """
    plan = plan_repair(
        source,
        bounds=Bounds(max_cond, min_gap),
        include=include,
        exclude=exclude,
        max_elements=max_elements,
    )
    empty = RepairResult(
        (), None if output is None else str(output), False, dry_run, skip_nonfinite
    )
    if dry_run:
        return replace(empty, records=tuple(_run_units(plan, None)))
    if output is None:
        raise InputError("an output path is needed (or a dry run)")
    target = Path(output)
    if not plan.directory:
        suffix = "".join(plan.units[0].source.suffixes[-1:]).lower()
        if target.suffix.lower() != suffix:
            raise InputError(f"the output must be a {suffix} file, like the input", path=target)
    atomic = atomic_directory if plan.directory else atomic_file
    rows: list[TensorRepair] = []
    try:
        with atomic(target, force=force, inputs=plan.inputs) as temporary:
            rows = _run_units(plan, temporary)
            if any(r.status is Status.NONFINITE for r in rows) and not skip_nonfinite:
                raise _Abandon
            rows = _verify(plan, temporary, rows)
    except _Abandon:
        return replace(empty, records=tuple(rows))  # the temporary output is already removed
    return replace(empty, records=tuple(rows), written=True)
