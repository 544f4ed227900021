"""Write a corpus of malformed and hostile tensor files, one per failure class, in every format.

Usage::

    python tests/corpus/make_corpus.py DIRECTORY      # writes the files, prints the manifest

or ``make_corpus(directory)`` from a test. Each file is paired with the svdguard
error class that reading it must raise (through ``expand_inputs`` →
``iter_records`` → ``record.load()``) and a substring of that error's message;
``None`` marks a valid file (a NaN-filled matrix loads fine: reporting it is
the numerics layer's job).

Two files carry a pickle that, if anything ever executed it, would create a
marker file in DIRECTORY (``MARKER_FILES``); they are written opcode by opcode,
without the pickle module.
"""

from __future__ import annotations

import io
import json
import struct
import sys
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from svdguard.errors import InputError, ResourceLimitError, SvdguardError, UnsafeInputError


class CorpusCase(NamedTuple):
    """A corpus entry: file (or directory) name, the error it must raise, a message substring."""

    filename: str
    error: type[SvdguardError] | None
    message: str


#: Files the hostile pickles would create (inside the corpus directory) if executed.
MARKER_FILES = ("executed_by_npy.marker", "executed_by_pt.marker", "executed_by_raw_pt.marker")


def hostile_pickle(marker: Path) -> bytes:
    """Protocol-0 pickle opcodes for ``open(marker, "w")``: executing it creates ``marker``.

    c GLOBAL builtins.open, ( MARK, V unicode args, t TUPLE, R REDUCE (call), . STOP.
    """
    return b"cbuiltins\nopen\n(V" + str(marker).encode() + b"\nVw\ntR."


def npy_bytes(header: str | bytes, payload: bytes = b"", *, version: int = 1) -> bytes:
    """A .npy file with a hand-written header literal (padded the way numpy pads it)."""
    text = header.encode("latin-1") if isinstance(header, str) else header
    length_format = "<H" if version == 1 else "<I"
    prefix = 6 + 2 + struct.calcsize(length_format)
    text += b" " * (-(prefix + len(text) + 1) % 64) + b"\n"
    return (
        b"\x93NUMPY" + bytes([version, 0]) + struct.pack(length_format, len(text)) + text + payload
    )


