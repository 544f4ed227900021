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
