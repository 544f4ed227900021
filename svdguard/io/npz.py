"""The .npz format: a zip archive of .npy members, each read on its own.

Every member's .npy header is read (a few hundred bytes, decompressed if the
member is deflated) when the file is listed; a payload is read only by its
record's load(), straight into the tensor's buffer.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from pathlib import Path
from typing import cast

import torch

from svdguard.errors import InputError
from svdguard.io import npy
from svdguard.io.records import TensorRecord

#: What a malformed archive makes zipfile (and the decompressors behind it) raise.
ZIP_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    struct.error,
    NotImplementedError,
    RuntimeError,  # zipfile: "File ... is encrypted, password required"
    UnicodeDecodeError,
    KeyError,
    IndexError,  # zipfile on an empty member name
)

MEMBER_SUFFIX = ".npy"
#: Bytes zipfile reads per step while a member's header is parsed (see iter_npz_records).
HEADER_READ_STEP = 64


def _open_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> zipfile.ZipExtFile:
    return cast(zipfile.ZipExtFile, archive.open(info))  # typeshed says IO[bytes]


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except ZIP_ERRORS as err:
        raise InputError(
            f"not a valid .npz (zip) archive: {err}; re-save it with numpy.savez", path=path
        ) from None


def _members(archive: zipfile.ZipFile, path: Path) -> list[zipfile.ZipInfo]:
    members = [info for info in archive.infolist() if not info.filename.endswith("/")]
    seen: set[str] = set()
    for info in members:
        if not info.filename.endswith(MEMBER_SUFFIX):
            raise InputError(
                f"member {info.filename!r} is not a .npy array; an .npz archive holds only .npy "
                "members (write it with numpy.savez)",
                path=path,
            )
        if info.filename in seen:
            raise InputError(f"member {info.filename!r} appears twice in the archive", path=path)
        if info.flag_bits & 0x1:
            raise InputError(f"member {info.filename!r} is encrypted", path=path)
        seen.add(info.filename)
    return members


def iter_npz_records(path: Path, *, max_elements: int) -> list[TensorRecord]:
    """One record per member, from the members' .npy headers."""
    records = []
    with _open_zip(path) as archive:
        try:
            for info in _members(archive, path):
                key = info.filename[: -len(MEMBER_SUFFIX)]
                with _open_member(archive, info) as stream:
                    # zipfile verifies the CRC-32 once it reaches the member's end, and by
                    # default reads at least 4 KiB at a time: a small member would be read
                    # whole and a damaged payload would fail the listing. Reading the header
                    # in small steps leaves the payload (and its check) to the record's load().
                    stream.MIN_READ_SIZE = HEADER_READ_STEP  # type: ignore[misc]
                    header = npy.read_header(stream, path=path, key=key)
                records.append(
                    TensorRecord(
                        path, key, header.shape, header.dtype_name, max_elements, _load_member
                    )
                )
        except InputError:
            raise  # already names the file and member (InputError is a ValueError too)
        except ZIP_ERRORS as err:
            raise InputError(
                f"corrupt .npz archive: {err}; re-save it with numpy.savez", path=path
            ) from None
    return records


def _load_member(record: TensorRecord) -> torch.Tensor:
    path, key = record.path, record.key
    with _open_zip(path) as archive:
        try:
            info = archive.getinfo(key + MEMBER_SUFFIX)
            with _open_member(archive, info) as stream:
                header = npy.read_header(stream, path=path, key=key)
                npy.check_loadable(header, path=path, key=key)  # object dtype: refuse first
                available = info.file_size - header.data_offset
                if available > header.nbytes:
                    # numpy writes exactly the header and the payload; extra bytes mean the
                    # header or the archive is damaged (and would skip the CRC-32 check).
                    raise InputError(
                        f"corrupt member: it holds {available - header.nbytes:,} bytes more "
                        f"than its header declares (shape {header.shape} {header.dtype_name}); "
                        "re-save the archive with numpy.savez",
                        path=path,
                        key=key,
                    )
                tensor = npy.read_payload(stream, header, path=path, key=key, available=available)
                stream.read(1)  # reaching the end makes zipfile verify the member's CRC-32
        except InputError:
            raise
        except ZIP_ERRORS as err:
            raise InputError(
                f"corrupt member: {err}; re-save the archive with numpy.savez", path=path, key=key
            ) from None
    return tensor
