"""PyTorch checkpoints (.pt/.bin/.pth): torch.load with weights_only=True, memory-mapped.

``weights_only=True`` restricts unpickling to tensors, primitive containers and
a few torch types: a payload that asks for anything else (the way a hostile
pickle runs code) is refused by torch, and that refusal becomes an
UnsafeInputError here. ``mmap=True`` maps the zip-format checkpoint instead
of reading it, so listing a checkpoint costs its (small) pickle only; the
legacy (pre-1.6, non-zip) format cannot be mapped and is read whole, after a
check that it fits in memory.

Bounded cost, whatever the file declares:

* every member of the zip archive must be stored, not compressed: torch.save
  never compresses, torch inflates a compressed ``data.pkl`` whole, and a
  memory-mapped compressed tensor would read its compressed bytes as data;
  the pickle itself is refused above ``MAX_PICKLE_BYTES`` (it is read whole).
* the state dict is walked once per object: a dict reached a second time
  (shared by two parents, or a cycle) is not walked again, so a 2 KB pickle of
  ``d = {"a": d, "b": d}`` forty levels deep costs forty steps, not 2⁴⁰.
* keys that hold the very same tensor (same storage, offset, shape, strides
  and dtype: tied weights) are listed with ``alias_of`` naming the first key.
* a tensor's size is its materialised shape (``torch.ones(1).expand(n, n)``
  is n² elements), checked by ``record.load()`` before it is copied.
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from pickle import UnpicklingError  # the exception type torch raises; nothing is unpickled here

import torch

from svdguard.errors import InputError, ResourceLimitError, UnsafeInputError
from svdguard.io.limits import MAX_PICKLE_BYTES, format_bytes, memory_available
from svdguard.io.records import FailedUnit, TensorRecord

#: Nesting depth beyond which a state dict is refused (real checkpoints nest a few levels).
MAX_NESTING = 64


def _check_members(path: Path) -> None:
    """Refuse compressed members and an oversized pickle before torch reads the archive."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, UnicodeDecodeError) as err:
        raise InputError(
            f"not a readable torch checkpoint (a damaged zip archive: {_short(err)})", path=path
        ) from None
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:
            raise InputError(
                f"the archive member {info.filename!r} is compressed; torch.save writes "
                "uncompressed members, and a compressed one would be inflated whole or "
                "misread when memory-mapped. Re-save the checkpoint with torch.save",
                path=path,
            )
        if info.filename.endswith("data.pkl") and info.file_size > MAX_PICKLE_BYTES:
            raise ResourceLimitError(
                f"the checkpoint's pickle {info.filename!r} is {format_bytes(info.file_size)}, "
                f"beyond the limit of {format_bytes(MAX_PICKLE_BYTES)} (a corrupt or hostile "
                "file)",
                path=path,
            )


def _load_checkpoint(path: Path) -> object:
    try:
        is_zip = zipfile.is_zipfile(path)
        if is_zip:
            _check_members(path)
        else:
            size = path.stat().st_size
            available = memory_available()
            if available is not None and size > available:
                raise ResourceLimitError(
                    f"a legacy-format checkpoint of {format_bytes(size)} is read whole, but only "
                    f"{format_bytes(available)} of memory is available; re-save it with torch.save "
                    "(zip format) or as .safetensors",
                    path=path,
                )
        with warnings.catch_warnings():
            # torch warns about odd pickle protocols and deprecated storages on damaged or
            # old files; the outcome (a state dict or an error below) is what matters.
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except InputError:
        raise
    except UnpicklingError as err:
        if "weights only" in str(err).lower():
            raise UnsafeInputError(
                "the checkpoint's pickle asks for objects other than tensors and containers "
                "(executing it could run arbitrary code), so it is refused; if you trust the "
                "file, convert it to .safetensors in a separate, sandboxed step",
                path=path,
            ) from None
        raise InputError(f"not a readable torch checkpoint: {_short(err)}", path=path) from None
    except Exception as err:  # noqa: BLE001 - torch.load raises many types on a damaged file
        raise InputError(
            f"not a readable torch checkpoint ({type(err).__name__}: {_short(err)}); "
            "the file is damaged or not a torch.save file",
            path=path,
        ) from None


