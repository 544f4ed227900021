"""``svdguard.inspect``: stream the tensors of files and checkpoints through the diagnostics.

One tensor is in memory at a time (on CUDA: one batch of same-shape matrices,
bounded by :data:`CUDA_BATCH_BYTES`). Every tensor gives exactly one row:

* :class:`~svdguard.app.report.MatrixReport` for a floating 2-D tensor, or a ≥3-D
  one analysed as ``shape[0] × ∏ shape[1:]``;
* :class:`~svdguard.app.report.SkippedTensor` for what is not a matrix (scalars,
  1-D, integer, bool, empty, excluded by name, above ``max_elements``);
* :class:`~svdguard.app.report.FailedReport` when a payload cannot be read or the
  SVD fails after its retry; a file whose header cannot be read gives one
  file-level failed row. Neither stops the run.

No rich, no typer: the CLI renders what this yields.
"""

from __future__ import annotations

import fnmatch
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from svdguard.app.diagnose import Subject, nonfinite_report, report_from_spectrum
from svdguard.app.report import FailedReport, InspectionItem, SkippedTensor, SkipReason
from svdguard.errors import InputError, NumericalError, ResourceLimitError
from svdguard.io import DEFAULT_MAX_ELEMENTS, TensorRecord, expand_inputs, iter_records
from svdguard.io.dtypes import torch_dtype
from svdguard.linalg.spectrum_analysis import (
    CUDA_DRIVERS,
    PRECISIONS,
    all_finite,
    analysis_dtype,
    as_matrix,
    batched_singular_values,
    count_nonfinite,
    narrows,
    singular_values,
)

__all__ = [
    "CUDA_BATCH_BYTES",
    "DEVICES",
    "Selection",
    "inspect",
    "resolve_device",
    "resolve_precision",
    "skip_reason",
]

#: GPU memory one batch of same-shape matrices may take (in the compute dtype). Large enough
#: that the 48 attention matrices of a BERT-base encoder (768×768, float64: 226 MiB) go
#: in one cuSOLVER call, small enough to leave room on any GPU that holds the largest tensor.
CUDA_BATCH_BYTES = 512 * 2**20

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; CUDA asked for but absent → InputError."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {device!r}; use auto, cpu or cuda") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(
            f"device {device!r} requested but CUDA is not available (torch {torch.__version__}); "
            "use device='cpu' or 'auto'"
        )
    if resolved.type not in ("cpu", "cuda"):
        raise InputError(f"unsupported device {device!r}; use auto, cpu or cuda")
    return resolved


def resolve_precision(precision: str | torch.dtype) -> torch.dtype:
    """torch.float64 or torch.float32 (or their names); anything else → InputError."""
    if isinstance(precision, torch.dtype) and precision in PRECISIONS.values():
        return precision
    if isinstance(precision, str) and precision in PRECISIONS:
        return PRECISIONS[precision]
    raise InputError(f"precision must be float64 or float32, got {precision!r}")


@dataclass(frozen=True)
class Selection:
    """Which tensors are analysed: name globs (``fnmatch`` on the key) and a size limit."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    max_elements: int = DEFAULT_MAX_ELEMENTS

    def wants(self, name: str) -> bool:
        """True when ``name`` matches an include glob (or there is none) and no exclude glob."""
        included = not self.include or any(fnmatch.fnmatchcase(name, p) for p in self.include)
        return included and not any(fnmatch.fnmatchcase(name, p) for p in self.exclude)


def _skipped(record: TensorRecord, reason: SkipReason, detail: str = "") -> SkippedTensor:
    return SkippedTensor(
        name=record.display_name,
        reason=reason,
        path=str(record.path),
        key=record.key or None,
        shape=tuple(record.shape),
        dtype=record.dtype,
        detail=detail,
    )


def _numpy_kind(name: str) -> str | None:
    """numpy's kind letter of a dtype name torch lacks ("U" for "U10", "f" for float128)."""
    try:
        return np.dtype(name).kind
    except (TypeError, ValueError, SyntaxError):
        return None


