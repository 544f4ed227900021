"""Which files of the inputs hold weights: checkpoints as people have them on disk.

A directory is searched recursively (sentence-transformers and diffusers keep
modules in subfolders; symbolic links to directories are not followed, hidden
directories such as ``.git`` are not entered). In each directory:

* a ``*.safetensors.index.json`` is read, and the shards it names are read through it;
* the files of a training run that hold no weights (``training_args.bin``,
  ``optimizer.pt``, ``scheduler.pt``, ``scaler.pt``, ``rng_state*.pth``) are skipped
  with the reason, so that a trainer's output directory is inspected as it is;
* a ``.bin``/``.pt``/``.pth`` copy of weights the directory also holds as
  ``.safetensors`` (``pytorch_model.bin`` beside ``model.safetensors``, ``X.bin``
  beside ``X.safetensors``), or a half-precision variant (``X.fp16.safetensors``
  beside ``X.safetensors``, as diffusers saves them), is skipped as a duplicate,
  with the file it duplicates;
* everything else of a readable type is read (``.ckpt`` Lightning checkpoints too).

A file named explicitly is always read. Files that share a base name are shown
by their path relative to the inputs' common folder, so two ``model.safetensors``
never look alike in a report. No rich, no typer.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from svdguard.app.report import SkipReason
from svdguard.errors import InputError
from svdguard.io import expand_inputs
from svdguard.io.limits import MAX_INDEX_BYTES

__all__ = ["WEIGHT_SUFFIXES", "Discovered", "SkippedFile", "discover"]

#: File types read as weights (the readers of ``svdguard.io``, plus Lightning's ``.ckpt``).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".npy", ".npz")
_INDEX_SUFFIX = ".safetensors.index.json"
_GLOB_CHARS = frozenset("*?[")

#: Files of a training run that hold no weights, and what they hold.
_NOT_WEIGHTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"training_args\.bin"), "pickled training arguments (no weights)"),
    (
        re.compile(r"optimizer.*\.(pt|bin|pth)"),
        "optimizer state (Adam moments, momentum buffers), not weights; name the file to "
        "inspect it",
    ),
    (re.compile(r"(lr_)?scheduler.*\.(pt|bin|pth)"), "learning-rate scheduler state"),
    (re.compile(r"scaler.*\.(pt|bin|pth)"), "mixed-precision loss-scaler state"),
    (re.compile(r"rng_state.*\.(pt|bin|pth)"), "random-number generator state"),
)


@dataclass(frozen=True)
class SkippedFile:
    """A file found in a directory and not read, with the reason."""

    path: Path
    reason: SkipReason
    detail: str


@dataclass(frozen=True)
class Discovered:
    """The files to read, the files skipped, and a label for every path shown in a report."""

    files: list[Path]
    skipped: list[SkippedFile]
    root: Path | None  #: the common folder of every input, None when there is none
    unique_names: bool  #: True when no two files share a base name

    def label(self, path: str | os.PathLike[str]) -> str:
        """The base name, or the path relative to the inputs' common folder when names repeat."""
        path = Path(path)
        if self.unique_names or self.root is None:
            return path.name
        try:
            return Path(os.path.relpath(path.absolute(), self.root)).as_posix()
        except ValueError:  # another drive (Windows)
            return path.as_posix()


def _broken_link(path: Path) -> bool:
    """A symbolic link that leads nowhere (dangling, or a loop)."""
    try:
        return path.is_symlink() and not path.exists()
    except (OSError, ValueError):
        return False


def _identity(path: Path) -> str:
    """The file a path reaches, for dropping duplicates (a looping link is its own identity)."""
    try:
        return str(path.resolve())
    except (OSError, RuntimeError):  # RuntimeError: "Symlink loop" (Python < 3.13)
        return os.path.abspath(path)


def _not_weights(name: str) -> str | None:
    for pattern, what in _NOT_WEIGHTS:
        if pattern.fullmatch(name):
            return what
    return None


def _index_shards(index: Path) -> set[str]:
    """The shard file names an index names; empty when it cannot be read (its row says why)."""
    try:
        if index.stat().st_size > MAX_INDEX_BYTES:
            return set()
        data = json.loads(index.read_text(encoding="utf-8"))
        weight_map = data.get("weight_map", {}) if isinstance(data, dict) else {}
        return {Path(v).name for v in weight_map.values() if isinstance(v, str)}
    except (OSError, ValueError, UnicodeDecodeError):
        return set()


#: Precision variants diffusers saves beside the full-precision file (``X.fp16.safetensors``).
_PRECISION_VARIANTS = (".fp16", ".bf16")


