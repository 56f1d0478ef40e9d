"""The tutorials in notebooks/ run top to bottom, and git holds them without outputs."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load_stripper():
    return _load_script("strip_notebooks")


def load_executor():
    """``scripts/execute_notebooks.py`` (also used by tests/test_docs.py)."""
    return _load_script("execute_notebooks")


def test_notebooks_exist():
    assert NOTEBOOKS, "no notebooks in notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stripped(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    found = _load_stripper().problems(nb)
    assert not found, f"{path.name} is not stripped: {found}; run scripts/strip_notebooks.py"


def test_stripper_removes_outputs(tmp_path):
    strip = _load_stripper()
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("1 + 1", execution_count=3, metadata={"scrolled": True})]
    )
    nb.cells[0].outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "2"})]
    nb.metadata["widgets"] = {"state": {}}
    path = tmp_path / "dirty.ipynb"
    nbformat.write(nb, path)
    assert strip.main(["--check", str(path)]) == 1
    assert strip.main([str(path)]) == 0
    assert strip.main(["--check", str(path)]) == 0
    clean = nbformat.read(path, as_version=4)
    assert clean.cells[0].outputs == [] and clean.cells[0].execution_count is None
    assert clean.cells[0].source == "1 + 1"


@pytest.fixture(scope="session")
def tutorial_out(tmp_path_factory) -> Path:
    """One results folder for all notebooks: 04 reuses the pairs store 03 built."""
    return tmp_path_factory.mktemp("tutorials")


@pytest.mark.slow
@pytest.mark.xdist_group("notebooks")  # one worker, in file order (03, 04, then 05)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tutorial_out):
    # executed once per change of the notebook, src/stalign or data/ (the copy in
    # build/notebooks/ is what the docs site renders; tests/test_docs.py reuses it)
    executor = load_executor()
    start = time.perf_counter()
    force = os.environ.get("STALIGN_EXECUTE_NOTEBOOKS") == "1"  # CI: never reuse a copy
    executed = executor.ensure_executed(path, tutorial_out, force=force)
    errors = executor.errors(executed)
    assert not errors, f"{path.name} raised: {errors}"
    print(f"{path.name}: {time.perf_counter() - start:.1f} s")


def test_the_fingerprint_covers_the_installed_packages(monkeypatch):
    """A cached executed copy is reused only while its fingerprint matches: a changed
    dependency must change it (before, a broken package passed with the cache present)."""
    executor = load_executor()
    notebook = NOTEBOOKS[0]
    before = executor.fingerprint(notebook)
    packages = executor.installed_packages()
    assert any(p.startswith(("numpy==", "torch==")) for p in packages)
    changed = [p.replace("numpy==", "numpy==0.0.0+broken") for p in packages]
    monkeypatch.setattr(executor, "installed_packages", lambda: changed)
    assert executor.fingerprint(notebook) != before
