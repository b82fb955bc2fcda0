"""The layout's rules, checked on the source (docs/architecture.md draws the map):

- every byte of SQL lives in runner/ledger/;
- a concrete dialect is chosen in one place, runner/dialect/__init__.py;
- no import cycle between flowrun's modules (imports inside functions count: a cycle there
  is still two modules that each need the other; imports only for type checking do not, nor
  a module importing its own package for a sibling);
- the CLI hands typed values to the commands, never `**options: Any`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

RUNNER = Path(__file__).resolve().parent.parent / "runner"
SQL = re.compile(r"\b(SELECT\s.+\sFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|CREATE\s+TABLE|PRAGMA)\b")


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(RUNNER.rglob("*.py")):
        parts = path.relative_to(RUNNER.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(name: str, path: Path) -> set[str]:
    """The runner modules `name` imports at run time (TYPE_CHECKING blocks left out)."""
    tree = ast.parse(path.read_text("utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(child) for child in ast.walk(node))
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                found.add(f"{base}.{alias.name}")
                found.add(base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    known = modules()
    return {target for target in found if target in known and target != name}


def test_no_sql_outside_the_ledger_package() -> None:
    offenders = []
    for name, path in modules().items():
        if name.startswith("runner.ledger"):
            continue
        text = path.read_text("utf-8")
        if "sqlite3" in text or SQL.search(text):
            offenders.append(name)
    assert offenders == []


def test_concrete_dialects_are_chosen_in_one_place() -> None:
    concrete = {"runner.dialect.cloud", "runner.dialect.onprem"}
    offenders = [
        name
        for name, path in modules().items()
        if name not in ("runner.dialect", *concrete) and imports(name, path) & concrete
    ]
    assert offenders == []


def test_no_import_cycles() -> None:
    # a module importing its own package (for a sibling) is not a cycle of ideas
    graph = {
        name: {t for t in imports(name, path) if not name.startswith(t + ".")}
        for name, path in modules().items()
    }
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append([*trail[trail.index(target) :], target])
            elif target not in state:
                visit(target, [*trail, target])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_the_cli_passes_typed_options() -> None:
    source = (RUNNER / "cli.py").read_text("utf-8")
    assert "**options" not in source
    assert ": Any" not in source
