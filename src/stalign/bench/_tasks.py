"""Bag-level (region / slide) marker tasks built from measured data.

With no public slide labels offline, a *marker task* is made from the spatial
transcriptomics itself:

* **bag** = one tissue region: the spots of one section falling in a square tile of
  ``window × window`` spot pitches (5 × 5 spots by default; the pitch is the median
  nearest-neighbour distance between spot centres, so the rule works for legacy ST,
  Visium and binned data alike). Tiles with fewer than ``min_spots`` spots are dropped.
* **label** of a gene target = 1 when the region's pseudo-bulk expression
  ``log1p(1e6 · Σ counts(gene) / Σ counts(all genes))`` is strictly above the median
  over all regions of the cohort, else 0.
* **label** of a pathway target = 1 when the mean pathway score of the region's spots
  is strictly above the cohort median.

User labels per slide are the other entry point (`slide_task`): one bag per
section holding all its spots, labelled by the user.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = ["MarkerTask", "bags_from_task", "region_tasks", "slide_task"]


@dataclass
class MarkerTask:
    """Bags of spots with binary labels.

    Attributes
    ----------
    bags
        One integer index array per bag (rows of the spot table).
    labels
        ``bags × targets`` DataFrame of 0/1 labels.
    values
        ``bags × targets`` DataFrame of the continuous value behind each label
        (NaN for user labels).
    bag_obs
        One row per bag: ``sample_id``, ``patient_id``, ``n_spots``, ``tile_x``, ``tile_y``.
    definition
        Human-readable task definition (goes into reports).
    params
        Parameters used to build the task.
    """

    bags: list[np.ndarray]
    labels: pd.DataFrame
    values: pd.DataFrame
    bag_obs: pd.DataFrame
    definition: str
    params: dict = field(default_factory=dict)


def _pitch(xy: np.ndarray) -> float:
    from scipy.spatial import cKDTree

    d, _ = cKDTree(xy).query(xy, k=2)
    nn = d[:, 1]
    nn = nn[nn > 0]
    if nn.size == 0:
        msg = "cannot estimate the spot pitch: all spot coordinates coincide"
        raise ValueError(msg)
    return float(np.median(nn))


def _gene_target_counts(counts, gene_names, genes: Sequence[str], n: int):
    """Return ``(counts as float64 CSR, column of each target gene)``.

    ``(None, None)`` without gene targets.
    """
    if not genes:
        return None, None
    if counts is None or gene_names is None:
        msg = "gene targets need counts= and gene_names="
        raise ValueError(msg)
    C = sp.csr_matrix(counts, dtype=np.float64)
    if C.shape[0] != n:
        msg = f"counts has {C.shape[0]} rows, expected {n}"
        raise ValueError(msg)
    pos = {str(g): i for i, g in enumerate(gene_names)}
    missing = [g for g in genes if g not in pos]
    if missing:
        msg = f"target genes not in gene_names: {missing}"
        raise ValueError(msg)
    return C, np.array([pos[g] for g in genes])


def _pathway_target_scores(
    pathway_scores: pd.DataFrame | None, pathways: Sequence[str], n: int
) -> np.ndarray | None:
    """``(n, n_targets)`` scores of the target pathways, or None without pathway targets."""
    if not pathways:
        return None
    if pathway_scores is None:
        msg = "pathway targets need pathway_scores= (DataFrame spots × pathways)"
        raise ValueError(msg)
    missing = [q for q in pathways if q not in pathway_scores.columns]
    if missing:
        msg = f"target pathways not in pathway_scores columns: {missing}"
        raise ValueError(msg)
    P = pathway_scores[list(pathways)].to_numpy(dtype=np.float64)
    if P.shape[0] != n:
        msg = f"pathway_scores has {P.shape[0]} rows, expected {n}"
        raise ValueError(msg)
    return P


def _tiles(
    xy: np.ndarray, s: np.ndarray, p: np.ndarray, window: int, min_spots: int
) -> tuple[list[np.ndarray], list[dict]]:
    """Cut each section into tiles of ``window`` spot pitches.

    Returns the spot indices of every tile with ≥ ``min_spots`` spots (never across
    sections) and one record per tile.
    """
    bags, rows = [], []
    for smp in dict.fromkeys(s.tolist()):
        idx = np.flatnonzero(s == smp)
        if idx.size < 2:
            continue
        side = window * _pitch(xy[idx])
        origin = xy[idx].min(axis=0)
        tile = np.floor((xy[idx] - origin) / side).astype(int)
        keys = tile[:, 0] * 100_000 + tile[:, 1]
        for k in np.unique(keys):
            members = idx[keys == k]
            if members.size < min_spots:
                continue
            bags.append(members)
            pats = np.unique(p[members])
            rows.append(
                {
                    "sample_id": smp,
                    "patient_id": pats[0],
                    "n_spots": members.size,
                    "tile_x": int(k // 100_000),
                    "tile_y": int(k % 100_000),
                }
            )
    if not bags:
        msg = (
            f"no region has >= {min_spots} spots with window={window}; "
            "lower min_spots or enlarge window"
        )
        raise ValueError(msg)
    return bags, rows


def region_tasks(
    coords,
    sample_ids,
    patient_ids,
    *,
    counts=None,
    gene_names: Sequence[str] | None = None,
    genes: Sequence[str] = (),
    pathway_scores: pd.DataFrame | None = None,
    pathways: Sequence[str] = (),
    window: int = 5,
    min_spots: int = 10,
) -> MarkerTask:
    """Build region-level marker tasks from measured expression / pathway scores.

    See the module docstring for the exact task definition.

    Parameters
    ----------
    coords
        ``(n, 2)`` spot centres (any unit, e.g. level-0 px; per section).
    sample_ids, patient_ids
        ``(n,)`` section and patient of each spot; tiles never cross sections.
    counts
        ``(n, n_genes)`` raw counts (dense or sparse), needed for gene targets.
    gene_names
        Column names of ``counts``.
    genes
        Gene targets (names in ``gene_names``).
    pathway_scores
        ``(n, n_pathways)`` DataFrame of spot pathway scores, for pathway targets.
    pathways
        Pathway targets (columns of ``pathway_scores``).
    window
        Tile side in spot pitches (5 → 5 × 5 spot neighbourhoods).
    min_spots
        Smallest number of spots a tile needs to become a bag.

    Returns
    -------
    MarkerTask
        `MarkerTask` with one label column per target (genes first, then pathways).
    """
    xy = np.asarray(coords, dtype=np.float64)
    n = xy.shape[0]
    if xy.ndim != 2 or xy.shape[1] != 2:
        msg = f"coords must be (n, 2) spot centres, got shape {xy.shape}"
        raise ValueError(msg)
    s = np.asarray(sample_ids).astype(str)
    p = np.asarray(patient_ids).astype(str)
    if s.shape != (n,) or p.shape != (n,):
        msg = f"sample_ids and patient_ids need one entry per spot ({n})"
        raise ValueError(msg)
    if window < 1 or min_spots < 1:
        msg = f"window and min_spots must be >= 1, got {window} and {min_spots}"
        raise ValueError(msg)
    if not genes and not pathways:
        msg = "give at least one target: genes=[...] (with counts) or pathways=[...]"
        raise ValueError(msg)

    C, gene_cols = _gene_target_counts(counts, gene_names, genes, n)
    P = _pathway_target_scores(pathway_scores, pathways, n)
    bags, rows = _tiles(xy, s, p, window, min_spots)
    values = {}
    if C is not None:
        total = np.array([C[b].sum() for b in bags])
        for g, col in zip(genes, gene_cols, strict=True):
            gsum = np.array([C[b, col].sum() for b in bags])
            values[f"gene:{g}"] = np.log1p(1e6 * gsum / np.maximum(total, 1.0))
    if P is not None:
        for j, q in enumerate(pathways):
            values[f"pathway:{q}"] = np.array([P[b, j].mean() for b in bags])
    vals = pd.DataFrame(values)
    labels = (vals > vals.median(axis=0)).astype(int)
    definition = (
        f"bag = spots of one section inside a {window}×{window}-spot-pitch tile "
        f"(≥ {min_spots} spots); label = region pseudo-bulk log1p-CPM of the gene "
        "(or mean pathway score) strictly above the cohort median over regions"
    )
    return MarkerTask(
        bags=bags,
        labels=labels,
        values=vals,
        bag_obs=pd.DataFrame(rows),
        definition=definition,
        params={"window": window, "min_spots": min_spots},
    )


def slide_task(
    sample_ids, patient_ids, labels: Mapping[str, int], *, name: str = "label"
) -> MarkerTask:
    """One bag per section with a user-given binary label.

    Parameters
    ----------
    sample_ids, patient_ids
        ``(n,)`` section and patient of each spot.
    labels
        ``{sample_id: 0 or 1}``; sections missing from it are left out.
    name
        Name of the label column.

    Returns
    -------
    MarkerTask
        [`MarkerTask`][stalign.bench.MarkerTask] with one bag per labelled section.
    """
    s = np.asarray(sample_ids).astype(str)
    p = np.asarray(patient_ids).astype(str)
    bad = {k: v for k, v in labels.items() if v not in (0, 1, True, False)}
    if bad:
        msg = f"slide labels must be 0/1, got {bad}"
        raise ValueError(msg)
    unknown = sorted(set(map(str, labels)) - set(s.tolist()))
    if unknown:
        msg = f"labels name sections that have no spots: {unknown}"
        raise ValueError(msg)
    bags, rows, ys = [], [], []
    for smp, y in labels.items():
        idx = np.flatnonzero(s == str(smp))
        bags.append(idx)
        rows.append(
            {
                "sample_id": str(smp),
                "patient_id": p[idx][0],
                "n_spots": idx.size,
                "tile_x": 0,
                "tile_y": 0,
            }
        )
        ys.append(int(y))
    return MarkerTask(
        bags=bags,
        labels=pd.DataFrame({name: ys}),
        values=pd.DataFrame({name: np.full(len(ys), np.nan)}),
        bag_obs=pd.DataFrame(rows),
        definition="bag = all spots of a section; label given by the user per section",
    )


def bags_from_task(X, task: MarkerTask) -> list[np.ndarray]:
    """Gather per-spot features ``X`` (n, d) into the task's bags."""
    X = np.asarray(X)
    return [X[b] for b in task.bags]
