"""The application object: root options and shell completion."""

from __future__ import annotations


def test_shell_completion_completes_command_names():
    """`svdguard --show-completion` is documented: completion must actually complete."""
    import os
    import subprocess
    import sys

    env = dict(
        os.environ, _SVDGUARD_COMPLETE="complete_bash", COMP_WORDS="svdguard ins", COMP_CWORD="1"
    )
    script = "import sys; sys.argv[0] = 'svdguard'; from svdguard.cli.app import main; main()"
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.stdout.split() == ["inspect"], result.stdout + result.stderr


def test_a_narrow_pipe_keeps_every_name_and_number_whole(tmp_path):
    """COLUMNS=80 in a pipe hides columns but never cuts a cell: lines overflow instead."""
    import os
    import subprocess
    import sys

    import torch
    from safetensors.torch import save_file

    key = "encoder.layer.11.attention.output.dense.weight"
    path = tmp_path / "model.safetensors"
    save_file({key: torch.eye(6) + 0.5 * torch.ones(6, 6)}, str(path))
    env = dict(os.environ, COLUMNS="80", NO_COLOR="1")
    result = subprocess.run(
        [sys.executable, "-m", "svdguard", "inspect", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    row = next(line for line in result.stdout.splitlines() if key in line)
    assert "…" not in row and "6×6" in row, result.stdout
