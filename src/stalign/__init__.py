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

from ._utils import quiet_notebook_progress as _quiet_notebook_progress

__version__ = "0.1.0"

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
