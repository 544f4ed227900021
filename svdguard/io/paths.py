"""Turn command-line paths (files, directories, unexpanded globs) into tensor files.

A dangling or looping symbolic link, named directly (a shell expands a glob
before svdguard sees it), found by a glob or in a directory, is returned all
the same: reading it then fails with one InputError naming it (``iter_units``
yields it as a whole-file :class:`~svdguard.io.records.FailedUnit`,
``iter_records`` raises it), so the other paths proceed. A path named directly
that does not exist at all raises here.
"""

from __future__ import annotations

import errno
import glob
import os
from collections.abc import Sequence
from pathlib import Path

from svdguard.errors import InputError

#: In a directory: the first of these groups that matches anything is used (a Hugging Face
#: checkpoint directory holds both an index and its shards, or both .safetensors and .bin
#: copies of the same weights; reading one copy is enough).
_CHECKPOINT_GROUPS: tuple[tuple[str, ...], ...] = (
    ("*.safetensors.index.json",),
    ("*.safetensors",),
    ("*.bin", "*.pt", "*.pth"),
)
#: In a directory: always read as well (plain arrays are never copies of a checkpoint).
_ARRAY_PATTERNS = ("*.npy", "*.npz")

_GLOB_CHARS = frozenset("*?[")


def _is_link(path: Path) -> bool:
    try:
        return path.is_symlink()
    except (OSError, ValueError):
        return False


def _matching(directory: Path, patterns: Sequence[str]) -> list[Path]:
    found = {
        entry
        for pattern in patterns
        for entry in directory.glob(pattern)
        if entry.is_file() or (_is_link(entry) and not entry.exists())  # a broken link: reported
    }
    return sorted(found)


def _expand_directory(directory: Path) -> list[Path]:
    files: list[Path] = []
    for group in _CHECKPOINT_GROUPS:
        files = _matching(directory, group)
        if files:
            break
    files += _matching(directory, _ARRAY_PATTERNS)
    if not files:
        raise InputError(
            "the directory holds no .safetensors, .safetensors.index.json, .bin, .pt, .pth, "
            ".npy or .npz file",
            path=directory,
        )
    return files


def _expand_one(raw: str | os.PathLike[str]) -> list[Path]:
    path = Path(raw)
    try:
        if path.is_dir():
            return _expand_directory(path)
        if path.exists() or _is_link(path):
            return [path]  # a dangling or looping link: its reader reports it, the rest proceed
    except InputError:
        raise  # an InputError is a ValueError too; it already says what is wrong
    except OSError as err:
        raise InputError(f"cannot access: {err.strerror or err}", path=path) from None
    except ValueError:  # e.g. "embedded null byte"
        raise InputError("is not a valid file name", path=repr(os.fspath(raw))) from None
    text = os.fspath(raw)
    if _GLOB_CHARS.intersection(text):
        # The shell did not expand it (quoted, or no match there): expand it here, sorted.
        matches = sorted(glob.glob(text))
        if not matches:
            raise InputError("no file matches this pattern", path=text)
        return [file for match in matches for file in _expand_match(Path(match))]
    raise InputError("no such file or directory", path=path)


def _expand_match(match: Path) -> list[Path]:
    """A glob's match: a broken link is kept (its reader reports it), the rest expanded."""
    if _is_link(match) and not match.exists():
        return [match]
    return _expand_one(match)


def _identity(file: Path) -> str:
    """The file a path reaches, for dropping duplicates (a looping link is its own identity)."""
    try:
        return str(file.resolve())
    except (OSError, RuntimeError):  # RuntimeError: "Symlink loop" (Python < 3.13)
        return os.path.abspath(file)


def describe_missing(path: Path) -> str:
    """Why ``path`` cannot be opened: a dangling link, a link loop, or plain absence."""
    if not _is_link(path):
        return "no such file; check the path"
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return f"is a symbolic link that loops (-> {target}); fix or remove the link"
    return f"is a symbolic link to {target}, which does not exist (a dangling link)"


def expand_inputs(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The tensor files named by ``paths``: files, directories, or glob patterns.

    A directory contributes its ``*.safetensors.index.json`` if it has one,
    else its ``*.safetensors``, else its ``*.bin``/``*.pt``/``*.pth`` files,
    plus any ``*.npy``/``*.npz`` (not recursive). A glob pattern a shell left
    unexpanded is expanded here, sorted. Duplicates (the same file reached
    twice) are dropped, keeping the first. A missing path, a pattern matching
    nothing or a directory with nothing readable raises InputError naming it;
    a broken symbolic link is returned, and fails when read (see the module
    docstring).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    result: list[Path] = []
    seen: set[str] = set()
    for raw in paths:
        for file in _expand_one(raw):
            identity = _identity(file)
            if identity not in seen:
                seen.add(identity)
                result.append(file)
    return result
