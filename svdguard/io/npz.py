"""The .npz format: a zip archive of .npy members, listed in one pass, inflated within a bound.

``zipfile`` reads the archive's central directory once; each member is then
read through its local header by :class:`MemberStream`, which inflates only
as many bytes as asked for (stored and deflated members: what ``numpy.savez``
and ``numpy.savez_compressed`` write) and checks the member's CRC-32 when
the member has been read to its end. Listing inflates at most a .npy header's
worth of each member (``npy.MAX_PREFIX_BYTES``); ``record.load()`` inflates
the header plus the payload the header declares (after the record's size and
memory checks), and one byte more to prove the member ends there: a deflate
bomb is never inflated past what its header admits.

An archive zipfile cannot read is one failed unit; within a readable archive
each member is its own unit: a member that is not a .npy array, appears twice,
is encrypted or compressed in another way, or whose .npy header is bad becomes
one :class:`~svdguard.io.records.FailedUnit` naming it, and the other members
are still listed.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from svdguard.errors import InputError
from svdguard.io import npy
from svdguard.io.records import FailedUnit, TensorRecord

if TYPE_CHECKING:
    import torch

#: What zipfile raises on an archive it cannot read.
ZIP_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    struct.error,
    NotImplementedError,
    UnicodeDecodeError,
    KeyError,
    IndexError,
)

MEMBER_SUFFIX = ".npy"
#: Compressed bytes read from the file per step while inflating (bounds the extra copy).
INPUT_CHUNK_BYTES = 2**20
#: The compression methods read: what numpy.savez (stored) and savez_compressed write.
METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # the 30-byte local file header of the zip spec
_LOCAL_MAGIC = b"PK\x03\x04"
#: The first bytes numpy.load accepts as a zip archive: a local header or an empty end record.
ZIP_STARTS = (_LOCAL_MAGIC, b"PK\x05\x06")


@dataclass(frozen=True)
class Member:
    """Where one member lies in the archive, from the central directory."""

    name: str
    method: int
    flag_bits: int
    header_offset: int
    compress_size: int
    file_size: int
    crc: int


def _corrupt(message: str, path: Path, key: str) -> InputError:
    return InputError(
        f"corrupt member: {message}; re-save the archive with numpy.savez", path=path, key=key
    )


class MemberStream:
    """The inflated bytes of one member, read on demand (``read``, ``readinto``, ``tell``)."""

    def __init__(self, file: BinaryIO, member: Member, *, path: Path, key: str) -> None:
        self._file, self._member, self._path, self._key = file, member, path, key
        file.seek(member.header_offset)
        local = file.read(_LOCAL_HEADER.size)
        if len(local) != _LOCAL_HEADER.size or not local.startswith(_LOCAL_MAGIC):
            raise _corrupt("its local header is missing or damaged", path, key)
        fields = _LOCAL_HEADER.unpack(local)
        name_length, extra_length = fields[-2], fields[-1]
        raw_name = file.read(name_length)
        encoding = "utf-8" if member.flag_bits & 0x800 else "cp437"
        if raw_name.decode(encoding, errors="replace") != member.name:
            raise _corrupt("its local header names another file than the directory", path, key)
        file.seek(extra_length, 1)
        self._compressed_left = member.compress_size
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS) if member.method else None
        self._position = 0
        self._crc = 0

    def _raw(self, count: int) -> bytes:
        data = self._file.read(min(count, self._compressed_left))
        self._compressed_left -= len(data)
        return data

    def _next(self, limit: int) -> bytes:
        """Up to ``limit`` inflated bytes (b"" at the member's end)."""
        if limit <= 0:
            return b""  # (zlib reads a max_length of 0 as "no limit")
        if self._inflater is None:
            return self._raw(limit)
        while not self._inflater.eof:
            source = self._inflater.unconsumed_tail or self._raw(INPUT_CHUNK_BYTES)
            if not source:
                return b""  # the compressed data ends before the deflate stream does
            data = self._inflater.decompress(source, limit)
            if data:
                return data
        return b""

    def readinto(self, buffer: memoryview) -> int:
        data = self._next(len(buffer))
        buffer[: len(data)] = data
        self._crc = zlib.crc32(data, self._crc)
        self._position += len(data)
        return len(data)

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            raise ValueError("MemberStream.read needs a size (members are read within a bound)")
        buffer = bytearray(size)
        view = memoryview(buffer)
        filled = 0
        while filled < size:
            count = self.readinto(view[filled:])
            if not count:
                break
            filled += count
        return bytes(buffer[:filled])

    def tell(self) -> int:
        return self._position

    def check_end(self) -> None:
        """Raise unless the member ends here and its CRC-32 matches (call after the payload)."""
        try:
            extra = self.read(1)
        except zlib.error as err:
            raise _corrupt(
                f"its compressed data is damaged ({err})", self._path, self._key
            ) from None
        if extra or self._position != self._member.file_size:
            raise _corrupt(
                "it holds more bytes than its .npy header declares", self._path, self._key
            )
        if self._crc != self._member.crc:
            raise _corrupt(
                f"CRC-32 mismatch (stored {self._member.crc:08x}, computed {self._crc:08x})",
                self._path,
                self._key,
            )


def _read_directory(path: Path) -> list[zipfile.ZipInfo]:
    try:
        with open(path, "rb") as stream:
            start = stream.read(len(ZIP_STARTS[0]))
        if not start.startswith(ZIP_STARTS):
            # numpy.load decides "zip archive or not" by these first bytes (a local file
            # header, or the end record of an empty archive); zipfile looks at the end.
            raise InputError(
                f"not a valid .npz (zip) archive: it starts with {start!r}, not with a zip "
                "record; re-save it with numpy.savez",
                path=path,
            )
        with zipfile.ZipFile(path) as archive:
            return archive.infolist()
    except ZIP_ERRORS as err:
        raise InputError(
            f"not a valid .npz (zip) archive: {err}; re-save it with numpy.savez", path=path
        ) from None


def _member(info: zipfile.ZipInfo, duplicated: set[str], path: Path) -> Member:
    """The member of ``info``, or InputError (naming it) when it cannot be an array."""
    name = info.filename
    if not name.endswith(MEMBER_SUFFIX):
        raise InputError(
            "not a .npy array; an .npz archive holds only .npy members (write it with numpy.savez)",
            path=path,
            key=name,
        )
    key = name[: -len(MEMBER_SUFFIX)]
    if name in duplicated:
        raise InputError("the member appears twice in the archive", path=path, key=key)
    if info.flag_bits & 0x1:
        raise InputError("the member is encrypted", path=path, key=key)
    if info.compress_type not in METHODS:
        raise InputError(
            f"compression method {info.compress_type} is not read (svdguard reads stored and "
            "deflated members, what numpy.savez and savez_compressed write)",
            path=path,
            key=key,
        )
    return Member(
        name,
        info.compress_type,
        info.flag_bits,
        info.header_offset,
        info.compress_size,
        info.file_size,
        info.CRC,
    )


def _list_member(
    file: BinaryIO, info: zipfile.ZipInfo, duplicated: set[str], path: Path, max_elements: int
) -> TensorRecord:
    member = _member(info, duplicated, path)
    key = member.name[: -len(MEMBER_SUFFIX)]
    try:
        stream = MemberStream(file, member, path=path, key=key)
        head = stream.read(min(npy.MAX_PREFIX_BYTES, member.file_size))
    except InputError:
        raise  # (an InputError is a ValueError too) it already names the member
    except (zlib.error, OSError, OverflowError, ValueError) as err:  # OverflowError: an offset
        raise _corrupt(f"cannot inflate its header ({err})", path, key) from None
    header = npy.parse_header(head, path=path, key=key)
    expected = header.data_offset + header.nbytes
    if header.dtype.hasobject:
        pass  # a pickled payload has no declared size; its load() refuses it as unsafe
    elif member.file_size < expected:
        raise InputError(
            f"payload truncated: the header declares shape {header.shape} {header.dtype_name} "
            f"({header.nbytes:,} bytes) but only {member.file_size - header.data_offset:,} "
            "bytes follow; re-save the archive with numpy.savez",
            path=path,
            key=key,
        )
    if member.file_size > expected:
        raise _corrupt(
            f"it holds {member.file_size - expected:,} bytes more than its header declares "
            f"(shape {header.shape} {header.dtype_name})",
            path,
            key,
        )
    return TensorRecord(
        path, key, header.shape, header.dtype_name, max_elements, partial(_load_member, member)
    )


def iter_npz_records(path: Path, *, max_elements: int) -> list[TensorRecord | FailedUnit]:
    """One record per member (from its .npy header), or one failed unit per bad member."""
    infos = [info for info in _read_directory(path) if not info.filename.endswith("/")]
    names = [info.filename for info in infos]
    duplicated = {name for name, count in Counter(names).items() if count > 1}
    units: list[TensorRecord | FailedUnit] = []
    reported: set[str] = set()
    try:
        with open(path, "rb") as file:
            for info in infos:
                if info.filename in reported:
                    continue  # a duplicated name is one failed unit
                try:
                    units.append(_list_member(file, info, duplicated, path, max_elements))
                except InputError as err:
                    units.append(FailedUnit(path, err.key or info.filename, err, path))
                    reported.add(info.filename)
    except OSError as err:
        raise InputError(f"cannot read: {err.strerror or err}", path=path) from None
    return units


def _load_member(member: Member, record: TensorRecord) -> torch.Tensor:
    path, key = record.path, record.key
    try:
        with open(path, "rb") as file:
            stream = MemberStream(file, member, path=path, key=key)
            header = npy.parse_header(stream.read(npy.MAX_PREFIX_BYTES), path=path, key=key)
            npy.check_loadable(header, path=path, key=key)  # object dtype: refuse first
            # Restart the member at the payload: the header read above may have gone past it.
            stream = MemberStream(file, member, path=path, key=key)
            stream.read(header.data_offset)
            available = member.file_size - header.data_offset
            tensor = npy.read_payload(stream, header, path=path, key=key, available=available)
            stream.check_end()
    except (zlib.error, OverflowError) as err:
        raise _corrupt(f"its compressed data is damaged ({err})", path, key) from None
    except OSError as err:
        raise InputError(f"cannot read: {err.strerror or err}", path=path, key=key) from None
    return tensor
