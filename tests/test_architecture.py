"""The package's layers: dependencies point one way, and the tree stays readable.

Read from the source with `ast`, so a new import that breaks the layering fails here
before it becomes a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "my_ml_backend"
BASE = {"settings", "storage", "telemetry"}
LABELING_LLM_LEARNING = BASE | {"labeling", "llm", "learning"}
ENGINE = LABELING_LLM_LEARNING | {"versioning", "predictor", "engine"}
# unit -> the units it may import (its own modules are always allowed)
ALLOWED: dict[str, set[str]] = {
    "settings": set(),
    "storage": set(),
    "telemetry": {"settings", "storage"},
    "labeling": set(),
    "llm": BASE,
    "learning": BASE | {"labeling"},
    "versioning": {"settings", "labeling"},
    "predictor": LABELING_LLM_LEARNING,
    "engine": LABELING_LLM_LEARNING | {"versioning", "predictor"},
    "model": ENGINE,
    "server": ENGINE,
    "jobs": ENGINE | {"model"},
    "_wsgi": ENGINE | {"model", "server"},
}


def unit_of(parts: tuple[str, ...]) -> str:
    """The top-level unit of a module path inside the package (`llm.client` -> `llm`)."""
    return parts[0]


def imports_of(path: Path) -> set[str]:
    """Units of my_ml_backend imported by the module at `path` (relative and absolute imports)."""
    here = path.relative_to(PACKAGE).with_suffix("").parts
    package = here[:-1]  # the package the module sits in (an __init__ is its own package's)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = (*base, *(node.module.split(".") if node.module else ()))
                names = [(*target, a.name) for a in node.names] if not target else [target]
            elif node.module and node.module.split(".")[0] == "my_ml_backend":
                parts = tuple(node.module.split(".")[1:])
                names = [parts] if parts else [(a.name,) for a in node.names]
            else:
                continue
            found.update(unit_of(n) for n in names if n)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "my_ml_backend" and len(parts) > 1:
                    found.add(parts[1])
    return found


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_dependencies_point_one_way() -> None:
    wrong = []
    for path in modules():
        rel = path.relative_to(PACKAGE).with_suffix("").parts
        if rel == ("__init__",):
            continue
        unit = unit_of(rel)
        assert unit in ALLOWED, f"{path.relative_to(PACKAGE)}: unit {unit!r} has no place in the layers"
        for imported in imports_of(path) - {unit}:
            if imported not in ALLOWED[unit]:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {imported}")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_the_tree_shows_the_architecture() -> None:
    top = [p.name for p in PACKAGE.glob("*.py")]
    assert len(top) <= 8, top
    subpackages = [p for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()]
    assert len(subpackages) >= 4
    for sub in subpackages:
        doc = ast.get_docstring(ast.parse((sub / "__init__.py").read_text(encoding="utf-8")))
        assert doc and len(doc.splitlines()) <= 4, f"{sub.name}/__init__.py needs a short docstring"
    too_long = {str(p.relative_to(PACKAGE)): n for p in modules() if (n := len(p.read_text().splitlines())) > 400}
    assert not too_long, too_long


def test_the_checker_sees_a_wrong_import(tmp_path: Path) -> None:
    """The layering check itself can fail: a labeling module importing the LLM client is caught."""
    fake = PACKAGE / "labeling" / "_layer_probe.py"
    fake.write_text("from ..llm.client import LLMClient\n", encoding="utf-8")
    try:
        assert imports_of(fake) == {"llm"}
    finally:
        fake.unlink()


def test_readme_code_map_matches_the_tree() -> None:
    """Every top-level module and subpackage has its line in the README's code map, and nothing else does."""
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    block = readme.split("### 代码结构 (code map)", 1)[1].split("```", 2)[1]
    listed = {line.split()[0] for line in block.splitlines()[2:] if line.startswith("  ") and line.split()}
    tree = {p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    tree |= {p.name + "/" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert listed == tree
