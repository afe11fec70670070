"""The package layering: which package may import which, stated once and checked on every module.

Read top to bottom, the table is the architecture's data flow (ARCHITECTURE.md): the fact model
and the root package's contracts are leaves; terminology sits on them; connectors, the store,
the rule language and the engine each sit on those and know nothing of one another; the rule
tests and the command line sit on top. Every import counts, including those inside functions:
a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "vigie"

# Unit of layering -> the units it may import (besides itself). A module belongs to the longest
# unit that prefixes its name; ``vigie`` alone is the root package's own modules (settings,
# errors, the IR schema).
ALLOWED: dict[str, frozenset[str]] = {
    "vigie": frozenset(),
    "vigie.facts": frozenset(),
    "vigie.terminology": frozenset({"vigie"}),
    "vigie.connectors": frozenset({"vigie", "vigie.facts", "vigie.terminology"}),
    "vigie.store": frozenset({"vigie", "vigie.facts"}),
    "vigie.rules": frozenset({"vigie", "vigie.terminology"}),
    "vigie.rules.packs": frozenset({"vigie", "vigie.terminology", "vigie.rules"}),
    "vigie.rules.testing": frozenset(
        {"vigie", "vigie.facts", "vigie.terminology", "vigie.rules", "vigie.engine"}
    ),
    "vigie.engine": frozenset({"vigie", "vigie.facts", "vigie.terminology"}),
    "vigie.synthetic": frozenset({"vigie", "vigie.facts", "vigie.terminology"}),
    "vigie.ingest": frozenset(
        {"vigie", "vigie.facts", "vigie.terminology", "vigie.connectors", "vigie.store"}
    ),
    "vigie.api": frozenset(
        {
            "vigie",
            "vigie.facts",
            "vigie.terminology",
            "vigie.connectors",
            "vigie.store",
            "vigie.ingest",
            "vigie.rules",
            "vigie.rules.packs",
            "vigie.rules.testing",
            "vigie.engine",
            "vigie.synthetic",
        }
    ),
}

# Third-party libraries a unit must never load (the engine reads the IR, never the grammar; the
# fact model is pydantic and the standard library only).
FORBIDDEN_LIBRARIES: dict[str, frozenset[str]] = {
    "vigie": frozenset({"lark", "polars", "sqlalchemy", "fastapi", "hl7", "fhir"}),
    "vigie.facts": frozenset({"lark", "polars", "sqlalchemy", "fastapi", "hl7", "fhir", "numpy"}),
    "vigie.terminology": frozenset({"lark", "polars", "sqlalchemy", "fastapi"}),
    "vigie.connectors": frozenset({"lark", "polars", "sqlalchemy", "fastapi"}),
    # the store reads facts as polars frames for the batch (store/columns.py)
    "vigie.store": frozenset({"lark", "fastapi", "hl7", "fhir"}),
    "vigie.ingest": frozenset({"lark", "polars", "fastapi"}),
    "vigie.rules": frozenset({"polars", "sqlalchemy", "fastapi", "hl7", "fhir"}),
    "vigie.rules.packs": frozenset({"polars", "sqlalchemy", "fastapi", "hl7", "fhir"}),
    "vigie.engine": frozenset({"lark", "sqlalchemy", "fastapi", "hl7", "fhir"}),
}

# Connector packages and modules: each feed reads its own format and shares only ``base`` and
# the modules every connector uses (registry loads them by name, never by import).
FEEDS = ("hl7v2", "fhir", "tabular", "hprim", "pn13")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module (a ``from X import Y`` of a submodule Y is ``X.Y``)
    line: int


def _module_name(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["vigie", *parts]) if parts[0] != "vigie" else ".".join(parts)


def _sources() -> Iterator[Path]:
    """Every module of the installed package: the root's own files and each linked folder."""
    yield from sorted(PACKAGE.glob("*.py"))
    for link in sorted(PACKAGE.iterdir()):
        if link.is_dir():
            target = link.resolve()
            for path in sorted(target.rglob("*.py")):
                yield ROOT / target.name / path.relative_to(target)


MODULES = {_module_name(path): path for path in _sources()}


def _is_module(name: str) -> bool:
    return name in MODULES