def _duplicate_of(path: Path, safetensors: set[str]) -> str | None:
    """The file of the same directory that holds the same weights as ``path``, if any.

    ``X.bin``/``X.pt`` beside ``X.safetensors``; ``pytorch_model*.bin`` beside
    ``model*.safetensors``; ``X.fp16.safetensors`` beside ``X.safetensors``.
    """
    stem = path.name.removesuffix(path.suffix)
    for variant in _PRECISION_VARIANTS:
        if stem.endswith(variant):
            full = stem.removesuffix(variant) + ".safetensors"
            if full in safetensors and full != path.name:
                return full
    if path.suffix not in (".bin", ".pt", ".pth") or not safetensors:
        return None
    twin = path.with_suffix(".safetensors").name
    if twin in safetensors:
        return twin
    if path.name.startswith("pytorch_model"):  # Hugging Face saves model*.safetensors beside it
        models = sorted(name for name in safetensors if name.startswith("model"))
        return models[0] if models else None
    return None


def _from_directory(directory: Path, files: list[Path], skipped: list[SkippedFile]) -> int:
    """Add the weight files under ``directory``; returns how many candidate files it held."""
    candidates = 0
    for folder, subfolders, names in os.walk(directory, followlinks=False):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        here = Path(folder)
        entries = sorted(n for n in names if n.endswith(WEIGHT_SUFFIXES + (_INDEX_SUFFIX,)))
        # A dangling or looping link is kept: its reader reports it as an unreadable file.
        entries = [n for n in entries if (here / n).is_file() or _broken_link(here / n)]
        candidates += len(entries)
        indexes = [n for n in entries if n.endswith(_INDEX_SUFFIX)]
        sharded = set().union(*(_index_shards(here / n) for n in indexes)) if indexes else set()
        safetensors = {n for n in entries if n.endswith(".safetensors")}
        for name in entries:
            path = here / name
            if name.endswith(".bin.index.json") or name in sharded:
                continue  # read through their index
            what = _not_weights(name)
            if what is not None:
                skipped.append(SkippedFile(path, SkipReason.NOT_WEIGHTS, what))
                continue
            twin = _duplicate_of(path, safetensors | ({indexes[0]} if indexes else set()))
            if twin is not None:
                skipped.append(
                    SkippedFile(
                        path,
                        SkipReason.DUPLICATE,
                        f"the same weights as {twin} in the same folder (read that one); "
                        "name this file to read it as well",
                    )
                )
                continue
            files.append(path)
    return candidates


def _expand(raw: str | os.PathLike[str], files: list[Path], skipped: list[SkippedFile]) -> None:
    path = Path(raw)
    try:
        is_dir, exists = path.is_dir(), path.exists()
    except (OSError, ValueError):
        is_dir = exists = False
    if is_dir:
        if not _from_directory(path, files, skipped):
            raise InputError(
                "the directory (searched recursively) holds no .safetensors, "
                ".safetensors.index.json, .bin, .pt, .pth, .ckpt, .npy or .npz file",
                path=path,
            )
        return
    if exists:
        files.append(path)  # named explicitly: always read
        return
    text = os.fspath(raw)
    if _GLOB_CHARS.intersection(text):
        matches = sorted(glob.glob(text))
        for match in matches:
            matched = Path(match)
            if matched.is_dir():
                _expand(matched, files, skipped)
                continue
            if _broken_link(matched):
                files.append(matched)  # its reader reports it
                continue
            what = _not_weights(matched.name)
            if what is not None:
                skipped.append(SkippedFile(matched, SkipReason.NOT_WEIGHTS, what))
            elif matched.name.endswith(WEIGHT_SUFFIXES + (_INDEX_SUFFIX,)):
                files.append(matched)
        if matches:
            return
    files.extend(expand_inputs([raw]))  # raises the reader's own error: missing, no match


def discover(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> Discovered:
    """The weight files named by ``paths`` (files, directories searched recursively, globs).

    Raises InputError for a missing path, a glob that matches nothing, or a
    directory without any file of a readable type.
    """
    raw = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    found: list[Path] = []
    skipped: list[SkippedFile] = []
    for item in raw:
        _expand(item, found, skipped)
    files: list[Path] = []
    seen: set[str] = set()
    for file in found:
        identity = _identity(file)
        if identity not in seen:
            seen.add(identity)
            files.append(file)
    everything = [*files, *(s.path for s in skipped)]
    names = [p.name for p in everything]
    root: Path | None
    try:
        root = Path(os.path.commonpath([p.absolute().parent for p in everything]))
    except ValueError:
        root = None
    return Discovered(
        files=files, skipped=skipped, root=root, unique_names=len(set(names)) == len(names)
    )
