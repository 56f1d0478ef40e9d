#!/usr/bin/env python
"""Strip outputs and volatile metadata from Jupyter notebooks (what git should hold).

Usage::

    python scripts/strip_notebooks.py                 # strip notebooks/*.ipynb in place
    python scripts/strip_notebooks.py --check         # exit 1 if any notebook has outputs
    python scripts/strip_notebooks.py path/a.ipynb    # specific files

Kept: cell sources, cell ids, cell ``tags``, the kernelspec and the language name.
Removed: outputs, execution counts, every other cell / notebook metadata entry
(widget state, timings, the Python version of whoever ran it last).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
KEEP_NOTEBOOK_METADATA = ("kernelspec",)
KEEP_CELL_METADATA = ("tags",)


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Return ``nb`` without outputs and volatile metadata (modified in place)."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata = {k: v for k, v in cell.metadata.items() if k in KEEP_CELL_METADATA}
    meta = {k: v for k, v in nb.metadata.items() if k in KEEP_NOTEBOOK_METADATA}
    lang = nb.metadata.get("language_info", {}).get("name")
    if lang:
        meta["language_info"] = {"name": lang}
    nb.metadata = meta
    return nb


def problems(nb: nbformat.NotebookNode) -> list[str]:
    """Return what :func:`strip` would remove from ``nb`` (empty when clean)."""
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and cell.get("outputs"):
            found.append(f"cell {i}: {len(cell.outputs)} output(s)")
        if cell.cell_type == "code" and cell.get("execution_count") is not None:
            found.append(f"cell {i}: execution_count {cell.execution_count}")
        extra = sorted(set(cell.metadata) - set(KEEP_CELL_METADATA))
        if extra:
            found.append(f"cell {i}: metadata {extra}")
    extra = sorted(set(nb.metadata) - {*KEEP_NOTEBOOK_METADATA, "language_info"})
    if extra:
        found.append(f"notebook metadata {extra}")
    if set(nb.metadata.get("language_info", {})) - {"name"}:
        found.append("notebook metadata language_info has more than its name")
    return found


def main(argv: list[str] | None = None) -> int:
    """Strip (or ``--check``) the given notebooks; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    parser.add_argument("--check", action="store_true", help="report, do not modify")
    args = parser.parse_args(argv)
    paths = args.paths or sorted((REPO / "notebooks").glob("*.ipynb"))
    status = 0
    for path in paths:
        if not path.is_file():
            print(f"{path}: not found", file=sys.stderr)
            status = 1
            continue
        nb = nbformat.read(path, as_version=4)
        found = problems(nb)
        if args.check:
            for p in found:
                print(f"{path}: {p}")
            status |= bool(found)
        elif found:
            nbformat.write(strip(nb), path)
            print(f"stripped {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
