"""Training targets: a transform of the pathway profiles fitted on the training pairs only.

``TrainConfig.target_transform="depth_regression"`` removes from every pathway score a
cubic in log library size ([`stalign.pp.DepthRegression`][stalign.pp.DepthRegression]),
fitted on the training pairs (never the validation pairs) and applied to both; the fitted
coefficients are saved in each checkpoint's ``model.json`` (``target_transform``), so a
resumed run and a reloaded model use the same transform.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ._config import TARGET_TRANSFORMS

__all__ = ["TARGET_TRANSFORMS", "TransformedTargets", "library_sizes", "pathway_matrix"]

DEPTH_DEGREE = 3  # cubic in log library size


def library_sizes(dataset: Dataset) -> np.ndarray:
    """Library size (total raw counts) of each pair's spot, ``(n,)``.

    Read from ``dataset.total_counts`` ([`TensorPairsDataset`][stalign.train.TensorPairsDataset])
    or ``dataset.obs['total_counts']`` (`stalign.pairs.PairsDataset`: a pairs
    store records it per spot in ``pairs.h5ad``).

    Raises
    ------
    ValueError
        The dataset records no library size, or not one per pair.
    """
    n = len(dataset)
    values = getattr(dataset, "total_counts", None)
    obs = getattr(dataset, "obs", None)
    if values is None and obs is not None and "total_counts" in obs:
        values = obs["total_counts"].to_numpy()
    if values is None:
        msg = (
            f"target_transform='depth_regression' needs each pair's library size, but the "
            f"{type(dataset).__name__} has neither total_counts nor obs['total_counts'] "
            "(a pairs store records it; give TensorPairsDataset total_counts=...)"
        )
        raise ValueError(msg)
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.shape != (n,):
        msg = f"{type(dataset).__name__}: {values.size} library sizes for {n} pairs"
        raise ValueError(msg)
    return values


def pathway_matrix(dataset: Dataset) -> np.ndarray:
    """Return the ``(n, P)`` profiles of ``dataset`` (its ``pathways`` array, else per item)."""
    pw = getattr(dataset, "pathways", None)
    if pw is not None and np.ndim(pw) == 2 and len(pw) == len(dataset):
        return np.asarray(pw.cpu() if torch.is_tensor(pw) else pw, dtype=np.float64)
    rows = [torch.as_tensor(dataset[i]["pathways"]).double() for i in range(len(dataset))]
    return torch.stack(rows).numpy()


def fit_depth_regression(dataset: Dataset) -> Any:
    """Fit the cubic-in-log-depth regression per pathway on ``dataset`` (the training pairs)."""
    from ..pp import DepthRegression, log_depth

    depth = log_depth(library_sizes(dataset))
    return DepthRegression(degree=DEPTH_DEGREE).fit(pathway_matrix(dataset), depth)


def transform_from_meta(meta: dict[str, Any]) -> Any:
    """Rebuild the fitted transform a checkpoint's ``model.json`` records (``None`` if none)."""
    from ..pp import DepthRegression

    state = meta.get("target_transform")
    if not state or state.get("name") == "none":
        return None
    return DepthRegression.from_dict(state)


def transform_meta(name: str, transform: Any) -> dict[str, Any]:
    """Describe the target transform for ``model.json`` (its name and fitted state)."""
    return {"name": name, **(transform.to_dict() if transform is not None else {})}


class TransformedTargets(Dataset):
    """A view of a pairs dataset whose ``'pathways'`` are depth-adjusted by a fitted transform.

    The residuals are computed once, for all pairs; images and labels are read from
    ``dataset`` as they are.

    Parameters
    ----------
    dataset
        The pairs (with library sizes, see [`library_sizes`][stalign.train.library_sizes]).
    transform
        A fitted [`DepthRegression`][stalign.pp.DepthRegression].
    """

    def __init__(self, dataset: Dataset, transform: Any) -> None:
        from ..pp import log_depth

        self.dataset = dataset
        depth = log_depth(library_sizes(dataset))
        residuals = transform.transform(pathway_matrix(dataset), depth)
        self.pathways = torch.from_numpy(np.asarray(residuals, dtype=np.float32))
        self.pathway_names = getattr(dataset, "pathway_names", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = dict(self.dataset[i])
        item["pathways"] = self.pathways[int(i)]
        return item


def apply_target_transform(
    name: str,
    train: Dataset,
    val: Dataset | None,
    saved: dict[str, Any] | None = None,
) -> tuple[Dataset, Dataset | None, dict[str, Any]]:
    """Fit (on ``train`` only) or restore (``saved``: a checkpoint's meta) and apply it.

    Returns
    -------
    tuple
        The training and validation datasets to train on, and the ``target_transform``
        entry of ``model.json``.
    """
    if name == "none":
        return train, val, transform_meta(name, None)
    transform = transform_from_meta(saved) if saved is not None else None
    if transform is None:
        transform = fit_depth_regression(train)
    wrapped_val = TransformedTargets(val, transform) if val is not None else None
    return TransformedTargets(train, transform), wrapped_val, transform_meta(name, transform)
