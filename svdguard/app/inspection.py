"""``svdguard.inspect``: stream the tensors of files and checkpoints through the diagnostics.

One tensor is in memory at a time (on CUDA: one batch of same-shape matrices,
bounded by :data:`CUDA_BATCH_BYTES`). The files come from
:func:`svdguard.app.discovery.discover` (directories searched recursively, files
without weights skipped with their reason), and every tensor gives one row:

* :class:`~svdguard.app.report.MatrixReport` for a floating 2-D tensor, or a ≥3-D
  one analysed as ``shape[0] × ∏ shape[1:]`` (one row per matrix of a stack
  matched by ``batch``), judged for the run's profile and rules;
* :class:`~svdguard.app.report.SkippedTensor` for what is not a matrix (scalars,
  1-D, integer, bool, empty, excluded by name, optimizer state, above
  ``max_elements`` or the memory, an SVD estimated to take longer than
  ``max_time``, a second name of a tensor already analysed: an alias), and for
  each file of a directory that was not read;
* :class:`~svdguard.app.report.FailedReport` when a payload cannot be read or the
  SVD fails after its retry; a file, shard or archive member whose header
  cannot be read gives one failed row naming it. Neither stops the run.

Every string a row carries from a file (key, dtype code, file name, a message
quoting them) is passed through :func:`svdguard.io.text.printable`: control
characters and lone surrogates are escaped, so no format can be forged or
broken by a tensor's name.

No rich, no typer: the CLI renders what this yields.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import os
from collections.abc import Container, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from svdguard.app.diagnose import (
    Judgement,
    Subject,
    check_thresholds,
    nonfinite_report,
    report_from_spectrum,
)
from svdguard.app.discovery import Discovered, discover
from svdguard.app.formatting import format_number
from svdguard.app.report import (
    FailedReport,
    InspectionItem,
    Profile,
    SkippedTensor,
    SkipReason,
)
from svdguard.app.rules import RuleSelection
from svdguard.errors import InputError, NumericalError, ResourceLimitError
from svdguard.io import DEFAULT_MAX_ELEMENTS, TensorRecord, iter_units
from svdguard.io.dtypes import torch_dtype
from svdguard.io.limits import DEFAULT_MAX_TIME, SVD_RATE, estimated_svd_seconds
from svdguard.io.records import FailedUnit
from svdguard.io.text import printable
from svdguard.io.torch_format import iter_torch_records
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
    "OPTIMIZER_STATE_NAMES",
    "Selection",
    "inspect",
    "is_optimizer_state",
    "resolve_device",
    "failed_unit_report",
    "printable_row",
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


#: Names of optimizer-state tensors (torch.optim's state dicts: Adam, AdamW, SGD, RMSprop,
#: Adadelta, Adamax): moments and buffers of the training run, not weights of the model.
OPTIMIZER_STATE_NAMES = frozenset(
    {"exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "square_avg", "acc_delta",
     "exp_inf"}
)  # fmt: skip


def is_optimizer_state(key: str) -> bool:
    """True for the tensors of an optimizer's state dict (``state.3.exp_avg``, ``…momentum_buffer``)."""
    parts = key.split(".")
    if any(part in OPTIMIZER_STATE_NAMES for part in parts):
        return True
    return parts[0] in ("optimizer", "optimizer_states", "optim") or (
        len(parts) >= 2 and parts[0] == "state" and parts[1].isdigit()
    )


