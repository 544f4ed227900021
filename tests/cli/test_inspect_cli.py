"""`svdguard inspect` through typer's CliRunner: formats, exit codes, schema, corpus, Ctrl-C."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from corpus.make_corpus import CorpusCase, make_corpus
from helpers import random_matrix, with_singular_values
from safetensors.torch import save_file
from typer.testing import CliRunner

import svdguard
from svdguard.app import formatting, inspection
from svdguard.app.report import SkippedTensor
from svdguard.cli.app import app
from svdguard.errors import ResourceLimitError, SvdguardError
from svdguard.io import expand_inputs, iter_records

SAMPLES = Path(__file__).resolve().parents[2] / "sample_data"
CHECKPOINT = SAMPLES / "checkpoint.safetensors"
SCHEMA = json.loads(
    (Path(svdguard.__file__).parent / "cli" / "inspect_schema.json").read_text(encoding="utf-8")
)
ANSI = re.compile(r"\x1b\[[0-9;]*m")
ANSI_COLOR = re.compile(r"\x1b\[[0-9;]*(3[0-7]|9[0-7]|38;[0-9;]+)m")


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, ["inspect", *args], env=env)


# --- a small JSON-schema validator (the subset inspect_schema.json uses) -------------------


NONFINITE_SPELLINGS = {"NaN", "Infinity", "-Infinity"}


def decode_nonfinite(value: Any) -> Any:
    """The JSON value with the strings "NaN"/"Infinity"/"-Infinity" read back as floats."""
    if isinstance(value, str) and value in NONFINITE_SPELLINGS:
        return float(value)
    if isinstance(value, dict):
        return {key: decode_nonfinite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [decode_nonfinite(item) for item in value]
    return value


def validate(value: Any, schema: dict[str, Any], where: str = "$") -> None:
    """Raise AssertionError naming the path of the first violation of ``schema``."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/$defs/")
        return validate(value, SCHEMA["$defs"][name], where)
    if "oneOf" in schema:
        passing = 0
        for option in schema["oneOf"]:
            try:
                validate(value, option, where)
                passing += 1
            except AssertionError:
                pass
        assert passing == 1, f"{where}: matches {passing} of the oneOf options: {value!r}"
        return None
    if "const" in schema:
        assert value == schema["const"], f"{where}: {value!r} != {schema['const']!r}"
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        checks = {
            "object": lambda v: isinstance(v, dict),
            "array": lambda v: isinstance(v, list),
            "string": lambda v: isinstance(v, str),
            "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            "boolean": lambda v: isinstance(v, bool),
            "null": lambda v: v is None,
        }
        assert any(checks[t](value) for t in types), f"{where}: {value!r} is not {types}"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and "minimum" in schema:
        assert value >= schema["minimum"], f"{where}: {value} < {schema['minimum']}"
    if isinstance(value, dict):
        for key in schema.get("required", []):
            assert key in value, f"{where}: missing {key!r}"
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in properties:
                validate(item, properties[key], f"{where}.{key}")
            elif extra is False:
                raise AssertionError(f"{where}: unexpected key {key!r}")
            elif isinstance(extra, dict):
                validate(item, extra, f"{where}.{key}")
    if isinstance(value, list):
        assert len(value) >= schema.get("minItems", 0), f"{where}: too few items"
        assert len(value) <= schema.get("maxItems", len(value)), f"{where}: too many items"
        for index, item in enumerate(value):
            if "items" in schema:
                validate(item, schema["items"], f"{where}[{index}]")
    return None


def test_validator_rejects_what_the_schema_forbids() -> None:
    document = json.loads(run(str(CHECKPOINT), "--format", "json").stdout)
    validate(document, SCHEMA)
    broken = json.loads(json.dumps(document))
    broken["rows"][0]["cond"] = "inf"  # only "NaN", "Infinity", "-Infinity" spell non-finite floats
    with pytest.raises(AssertionError):
        validate(broken, SCHEMA)
    broken = json.loads(json.dumps(document))
    del broken["summary"]["worst"]
    with pytest.raises(AssertionError):
        validate(broken, SCHEMA)


# --- the table --------------------------------------------------------------------------


