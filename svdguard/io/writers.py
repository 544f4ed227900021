"""Atomic writers: a file appears complete under its name, or not at all.

The payload goes to a temporary file in the target's directory (same file
system, so the final rename is atomic), which is flushed to disk and then
renamed into place; on any exception, Ctrl-C included, the temporary file is
removed and the target is untouched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from svdguard.errors import InputError, OutputExistsError

__all__ = [
    "WRITABLE_SUFFIXES",
    "atomic_output",
    "check_output",
    "discard_temporaries",
    "forget_temporary",
    "track_temporary",
    "write_tensor",
]

WRITABLE_SUFFIXES = (".npy", ".npz", ".safetensors")


def _identity(path: Path) -> tuple[str, tuple[int, int] | None]:
    """The resolved path and, when it exists, (device, inode): equal for the same file."""
    resolved = os.path.realpath(path)
    try:
        stat = os.stat(resolved)
    except (OSError, ValueError):
        return resolved, None
    return resolved, (stat.st_dev, stat.st_ino)


def _is_input(target: Path, inputs: Iterable[str | os.PathLike[str]]) -> str | None:
    """The input ``target`` names (through a link, a relative path, a hard link), or None."""
    target_path, target_inode = _identity(target)
    for raw in inputs:
        input_path, input_inode = _identity(Path(raw))
        if target_path == input_path or (target_inode is not None and target_inode == input_inode):
            return os.fspath(raw)
    return None


def check_output(
    path: str | os.PathLike[str],
    *,
    force: bool = False,
    inputs: Iterable[str | os.PathLike[str]] = (),
) -> Path:
    """Refuse an output path that is not safe to write; return it as a Path.

    Refused whatever ``force`` says (InputError): a path that is one of
    ``inputs`` (compared after resolving links; hard links too), an existing
    path that is not a regular file (a device such as ``/dev/null``, a FIFO, a
    socket, a directory, or a link to one), a name with a NUL byte, a missing
    directory. Refused unless ``force`` (:class:`~svdguard.errors.OutputExistsError`):
    an existing regular file.
    """
    target = Path(path)
    if "\0" in os.fspath(path):
        raise InputError("cannot write here: the name holds a NUL byte", path=repr(os.fspath(path)))
    try:
        same = _is_input(target, inputs)
        if same is not None:
            raise InputError(
                f"refusing to overwrite the input file {same}; choose another output path",
                path=target,
            )
        if target.is_dir():
            raise InputError("is a directory; give a file name for the output", path=target)
        if target.exists() and not stat.S_ISREG(target.stat().st_mode):
            raise InputError(
                "is not a regular file (a device, a FIFO or a socket); refusing to write to it",
                path=target,
            )
        if not target.parent.is_dir():
            raise InputError(
                f"the directory {target.parent} does not exist; create it first", path=target
            )
        if (target.exists() or target.is_symlink()) and not force:
            raise OutputExistsError("the file exists", path=target)
    except InputError:
        raise
    except (OSError, ValueError) as err:  # e.g. permission denied, "embedded null byte"
        raise InputError(f"cannot write here: {err}", path=repr(os.fspath(path))) from None
    return target


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def default_file_mode() -> int:
    """0o666 less the umask: the mode open() would give a new file (mkstemp gives 0o600)."""
    return 0o666 & ~current_umask()


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    forget_temporary(path)


#: Temporary files and directories of atomic writes still in progress (any thread).
_PENDING: set[Path] = set()
_PENDING_LOCK = threading.Lock()


def track_temporary(path: Path) -> None:
    """Note a temporary file or directory an atomic write is filling (see discard_temporaries)."""
    with _PENDING_LOCK:
        _PENDING.add(path)


def forget_temporary(path: Path) -> None:
    """The temporary ``path`` was renamed into place or removed: nothing to discard."""
    with _PENDING_LOCK:
        _PENDING.discard(path)


def discard_temporaries() -> None:
    """Remove every temporary file or directory of an atomic write still in progress.

    For a process that is being interrupted while another thread writes: the
    target files are untouched (a temporary is only renamed into place when its
    write completes).
    """
    with _PENDING_LOCK:
        pending = list(_PENDING)
        _PENDING.clear()
    for path in pending:
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


@contextlib.contextmanager
def atomic_output(
    path: str | os.PathLike[str],
    *,
    force: bool = False,
    inputs: Iterable[str | os.PathLike[str]] = (),
) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` when the block succeeds.

    ``path`` is checked by :func:`check_output` first (never an input, never
    anything but a regular file or a new name; an existing file only with
    ``force``). On any exception or KeyboardInterrupt the temporary file is
    removed; an OSError while writing (disk full, quota) becomes an InputError
    naming ``path``.

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "report.json"
    >>> with atomic_output(out) as tmp:
    ...     _ = tmp.write_text("{}")
    >>> out.read_text()
    '{}'
    """
    inputs = list(inputs)
    target = check_output(path, force=force, inputs=inputs)
    try:
        handle, name = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=f".tmp{target.suffix}"
        )
    except OSError as err:
        raise InputError(
            f"cannot create a file in {target.parent}: {err.strerror}", path=target
        ) from None
    temporary = Path(name)
    track_temporary(temporary)
    try:
        os.close(handle)
        yield temporary
    except OSError as err:  # disk full, quota exceeded, I/O error while writing
        _remove(temporary)
        raise InputError(f"cannot write: {err.strerror or err}", path=target) from None
    except BaseException:
        _remove(temporary)
        raise
    try:
        check_output(target, force=force, inputs=inputs)  # nothing changed while writing
        _publish(temporary, target, force=force)
        forget_temporary(temporary)
    except BaseException as err:
        _remove(temporary)
        if isinstance(err, OSError):
            raise InputError(f"cannot write: {err.strerror or err}", path=target) from None
        raise


