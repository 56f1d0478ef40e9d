"""Evaluation: gene / pathway prediction (HEST protocol), retrieval, MIL marker prediction.

Core functions take plain arrays, so any embedding can be scored the same way::

    res = st.bench.gene_prediction(X, counts, patient_ids, samples=sample_ids)
    print(res.mean, res.std)
"""

from ._depth_readout import depth_adjusted, partial_pearson
from ._evaluate import EvaluationResult, evaluate, run_evaluation
from ._feature_sources import embed_features
from ._features import (
    color_histogram,
    downsampled_pixels,
    encoder_features,
    library_size,
    squidpy_features,
)
from ._genes import hest_gene_panel
from ._mil import MarkerResult, marker_prediction
from ._positive_control import (
    PlantedPairs,
    PositiveControlResult,
    plant_grating,
    planted_signal_pairs,
    positive_control,
)
from ._probe import PROTOCOLS, ProbeResult, gene_prediction, pathway_prediction, pearson_columns
from ._publish import amend_evaluation_outputs, check_evaluation_outputs
from ._report_html import markdown_to_html, write_report_html
from ._retrieval import RetrievalResult, retrieval
from ._spec import REFERENCE_FEATURES, EvaluationSpec, Reference, parse_encoder_spec
from ._spot_table import load_pairs_arrays
from ._tasks import MarkerTask, bags_from_task, region_tasks, slide_task

__all__ = [
    "PROTOCOLS",
    "REFERENCE_FEATURES",
    "EvaluationResult",
    "EvaluationSpec",
    "MarkerResult",
    "MarkerTask",
    "PlantedPairs",
    "PositiveControlResult",
    "ProbeResult",
    "Reference",
    "RetrievalResult",
    "amend_evaluation_outputs",
    "bags_from_task",
    "check_evaluation_outputs",
    "color_histogram",
    "depth_adjusted",
    "downsampled_pixels",
    "embed_features",
    "encoder_features",
    "evaluate",
    "gene_prediction",
    "hest_gene_panel",
    "library_size",
    "load_pairs_arrays",
    "markdown_to_html",
    "marker_prediction",
    "parse_encoder_spec",
    "partial_pearson",
    "pathway_prediction",
    "pearson_columns",
    "plant_grating",
    "planted_signal_pairs",
    "positive_control",
    "region_tasks",
    "retrieval",
    "run_evaluation",
    "slide_task",
    "squidpy_features",
    "write_report_html",
]
