"""Contrastive alignment of an image encoder with molecular profiles (see docs/architecture.md).

>>> from stalign.train import TrainConfig, fit
>>> result = fit(TrainConfig(encoder="vit_tiny_patch16_224", epochs=5), train_ds, val_ds)
"""

from ._checkpoint import (
    build_model,
    latest_checkpoint,
    load_model,
    previous_run_files,
    save_checkpoint,
)
from ._config import TrainConfig
from ._data import (
    GlobalBatchSampler,
    TensorPairsDataset,
    augment_batch,
    collate_pairs,
    crop_batch,
    image_statistics,
    pathway_statistics,
)
from ._fit import LOCK_FILE, FitResult, TrainingDivergedError, fit, validate
from ._loss import contrastive_loss, gather_features, pathway_soft_targets
from ._metrics import retrieval_metrics
from ._model import AlignmentModel, ImageTower, MolecularTower, ProjectionHead
from ._run_folder import check_run_folder
from ._targets import TransformedTargets, library_sizes

__all__ = [
    "LOCK_FILE",
    "AlignmentModel",
    "FitResult",
    "GlobalBatchSampler",
    "ImageTower",
    "MolecularTower",
    "ProjectionHead",
    "TensorPairsDataset",
    "TrainConfig",
    "TrainingDivergedError",
    "TransformedTargets",
    "augment_batch",
    "build_model",
    "check_run_folder",
    "collate_pairs",
    "contrastive_loss",
    "crop_batch",
    "fit",
    "gather_features",
    "image_statistics",
    "latest_checkpoint",
    "library_sizes",
    "load_model",
    "pathway_soft_targets",
    "pathway_statistics",
    "previous_run_files",
    "retrieval_metrics",
    "save_checkpoint",
    "validate",
]