def safetensors_bytes(header: object, data: bytes = b"", *, length: int | None = None) -> bytes:
    """A .safetensors file: 8-byte little-endian header length, JSON header (or raw bytes), data."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def _valid_safetensors() -> bytes:
    data = np.arange(16, dtype="<f4").tobytes()
    return safetensors_bytes(
        {"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}, data
    )


def _npz_bytes(members: dict[str, bytes], *, compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def _npy_of(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _torch_zip_with_pickle(pickle_bytes: bytes) -> bytes:
    """A torch.save zip archive whose data.pkl is replaced by ``pickle_bytes``."""
    original = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, original)
    result = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(original.getvalue())) as source,
        zipfile.ZipFile(result, "w", compression=zipfile.ZIP_STORED) as target,
    ):
        for info in source.infolist():
            content = source.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                content = pickle_bytes
            target.writestr(info.filename, content)
    return result.getvalue()


def _torch_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


#: The inflated size of the deflate bomb's member: far beyond its 8-element header, small to build.
DEFLATE_BOMB_BYTES = 16 * 2**20
#: Nesting of the shared-dict pickle: 2**40 paths if walked naively, 40 steps when walked once.
SHARED_DICT_LEVELS = 40
#: Side of the stride-0 expanded matrix: 10**10 elements, beyond DEFAULT_MAX_ELEMENTS.
EXPAND_BOMB_SIDE = 100_000


def deflate_bomb_npz() -> bytes:
    """An .npz whose member declares 8 float64 values but inflates to DEFLATE_BOMB_BYTES."""
    header = _npy_of(np.zeros(8))
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive,
        archive.open("w.npy", "w") as member,
    ):
        member.write(header)
        zeros = bytes(2**20)
        for _ in range(DEFLATE_BOMB_BYTES // len(zeros)):
            member.write(zeros)
    return buffer.getvalue()


def shared_dict_pt(levels: int = SHARED_DICT_LEVELS) -> bytes:
    """d = {"a": d, "b": d}, ``levels`` deep, around one tensor: a 2 KB pickle of 2**levels paths."""
    tree: dict[str, object] = {"w": torch.arange(4.0).reshape(2, 2)}
    for _ in range(levels):
        tree = {"a": tree, "b": tree}
    return _torch_bytes(tree)


def expand_bomb_pt(side: int = EXPAND_BOMB_SIDE) -> bytes:
    """torch.ones(1).expand(side, side) saved by torch.save: one stored float, side² elements."""
    return _torch_bytes({"w": torch.ones(1).expand(side, side)})


def deflated_pickle_pt(padding: int = DEFLATE_BOMB_BYTES) -> bytes:
    """A torch.save archive re-packed deflated, its data.pkl padded to inflate by ``padding`` bytes.

    The pickle stops at its STOP opcode, so the zeros after it change nothing for an
    unpickler; a reader that inflates data.pkl whole allocates them all.
    """
    original = zipfile.ZipFile(io.BytesIO(_torch_bytes({"w": torch.eye(3)})))
    result = io.BytesIO()
    zeros = bytes(2**20)
    with zipfile.ZipFile(result, "w", compression=zipfile.ZIP_DEFLATED) as target:
        for info in original.infolist():
            with target.open(info.filename, "w") as member:
                member.write(original.read(info.filename))
                if info.filename.endswith("data.pkl"):
                    for _ in range(padding // len(zeros)):
                        member.write(zeros)
    return result.getvalue()


def lone_surrogate_key_pt() -> bytes:
    """A state dict whose key holds a lone surrogate (pickle carries it; JSON formats refuse it)."""
    return _torch_bytes({"w\udc80": torch.eye(2)})


def _cyclic_pt() -> bytes:
    state: dict[str, object] = {"w": torch.eye(2)}
    state["self"] = state
    return _torch_bytes(state)


def _make_dangling_link_directory(path: Path) -> None:
    path.mkdir(exist_ok=True)
    (path / "w.npy").write_bytes(_npy_of(np.eye(2)))
    link = path / "x.npy"
    if not link.is_symlink():
        link.symlink_to(path / "deleted.npy")


def _index(weight_map: object) -> bytes:
    return json.dumps({"metadata": {}, "weight_map": weight_map}).encode()


TERA = 10**12


def _cases(directory: Path) -> list[tuple[str, bytes | Callable[[Path], None], type | None, str]]:
    valid_st = _valid_safetensors()
    f32_4x4 = np.arange(16, dtype="<f4").tobytes()
    st_entry = {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}
    npy_f8 = "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }"
    valid_npy = _npy_of(np.arange(12.0).reshape(3, 4))
    corrupt_member = bytearray(_npz_bytes({"w.npy": valid_npy}))
    # Flip a byte of the last element's data (a stored member): the CRC-32 no longer matches.
    corrupt_member[corrupt_member.find(valid_npy) + len(valid_npy) - 4] ^= 0xFF
    valid_npz = _npz_bytes({"w.npy": valid_npy, "b.npy": _npy_of(np.ones(3))})
    nan = _npy_of(np.full((4, 3), np.nan))
    return [
        # --- safetensors -----------------------------------------------------------------
        (
            "st_header_past_end.safetensors",
            safetensors_bytes({}, length=4096),
            InputError,
            "runs past the end",
        ),
        (
            "st_header_absurd_length.safetensors",
            safetensors_bytes({}, length=2**40),
            ResourceLimitError,
            "exceeds the limit",
        ),
        ("st_short_prefix.safetensors", b"\x05\x00\x00", InputError, "8-byte length prefix"),
        (
            "st_invalid_json.safetensors",
            safetensors_bytes(b'{"w": {"dtype": '),
            InputError,
            "the header is not valid JSON",
        ),
        (
            "st_not_utf8.safetensors",
            safetensors_bytes(b'{"\xff\xfe": 1}'),
            InputError,
            "the header is not valid UTF-8",
        ),
        (
            "st_header_not_dict.safetensors",
            safetensors_bytes([1, 2, 3]),
            InputError,
            "the header is a JSON array, not an object",
        ),
        (
            "st_entry_not_dict.safetensors",
            safetensors_bytes({"w": 5}),
            InputError,
            "the entry is a JSON number, not an object",
        ),
        (
            "st_unknown_dtype.safetensors",
            safetensors_bytes({"w": {**st_entry, "dtype": "F4X"}}, f32_4x4),
            InputError,
            "unknown dtype 'F4X'",
        ),
        (
            "st_negative_dim.safetensors",
            safetensors_bytes({"w": {**st_entry, "shape": [-4, -4]}}, f32_4x4),
            InputError,
            "not a list of non-negative integers",
        ),
        (
            "st_shape_not_list.safetensors",
            safetensors_bytes({"w": {**st_entry, "shape": "4x4"}}, f32_4x4),
            InputError,
            "not a list of non-negative integers",
        ),
        (
            "st_overlapping_offsets.safetensors",
            safetensors_bytes(
                {"a": st_entry, "b": {**st_entry, "data_offsets": [32, 96]}}, f32_4x4 * 2
            ),
            InputError,
            "overlap",
        ),
        (
            "st_offsets_reversed.safetensors",
            safetensors_bytes({"w": {**st_entry, "data_offsets": [64, 0]}}, f32_4x4),
            InputError,
            "ends before it begins",
        ),
        (
            "st_offsets_out_of_range.safetensors",
            safetensors_bytes({"w": {**st_entry, "data_offsets": [10**15, 10**15 + 64]}}, f32_4x4),
            InputError,
            "leaves a gap",
        ),
        (
            "st_byte_count_mismatch.safetensors",
            safetensors_bytes({"w": {**st_entry, "data_offsets": [0, 60]}}, f32_4x4),
            InputError,
            "needs 64 bytes but data_offsets [0, 60] hold 60",
        ),
        (
            "st_huge_shape.safetensors",
            safetensors_bytes(
                {"w": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * 10**12]}}
            ),
            InputError,
            "the data section is cut short",
        ),
        (
            "st_truncated_payload.safetensors",
            valid_st[:-20],
            InputError,
            "the data section is cut short",
        ),
        (
            "st_gap_between_tensors.safetensors",
            safetensors_bytes(
                {"a": st_entry, "b": {**st_entry, "data_offsets": [80, 144]}}, f32_4x4 * 3
            ),
            InputError,
            "leaves a gap",
        ),
        (
            "st_trailing_bytes.safetensors",
            valid_st + b"\0" * 16,
            InputError,
            "has bytes no tensor claims",
        ),
        (
            "st_unknown_dtype_far_offsets.safetensors",
            safetensors_bytes(
                {"w": {"dtype": "Q9", "shape": [2], "data_offsets": [10**15, 10**15 + 8]}}
            ),
            InputError,
            "unknown dtype 'Q9'",
        ),
        (
            "st_declares_4tb.safetensors",
            safetensors_bytes(
                {"w": {"dtype": "F32", "shape": [TERA], "data_offsets": [0, 4 * TERA]}}
            ),
            InputError,
            "cut short",
        ),
        (
            "st_duplicate_keys.safetensors",
            safetensors_bytes(
                b'{"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}, '
                b'"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}',
                f32_4x4,
            ),
            InputError,
            "appears twice",
        ),
        (
            "st_huge_integer.safetensors",
            safetensors_bytes(
                b'{"w": {"dtype": "F32", "shape": ['
                + b"9" * 5000
                + b'], "data_offsets": [0, 64]}}',
                f32_4x4,
            ),
            InputError,
            "a number Python refuses",
        ),
        (
            "st_nan_literal.safetensors",
            safetensors_bytes(
                b'{"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64], "x": NaN}}',
                f32_4x4,
            ),
            InputError,
            "NaN is not a JSON value",
        ),
        (
            "st_lone_surrogate_key.safetensors",
            safetensors_bytes(
                b'{"\\ud800": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}', f32_4x4
            ),
            InputError,
            "lone UTF-16 surrogate",
        ),
        (
            "st_metadata_not_strings.safetensors",
            safetensors_bytes({"__metadata__": {"epoch": 3}, "w": st_entry}, f32_4x4),
            InputError,
            "__metadata__ must map strings to strings",
        ),
        (
            "st_fp8_e4m3.safetensors",
            safetensors_bytes(
                {"w": {"dtype": "F8_E4M3", "shape": [2, 2], "data_offsets": [0, 4]}},
                bytes([0x38, 0x40, 0x00, 0xB8]),  # 1, 2, 0, -1 in e4m3
            ),
            None,
            "",
        ),
        (
            "st_fp8_e5m2.safetensors",
            safetensors_bytes(
                {"w": {"dtype": "F8_E5M2", "shape": [2, 2], "data_offsets": [0, 4]}},
                bytes([0x3C, 0x40, 0x00, 0xBC]),  # 1, 2, 0, -1 in e5m2
            ),
            None,
            "",
        ),
        # --- npy -------------------------------------------------------------------------
        ("npy_bad_magic.npy", b"\x93NUMPZ\x01\x00" + valid_npy[8:], InputError, "bad magic"),
        ("npy_truncated_header.npy", valid_npy[:40], InputError, "ends inside the header"),
        ("npy_truncated_payload.npy", valid_npy[:-10], InputError, "payload truncated"),
        (
            "npy_object_pickle.npy",
            npy_bytes(
                "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }",
                hostile_pickle(directory / MARKER_FILES[0]),
            ),
            UnsafeInputError,
            "object arrays are stored as pickles",
        ),
        (
            "npy_absurd_shape.npy",
            npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (1000000, 1000000), }"),
            InputError,
            "payload truncated",
        ),
        (
            "npy_unicode_dtype.npy",
            _npy_of(np.array(["a", "bc"])),
            InputError,
            "not a numeric dtype",
        ),
        (
            "npy_negative_dim.npy",
            npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (-3, 4), }"),
            InputError,
            "not a tuple of non-negative integers",
        ),
        (
            "npy_header_not_literal.npy",
            npy_bytes("__import__('os').system('echo owned')"),
            InputError,
            "not a Python dict literal",
        ),
        (
            "npy_header_missing_keys.npy",
            npy_bytes("{'descr': '<f8'}"),
            InputError,
            "must be a dict with keys",
        ),
        (
            "npy_header_absurd_length.npy",
            b"\x93NUMPY\x02\x00" + struct.pack("<I", 2**31) + b"{",
            ResourceLimitError,
            "header length",
        ),
        (
            "npy_bad_version.npy",
            b"\x93NUMPY\x07\x00" + valid_npy[8:],
            InputError,
            "unsupported format version 7.0",
        ),
        (
            "npy_bad_descr.npy",
            npy_bytes(npy_f8.replace("<f8", "not-a-dtype"), b"\x00" * 96),
            InputError,
            "not a numpy dtype",
        ),
        (
            "npy_subarray_dtype.npy",
            npy_bytes(
                "{'descr': ('<f8', (3,)), 'fortran_order': False, 'shape': (2,), }", b"\0" * 48
            ),
            InputError,
            "sub-array dtype",
        ),
        (
            "npy_header_beyond_numpy_limit.npy",
            npy_bytes(
                "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }" + " " * 20_000,
                b"\0" * 16,
                version=2,
            ),
            ResourceLimitError,
            "exceeds the limit of 10,000",
        ),
        # --- npz -------------------------------------------------------------------------
        (
            "npz_not_a_zip.npz",
            b"PK\x03\x04 but not really a zip archive",
            InputError,
            "not a valid .npz (zip) archive",
        ),
        (
            "npz_truncated_archive.npz",
            valid_npz[: len(valid_npz) // 2],
            InputError,
            "not a valid .npz (zip) archive",
        ),
        (
            "npz_non_npy_member.npz",
            _npz_bytes({"w.npy": valid_npy, "README.txt": b"hi"}),
            InputError,
            "member 'README.txt': not a .npy array",
        ),
        ("npz_corrupt_member.npz", bytes(corrupt_member), InputError, "corrupt member"),
        (
            "npz_truncated_member.npz",
            _npz_bytes({"w.npy": valid_npy[:-16]}),
            InputError,
            "payload truncated",
        ),
        (
            "npz_object_member.npz",
            _npz_bytes(
                {
                    "w.npy": npy_bytes(
                        "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", b"N."
                    )
                }
            ),
            UnsafeInputError,
            "object arrays are stored as pickles",
        ),
        (
            "npz_bad_member_header.npz",
            _npz_bytes({"w.npy": b"not an npy header at all"}),
            InputError,
            "bad magic",
        ),
        (
            "npz_deflate_bomb.npz",
            deflate_bomb_npz(),
            InputError,
            "bytes more than its header declares",
        ),
        # --- sharded index ---------------------------------------------------------------
        (
            "idx_invalid_json.safetensors.index.json",
            b'{"weight_map": {',
            InputError,
            "the file is not valid JSON",
        ),
        (
            "idx_no_weight_map.safetensors.index.json",
            b'{"metadata": {}}',
            InputError,
            'no "weight_map" object',
        ),
        (
            "idx_weight_map_not_dict.safetensors.index.json",
            _index(["a", "b"]),
            InputError,
            '"weight_map" must map tensor names to shard file names',
        ),
        (
            "idx_shard_missing.safetensors.index.json",
            _index({"w": "missing-00001-of-00001.safetensors"}),
            InputError,
            "the shard 'missing-00001-of-00001.safetensors' named by",
        ),
        (
            "idx_shard_outside.safetensors.index.json",
            _index({"w": "../outside.safetensors"}),
            InputError,
            "outside the index's directory",
        ),
        (
            "idx_shard_absolute.safetensors.index.json",
            _index({"w": "/tmp/abs.safetensors"}),
            InputError,
            "is an absolute path",
        ),
        (
            "idx_key_not_in_shard.safetensors.index.json",
            _index({"not_there": "st_valid_shard.safetensors"}),
            InputError,
            "does not hold: not_there",
        ),
        (
            "idx_huge_integer.safetensors.index.json",
            b'{"metadata": {"total_size": ' + b"1" * 5000 + b'}, "weight_map": {}}',
            InputError,
            "a number Python refuses",
        ),
        (
            "idx_nan_literal.safetensors.index.json",
            b'{"metadata": {"total_size": NaN}, "weight_map": {"w": "st_valid_shard.safetensors"}}',
            InputError,
            "NaN is not a JSON value",
        ),
        (
            "idx_duplicate_keys.safetensors.index.json",
            b'{"weight_map": {"w": "st_valid_shard.safetensors", "w": "other.safetensors"}}',
            InputError,
            "appears twice",
        ),
        (
            "idx_lone_surrogate.safetensors.index.json",
            b'{"weight_map": {"\\udc80": "st_valid_shard.safetensors"}}',
            InputError,
            "lone UTF-16 surrogate",
        ),
        (
            "idx_not_an_object.safetensors.index.json",
            b'["weight_map"]',
            InputError,
            'no "weight_map" object',
        ),
        ("st_valid_shard.safetensors", valid_st, None, ""),
        # --- torch -----------------------------------------------------------------------
        (
            "pt_pickle_payload.pt",
            _torch_zip_with_pickle(hostile_pickle(directory / MARKER_FILES[1])),
            UnsafeInputError,
            "refused",
        ),
        (
            "pt_raw_pickle_payload.pt",
            hostile_pickle(directory / MARKER_FILES[2]),
            UnsafeInputError,
            "refused",
        ),
        (
            "pt_truncated_zip.pt",
            _torch_bytes({"w": torch.ones(64)})[:300],
            InputError,
            "not a readable torch checkpoint",
        ),
        ("pt_not_a_dict.pt", _torch_bytes([1, 2, 3]), InputError, "holds a list, not a state dict"),
        ("pt_shared_dict_bomb.pt", shared_dict_pt(), None, ""),
        ("pt_cyclic_dict.pt", _cyclic_pt(), None, ""),
        ("pt_expand_bomb.pt", expand_bomb_pt(), ResourceLimitError, "exceeds the limit"),
        ("pt_deflated_members.pt", deflated_pickle_pt(), InputError, "is compressed"),
        ("dangling_link", _make_dangling_link_directory, InputError, "dangling link"),
        # --- empty files, unknown suffix, empty directory, a valid NaN matrix ------------
        ("empty.npy", b"", InputError, "the file is empty"),
        ("empty.npz", b"", InputError, "the file is empty"),
        ("empty.safetensors", b"", InputError, "the file is empty"),
        ("empty.pt", b"", InputError, "the file is empty"),
        ("empty.safetensors.index.json", b"", InputError, "the file is empty"),
        ("weights.h5", b"\x89HDF\r\n\x1a\n", InputError, "unknown file type '.h5'"),
        ("nothing_readable", _make_unreadable_directory, InputError, "holds no"),
        ("nan_matrix.npy", nan, None, ""),
        ("pt_lone_surrogate_key.pt", lone_surrogate_key_pt(), None, ""),
    ]


# --- the command-line corpus: every hostile case with its exit code and its bounds ---------


class CliCase(NamedTuple):
    """A file (or directory) for ``svdguard inspect``: the exit code it must give, a string
    the report must show, and for a bomb the wall time and peak memory it may cost.

    ``shows`` is searched in the table output; strings from the file appear there with
    control characters and lone surrogates escaped (``\\n``, ``\\x1b``, ``\\udc80``).
    ``max_seconds`` / ``max_rss_bytes``: bounds of a whole ``svdguard inspect`` process
    (interpreter and torch included), None when the case is not a bomb.
    """

    filename: str
    exit_code: int
    shows: str
    max_seconds: float | None = None
    max_rss_bytes: int | None = None


#: A key crafted to forge a GitHub annotation if printed raw: a newline, then a command.
FORGED_ANNOTATION_KEY = "w\n::error file=README.md,line=1::forged"
#: A key that would colour a terminal red if printed raw.
ESCAPE_KEY = "\x1b[31mred"
#: Keys that Rich would parse as markup ("[/]" closes a style that was never opened).
MARKUP_KEYS = ("[/]", "[bold]x[/bold]")
#: A file name holding a newline and a carriage return.
NEWLINE_FILENAME = "name\nwith\rbreaks.npy"
#: Side of the time bomb: a stride-0 expanded square whose SVD is estimated at side³ / rate
#: = 8e12 / 1e9 = 8 000 s, above the default max_time of 600 s, and 4e8 elements, below
#: max_elements: skipped for time, from its header, before anything is allocated.
TIME_BOMB_SIDE = 20_000
#: Wall time a bomb may cost a whole inspect process (interpreter and torch import take
#: about 3 s of it on a shared 2-core machine): refused from its header, in milliseconds.
BOMB_PROCESS_SECONDS = 30.0
#: Peak memory a bomb may cost a whole inspect process: the interpreter with torch takes
#: about 0.4 GiB; the bombs here would need 14 GiB (time bomb, float64 working copy and
#: SVD buffers) to 1.5 TiB (expand bomb) if materialised.
BOMB_PROCESS_RSS = 2 * 2**30


def _seeded(rows: int, columns: int, seed: int) -> torch.Tensor:
    """A well-conditioned float32 matrix (no tied singular values: its row is clean)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, columns, generator=generator) + 4 * torch.eye(rows, columns)


