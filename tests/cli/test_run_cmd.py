"""``svdguard run``: unmodified programs under the guard, their argv/path/exit status, the report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from svdguard.cli.run_cmd import CONTEXT_SETTINGS, main, render_report, run
from svdguard.guard_mode import CallSite, GuardReport

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "tests" / "scripts"


def python(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT, check=False
    )


# --- real programs ----------------------------------------------------------------------


def test_kabsch_training_is_nan_with_torch_and_converges_under_run():
    plain = python(str(SCRIPTS / "kabsch_train.py"))
    assert plain.returncode == 1
    assert plain.stdout.startswith("step 1:") and "not finite" in plain.stdout

    guarded = python("-m", "svdguard.cli.run_cmd", str(SCRIPTS / "kabsch_train.py"))
    assert guarded.returncode == 0, guarded.stderr
    final_loss = float(guarded.stdout.split("loss")[-1])
    assert final_loss < 1e-6
    # the report names the library line (bound at import time), not the training loop
    source = (SCRIPTS / "kabsch_align.py").read_text().splitlines()
    line = next(i for i, text in enumerate(source, 1) if "svd(" in text and "import" not in text)
    assert f"kabsch_align.py:{line}" in guarded.stderr
    assert "torch.linalg.svd: 100 calls, 100 backward" in guarded.stderr


def test_zca_whitening_from_an_isotropic_start_trains(capsys):
    status = main([str(SCRIPTS / "zca_whitening.py"), "40"])
    out = capsys.readouterr()
    assert status == 0, out.err
    first, last = (float(part.split()[-1]) for part in out.out.strip().split(","))
    assert last < first / 10
    assert "torch.linalg.eigh: 40 calls, 40 backward, 1 met ties/zeros, 1 NaN/inf" in out.err
    assert "1 backward pass met ties or zeros, 1 of them would be NaN/inf with torch" in out.err


def test_zca_whitening_without_the_guard_is_not_finite():
    plain = python(str(SCRIPTS / "zca_whitening.py"), "5")
    assert plain.returncode == 1 and "step 1:" in plain.stdout


# --- the program's environment ----------------------------------------------------------

PROBE = """\
import json, os, sys
print(json.dumps({"argv": sys.argv, "path0": sys.path[0], "name": __name__}))
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_argv_and_path_are_the_programs_own(tmp_path, capsys):
    import json

    script = write(tmp_path / "probe.py", PROBE)
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    assert main([str(script), "--lr", "0.1", "-m", "x"]) == 0
    seen = json.loads(capsys.readouterr().out)
    assert seen == {
        "argv": [str(script), "--lr", "0.1", "-m", "x"],
        "path0": str(tmp_path),
        "name": "__main__",
    }
    assert sys.argv == saved_argv and sys.path == saved_path


def test_module_mode(tmp_path, capsys, monkeypatch):
    import json

    write(tmp_path / "probe_module.py", PROBE)
    monkeypatch.chdir(tmp_path)
    assert main(["--method", "clamp", "-m", "probe_module", "a", "--b"]) == 0
    out = capsys.readouterr()
    seen = json.loads(out.out)
    assert seen["argv"] == [str(tmp_path / "probe_module.py"), "a", "--b"]
    assert seen["name"] == "__main__" and seen["path0"] == str(tmp_path)
    assert "method=clamp" in out.err


@pytest.mark.parametrize(
    "code, status, message",
    [("sys.exit(3)", 3, ""), ("sys.exit()", 0, ""), ("sys.exit('stopped')", 1, "stopped")],
)
def test_exit_status_is_the_programs(tmp_path, capsys, code, status, message):
    script = write(tmp_path / "stop.py", f"import sys\n{code}\n")
    assert main([str(script)]) == status
    assert message in capsys.readouterr().err


def test_an_uncaught_exception_shows_the_programs_traceback_and_exits_1(tmp_path, capsys):
    script = write(tmp_path / "boom.py", "def f():\n    raise ValueError('bad value')\n\nf()\n")
    assert main([str(script)]) == 1
    err = capsys.readouterr().err
    assert "ValueError: bad value" in err and f'File "{script}", line 2' in err
    assert "run_cmd.py" not in err and "runpy" not in err


def test_usage_errors_exit_2_with_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "missing.py")]) == 2
    assert "missing.py: no such file" in capsys.readouterr().err
    assert main(["-m", "no_such_module_here"]) == 2
    assert "no module named 'no_such_module_here'" in capsys.readouterr().err
    script = write(tmp_path / "ok.py", "")
    assert main(["--method", "bogus", str(script)]) == 2
    err = capsys.readouterr().err
    assert "--method" in err and "Traceback" not in err
    assert main([]) == 2


def test_stdin_and_stdout_are_the_programs(tmp_path):
    script = write(
        tmp_path / "upper.py", "import sys\nsys.stdout.write(sys.stdin.read().upper())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "svdguard.cli.run_cmd", str(script)],
        input="piped text\n",
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0
    assert done.stdout == "PIPED TEXT\n"  # the report went to stderr
    assert "no SVD or eigh call was made" in done.stderr


def test_quiet_prints_no_report(tmp_path, capsys):
    script = write(tmp_path / "ok.py", "print('hi')\n")
    assert main(["--quiet", str(script)]) == 0
    out = capsys.readouterr()
    assert out.out == "hi\n" and out.err == ""


# --- registration as a Typer command ----------------------------------------------------


def test_registered_like_the_main_app_passes_arguments_through(tmp_path):
    app = typer.Typer()
    app.command(name="run", context_settings=CONTEXT_SETTINGS)(run)

    @app.callback()
    def _root() -> None:
        pass

    script = write(tmp_path / "args.py", "import sys\nprint(sys.argv[1:])\nsys.exit(4)\n")
    result = CliRunner().invoke(app, ["run", str(script), "--method", "x", "-q"])
    assert result.exit_code == 4
    assert "['--method', 'x', '-q']" in result.output


# --- rendering --------------------------------------------------------------------------


def test_render_report():
    report = GuardReport(
        method="auto",
        sites=(
            CallSite("/somewhere/lib.py", 12, "torch.linalg.svd", 5, 4, 2, 1),
            CallSite("/somewhere/other.py", 7, "torch.linalg.eigh", 1, 0, 0, 0),
        ),
    )
    lines = render_report(report)
    assert lines[0] == (
        "svdguard run (method=auto): 6 SVD/eigh calls from 2 call sites; 2 backward passes "
        "met ties or zeros, 1 of them would be NaN/inf with torch"
    )
    assert lines[2].split()[1:4] == ["torch.linalg.eigh:", "1", "call,"]
    assert (
        lines[1].split()
        == "/somewhere/lib.py:12 torch.linalg.svd: 5 calls, 4 backward, 2 met ties/zeros, 1 NaN/inf with torch".split()
    )
    assert len(lines) == 3
    assert render_report(GuardReport("auto", ())) == [
        "svdguard run (method=auto): no SVD or eigh call was made"
    ]


def test_cli_spells_the_eigh_methods_of_the_library():
    from svdguard.cli import run_cmd
    from svdguard.linalg.eigh import EIGH_METHODS

    assert run_cmd.EIGH_METHODS == EIGH_METHODS
