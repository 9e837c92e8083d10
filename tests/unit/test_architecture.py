"""The layers of docs/architecture.md hold: imports run down, rooms have faces, no cycles."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "icelaunch"

#: a room may import rooms of a lower level only (same level: only itself)
LEVELS = {
    "__init__": 9,
    "__main__": 9,
    "cli": 8,
    "_launcher": 7,
    "_config": 6,
    "_cluster": 6,
    "_preflight": 6,
    "_engine": 5,
    "_worker": 4,
    "_watching": 4,
    "_console": 3,
    "_diagnosis": 3,
    "_transfer": 3,
    "_placement": 3,
    "_spec": 2,
    "_devices": 1,
    "_errors": 1,
    "_hints": 1,
    "_loopback": 1,
    "_rundir": 1,
    "_torch_internals": 1,
}
FOLDERS = (
    "_console",
    "_diagnosis",
    "_engine",
    "_placement",
    "_transfer",
    "_watching",
    "_worker",
    "cli",
)


def _module_name(path: Path) -> str:
    parts = ["icelaunch", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _is_module(name: str) -> bool:
    relative = Path(*name.split(".")[1:])
    return (SRC / relative).with_suffix(".py").is_file() or (SRC / relative).is_dir()


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported icelaunch module, line, only for type checkers) of one source file."""
    tree = ast.parse(path.read_text())
    typing_only = _type_checking_lines(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            subs = [f"{node.module}.{a.name}" for a in node.names]
            names = [n if _is_module(n) else node.module for n in subs]
        else:
            continue
        for name in names:
            if name == "icelaunch" or name.startswith("icelaunch."):
                found.append((name, node.lineno, node.lineno in typing_only))
    return found


SOURCES = sorted(SRC.rglob("*.py"))


def _isort_key(name: str) -> tuple[int, str]:
    """ruff's order for ``__all__`` (RUF022): CONSTANTS, then Classes, then the rest."""
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)


def test_every_room_has_a_level() -> None:
    rooms = {_room(_module_name(p)) for p in SOURCES}
    assert rooms == set(LEVELS), "give a new room its level here and in docs/architecture.md"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_run_down(path: Path) -> None:
    module = _module_name(path)
    room = _room(module)
    wrong = []
    for name, line, _ in _imports(path):
        target = _room(name)
        if name == "icelaunch":
            continue  # the package itself (e.g. __version__): loaded before any room anyway
        if target != room and LEVELS[target] >= LEVELS[room]:
            wrong.append(f"line {line}: {room} (level {LEVELS[room]}) imports {name}")
    assert not wrong, f"{module} imports up or sideways:\n" + "\n".join(wrong)


def test_no_cycle_inside_a_room() -> None:
    """Between rooms the levels forbid cycles; inside one, run-time imports form none
    (imports of a package's own face and those only for type checkers do not count)."""
    graph: dict[str, set[str]] = {}
    for path in SOURCES:
        module = _module_name(path)
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        graph[module] = {
            name
            for name, _, typing_only in _imports(path)
            if not typing_only and _room(name) == _room(module) and name != package
        }

    def visit(node: str, trail: list[str]) -> None:
        if node in trail:
            raise AssertionError("import cycle: " + " -> ".join([*trail, node]))
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, [*trail, node])

    for start in sorted(graph):
        visit(start, [])


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_folder_has_a_face(folder: str) -> None:
    face = importlib.import_module(f"icelaunch.{folder}")
    assert face.__doc__ and "::" in face.__doc__, "draw the room's data flow in its docstring"
    names = face.__all__
    assert names == sorted(names, key=_isort_key), f"sort icelaunch.{folder}.__all__"
    for name in names:
        assert (
            hasattr(face, name)
            or name in getattr(face, "__annotations__", {})
            or (callable(getattr(face, "__getattr__", None)))
        ), f"icelaunch.{folder}.__all__ names {name}, which it lacks"


def test_the_architecture_page_names_every_room() -> None:
    page = (SRC.parents[1] / "docs" / "architecture.md").read_text()
    for room in LEVELS:
        if room not in ("__init__", "__main__"):
            assert room in page, f"docs/architecture.md does not place {room}"


def test_test_files_have_unique_names() -> None:
    """pytest imports test files by their base name (no packages): two tiers holding a
    test_x.py each fail the whole run at collection."""
    tests = SRC.parents[1] / "tests"
    names: dict[str, list[str]] = {}
    for path in tests.rglob("test_*.py"):
        names.setdefault(path.name, []).append(str(path.relative_to(tests)))
    clashes = {name: paths for name, paths in names.items() if len(paths) > 1}
    assert not clashes, f"rename one of each: {clashes}"


def test_every_test_file_sits_in_a_tier() -> None:
    """`make test` runs tests/unit, tests/launch and tests/system, in that order."""
    tests = SRC.parents[1] / "tests"
    loose = sorted(p.name for p in tests.glob("test_*.py"))
    assert not loose, f"move {loose} into tests/unit, tests/launch or tests/system"
    assert {p.name for p in tests.iterdir() if p.is_dir() and p.name != "__pycache__"} >= {
        "unit",
        "launch",
        "system",
    }