def _make_sharded_with_bad_shard(path: Path) -> None:
    """A sharded checkpoint whose second shard is truncated: the first is still analysed."""
    from safetensors.torch import save_file

    path.mkdir(exist_ok=True)
    save_file({"good": _seeded(4, 4, 1)}, str(path / "model-00001-of-00002.safetensors"))
    save_file({"bad": _seeded(4, 4, 2)}, str(path / "model-00002-of-00002.safetensors"))
    bad = path / "model-00002-of-00002.safetensors"
    bad.write_bytes(bad.read_bytes()[:-8])
    weight_map = {
        "good": "model-00001-of-00002.safetensors",
        "bad": "model-00002-of-00002.safetensors",
    }
    (path / "model.safetensors.index.json").write_bytes(_index(weight_map))


def _npz_one_bad_member() -> bytes:
    good = _npy_of(_seeded(3, 3, 3).numpy())
    bad = bytearray(_npy_of(_seeded(3, 3, 4).numpy()))
    archive = bytearray(_npz_bytes({"good.npy": good, "bad.npy": bytes(bad)}))
    position = archive.find(bytes(bad)) + len(bad) - 4
    archive[position] ^= 0xFF  # the CRC-32 of "bad" no longer matches
    return bytes(archive)


def _npz_corrupt_vector_member() -> bytes:
    """A good matrix beside a corrupt integer vector: the vector is skipped, yet checked."""
    good = _npy_of(_seeded(3, 3, 13).numpy())
    ids = _npy_of(np.arange(5, dtype=np.int64))
    archive = bytearray(_npz_bytes({"w.npy": good, "ids.npy": ids}))
    archive[archive.find(ids) + len(ids) - 2] ^= 0xFF  # the CRC-32 of "ids" no longer matches
    return bytes(archive)


