"""One entry point per question: which tensors does a file hold, and give me one (or all).

:func:`iter_units` is the complete answer: every tensor as a
:class:`TensorRecord` and every part that could not be listed as a
:class:`FailedUnit` (the whole file, one shard, one archive member), never
raising for what is inside the file. :func:`iter_records` is the simple form:
it yields the records and raises the failures (one InputError, after the
records) at the end.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from svdguard.errors import InputError
from svdguard.io.limits import DEFAULT_MAX_ELEMENTS
from svdguard.io.npy import iter_npy_records
from svdguard.io.npz import iter_npz_records
from svdguard.io.paths import describe_missing
from svdguard.io.records import FailedUnit, TensorRecord, register_lookup
from svdguard.io.safetensors_format import iter_safetensors_records
from svdguard.io.sharded import INDEX_SUFFIXES, is_index, iter_sharded_units, shard_of

if TYPE_CHECKING:
    import torch


def _iter_torch_records(path: Path, *, max_elements: int) -> list[TensorRecord | FailedUnit]:
    from svdguard.io.torch_format import iter_torch_records  # torch, for this format only

    return iter_torch_records(path, max_elements=max_elements)


#: A format's lister: the records of one file, and (.npz) its failed members.
Lister = Callable[..., Sequence[TensorRecord | FailedUnit]]

_READERS: dict[str, Lister] = {
    ".npy": iter_npy_records,
    ".npz": iter_npz_records,
    ".safetensors": iter_safetensors_records,
    ".pt": _iter_torch_records,
    ".pth": _iter_torch_records,
    ".bin": _iter_torch_records,
}

#: Every suffix iter_records reads, for messages and for expand_inputs.
SUPPORTED_SUFFIXES = (*_READERS, *INDEX_SUFFIXES)

#: How many keys an error message lists before it says "...".
LISTED_KEYS = 20


def _check_file(path: Path) -> None:
    try:
        if not path.exists():
            raise InputError(describe_missing(path), path=path)
        if path.is_dir():
            raise InputError("is a directory, not a tensor file", path=path)
        if path.stat().st_size == 0:
            raise InputError("the file is empty (0 bytes)", path=path)
    except InputError:
        raise  # an InputError is a ValueError too; it already says what is wrong
    except OSError as err:
        raise InputError(f"cannot access: {err.strerror or err}", path=path) from None
    except ValueError:  # e.g. "embedded null byte"
        raise InputError("is not a valid file name", path=repr(str(path))) from None


def iter_units(
    path: str | os.PathLike[str], *, max_elements: int = DEFAULT_MAX_ELEMENTS
) -> Iterator[TensorRecord | FailedUnit]:
    """Header-only listing of one file: a record per tensor, a FailedUnit per unreadable part.

    Reads .npy, .npz (every member), .safetensors, ``*.safetensors.index.json``
    (sharded; shards in sorted order), and .pt/.bin/.pth state dicts (nested
    dicts flattened with dotted keys, non-tensor values skipped, each object
    walked once). A file whose format makes it invalid as a whole is one
    FailedUnit (``unit.whole_file``); a missing or invalid shard, or an
    archive member whose header is bad, is one FailedUnit naming it, and the
    rest is still listed. A bad payload raises only from that record's load().
    """
    path = Path(path)
    try:
        _check_file(path)
        if is_index(path):
            yield from iter_sharded_units(
                path, lambda shard: iter_units(shard, max_elements=max_elements)
            )
            return
        reader = _READERS.get(path.suffix.lower())
        if reader is None:
            raise InputError(
                f"unknown file type {path.suffix or '(no suffix)'!r}; svdguard reads "
                f"{', '.join(SUPPORTED_SUFFIXES)}",
                path=path,
            )
        units = reader(path, max_elements=max_elements)
    except InputError as err:
        yield FailedUnit(path, None, err, path)
        return
    yield from units


def _where(unit: FailedUnit, path: Path) -> str:
    if unit.path != path:
        return f"shard {unit.path.name}" + ("" if unit.key is None else f" [{unit.key}]")
    return f"{'member' if path.suffix.lower() == '.npz' else 'tensor'} {unit.key!r}"


def failure_error(path: str | os.PathLike[str], failures: Sequence[FailedUnit]) -> InputError:
    """One InputError for the failed units of ``path``, of the first failure's class.

    A whole-file failure is returned as it is; otherwise the message names
    the shard or member first and counts the others.
    """
    path = Path(path)
    first = failures[0]
    if first.whole_file and len(failures) == 1:
        return first.error
    message = f"{_where(first, path)}: {first.error.message}"
    if len(failures) > 1:
        others = [_where(unit, path) for unit in failures[1:]]
        message += f" (and {len(others)} more: {', '.join(others[:LISTED_KEYS])})"
    return type(first.error)(message, path=path)


def iter_records(
    path: str | os.PathLike[str], *, max_elements: int = DEFAULT_MAX_ELEMENTS
) -> Iterator[TensorRecord]:
    """Header-only listing of every tensor in one file (see :func:`iter_units`).

    Yields every record that could be listed; then, if some part of the file
    could not be (the whole file, a shard, a member), raises one InputError
    naming it. Use :func:`iter_units` to receive each failure as data.
    """
    failures = []
    for unit in iter_units(path, max_elements=max_elements):
        if isinstance(unit, FailedUnit):
            failures.append(unit)
        else:
            yield unit
    if failures:
        raise failure_error(path, failures)


def _list_keys(keys: list[str]) -> str:
    shown = ", ".join(repr(key) for key in keys[:LISTED_KEYS])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > LISTED_KEYS else "")


def find_record(
    path: str | os.PathLike[str],
    key: str | None = None,
    *,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> TensorRecord:
    """The record of tensor ``key`` (or of the only tensor, when ``key`` is None).

    In a sharded checkpoint only the shard that holds ``key`` is read; in any
    file, a failure elsewhere (another member, another shard) does not stop
    ``key`` from being found.
    """
    path = Path(path)
    if key is not None and is_index(path):
        _check_file(path)
        return find_record(shard_of(path, key), key, max_elements=max_elements)
    records: list[TensorRecord] = []
    failures: list[FailedUnit] = []
    for unit in iter_units(path, max_elements=max_elements):
        if isinstance(unit, FailedUnit):
            if unit.key is not None and unit.key == key:
                raise unit.error
            failures.append(unit)
        elif key is not None and unit.key == key:
            return unit
        else:
            records.append(unit)
    if failures and (key is None or not records):
        raise failure_error(path, failures)
    if not records:
        raise InputError("holds no tensors", path=path)
    if key is None or (key == "" and len(records) == 1):
        if len(records) == 1:
            return records[0]
        raise InputError(
            f"holds {len(records)} tensors; choose one with a key: "
            f"{_list_keys([record.key for record in records])}",
            path=path,
        )
    if records[0].key == "":
        raise InputError(
            f"a {path.suffix} file holds one unnamed tensor; drop the key", path=path, key=key
        )
    unreadable = (
        f" ({len(failures)} part(s) could not be read: "
        f"{', '.join(_where(unit, path) for unit in failures[:LISTED_KEYS])})"
        if failures
        else ""
    )
    raise InputError(
        f"no tensor named {key!r}; available: {_list_keys([r.key for r in records])}" + unreadable,
        path=path,
        key=key,
    )


def _lookup(path: Path, key: str, max_elements: int) -> TensorRecord:
    return find_record(path, key, max_elements=max_elements)


register_lookup(_lookup)


def read_tensor(path: str | os.PathLike[str], key: str | None = None) -> torch.Tensor:
    """One tensor: a .npy file's, or ``key`` of a .npz/.safetensors/.pt file.

    ``key`` may be omitted when the file holds exactly one tensor; otherwise
    InputError lists the available keys.
    """
    return find_record(path, key).load()


def read_tensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Every tensor of a small file, by key (a .npy file's under the key "")."""
    return {record.key: record.load() for record in iter_records(Path(path))}
