"""The documentation holds together: links resolve, examples run, the README stays a front door.

Links are checked the way GitHub renders them: a relative link must name an existing
file, and a ``#fragment`` must be the slug of a heading in the target file (lower-cased,
punctuation removed, spaces turned into hyphens, ``-1``, ``-2`` … appended to repeats).
"""

from __future__ import annotations

import doctest
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]

#: The README is the front door (what, two commands, a tour, exit codes, links); reference
#: material belongs in docs/. 15 KiB is about four screens of text: past that it has
#: turned back into a manual.
README_MAX_BYTES = 15 * 1024

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_INLINE_CODE = re.compile(r"`[^`]*`")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def prose_lines(text: str) -> list[str]:
    """The lines of a Markdown text outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def heading_text(raw: str) -> str:
    """A heading as rendered: code spans keep their text, links their label, emphasis goes."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", raw)
    return text.replace("`", "").replace("*", "")


def github_slug(text: str) -> str:
    """GitHub's anchor for a heading: lower case, keep word characters, spaces and hyphens."""
    kept = "".join(ch for ch in text.strip().lower() if ch.isalnum() or ch in " -_")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, repeats numbered as GitHub does."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose_lines(path.read_text(encoding="utf-8")):
        match = _HEADING.match(line)
        if not match:
            continue
        slug = github_slug(heading_text(match.group(2)))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def relative_links(path: Path) -> list[str]:
    """Targets of the inline links of a Markdown file that point inside the repository."""
    targets = []
    for line in prose_lines(path.read_text(encoding="utf-8")):
        for target in _LINK.findall(_INLINE_CODE.sub("", line)):
            if not _SCHEME.match(target):
                targets.append(target)
    return targets


def test_slugs_follow_github():
    assert github_slug("Gaps, following LAPACK's xDISNA") == "gaps-following-lapacks-xdisna"
    assert (
        github_slug(heading_text("`svdguard inspect`: find them")) == "svdguard-inspect-find-them"
    )
    assert github_slug("Daleckii–Krein for the SVD") == "daleckiikrein-for-the-svd"


def test_relative_links_are_found_outside_code_only():
    sample = DOCS / "index.md"
    links = relative_links(sample)
    assert "backward.md" in links and "../README.md" in links


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path):
    broken = []
    for target in relative_links(page):
        file_part, _, fragment = target.partition("#")
        destination = (page.parent / file_part).resolve() if file_part else page
        if not destination.exists():
            broken.append(f"{target}: no such file")
        elif fragment and destination.suffix == ".md" and fragment not in anchors(destination):
            broken.append(f"{target}: no heading with anchor #{fragment}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_readme_links_into_docs():
    """The front door leads to the map of the docs and, through it, to every page."""
    links = {target.partition("#")[0] for target in relative_links(README)}
    assert "docs/index.md" in links
    for topic in ("backward", "stabilizers", "matrix-functions", "diagnostics", "cli"):
        assert f"docs/{topic}.md" in links


def test_every_docs_page_is_listed_in_the_index():
    listed = {target.partition("#")[0] for target in relative_links(DOCS / "index.md")}
    pages = {p.name for p in DOCS.glob("*.md")} - {"index.md"}
    assert pages <= listed, f"docs/index.md does not list {sorted(pages - listed)}"


def test_readme_is_a_front_door_not_a_manual():
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes (limit {README_MAX_BYTES})"


DOCTESTED = [p for p in sorted(DOCS.glob("*.md")) if ">>> " in p.read_text(encoding="utf-8")]


@pytest.mark.parametrize("page", DOCTESTED, ids=lambda p: p.name)
def test_docs_examples_run_as_written(page: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(ROOT)  # examples name files as the README's commands do
    result = doctest.testfile(
        str(page),
        module_relative=False,
        optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS,
    )
    assert result.attempted > 0
    assert result.failed == 0


def test_nothing_cites_a_file_outside_the_repository():
    needle = "MATH" + ".md"  # spelled in two pieces so that this file does not match itself
    files = [README, *DOCS.rglob("*")]
    for folder in ("svdguard", "tests", "benchmarks"):
        files += (ROOT / folder).rglob("*")
    citing = []
    for path in files:
        if path.is_file() and path.suffix in {".py", ".md", ".json", ".txt", ".toml"}:
            if needle in path.read_text(encoding="utf-8", errors="replace"):
                citing.append(str(path.relative_to(ROOT)))
    assert not citing, f"cite {needle}, which is not part of the repository: {citing}"


#: Pages whose ``$ svdguard …`` examples run on the bundled sample data.
CLI_EXAMPLE_PAGES = [README, DOCS / "cli.md"]


def cli_examples(path: Path) -> list[tuple[str, list[str]]]:
    """(command, shown output lines) for every ``$ svdguard`` line inside a code block."""
    examples: list[tuple[str, list[str]]] = []
    fenced = False
    current: list[str] | None = None  # the output lines of the command being read
    for line in path.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            fenced, current = not fenced, None
        elif fenced and line.startswith("$ "):
            current = []
            examples.append((line[2:], current))
        elif current is not None and line.strip():
            current.append(line.rstrip())
    return [(cmd, out) for cmd, out in examples if cmd.startswith("svdguard ")]


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        pytest.param(c, o, id=f"{p.name}: {c}")
        for p in CLI_EXAMPLE_PAGES
        for c, o in cli_examples(p)
    ],
)
def test_cli_examples_print_what_the_docs_show(command: str, shown: list[str], tmp_path: Path):
    """Every line a page shows (``...`` elides lines) is printed by the command it shows."""
    shutil.copytree(ROOT / "sample_data", tmp_path / "sample_data")
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "FORCE_COLOR")}
    env.update(NO_COLOR="1", PYTHONPATH=str(ROOT), TERM="dumb")
    result = subprocess.run(
        [sys.executable, "-m", "svdguard", *shlex.split(command)[1:]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=300,
    )
    printed = {line.rstrip() for line in (result.stdout + result.stderr).splitlines()}
    missing = [line for line in shown if line != "..." and line not in printed]
    assert not missing, f"`{command}` (exit {result.returncode}) does not print: {missing}"


def test_docstring_pointers_into_docs_resolve():
    """Every ``docs/<page>.md`` a module cites exists (and so does its ``#anchor``, if any)."""
    import re

    pattern = re.compile(r"docs/([a-z0-9-]+\.md)(#[a-z0-9-]+)?")
    broken = []
    for path in (ROOT / "svdguard").rglob("*.py"):
        for page, anchor in pattern.findall(path.read_text(encoding="utf-8")):
            target = DOCS / page
            if not target.is_file():
                broken.append(f"{path.relative_to(ROOT)}: docs/{page}")
            elif anchor and anchor[1:] not in anchors(target):
                broken.append(f"{path.relative_to(ROOT)}: docs/{page}{anchor}")
    assert not broken, broken
