"""Loaders and writers of matrices and checkpoints; lazy, and never import rich/typer.

Reading: :func:`expand_inputs` turns command-line paths into files,
:func:`iter_records` lists a file's tensors from its header
(:class:`TensorRecord`), :func:`iter_units` also yields the parts that could
not be listed (:class:`FailedUnit`), ``record.load()`` reads one tensor;
:func:`read_tensor` / :func:`read_tensors` are the one-call forms. Writing:
:func:`write_tensor` and :func:`atomic_output`. Limits: see
:mod:`svdguard.io.limits`; what a hostile file can and cannot do:
``docs/safety.md``.
"""

from svdguard.io.limits import DEFAULT_MAX_ELEMENTS
from svdguard.io.paths import expand_inputs
from svdguard.io.readers import (
    SUPPORTED_SUFFIXES,
    failure_error,
    find_record,
    iter_records,
    iter_units,
    read_tensor,
    read_tensors,
)
from svdguard.io.records import FailedUnit, TensorRecord
from svdguard.io.writers import WRITABLE_SUFFIXES, atomic_output, write_tensor

__all__ = [
    "DEFAULT_MAX_ELEMENTS",
    "FailedUnit",
    "SUPPORTED_SUFFIXES",
    "WRITABLE_SUFFIXES",
    "TensorRecord",
    "atomic_output",
    "expand_inputs",
    "failure_error",
    "find_record",
    "iter_records",
    "iter_units",
    "read_tensor",
    "read_tensors",
    "write_tensor",
]
