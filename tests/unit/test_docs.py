"""The README and docs/ pages: links resolve, named files exist, the parameter table is whole.

Pure reading: no worker process is started.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from icelaunch import ElasticLauncher

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
README_MAX_LINES = 160

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", re.MULTILINE)
REPO_FILE_PREFIXES = ("examples/", "benchmarks/", "docs/", "tests/", "src/")
REPO_FILE_NAMES = ("Makefile", "constraints.txt", "pyproject.toml")


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _prose(text: str) -> str:
    """``text`` without fenced code blocks (headings and links there are not markdown)."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to ``-``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of ``page``, numbered as GitHub numbers repeated headings."""
    seen: dict[str, int] = {}
    found = set()
    for match in HEADING.finditer(_prose(page.read_text(encoding="utf-8"))):
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[str]:
    """The targets of every markdown link in ``page``'s prose."""
    prose = INLINE_CODE.sub("", _prose(page.read_text(encoding="utf-8")))
    return LINK.findall(prose)


def _is_external(target: str) -> bool:
    return re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) is not None


def test_there_are_docs_pages() -> None:
    assert len(PAGES) > 1, "no markdown pages under docs/"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in links(page):
        if _is_external(target):
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {_rel(dest)}")
    assert not broken, f"{_rel(page)} has broken links:\n" + "\n".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_named_repository_files_exist(page: Path) -> None:
    prose = _prose(page.read_text(encoding="utf-8"))
    named = {code.strip("`").strip() for code in INLINE_CODE.findall(prose)}
    paths = {
        name
        for name in named
        if name
        and " " not in name
        and (name.startswith(REPO_FILE_PREFIXES) or Path(name).name in REPO_FILE_NAMES)
    }
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"{_rel(page)} names files that do not exist: {missing}"


def _table_first_column(text: str, header: str) -> list[str]:
    """First-column cells of the table whose header row starts with ``header``."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.lstrip().startswith("|") and cells[0] == header:
            rows = []
            for row in lines[i + 2 :]:
                if not row.lstrip().startswith("|"):
                    break
                rows.append(row.strip().strip("|").split("|")[0].strip())
            return rows
    raise AssertionError(f"no table with a {header!r} column")


def test_parameter_table_lists_exactly_the_launcher_parameters() -> None:
    page = DOCS / "parameters.md"
    text = _prose(page.read_text(encoding="utf-8"))
    tables = sum(
        1
        for line in text.splitlines()
        if line.lstrip().startswith("|")
        and line.strip().strip("|").split("|")[0].strip() == "parameter"
    )
    assert tables == 1, f"docs/parameters.md has {tables} parameter tables, expected one"
    cells = _table_first_column(text, "parameter")
    signature = inspect.signature(ElasticLauncher.__freeze__)
    params = {name: p for name, p in signature.parameters.items() if name != "self"}
    documented = []
    for cell in cells:
        match = re.fullmatch(r"`(\w+)`( \(keyword only\))?", cell)
        assert match, f"docs/parameters.md: parameter cell {cell!r} is not `name`"
        name = match.group(1)
        documented.append(name)
        if match.group(2) and name in params:
            assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, (
                f"docs/parameters.md marks {name} keyword only; it is not"
            )
    assert documented == list(params), (
        "docs/parameters.md's table differs from ElasticLauncher.__freeze__: "
        f"missing {[p for p in params if p not in documented]}, "
        f"extra {[p for p in documented if p not in params]}, "
        f"table order {documented}"
    )


def test_readme_is_short() -> None:
    count = len(README.read_text(encoding="utf-8").splitlines())
    assert count <= README_MAX_LINES, f"README.md has {count} lines, at most {README_MAX_LINES}"


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=_rel)
def test_readme_links_every_docs_page(page: Path) -> None:
    linked = {
        (README.parent / target.partition("#")[0]).resolve()
        for target in links(README)
        if not _is_external(target) and target.partition("#")[0]
    }
    assert page.resolve() in linked, f"README.md does not link {_rel(page)}"


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        (
            "Code written for torchrun, Accelerate, Ignite, Fabric",
            "code-written-for-torchrun-accelerate-ignite-fabric",
        ),
        (
            "Interactive speed: relaunch, large data, cold start",
            "interactive-speed-relaunch-large-data-cold-start",
        ),
        ("PET_* variables", "pet_-variables"),
        ("The `Configurable` model", "the-configurable-model"),
    ],
)
def test_slug_follows_github(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor
