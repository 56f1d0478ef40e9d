"""Plots. Each function returns the matplotlib ``Figure`` and saves it when ``save=`` is given."""

from ._bench import *  # noqa: F403  (each module defines __all__)
from ._pathways import *  # noqa: F403
from ._qc import *  # noqa: F403
from ._spatial import *  # noqa: F403
from ._training import *  # noqa: F403