def test_table_on_the_sample_shows_every_flag() -> None:
    result = run(str(CHECKPOINT))
    assert result.exit_code == 1
    out = result.stdout
    for flag in (
        "SG101 nonfinite",
        "SG301 tied",
        "rank-deficient",
        "ill-conditioned",
        "zero",
        "noise-floor",
    ):
        assert flag in out, flag
    assert "8×27 ← 8×3×3×3" in out  # the reshape of the conv kernel is stated
    # Routine skips are counted, not listed, unless asked.
    assert "skipped integer: 1; --show-excluded lists them" in out
    assert "position_ids" not in out
    listed = run(str(CHECKPOINT), "--show-excluded").stdout
    assert "skipped 1-d: 1" in listed and "  encoder.layer0.attention.bias" in listed
    assert "13 matrices: 1 error, 4 warning, 2 info, 6 clean" in out
    assert "→ exit 1 (--fail-on error)" in out
    assert result.stderr == ""  # no progress bar when stderr is not a terminal
    assert "\x1b[" not in out  # plain when stdout is not a terminal
    # Worst first: the error precedes every warning row.
    lines = [line for line in out.splitlines() if line.strip().startswith(("ERROR", "warning"))]
    assert [line.split()[0] for line in lines[:2]] == ["ERROR", "warning"]


def test_table_marks_unresolved_condition_numbers() -> None:
    args = (str(CHECKPOINT), "--include", "classifier.*", "--fail-on", "warning")
    exact = run(*args)
    assert exact.exit_code == 1 and "1.0e10" in exact.stdout and "ill-conditioned" in exact.stdout
    coarse = run(*args, "--precision", "float32")
    assert "≥" in coarse.stdout and "unresolved" in coarse.stdout
    assert "rerun with --precision float64" in coarse.stdout


@pytest.mark.parametrize(
    ("fail_on", "codes"),
    [
        ("error", {"mixed": 1, "warning": 0, "info": 0, "clean": 0}),
        ("warning", {"mixed": 1, "warning": 1, "info": 0, "clean": 0}),
        ("info", {"mixed": 1, "warning": 1, "info": 1, "clean": 0}),
        ("never", {"mixed": 0, "warning": 0, "info": 0, "clean": 0}),
    ],
)
def test_exit_codes_follow_fail_on(tmp_path: Path, fail_on: str, codes: dict[str, int]) -> None:
    files = {
        "mixed": CHECKPOINT,
        "warning": tmp_path / "warning.npy",
        "info": tmp_path / "info.safetensors",
        "clean": tmp_path / "clean.npy",
    }
    np.save(files["warning"], with_singular_values([1.0, 0.5, 1e-9], 3, 3, seed=1).numpy())
    eps_bf16 = torch.finfo(torch.bfloat16).eps
    info = with_singular_values([1.0, 0.6, 0.6 - eps_bf16 / 2, 0.2], 6, 4, seed=8)
    save_file({"w": info.to(torch.bfloat16)}, str(files["info"]))
    np.save(files["clean"], random_matrix(5, 4, seed=2).numpy())
    for name, path in files.items():
        result = run(str(path), "--fail-on", fail_on)
        assert result.exit_code == codes[name], (name, result.stdout)


# --- JSON, CSV, GitHub -------------------------------------------------------------------


def test_json_matches_schema_and_library() -> None:
    result = run(str(CHECKPOINT), str(SAMPLES / "sharded"), "--format", "json")
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    validate(document, SCHEMA)
    assert document["schema_version"] == 3 and document["exit_code"] == 1
    assert document["summary"]["matrices"] == 16 and document["summary"]["skipped"] == {
        "1-d": 2,
        "integer": 1,
    }
    # Python's float() reads the JSON spellings of NaN/±inf back.
    by_name = {row["name"]: decode_nonfinite(row) for row in document["rows"]}
    library = {
        r.name: r.to_dict()
        for r in svdguard.inspect([CHECKPOINT, SAMPLES / "sharded"])
        if not isinstance(r, SkippedTensor)
    }
    assert by_name == library  # the same data as the library hands on
    zero = document["rows"][
        [r["name"] for r in document["rows"]].index("checkpoint.safetensors[head.unused.weight]")
    ]
    assert zero["cond"] == "Infinity" and zero["rel_min_gap"] is None
    severities = [row["severity"] for row in document["rows"]]
    rank = {"error": 3, "warning": 2, "info": 1, None: 0}
    assert severities == sorted(severities, key=lambda s: -rank[s])  # worst first


