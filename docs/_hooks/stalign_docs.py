"""MkDocs hook: pages generated from the code at build time.

* ``<!-- stalign:cli -->`` in a page is replaced by the CLI reference rendered
  from :func:`stalign.cli.build_parser` (every sub-command, nested ones too).
* ``<!-- stalign:keys -->`` is replaced by a table of the AnnData keys parsed
  from ``src/stalign/_keys.py`` (name, value, meaning, grouped by owner).
* ``<!-- stalign:manifest-readme -->`` is replaced by ``data/manifests/README.md``
  when it exists.
* The notebooks in ``notebooks/*.ipynb`` are added to the site as pages
  ``notebooks/<name>/`` and to the ``Tutorials`` nav section (rendered by
  mkdocs-jupyter). A page shows the executed copy from ``build/notebooks/`` (written
  by ``scripts/execute_notebooks.py`` and by ``tests/test_notebooks.py``) while its
  fingerprint matches the notebook, ``src/stalign`` and ``data/``. A notebook without
  a current copy is handled as ``STALIGN_DOCS_TUTORIALS`` says:

  - ``execute`` (the default): the build executes it first (minutes on a CPU) and
    fails, naming the notebook and its error, if it raises;
  - ``require``: the build fails with one line naming the command that executes them;
  - ``skip``: the page shows the notebook without outputs under a warning banner
    that says so (quick builds while editing prose, and the docs tests that do not
    look at tutorials).

  A page is never silently blank. Links between notebooks (``02_pathways.ipynb``,
  right in Jupyter) are rewritten to the site's page URLs (``../02_pathways/``).

Nothing is written into the source tree; the build stays reproducible.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.stalign_docs")

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
KEYS_FILE = REPO / "src" / "stalign" / "_keys.py"
MANIFEST_README = REPO / "data" / "manifests" / "README.md"
EXECUTOR = REPO / "scripts" / "execute_notebooks.py"
#: environment variable: what to do with a notebook that has no current executed copy
TUTORIALS_ENV = "STALIGN_DOCS_TUTORIALS"
TUTORIAL_MODES = ("execute", "require", "skip")
EXECUTE_COMMAND = ".venv/bin/python scripts/execute_notebooks.py"
HELP_WIDTH = 100


# --- CLI reference -------------------------------------------------------------------
def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    """Return ``(name, sub-parser)`` for each sub-command of ``parser`` (no aliases)."""
    out = []
    for action in parser._actions:  # argparse has no public API for this
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    out.append((name, sub))
    return out


def _render_parser(parser: argparse.ArgumentParser, level: int) -> list[str]:
    lines = [f"{'#' * level} `{parser.prog}`", ""]
    if parser.description:
        lines += [parser.description.strip(), ""]
    lines += ["```text", parser.format_help().rstrip(), "```", ""]
    for _, sub in _subcommands(parser):
        lines += _render_parser(sub, min(level + 1, 6))
    return lines


def render_cli_reference() -> str:
    """Return the markdown CLI reference for the whole ``stalign`` parser."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(HELP_WIDTH)  # deterministic wrapping of argparse help
    try:
        from stalign.cli import build_parser

        parser = build_parser()
        subs = _subcommands(parser)
        lines = ["| command | summary |", "|---|---|"]
        for name, sub in subs:
            summary = (sub.description or "").strip().splitlines()
            anchor = re.sub(r"[^a-z0-9]+", "-", sub.prog.lower()).strip("-")
            lines.append(f"| [`{name}`](#{anchor}) | {summary[0] if summary else ''} |")
        if not subs:
            lines = ["*No sub-commands are registered yet.*"]
        lines.append("")
        lines += _render_parser(parser, 2)
        return "\n".join(lines)
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def _escape_md(text: str) -> str:
    """Escape characters that markdown would read as links or table cells."""
    return text.replace("|", "\\|").replace("[", "\\[").replace("]", "\\]")


# --- AnnData keys --------------------------------------------------------------------
_SECTION = re.compile(r"^# -+ (?P<title>.+?) -*$")
_SUBSECTION = re.compile(r"^# (?P<title>[a-z]+\[.+)$")
_CONST = re.compile(r'^(?P<name>[A-Z][A-Z0-9_]*)\s*=\s*"(?P<value>[^"]*)"\s*(?:#\s*(?P<doc>.*))?$')