@dataclass(frozen=True)
class Selection:
    """Which tensors are analysed: name globs (``fnmatch`` on the key), a size and a time limit.

    ``include_optimizer``: analyse optimizer-state tensors too (skipped by default).
    ``batch``: globs of ≥3-D tensors analysed as a stack of ``shape[0]`` matrices
    ``shape[1] × ∏ shape[2:]`` (mixture-of-experts weights) instead of one matrix.
    ``max_time``: seconds the SVD of one matrix may be estimated to take.
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    max_elements: int = DEFAULT_MAX_ELEMENTS
    include_optimizer: bool = False
    batch: tuple[str, ...] = ()
    max_time: float = DEFAULT_MAX_TIME

    def wants(self, name: str) -> bool:
        """True when ``name`` matches an include glob (or there is none) and no exclude glob."""
        included = not self.include or any(fnmatch.fnmatchcase(name, p) for p in self.include)
        return included and not any(fnmatch.fnmatchcase(name, p) for p in self.exclude)

    def stacked(self, name: str) -> bool:
        """True when ``name`` is to be analysed as a stack of matrices."""
        return any(fnmatch.fnmatchcase(name, p) for p in self.batch)


def _name(record: TensorRecord, labels: Discovered | None = None) -> str:
    """``label[key]`` (``label`` alone for an unnamed tensor); the label names the file."""
    label = labels.label(record.path) if labels is not None else Path(record.path).name
    return f"{label}[{record.key}]" if record.key else label


def _skipped_row(
    record: TensorRecord, reason: SkipReason, detail: str = "", labels: Discovered | None = None
) -> SkippedTensor:
    return SkippedTensor(
        name=_name(record, labels),
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


def skip_reason(
    record: TensorRecord, selection: Selection, labels: Discovered | None = None
) -> SkippedTensor | None:
    """The row of a tensor that is not analysed, from its header alone; None when it is analysed."""

    def _skipped(reason: SkipReason, detail: str = "") -> SkippedTensor:
        return _skipped_row(record, reason, detail, labels)

    name = record.key or Path(record.path).name
    if not selection.wants(name):
        return _skipped(SkipReason.EXCLUDED)
    if not selection.include_optimizer and record.key and is_optimizer_state(record.key):
        return _skipped(SkipReason.OPTIMIZER)
    dtype = torch_dtype(record.dtype)
    if dtype is None:
        if _numpy_kind(record.dtype) in ("U", "S", "V", "f", "c"):
            return _skipped(
                SkipReason.UNSUPPORTED_DTYPE,
                f"dtype {record.dtype} has no torch equivalent; convert it to float64 if it "
                "holds a matrix",
            )
        # Objects, unknown codes: loading raises the reader's error, which becomes a failed row
        # (a hostile or corrupt file must not pass as "skipped").
        return None
    if dtype == torch.bool:
        return _skipped(SkipReason.BOOL)
    if not (dtype.is_floating_point or dtype.is_complex):
        return _skipped(SkipReason.INTEGER)
    if len(record.shape) == 0:
        return _skipped(SkipReason.SCALAR)
    if len(record.shape) == 1:
        return _skipped(SkipReason.VECTOR)
    if 0 in record.shape:
        return _skipped(SkipReason.EMPTY)
    numel = math.prod(record.shape)
    if numel > selection.max_elements:
        return _skipped(
            SkipReason.TOO_LARGE,
            f"{numel:,} elements exceed max_elements = {selection.max_elements:,}",
        )
    seconds = _svd_seconds(record.shape, dtype.is_complex, selection.stacked(name))
    if seconds > selection.max_time:
        return _skipped(
            SkipReason.TOO_SLOW,
            f"its SVD is estimated at {seconds:,.0f} s (m·n·min(m, n) at "
            f"{format_number(SVD_RATE)} per second), beyond max_time = {selection.max_time:g} s",
        )
    return None


def _svd_seconds(shape: Sequence[int], is_complex: bool, stacked: bool) -> float:
    """The estimated time of the SVD(s) of a tensor: one matrix shape[0] × ∏ shape[1:], or
    (a stack) shape[0] matrices shape[1] × ∏ shape[2:]."""
    if stacked and len(shape) >= 3:
        count, rows = shape[0], shape[1]
        columns = math.prod(shape[2:])
        return count * estimated_svd_seconds(rows, columns, is_complex=is_complex)
    rows = shape[0]
    return estimated_svd_seconds(rows, math.prod(shape) // rows, is_complex=is_complex)


def _message(err: BaseException) -> str:
    """An svdguard error's message without the ``path[key]:`` prefix the row already shows."""
    return getattr(err, "message", None) or f"{type(err).__name__}: {err}"


#: Prefix of the model's weights inside a PyTorch Lightning checkpoint.
LIGHTNING_STATE_DICT = "state_dict."


def _lightning_records(
    path: Path, max_elements: int
) -> list[TensorRecord | SkippedTensor | FailedReport]:
    """A Lightning ``.ckpt``: its ``state_dict`` (prefix dropped), read like a .pt with weights_only.

    Tensors outside the state dict (loop and callback state) are skipped as not weights;
    the optimizer states are lists, which the .pt reader skips.
    """
    try:
        if path.stat().st_size == 0:
            raise InputError("the file is empty (0 bytes)", path=path)
    except OSError as err:
        raise InputError(f"cannot access: {err.strerror or err}", path=path) from None
    rows: list[TensorRecord | SkippedTensor | FailedReport] = []
    for record in iter_torch_records(path, max_elements=max_elements):
        if isinstance(record, FailedUnit):  # one unreadable entry: a failed row, the rest go on
            rows.append(
                FailedReport(
                    name=record.display_name,
                    reason=record.error.message,
                    stage="read",
                    path=str(record.path),
                    key=record.key,
                )
            )
        elif record.key.startswith(LIGHTNING_STATE_DICT):
            rows.append(replace(record, key=record.key.removeprefix(LIGHTNING_STATE_DICT)))
        else:
            rows.append(
                _skipped_row(
                    record, SkipReason.NOT_WEIGHTS, "outside the Lightning checkpoint's state_dict"
                )
            )
    return rows


