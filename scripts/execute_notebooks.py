#!/usr/bin/env python
"""Execute the tutorials once and keep the executed copies for the docs site and the tests.

Usage::

    python scripts/execute_notebooks.py            # execute the stale ones of notebooks/*.ipynb
    python scripts/execute_notebooks.py --force    # execute all of them again

git holds the notebooks stripped; the executed copies go to ``build/notebooks/``
(git-ignored). Each copy records a fingerprint of what its outputs depend on: the
notebook itself, every file of ``src/stalign`` and ``data/``, the Python version and
the installed packages (name, version, RECORD digest).
``tests/test_notebooks.py`` executes through `ensure_executed`, so a test run
leaves current copies behind; the docs hook (``docs/_hooks/stalign_docs.py``) renders a
copy only while its fingerprint matches, else the stripped notebook. A copy made in the
same session is reused instead of executing the notebook twice.

The copies are for publishing: paths of the machine that executed them are written
relative to ``notebooks/`` (the kernel's working directory), so ``/abs/repo/data/x``
reads ``../data/x``, the results folder reads ``../results/tutorials`` (the notebooks'
default ``STALIGN_TUTORIAL_OUT``) and IPython's temporary cell files read ``<cell>``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
EXECUTED_DIR = REPO / "build" / "notebooks"
FINGERPRINT_KEY = "stalign_executed"
CELL_TIMEOUT_S = 600
#: what a notebook's outputs depend on besides the notebook itself
DEPENDENCIES = (REPO / "src" / "stalign", REPO / "data")


def installed_packages() -> list[str]:
    """Return ``name==version`` of every installed distribution, sorted (with its RECORD digest).

    A notebook's outputs depend on them as much as on stalign's code: an upgraded,
    downgraded, removed or reinstalled dependency makes the executed copies stale.
    """
    from importlib import metadata

    found = set()
    for dist in metadata.distributions():
        record = dist.read_text("RECORD") or ""
        tag = hashlib.sha256(record.encode()).hexdigest()[:16]
        found.add(f"{dist.metadata['Name']}=={dist.version} {tag}")
    return sorted(found)


def tree_digest() -> str:
    """Return a digest of src/stalign, data/, the Python version and the installed packages."""
    digest = hashlib.sha256(sys.version.encode())
    digest.update("\n".join(installed_packages()).encode())
    for root in DEPENDENCIES:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            if "__pycache__" in path.parts:
                continue
            digest.update(str(path.relative_to(REPO)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def fingerprint(notebook: Path, tree: str | None = None) -> str:
    """Return the fingerprint of ``notebook``'s outputs (notebook, code, data, Python)."""
    digest = hashlib.sha256(notebook.read_bytes())
    digest.update((tree or tree_digest()).encode())
    return digest.hexdigest()


def executed_path(notebook: Path) -> Path:
    """Where the executed copy of ``notebook`` is kept."""
    return EXECUTED_DIR / notebook.name


def current_copy(notebook: Path, tree: str | None = None) -> Path | None:
    """Return the executed copy of ``notebook`` if its fingerprint is current, else None."""
    path = executed_path(notebook)
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))["metadata"]
    except (ValueError, KeyError):
        return None
    return path if meta.get(FINGERPRINT_KEY) == fingerprint(notebook, tree) else None


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One executor at a time (two test workers may ask for the same notebook)."""
    EXECUTED_DIR.mkdir(parents=True, exist_ok=True)
    with open(EXECUTED_DIR / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _kernel_dir(root: Path) -> Path:
    """Write into ``root`` a kernelspec that runs *this* interpreter, whatever Jupyter finds."""
    spec = root / "stalign-nb"
    spec.mkdir()
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec_json = {"argv": argv, "display_name": "stalign", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(spec_json))
    return root


#: what a reader sees for the results folder: the notebooks' default STALIGN_TUTORIAL_OUT
DEFAULT_RESULTS = "../results/tutorials"
_CELL_FILE = re.compile(r"/[^\s\"']*/ipykernel_\d+/\d+\.py")


def portable_text(text: str, results_dir: Path) -> str:
    """Return ``text`` with the executing machine's paths made relative to ``notebooks/``."""
    for folder, shown in (
        (results_dir.resolve(), DEFAULT_RESULTS),
        (Path(results_dir).absolute(), DEFAULT_RESULTS),
        (REPO, ".."),
    ):
        text = text.replace(str(folder), shown)
    return _CELL_FILE.sub("<cell>", text)


