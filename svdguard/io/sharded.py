"""Sharded checkpoints: a ``*.safetensors.index.json`` whose weight_map names each tensor's shard.

The index is validated as a whole when the checkpoint is listed (valid JSON, a
weight_map of str → str, every shard a file inside the index's directory);
each shard's own header is read only when iteration reaches that shard, so a
damaged shard does not hide the ones before it. Shards are visited in sorted
order, and the tensors of a shard in the shard's own (file) order, so that the
payloads are read sequentially.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath

from svdguard.errors import InputError, ResourceLimitError
from svdguard.io.limits import MAX_INDEX_BYTES
from svdguard.io.records import TensorRecord

INDEX_SUFFIXES = (".safetensors.index.json", ".bin.index.json")
SHARD_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def is_index(path: Path) -> bool:
    """True for ``model.safetensors.index.json`` (and the ``.bin`` twin of torch checkpoints)."""
    return path.name.endswith(INDEX_SUFFIXES)


def _bad(message: str, path: Path) -> InputError:
    return InputError(f"invalid checkpoint index: {message}", path=path)


def _load_weight_map(index: Path) -> dict[str, str]:
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
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise _bad("not valid UTF-8 JSON", index) from None
    if not isinstance(document, dict) or "weight_map" not in document:
        raise _bad('no "weight_map" object (expected {"weight_map": {tensor: shard}})', index)
    weight_map = document["weight_map"]
    if not isinstance(weight_map, dict) or not all(
        isinstance(shard, str) for shard in weight_map.values()
    ):
        raise _bad('"weight_map" must map tensor names to shard file names', index)
    if not weight_map:
        raise _bad('"weight_map" is empty', index)
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
    candidate = index.parent / normalised
    try:
        present = candidate.is_file()
    except OSError:
        present = False
    if not present:
        raise _bad(f"shard {shard!r} is missing (expected {index.parent / shard})", index)
    return candidate


def _list(names: list[str], shown: int = 5) -> str:
    return ", ".join(names[:shown]) + (" ..." if len(names) > shown else "")


def iter_sharded_records(
    index: Path, read_shard: Callable[[Path], Iterable[TensorRecord]]
) -> Iterator[TensorRecord]:
    """The records of every tensor in the weight_map, shard by shard."""
    weight_map = _load_weight_map(index)
    by_shard: dict[str, set[str]] = {}
    for key, shard in weight_map.items():
        by_shard.setdefault(shard, set()).add(key)
    shard_paths = {shard: _shard_path(index, shard) for shard in sorted(by_shard)}
    for shard, shard_path in shard_paths.items():
        wanted = by_shard[shard]
        found = set()
        for record in read_shard(shard_path):
            if record.key in wanted:
                found.add(record.key)
                yield record
        missing = sorted(wanted - found)
        if missing:
            raise InputError(
                f"maps {len(missing)} tensor(s) to the shard {shard} that it does not hold: "
                f"{_list(missing)}; the index and its shards do not match (re-download them)",
                path=index,
            )
