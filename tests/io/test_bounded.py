"""Every file costs bounded time and memory: bombs in each format, aliases, links, odd dtypes.

Time bounds are generous (a loaded 2-core runner), each tens of times what the
bounded code takes and orders of magnitude below what the unbounded code took
(2**40 dict paths; 10,000 .npz members at 339 s). Memory bounds count Python
allocations (tracemalloc) against what the hostile file would make a naive
reader allocate.
"""

from __future__ import annotations

import io
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from corpus.make_corpus import (
    DEFLATE_BOMB_BYTES,
    SHARED_DICT_LEVELS,
    deflate_bomb_npz,
    deflated_pickle_pt,
    expand_bomb_pt,
    lone_surrogate_key_pt,
    shared_dict_pt,
)

from svdguard.errors import InputError, ResourceLimitError
from svdguard.io import FailedUnit, expand_inputs, iter_records, iter_units, read_tensor
from svdguard.io import limits as limits_module

#: Seconds a bomb may take to be listed (and refused): it takes milliseconds when bounded.
BOMB_SECONDS = 10.0
#: Python bytes a bomb's listing may allocate: a few headers, never the declared payload.
BOMB_MEMORY_BYTES = 4 * 2**20
#: .npz members for the many-members case, and the seconds to list and load them all
#: (measured about 3 s on one core; one zip re-read per member took 339 s).
MANY_MEMBERS = 10_000
MANY_MEMBERS_SECONDS = 60.0


def _measure(action):  # type: ignore[no-untyped-def]
    """(result or raised error, seconds, peak traced bytes) of ``action()``."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        outcome: object = action()
    except InputError as err:
        outcome = err
    finally:
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return outcome, elapsed, peak


def test_shared_dict_is_walked_once(tmp_path: Path) -> None:
    path = tmp_path / "shared.pt"
    path.write_bytes(shared_dict_pt())
    assert path.stat().st_size < 4096  # the bomb is small
    records, elapsed, peak = _measure(lambda: list(iter_records(path)))
    assert elapsed < BOMB_SECONDS and peak < BOMB_MEMORY_BYTES
    assert isinstance(records, list) and len(records) == 1
    (record,) = records
    assert record.key == "a." * SHARED_DICT_LEVELS + "w"
    assert torch.equal(record.load(), torch.arange(4.0).reshape(2, 2))


def test_cycle_is_walked_once(tmp_path: Path) -> None:
    state: dict[str, object] = {"w": torch.eye(2)}
    state["inner"] = {"back": state, "v": torch.ones(3)}
    torch.save(state, tmp_path / "cycle.pt")
    records = list(iter_records(tmp_path / "cycle.pt"))
    assert [record.key for record in records] == ["w", "inner.v"]


def test_aliases_are_named_not_reloaded(tmp_path: Path) -> None:
    """20,000 keys holding one tensor: one record owns it, the others name it in alias_of."""
    shared = torch.randn(8, 8, generator=torch.Generator().manual_seed(0))
    state = {f"layer{i}.weight": shared for i in range(20_000)}
    state["own"] = shared.clone()
    state["view"] = shared[:4]  # shares the storage, but another shape: not an alias
    torch.save(state, tmp_path / "tied.pt")
    records, elapsed, _ = _measure(lambda: list(iter_records(tmp_path / "tied.pt")))
    assert elapsed < BOMB_SECONDS
    assert isinstance(records, list)
    aliases = {record.key: record.alias_of for record in records}
    assert aliases["layer0.weight"] is None and aliases["own"] is None
    assert aliases["view"] is None
    assert all(aliases[f"layer{i}.weight"] == "layer0.weight" for i in range(1, 20_000))
    by_key = {record.key: record for record in records}
    assert torch.equal(by_key["layer19999.weight"].load(), shared)


def test_tied_weights_from_a_model(tmp_path: Path) -> None:
    embedding = torch.nn.Embedding(5, 3)
    head = torch.nn.Linear(3, 5, bias=False)
    head.weight = embedding.weight  # weight tying, as in language models
    model = torch.nn.ModuleDict({"embed": embedding, "head": head})
    torch.save(model.state_dict(), tmp_path / "lm.pt")
    records = {record.key: record for record in iter_records(tmp_path / "lm.pt")}
    assert records["embed.weight"].alias_of is None
    assert records["head.weight"].alias_of == "embed.weight"


def test_expand_bomb_is_judged_by_its_materialised_shape(tmp_path: Path) -> None:
    path = tmp_path / "expand.pt"
    path.write_bytes(expand_bomb_pt())
    assert path.stat().st_size < 4096
    (record,) = iter_records(path)
    assert record.numel == 100_000**2
    with pytest.raises(ResourceLimitError, match="10,000,000,000 elements"):
        record.load()


def test_memory_check_counts_the_working_copy_and_svd_buffers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 40,000² float32 expand: its payload (6.4 GB) fits in 16 GiB, its analysis does not.

    Analysis = payload (4 B) + float64 working copy (8 B) + LAPACK's input copy and the
    U, Vᴴ factors (3 × 8 B) per element: 36 B × 1.6e9 = 57.6 GB.
    """
    side = 40_000
    path = tmp_path / "expand40k.pt"
    path.write_bytes(expand_bomb_pt(side))
    (record,) = iter_records(path)
    memory = 16 * 2**30
    assert side * side * 4 < memory < side * side * (4 + 8 + 3 * 8)
    monkeypatch.setattr(limits_module, "memory_available", lambda: memory)
    with pytest.raises(ResourceLimitError, match=r"needs 53\.6 GiB but only 16\.0 GiB"):
        record.load()


