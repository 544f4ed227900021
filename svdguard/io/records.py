"""What a listing yields: TensorRecord (a tensor known from its header) or FailedUnit.

A file is listed as a sequence of *units*: each is either one tensor
(:class:`TensorRecord`, loaded later by ``record.load()``) or a part of the
file that could not be listed at all (:class:`FailedUnit`: the whole file when
its format makes it invalid, one shard of a sharded checkpoint, one member of
an ``.npz`` archive). A failed unit never hides the units beside it.

This module imports no reader: a record built by hand finds its file's reader
through :func:`register_lookup`, which ``svdguard.io.readers`` calls when it
is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from svdguard.errors import InputError
from svdguard.io import dtypes
from svdguard.io.limits import DEFAULT_MAX_ELEMENTS, check_tensor_size, element_count

if TYPE_CHECKING:
    import torch

#: Reads the payload of one record; called by TensorRecord.load after the size checks.
PayloadReader = Callable[["TensorRecord"], "torch.Tensor"]
#: Finds the record of (path, key) through the file's own reader (set by svdguard.io.readers).
RecordLookup = Callable[[Path, str, int], "TensorRecord"]

_lookup: list[RecordLookup] = []


def register_lookup(lookup: RecordLookup) -> None:
    """Install the function hand-made records use to find their file's reader."""
    _lookup[:] = [lookup]


def error_key(key: str | None) -> str | None:
    """The key to put in an error message: None for the unnamed tensor of a .npy file."""
    return key or None


@dataclass(frozen=True)
class TensorRecord:
    """One tensor inside a file, known from the header only (nothing loaded yet).

    ``key`` is the tensor's name inside the file ("" for a bare .npy file);
    ``dtype`` the storage dtype as torch spells it, or numpy's name for a dtype
    torch lacks. ``shape`` is the shape the tensor materialises to (a stride-0
    expanded tensor counts all its elements). ``alias_of`` names the first key
    of the same file that holds the very same tensor (same storage, offset,
    shape and strides: tied weights, or a dict reached twice); an alias needs
    no second analysis. ``load()`` reads this tensor only, after checking it
    against ``max_elements`` and the memory available.
    """

    path: Path
    key: str
    shape: tuple[int, ...]
    dtype: str
    max_elements: int = field(default=DEFAULT_MAX_ELEMENTS, compare=False)
    _reader: PayloadReader | None = field(default=None, repr=False, compare=False)
    alias_of: str | None = field(default=None, kw_only=True)

    @property
    def display_name(self) -> str:
        """``"file.npz[key]"``, or ``"file.npy"`` for an unnamed tensor."""
        name = Path(self.path).name
        return f"{name}[{self.key}]" if self.key else name

    @property
    def numel(self) -> int:
        """Number of elements, from the header (∏ shape)."""
        return element_count(self.shape)

    @property
    def nbytes(self) -> int | None:
        """Payload size in bytes, None when the dtype is unknown."""
        size = dtypes.itemsize(self.dtype)
        return None if size is None else self.numel * size

    def load(self) -> torch.Tensor:
        """Read this tensor only: CPU, storage dtype (bf16 stays bf16).

        Raises ResourceLimitError when it exceeds ``max_elements`` or the memory
        its analysis needs (checked before allocating, see
        :func:`svdguard.io.limits.check_tensor_size`), InputError (with path and
        key) when the payload is corrupt or truncated.
        """
        check_tensor_size(
            self.shape,
            dtypes.itemsize(self.dtype),
            self.dtype,
            max_elements=self.max_elements,
            path=self.path,
            key=error_key(self.key),
        )
        if self._reader is None:
            # A record built by hand: find the same tensor through the file's own reader.
            if not _lookup:
                raise InputError(
                    "this record has no reader; list the file with iter_records()",
                    path=self.path,
                    key=error_key(self.key),
                )
            return _lookup[0](Path(self.path), self.key, self.max_elements).load()
        return self._reader(self)


@dataclass(frozen=True)
class FailedUnit:
    """A part of a listed file that could not be listed: nothing in it can be loaded.

    ``path`` is the file that holds the problem (the shard, for a sharded
    checkpoint), ``key`` the member or tensor name inside it (None when the
    whole of ``path`` failed), ``source`` the file that was asked for (the
    index, for a shard; else ``path``), ``error`` what is wrong.
    """

    path: Path
    key: str | None
    error: InputError
    source: Path

    @property
    def display_name(self) -> str:
        """``"shard.safetensors"``, or ``"archive.npz[member]"`` for one member."""
        name = Path(self.path).name
        return name if self.key is None else f"{name}[{self.key}]"

    @property
    def whole_file(self) -> bool:
        """True when the file that was asked for failed as a whole."""
        return self.key is None and Path(self.path) == Path(self.source)