def _portable_outputs(nb, results_dir: Path) -> None:
    """Rewrite, in place, the paths of every text output of ``nb`` (see `portable_text`)."""
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if "text" in output:
                output["text"] = portable_text(output["text"], results_dir)
            if "traceback" in output:
                output["traceback"] = [portable_text(t, results_dir) for t in output["traceback"]]
            if "evalue" in output:
                output["evalue"] = portable_text(output["evalue"], results_dir)
            for mime, value in output.get("data", {}).items():
                if mime.startswith("text/") and isinstance(value, str):
                    output["data"][mime] = portable_text(value, results_dir)


def execute(notebook: Path, results_dir: Path) -> float:
    """Execute ``notebook`` (cwd ``notebooks/``) and write its executed copy; return seconds.

    Results the notebook writes go to ``results_dir`` (``STALIGN_TUTORIAL_OUT``). One
    BLAS/torch thread per kernel: CI runs two test workers on two cores, and
    oversubscribed threads made tutorial 04 five times slower. A notebook that raises
    still gets its copy written (the error is in its outputs).
    """
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    tree = tree_digest()
    nb = nbformat.read(notebook, as_version=4)
    kernels = tempfile.TemporaryDirectory(prefix="stalign-kernels-")
    km = AsyncKernelManager(
        kernel_name="stalign-nb",
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(_kernel_dir(Path(kernels.name)))]),
    )
    client = NotebookClient(
        nb, km=km, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(NOTEBOOK_DIR)}}
    )
    threads = {k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    env = {**os.environ, "STALIGN_TUTORIAL_OUT": str(results_dir), **threads}
    start = time.perf_counter()
    try:
        client.execute(env=env)
    except CellExecutionError:
        pass  # the error output stays in the copy; callers check for it
    finally:
        kernels.cleanup()
    seconds = time.perf_counter() - start
    _portable_outputs(nb, results_dir)
    nb.metadata[FINGERPRINT_KEY] = fingerprint(notebook, tree)
    target = executed_path(notebook)
    tmp = target.with_name(f".{target.name}.tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, target)
    return seconds


def ensure_executed(notebook: Path, results_dir: Path, *, force: bool = False) -> Path:
    """Return a current executed copy of ``notebook``, executing it only when needed."""
    with _locked():
        if not force and (copy := current_copy(notebook)) is not None:
            return copy
        execute(notebook, results_dir)
        return executed_path(notebook)


def errors(executed: Path) -> list[str]:
    """Return the error outputs (``ename: evalue``) of an executed notebook."""
    nb = json.loads(executed.read_text(encoding="utf-8"))
    return [
        f"{o.get('ename')}: {o.get('evalue')}"
        for c in nb["cells"]
        if c["cell_type"] == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]


def main(argv: list[str] | None = None) -> int:
    """Execute the stale notebooks (all with ``--force``); return 1 if any raised."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="execute current copies again")
    parser.add_argument(
        "--results", default=str(REPO / "results" / "tutorials"), help="STALIGN_TUTORIAL_OUT"
    )
    args = parser.parse_args(argv)
    failed = 0
    for notebook in sorted(NOTEBOOK_DIR.glob("*.ipynb")):
        start = time.perf_counter()
        copy = ensure_executed(notebook, Path(args.results), force=args.force)
        found = errors(copy)
        failed += bool(found)
        status = "; ".join(found) if found else "ok"
        print(f"{notebook.name}: {time.perf_counter() - start:.1f} s, {status} -> {copy}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
