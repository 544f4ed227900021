"""Hostile conditions around the files: signals, a full disk, bad option values, exit codes.

The files themselves are in the command-line corpus (``test_hostile_corpus.py``); here
the commands meet Ctrl-C and SIGTERM in the middle of an SVD, a disk that fills up while
a report or a gradient is written, out-of-range options, and runs that mix good and bad
inputs.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import svdguard
from svdguard.app import inspection
from svdguard.cli.app import app
from svdguard.cli.inspect_cmd import DEFAULT_MAX_TIME
from svdguard.io.limits import DEFAULT_MAX_TIME as LIBRARY_MAX_TIME
from svdguard.linalg import spectrum_analysis

#: Side of the matrix interrupted mid-SVD: its float64 singular values take several seconds
#: on one core here (2500³ / ~3e9 per second), far longer than the interruption may take.
SIGNAL_SIDE = 2500
#: Seconds the process may take to exit after the signal: the main thread wakes every
#: POLL_SECONDS (0.05 s); the rest is interpreter exit on a shared machine.
EXIT_AFTER_SIGNAL_SECONDS = 2.0
#: Seconds the SVD is given to be under way after the command started (import and load).
SETTLE_SECONDS = 1.5


def invoke(*args: str | Path) -> object:
    return CliRunner().invoke(app, [str(arg) for arg in args])


def _matrix(rows: int, columns: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, columns))


# --- signals ---------------------------------------------------------------------------------


def _startup_seconds(tmp_path: Path) -> float:
    """How long `python -m svdguard` takes to reach a command here (interpreter and torch)."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import torch, svdguard.cli.app, svdguard.app.inspection"],
        check=True,
        cwd=tmp_path,
    )
    return time.perf_counter() - start


@pytest.fixture(scope="module")
def big_matrix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("signal") / "big.npy"
    np.save(path, _matrix(SIGNAL_SIDE, SIGNAL_SIDE, 0))
    return path


@pytest.mark.parametrize(
    ("command", "sent", "code"),
    [
        ("inspect", signal.SIGINT, 130),
        ("inspect", signal.SIGTERM, 143),
        ("grad", signal.SIGINT, 130),
        ("grad", signal.SIGTERM, 143),
    ],
)
def test_a_signal_ends_the_run_during_an_svd(
    big_matrix: Path, tmp_path: Path, command: str, sent: signal.Signals, code: int
) -> None:
    output = tmp_path / ("report.json" if command == "inspect" else "g.npz")
    args = [sys.executable, "-m", "svdguard", command, str(big_matrix), "-o", str(output)]
    if command == "inspect":
        args += ["--format", "json", "--device", "cpu"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    wait = _startup_seconds(tmp_path) + SETTLE_SECONDS
    process = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment
    )
    try:
        time.sleep(wait)
        assert process.poll() is None, "the SVD finished before the signal: use a larger matrix"
        sent_at = time.perf_counter()
        process.send_signal(sent)
        _, stderr = process.communicate(timeout=60)
        elapsed = time.perf_counter() - sent_at
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == code, stderr
    assert elapsed < EXIT_AFTER_SIGNAL_SECONDS, elapsed
    assert "Traceback" not in stderr
    assert stderr.strip() in ("svdguard: interrupted", "svdguard: terminated")
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temporary file


# --- a full disk --------------------------------------------------------------------------------


def _disk_full(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("command", ["inspect", "grad", "repair"])
def test_a_full_disk_is_exit_2_naming_the_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    source = tmp_path / "in" / "a.npy"
    source.parent.mkdir()
    np.save(source, np.diag([1.0, 1.0 + 1e-12, 0.5]))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    output = out_dir / {"inspect": "report.json", "grad": "g.npy", "repair": "fixed.npy"}[command]
    monkeypatch.setattr(os, "fsync", _disk_full)  # every atomic write syncs before its rename
    extra = {"inspect": ["--format", "json"], "grad": [], "repair": ["--max-cond", "10"]}[command]
    result = invoke(command, source, "-o", output, *extra)
    assert result.exit_code == 2, result.stderr  # type: ignore[attr-defined]
    stderr = result.stderr  # type: ignore[attr-defined]
    assert str(output) in stderr and "No space left on device" in stderr
    assert "Traceback" not in stderr
    assert list(out_dir.iterdir()) == []


# --- options ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["grad", "{m}", "--seed", "18446744073709551616"],
        ["grad", "{m}", "--seed", "-9223372036854775809"],
        ["grad", "{m}", "--eps", "inf"],
        ["grad", "{m}", "--eps", "nan"],
        ["grad", "{m}", "--eps", "-1"],
        ["inspect", "{m}", "--max-elements", "-5"],
        ["inspect", "{m}", "--max-elements", "0"],
        ["inspect", "{m}", "--max-time", "nan"],
        ["inspect", "{m}", "--max-time", "0"],
        ["inspect", "{m}", "--max-cond", "nan"],
        ["inspect", "{m}", "--gap-tol", "inf"],
    ],
)
def test_out_of_range_options_are_usage_errors(tmp_path: Path, args: list[str]) -> None:
    matrix = tmp_path / "m.npy"
    np.save(matrix, _matrix(3, 3, 1))
    result = invoke(*(arg.format(m=matrix) for arg in args))
    stderr = result.stderr  # type: ignore[attr-defined]
    assert result.exit_code == 2, stderr  # type: ignore[attr-defined]
    assert "Traceback" not in stderr and "internal error" not in stderr
    assert result.stdout == ""  # type: ignore[attr-defined]