def skip_reason(record: TensorRecord, selection: Selection) -> SkippedTensor | None:
    """The row of a tensor that is not analysed, from its header alone; None when it is analysed."""
    name = record.key or Path(record.path).name
    if not selection.wants(name):
        return _skipped(record, SkipReason.EXCLUDED)
    dtype = torch_dtype(record.dtype)
    if dtype is None:
        if _numpy_kind(record.dtype) in ("U", "S", "V", "f", "c"):
            return _skipped(
                record,
                SkipReason.UNSUPPORTED_DTYPE,
                f"dtype {record.dtype} has no torch equivalent; convert it to float64 if it "
                "holds a matrix",
            )
        # Objects, unknown codes: loading raises the reader's error, which becomes a failed row
        # (a hostile or corrupt file must not pass as "skipped").
        return None
    if dtype == torch.bool:
        return _skipped(record, SkipReason.BOOL)
    if not (dtype.is_floating_point or dtype.is_complex):
        return _skipped(record, SkipReason.INTEGER)
    if len(record.shape) == 0:
        return _skipped(record, SkipReason.SCALAR)
    if len(record.shape) == 1:
        return _skipped(record, SkipReason.VECTOR)
    if 0 in record.shape:
        return _skipped(record, SkipReason.EMPTY)
    numel = math.prod(record.shape)
    if numel > selection.max_elements:
        return _skipped(
            record,
            SkipReason.TOO_LARGE,
            f"{numel:,} elements exceed max_elements = {selection.max_elements:,}",
        )
    return None


def _failed(record: TensorRecord, stage: str, reason: str) -> FailedReport:
    return FailedReport(
        name=record.display_name,
        reason=reason,
        stage=stage,
        path=str(record.path),
        key=record.key or None,
        shape=tuple(record.shape),
        dtype=record.dtype,
    )


def _message(err: BaseException) -> str:
    """An svdguard error's message without the ``path[key]:`` prefix the row already shows."""
    return getattr(err, "message", None) or f"{type(err).__name__}: {err}"


def _records(path: Path, max_elements: int) -> Iterator[TensorRecord | FailedReport]:
    """The records of one file; an unreadable header becomes one file-level failed row."""
    records = iter_records(path, max_elements=max_elements)
    while True:
        try:
            record = next(records)
        except StopIteration:
            return
        except InputError as err:
            yield FailedReport(name=path.name, reason=_message(err), stage="read", path=str(path))
            return
        yield record


@dataclass(frozen=True)
class _Analysis:
    """How to compute and judge (shared by every matrix of a run)."""

    precision: torch.dtype
    device: torch.device
    max_cond: float | None
    gap_rtol: float | None


@dataclass
class _Pending:
    subject: Subject
    matrix: torch.Tensor  # on the device, in the compute dtype
    record: TensorRecord


class _BatchQueue:
    """Groups same-shape, same-dtype matrices into one batched ``svdvals`` call."""

    def __init__(self, analysis: _Analysis, budget_bytes: int) -> None:
        self.analysis = analysis
        self.budget_bytes = budget_bytes
        self.groups: dict[tuple[int, int, torch.dtype], list[_Pending]] = {}

    def add(self, pending: _Pending) -> Iterator[InspectionItem]:
        rows, columns = pending.matrix.shape
        key = (rows, columns, pending.matrix.dtype)
        group = self.groups.setdefault(key, [])
        group.append(pending)
        if sum(p.matrix.numel() * p.matrix.element_size() for p in group) >= self.budget_bytes:
            yield from self._run(self.groups.pop(key))

    def flush(self) -> Iterator[InspectionItem]:
        groups, self.groups = self.groups, {}
        for group in groups.values():
            yield from self._run(group)

    def _run(self, group: list[_Pending]) -> Iterator[InspectionItem]:
        driver = CUDA_DRIVERS[0] if self.analysis.device.type == "cuda" else None
        try:
            spectra = batched_singular_values(torch.stack([p.matrix for p in group]), driver=driver)
        except RuntimeError:
            spectra = None  # one bad matrix spoils the batch: redo them one by one, with retries
        for index, pending in enumerate(group):
            if spectra is not None and bool(torch.isfinite(spectra[index]).all()):
                yield self._report(pending, spectra[index], pending.matrix.dtype)
                continue
            try:
                spectrum = singular_values(
                    pending.matrix, precision=self.analysis.precision, device=self.analysis.device
                )
            except NumericalError as err:
                yield _failed(pending.record, "svd", _message(err))
                continue
            yield self._report(pending, spectrum.values, spectrum.dtype, spectrum.method)

    def _report(
        self, pending: _Pending, s: torch.Tensor, dtype: torch.dtype, method: str = "svd"
    ) -> InspectionItem:
        return report_from_spectrum(
            s,
            pending.subject,
            computed_in=dtype,
            device=str(self.analysis.device),
            max_cond=self.analysis.max_cond,
            gap_rtol=self.analysis.gap_rtol,
            method=method,
        )


