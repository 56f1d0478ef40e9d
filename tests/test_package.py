"""Package-level promises: lazy submodules, a light CLI parser, help that lists the commands.

Each import check runs in a fresh interpreter: the test session itself has long
imported torch and scanpy, so ``sys.modules`` here says nothing.
"""

import json
import re
import subprocess
import sys

import pytest

import stalign

# every sub-command the CLI offers (a removed or renamed command fails here on purpose)
COMMANDS = {
    "build-pairs",
    "merge-pairs",
    "train",
    "encoders",
    "embed",
    "export",
    "evaluate",
    "demo",
    "manifest",
}
HEAVY = ("torch", "scanpy", "anndata", "squidpy", "timm", "matplotlib", "stalign.io")


def _loaded_after(code: str) -> set[str]:
    """Run ``code`` in a fresh interpreter; return the module names it left in sys.modules."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_version():
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", stalign.__version__)


def test_import_stalign_loads_no_submodule_and_no_heavy_dependency():
    loaded = _loaded_after("import stalign")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
    assert sorted(m for m in loaded if m.startswith("stalign.")) == []


def test_submodule_loads_on_first_access():
    loaded = _loaded_after("import stalign\nstalign.io.read")
    assert "stalign.io" in loaded
    assert "stalign.train" not in loaded and "torch" not in loaded


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = stalign.nope


def test_cli_parser_imports_no_heavy_dependency():
    """``stalign --help`` stays fast: commands import their libraries when they run."""
    loaded = _loaded_after("from stalign.cli import build_parser\nbuild_parser()")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_cli_help_lists_the_commands():
    out = subprocess.run(
        [sys.executable, "-m", "stalign", "--help"], capture_output=True, text=True, check=True
    )
    # the argparse sub-command table: "    name   summary" lines under COMMAND
    listed = set(re.findall(r"^ {4}([a-z][a-z-]+) {2,}\S", out.stdout, flags=re.MULTILINE))
    assert listed == COMMANDS, out.stdout


def test_cli_parser_registers_exactly_the_commands():
    import argparse

    from stalign.cli import build_parser

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(sub.choices) == COMMANDS
