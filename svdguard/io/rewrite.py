"""Byte-preserving rewriters: copy a checkpoint and replace the payload of chosen tensors only.

A repair changes values, never dtypes or shapes, so the output's layout equals the
input's. For ``.safetensors`` and ``.npy`` the input is copied in chunks (header bytes
verbatim) and only the byte range of each replaced tensor is overwritten. An ``.npz`` is
a zip archive whose members may be compressed: it is rebuilt member by member in the
input's order; an untouched member's compressed bytes are copied raw (same compression,
same CRC-32), a replaced one keeps its name, timestamp, .npy header and compression
method.

Outputs are atomic: everything is written into a temporary file or directory beside the
target, flushed to disk (fsync) and renamed into place; on any exception, Ctrl-C
included, the temporary is removed and the target is left as it was. A target that is
an input (or resolves to one), a device or a FIFO is refused, even with ``force``.

Pickle-based ``.pt``/``.bin``/``.pth`` files are refused: rewriting them safely would
mean executing or re-pickling objects from the file (docs/repair.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import struct
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np
import torch

from svdguard.errors import InputError
from svdguard.io.writers import (
    current_umask,
    default_file_mode,
    forget_temporary,
    track_temporary,
)

#: Bytes copied per read/write step: large enough for full disk bandwidth, small against RAM.
COPY_CHUNK_BYTES = 8 * 2**20

#: Formats whose bytes the rewriters keep; pickles are refused (see the module docstring).
REWRITABLE_SUFFIXES = (".safetensors", ".npy", ".npz")
PICKLE_SUFFIXES = (".pt", ".pth", ".bin")

_LENGTH = struct.Struct("<Q")


def refuse_pickle(path: Path) -> None:
    """InputError for a pickle checkpoint: it cannot be rewritten without running its code."""
    raise InputError(
        "cannot rewrite a pickle checkpoint (.pt/.bin/.pth): keeping every other byte would "
        "mean re-pickling objects from the file, which requires executing it; convert it to "
        ".safetensors first (safetensors.torch.save_file)",
        path=path,
    )


def copy_in_chunks(source: BinaryIO, target: BinaryIO, count: int | None = None) -> int:
    """Copy ``count`` bytes (all, when None) from ``source`` to ``target`` in bounded chunks."""
    copied = 0
    while count is None or copied < count:
        step = COPY_CHUNK_BYTES if count is None else min(COPY_CHUNK_BYTES, count - copied)
        chunk = source.read(step)
        if not chunk:
            break
        target.write(chunk)
        copied += len(chunk)
    if count is not None and copied != count:
        raise InputError(f"the file ended after {copied:,} of {count:,} bytes (truncated)")
    return copied


def _fsync(path: Path) -> None:
    with open(path, "rb") as written:
        os.fsync(written.fileno())


def _fsync_directory(path: Path) -> None:
    """Make a rename inside ``path`` durable (not possible on every platform: then skipped)."""
    with contextlib.suppress(OSError):
        handle = os.open(path, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


# --- the output target ------------------------------------------------------------------


def _same(a: Path, b: Path) -> bool:
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def check_target(target: Path, *, force: bool, inputs: Sequence[Path], directory: bool) -> None:
    """Refuse an output that is an input, a device, a FIFO, or exists without ``force``."""
    if "\0" in os.fspath(target):
        raise InputError("the output name holds a NUL byte", path=repr(os.fspath(target)))
    for source in inputs:
        if _same(target, source):
            raise InputError(
                f"is the input {source}; write the repaired copy elsewhere (force does not "
                "apply to inputs)",
                path=target,
            )
    try:
        if target.exists():
            mode = target.stat().st_mode  # follows a symbolic link: judge what it points to
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise InputError("is a device, FIFO or socket, not a file; refused", path=target)
            if stat.S_ISDIR(mode) and not directory:
                raise InputError("is a directory; give a file name for the output", path=target)
        if (target.exists() or target.is_symlink()) and not force:
            raise InputError("exists; pass force=True to replace it", path=target)
        if not target.parent.is_dir():
            raise InputError(f"the directory {target.parent} does not exist", path=target)
    except OSError as err:
        raise InputError(f"cannot use as output: {err.strerror or err}", path=target) from None
    if directory:
        for source in inputs:
            if _same(target, source.parent):
                raise InputError(
                    "is the input's directory; write the repaired checkpoint elsewhere",
                    path=target,
                )


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


@contextlib.contextmanager
def atomic_file(target: Path, *, force: bool, inputs: Sequence[Path]) -> Iterator[Path]:
    """A temporary path beside ``target`` (same suffix); renamed to ``target`` on success."""
    check_target(target, force=force, inputs=inputs, directory=False)
    try:
        handle, name = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=f".tmp{''.join(target.suffixes)}"
        )
    except OSError as err:
        raise InputError(f"cannot create a file beside it: {err.strerror}", path=target) from None
    os.close(handle)
    temporary = Path(name)
    track_temporary(temporary)  # removed by discard_temporaries if the process is interrupted
    try:
        yield temporary
        os.chmod(temporary, default_file_mode())
        _fsync(temporary)
        check_target(target, force=force, inputs=inputs, directory=False)
        os.replace(temporary, target)
        _fsync_directory(target.parent)
    except OSError as err:  # disk full, quota exceeded, I/O error while writing
        raise InputError(f"cannot write: {err.strerror or err}", path=target) from None
    finally:
        _remove(temporary)
        forget_temporary(temporary)


@contextlib.contextmanager
def atomic_directory(target: Path, *, force: bool, inputs: Sequence[Path]) -> Iterator[Path]:
    """A temporary directory beside ``target``; renamed to ``target`` on success (complete or absent).

    Every file in it is fsynced before the rename. With ``force`` an existing target
    is first moved aside and removed once the new directory is in place.
    """
    check_target(target, force=force, inputs=inputs, directory=True)
    try:
        temporary = Path(
            tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        )
    except OSError as err:
        raise InputError(
            f"cannot create a directory beside it: {err.strerror}", path=target
        ) from None
    track_temporary(temporary)  # removed by discard_temporaries if the process is interrupted
    aside: Path | None = None
    try:
        yield temporary
        os.chmod(temporary, 0o777 & ~current_umask())
        for child in temporary.iterdir():
            os.chmod(child, default_file_mode())
            _fsync(child)
        check_target(target, force=force, inputs=inputs, directory=True)
        if target.exists() or target.is_symlink():
            aside = Path(
                tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old")
            )
            os.replace(target, aside / "previous")
        os.replace(temporary, target)
        _fsync_directory(target.parent)
    except OSError as err:  # disk full, quota exceeded, I/O error while writing
        raise InputError(f"cannot write: {err.strerror or err}", path=target) from None
    finally:
        _remove(temporary)
        forget_temporary(temporary)
        if aside is not None:
            _remove(aside)


# --- rewriters --------------------------------------------------------------------------


class Rewriter(Protocol):
    """Writes a copy of one input file; ``replace`` is called in the file's tensor order."""

    def replace(self, key: str, tensor: torch.Tensor) -> None: ...

    def finish(self) -> None: ...