def _subnormal(dtype: type) -> bytes:
    """A rank-one matrix of the smallest subnormal: σ = (3·tiny, 0, 0)."""
    return _npy_of(np.full((3, 3), np.finfo(dtype).smallest_subnormal, dtype=dtype))


def _fp8_safetensors() -> bytes:
    from safetensors.torch import save

    values = _seeded(4, 4, 5)
    return save({"e4m3": values.to(torch.float8_e4m3fn), "e5m2": values.to(torch.float8_e5m2)})


def _make_links(path: Path) -> None:
    """A directory holding a good matrix, a dangling link and a link that loops."""
    path.mkdir(exist_ok=True)
    (path / "a.npy").write_bytes(_npy_of(_seeded(3, 3, 6).numpy()))
    for name, target in (("b.npy", "deleted.npy"), ("loop.npy", "loop.npy")):
        if not (path / name).is_symlink():
            (path / name).symlink_to(target)


def _cli_cases() -> list[tuple[CliCase, bytes | Callable[[Path], None]]]:
    eye = torch.eye(2)
    return [
        # Names and codes from the file: escaped in every format, never interpreted.
        (CliCase("cli_lone_surrogate_key.pt", 0, "w\\udc80"), lone_surrogate_key_pt()),
        (
            CliCase("cli_forged_annotation_key.pt", 0, "w\\n::error file=README.md"),
            _torch_bytes({FORGED_ANNOTATION_KEY: eye}),
        ),
        (
            CliCase("cli_escape_key.pt", 0, "\\x1b[31mred"),
            _torch_bytes({ESCAPE_KEY: _seeded(3, 3, 7)}),
        ),
        (
            CliCase("cli_markup_keys.pt", 0, "[bold]x[/bold]"),
            _torch_bytes({key: _seeded(3, 3, 8 + i) for i, key in enumerate(MARKUP_KEYS)}),
        ),
        (
            CliCase("[red]x.npy", 0, "svdguard inspect [red]x.npy"),
            _npy_of(_seeded(3, 3, 12).numpy()),
        ),
        (
            CliCase("cli_markup_dtype.npy", 2, "[/]"),
            npy_bytes("{'descr': '[/]', 'fortran_order': False, 'shape': (2, 2), }"),
        ),
        (
            CliCase(NEWLINE_FILENAME, 0, "name\\nwith\\rbreaks.npy"),
            _npy_of(_seeded(3, 3, 9).numpy()),
        ),
        # One bad unit never hides the others; a tensor reached twice is analysed once.
        (
            CliCase("cli_sharded_bad_shard", 2, "model-00002-of-00002.safetensors"),
            _make_sharded_with_bad_shard,
        ),
        (CliCase("cli_npz_one_bad_member.npz", 2, "CRC-32 mismatch"), _npz_one_bad_member()),
        (
            CliCase("cli_npz_corrupt_vector_member.npz", 2, "ids: failed (load): corrupt member"),
            _npz_corrupt_vector_member(),
        ),
        (CliCase("cli_links", 2, "dangling link"), _make_links),
        (
            CliCase("cli_tied_weights.pt", 0, "skipped alias: 1"),
            _torch_bytes({"embed": (tied := _seeded(5, 3, 10)), "head": tied}),
        ),
        # Numbers at the edges of the float types.
        (CliCase("cli_subnormal_float32.npy", 0, "rank-deficient"), _subnormal(np.float32)),
        (CliCase("cli_subnormal_float64.npy", 0, "rank-deficient"), _subnormal(np.float64)),
        (CliCase("cli_zero.npy", 0, "every entry is zero"), _npy_of(np.zeros((3, 4)))),
        (CliCase("cli_fp8.safetensors", 0, "float8_e5m2"), _fp8_safetensors()),
        (
            CliCase("cli_complex32.pt", 0, "complex32"),
            _torch_bytes({"c": _seeded(3, 3, 11).to(torch.complex64).to(torch.complex32)}),
        ),
        # Bombs: refused from the header, within a bounded time and memory.
        (
            CliCase("cli_time_bomb.pt", 0, "too-slow", BOMB_PROCESS_SECONDS, BOMB_PROCESS_RSS),
            expand_bomb_pt(TIME_BOMB_SIDE),
        ),
        (
            CliCase("cli_expand_bomb.pt", 0, "too-large", BOMB_PROCESS_SECONDS, BOMB_PROCESS_RSS),
            expand_bomb_pt(),
        ),
        (
            CliCase("cli_deflate_bomb.npz", 2, "w", BOMB_PROCESS_SECONDS, BOMB_PROCESS_RSS),
            deflate_bomb_npz(),
        ),
        (
            CliCase("cli_shared_dict_bomb.pt", 0, "a.a.a", BOMB_PROCESS_SECONDS, BOMB_PROCESS_RSS),
            shared_dict_pt(),
        ),
        (
            CliCase(
                "cli_deflated_pickle.pt", 2, "is compressed", BOMB_PROCESS_SECONDS, BOMB_PROCESS_RSS
            ),
            deflated_pickle_pt(),
        ),
    ]


