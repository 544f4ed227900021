"""Sharded checkpoints: a ``*.safetensors.index.json`` whose weight_map names each tensor's shard.

The index is validated as a whole when the checkpoint is listed (strict UTF-8
JSON, see :mod:`svdguard.io.strict_json`; a weight_map of str → str; every
shard name a relative path inside the index's directory): an invalid index is
one failed unit. Each shard is then its own unit: a shard that is missing or
invalid becomes one :class:`~svdguard.io.records.FailedUnit` naming the shard
file, and the other shards are still listed. Shards are visited in sorted
order, and the tensors of a shard in the shard's own (file) order, so that the
payloads are read sequentially. :func:`shard_of` answers which shard holds one
tensor, so that reading it touches that shard only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath

from svdguard.errors import InputError, ResourceLimitError
from svdguard.io.limits import MAX_INDEX_BYTES
from svdguard.io.records import FailedUnit, TensorRecord
from svdguard.io.strict_json import JsonProblem, parse_json

INDEX_SUFFIXES = (".safetensors.index.json", ".bin.index.json")
SHARD_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")

#: Lists one shard: its records and failed units.
ShardLister = Callable[[Path], Iterable["TensorRecord | FailedUnit"]]


def is_index(path: Path) -> bool:
    """True for ``model.safetensors.index.json`` (and the ``.bin`` twin of torch checkpoints)."""
    return path.name.endswith(INDEX_SUFFIXES)


def _bad(message: str, path: Path) -> InputError:
    return InputError(f"invalid checkpoint index: {message}", path=path)


def load_weight_map(index: Path) -> dict[str, str]:
    """The index's weight_map (tensor → shard name); InputError naming the index if invalid."""
    try:
        size = index.stat().st_size
        if size > MAX_INDEX_BYTES:
            raise ResourceLimitError(
                f"a checkpoint index of {size:,} bytes exceeds the limit of {MAX_INDEX_BYTES:,}",
                path=index,
            )
        raw = index.read_bytes()
    except OSError as err:
        raise InputError(f"cannot read: {err.strerror or err}", path=index) from None
    try:
        document = parse_json(raw)
    except JsonProblem as problem:
        raise _bad(f"the file is {problem}", index) from None
    if not isinstance(document, dict) or "weight_map" not in document:
        raise _bad('no "weight_map" object (expected {"weight_map": {tensor: shard}})', index)
    weight_map = document["weight_map"]
    if not isinstance(weight_map, dict) or not all(
        isinstance(shard, str) for shard in weight_map.values()
    ):
        raise _bad('"weight_map" must map tensor names to shard file names', index)
    if not weight_map:
        raise _bad('"weight_map" is empty', index)
    for shard in set(weight_map.values()):
        _shard_path(index, shard)  # every name is checked before any shard is read
    return weight_map


def _shard_path(index: Path, shard: str) -> Path:
    """The shard's path, refused when it is absolute or leaves the index's directory."""
    if not shard or "\0" in shard:
        raise _bad(f"shard name {shard!r} is not a file name", index)
    if PurePosixPath(shard).is_absolute() or PureWindowsPath(shard).is_absolute():
        raise _bad(f"shard {shard!r} is an absolute path; shards must sit beside the index", index)
    if not shard.endswith(SHARD_SUFFIXES):
        raise _bad(f"shard {shard!r} is not a {'/'.join(SHARD_SUFFIXES)} file", index)
    # A lexical check, not resolve(): the Hugging Face cache links each shard to a blob
    # outside the snapshot directory, and following such a link is fine; a name that
    # climbs out of the directory ("../x") is not.
    normalised = PurePosixPath(os.path.normpath(shard.replace("\\", "/")))
    if normalised.parts[:1] == ("..",):
        raise _bad(f"shard {shard!r} lies outside the index's directory; refused", index)
    return index.parent / normalised


def _missing_shard(index: Path, shard: str, shard_path: Path) -> InputError | None:
    try:
        present = shard_path.is_file()
    except OSError:
        present = False
    if present:
        return None
    return InputError(
        f"the shard {shard!r} named by {index.name} is missing (expected at {shard_path}); "
        "re-download the checkpoint",
        path=shard_path,
    )


def shard_of(index: Path, key: str) -> Path:
    """The shard file that holds tensor ``key``; InputError if the index does not name it."""
    weight_map = load_weight_map(index)
    if key not in weight_map:
        names = sorted(weight_map)
        raise InputError(
            f"no tensor named {key!r} in the index; available: {_list(names)}",
            path=index,
            key=key,
        )
    shard_path = _shard_path(index, weight_map[key])
    missing = _missing_shard(index, weight_map[key], shard_path)
    if missing is not None:
        raise missing
    return shard_path


def _list(names: list[str], shown: int = 5) -> str:
    return ", ".join(names[:shown]) + (" ..." if len(names) > shown else "")


def iter_sharded_units(index: Path, list_shard: ShardLister) -> Iterator[TensorRecord | FailedUnit]:
    """The records of every tensor in the weight_map, shard by shard; a bad shard is one unit."""
    weight_map = load_weight_map(index)
    by_shard: dict[str, set[str]] = {}
    for key, shard in weight_map.items():
        by_shard.setdefault(shard, set()).add(key)
    for shard in sorted(by_shard):
        shard_path = _shard_path(index, shard)
        missing = _missing_shard(index, shard, shard_path)
        if missing is not None:
            yield FailedUnit(shard_path, None, missing, index)
            continue
        wanted = by_shard[shard]
        found = set()
        failed = False
        for unit in list_shard(shard_path):
            if isinstance(unit, FailedUnit):
                failed = True
                yield FailedUnit(unit.path, unit.key, unit.error, index)
            elif unit.key in wanted:
                found.add(unit.key)
                yield unit
        absent = sorted(wanted - found)
        if absent and not failed:
            error = InputError(
                f"{index.name} maps {len(absent)} tensor(s) to this shard that it does not "
                f"hold: {_list(absent)}; the index and its shards do not match (re-download them)",
                path=shard_path,
            )
            yield FailedUnit(shard_path, None, error, index)