def test_seed_range_is_torchs(tmp_path: Path) -> None:
    matrix = tmp_path / "m.npy"
    np.save(matrix, _matrix(3, 3, 1))
    for seed in (str(2**64 - 1), str(-(2**63))):
        assert invoke("grad", matrix, "--seed", seed).exit_code == 0  # type: ignore[attr-defined]


def test_grad_output_dash_is_refused_clearly(tmp_path: Path) -> None:
    matrix = tmp_path / "m.npy"
    np.save(matrix, _matrix(3, 3, 1))
    result = invoke("grad", matrix, "-o", "-")
    assert result.exit_code == 2  # type: ignore[attr-defined]
    assert "cannot go to stdout" in result.stderr  # type: ignore[attr-defined]
    assert not (Path.cwd() / "-").exists()


def test_max_time_default_is_the_librarys() -> None:
    assert DEFAULT_MAX_TIME == LIBRARY_MAX_TIME


# --- exit codes of runs that mix good and bad inputs -------------------------------------------


@pytest.mark.parametrize("fail_on", ["error", "warning", "info", "never"])
def test_a_corrupt_input_is_exit_2_under_every_fail_on(tmp_path: Path, fail_on: str) -> None:
    good = tmp_path / "good.npy"
    np.save(good, _matrix(4, 3, 2))
    corrupt = tmp_path / "corrupt.npy"
    corrupt.write_bytes(good.read_bytes()[:-8])  # the payload is truncated
    strings = tmp_path / "strings.npy"
    np.save(strings, np.array([["a", "b"], ["c", "d"]]))  # a 2-D array svdguard cannot use
    for bad in (corrupt, strings):
        result = invoke("inspect", good, bad, "--fail-on", fail_on, "--format", "json")
        assert result.exit_code == 2, result.stderr  # type: ignore[attr-defined]
        document = json.loads(result.stdout)  # type: ignore[attr-defined]
        assert document["exit_code"] == 2
        good_rows = [row for row in document["rows"] if row["name"] == "good.npy"]
        assert len(good_rows) == 1 and good_rows[0]["kind"] == "matrix"  # still analysed
        expected = np.linalg.svd(_matrix(4, 3, 2), compute_uv=False)
        assert good_rows[0]["sigma_max"] == pytest.approx(expected[0], rel=1e-12)


@pytest.mark.parametrize(
    ("args", "reason"),
    [(["--max-elements", "10"], "too-large"), (["--max-time", "1e-9"], "too-slow")],
)
def test_resource_skips_are_not_input_errors(tmp_path: Path, args: list[str], reason: str) -> None:
    path = tmp_path / "m.npy"
    np.save(path, _matrix(4, 4, 3))
    result = invoke("inspect", path, "--format", "json", "--allow-empty", *args)
    assert result.exit_code == 0, result.stderr  # type: ignore[attr-defined]
    (skipped,) = json.loads(result.stdout)["skipped"]  # type: ignore[attr-defined]
    assert skipped["reason"] == reason


