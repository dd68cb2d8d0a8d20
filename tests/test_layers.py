"""Imports point one way, bottom up (docs/architecture.md, "Layers"):

    ml  →  app core and services  →  api · pages · worker/  →  app.main, app.cli, app.embedded

Every `import` in app/, worker/ and ml/ (and trainboard/ if it exists) is read from
the source, lazy ones inside functions included, and held against these rules:

- `ml` imports nothing of the project outside `ml`; its module-level imports
  outside the standard library are torch, torchvision, numpy and Pillow alone
  (a function may import more when it runs, as ml/cli.py does tqdm).
- The core and services (`app.core`, `app.models`, `app.services`, `app.migrations`)
  import only themselves and `ml`.
- `api`, `pages` and `worker` import only the layers below them, never one another.
  The one exception is `app.api.deps`: the `Annotated` dependencies (session,
  settings, token) that the API and the pages both declare, so pages may import it.
- No page module imports another. A page module is a file of app/pages/ that
  defines a `router`; the other files there (`common`, `templating`, `charts`,
  `errors`) are the pages' shared helpers, and import no page module.
  `app/pages/__init__.py` registers every page's router, so it is exempt.
- No module imports a private (`_name`) name of another module.
- No import cycle between modules.

KNOWN_VIOLATIONS lists the wrong-way imports that exist today; each is to be
removed (and its line with it). Any other wrong-way import fails this test.
"""

from __future__ import annotations

import ast
import functools
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = frozenset(name for name in ("app", "worker", "ml", "trainboard") if (REPO / name).is_dir())
ML_THIRD_PARTY = {"torch", "torchvision", "numpy", "PIL"}
CORE = ("app.core", "app.models", "app.services", "app.migrations")
TOP = ("app.main", "app.cli", "app.embedded")
SHARED_WEB_DEPENDENCIES = "app.api.deps"

# (importer, imported module) pairs that break a rule today: none since issue 9. An entry here
# must name an issue; test_layers_known_violations_still_exist makes it go once it is fixed.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Import:
    importer: str  # module name
    target: str  # the imported module (or, for a private name, module.name)
    line: int
    lazy: bool = False  # inside a function: runs when it is called, not when the module is imported


@functools.cache
def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for package in sorted(PACKAGES) for path in (REPO / package).rglob("*.py")}