def test_csv_carries_the_same_numbers() -> None:
    document = json.loads(run(str(CHECKPOINT), "--format", "json").stdout)
    result = run(str(CHECKPOINT), "--format", "csv")
    table = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(table) == len(document["rows"]) + len(document["skipped"])
    for row, expected in zip(table, document["rows"], strict=False):
        assert row["name"] == expected["name"]
        if isinstance(expected["cond"], float):
            assert float(row["cond"]) == expected["cond"]
        assert row["shape"] == "x".join(map(str, expected["shape"]))
    assert {r["kind"] for r in table} == {"matrix", "skipped"}


def test_github_annotations() -> None:
    result = run(str(CHECKPOINT), "--format", "github")
    lines = result.stdout.splitlines()
    annotations = [line for line in lines if line.startswith("::")]
    assert len(annotations) == 7  # one per finding of the sample
    levels = [line[2 : line.index(" ")] for line in annotations]
    assert levels == ["error"] * 1 + ["warning"] * 4 + ["notice"] * 2
    assert all(f"file={CHECKPOINT}," in line for line in annotations)
    assert "title=svdguard SG101 nonfinite::" in annotations[0]
    assert lines[-1].startswith("13 matrices:")


def test_github_escaping() -> None:
    from svdguard.cli.render_inspect import _escape_data, _escape_property

    assert _escape_data("50%\nnext") == "50%25%0Anext"
    assert _escape_property("a:b,c") == "a%3Ab%2Cc"


# --- output file, usage errors, Ctrl-C, colour ------------------------------------------------


def test_output_file_is_written_atomically_and_not_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    result = run(str(CHECKPOINT), "--format", "json", "--output", str(out))
    assert result.exit_code == 1 and result.stdout == ""
    assert "report written to" in result.stderr
    validate(json.loads(out.read_text(encoding="utf-8")), SCHEMA)
    again = run(str(CHECKPOINT), "--format", "json", "--output", str(out))
    assert again.exit_code == 2 and "exists" in again.stderr
    forced = run(str(CHECKPOINT), "-f", "csv", "--output", str(out), "--force")
    assert forced.exit_code == 1 and out.read_text(encoding="utf-8").startswith("kind,")
    copy = tmp_path / "copy.npy"
    np.save(copy, np.eye(2))
    onto_input = run(str(copy), "--output", str(copy), "--force")
    assert onto_input.exit_code == 2
    assert np.array_equal(np.load(copy), np.eye(2))  # the input is untouched


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_output_never_replaces_an_input_shard_or_a_device(tmp_path: Path, force: list[str]) -> None:
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    for shard in (SAMPLES / "sharded").iterdir():
        (sharded / shard.name).write_bytes(shard.read_bytes())
    index = sharded / "model.safetensors.index.json"
    shard = sharded / "model-00002-of-00002.safetensors"
    before = {p.name: p.read_bytes() for p in sharded.iterdir()}
    onto_shard = run(str(index), "--output", str(shard), *force)
    assert onto_shard.exit_code == 2
    assert (
        "refusing to overwrite the input" in onto_shard.stderr and str(shard) in onto_shard.stderr
    )
    assert "--force" not in onto_shard.stderr  # it would not help
    onto_index = run(str(sharded), "--output", str(index), *force)
    assert onto_index.exit_code == 2 and "refusing to overwrite the input" in onto_index.stderr
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "null-link"
    link.symlink_to(os.devnull)
    for target in (os.devnull, str(fifo), str(link)):
        result = run(str(CHECKPOINT), "--output", target, *force)
        assert result.exit_code == 2 and "is not a regular file" in result.stderr, target
        assert "--force" not in result.stderr
    assert {p.name: p.read_bytes() for p in sharded.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "null-link", "sharded"]


def test_output_dash_is_stdout(tmp_path: Path) -> None:
    result = run(str(CHECKPOINT), "--format", "json", "--output", "-")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["exit_code"] == 1
    assert not Path("-").exists()


def test_existing_output_message_suggests_force(tmp_path: Path) -> None:
    out = tmp_path / "report.txt"
    out.write_text("keep")
    result = run(str(CHECKPOINT), "--output", str(out))
    assert result.exit_code == 2
    assert f"{out}: the file exists; pass --force to overwrite" in result.stderr
    assert out.read_text() == "keep"