def test_time_estimate_decides_before_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A matrix over --max-time is never loaded nor decomposed."""
    path = tmp_path / "m.npy"
    np.save(path, _matrix(300, 200, 4))
    calls: list[object] = []
    monkeypatch.setattr(inspection, "singular_values", lambda *a, **k: calls.append(a))
    # 300·200·200 = 1.2e7 units: 0.012 s at the conservative rate.
    result = invoke("inspect", path, "--max-time", "0.01", "--format", "json", "--allow-empty")
    assert result.exit_code == 0 and calls == []  # type: ignore[attr-defined]
    (skipped,) = json.loads(result.stdout)["skipped"]  # type: ignore[attr-defined]
    assert "0 s" in skipped["detail"] and "max_time" in skipped["detail"]


# --- one bad unit never hides the others ----------------------------------------------------------


@pytest.fixture
def sharded(tmp_path: Path) -> Path:
    good = torch.from_numpy(_matrix(4, 3, 5))
    save_file({"c": good}, str(tmp_path / "model-00001-of-00002.safetensors"))
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"\x08\x00\x00\x00garbage")
    index = tmp_path / "model.safetensors.index.json"
    weight_map = {
        "c": "model-00001-of-00002.safetensors",
        "d": "model-00002-of-00002.safetensors",
    }
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return index


def test_grad_key_reads_only_its_shard(sharded: Path) -> None:
    result = invoke("grad", sharded, "--key", "c", "--format", "json")
    assert result.exit_code == 0, result.stderr  # type: ignore[attr-defined]
    report = json.loads(result.stdout)  # type: ignore[attr-defined]
    assert report["key"] == "c"
    bad = invoke("grad", sharded, "--key", "d")
    assert bad.exit_code == 2  # type: ignore[attr-defined]
    assert "model-00002-of-00002.safetensors" in bad.stderr  # type: ignore[attr-defined]


def test_inspect_shows_the_good_shard_and_names_the_bad_one(sharded: Path) -> None:
    result = invoke("inspect", sharded, "--format", "json")
    assert result.exit_code == 2  # type: ignore[attr-defined]
    rows = {row["name"]: row for row in json.loads(result.stdout)["rows"]}  # type: ignore[attr-defined]
    assert rows["model-00001-of-00002.safetensors[c]"]["kind"] == "matrix"
    failed = rows["model-00002-of-00002.safetensors"]
    assert failed["kind"] == "failed" and failed["stage"] == "read"
    assert failed["path"].endswith("model-00002-of-00002.safetensors")


def test_an_alias_is_analysed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weight = torch.from_numpy(_matrix(6, 4, 6))
    torch.save({"embed.weight": weight, "head.weight": weight}, tmp_path / "tied.pt")
    decomposed: list[tuple[int, ...]] = []
    original = spectrum_analysis.singular_values

    def counting(matrix: torch.Tensor, **kwargs: object) -> object:
        decomposed.append(tuple(matrix.shape))
        return original(matrix, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(inspection, "singular_values", counting)
    result = invoke("inspect", tmp_path / "tied.pt", "--format", "json", "--device", "cpu")
    assert result.exit_code == 0, result.stderr  # type: ignore[attr-defined]
    document = json.loads(result.stdout)  # type: ignore[attr-defined]
    assert decomposed == [(6, 4)]
    assert [row["key"] for row in document["rows"]] == ["embed.weight"]
    (alias,) = document["skipped"]
    assert alias["key"] == "head.weight" and alias["reason"] == "alias"
    assert "embed.weight" in alias["detail"]


# --- numbers at the edges -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_subnormal_and_zero_matrices_give_their_rows(dtype: type) -> None:
    tiny = np.finfo(dtype).smallest_subnormal
    ones = np.ones((3, 3), dtype=dtype)
    report = svdguard.diagnose(torch.from_numpy(ones * tiny))
    # A rank-one matrix of equal entries: σ = (3·tiny, 0, 0), exactly representable.
    assert report.sigma_max == pytest.approx(3 * float(tiny), rel=1e-6)
    assert report.sigma_min == 0 and report.rank == 1 and report.cond == float("inf")
    zero = svdguard.diagnose(torch.zeros(3, 3, dtype=torch.from_numpy(ones).dtype))
    assert zero.rank == 0 and "zero" in zero.flags


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental:UserWarning")
@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.complex32])
def test_narrow_dtypes_work_in_their_compute_dtype(tmp_path: Path, dtype: torch.dtype) -> None:
    base = torch.from_numpy(_matrix(4, 4, 7)).float() + 4 * torch.eye(4)
    stored = base.to(torch.complex64).to(dtype) if dtype.is_complex else base.to(dtype)
    path = tmp_path / "narrow.pt"
    torch.save({"w": stored}, path)
    inspected = invoke("inspect", path, "--format", "json")
    assert inspected.exit_code == 0, inspected.stderr  # type: ignore[attr-defined]
    (row,) = json.loads(inspected.stdout)["rows"]  # type: ignore[attr-defined]
    wide = stored.to(torch.complex128 if dtype.is_complex else torch.float64).numpy()
    expected = np.linalg.svd(wide, compute_uv=False)
    assert row["sigma_max"] == pytest.approx(expected[0], rel=1e-12)
    assert row["sigma_min"] == pytest.approx(expected[-1], rel=1e-12)
    out = tmp_path / "g.npy"
    graded = invoke("grad", path, "-o", out)
    assert graded.exit_code == 0, graded.stderr  # type: ignore[attr-defined]
    gradient = np.load(out)
    assert gradient.dtype == (np.complex64 if dtype.is_complex else np.float32)
    assert np.isfinite(gradient).all()


# --- grad and repair print names from the file escaped too ------------------------------------

#: A key that would colour a terminal and forge an annotation line if printed raw.
HOSTILE_KEY = "w\x1b[31m\n::error file=README.md::forged"
#: Every C0/C1 control character but the line feed, and the lone surrogates.
RAW_CONTROL = "[\x00-\x09\x0b-\x1f\x7f-\x9f\ud800-\udfff]"


def _assert_clean(result: object) -> str:
    import re

    stdout = result.stdout_bytes.decode("utf-8")  # type: ignore[attr-defined]  # strict
    stderr = result.stderr_bytes.decode("utf-8")  # type: ignore[attr-defined]
    assert not re.search(RAW_CONTROL, stdout + stderr), repr(stdout + stderr)
    assert not any(line.startswith("::error") for line in (stdout + stderr).splitlines())
    return stdout


@pytest.mark.parametrize("output_format", ["table", "json"])
def test_grad_escapes_keys(tmp_path: Path, output_format: str) -> None:
    weight = torch.from_numpy(_matrix(3, 3, 8))
    torch.save({"w\udc80": weight}, tmp_path / "surrogate.pt")
    save_file({HOSTILE_KEY: weight}, str(tmp_path / "hostile.safetensors"))
    for path, key in (
        (tmp_path / "surrogate.pt", "w\\udc80"),
        (tmp_path / "hostile.safetensors", "w\\x1b[31m\\n::error"),
    ):
        result = invoke("grad", path, "--format", output_format)
        assert result.exit_code == 0, result.stderr  # type: ignore[attr-defined]
        stdout = _assert_clean(result)
        if output_format == "json":
            assert json.loads(stdout)["key"].startswith(key)
        else:
            assert key in stdout


def test_repair_escapes_keys(tmp_path: Path) -> None:
    ill = torch.diag(torch.tensor([1.0, 1e-9, 0.5]))
    save_file({HOSTILE_KEY: ill}, str(tmp_path / "hostile.safetensors"))
    result = invoke(
        "repair",
        tmp_path / "hostile.safetensors",
        "--max-cond",
        "10",
        "-o",
        tmp_path / "fixed.safetensors",
    )
    assert result.exit_code == 0, result.stderr  # type: ignore[attr-defined]
    assert "w\\x1b[31m\\n::error" in _assert_clean(result)


def test_a_file_name_that_is_not_utf8_is_escaped(tmp_path: Path) -> None:
    """Linux file names are bytes: b"\\xff" reaches Python as the lone surrogate "\\udcff"."""
    name = os.fsdecode(b"\xffweights.npy")
    np.save(tmp_path / name, _matrix(3, 3, 9))
    result = invoke("inspect", tmp_path / name, "--include", "\udcff*", "--format", "json")
    assert result.exit_code == 0, result.stderr  # type: ignore[attr-defined]
    document = json.loads(_assert_clean(result))
    assert document["rows"][0]["name"] == "\\udcffweights.npy"
    assert document["settings"]["include"] == ["\\udcff*"]
    assert document["settings"]["paths"][0].endswith("\\udcffweights.npy")


def test_csv_cells_that_look_like_formulas_are_quoted(tmp_path):
    """A key a spreadsheet would evaluate ("=HYPERLINK(...)") is written with a leading apostrophe."""
    import csv
    import io

    import torch
    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from svdguard.cli.app import app

    path = tmp_path / "formula.safetensors"
    save_file({'=HYPERLINK("http://x","y")': torch.eye(3) * 2 + torch.ones(3, 3)}, str(path))
    result = CliRunner().invoke(app, ["inspect", str(path), "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    keys = [row.get("key") or row.get("name") for row in rows]
    assert any(k is not None and k.startswith("'=HYPERLINK") for k in keys), keys
    assert not any(k is not None and k.startswith("=") for k in keys), keys
