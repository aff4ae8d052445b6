"""The documentation names only what the repository has.

Scanned: README.md and docs/*.md. What counts as a reference, and must resolve:

- a Markdown link `[text](target)` that is not a URL: the file or folder `target`, relative to the
  page that links, exists; a `#anchor` on a link to a Markdown page (or on the page itself) is one
  of that page's headings, slugged as GitHub does;
- an inline code span that is one path-like token (letters, digits, `_ . - /` only, so no
  placeholder such as `<key>` or glob such as `*.png`) and either starts with a top-level file or
  folder of the repository (`student/loss.py`, `experiments/specs/`) or contains a `/` and ends in
  .py, .md or .yaml: that path, relative to the repository root, exists. Bare names (`config.json`,
  `maps.zarr/`, `val/`) are files inside outputs (a run, a cache entry, a split), not repository
  paths. Under `data/`, which .gitignore ignores except the files it re-includes (`!/data/...`),
  only those re-included files are checked: every other `data/...` path is an output the code
  writes at run time;
- `python -m <module>` / `-m <module>` in inline code or a fenced block, for the repository's own
  packages: the module's file or package exists;
- `make <target>` in inline code or a fenced block: the Makefile defines the target.

And no file of the repository refers to the shared design or paper folder outside it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
PATH_TOKEN = re.compile(r"[A-Za-z0-9_.\-/]+")
MODULE = re.compile(r"(?:^|\s)-m[ \t]+([A-Za-z_][\w.]*)")
MAKE_TARGET = re.compile(r"\bmake[ \t]+([a-z][a-z-]*)\b")
SKIPPED_DIRS = {".git", ".venv", "data", "build", "__pycache__", ".pytest_cache", ".ruff_cache"}


def top_level_names() -> set[str]:
    return {name for name in os.listdir(REPO) if name not in {".git", ".venv"}}


def data_files_kept_by_git() -> set[str]:
    """The `data/` files .gitignore re-includes; every other data/ path is a run-time output."""
    lines = (REPO / ".gitignore").read_text().splitlines()
    return {line[2:] for line in lines if line.startswith("!/data/")}


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(m) for m in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, re.M)}


def prose(page: Path) -> str:
    return FENCE.sub("", page.read_text())


def code_text(page: Path) -> str:
    """Inline code spans and fenced blocks: where commands are written."""
    text = page.read_text()
    fenced = "\n".join(FENCE.findall(text))
    return fenced + "\n" + "\n".join(CODE_SPAN.findall(prose(page)))


def repository_path(token: str) -> str | None:
    """The repository path a code span names, or None when it names no repository path."""
    if not PATH_TOKEN.fullmatch(token) or token.startswith("/"):
        return None
    first = token.split("/")[0]
    if first == "data" and token.strip("/") != "data":
        return token if token in data_files_kept_by_git() else None
    if first in top_level_names():
        return token
    if "/" in token and token.endswith((".py", ".md", ".yaml")):
        return token
    return None


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_links_resolve(page: Path) -> None:
    broken = []
    for target in LINK.findall(prose(page)):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{page.name}: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_named_paths_exist(page: Path) -> None:
    named = {repository_path(span) for span in CODE_SPAN.findall(prose(page))} - {None}
    missing = sorted(path for path in named if not (REPO / path).exists())
    assert not missing, f"{page.name} names paths the repository does not have: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_named_modules_and_make_targets_exist(page: Path) -> None:
    code = code_text(page)
    packages = {p.name for p in REPO.iterdir() if (p / "__init__.py").exists()}
    missing = []
    for module in set(MODULE.findall(code)):
        parts = module.split(".")
        if parts[0] not in packages:
            continue  # pytest, venv, pip: not this repository's
        base = REPO.joinpath(*parts)
        if not (base.with_suffix(".py").exists() or (base / "__init__.py").exists()):
            missing.append(f"-m {module}")
    makefile = (REPO / "Makefile").read_text()
    for target in set(MAKE_TARGET.findall(code)):
        if not re.search(rf"^{re.escape(target)}:", makefile, re.M):
            missing.append(f"make {target}")
    assert not missing, f"{page.name}: {sorted(missing)}"


def test_every_page_is_linked_from_the_readme() -> None:
    readme_links = set(LINK.findall(prose(REPO / "README.md")))
    unlinked = [p.name for p in PAGES[1:] if f"docs/{p.name}" not in readme_links]
    assert not unlinked, f"docs pages the README's Documentation list misses: {unlinked}"


def test_no_reference_outside_the_repository() -> None:
    """The design and the paper live in docs/ and arXiv:2509.18733, not in a sibling folder."""
    # Spelled in pieces so that this file does not match itself (nor a grep for the same words).
    outside = re.compile(r"\.\./" + "shared|" + "DES" + r"IGN(\.md| \d)")
    hits = []
    for folder, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS and not d.endswith(".egg-info")]
        for name in files:
            path = Path(folder) / name
            if path.suffix not in {".py", ".md", ".yaml", ".json", ".toml", ""}:
                continue
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if outside.search(line):
                    hits.append(f"{path.relative_to(REPO)}:{number}")
    for kept in data_files_kept_by_git():
        if outside.search((REPO / kept).read_text()):
            hits.append(kept)
    assert not hits, f"references to files outside the repository: {hits}"
