"""The package's layers: dependencies point one way, no module imports itself back, and the tree stays readable.

Read from the source with `ast` (imports inside functions and under `TYPE_CHECKING` count too), so a new import
that breaks the layering or closes a cycle fails here.
"""

from __future__ import annotations

import ast
import graphlib
from collections.abc import Mapping
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "my_ml_backend"
BASE = {"settings", "storage", "telemetry"}
LABELING_LLM_LEARNING = BASE | {"labeling", "llm", "learning"}
ENGINE = LABELING_LLM_LEARNING | {"versioning", "predicting", "predictor", "engine"}
# unit -> the units it may import (its own modules are always allowed)
ALLOWED: dict[str, set[str]] = {
    "settings": set(),
    "storage": set(),
    "telemetry": {"settings", "storage"},
    "labeling": set(),
    "llm": BASE,
    "learning": BASE | {"labeling"},
    "versioning": {"settings", "labeling"},
    "predicting": LABELING_LLM_LEARNING | {"versioning"},
    "predictor": LABELING_LLM_LEARNING,
    "engine": LABELING_LLM_LEARNING | {"versioning", "predictor"},
    "model": ENGINE,
    "server": ENGINE | {"onimport"},
    "jobs": ENGINE | {"model"},
    "onimport": ENGINE | {"model", "jobs"},
    "_wsgi": ENGINE | {"model", "server"},
}

Module = tuple[str, ...]  # a module's path inside its package: ("llm", "client"); () is the package itself


def module_of(path: Path, root: Path) -> Module:
    """`llm/client.py` -> ("llm", "client"); a package's `__init__.py` is the package."""
    parts = path.relative_to(root).with_suffix("").parts
    return parts[:-1] if parts[-1] == "__init__" else parts


def imported_modules(source: str, module: Module, is_package: bool, known: set[Module], root: str) -> set[Module]:
    """Modules of the package named `root` that `source` (the text of `module`) imports, wherever the import stands.

    `from .pkg import name` is an import of `pkg.name` when that is a module in `known`, else of `pkg`.
    """
    package = module if is_package else module[:-1]
    found: set[Module] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            named = tuple(node.module.split(".")) if node.module else ()
            if node.level:
                if node.level - 1 > len(package):
                    continue
                target = (*package[: len(package) - (node.level - 1)], *named)
            elif named and named[0] == root:
                target = named[1:]
            else:
                continue
            found.update(sub if (sub := (*target, alias.name)) in known else target for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(tuple(parts[1:]) for alias in node.names if (parts := alias.name.split("."))[0] == root)
    return found - {module}


def import_graph(root: Path) -> dict[Module, set[Module]]:
    """Every module of the package at `root` -> the package's modules it imports."""
    paths = {module_of(p, root): p for p in sorted(root.rglob("*.py")) if "__pycache__" not in p.parts}
    return {
        module: imported_modules(path.read_text(encoding="utf-8"), module, path.name == "__init__.py", set(paths),
                                 root.name)
        for module, path in paths.items()
    }


def cycle_in(graph: Mapping[Module, set[Module]]) -> list[Module]:
    """One import cycle of the graph, each module importing the next (first == last), or [] when there is none."""
    try:
        graphlib.TopologicalSorter(graph).prepare()  # graph[m] = what m imports = what must come before m
    except graphlib.CycleError as error:
        return list(reversed(error.args[1]))  # graphlib lists each module before the one importing it
    return []


def dotted(modules: list[Module]) -> str:
    return " -> ".join(".".join(m) or "(package)" for m in modules)


def layer_violations(graph: Mapping[Module, set[Module]]) -> list[str]:
    """`module imports unit` for every import the layers do not allow."""
    wrong = []
    for module, imports in graph.items():
        if not module:
            continue  # the package's own __init__
        unit = module[0]
        if unit not in ALLOWED:
            wrong.append(f"{'.'.join(module)}: unit {unit!r} has no place in the layers")
            continue
        for imported in sorted({m[0] for m in imports if m} - {unit}):
            if imported not in ALLOWED[unit]:
                wrong.append(f"{'.'.join(module)} imports {imported}")
    return wrong


def test_dependencies_point_one_way() -> None:
    wrong = layer_violations(import_graph(PACKAGE))
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_no_import_cycle_between_modules() -> None:
    cycle = cycle_in(import_graph(PACKAGE))
    assert not cycle, "import cycle: " + dotted(cycle)


def test_the_checker_sees_a_wrong_import() -> None:
    """A labeling module importing the LLM client, read from a string beside the real tree, is caught."""
    graph = import_graph(PACKAGE)
    probe = ("labeling", "layer_probe")
    graph[probe] = imported_modules("def f():\n    from ..llm.client import LLMClient\n", probe, False, set(graph),
                                    PACKAGE.name)
    assert graph[probe] == {("llm", "client")}
    assert layer_violations({probe: graph[probe]}) == ["labeling.layer_probe imports llm"]


def test_the_checker_sees_a_cycle(tmp_path: Path) -> None:
    """A cycle closed by an import inside a function, in a throwaway package, is found; without it there is none."""
    fake = tmp_path / "fakepkg"
    (fake / "sub").mkdir(parents=True)
    (fake / "__init__.py").write_text('"""A fake package."""\n', encoding="utf-8")
    (fake / "sub" / "__init__.py").write_text("", encoding="utf-8")
    (fake / "a.py").write_text("from .sub import b\n", encoding="utf-8")
    (fake / "sub" / "b.py").write_text("import fakepkg.c\n", encoding="utf-8")
    (fake / "c.py").write_text("import os\n\n\ndef late():\n    from . import a\n", encoding="utf-8")
    graph = import_graph(fake)
    assert graph[("a",)] == {("sub", "b")} and graph[("sub", "b")] == {("c",)} and graph[("c",)] == {("a",)}
    cycle = cycle_in(graph)
    assert set(cycle) == {("a",), ("sub", "b"), ("c",)} and len(cycle) == 4, dotted(cycle)
    assert all(after in graph[before] for before, after in zip(cycle, cycle[1:], strict=False)), dotted(cycle)
    (fake / "c.py").write_text("import os\n", encoding="utf-8")
    assert cycle_in(import_graph(fake)) == []


def test_subpackages_say_what_they_hold() -> None:
    subpackages = [p for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()]
    assert subpackages, "no subpackage found"
    for sub in subpackages:
        doc = ast.get_docstring(ast.parse((sub / "__init__.py").read_text(encoding="utf-8")))
        assert doc and len(doc.splitlines()) <= 4, f"{sub.name}/__init__.py needs a short docstring"


def test_readme_code_map_matches_the_tree() -> None:
    """Every top-level module and subpackage has its line in the README's code map, and nothing else does."""
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    block = readme.split("### 代码结构 (code map)", 1)[1].split("```", 2)[1]
    listed = {line.split()[0] for line in block.splitlines()[2:] if line.startswith("  ") and line.split()}
    tree = {p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    tree |= {p.name + "/" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert listed == tree