def _little_endian_bytes(tensor: torch.Tensor) -> bytes:
    """The C-order bytes of ``tensor`` in its own dtype, little-endian (the safetensors layout)."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    raw = flat.view(torch.uint8).numpy()
    if sys.byteorder == "big" and flat.element_size() > 1:
        raw = raw.reshape(-1, flat.element_size())[:, ::-1].reshape(-1)
    return raw.tobytes()


def safetensors_ranges(path: Path) -> dict[str, tuple[int, int]]:
    """Absolute byte range [begin, end) of every tensor, from the header (8-byte length + JSON).

    The file is first opened with ``safetensors.safe_open``, the format's own validator.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(os.fspath(path), framework="pt"):
            pass
        with open(path, "rb") as stream:
            (length,) = _LENGTH.unpack(stream.read(_LENGTH.size))
            header = json.loads(stream.read(length).decode("utf-8"))
    except (SafetensorError, OSError, ValueError, struct.error) as err:
        raise InputError(f"not a valid .safetensors file: {err}", path=path) from None
    start = _LENGTH.size + length
    return {
        key: (start + entry["data_offsets"][0], start + entry["data_offsets"][1])
        for key, entry in header.items()
        if key != "__metadata__"
    }


class _PatchedCopy:
    """A chunked copy of the input whose chosen byte ranges are then overwritten in place."""

    def __init__(self, source: Path, target: Path) -> None:
        self.source, self.target = source, target
        with open(source, "rb") as src, open(target, "wb") as dst:
            copy_in_chunks(src, dst)
        self.stream: BinaryIO = open(target, "r+b")  # noqa: SIM115 - closed by finish()

    def _overwrite(self, key: str, begin: int, end: int, payload: bytes) -> None:
        if len(payload) != end - begin:
            raise InputError(
                f"the new payload has {len(payload):,} bytes where the file holds {end - begin:,}",
                path=self.source,
                key=key or None,
            )
        self.stream.seek(begin)
        self.stream.write(payload)

    def finish(self) -> None:
        self.stream.flush()
        os.fsync(self.stream.fileno())
        self.stream.close()

    def abort(self) -> None:
        self.stream.close()