def failed_unit_report(unit: FailedUnit, labels: Discovered | None = None) -> FailedReport:
    """The failed row of a file, shard or archive member that could not be listed."""
    label = labels.label(unit.path) if labels is not None else Path(unit.path).name
    return FailedReport(
        name=label if unit.key is None else f"{label}[{unit.key}]",
        reason=_message(unit.error),
        stage="read",
        path=str(unit.path),
        key=unit.key,
    )


def _records(
    path: Path, max_elements: int, labels: Discovered
) -> Iterator[TensorRecord | SkippedTensor | FailedReport]:
    """The records of one file; each part that cannot be listed (the file, a shard, an
    archive member) becomes one failed row naming it, and the rest is still listed."""
    if path.suffix.lower() == ".ckpt":
        try:
            listed: Iterator[TensorRecord | SkippedTensor | FailedReport] = iter(
                _lightning_records(path, max_elements)
            )
        except InputError as err:
            yield FailedReport(
                name=labels.label(path), reason=_message(err), stage="read", path=str(path)
            )
            return
        yield from listed
        return
    for unit in iter_units(path, max_elements=max_elements):
        yield failed_unit_report(unit, labels) if isinstance(unit, FailedUnit) else unit


#: Skips whose payload is still read when its format can check it: what is not a matrix
#: (the user's exclusions, and tensors too large or too slow, are never read).
_CHECKED_SKIPS = frozenset(
    {SkipReason.SCALAR, SkipReason.VECTOR, SkipReason.EMPTY, SkipReason.INTEGER, SkipReason.BOOL}
)
#: Formats whose payload carries a checksum a header cannot vouch for: an .npz member's
#: CRC-32 (safetensors and .npy extents are checked against the file when it is listed).
_CHECKSUMMED_SUFFIXES = frozenset({".npz"})


def _checked_skip(
    record: TensorRecord, skipped: SkippedTensor, labels: Discovered | None = None
) -> InspectionItem:
    """The skip row, or a failed row when the skipped tensor's payload is corrupt.

    A corrupt member must not pass as "skipped, 1-d" just because it is not a matrix:
    the payload of a skipped .npz member is read (bounded by the same size checks as any
    load) so that its CRC-32 is checked.
    """
    if skipped.reason not in _CHECKED_SKIPS:
        return skipped
    if Path(record.path).suffix.lower() not in _CHECKSUMMED_SUFFIXES:
        return skipped
    try:
        record.load()
    except ResourceLimitError:
        return skipped
    except InputError as err:
        return _failed(record, _name(record, labels), "load", _message(err))
    return skipped


def _alias_row(record: TensorRecord, labels: Discovered | None = None) -> SkippedTensor:
    return _skipped_row(
        record,
        SkipReason.ALIAS,
        f"the same tensor as {record.alias_of} (same storage, offset, shape and strides); "
        "analysed once, under that name",
        labels,
    )


def printable_row(item: InspectionItem) -> InspectionItem:
    """``item`` with every string taken from a file escaped by :func:`printable`."""
    changes = {
        name: printable(value)
        for name in ("name", "path", "key", "dtype", "reason", "detail")
        if type(value := getattr(item, name, None)) is str and printable(value) != value
    }
    return dataclasses.replace(item, **changes) if changes else item  # type: ignore[arg-type]


@dataclass(frozen=True)
class _Analysis:
    """How to compute and judge (shared by every matrix of a run)."""

    precision: torch.dtype
    device: torch.device
    rules: RuleSelection
    max_cond: float | None
    gap_rtol: float | None
    keep_spectrum: bool = False

    def judgement(self, name: str) -> Judgement:
        """The judgement of tensor ``name``: the profile, its rules after per-tensor ignores."""
        return Judgement(
            profile=self.rules.profile,
            rules=self.rules.active(name),
            max_cond=self.max_cond,
            gap_rtol=self.gap_rtol,
        )


@dataclass
class _Pending:
    subject: Subject
    matrix: torch.Tensor  # on the device, in the compute dtype
    record: TensorRecord


