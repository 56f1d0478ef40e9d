"""Imports between stalign's subpackages follow the layers of docs/architecture.md.

Every ``import`` / ``from ... import`` in ``src/stalign`` counts, at module level or
inside a function (a function-level import hides a dependency, it does not remove it).
A subpackage may import its own layer's modules and the layers below it; an import of
a higher layer, and any cycle between subpackages, fails.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "stalign"
ARCHITECTURE = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"

#: lowest first; the same order as the "Layers" section of docs/architecture.md
LAYERS: tuple[tuple[str, ...], ...] = (
    ("_keys", "_utils", "_lock"),  # shared constants and file helpers
    ("io",),
    ("im",),
    ("pp",),
    ("models",),
    ("train",),
    ("tl",),
    ("pairs",),
    ("pl",),
    ("bench",),
    ("datasets",),
    ("pipeline",),
    ("cli", "__main__"),
)
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _subpackage(module: str) -> str | None:
    """``stalign.io._core`` -> ``io``; ``stalign`` itself (the version) -> None."""
    parts = module.split(".")
    return parts[1] if parts[0] == "stalign" and len(parts) > 1 else None


def _module_name(path: Path, src: Path = SRC) -> str:
    rel = path.relative_to(src.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """Absolute names of what an import node imports (relative imports resolved)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    assert isinstance(node, ast.ImportFrom)
    if node.level == 0:
        base = node.module or ""
    else:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, *([node.module] if node.module else [])])
    # each imported name may be a module ("from .. import io", "from ..bench import
    # _cache"): count it too, so a private module imported by name is seen
    names = [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]
    return names if node.module is None else [base, *names]


def import_edges() -> dict[tuple[str, str], list[str]]:
    """``(importer, imported) -> ["file:line", ...]`` between different subpackages."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(SRC.rglob("*.py")):
        module = _module_name(path)
        src = _subpackage(module)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for name in _imported(node, module, path.name == "__init__.py"):
                dst = _subpackage(name)
                if src and dst and dst != src and dst in RANK:
                    where = f"{path.relative_to(SRC.parent)}:{node.lineno}"
                    edges[(src, dst)].append(where)
    return dict(edges)


def _cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected components with more than one subpackage (Tarjan)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted({a for e in edges for a in e}):
        if v not in index:
            visit(v)
    return found


def test_every_subpackage_has_a_layer():
    names = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    names |= {p.stem for p in SRC.glob("*.py") if p.stem != "__init__"}
    assert names <= set(RANK), f"add {sorted(names - set(RANK))} to LAYERS and the docs"


def test_architecture_doc_states_the_same_layers():
    text = ARCHITECTURE.read_text(encoding="utf-8")
    documented = " -> ".join(
        "/".join(n for n in names if not n.startswith("_")) or "_keys/_utils/_lock"
        for names in LAYERS
    )
    assert documented in text, f"docs/architecture.md should state the layers as: {documented}"


def test_the_checker_sees_function_level_imports():
    """A guard on the checker itself: known edges, one of them imported inside a function."""
    edges = import_edges()
    assert ("pairs", "tl") in edges  # pairs/_params.py imports tl inside functions
    assert ("im", "io") in edges


def test_no_upward_imports():
    upward = {
        edge: where for edge, where in import_edges().items() if RANK[edge[1]] > RANK[edge[0]]
    }
    assert not upward, "imports of a higher layer:\n" + "\n".join(
        f"  {a} -> {b}: {', '.join(w)}" for (a, b), w in sorted(upward.items())
    )


def test_no_import_cycles_between_subpackages():
    edges = set(import_edges())
    assert not _cycles(edges), f"import cycles between subpackages: {_cycles(edges)}"


def private_imports_of_cli(src: Path = SRC) -> dict[str, str]:
    """``"file: module"`` for every private module of another subpackage the CLI imports."""
    found = {}
    for path in sorted((src / "cli").glob("*.py")):
        module = _module_name(path, src)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for name in _imported(node, module, path.name == "__init__.py"):
                    parts = name.split(".")
                    other = len(parts) > 2 and parts[1] != "cli"
                    if other and any(p.startswith("_") for p in parts[2:]):
                        found[f"{path.relative_to(src.parent)}: {name}"] = str(node.lineno)
    return found


def test_cli_imports_public_names_only():
    """The CLI calls what a notebook calls: ``stalign.<module>.<name>``, no private module."""
    found = private_imports_of_cli()
    assert not found, f"the CLI imports private modules: {sorted(found)}"


def test_the_checker_sees_a_private_module_imported_by_name(tmp_path):
    """A guard on the checker: ``from ..bench import _cache`` is a private import."""
    cli = tmp_path / "stalign" / "cli"
    cli.mkdir(parents=True)
    (cli / "_x.py").write_text("from ..bench import _cache\nfrom ..io import read_visium\n")
    found = private_imports_of_cli(tmp_path / "stalign")
    assert list(found) == ["stalign/cli/_x.py: stalign.bench._cache"]
