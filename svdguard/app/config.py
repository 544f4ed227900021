"""Project settings of ``inspect``: the ``[tool.svdguard]`` table of a ``pyproject.toml``.

The file is the first ``pyproject.toml`` found in the working directory or a
parent of it (as ruff and pytest look for theirs). Every key mirrors a
command-line option; the command line wins over the file. Example::

    [tool.svdguard]
    profile = "health"
    ignore = ["SG401"]
    max-cond = 1e6
    per-tensor-ignores = {"*.position_embeddings.*" = ["SG201"]}

TOML is read with :mod:`tomllib` (Python 3.11+) or, on 3.10, the ``tomli``
package; without either, a file that has a ``[tool.svdguard]`` table is an
error that says so, and one without it is ignored. No rich, no typer.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from svdguard.errors import InputError

__all__ = ["CONFIG_KEYS", "ProjectConfig", "find_pyproject", "load_config"]

#: How far up from the working directory a pyproject.toml is looked for.
MAX_PARENTS = 64
#: Largest pyproject.toml read (a project file, not data).
MAX_CONFIG_BYTES = 1 << 20


def _string(where: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InputError(f"{where} must be a string, got {value!r}")
    return value


def _strings(where: str, value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(f"{where} must be a list of strings, got {value!r}")
    return list(value)


def _number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InputError(f"{where} must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise InputError(f'{where} must be a number ("inf" allowed), got {value!r}') from None
    if math.isnan(number):
        raise InputError(f"{where} must be a number, got {value!r}")
    return number


def _flag(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"{where} must be true or false, got {value!r}")
    return value


def _integer(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{where} must be a positive integer, got {value!r}")
    return value


def _per_tensor(where: str, value: Any) -> dict[str, list[str]]:
    if not isinstance(value, dict):
        raise InputError(f'{where} must be a table of glob = ["SG…"], got {value!r}')
    return {
        _string(where, glob): _strings(f"{where}[{glob!r}]", codes) for glob, codes in value.items()
    }


#: Every key the table may hold → how its value is read.
CONFIG_KEYS: dict[str, Callable[[str, Any], Any]] = {
    "profile": _string,
    "select": _strings,
    "extend-select": _strings,
    "ignore": _strings,
    "per-tensor-ignores": _per_tensor,
    "max-cond": _number,
    "gap-tol": _number,
    "fail-on": _string,
    "precision": _string,
    "include": _strings,
    "exclude": _strings,
    "include-optimizer": _flag,
    "batch": _strings,
    "threads": _integer,
}


@dataclass(frozen=True)
class ProjectConfig:
    """The settings of a ``[tool.svdguard]`` table (keys as written, values checked)."""

    path: Path | None = None
    values: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def where(self, key: str) -> str:
        """How a message names a key: ``pyproject.toml [tool.svdguard] max-cond``."""
        return f"{self.path} [tool.svdguard] {key}"


def find_pyproject(start: Path | None = None) -> Path | None:
    """The nearest ``pyproject.toml`` in ``start`` (the working directory) or its parents."""
    here = (start or Path.cwd()).absolute()
    for folder in [here, *here.parents][:MAX_PARENTS]:
        candidate = folder / "pyproject.toml"
        try:
            if candidate.is_file():
                return candidate
        except OSError:
            return None
    return None


def _toml_loads() -> Callable[[str], dict[str, Any]] | None:
    try:
        import tomllib

        return tomllib.loads
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli  # type: ignore[import-not-found,unused-ignore]

            return tomli.loads  # type: ignore[no-any-return,unused-ignore]
        except ModuleNotFoundError:
            return None


_TABLE = re.compile(r"^\s*\[\s*tool\s*\.\s*svdguard\s*[\].]", re.MULTILINE)


def load_config(path: str | os.PathLike[str] | None = None) -> ProjectConfig:
    """The ``[tool.svdguard]`` settings of ``path`` (default: the nearest pyproject.toml).

    No file, or a file without the table: empty settings. An unreadable file, invalid
    TOML, an unknown key or a value of the wrong type raises InputError naming the file
    and the key.
    """
    found = Path(path) if path is not None else find_pyproject()
    if found is None:
        return ProjectConfig()
    try:
        if found.stat().st_size > MAX_CONFIG_BYTES:
            raise InputError(f"larger than {MAX_CONFIG_BYTES:,} bytes", path=found)
        text = found.read_text(encoding="utf-8")
    except OSError as err:
        raise InputError(f"cannot read: {err.strerror or err}", path=found) from None
    except UnicodeDecodeError:
        raise InputError("is not UTF-8 text", path=found) from None
    if not _TABLE.search(text):
        return ProjectConfig()  # a project file without svdguard settings
    loads = _toml_loads()
    if loads is None:
        raise InputError(
            "has a [tool.svdguard] table, but reading TOML on Python < 3.11 needs the tomli "
            "package (pip install tomli)",
            path=found,
        )
    try:
        document = loads(text)
    except ValueError as err:  # tomllib.TOMLDecodeError is a ValueError
        raise InputError(f"is not valid TOML: {err}", path=found) from None
    table = document.get("tool", {}).get("svdguard", {})
    if not isinstance(table, dict):
        raise InputError("[tool.svdguard] must be a table", path=found)
    config = ProjectConfig(path=found)
    for key, value in table.items():
        reader = CONFIG_KEYS.get(key)
        if reader is None:
            raise InputError(
                f"{config.where(key)}: unknown key; known keys: {', '.join(CONFIG_KEYS)}"
            )
        config.values[key] = reader(config.where(key), value)
    return config
