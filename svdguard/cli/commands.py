"""Imports every command module so that each registers itself on the app."""

from svdguard.cli import (
    grad_cmd,  # noqa: F401
    inspect_cmd,  # noqa: F401
)
