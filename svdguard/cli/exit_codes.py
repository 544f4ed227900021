"""Exit codes of every svdguard command (documented in ``--help`` and the README)."""

__all__ = ["EPILOG", "FINDINGS", "INTERNAL", "INTERRUPTED", "OK", "TERMINATED", "USAGE"]

OK = 0  #: nothing at or above the ``--fail-on`` level
FINDINGS = 1  #: findings at or above the ``--fail-on`` level
USAGE = 2  #: bad arguments, or an input file that cannot be used
INTERNAL = 3  #: an unexpected error inside svdguard (a bug: please report it with --debug output)
INTERRUPTED = 130  #: interrupted by Ctrl-C (128 + SIGINT)
TERMINATED = 143  #: ended by SIGTERM (128 + SIGTERM)

EPILOG = (
    "Exit codes: 0 clean; 1 findings at or above --fail-on; 2 usage or input error; "
    "3 internal error; 130 interrupted; 143 terminated."
)
