"""stalign: spatial-transcriptomics-guided alignment of pathology image encoders.

Submodules follow the scanpy layout and are imported lazily, so
``import stalign`` stays fast and torch is only loaded when a model is used::

    import stalign as st
    adata = st.io.read("data/examples/mob/MOB1")
    st.im.extract_patches(adata)
    st.tl.score_pathways(adata, "hallmark")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"


class StalignError(RuntimeError):
    """A failure stalign detected and explains: a folder in use, a diverged run, a failed sample.

    Its message says what happened and what to do, so the ``stalign`` commands print it
    as one line (``-vv`` adds the traceback), as they do ``ValueError`` and ``OSError``.
    Any other ``RuntimeError`` (from torch, CUDA, or a bug) keeps its traceback.
    """

_SUBMODULES = (
    "io",
    "im",
    "pp",
    "tl",
    "pl",
    "pairs",
    "models",
    "train",
    "bench",
    "datasets",
    "cli",
)

if TYPE_CHECKING:  # pragma: no cover
    from . import bench, cli, datasets, im, io, models, pairs, pl, pp, tl, train  # noqa: F401


def _quiet_notebook_progress() -> None:
    """Import ``tqdm.auto`` once, silently, in a Jupyter kernel without ipywidgets.

    There ``tqdm.auto`` warns ``TqdmWarning: IProgress not found`` when first imported,
    by stalign or by a library it uses (huggingface_hub, dask, ...), and then draws
    its text bar anyway. Imported here first with that one warning silenced, it draws
    the same text bar without printing the warning into every notebook. Nothing
    happens outside a kernel or where ipywidgets is installed.
    """
    import importlib.util
    import sys
    import warnings

    if "ipykernel.zmqshell" not in sys.modules or "tqdm.autonotebook" in sys.modules:
        return
    if importlib.util.find_spec("ipywidgets") is not None:
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found")
        import tqdm.autonotebook  # noqa: F401


_quiet_notebook_progress()  # no TqdmWarning in notebooks without ipywidgets


def __getattr__(name: str):
    if name in _SUBMODULES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    msg = f"module 'stalign' has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted([*globals(), *_SUBMODULES])