def _publish(temporary: Path, target: Path, *, force: bool) -> None:
    """Give the finished temporary file its final mode and name (after syncing it to disk)."""
    # A writer may have replaced the file, and mkstemp's 0o600 is not what open() gives.
    os.chmod(temporary, default_file_mode())
    with open(temporary, "rb") as written:
        os.fsync(written.fileno())  # the data is on disk before the name points at it
    if force:
        os.replace(temporary, target)
    else:
        _publish_exclusive(temporary, target)


def _publish_exclusive(temporary: Path, target: Path) -> None:
    """Rename without clobbering a file that appeared since the check (link fails if it exists)."""
    try:
        os.link(temporary, target)
    except FileExistsError:
        raise OutputExistsError("the file exists", path=target) from None
    except OSError:
        # A file system without hard links: fall back to a plain rename after a last check.
        if target.exists():
            raise OutputExistsError("the file exists", path=target) from None
        os.replace(temporary, target)
        return
    _remove(temporary)


def _as_numpy(tensor: torch.Tensor, target: Path) -> np.ndarray:
    if tensor.dtype == torch.bfloat16 or tensor.dtype not in _NUMPY_DTYPES:
        raise InputError(
            f"numpy cannot hold {str(tensor.dtype).removeprefix('torch.')} data; write a "
            ".safetensors file instead (or convert the tensor to float32)",
            path=target,
        )
    return tensor.numpy()


_NUMPY_DTYPES = frozenset(
    {
        torch.bool,
        torch.uint8,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.uint16,
        torch.uint32,
        torch.uint64,
        torch.float16,
        torch.float32,
        torch.float64,
        torch.complex64,
        torch.complex128,
    }
)


def write_tensor(
    path: str | os.PathLike[str],
    tensor: torch.Tensor,
    *,
    key: str = "grad",
    force: bool = False,
    inputs: Iterable[str | os.PathLike[str]] = (),
) -> Path:
    """Write one tensor atomically; the format follows the suffix. Returns the path written.

    ``.npy`` (the bare array), ``.npz`` (member ``key``), ``.safetensors``
    (tensor ``key``); any other suffix raises InputError. numpy has no
    bfloat16 (nor 8-bit floats), so those need ``.safetensors``. ``path`` is
    refused as :func:`atomic_output` refuses it (``inputs``, ``force``).
    """
    inputs = list(inputs)
    if os.fspath(path) == "-":
        raise InputError(
            "a tensor file cannot go to stdout ('-'); give a file name ending in "
            f"{', '.join(WRITABLE_SUFFIXES)}"
        )
    target = check_output(path, force=force, inputs=inputs)  # what is refused, first
    suffix = target.suffix.lower()
    if suffix not in WRITABLE_SUFFIXES:
        raise InputError(
            f"cannot write {target.suffix or 'a file without a suffix'!r}; use one of "
            f"{', '.join(WRITABLE_SUFFIXES)}",
            path=target,
        )
    if not isinstance(tensor, torch.Tensor):
        raise InputError(f"expected a torch.Tensor, got {type(tensor).__name__}", path=target)
    data = tensor.detach().to("cpu").resolve_conj().resolve_neg().contiguous()
    array = None if suffix == ".safetensors" else _as_numpy(data, target)
    try:
        with atomic_output(target, force=force, inputs=inputs) as temporary:
            if array is None:
                save_file({key: data}, os.fspath(temporary))
            else:
                with open(temporary, "wb") as stream:
                    if suffix == ".npy":
                        np.save(stream, array, allow_pickle=False)
                    else:
                        np.savez(stream, **{key: array})  # type: ignore[arg-type]  # stubs
    except (OSError, SafetensorError) as err:  # disk full, permission denied, ...
        raise InputError(f"cannot write: {err}", path=target) from None
    return target