def _imports(name: str, path: Path) -> Iterator[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(name, alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                yield Import(name, submodule if _is_module(submodule) else base, node.lineno)


IMPORTS = [edge for name, path in MODULES.items() for edge in _imports(name, path)]


def unit_of(module: str) -> str:
    """The layering unit of a ``vigie`` module: the longest declared unit that prefixes it."""
    candidates = [u for u in ALLOWED if module == u or module.startswith(u + ".")]
    return max(candidates, key=len)


def _where(edge: Import) -> str:
    return f"{MODULES[edge.module].relative_to(ROOT)}:{edge.line}"


def test_every_top_level_folder_is_installed_under_vigie() -> None:
    folders = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists() and p.name != "vigie"}
    folders -= {"tests"}
    links = {p.name for p in PACKAGE.iterdir() if p.is_symlink()}
    assert folders == links, "each package folder needs its link in vigie/ (and no stale link)"
    for name in links:
        assert (PACKAGE / name).resolve() == (ROOT / name).resolve()
        assert f"vigie.{name}" in ALLOWED or any(u.startswith(f"vigie.{name}") for u in ALLOWED)


def test_every_package_imports_only_what_the_layering_allows() -> None:
    wrong = []
    for edge in IMPORTS:
        if not edge.target.startswith("vigie"):
            continue
        source, target = unit_of(edge.module), unit_of(edge.target)
        if target != source and target not in ALLOWED[source]:
            wrong.append(f"{_where(edge)}: {source} imports {edge.target} ({target})")
    assert not wrong, "\n".join(wrong)


def test_no_module_imports_a_top_level_folder_by_its_bare_name() -> None:
    bare = {p.name for p in PACKAGE.iterdir() if p.is_symlink()}
    wrong = [
        f"{_where(edge)}: import {edge.target}"
        for edge in IMPORTS
        if edge.target.split(".")[0] in bare
    ]
    assert not wrong, "import through vigie.<package>:\n" + "\n".join(wrong)


def test_forbidden_libraries_are_never_imported() -> None:
    wrong = []
    for edge in IMPORTS:
        library = edge.target.split(".")[0]
        unit = unit_of(edge.module)
        if library in FORBIDDEN_LIBRARIES.get(unit, frozenset()):
            wrong.append(f"{_where(edge)}: {unit} imports {edge.target}")
    assert not wrong, "\n".join(wrong)


def test_connectors_share_only_their_common_modules() -> None:
    wrong = []
    for edge in IMPORTS:
        parts = edge.module.split(".")
        if parts[:2] != ["vigie", "connectors"] or len(parts) < 3 or parts[2] not in FEEDS:
            continue
        target = edge.target.split(".")
        other_feed = len(target) > 2 and target[2] in FEEDS and target[2] != parts[2]
        if target[:2] == ["vigie", "connectors"] and other_feed:
            wrong.append(f"{_where(edge)}: {parts[2]} imports {edge.target}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle_between_modules() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for edge in IMPORTS:
        if _is_module(edge.target) and edge.target != edge.module:
            graph[edge.module].add(edge.target)
    cycles = _cycles(graph)
    assert not cycles, "\n".join(" -> ".join(cycle) for cycle in cycles)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.mark.parametrize(
    "path",
    sorted(p for p in MODULES.values() if p.name == "__init__.py"),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_package_init_holds_no_logic(path: Path) -> None:
    """An ``__init__`` re-exports its package's surface: docstring, imports, ``__all__`` only."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    allowed = (ast.Import, ast.ImportFrom)
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the docstring
        if isinstance(node, allowed):
            continue
        targets = (
            [t.id for t in node.targets if isinstance(t, ast.Name)]
            if isinstance(node, ast.Assign)
            else [node.target.id]
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
            else []
        )
        assert targets and set(targets) <= {"__all__", "__version__"}, (
            f"{path.relative_to(ROOT)}:{node.lineno}: logic belongs in a module, not in __init__"
        )


def _loaded_by(statement: str, unwanted: tuple[str, ...]) -> list[str]:
    """The modules named in ``unwanted`` (prefixes) that ``statement`` loads, in a fresh
    interpreter: what importing one package really pulls in, lazy package attributes included."""
    code = (
        f"import sys; {statement}; "
        f"print('\\n'.join(sorted(m for m in sys.modules if m.startswith({unwanted!r}))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return result.stdout.split()


def test_the_fact_model_loads_nothing_of_the_project() -> None:
    loaded = _loaded_by("import vigie.facts", ("vigie.",))
    assert [m for m in loaded if not m.startswith("vigie.facts")] == []


def test_the_engine_loads_neither_lark_nor_the_rule_language() -> None:
    unwanted = ("lark", "vigie.rules", "vigie.connectors", "vigie.store", "vigie.ingest")
    assert _loaded_by("import vigie.engine", unwanted) == []


def test_connectors_load_neither_the_engine_nor_polars() -> None:
    every_connector = (
        "import vigie.connectors.registry as r; [r.connector_for(f) for f in r.FORMATS]"
    )
    unwanted = ("polars", "lark", "vigie.engine", "vigie.rules", "vigie.store")
    assert _loaded_by(every_connector, unwanted) == []
