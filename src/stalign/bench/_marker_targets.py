"""The MIL marker task of an evaluation: region bags and the targets chosen for them."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ._spec import _UNIT, EvaluationSpec
from ._spot_table import PairsArrays
from ._tasks import MarkerTask, region_tasks

logger = logging.getLogger(__name__)


def _marker_task(
    data: PairsArrays, spec: EvaluationSpec, panel: Sequence[str]
) -> MarkerTask | None:
    """Region tasks; default targets are balanced (both classes >= 20 %) in every group.

    A group is a patient, or a section with ``split_by="sample"``. A target whose label
    follows the group (a batch effect) cannot be learned across groups and would leave
    a fold with one class, so it is passed over; when no target is left the marker tasks
    are skipped with a warning (``None``). Anything else wrong (e.g. a marker gene the
    store lacks) raises.
    """
    marker_genes = spec.marker_genes
    genes = list(marker_genes) if marker_genes is not None else list(panel)
    pw = list(data.pathways.var(axis=0).sort_values(ascending=False).index)
    full = region_tasks(
        data.coords,
        data.obs["sample_id"].to_numpy(str),
        data.obs["patient_id"].to_numpy(str),
        counts=data.counts,
        gene_names=data.gene_names,
        genes=genes,
        pathway_scores=data.pathways,
        pathways=pw,
        window=spec.region_window,
    )
    unit = "sample_id" if spec.split_level == "sample" else "patient_id"
    frac = full.labels.groupby(full.bag_obs[unit].to_numpy()).mean()
    ok = ((frac >= 0.2) & (frac <= 0.8)).all(axis=0)
    keep_g = [f"gene:{g}" for g in genes if marker_genes is not None or ok[f"gene:{g}"]]
    keep_g = keep_g if marker_genes is not None else keep_g[: spec.n_marker_genes]
    keep_p = [f"pathway:{q}" for q in pw if ok[f"pathway:{q}"]][: spec.n_marker_pathways]
    cols = keep_g + keep_p
    if not cols:
        logger.warning(
            "marker tasks skipped: no marker target is balanced within every %s",
            _UNIT[spec.split_level],
        )
        return None
    full.labels = full.labels[cols]
    full.values = full.values[cols]
    full.definition += (
        "; default targets: the most variable panel genes / pathways whose label is "
        f"balanced (20–80 % positive) within every {_UNIT[spec.split_level]}"
    )
    return full


def _build_marker_task(
    data: PairsArrays, spec: EvaluationSpec, panel: Sequence[str]
) -> MarkerTask | None:
    """Build the marker task; ``None`` when none is asked for or no target is balanced."""
    if spec.marker_genes is None and not spec.n_marker_genes and not spec.n_marker_pathways:
        return None
    return _marker_task(data, spec, panel)