def _failed(record: TensorRecord, name: str, stage: str, reason: str) -> FailedReport:
    return FailedReport(
        name=name,
        reason=reason,
        stage=stage,
        path=str(record.path),
        key=record.key or None,
        shape=tuple(record.shape),
        dtype=record.dtype,
    )


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
                yield _report(pending.subject, spectra[index], pending.matrix.dtype, self.analysis)
                continue
            try:
                spectrum = singular_values(
                    pending.matrix, precision=self.analysis.precision, device=self.analysis.device
                )
            except NumericalError as err:
                yield _failed(pending.record, pending.subject.name, "svd", _message(err))
                continue
            yield _report(
                pending.subject, spectrum.values, spectrum.dtype, self.analysis, spectrum.method
            )


def _report(
    subject: Subject,
    s: torch.Tensor,
    dtype: torch.dtype,
    analysis: _Analysis,
    method: str = "svd",
) -> InspectionItem:
    return report_from_spectrum(
        s,
        subject,
        computed_in=dtype,
        device=str(analysis.device),
        judgement=analysis.judgement(subject.key or subject.name),
        keep_spectrum=analysis.keep_spectrum,
        method=method,
    )


def _analyse_matrix(
    record: TensorRecord,
    subject: Subject,
    matrix: torch.Tensor,
    analysis: _Analysis,
    queue: _BatchQueue | None,
) -> Iterator[InspectionItem]:
    """The row of one matrix (2-D) of a record."""
    bad = count_nonfinite(matrix)
    if bad:
        judgement = analysis.judgement(subject.key or subject.name)
        yield nonfinite_report(subject, bad, str(analysis.device), judgement)
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
        yield _failed(record, subject.name, "svd", _message(err))
        return
    yield _report(subject, spectrum.values, spectrum.dtype, analysis, spectrum.method)


def _analyse(
    record: TensorRecord,
    selection: Selection,
    analysis: _Analysis,
    queue: _BatchQueue | None,
    labels: Discovered,
) -> Iterator[InspectionItem]:
    """The row(s) of one record that passed the header checks: one, or one per stacked matrix."""
    name = _name(record, labels)
    try:
        tensor = record.load()
    except ResourceLimitError as err:
        yield _skipped_row(record, SkipReason.TOO_LARGE, _message(err), labels)
        return
    except InputError as err:
        yield _failed(record, name, "load", _message(err))
        return
    if tensor.ndim >= 3 and selection.stacked(record.key or Path(record.path).name):
        for index in range(tensor.shape[0]):
            element = tensor[index]
            subject = Subject(
                name=f"{name}[{index}]",
                shape=tuple(element.shape),
                dtype=element.dtype,
                path=str(record.path),
                key=f"{record.key}[{index}]" if record.key else f"[{index}]",
            )
            yield from _analyse_matrix(record, subject, as_matrix(element), analysis, queue)
        return
    subject = Subject(
        name=name,
        shape=tuple(tensor.shape),
        dtype=tensor.dtype,
        path=str(record.path),
        key=record.key or None,
    )
    matrix = as_matrix(tensor)
    del tensor
    yield from _analyse_matrix(record, subject, matrix, analysis, queue)


def _run(
    discovered: Discovered,
    selection: Selection,
    analysis: _Analysis,
    batched: bool,
    only: Container[tuple[str, str]] | None = None,
) -> Iterator[InspectionItem]:
    for skipped_file in discovered.skipped:
        yield printable_row(
            SkippedTensor(
                name=discovered.label(skipped_file.path),
                reason=skipped_file.reason,
                path=str(skipped_file.path),
                detail=skipped_file.detail,
            )
        )
    queue = _BatchQueue(analysis, CUDA_BATCH_BYTES) if batched else None
    for path in discovered.files:
        for item in _rows_of(path, selection, analysis, queue, discovered, only):
            yield printable_row(item)
        if queue is not None:
            for item in queue.flush():
                yield printable_row(item)


def _rows_of(
    path: Path,
    selection: Selection,
    analysis: _Analysis,
    queue: _BatchQueue | None,
    discovered: Discovered,
    only: Container[tuple[str, str]] | None,
) -> Iterator[InspectionItem]:
    """The rows of one file; a tensor reached under a second name is analysed once."""
    analysed: set[str] = set()
    for record in _records(path, selection.max_elements, discovered):
        if isinstance(record, (FailedReport, SkippedTensor)):
            yield record
            continue
        if only is not None and (str(record.path), record.key) not in only:
            continue  # another rank's tensor (svdguard.app.distributed)
        skipped = skip_reason(record, selection, discovered)
        if skipped is not None:
            yield _checked_skip(record, skipped, discovered)
            continue
        if record.alias_of is not None and record.alias_of in analysed:
            yield _alias_row(record, discovered)
            continue
        analysed.add(record.key)
        try:
            yield from _analyse(record, selection, analysis, queue, discovered)
        except Exception as err:  # noqa: BLE001 - one bad tensor must not stop a checkpoint
            yield _failed(
                record, _name(record, discovered), "analyse", f"{type(err).__name__}: {err}"
            )