def _short(err: BaseException, limit: int = 200) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _flatten(
    tree: Mapping[object, object],
    prefix: str,
    depth: int,
    path: Path,
    seen: set[int],
    found: list[tuple[str, torch.Tensor]],
) -> None:
    """Append (dotted key, tensor) for every tensor under ``tree``; each mapping walked once."""
    if depth > MAX_NESTING:
        raise InputError(f"state dict nested deeper than {MAX_NESTING} levels", path=path)
    seen.add(id(tree))
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if isinstance(value, torch.Tensor):
            found.append((key, value))
        elif isinstance(value, Mapping) and id(value) not in seen:
            _flatten(value, key + ".", depth + 1, path, seen, found)
        # a mapping seen before (shared or cyclic) was listed under its first key; anything
        # else (step counters, config strings, lists of optimizer states) is skipped


def _identity(tensor: torch.Tensor) -> tuple[object, ...] | None:
    """What makes two tensors the same data: storage, offset, shape, strides, dtype."""
    try:
        storage = tensor.untyped_storage()
        if storage.nbytes() == 0:
            return None  # every empty storage may share one address
        return (
            storage.data_ptr(),
            tensor.storage_offset(),
            tuple(tensor.shape),
            tensor.stride(),
            tensor.dtype,
        )
    except (RuntimeError, NotImplementedError):  # sparse, quantized: no plain storage
        return None


def iter_torch_records(path: Path, *, max_elements: int) -> list[TensorRecord | FailedUnit]:
    """One record per tensor of a state dict (nested dicts flattened with dotted keys).

    A dotted key reached twice (``{"a.b": x, "a": {"b": y}}``) lists the first
    tensor and makes the second one failed unit.
    """
    checkpoint = _load_checkpoint(path)
    tensors: list[tuple[str, torch.Tensor]] = []
    if isinstance(checkpoint, torch.Tensor):
        tensors = [("", checkpoint)]
    elif isinstance(checkpoint, Mapping):
        _flatten(checkpoint, "", 0, path, set(), tensors)
    else:
        raise InputError(
            f"holds a {type(checkpoint).__name__}, not a state dict (a dict of tensors); "
            "save model.state_dict() instead",
            path=path,
        )
    first_key: dict[tuple[object, ...], str] = {}
    records: list[TensorRecord | FailedUnit] = []
    listed: set[str] = set()
    for key, tensor in tensors:
        if key in listed:
            # {"a.b": x, "a": {"b": y}} flattens to "a.b" twice: which tensor the name
            # means is not something to guess, so the second is a failed unit.
            error = InputError(
                "two tensors flatten to this dotted key (a key holding a dot, and a nested "
                "dict); rename one",
                path=path,
                key=key,
            )
            records.append(FailedUnit(path, key, error, path))
            continue
        listed.add(key)
        identity = _identity(tensor)
        alias_of = None if identity is None else first_key.setdefault(identity, key)
        records.append(
            TensorRecord(
                path,
                key,
                tuple(tensor.shape),
                str(tensor.dtype).removeprefix("torch."),
                max_elements,
                partial(_materialise, tensor),
                alias_of=None if alias_of == key else alias_of,
            )
        )
    return records


def _materialise(tensor: torch.Tensor, record: TensorRecord) -> torch.Tensor:
    if tensor.layout != torch.strided or tensor.is_quantized:
        raise InputError(
            f"{tensor.layout} / {tensor.dtype} tensors are not supported; save a dense tensor",
            path=record.path,
            key=record.key or None,
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "ComplexHalf support is experimental" (complex32)
            return tensor.detach().clone(memory_format=torch.contiguous_format)
    except RuntimeError as err:
        raise InputError(
            f"cannot read the tensor: {_short(err)}", path=record.path, key=record.key or None
        ) from None
