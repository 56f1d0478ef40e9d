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


def _build_site(out: Path, tutorials: str = "execute", timeout: int = 300) -> Path:
    """``mkdocs build --strict`` into ``out``; ``tutorials``: ``$STALIGN_DOCS_TUTORIALS``."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "STALIGN_DOCS_TUTORIALS": tutorials}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    if proc.returncode != 0:
        pytest.fail(f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr[-6000:]}")
    return out


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """Build the site once with ``mkdocs build --strict``, tutorials without outputs."""
    return _build_site(tmp_path_factory.mktemp("site"), tutorials="skip")


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
    assert getattr(mod, "__all__", None), f"stalign.{module} has no (or an empty) __all__"
    for name in mod.__all__:
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


_SPHINX_ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|obj|exc|const):`?")


@pytest.mark.parametrize("module", API_MODULES)
def test_api_pages_render_like_scanpy(site, module):
    """No Sphinx markup as text, a type on every Returns row, one heading per page."""
    html = _html(site, f"api/{module}")
    text = re.sub(r"<[^>]+>", "", html)  # what the reader sees
    roles = sorted(set(_SPHINX_ROLE.findall(text)))
    assert not roles, f"api/{module}: literal Sphinx roles {roles} (use [`name`][stalign.x.name])"
    # a type cell (<td><code>...</code></td>) holding reST double backticks is a Returns
    # section whose first line is prose, not a type
    raw = re.findall(r"<td>\s*<code>([^<]*``[^<]*)</code>\s*</td>", html)
    assert not raw, f"api/{module}: Returns rows without a type: {raw[:3]}"
    for section in re.findall(
        r'doc-section-title">(?:Returns|Yields):</span>(.*?)</table>', html, re.S
    ):
        for cell in re.findall(r"<td>\s*<code>(.*?)</code>\s*</td>", section, re.S):
            shown = re.sub(r"<[^>]+>", "", cell).strip()
            prose = len(shown.split()) > 4 or shown.endswith(".")
            assert not prose, f"api/{module}: a sentence in a Returns type cell: {shown!r}"
    unresolved = re.findall(r"\[`[^`\]]+`\]\[[\w.]+\]", text)
    assert not unresolved, f"api/{module}: cross-references left as text: {unresolved[:3]}"
    assert len(re.findall(r"<h1[\s>]", html)) == 1, f"api/{module}: not one h1"


def test_adata_is_typed_anndata():
    """Public functions taking ``adata`` say ``AnnData``, not ``Any``."""
    import inspect

    loose = []
    for module in API_MODULES:
        mod = importlib.import_module(f"stalign.{module}")
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name)
            if not inspect.isfunction(obj):
                continue
            param = inspect.signature(obj).parameters.get("adata")
            if param is not None and "AnnData" not in str(param.annotation):
                loose.append(f"stalign.{module}.{name}: {param.annotation}")
    assert not loose, loose


def test_manifest_page_lists_every_column(site):
    from stalign.pairs._manifest import MANIFEST_COLUMNS, PLATFORMS

    html = _html(site, "reference/manifest")
    for column in MANIFEST_COLUMNS:
        assert f"<code>{column}</code>" in html, f"manifest column {column!r} undocumented"
    for platform in PLATFORMS:
        assert f"<code>{platform}</code>" in html, f"platform {platform!r} undocumented"


def _hook():
    import importlib.util

    path = REPO / "docs" / "_hooks" / "stalign_docs.py"
    spec = importlib.util.spec_from_file_location("stalign_docs_hook", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _NothingExecuted:
    """An executor stand-in with no current copy of any notebook."""

    def tree_digest(self):
        return "tree"

    def current_copy(self, notebook, tree=None):
        return None


def test_build_without_executed_tutorials_fails_naming_the_command(monkeypatch):
    """``STALIGN_DOCS_TUTORIALS=require``: one line that says how to make the outputs."""
    from mkdocs.exceptions import PluginError

    hook = _hook()
    monkeypatch.setenv(hook.TUTORIALS_ENV, "require")
    with pytest.raises(PluginError, match=r"run `\.venv/bin/python scripts/execute_notebooks\.py`"):
        hook._tutorial_sources(_NothingExecuted())
    monkeypatch.setenv(hook.TUTORIALS_ENV, "sometimes")
    with pytest.raises(PluginError, match=r"STALIGN_DOCS_TUTORIALS='sometimes': expected one of"):
        hook._tutorial_sources(_NothingExecuted())


def test_build_executes_stale_tutorials_by_default(monkeypatch):
    """A plain build runs the notebooks without a current copy, in order, and fails on an error."""
    from mkdocs.exceptions import PluginError

    hook = _hook()
    monkeypatch.delenv(hook.TUTORIALS_ENV, raising=False)
    ran: list[str] = []

    class Executor(_NothingExecuted):
        def ensure_executed(self, notebook, results):
            ran.append(notebook.name)
            return notebook

        def errors(self, copy):
            return ["ValueError: boom"] if copy.name.startswith("02") else []

    with pytest.raises(PluginError, match=r"tutorial 02_.*ipynb raised .*ValueError: boom"):
        hook._tutorial_sources(Executor())
    notebooks = sorted((REPO / "notebooks").glob("*.ipynb"))
    assert ran == [nb.name for nb in notebooks[:2]]

    class Working(Executor):
        def errors(self, copy):
            return []

    # the copies just made are shown even though the tree digest would call them stale
    assert hook._tutorial_sources(Working()) == {nb: nb for nb in notebooks}


def test_build_without_a_notebook_kernel_says_what_to_install(monkeypatch):
    from mkdocs.exceptions import PluginError

    hook = _hook()
    monkeypatch.delenv(hook.TUTORIALS_ENV, raising=False)

    class NoKernel(_NothingExecuted):
        def ensure_executed(self, notebook, results):
            raise ImportError("No module named 'nbclient'", name="nbclient")

    with pytest.raises(PluginError, match=r"needs nbclient .*STALIGN_DOCS_TUTORIALS=skip"):
        hook._tutorial_sources(NoKernel())


def test_unexecuted_tutorials_say_so(site):
    """``STALIGN_DOCS_TUTORIALS=skip`` shows a banner, never a silently blank page."""
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        html = _html(site, f"notebooks/{nb.stem}")
        assert "Outputs not shown" in html and "STALIGN_DOCS_TUTORIALS=skip" in html, nb.name


def test_links_between_tutorials_resolve(site):
    """``[02](02_pathways.ipynb)`` (right in Jupyter) points to the page on the site."""
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        html = _html(site, f"notebooks/{nb.stem}")
        broken = re.findall(r'href="(?!https?:)[^"]*\.ipynb[#"]', html)
        assert not broken, f"{nb.name} links to notebook files, not pages: {broken}"
        for target in re.findall(r'href="\.\./(\d\d_[\w-]+)/', html):
            assert (site / "notebooks" / target / "index.html").is_file(), (nb.name, target)


#: what a page must not show: paths of the machine that executed it, widget noise
_MACHINE_PATHS = re.compile(r"(/tmp/|/home/|/Users/|site-packages|pytest-of-)")


@pytest.mark.slow
@pytest.mark.xdist_group("notebooks")  # shares the executions of tests/test_notebooks.py
def test_tutorial_pages_show_outputs_and_figures(tmp_path_factory):
    """A plain build shows every tutorial executed: a figure each, no machine paths.

    Independent of test order: the build executes whatever notebook has no current
    copy (under the executor's lock), reusing those tests/test_notebooks.py left.
    """
    # executing all six notebooks takes ~6 min on two idle cores
    site = _build_site(tmp_path_factory.mktemp("executed_site"), timeout=1800)
    problems = {}
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        html = _html(site, f"notebooks/{nb.stem}")
        found = []
        # mkdocs-jupyter renders a cell's outputs as jp-OutputArea, PNG figures as <img
        if "jp-OutputArea-output" not in html or "Outputs not shown" in html:
            found.append("no outputs")
        if not re.search(r'<img[^>]+src="data:image/(png|svg)', html):
            found.append("no figure")
        if str(REPO) in html or (m := _MACHINE_PATHS.search(html)):
            found.append(f"machine path {m[0] if m else str(REPO)!r}")
        if "IProgress" in html or "TqdmWarning" in html:
            found.append("tqdm widget warning")
        if found:
            problems[nb.name] = found
    assert not problems, problems