def _absolute(importer: str, is_package: bool, level: int, module: str | None) -> str:
    """The absolute name of `from <level dots><module> import …` written in `importer`."""
    if not level:
        return module or ""
    base = importer.split(".")
    base = base[: len(base) - level + (1 if is_package else 0)]
    return ".".join([*base, module] if module else base)


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> Iterator[Import]:
    """Every import in the module, top-level and lazy alike, resolved to a module where it names one."""
    is_package = path.name == "__init__.py"
    tree = parse(path)
    functions = (node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)))
    lazy = {id(inner) for function in functions for inner in ast.walk(function)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(name, alias.name, node.lineno, id(node) in lazy)
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(name, is_package, node.level, node.module)
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                private = alias.name.startswith("_") and not alias.name.startswith("__")
                # from app.pages import charts: the module; a private name is kept whole for its rule
                target = submodule if submodule in modules or private else source
                yield Import(name, target, node.lineno, id(node) in lazy)


def all_imports() -> list[Import]:
    modules = project_modules()
    return [imp for name, path in sorted(modules.items()) for imp in imports_of(name, path, modules)]


def within(name: str, *prefixes: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def is_page_module(name: str, modules: dict[str, Path]) -> bool:
    """A file of app/pages/ (not its __init__) that defines `router`."""
    if not within(name, "app.pages") or name == "app.pages":
        return False
    return any(isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "router" for t in node.targets)
               for node in parse(modules[name]).body)


def wrong_way(imp: Import, modules: dict[str, Path]) -> str | None:
    """Why `imp` breaks a rule, or None."""
    importer, target = imp.importer, imp.target
    top_package = target.split(".")[0]
    if within(importer, "ml"):
        if top_package in PACKAGES and not within(target, "ml"):
            return "ml imports only ml"
        if not imp.lazy and top_package not in PACKAGES | sys.stdlib_module_names | ML_THIRD_PARTY:
            return "ml imports only the standard library, torch, torchvision, numpy and Pillow"
    if top_package not in PACKAGES:
        return None
    private = target.rsplit(".", 1)[-1]
    if target not in modules and private.startswith("_") and not private.startswith("__"):
        return "a private name of another module"
    if within(importer, *CORE) and not within(target, *CORE, "ml"):
        return "the core and services import only themselves and ml"
    if within(importer, "app.api") and within(target, "app.pages", "worker", *TOP):
        return "the API imports no page, worker or entry point"
    if within(importer, "app.pages"):
        if within(target, "worker", *TOP) or (within(target, "app.api") and target != SHARED_WEB_DEPENDENCIES):
            return f"the pages import no worker, entry point or API module but {SHARED_WEB_DEPENDENCIES}"
        if importer != "app.pages" and is_page_module(target, modules):
            return "no module of app/pages/ but its __init__ imports a page module"
    if within(importer, "worker") and within(target, "app.api", "app.pages", *TOP):
        return "the worker imports no API, page or entry point"
    return None


def import_cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for source, target in edges:
        graph.setdefault(source, set()).add(target)
        graph.setdefault(target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def project_edges(imports: list[Import], modules: dict[str, Path]) -> set[tuple[str, str]]:
    """importer → imported project module (a private name counts as its module)."""
    edges = set()
    for imp in imports:
        target = imp.target if imp.target in modules else imp.target.rsplit(".", 1)[0]
        if target in modules and target != imp.importer and (imp.importer, imp.target) not in KNOWN_VIOLATIONS:
            edges.add((imp.importer, target))
    return edges


# --------------------------------------------------------------------- tests ---

def test_layers_no_import_goes_the_wrong_way() -> None:
    modules = project_modules()
    problems = sorted(
        f"{imp.importer}:{imp.line} imports {imp.target}: {reason}"
        for imp in all_imports()
        if (reason := wrong_way(imp, modules)) and (imp.importer, imp.target) not in KNOWN_VIOLATIONS
    )
    assert not problems, "\n".join(problems)


def test_layers_known_violations_still_exist() -> None:
    """A fixed violation must leave the allow-list too, or it could come back unnoticed."""
    modules = project_modules()
    found = {(imp.importer, imp.target) for imp in all_imports() if wrong_way(imp, modules)}
    assert not KNOWN_VIOLATIONS - found, f"fixed, remove from KNOWN_VIOLATIONS: {sorted(KNOWN_VIOLATIONS - found)}"


def test_layers_have_no_import_cycle() -> None:
    modules = project_modules()
    assert import_cycles(project_edges(all_imports(), modules)) == []


def test_layers_see_the_page_modules_and_their_helpers() -> None:
    """The page rule is only as good as its idea of a page module: the routed files, not the helpers."""
    modules = project_modules()
    pages = {name for name in modules if is_page_module(name, modules)}
    assert {"app.pages.runs", "app.pages.compare", "app.pages.visualize", "app.pages.report"} <= pages
    assert not pages & {"app.pages", "app.pages.common", "app.pages.templating", "app.pages.charts",
                        "app.pages.errors"}


@pytest.mark.parametrize("importer, target, rule", [
    ("ml.trainer", "app.models", "ml imports only ml"),
    ("ml.data", "requests", "ml imports only the standard library"),
    ("app.services.runs", "app.pages.charts", "the core and services"),
    ("app.core.db", "worker.tasks", "the core and services"),
    ("app.api.routes.runs", "app.pages.templating", "the API imports no page"),
    ("app.pages.report", "worker.tasks", "the pages import no worker"),
    ("app.pages.report", "app.api.routes.runs", "the pages import no worker"),
    ("app.pages.compare", "app.pages.runs", "imports a page module"),
    ("app.pages.charts", "app.pages.report", "imports a page module"),
    ("worker.tasks", "app.pages.templating", "the worker imports no API"),
    ("app.pages.runs", "app.services.runs._private", "a private name"),
])
def test_layers_catch_a_wrong_way_import(importer: str, target: str, rule: str) -> None:
    assert rule in (wrong_way(Import(importer, target, 1), project_modules()) or "")


@pytest.mark.parametrize("importer, target", [
    ("app.pages.compare", "app.pages.common"),
    ("app.pages.compare", "app.api.deps"),
    ("app.pages", "app.pages.runs"),
    ("worker.tasks", "app.services.lifecycle"),
    ("app.services.catalog", "ml.models"),
    ("app.main", "app.pages"),
    ("ml.trainer", "torch"),
])
def test_layers_allow_a_downward_import(importer: str, target: str) -> None:
    assert wrong_way(Import(importer, target, 1), project_modules()) is None


def test_layers_let_ml_import_more_only_when_a_function_runs() -> None:
    assert wrong_way(Import("ml.cli", "tqdm", 1, lazy=True), project_modules()) is None
    assert "ml imports only" in (wrong_way(Import("ml.cli", "tqdm", 1), project_modules()) or "")


def test_layers_find_a_cycle_through_a_lazy_import() -> None:
    edges = {("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")}
    assert import_cycles(edges) == [["a", "b", "c"]]


def test_layers_read_lazy_and_relative_imports(tmp_path: Path) -> None:
    source = tmp_path / "__init__.py"
    source.write_text("from . import sibling\n\ndef later():\n    from app.pages.runs import progress_of\n")
    found = {(imp.target, imp.lazy) for imp in imports_of("app.pages", source, {"app.pages.sibling": source})}
    assert found == {("app.pages.sibling", False), ("app.pages.runs", True)}
