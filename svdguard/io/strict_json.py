"""JSON as the safetensors library (serde_json) reads it, with one readable error per oddity.

Python's ``json`` module is looser than the Rust reader behind
``safetensors.safe_open``: it accepts ``NaN``/``Infinity`` literals, keeps the
last of duplicate keys, builds strings holding lone UTF-16 surrogates
(``"\\ud800"``), and raises ``ValueError`` (not ``JSONDecodeError``) for an
integer of more than 4300 digits. :func:`parse_json` refuses all of these
with :class:`JsonProblem`, whose message says what is wrong; the callers add
the file's name. Duplicate keys are refused although ``safe_open`` keeps the
last: which of two tensors a name means is not something to guess.
"""

from __future__ import annotations

import json
from collections.abc import Iterable


class JsonProblem(Exception):
    """What is wrong with a JSON document (the message names the offending item)."""


def _no_duplicates(pairs: Iterable[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise JsonProblem(f"the key {ascii(key)} appears twice in one object")
        result[key] = value
    return result


def _no_constants(name: str) -> object:
    raise JsonProblem(f"{name} is not a JSON value (only finite numbers are)")


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _check_strings(value: object) -> None:
    """Refuse a string (key or value) holding a lone surrogate, anywhere in the document."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _has_lone_surrogate(item):
                raise JsonProblem(
                    f"the string {ascii(item)[:60]} holds a lone UTF-16 surrogate escape, "
                    "which is not valid Unicode"
                )
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def parse_json(raw: bytes) -> object:
    """The document in ``raw`` (UTF-8 JSON); JsonProblem for anything serde_json refuses."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise JsonProblem(f"not valid UTF-8 (byte {err.start})") from None
    try:
        document = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except json.JSONDecodeError as err:
        raise JsonProblem(
            f"not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
        ) from None
    except RecursionError:
        raise JsonProblem("nested too deeply to be parsed") from None
    except ValueError as err:  # e.g. "Exceeds the limit (4300 digits) for integer string ..."
        raise JsonProblem(f"holds a number Python refuses to read ({str(err)[:80]})") from None
    _check_strings(document)
    return document
