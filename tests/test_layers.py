"""Imports between stalign's subpackages follow the layers of docs/architecture.md.

Every ``import`` / ``from ... import`` in ``src/stalign`` counts, at module level or
inside a function (a function-level import hides a dependency, it does not remove it).
A subpackage may import its own layer's modules and the layers below it; an import of
a higher layer, and any cycle between subpackages, fails.

A subpackage imports another one through its public names only (``from ..tl import
PATHWAY_METHODS``), never a private module or name of it (``from ..tl._pathways import
METHODS``, ``from ..tl import _genesets``). The shared bottom layer -- ``_keys``,
``_utils``, ``_lock`` -- is package-private: every subpackage may import those modules,
but not the private (``_``) names inside them. The CLI is stricter: it imports what a
notebook imports, so not even the shared private modules.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "stalign"
ARCHITECTURE = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"

#: lowest first; the same order as the "Layers" section of docs/architecture.md
LAYERS: tuple[tuple[str, ...], ...] = (
    ("_keys", "_utils", "_lock", "_distributed"),  # shared constants and process helpers
    ("io",),
    ("im",),
    ("pl",),  # plots need only AnnData, tables and the lazy image of im
    ("pp",),
    ("models",),
    ("train",),
    ("tl",),
    ("pairs",),
    ("bench",),
    ("datasets",),
    ("pipeline",),
    ("cli", "__main__"),
)
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}
#: the package-private bottom layer: importable by every subpackage
SHARED = LAYERS[0]

#: Private imports across subpackages that still wait for their owner's one-line edit
#: (issue 22 item 5): ``"file: private module or name" -> why it is still here``. The
#: public name exists already; an entry is removed with the import it describes, and
#: one that no longer matches an import fails the test (the list stays accurate).
PENDING_PRIVATE_IMPORTS: dict[str, str] = {
    # empty: every import across subpackages uses a public name
}


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


def _private_part(name: str, importer: str | None, *, cli: bool = False) -> str | None:
    """The private prefix of an imported name that belongs to another subpackage, or None.

    ``stalign.tl._pathways.METHODS`` imported by ``pairs`` -> ``stalign.tl._pathways``;
    ``stalign._lock._pid_alive`` -> itself; ``stalign._keys`` -> None (shared), except for
    the CLI (``cli=True``), which may not import the shared private modules either.
    """
    parts = name.split(".")
    if parts[0] != "stalign" or len(parts) < 2 or parts[1] == importer:
        return None
    if parts[1] in SHARED and not cli:
        parts_checked = 2  # the module is shared; the names inside it are not
    else:
        parts_checked = 1
    for i in range(parts_checked, len(parts)):
        if parts[i].startswith("_") and not parts[i].startswith("__"):
            return ".".join(parts[: i + 1])
    return None


def private_imports(src: Path = SRC, *, only: str | None = None) -> dict[str, str]:
    """``"file: stalign.X._y" -> "file:line"`` for each private import across subpackages.

    ``only="cli"`` checks the CLI, by its stricter rule (no shared private module either).
    """
    found = {}
    files = sorted((src / only).rglob("*.py")) if only else sorted(src.rglob("*.py"))
    for path in files:
        module = _module_name(path, src)
        importer = _subpackage(module)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for name in _imported(node, module, path.name == "__init__.py"):
                private = _private_part(name, importer, cli=only == "cli")
                if private:
                    rel = path.relative_to(src.parent)
                    found.setdefault(f"{rel}: {private}", f"{rel}:{node.lineno}")
    return found


def test_no_private_imports_across_subpackages():
    """Zero private cross-package imports outside the pending list, and no stale entry."""
    found = {**private_imports(), **private_imports(only="cli")}
    new = sorted(set(found) - set(PENDING_PRIVATE_IMPORTS))
    lines = [f"  {found[k]}: {k.split(': ')[1]}" for k in new]
    assert not new, (
        "private modules / names of another subpackage imported (use or add a public name "
        "in its __init__.py):\n" + "\n".join(lines)
    )
    stale = sorted(set(PENDING_PRIVATE_IMPORTS) - set(found))
    assert not stale, f"PENDING_PRIVATE_IMPORTS entries no longer imported, remove them: {stale}"


def test_cli_imports_public_names_only():
    """The CLI calls what a notebook calls: ``stalign.<module>.<name>``, no private module."""
    found = set(private_imports(only="cli")) - set(PENDING_PRIVATE_IMPORTS)
    assert not found, f"the CLI imports private modules: {sorted(found)}"


def test_the_private_import_checker_sees_every_spelling(tmp_path):
    """A guard on the checker: each way of reaching a private module or name is seen."""
    pkg = tmp_path / "stalign"
    (pkg / "pairs").mkdir(parents=True)
    (pkg / "pairs" / "_x.py").write_text(
        "from ..tl._pathways import METHODS\n"  # a private module, by path
        "from ..bench import _cache\n"  # a private module, by name
        "from ..io import _private_name\n"  # a private name of a package
        "import stalign.im._slide\n"  # absolute
        "from .._lock import _pid_alive\n"  # a private name of a shared module
        "from .. import _keys as K\n"  # allowed: the shared bottom layer
        "from .._utils import atomic_path\n"  # allowed
        "from ..io import read_visium\n"  # allowed: a public name
        "from ._store import file_sha256\n"  # allowed: its own subpackage
        "from .. import __version__\n"  # allowed
    )
    (pkg / "cli").mkdir()
    (pkg / "cli" / "_y.py").write_text("from .._lock import folder_lock\nfrom ..io import read\n")
    assert sorted(private_imports(pkg)) == [
        "stalign/pairs/_x.py: stalign._lock._pid_alive",
        "stalign/pairs/_x.py: stalign.bench._cache",
        "stalign/pairs/_x.py: stalign.im._slide",
        "stalign/pairs/_x.py: stalign.io._private_name",
        "stalign/pairs/_x.py: stalign.tl._pathways",
    ]
    assert list(private_imports(pkg, only="cli")) == ["stalign/cli/_y.py: stalign._lock"]


def test_pl_needs_only_io_and_im():
    """pl sits right above im: it draws AnnData, tables and images, whoever made them."""
    allowed = {"io", "im", *SHARED}
    edges = {dst for (src, dst) in import_edges() if src == "pl"}
    assert edges <= allowed, f"pl imports {sorted(edges - allowed)}"
