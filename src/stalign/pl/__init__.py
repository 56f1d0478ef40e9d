"""Plots, and the step that readies pathway scores for scanpy's and squidpy's plots.

Each plot returns the matplotlib ``Figure`` and saves it when ``save=`` is given;
[`pathways_to_obs`][stalign.pl.pathways_to_obs] copies scores from ``obsm`` to ``obs``.
"""

from . import _bench, _obs, _pathways, _qc, _spatial, _training
from ._bench import *  # noqa: F403  (each module defines __all__)
from ._obs import *  # noqa: F403
from ._pathways import *  # noqa: F403
from ._qc import *  # noqa: F403
from ._spatial import *  # noqa: F403
from ._training import *  # noqa: F403

__all__ = [
    *_bench.__all__,
    *_obs.__all__,
    *_pathways.__all__,
    *_qc.__all__,
    *_spatial.__all__,
    *_training.__all__,
]
