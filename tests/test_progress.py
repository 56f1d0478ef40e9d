"""Progress bars in a Jupyter kernel without ipywidgets: a text bar, no TqdmWarning."""

from __future__ import annotations

import importlib.util
import sys
import types
import warnings

import pytest

from stalign._utils import progress_bar


@pytest.fixture
def kernel_without_widgets(monkeypatch):
    """Look like an IPython kernel to tqdm, with ipywidgets not importable."""
    shell = type("ZMQInteractiveShell", (), {})()
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: shell
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "ipykernel.zmqshell", types.ModuleType("zmqshell"))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "ipywidgets" else real_find_spec(name, *a),
    )
    for name in ("tqdm.auto", "tqdm.autonotebook", "tqdm.notebook"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import fails, as without it


def test_tqdm_auto_warns_there(kernel_without_widgets):
    """The situation the helper avoids (a warning on every tutorial page)."""
    with pytest.warns(Warning, match="IProgress not found"):
        importlib.import_module("tqdm.auto")


def test_progress_bar_draws_a_text_bar_quietly(kernel_without_widgets):
    from tqdm.std import tqdm

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bar = progress_bar(total=3, disable=True)
    assert type(bar) is tqdm
    bar.close()


def test_libraries_importing_tqdm_auto_stay_quiet_after_stalign(kernel_without_widgets):
    """huggingface_hub & co. import tqdm.auto themselves: stalign imports it first, quietly."""
    from tqdm.std import tqdm

    from stalign import _quiet_notebook_progress as quiet_notebook_progress

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet_notebook_progress()
        auto = importlib.import_module("tqdm.auto")  # what a library does next
    assert issubclass(auto.tqdm, tqdm)  # the text bar, not the widget
    assert not any("notebook" in c.__module__ for c in auto.tqdm.__mro__)