def inspect(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | Discovered,
    *,
    precision: str | torch.dtype = torch.float64,
    device: str | torch.device = "auto",
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    max_time: float = DEFAULT_MAX_TIME,
    profile: Profile | str = Profile.HEALTH,
    max_cond: float | None = None,
    gap_rtol: float | None = None,
    select: Sequence[str] | None = None,
    extend_select: Sequence[str] = (),
    ignore: Sequence[str] = (),
    per_tensor_ignores: Mapping[str, Sequence[str]] | None = None,
    include_optimizer: bool = False,
    batch: Sequence[str] = (),
    spectrum: bool = False,
    batched: bool | None = None,
    only: Container[tuple[str, str]] | None = None,
) -> Iterator[InspectionItem]:
    """Diagnose every matrix in ``paths``: one row per tensor, streamed.

    ``paths``: a file (.npy, .npz, .safetensors, ``*.safetensors.index.json``,
    .pt/.bin/.pth, Lightning .ckpt), a directory (searched recursively, see
    :mod:`svdguard.app.discovery`) or a glob, or a list of them.
    ``precision``: the dtype singular values are computed in (float64 by
    default; float32 is faster, and a verdict it cannot resolve is reported as
    ``unresolved``). ``device``: ``"auto"`` (CUDA when available), ``"cpu"`` or
    ``"cuda"``. ``include`` / ``exclude``: ``fnmatch`` globs on the tensor's key.
    ``max_elements``: larger tensors are skipped. ``max_time``: a matrix whose SVD
    is estimated to take longer (seconds, from m·n·min(m, n) at the rate of
    :data:`svdguard.io.limits.SVD_RATE`) is skipped.

    Judging: ``profile`` ``"health"`` (is the checkpoint healthy to use?) or
    ``"svd-grad"`` (will differentiating through the SVD of its weights
    break?); ``max_cond`` / ``gap_rtol``: thresholds of ``ill-conditioned``
    (None: derived per tensor; inf: off) and ``near-degenerate`` (None: √ε_w;
    0: off); ``select`` (replaces the profile's rules), ``extend_select``,
    ``ignore``, ``per_tensor_ignores`` (name glob → rules): rule codes, code
    prefixes or names (``svdguard.app.rules``, ``docs/diagnostics.md#rules``).

    ``include_optimizer``: analyse optimizer-state tensors (``exp_avg`` …),
    skipped by default. ``batch``: globs of ≥3-D tensors analysed as a stack of
    ``shape[0]`` matrices. ``spectrum``: keep every singular value in the rows.
    ``batched``: group same-shape matrices into one ``svdvals`` call (default:
    on CUDA only); rows of a batch are yielded when it runs, so the order then
    differs from the file's.
    ``only``: analyse just the tensors whose ``(str(path), key)`` is in it (asked once
    per tensor, in listing order); the others give no row (``docs/scale-out.md``).

    Arguments and paths are checked at the call (InputError for a missing file
    or an unknown device); problems inside files become rows.

    >>> import tempfile, pathlib, numpy as np
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "eye.npy"
    >>> np.save(path, np.eye(3))
    >>> [(row.name, row.cond, row.flags) for row in inspect(path)]
    [('eye.npy', 1.0, ('tied',))]
    >>> [row.severity.value for row in inspect(path, profile="svd-grad")]
    ['error']
    """
    discovered = paths if isinstance(paths, Discovered) else discover(paths)
    check_thresholds(max_cond, gap_rtol)
    rules = RuleSelection.build(
        profile,
        select=select,
        extend_select=extend_select,
        ignore=ignore,
        per_tensor_ignores=per_tensor_ignores,
    )
    analysis = _Analysis(
        precision=resolve_precision(precision),
        device=resolve_device(device),
        rules=rules,
        max_cond=max_cond,
        gap_rtol=gap_rtol,
        keep_spectrum=spectrum,
    )
    if max_elements < 1:
        raise InputError(f"max_elements must be at least 1, got {max_elements}")
    if not max_time > 0:  # NaN too
        raise InputError(f"max_time must be a positive number of seconds, got {max_time}")
    selection = Selection(
        tuple(include), tuple(exclude), max_elements, include_optimizer, tuple(batch), max_time
    )
    use_batches = analysis.device.type == "cuda" if batched is None else batched
    return _run(discovered, selection, analysis, use_batches, only)
