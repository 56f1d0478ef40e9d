"""The documentation site builds with warnings as errors and covers the code."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
API_MODULES = ("io", "im", "pp", "tl", "pairs", "models", "train", "bench", "pl", "datasets")


def _build_site(out: Path) -> Path:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if proc.returncode != 0:
        pytest.fail(f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr[-6000:]}")
    return out


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """Build the site once with ``mkdocs build --strict`` into a temporary folder."""
    return _build_site(tmp_path_factory.mktemp("site"))


def _html(site: Path, page: str) -> str:
    path = site / page / "index.html"
    assert path.is_file(), f"{page} was not built"
    return path.read_text(encoding="utf-8")


def _subcommand_progs(parser) -> list[str]:
    import argparse

    progs = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                progs.append(sub.prog)
                progs += _subcommand_progs(sub)
    return progs


def test_every_cli_command_is_documented(site):
    from stalign.cli import build_parser

    html = _html(site, "reference/cli")
    assert "usage: stalign" in html
    for prog in _subcommand_progs(build_parser()):
        assert f"<code>{prog}</code>" in html, f"'{prog}' missing from the CLI reference"


def test_every_anndata_key_is_documented(site):
    from stalign import _keys

    html = _html(site, "concepts/anndata-keys")
    consts = {n: v for n, v in vars(_keys).items() if n.isupper() and isinstance(v, str)}
    assert consts, "no key constants found in stalign._keys"
    for name, value in consts.items():
        row = re.search(rf"<code>{name}</code></td>\s*<td><code>{re.escape(value)}</code>", html)
        assert row, f"_keys.{name} = {value!r} is missing from the AnnData keys page"


@pytest.mark.parametrize("module", API_MODULES)
def test_public_api_is_documented(site, module):
    mod = importlib.import_module(f"stalign.{module}")
    html = _html(site, f"api/{module}")
    assert f'id="stalign.{module}"' in html
    for name in getattr(mod, "__all__", []):
        # lazily imported names are documented from their private module
        found = re.search(rf'id="stalign\.{module}\.(_\w+\.)?{name}"', html)
        assert found, f"stalign.{module}.{name} undocumented"


def test_tutorials_are_in_the_site(site):
    notebooks = sorted((REPO / "notebooks").glob("*.ipynb"))
    for nb in notebooks:
        html = _html(site, f"notebooks/{nb.stem}")
        assert "jupyter-wrapper" in html or "jp-Notebook" in html, f"{nb.name} not rendered"
    index = (site / "index.html").read_text(encoding="utf-8")
    for nb in notebooks:
        assert f"notebooks/{nb.stem}/" in index, f"{nb.name} is not in the navigation"


def test_manifest_page_lists_every_column(site):
    from stalign.pairs._manifest import MANIFEST_COLUMNS, PLATFORMS

    html = _html(site, "reference/manifest")
    for column in MANIFEST_COLUMNS:
        assert f"<code>{column}</code>" in html, f"manifest column {column!r} undocumented"
    for platform in PLATFORMS:
        assert f"<code>{platform}</code>" in html, f"platform {platform!r} undocumented"


def _executor():
    import importlib.util

    path = REPO / "scripts" / "execute_notebooks.py"
    spec = importlib.util.spec_from_file_location("execute_notebooks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.xdist_group("notebooks")  # the worker of tests/test_notebooks.py: one execution
def test_tutorial_pages_show_outputs_and_figures(tmp_path_factory):
    """The site renders executed tutorials: their figures and tables, not bare code cells."""
    executor = _executor()
    results = tmp_path_factory.mktemp("tutorials")
    notebooks = sorted((REPO / "notebooks").glob("*.ipynb"))
    for nb in notebooks:  # reused when tests/test_notebooks.py already executed them
        executed = executor.ensure_executed(nb, results)
        assert not executor.errors(executed), f"{nb.name}: {executor.errors(executed)}"
    site = _build_site(tmp_path_factory.mktemp("executed_site"))
    figures = {}
    for nb in notebooks:
        html = _html(site, f"notebooks/{nb.stem}")
        # mkdocs-jupyter renders a cell's outputs as jp-OutputArea, PNG figures as <img
        assert "jp-OutputArea-output" in html, f"{nb.name} is rendered without outputs"
        figures[nb.stem] = len(re.findall(r'<img[^>]+src="data:image/png', html))
    assert any(figures.values()), f"no tutorial page shows a figure: {figures}"
