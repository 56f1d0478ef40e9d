"""The bundled mouse olfactory bulb sections: one section as AnnData, or in-memory pairs."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ._paths import example_manifest, require
from ._paths import mob_dir as _default_mob_dir

if TYPE_CHECKING:
    from anndata import AnnData

    from ..train import TensorPairsDataset

__all__ = ["mob_example_pairs", "mob_patients", "mob_section"]

logger = logging.getLogger(__name__)


def mob_patients() -> dict[str, str]:
    """Return section → patient id of the bundled MOB data, as its manifest states them.

    The two mice of the STUtility MOB data (Ståhl et al. 2016): ``mouse1`` (MOB1, MOB2)
    and ``mouse2`` (MOB3, MOB4). The manifest is the one home of these ids.
    """
    with open(require(example_manifest()), newline="", encoding="utf-8") as fh:
        return {row["sample_id"]: row["patient_id"] for row in csv.DictReader(fh)}


def mob_section(name: str = "MOB1") -> AnnData:
    """Read one bundled MOB section (legacy ST, Ståhl et al. 2016) as AnnData.

    Parameters
    ----------
    name
        ``"MOB1"`` … ``"MOB4"``.

    Returns
    -------
    AnnData
        The AnnData of `stalign.io.read_legacy_st` (counts, ``obsm['spatial']`` in
        level-0 px of the H&E, ``uns['stalign']['mpp']`` ≈ 4.4 µm/px).
    """
    from .. import io

    folder = require(_default_mob_dir())
    if not (folder / f"{name}.tsv.gz").is_file():
        available = sorted(p.name.removesuffix(".tsv.gz") for p in folder.glob("MOB*.tsv.gz"))
        msg = f"mob_section: no section {name!r} in {str(folder)!r}; available: {available}"
        raise ValueError(msg)
    return io.read_legacy_st(folder / name)


def mob_example_pairs(
    mob_dir: str | os.PathLike | None = None,
    sections: Sequence[str] = ("MOB1", "MOB2"),
    *,
    size_px: int = 64,
    mpp: float | None = None,
    gene_sets: str = "hallmark",
    method: str = "ssgsea",
    in_tissue_only: bool = True,
    patients: Mapping[str, str] | None = None,
    max_pairs: int | None = None,
) -> TensorPairsDataset:
    """Build an in-memory pairs dataset from legacy-ST MOB sections.

    Each spot's H&E patch (``size_px`` px at ``mpp`` µm/px; default the native image
    resolution, ≈4.4 µm/px, i.e. ≈280 µm across for 64 px) is paired with its pathway
    scores (`stalign.tl.score_pathways`, mouse symbols matched to human sets).

    Parameters
    ----------
    mob_dir
        Folder with ``MOBn.tsv.gz``, ``alignment_table_MOBn.tsv`` and ``MOBn.jpg``
        (default: the bundled sections, [`stalign.datasets.mob_dir`][stalign.datasets.mob_dir]).
    sections
        Section names to include.
    size_px, mpp
        Patch side (px) and resolution (µm/px).
    gene_sets, method
        Passed to [`stalign.tl.score_pathways`][stalign.tl.score_pathways].
    in_tissue_only
        Keep spots the alignment table marks as under tissue.
    patients
        Section → patient id (default: `mob_patients`, the manifest's
        ``mouse1`` / ``mouse2``).
    max_pairs
        Keep at most this many pairs per section (evenly spaced; for quick tests).

    Returns
    -------
    TensorPairsDataset
        A `stalign.train.TensorPairsDataset` with ``pathway_names``, ``sample_ids`` = section and
        ``patient_ids`` = mouse.
    """
    from .. import im, io, tl
    from ..train import TensorPairsDataset

    mob_dir = require(_default_mob_dir()) if mob_dir is None else Path(mob_dir)
    patients = dict(mob_patients() if patients is None else patients)
    images, scores, sids, pids, bcs = [], [], [], [], []
    names: list[str] | None = None
    for sec in sections:
        if not (mob_dir / f"{sec}.tsv.gz").is_file() and not (mob_dir / f"{sec}.tsv").is_file():
            msg = (
                f"mob_example_pairs: section {sec!r} not found in {str(mob_dir)!r} "
                f"(expected {sec}.tsv[.gz])"
            )
            raise FileNotFoundError(msg)
        adata = io.read_legacy_st(mob_dir / sec)
        tl.score_pathways(adata, gene_sets, method=method, progress=False)
        patch_mpp = mpp if mpp is not None else float(adata.uns["stalign"]["mpp"])
        patches = im.extract_patches(adata, mpp=patch_mpp, size_px=size_px)
        keep = adata.obs["patch_in_image"].to_numpy(bool)
        if in_tissue_only:
            keep &= adata.obs["in_tissue"].to_numpy(bool)
        idx = np.flatnonzero(keep)
        if max_pairs is not None and len(idx) > max_pairs:
            idx = idx[np.linspace(0, len(idx) - 1, max_pairs).round().astype(int)]
        df = adata.obsm["pathway_scores"]
        if names is None:
            names = list(df.columns)
        elif list(df.columns) != names:
            df = df.reindex(columns=names)
        images.append(patches[idx])
        scores.append(df.to_numpy(np.float32)[idx])
        sids += [sec] * len(idx)
        pids += [patients.get(sec, sec)] * len(idx)
        bcs += list(adata.obs_names[idx])
        logger.info("%s: %d pairs", sec, len(idx))
    return TensorPairsDataset(
        np.concatenate(images),
        np.nan_to_num(np.concatenate(scores)),
        sample_ids=sids,
        patient_ids=pids,
        barcodes=bcs,
        pathway_names=names,
    )
