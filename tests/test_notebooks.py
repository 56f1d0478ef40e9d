"""The tutorials in notebooks/ run top to bottom, and git holds them without outputs."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 600


def _load_stripper():
    spec = importlib.util.spec_from_file_location(
        "strip_notebooks", REPO / "scripts" / "strip_notebooks.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def kernel_spec_dir(tmp_path_factory) -> Path:
    """A kernelspec that runs *this* interpreter, whatever Jupyter finds elsewhere."""
    root = tmp_path_factory.mktemp("kernels")
    spec = root / "stalign-test"
    spec.mkdir()
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "stalign test",
                "language": "python",
            }
        )
    )
    return root


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
def test_notebook_runs(path, kernel_spec_dir, tutorial_out):
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    km = AsyncKernelManager(
        kernel_name="stalign-test",
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_spec_dir)]),
    )
    client = NotebookClient(
        nb,
        km=km,
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},  # cwd = notebooks/
    )
    # results go to a temporary folder instead of results/tutorials/; one BLAS/torch
    # thread per kernel: CI runs two test workers on two cores, and oversubscribed
    # threads made tutorial 04 five times slower (207 s vs 43 s on a shared 2-core box)
    env = {
        **os.environ,
        "STALIGN_TUTORIAL_OUT": str(tutorial_out),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }
    start = time.perf_counter()
    client.execute(env=env)
    elapsed = time.perf_counter() - start
    errors = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert not errors
    print(f"{path.name}: {elapsed:.1f} s")