def make_cli_corpus(directory: str | Path) -> list[CliCase]:
    """Write the command-line corpus into ``directory`` and return its manifest."""
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    manifest = []
    with warnings.catch_warnings():  # torch calls its complex32 support experimental
        warnings.simplefilter("ignore", UserWarning)
        cases = _cli_cases()
    for case, content in cases:
        target = directory / case.filename
        if callable(content):
            content(target)
        else:
            target.write_bytes(content)
        manifest.append(case)
    return manifest


def _make_unreadable_directory(path: Path) -> None:
    path.mkdir(exist_ok=True)
    (path / "notes.txt").write_text("no tensors here\n")
    (path / "config.json").write_text("{}\n")


def make_corpus(directory: str | Path) -> list[CorpusCase]:
    """Write every corpus file into ``directory`` (created if needed) and return the manifest."""
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    manifest = []
    for name, content, error, message in _cases(directory):
        target = directory / name
        if callable(content):
            content(target)
        else:
            target.write_bytes(content)
        manifest.append(CorpusCase(name, error, message))
    return manifest


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} DIRECTORY", file=sys.stderr)
        return 2
    for case in make_corpus(argv[1]):
        error = case.error.__name__ if case.error else "-"
        print(f"{case.filename}\t{error}\t{case.message}")
    for cli_case in make_cli_corpus(Path(argv[1]) / "cli"):
        print(f"cli/{cli_case.filename!r}\texit {cli_case.exit_code}\t{cli_case.shows!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