def test_disk_full_on_output_is_exit_2_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from svdguard.cli import inspect_cmd

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(inspect_cmd, "render", disk_full)
    out = tmp_path / "report.json"
    result = run(str(CHECKPOINT), "--format", "json", "--output", str(out))
    assert result.exit_code == 2, result.stderr
    assert f"{out}: cannot write: No space left on device" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_default_max_elements_is_the_library_default() -> None:
    from svdguard.cli import inspect_cmd
    from svdguard.io import DEFAULT_MAX_ELEMENTS

    assert inspect_cmd.DEFAULT_MAX_ELEMENTS == DEFAULT_MAX_ELEMENTS


def test_ctrl_c_exits_130_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "report.json"

    def interrupted(*args: object, **kwargs: object) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(formatting, "to_json", interrupted)  # Ctrl-C while writing the file
    result = run(str(CHECKPOINT), "--format", "json", "--output", str(out))
    assert result.exit_code == 130
    assert result.stderr.strip() == "svdguard: interrupted"
    assert list(tmp_path.iterdir()) == []  # neither the report nor its temporary file

    def interrupted_rows(*args: object, **kwargs: object):  # Ctrl-C during the SVDs
        yield from []
        raise KeyboardInterrupt

    monkeypatch.setattr(inspection, "inspect", interrupted_rows)
    result = run(str(CHECKPOINT))
    assert result.exit_code == 130 and result.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.safetensors"], "missing.safetensors"),
        ([str(CHECKPOINT), "--format", "xml"], "xml"),
        ([str(CHECKPOINT), "--fail-on", "sometimes"], "sometimes"),
        ([str(CHECKPOINT), "--max-cond", "-3"], "--max-cond must be above 1"),
        ([str(CHECKPOINT), "--gap-tol", "2"], "--gap-tol must lie in [0, 1)"),
        ([str(CHECKPOINT), "--ignore", "SG999"], "--ignore: unknown rule 'SG999'"),
        ([str(CHECKPOINT), "--select", "bogus"], "--select: unknown rule 'bogus'"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    result = run(*args)
    assert result.exit_code == 2
    assert message in result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message when CUDA is absent")
def test_cuda_requested_without_cuda() -> None:
    result = run(str(CHECKPOINT), "--device", "cuda")
    assert result.exit_code == 2 and "CUDA is not available" in result.stderr


def test_no_color_is_respected() -> None:
    colored = run(str(CHECKPOINT), env={"FORCE_COLOR": "1"})
    assert ANSI_COLOR.search(colored.stdout)
    plain = run(str(CHECKPOINT), env={"FORCE_COLOR": "1", "NO_COLOR": "1"})
    assert not ANSI_COLOR.search(plain.stdout)
    assert "tied" in plain.stdout


def test_table_report_file_is_plain(tmp_path: Path) -> None:
    out = tmp_path / "report.txt"
    result = run(str(CHECKPOINT), "--output", str(out), env={"FORCE_COLOR": "1"})
    assert result.exit_code == 1
    text = out.read_text(encoding="utf-8")
    assert "\x1b[" not in text and "encoder.layer2.orthogonal.weight" in text


def test_help_documents_flags_and_exit_codes() -> None:
    result = CliRunner().invoke(app, ["inspect", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = re.sub(r"-\s+", "-", " ".join(result.stdout.split()))  # undo wrapping at hyphens
    for needle in ("ill-conditioned", "rank-deficient", "noise-floor", "Exit codes: 0", "130"):
        assert needle in text, needle


# --- the malformed-file corpus ------------------------------------------------------------

with tempfile.TemporaryDirectory() as _scratch:
    CASES = make_corpus(_scratch)

#: Files that list fine but whose tensor is skipped before its payload is read: a string
#: array (unsupported-dtype). It is unusable all the same: exit 2, like a corrupt file. A
#: header declaring 10**12 elements that the file does not hold is corrupt (exit 2), not too
#: large; a stride-0 expanded tensor that materialises to 10**10 elements is too large
#: (a resource skip: exit 0).
SKIPPED_CASES = {"npy_unicode_dtype.npy"}


def io_stage(path: Path) -> str:
    """Where the io layer refuses ``path``: "expand", "list", "load-limit", "load" or "ok"."""
    try:
        files = expand_inputs([path])
    except SvdguardError:
        return "expand"
    try:
        records = [r for f in files for r in iter_records(f)]
    except SvdguardError:
        return "list"
    for record in records:
        try:
            record.load()
        except ResourceLimitError:
            return "load-limit"
        except SvdguardError:
            return "load"
    return "ok"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("corpus")
    make_corpus(directory)
    return directory


@pytest.mark.parametrize("case", CASES, ids=[case.filename for case in CASES])
def test_corpus_exit_codes(corpus: Path, case: CorpusCase) -> None:
    path = corpus / case.filename
    stage = io_stage(path)
    result = run(str(path))
    talk = result.stdout + result.stderr
    assert "Traceback" not in talk
    assert case.filename in talk  # the file is named
    if case.filename in SKIPPED_CASES:
        # Nothing analysed: exit 2, saying why.
        assert result.exit_code == 2 and "skipped" in talk and "no matrix analysed" in talk
    elif stage in ("expand", "list"):
        assert result.exit_code == 2, talk  # the file cannot be read: an input error
        # The row names the member or shard itself; the library's one-line error prefixes it.
        assert case.message.split(": ", 1)[-1] in talk
    elif stage == "load-limit":
        assert result.exit_code == 2 and "too-large" in talk and "no matrix analysed" in talk
    elif stage == "load":
        assert result.exit_code == 2, talk  # a corrupt or hostile payload: an input error
        assert case.message in talk and "failed" in talk
    elif case.filename == "nan_matrix.npy":
        assert result.exit_code == 1 and "nonfinite" in talk
    else:
        assert result.exit_code in (0, 1)


def test_narrow_console_hides_the_least_important_columns() -> None:
    terminal = {"TTY_COMPATIBLE": "1", "NO_COLOR": "1"}
    narrow = run(str(CHECKPOINT), env={"COLUMNS": "100", **terminal})
    wide = run(str(CHECKPOINT), env={"COLUMNS": "250", **terminal})
    assert narrow.exit_code == wide.exit_code == 1
    narrow_out, wide_out = ANSI.sub("", narrow.stdout), ANSI.sub("", wide.stdout)
    header = next(line for line in narrow_out.splitlines() if "matrix" in line)
    assert "κ₂" in header and "min gap" in header and "findings" in header
    assert "σ_min" not in header
    assert "columns hidden to fit 100 characters: σ_min" in narrow_out
    assert "columns hidden" not in wide_out
    assert "σ_min" in next(line for line in wide_out.splitlines() if "matrix" in line)
    assert all(len(line.rstrip()) <= 100 for line in narrow_out.splitlines()[:16])
    # Flags never wrap: every finding code stays on its row.
    assert "SG101 nonfinite" in narrow_out


def test_piped_table_never_wraps_or_cuts_names(tmp_path: Path) -> None:
    """Both commands share one console policy: without a terminal nothing is wrapped."""
    key = "encoder." + "very_long_module_name." * 8 + "weight"
    path = tmp_path / "long.safetensors"
    save_file({key: torch.eye(3)}, str(path))
    result = CliRunner().invoke(app, ["inspect", str(path)], env={"COLUMNS": None})
    assert result.exit_code == 0  # ties are info in the health profile
    assert any(key in line for line in result.stdout.splitlines()), result.stdout


def test_debug_reaches_the_command_through_the_context(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.npy")
    plain = CliRunner().invoke(app, ["inspect", missing])
    assert plain.exit_code == 2 and "Traceback" not in plain.stderr
    assert "no such file or directory" in plain.stderr
    debug = CliRunner().invoke(app, ["--debug", "inspect", missing])
    assert debug.exit_code == 2 and "Traceback" in debug.stderr
    assert "no such file or directory" in debug.stderr


def test_json_findings_keep_the_library_words_and_the_table_adds_flags(tmp_path: Path) -> None:
    path = tmp_path / "ill.npy"
    np.save(path, with_singular_values([1.0, 0.7, 1e-9], 3, 3, seed=5).numpy())
    document = json.loads(run(str(path), "--format", "json").stdout)
    (finding,) = document["rows"][0]["findings"]
    assert finding["flag"] == "ill-conditioned" and finding["parameter"] == "max_cond"
    assert "--" not in finding["message"]
    table = run(str(path)).stdout
    assert "(threshold: --max-cond)" in table


def test_inspect_leaves_the_garbage_collector_running(tmp_path):
    """The collector is paused only while the command's modules load."""
    import gc

    path = tmp_path / "w.npy"
    np.save(path, np.eye(3))
    assert gc.isenabled()
    result = CliRunner().invoke(app, ["inspect", str(path), "--format", "json"])
    assert result.exit_code in (0, 1), result.output
    assert gc.isenabled()
