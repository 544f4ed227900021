"""TensorRecord: one tensor inside a file, known from its header only."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from svdguard.io import dtypes
from svdguard.io.limits import DEFAULT_MAX_ELEMENTS, check_tensor_size, element_count

#: Reads the payload of one record; called by TensorRecord.load after the size checks.
PayloadReader = Callable[["TensorRecord"], torch.Tensor]


def error_key(key: str | None) -> str | None:
    """The key to put in an error message: None for the unnamed tensor of a .npy file."""
    return key or None


@dataclass(frozen=True)
class TensorRecord:
    """One tensor inside a file, known from the header only (nothing loaded yet).

    ``key`` is the tensor's name inside the file ("" for a bare .npy file);
    ``dtype`` the storage dtype as torch spells it, or numpy's name for a dtype
    torch lacks. ``load()`` reads this tensor only, after checking it against
    ``max_elements`` and the memory available.
    """

    path: Path
    key: str
    shape: tuple[int, ...]
    dtype: str
    max_elements: int = field(default=DEFAULT_MAX_ELEMENTS, compare=False)
    _reader: PayloadReader | None = field(default=None, repr=False, compare=False)

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
        available (checked before allocating), InputError (with path and key)
        when the payload is corrupt or truncated.
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
            from svdguard.io.readers import find_record

            return find_record(self.path, self.key, max_elements=self.max_elements).load()
        return self._reader(self)