class SafetensorsRewriter(_PatchedCopy):
    """Header bytes verbatim (``__metadata__`` included); replaced tensors overwrite their range."""

    def __init__(self, source: Path, target: Path) -> None:
        self.ranges = safetensors_ranges(source)
        super().__init__(source, target)

    def replace(self, key: str, tensor: torch.Tensor) -> None:
        begin, end = self.ranges[key]
        self._overwrite(key, begin, end, _little_endian_bytes(tensor))


def _npy_layout(stream: BinaryIO) -> tuple[np.dtype, bool, int]:
    """(dtype, fortran_order, data offset) of the .npy at the stream's position (numpy's parser)."""
    from numpy.lib import format as npy_format

    start = stream.tell()
    version = npy_format.read_magic(stream)
    if version == (1, 0):
        _, fortran_order, dtype = npy_format.read_array_header_1_0(stream)
    else:
        _, fortran_order, dtype = npy_format.read_array_header_2_0(stream)
    return dtype, bool(fortran_order), stream.tell() - start


def _npy_payload(tensor: torch.Tensor, dtype: np.dtype, fortran_order: bool) -> bytes:
    """The tensor's bytes as a .npy payload of ``dtype`` (its byte order) and memory order."""
    array = tensor.detach().to("cpu").numpy().astype(dtype, copy=False)
    return array.tobytes(order="F" if fortran_order else "C")


class NpyRewriter(_PatchedCopy):
    """The one array of a .npy file; its header bytes (dtype, byte and memory order) verbatim."""

    def __init__(self, source: Path, target: Path) -> None:
        try:
            with open(source, "rb") as stream:
                self.dtype, self.fortran_order, self.offset = _npy_layout(stream)
        except (OSError, ValueError) as err:
            raise InputError(f"not a valid .npy file: {err}", path=source) from None
        super().__init__(source, target)

    def replace(self, key: str, tensor: torch.Tensor) -> None:
        payload = _npy_payload(tensor, self.dtype, self.fortran_order)
        self._overwrite(key, self.offset, self.offset + len(payload), payload)


_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")
_CENTRAL_HEADER = struct.Struct("<4s4B4HL2L5H2L")
_END_RECORD = struct.Struct("<4s4H2LH")
_ZIP64_END_RECORD = struct.Struct("<4sQ2H2L4Q")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_ID = 0x0001
_ZIP32_LIMIT = 0xFFFFFFFF
_UTF8_NAME_FLAG = 0x800
_ZIP64_VERSION = 45


def _dos_time(date_time: tuple[int, int, int, int, int, int]) -> tuple[int, int]:
    year, month, day, hour, minute, second = date_time
    return hour << 11 | minute << 5 | second // 2, (year - 1980) << 9 | month << 5 | day


def _without_zip64(extra: bytes) -> bytes:
    """The extra field without its zip64 record (sizes and offsets are written afresh)."""
    kept, position = b"", 0
    while position + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, position)
        if tag != _ZIP64_ID:
            kept += extra[position : position + 4 + size]
        position += 4 + size
    return kept