def test_deflated_pickle_is_refused_before_inflating(tmp_path: Path) -> None:
    path = tmp_path / "deflated.pt"
    path.write_bytes(deflated_pickle_pt())
    assert path.stat().st_size < DEFLATE_BOMB_BYTES // 100
    outcome, elapsed, peak = _measure(lambda: list(iter_records(path)))
    assert isinstance(outcome, InputError), outcome
    assert "'archive/data.pkl' is compressed" in str(outcome)
    assert elapsed < BOMB_SECONDS and peak < BOMB_MEMORY_BYTES


def test_oversized_pickle_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.save({"w": torch.eye(2)}, tmp_path / "w.pt")
    monkeypatch.setattr("svdguard.io.torch_format.MAX_PICKLE_BYTES", 16)
    with pytest.raises(ResourceLimitError, match="data.pkl"):
        list(iter_records(tmp_path / "w.pt"))


def test_npz_deflate_bomb_is_never_inflated(tmp_path: Path) -> None:
    path = tmp_path / "bomb.npz"
    path.write_bytes(deflate_bomb_npz())
    assert path.stat().st_size < DEFLATE_BOMB_BYTES // 100  # deflate shrinks zeros ~1000×
    (unit,), elapsed, peak = _measure(lambda: list(iter_units(path)))
    assert isinstance(unit, FailedUnit) and unit.key == "w"
    assert "bytes more than its header declares" in str(unit.error)
    assert elapsed < BOMB_SECONDS and peak < BOMB_MEMORY_BYTES