def render_keys_table(path: Path = KEYS_FILE) -> str:
    """Return markdown tables of the constants in ``_keys.py``, one per owner section."""
    lines: list[str] = []
    header = ["| constant | key | meaning |", "|---|---|---|"]
    need_header = True
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if m := _SECTION.match(line):
            lines += ["", f"### {m['title'][0].upper()}{m['title'][1:]}", ""]
            need_header = True
        elif m := _SUBSECTION.match(line):
            lines += ["", f"`{m['title']}`:", ""]
            need_header = True
        elif m := _CONST.match(line):
            if need_header:
                lines += header
                need_header = False
            doc = _escape_md(m["doc"] or "")
            lines.append(f"| `{m['name']}` | `{m['value']}` | {doc} |")
    return "\n".join(lines).strip() + "\n"


# --- tutorials -----------------------------------------------------------------------
def _notebook_title(path: Path) -> str:
    """Return the first markdown heading of a notebook, else its file name."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return path.stem


def tutorial_nav() -> list[dict[str, str]]:
    """Return nav entries ``{title: notebooks/<name>.ipynb}`` for ``notebooks/*.ipynb``."""
    return [
        {_notebook_title(nb): f"{NOTEBOOKS.name}/{nb.name}"}
        for nb in sorted(NOTEBOOKS.glob("*.ipynb"))
    ]


# --- docstring warnings --------------------------------------------------------------
# Cosmetic layout notes from griffe that do not change what the page says. They
# are demoted to INFO (visible with ``mkdocs build -v``); every other docstring
# warning (e.g. a documented parameter that does not exist) still fails --strict.
COSMETIC_GRIFFE_WARNINGS = ("Confusing indentation for continuation line",)


class _DemoteCosmetic(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and any(
            text in record.getMessage() for text in COSMETIC_GRIFFE_WARNINGS
        ):
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


# --- mkdocs events -------------------------------------------------------------------
def on_config(config):
    """Fill the ``Tutorials`` nav section; demote cosmetic docstring warnings."""
    griffe_log = logging.getLogger("mkdocs.plugins.griffe")
    if not any(isinstance(f, _DemoteCosmetic) for f in griffe_log.filters):
        griffe_log.addFilter(_DemoteCosmetic())
    for entry in config.nav or []:
        if isinstance(entry, dict) and "Tutorials" in entry:
            items = entry["Tutorials"] if isinstance(entry["Tutorials"], list) else []
            entry["Tutorials"] = [*items, *tutorial_nav()]
    return config


def _executor():
    """``scripts/execute_notebooks.py``: where executed copies are and whether current."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("execute_notebooks", EXECUTOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tutorial_mode() -> str:
    """Return ``$STALIGN_DOCS_TUTORIALS`` (default ``execute``), checked."""
    mode = os.environ.get(TUTORIALS_ENV, "execute").strip().lower() or "execute"
    if mode not in TUTORIAL_MODES:
        msg = f"{TUTORIALS_ENV}={mode!r}: expected one of {', '.join(TUTORIAL_MODES)}"
        raise PluginError(msg)
    return mode


def _execute_stale(executor, stale: list[Path]) -> dict[Path, Path]:
    """Execute ``stale`` notebooks in order into ``build/notebooks/``; fail on an error.

    Returns notebook → executed copy: the copies of this build, shown even if the code
    changed while they ran (their fingerprint then says so to the next build).
    """
    import tempfile

    log.info("executing %d tutorial(s) without a current copy (minutes)", len(stale))
    copies = {}
    with tempfile.TemporaryDirectory(prefix="stalign-docs-tutorials-") as results:
        for nb in stale:  # one results folder: 04 reuses the pairs 03 built
            try:
                copies[nb] = copy = executor.ensure_executed(nb, Path(results))
            except ImportError as e:
                msg = (
                    f"executing the tutorials needs {e.name or e} (pip install -e '.[test]'), "
                    f"or set {TUTORIALS_ENV}=skip to build without their outputs"
                )
                raise PluginError(msg) from e
            if found := executor.errors(copy):
                error = found[0] if len(found[0]) <= 300 else found[0][:300] + " ..."
                msg = (
                    f"tutorial {nb.name} raised while the docs executed it: {error} "
                    f"(the whole error is in {copy})"
                )
                raise PluginError(msg)
            log.info("executed %s", nb.name)
    return copies


def _tutorial_sources(executor) -> dict[Path, Path | None]:
    """Map each notebook to its current executed copy (None: shown without outputs)."""
    tree = executor.tree_digest()
    notebooks = sorted(NOTEBOOKS.glob("*.ipynb"))
    copies = {nb: executor.current_copy(nb, tree) for nb in notebooks}
    stale = [nb for nb, copy in copies.items() if copy is None]
    mode = tutorial_mode()
    if not stale or mode == "skip":
        return copies
    if mode == "require":
        names = ", ".join(nb.name for nb in stale)
        msg = f"tutorials without executed outputs ({names}): run `{EXECUTE_COMMAND}` first"
        raise PluginError(msg)
    return {**copies, **_execute_stale(executor, stale)}


#: notebook pages shown without outputs (``STALIGN_DOCS_TUTORIALS=skip``)
_UNEXECUTED: set[str] = set()


@event_priority(100)  # before mkdocs-jupyter wraps the notebook files
def on_files(files: Files, config) -> Files:
    """Add ``notebooks/*.ipynb`` (executed copies, see the module doc) as ``notebooks/<name>/``."""
    _UNEXECUTED.clear()
    for nb, executed in _tutorial_sources(_executor()).items():
        if executed is None:
            log.info("%s: shown without outputs (%s=skip)", nb.name, TUTORIALS_ENV)
            _UNEXECUTED.add(f"{NOTEBOOKS.name}/{nb.name}")
        # a real File (mkdocs-jupyter cannot wrap File.generated(...) objects: their
        # abs_src_path is lost), rooted where the copy is: its page stays notebooks/<name>/
        files.append(
            File(
                f"{NOTEBOOKS.name}/{nb.name}",
                src_dir=str(REPO if executed is None else executed.parent.parent),
                dest_dir=config.site_dir,
                use_directory_urls=config.use_directory_urls,
            )
        )
    return files


_NOTEBOOK_LINK = re.compile(r'href="(?:\./)?(\d\d_[\w-]+)\.ipynb(#[^"]*)?"')
_UNEXECUTED_BANNER = (
    '<div class="admonition warning"><p class="admonition-title">Outputs not shown</p>'
    f"<p>This page was built with <code>{TUTORIALS_ENV}=skip</code>: the notebook is "
    f"shown without its outputs. <code>{EXECUTE_COMMAND}</code> (or a plain "
    "<code>mkdocs build</code>) shows them.</p></div>"
)


def on_page_content(html: str, page, config, files) -> str:
    """Notebook pages: site URLs for links to other notebooks; a banner if unexecuted."""
    if not page.file.src_uri.endswith(".ipynb"):
        return html
    html = _NOTEBOOK_LINK.sub(lambda m: f'href="../{m[1]}/{m[2] or ""}"', html)
    if page.file.src_uri in _UNEXECUTED:
        html = _UNEXECUTED_BANNER + html
    return html


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Replace the ``<!-- stalign:... -->`` markers with generated content."""
    if "<!-- stalign:cli -->" in markdown:
        markdown = markdown.replace("<!-- stalign:cli -->", render_cli_reference())
    if "<!-- stalign:keys -->" in markdown:
        markdown = markdown.replace("<!-- stalign:keys -->", render_keys_table())
    if "<!-- stalign:manifest-readme -->" in markdown:
        if MANIFEST_README.is_file():
            text = MANIFEST_README.read_text(encoding="utf-8")
            # demote headings so the page keeps one h1
            text = re.sub(r"^(#+) ", r"#\1 ", text, flags=re.MULTILINE)
            # relative links in that README point into the repository, not the site
            text = re.sub(r"\[([^\]]+)\]\((?!https?://|#)[^)]+\)", r"`\1`", text)
        else:
            text = "*`data/manifests/README.md` is not in this checkout yet.*"
        markdown = markdown.replace("<!-- stalign:manifest-readme -->", text)
    return markdown