@dataclass
class _Written:
    """A member as written: what its central-directory record needs."""

    info: zipfile.ZipInfo
    name: bytes
    flags: int
    extra: bytes
    crc: int
    compressed: int
    size: int
    offset: int


class NpzRewriter:
    """Rebuilds the archive in its member order; untouched members are copied raw.

    An untouched member's compressed bytes are copied as they are (same compression,
    same CRC-32); a replaced member keeps its name, timestamp, attributes, .npy header
    and compression method (stored or deflated), with the new payload. The local
    headers carry zip64 sizes (as numpy writes them); the central directory is
    written afresh with the new offsets.
    """

    def __init__(self, source: Path, target: Path) -> None:
        self.source = source
        try:
            self.archive = zipfile.ZipFile(source)
            members = [i for i in self.archive.infolist() if not i.filename.endswith("/")]
        except (zipfile.BadZipFile, OSError, ValueError) as err:
            raise InputError(f"not a valid .npz archive: {err}", path=source) from None
        self.members = members  # central-directory order: the order iter_records lists them
        self.raw: BinaryIO = open(source, "rb")  # noqa: SIM115 - closed by finish()/abort()
        self.output: BinaryIO = open(target, "wb")  # noqa: SIM115
        self.written: list[_Written] = []
        self.position = 0

    def _local_header(self, entry: _Written) -> bytes:
        extra = entry.extra + struct.pack("<HHQQ", _ZIP64_ID, 16, entry.size, entry.compressed)
        time, date = _dos_time(entry.info.date_time)
        header = _LOCAL_HEADER.pack(
            b"PK\x03\x04",
            _ZIP64_VERSION,
            0,
            entry.flags,
            entry.info.compress_type,
            time,
            date,
            entry.crc,
            _ZIP32_LIMIT,
            _ZIP32_LIMIT,
            len(entry.name),
            len(extra),
        )
        return header + entry.name + extra

    def _entry(self, info: zipfile.ZipInfo, crc: int, compressed: int) -> _Written:
        name = info.filename.encode("utf-8")
        flags = info.flag_bits & _UTF8_NAME_FLAG
        if not info.filename.isascii():
            flags |= _UTF8_NAME_FLAG
        return _Written(
            info,
            name,
            flags,
            _without_zip64(info.extra),
            crc,
            compressed,
            info.file_size,
            self.output.tell(),
        )

    def _copy_raw(self, info: zipfile.ZipInfo) -> None:
        self.raw.seek(info.header_offset)
        fixed = self.raw.read(_LOCAL_HEADER.size)
        if len(fixed) != _LOCAL_HEADER.size or fixed[:4] != b"PK\x03\x04":
            raise InputError(f"member {info.filename!r}: bad local header", path=self.source)
        name_length, extra_length = struct.unpack_from("<HH", fixed, 26)
        self.raw.seek(info.header_offset + _LOCAL_HEADER.size + name_length + extra_length)
        entry = self._entry(info, info.CRC, info.compress_size)
        self.output.write(self._local_header(entry))
        try:
            copy_in_chunks(self.raw, self.output, info.compress_size)
        except InputError as err:
            raise InputError(err.message, path=self.source, key=info.filename) from None
        self.written.append(entry)

    def _copy_until(self, name: str | None) -> None:
        while self.position < len(self.members):
            member = self.members[self.position]
            if member.filename == name:
                return
            self._copy_raw(member)
            self.position += 1
        if name is not None:
            raise InputError(
                f"no member {name!r} in the archive (or out of order)", path=self.source
            )

    def replace(self, key: str, tensor: torch.Tensor) -> None:
        name = key + ".npy"
        self._copy_until(name)
        member = self.members[self.position]
        if member.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise InputError(
                f"member compressed with method {member.compress_type}; only stored and "
                "deflated members are rewritten (re-save it with numpy.savez)",
                path=self.source,
                key=key,
            )
        with self.archive.open(member) as stream:
            dtype, fortran_order, offset = _npy_layout(stream)  # type: ignore[arg-type]
        with self.archive.open(member) as stream:
            header = stream.read(offset)  # the member's .npy header, verbatim
        payload = _npy_payload(tensor, dtype, fortran_order)
        if offset + len(payload) != member.file_size:
            raise InputError(
                f"the new payload has {len(payload):,} bytes where the member holds "
                f"{member.file_size - offset:,}",
                path=self.source,
                key=key,
            )
        data = header + payload
        if member.compress_type == zipfile.ZIP_DEFLATED:
            compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
            stored = compressor.compress(data) + compressor.flush()
        else:
            stored = data
        entry = self._entry(member, zlib.crc32(data), len(stored))
        self.output.write(self._local_header(entry))
        self.output.write(stored)
        self.written.append(entry)
        self.position += 1

    def _central_directory(self) -> None:
        start = self.output.tell()
        for entry in self.written:
            fields = [
                value
                for value in (entry.size, entry.compressed, entry.offset)
                if value >= _ZIP32_LIMIT
            ]
            extra = entry.extra
            if fields:
                extra += struct.pack(f"<HH{len(fields)}Q", _ZIP64_ID, 8 * len(fields), *fields)
            time, date = _dos_time(entry.info.date_time)
            self.output.write(
                _CENTRAL_HEADER.pack(
                    b"PK\x01\x02",
                    _ZIP64_VERSION,
                    entry.info.create_system,
                    _ZIP64_VERSION,
                    0,
                    entry.flags,
                    entry.info.compress_type,
                    time,
                    date,
                    entry.crc,
                    min(entry.compressed, _ZIP32_LIMIT),
                    min(entry.size, _ZIP32_LIMIT),
                    len(entry.name),
                    len(extra),
                    0,
                    0,
                    entry.info.internal_attr,
                    entry.info.external_attr,
                    min(entry.offset, _ZIP32_LIMIT),
                )
                + entry.name
                + extra
            )
        end = self.output.tell()
        count, size = len(self.written), end - start
        if count >= 0xFFFF or start >= _ZIP32_LIMIT or size >= _ZIP32_LIMIT:
            self.output.write(
                _ZIP64_END_RECORD.pack(
                    b"PK\x06\x06",
                    44,
                    _ZIP64_VERSION,
                    _ZIP64_VERSION,
                    0,
                    0,
                    count,
                    count,
                    size,
                    start,
                )
            )
            self.output.write(_ZIP64_LOCATOR.pack(b"PK\x06\x07", 0, end, 1))
        self.output.write(
            _END_RECORD.pack(
                b"PK\x05\x06",
                0,
                0,
                min(count, 0xFFFF),
                min(count, 0xFFFF),
                min(size, _ZIP32_LIMIT),
                min(start, _ZIP32_LIMIT),
                0,
            )
        )

    def finish(self) -> None:
        self._copy_until(None)
        self._central_directory()
        self.output.flush()
        os.fsync(self.output.fileno())
        self.abort()

    def abort(self) -> None:
        self.output.close()
        self.raw.close()
        self.archive.close()


def open_rewriter(source: Path, target: Path) -> SafetensorsRewriter | NpyRewriter | NpzRewriter:
    """The rewriter for ``source``'s format, writing ``target`` (InputError for other formats)."""
    suffix = source.suffix.lower()
    if suffix == ".safetensors":
        return SafetensorsRewriter(source, target)
    if suffix == ".npy":
        return NpyRewriter(source, target)
    if suffix == ".npz":
        return NpzRewriter(source, target)
    if suffix in PICKLE_SUFFIXES:
        refuse_pickle(source)
    raise InputError(
        f"cannot rewrite {suffix or 'a file without a suffix'!r} files; repair reads and writes "
        f"{', '.join(REWRITABLE_SUFFIXES)} and sharded .safetensors checkpoints",
        path=source,
    )


def copy_file(source: Path, target: Path) -> None:
    """A byte-for-byte copy in chunks (an index file, a shard with nothing to replace)."""
    with open(source, "rb") as src, open(target, "wb") as dst:
        copy_in_chunks(src, dst)