def test_npz_member_lying_about_its_size_stops_at_the_bound(tmp_path: Path) -> None:
    """The central directory declares header + 8 float64 (192 B); the data inflates to 16 MiB."""
    bomb = bytearray(deflate_bomb_npz())
    declared = len(_npy_bytes(np.zeros(8)))
    # The uncompressed size sits at offset 24 of the (only) central directory entry.
    size_field = bytes(bomb).rfind(b"PK\x01\x02") + 24
    assert int.from_bytes(bomb[size_field : size_field + 4], "little") > declared
    bomb[size_field : size_field + 4] = declared.to_bytes(4, "little")
    path = tmp_path / "liar.npz"
    path.write_bytes(bytes(bomb))
    (unit,) = iter_units(path)
    assert not isinstance(unit, FailedUnit), unit  # its header and declared size agree
    outcome, elapsed, peak = _measure(unit.load)
    assert isinstance(outcome, InputError) and "more bytes than" in str(outcome)
    assert elapsed < BOMB_SECONDS and peak < BOMB_MEMORY_BYTES


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("compressed", [False, True])
def test_many_npz_members_in_one_pass(tmp_path: Path, compressed: bool) -> None:
    arrays = {f"m{i}": np.full((2, 2), float(i)) for i in range(MANY_MEMBERS)}
    path = tmp_path / "many.npz"
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    start = time.perf_counter()
    values = [float(record.load()[0, 0]) for record in iter_records(path)]
    assert time.perf_counter() - start < MANY_MEMBERS_SECONDS
    assert values == [float(i) for i in range(MANY_MEMBERS)]


# --- links ---------------------------------------------------------------------------------


def _links(directory: Path) -> None:
    np.save(directory / "a.npy", np.eye(2))
    np.save(directory / "c.npy", np.eye(3))
    (directory / "b.npy").symlink_to(directory / "deleted.npy")
    (directory / "loop1.npy").symlink_to(directory / "loop2.npy")
    (directory / "loop2.npy").symlink_to(directory / "loop1.npy")


@pytest.mark.parametrize("how", ["directory", "glob"])
def test_broken_links_become_per_path_failures(tmp_path: Path, how: str) -> None:
    _links(tmp_path)
    files = expand_inputs([tmp_path] if how == "directory" else [str(tmp_path / "*.npy")])
    assert [file.name for file in files] == ["a.npy", "b.npy", "c.npy", "loop1.npy", "loop2.npy"]
    outcome = {}
    for file in files:
        (unit,) = iter_units(file)
        outcome[file.name] = unit.error.message if isinstance(unit, FailedUnit) else unit.shape
    assert outcome["a.npy"] == (2, 2) and outcome["c.npy"] == (3, 3)
    assert "dangling link" in str(outcome["b.npy"])
    assert "loops" in str(outcome["loop1.npy"]) and "loops" in str(outcome["loop2.npy"])


def test_a_named_broken_link_fails_when_read_and_spares_the_others(tmp_path: Path) -> None:
    """A shell expands ``*.npy`` before svdguard runs: a broken link arrives named directly."""
    _links(tmp_path)
    named = [tmp_path / name for name in ("a.npy", "b.npy", "loop1.npy", "c.npy")]
    assert expand_inputs(named) == named
    units = [unit for file in named for unit in iter_units(file)]
    failed = [unit for unit in units if isinstance(unit, FailedUnit)]
    assert [unit.path.name for unit in failed] == ["b.npy", "loop1.npy"]
    assert "dangling link" in failed[0].error.message and "loops" in failed[1].error.message
    with pytest.raises(InputError, match="dangling link") as info:
        read_tensor(tmp_path / "b.npy")
    assert "b.npy" in str(info.value)
    with pytest.raises(InputError, match="no such file"):
        expand_inputs([tmp_path / "never-existed.npy"])  # not a link: a usage error at once


# --- dtypes and keys ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "dtype"), [("F8_E4M3", torch.float8_e4m3fn), ("F8_E5M2", torch.float8_e5m2)]
)
def test_fp8_safetensors_load_bitwise(tmp_path: Path, code: str, dtype: torch.dtype) -> None:
    from safetensors.torch import load_file, save_file

    values = torch.tensor([[1.0, -2.0], [0.5, 448.0 if code == "F8_E4M3" else 57344.0]])
    tensor = values.to(dtype)
    save_file({"w": tensor}, tmp_path / "fp8.safetensors")
    (record,) = iter_records(tmp_path / "fp8.safetensors")
    loaded = record.load()
    reference = load_file(tmp_path / "fp8.safetensors")["w"]
    assert loaded.dtype == dtype and record.dtype == str(dtype).removeprefix("torch.")
    assert torch.equal(loaded.view(torch.uint8), reference.view(torch.uint8))
    assert torch.equal(loaded.to(torch.float32), values)