def _analyse(
    record: TensorRecord, analysis: _Analysis, queue: _BatchQueue | None
) -> Iterator[InspectionItem]:
    """The row(s) of one record that passed the header checks."""
    try:
        tensor = record.load()
    except ResourceLimitError as err:
        yield _skipped(record, SkipReason.TOO_LARGE, _message(err))
        return
    except InputError as err:
        yield _failed(record, "load", _message(err))
        return
    subject = Subject(
        name=record.display_name,
        shape=tuple(tensor.shape),
        dtype=tensor.dtype,
        path=str(record.path),
        key=record.key or None,
    )
    matrix = as_matrix(tensor)
    del tensor
    bad = count_nonfinite(matrix)
    if bad:
        yield nonfinite_report(subject, bad, str(analysis.device))
        return
    if queue is not None:
        on_device = matrix.to(
            device=analysis.device, dtype=analysis_dtype(matrix.dtype, analysis.precision)
        )
        if not narrows(matrix.dtype, on_device.dtype) or all_finite(on_device):
            yield from queue.add(_Pending(subject, on_device, record))
            return
        # The cast overflowed (float64 data beyond float32's range): the retry path handles it.
    try:
        spectrum = singular_values(matrix, precision=analysis.precision, device=analysis.device)
    except NumericalError as err:
        yield _failed(record, "svd", _message(err))
        return
    yield report_from_spectrum(
        spectrum.values,
        subject,
        computed_in=spectrum.dtype,
        device=spectrum.device,
        max_cond=analysis.max_cond,
        gap_rtol=analysis.gap_rtol,
        method=spectrum.method,
    )


def _run(
    files: list[Path], selection: Selection, analysis: _Analysis, batched: bool
) -> Iterator[InspectionItem]:
    queue = _BatchQueue(analysis, CUDA_BATCH_BYTES) if batched else None
    for path in files:
        for record in _records(path, selection.max_elements):
            if isinstance(record, FailedReport):
                yield record
                continue
            skipped = skip_reason(record, selection)
            if skipped is not None:
                yield skipped
                continue
            try:
                yield from _analyse(record, analysis, queue)
            except Exception as err:  # noqa: BLE001 - one bad tensor must not stop a checkpoint
                yield _failed(record, "analyse", f"{type(err).__name__}: {err}")
        if queue is not None:
            yield from queue.flush()


def inspect(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    precision: str | torch.dtype = torch.float64,
    device: str | torch.device = "auto",
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    max_cond: float | None = None,
    gap_rtol: float | None = None,
    batched: bool | None = None,
) -> Iterator[InspectionItem]:
    """Diagnose every matrix in ``paths``: one row per tensor, streamed.

    ``paths``: a file (.npy, .npz, .safetensors, ``*.safetensors.index.json``,
    .pt/.bin/.pth), a directory (Hugging Face layout) or a glob, or a list of
    them. ``precision``: the dtype singular values are computed in (float64 by
    default; float32 is faster but cannot resolve κ₂ beyond about 1/(max(m, n)·ε₃₂)).
    ``device``: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
    ``include`` / ``exclude``: ``fnmatch`` globs on the tensor's key.
    ``max_elements``: larger tensors are skipped. ``max_cond`` / ``gap_rtol``:
    thresholds of the ``ill-conditioned`` and ``degenerate`` flags (None: derived
    from each tensor's dtype, see ``svdguard.tolerances``). ``batched``: group
    same-shape matrices into one ``svdvals`` call (default: on CUDA only); rows
    of a batch are yielded when it runs, so the order then differs from the file's.

    Arguments and paths are checked at the call (InputError for a missing file
    or an unknown device); problems inside files become rows.

    >>> import tempfile, pathlib, numpy as np
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "eye.npy"
    >>> np.save(path, np.eye(3))
    >>> [(row.name, row.cond, row.flags) for row in inspect(path)]
    [('eye.npy', 1.0, ('degenerate',))]
    """
    raw = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files = expand_inputs(raw)
    analysis = _Analysis(
        precision=resolve_precision(precision),
        device=resolve_device(device),
        max_cond=max_cond,
        gap_rtol=gap_rtol,
    )
    for name, value in (("max_cond", max_cond), ("gap_rtol", gap_rtol)):
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise InputError(f"{name} must be a positive finite number, got {value}")
    if max_elements < 1:
        raise InputError(f"max_elements must be at least 1, got {max_elements}")
    selection = Selection(tuple(include), tuple(exclude), max_elements)
    use_batches = analysis.device.type == "cuda" if batched is None else batched
    return _run(files, selection, analysis, use_batches)
