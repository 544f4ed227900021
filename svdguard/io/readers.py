"""One entry point per question: which tensors does a file hold, and give me one (or all)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch

from svdguard.errors import InputError
from svdguard.io.limits import DEFAULT_MAX_ELEMENTS
from svdguard.io.npy import iter_npy_records
from svdguard.io.npz import iter_npz_records
from svdguard.io.records import TensorRecord
from svdguard.io.safetensors_format import iter_safetensors_records
from svdguard.io.sharded import INDEX_SUFFIXES, is_index, iter_sharded_records
from svdguard.io.torch_format import iter_torch_records

_READERS = {
    ".npy": iter_npy_records,
    ".npz": iter_npz_records,
    ".safetensors": iter_safetensors_records,
    ".pt": iter_torch_records,
    ".pth": iter_torch_records,
    ".bin": iter_torch_records,
}

#: Every suffix iter_records reads, for messages and for expand_inputs.
SUPPORTED_SUFFIXES = (*_READERS, *INDEX_SUFFIXES)

#: How many keys an error message lists before it says "...".
LISTED_KEYS = 20


def _check_file(path: Path) -> None:
    try:
        if not path.exists():
            raise InputError("no such file; check the path", path=path)
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


def iter_records(path: Path, *, max_elements: int = DEFAULT_MAX_ELEMENTS) -> Iterator[TensorRecord]:
    """Header-only listing of every tensor in one file.

    Reads .npy, .npz (every member), .safetensors, ``*.safetensors.index.json``
    (sharded; shards in sorted order), and .pt/.bin/.pth state dicts (nested
    dicts flattened with dotted keys, non-tensor values skipped). A malformed
    header raises InputError naming the file when iteration starts; a bad
    payload raises only from that record's load().
    """
    path = Path(path)
    _check_file(path)
    if is_index(path):
        yield from iter_sharded_records(
            path, lambda shard: iter_records(shard, max_elements=max_elements)
        )
        return
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise InputError(
            f"unknown file type {path.suffix or '(no suffix)'!r}; svdguard reads "
            f"{', '.join(SUPPORTED_SUFFIXES)}",
            path=path,
        )
    yield from reader(path, max_elements=max_elements)


def _list_keys(keys: list[str]) -> str:
    shown = ", ".join(repr(key) for key in keys[:LISTED_KEYS])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > LISTED_KEYS else "")


def find_record(
    path: str | os.PathLike[str],
    key: str | None = None,
    *,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> TensorRecord:
    """The record of tensor ``key`` (or of the only tensor, when ``key`` is None)."""
    path = Path(path)
    records = list(iter_records(path, max_elements=max_elements))
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
    for record in records:
        if record.key == key:
            return record
    if records[0].key == "":
        raise InputError(
            f"a {path.suffix} file holds one unnamed tensor; drop the key", path=path, key=key
        )
    raise InputError(
        f"no tensor named {key!r}; available: {_list_keys([r.key for r in records])}",
        path=path,
        key=key,
    )


def read_tensor(path: str | os.PathLike[str], key: str | None = None) -> torch.Tensor:
    """One tensor: a .npy file's, or ``key`` of a .npz/.safetensors/.pt file.

    ``key`` may be omitted when the file holds exactly one tensor; otherwise
    InputError lists the available keys.
    """
    return find_record(path, key).load()


def read_tensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Every tensor of a small file, by key (a .npy file's under the key "")."""
    return {record.key: record.load() for record in iter_records(Path(path))}
