"""The command-line corpus: every hostile file through `svdguard inspect`, in every format.

For each case: the exit code the corpus states, under every output format; the report
shows what the case names (strings from the file escaped, never interpreted); and the
output stays well formed: strict UTF-8, no control character but the line feed, JSON
that parses, CSV whose rows all have the header's columns, and GitHub annotations of
which every line is a command svdguard wrote. Bombs are then run as their own process,
whose wall time and peak memory are bounded.
"""

from __future__ import annotations

import csv
import io
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from corpus.make_corpus import CliCase, make_cli_corpus
from typer.testing import CliRunner

from svdguard.cli.app import app
from svdguard.cli.render_inspect import CSV_COLUMNS

with tempfile.TemporaryDirectory() as _scratch:
    CASES = make_cli_corpus(_scratch)

FORMATS = ("table", "json", "csv", "github")
#: Every C0/C1 control character but the line feed, and the lone surrogates: none may reach
#: the output raw (a carriage return would overwrite a line, ESC start a terminal sequence).
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
#: The line commands of GitHub's workflow syntax svdguard writes (anything else is the summary).
ANNOTATION = re.compile(r"^::(error|warning|notice) (file=[^,:]*,)?title=[^,:]*::")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("cli-corpus")
    make_cli_corpus(directory)
    return directory


def _inspect(path: Path, output_format: str) -> tuple[int, str, str]:
    # --allow-empty: a file whose only tensor is skipped for its size gives the exit code of
    # the file itself (a resource skip: 0), not that of an empty run.
    result = CliRunner().invoke(
        app, ["inspect", str(path), "--format", output_format, "--allow-empty"]
    )
    # Strict decoding: a lone surrogate or a broken byte in the output fails here.
    stdout = result.stdout_bytes.decode("utf-8")
    stderr = result.stderr_bytes.decode("utf-8")
    return result.exit_code, stdout, stderr


def _check_well_formed(output_format: str, stdout: str, stderr: str, case: CliCase) -> None:
    assert not RAW_CONTROL.search(stdout), repr(stdout)
    assert not RAW_CONTROL.search(stderr), repr(stderr)
    assert "Traceback" not in stdout + stderr
    if output_format == "json":
        document = json.loads(stdout)
        assert document["exit_code"] == case.exit_code
    elif output_format == "csv":
        table = list(csv.reader(io.StringIO(stdout)))
        assert table[0] == list(CSV_COLUMNS)
        assert len(table) > 1 and all(len(row) == len(CSV_COLUMNS) for row in table)
    elif output_format == "github":
        *commands, summary = stdout.splitlines()
        assert all(ANNOTATION.match(line) for line in commands), stdout
        assert not summary.startswith("::")
        assert "README.md" not in "".join(line.split("::", 2)[1] for line in commands)


def test_the_corpus_covers_every_hostile_class() -> None:
    names = {case.filename for case in CASES}
    assert len(names) == len(CASES) >= 20
    assert {case.exit_code for case in CASES} == {0, 2}
    assert sum(case.max_seconds is not None for case in CASES) >= 5


@pytest.mark.parametrize("case", CASES, ids=[repr(case.filename) for case in CASES])
def test_cli_corpus_case(corpus: Path, case: CliCase) -> None:
    path = corpus / case.filename
    for output_format in FORMATS:
        code, stdout, stderr = _inspect(path, output_format)
        assert code == case.exit_code, (output_format, stdout, stderr)
        _check_well_formed(output_format, stdout, stderr, case)
        if output_format == "table":
            assert case.shows in stdout, stdout
    if case.exit_code == 2:
        assert "could not be used" in stderr


def _process_cost(path: Path) -> tuple[int, float, int]:
    """Exit code, wall seconds and peak RSS (bytes) of `svdguard inspect PATH` as a process."""
    program = (
        "import resource, sys\n"
        "from svdguard.cli.app import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as stop:\n"
        "    code = stop.code\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    start = time.perf_counter()
    done = subprocess.run(
        [
            *(sys.executable, "-c", program, "inspect", str(path)),
            *("--format", "json", "--quiet", "--allow-empty"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    elapsed = time.perf_counter() - start
    peak_kib = int(done.stderr.strip().splitlines()[-1])  # ru_maxrss is in KiB on Linux
    return done.returncode, elapsed, peak_kib * 1024


BOMBS = [case for case in CASES if case.max_seconds is not None]


@pytest.mark.parametrize("case", BOMBS, ids=[case.filename for case in BOMBS])
def test_bomb_costs_bounded_time_and_memory(corpus: Path, case: CliCase) -> None:
    assert resource.RLIM_INFINITY is not None  # the resource module works on this platform
    code, elapsed, peak = _process_cost(corpus / case.filename)
    assert code == case.exit_code
    assert case.max_seconds is not None and case.max_rss_bytes is not None
    assert elapsed < case.max_seconds, elapsed
    assert peak < case.max_rss_bytes, peak