def test_complex32_checkpoint_loads(tmp_path: Path) -> None:
    values = torch.tensor([[1 + 2j, -0.5j], [3.0, 0.25 + 0.25j]], dtype=torch.complex64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: "ComplexHalf support is experimental"
        half = values.to(torch.complex32)
    torch.save({"w": half}, tmp_path / "c32.pt")
    (record,) = iter_records(tmp_path / "c32.pt")
    assert record.dtype == "complex32"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = record.load()
    assert loaded.dtype == torch.complex32
    assert torch.equal(loaded.to(torch.complex64), values)


def test_lone_surrogate_key_never_raises_in_io(tmp_path: Path) -> None:
    key = "layer\udc80.weight"
    torch.save({key: torch.eye(2), "other": torch.ones(2, 2)}, tmp_path / "s.pt")
    records = {record.key: record for record in iter_records(tmp_path / "s.pt")}
    assert set(records) == {key, "other"}
    assert torch.equal(records[key].load(), torch.eye(2))
    assert records[key].display_name == f"s.pt[{key}]"
    with pytest.raises(InputError) as info:
        read_tensor(tmp_path / "s.pt", "missing")
    assert "missing" in str(info.value)  # str() of the message holding the key does not raise
    monkey = records[key]
    object.__setattr__(monkey, "max_elements", 1)
    with pytest.raises(ResourceLimitError) as limit:
        monkey.load()
    assert key in str(limit.value)
    (tmp_path / "corpus.pt").write_bytes(lone_surrogate_key_pt())
    (record,) = iter_records(tmp_path / "corpus.pt")
    assert record.key == "w\udc80" and torch.equal(record.load(), torch.eye(2))


# --- listing without torch ------------------------------------------------------------------

#: The io modules that list .npy/.npz/.safetensors files; torch is imported only to load.
LISTING_MODULES = (
    "dtypes",
    "limits",
    "npy",
    "npz",
    "paths",
    "readers",
    "records",
    "safetensors_format",
    "sharded",
    "strict_json",
)


def test_listing_modules_import_torch_lazily() -> None:
    """No module-level ``import torch`` in the listing path (type-only imports are fine)."""
    import ast

    package = Path(__file__).resolve().parents[2] / "svdguard" / "io"
    for name in LISTING_MODULES:
        tree = ast.parse((package / f"{name}.py").read_text(encoding="utf-8"))
        for node in tree.body:  # module level only; `if TYPE_CHECKING:` blocks are skipped
            if isinstance(node, ast.Import):
                assert all(alias.name.split(".")[0] != "torch" for alias in node.names), name
            elif isinstance(node, ast.ImportFrom) and node.module:
                assert node.module.split(".")[0] != "torch", name
                assert node.module not in ("svdguard.io.payload", "svdguard.io.torch_format"), name


def test_dotted_key_reached_twice_is_a_failed_unit(tmp_path: Path) -> None:
    torch.save({"a.b": torch.eye(2), "a": {"b": torch.ones(3, 3)}}, tmp_path / "clash.pt")
    units = list(iter_units(tmp_path / "clash.pt"))
    assert [unit.key for unit in units] == ["a.b", "a.b"]
    first, second = units
    assert not isinstance(first, FailedUnit) and torch.equal(first.load(), torch.eye(2))
    assert isinstance(second, FailedUnit) and "flatten to this dotted key" in str(second.error)


def test_records_import_no_reader() -> None:
    """records.py sits below the readers: no import of them, not even inside a function."""
    import ast

    source = Path(__file__).resolve().parents[2] / "svdguard" / "io" / "records.py"
    imported = {
        node.module
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom) and node.module
    }
    readers = {"svdguard.io.readers", "svdguard.io.npy", "svdguard.io.npz", "svdguard.io.sharded"}
    assert not imported & (readers | {"svdguard.io.safetensors_format"}), imported
