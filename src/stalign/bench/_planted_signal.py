"""Plant the positive control's signal in real H&E patches.

The stain density of every patch gets a grating whose period encodes one pathway's
(replaced) score. See [`positive_control`][stalign.bench.positive_control]
(``bench/_positive_control.py``) for what the control tests and how it is run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy.special import ndtr

from .. import _keys as K
from ._features import library_size

if TYPE_CHECKING:
    from anndata import AnnData

    from ..train import TensorPairsDataset


logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------ the planted signal
def _depth_colour_covariates(log_depth: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Columns the latent is made orthogonal to: a cubic in log depth and the mean RGB."""
    d = (log_depth - log_depth.mean()) / (log_depth.std() or 1.0)
    colour = images.reshape(len(images), -1, 3).mean(axis=1)
    return np.column_stack([np.ones_like(d), d, d**2, d**3, colour])


def _orthogonal_latent(covariates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw a standard-normal latent, regress ``covariates`` out, rescale to unit sd."""
    z = rng.standard_normal(covariates.shape[0])
    beta, *_ = np.linalg.lstsq(covariates, z, rcond=None)
    z = z - covariates @ beta
    return z / z.std()


def _periods(latent: np.ndarray, period_px: tuple[float, float]) -> np.ndarray:
    """Map a standard-normal latent to a log-uniform grating period in ``period_px``."""
    lo, hi = period_px
    return lo * (hi / lo) ** ndtr(latent)


def plant_grating(
    images: np.ndarray,
    period_px: np.ndarray,
    *,
    amplitude: float = 0.8,
    seed: int = 0,
) -> np.ndarray:
    """Add a zero-mean sinusoidal grating to the stain density of each patch.

    The optical-density-like darkness ``1 - I`` of every pixel is multiplied by
    ``1 + amplitude * g`` where ``g`` is a sinusoid of the patch's period, a random
    orientation and a random phase, centred to mean 0 over the patch. The same factor
    applies to the three channels (hue unchanged), white background stays white, and
    each patch's mean colour is unchanged up to rounding, to the grating's correlation
    with the tissue and to clipping of pixels darker than ``amplitude / (1 + amplitude)``
    (3.5 % of the MOB pixels at 0.8: the mean shifts by < 0.5 grey levels on average, the
    same for every period). Only the period differs between patches, so it is the one
    thing the images say about the planted signal.

    Parameters
    ----------
    images
        ``(n, H, W, 3)`` uint8 RGB patches.
    period_px
        ``(n,)`` grating period of each patch in px (≥ 2, the Nyquist limit).
    amplitude
        Relative modulation of the stain density (0.8 = ±80 %).
    seed
        Seed of the orientations and phases.

    Returns
    -------
    np.ndarray
        ``(n, H, W, 3)`` uint8 patches with the grating.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        msg = f"images must be (n, H, W, 3) uint8, got {images.shape} {images.dtype}"
        raise ValueError(msg)
    period = np.asarray(period_px, dtype=np.float64)
    if period.shape != (images.shape[0],) or not (period >= 2).all():
        msg = f"period_px must hold one period >= 2 px per patch ({images.shape[0]}), got {period}"
        raise ValueError(msg)
    if not 0 < amplitude < 1:
        msg = f"amplitude must be in (0, 1), got {amplitude}"
        raise ValueError(msg)
    rng = np.random.default_rng(seed)
    n, h, w, _ = images.shape
    theta = rng.uniform(0, np.pi, n)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, n)[:, None, None]
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    u = x[None] * np.cos(theta) + y[None] * np.sin(theta)
    g = np.sin(2 * np.pi * u / period[:, None, None] + phase)
    g -= g.mean(axis=(1, 2), keepdims=True)
    dark = 1.0 - images.astype(np.float64) / 255.0
    out = 1.0 - dark * (1.0 + amplitude * g[..., None])
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


@dataclass
class PlantedPairs:
    """A planted-signal pair set (see `planted_signal_pairs`).

    Attributes
    ----------
    dataset
        The pairs: patches with the grating, profiles with the planted pathway; a
        `stalign.train.TensorPairsDataset` that `stalign.train.fit` takes.
    pathway
        Name of the planted pathway column.
    period_px
        ``(n,)`` grating period of each pair in px (the modulation parameter).
    log_library_size
        ``(n,)`` ``log1p`` total counts of each spot.
    params
        The settings used.
    """

    dataset: TensorPairsDataset
    pathway: str
    period_px: np.ndarray
    log_library_size: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def target(self) -> np.ndarray:
        """``(n,)`` the planted pathway's scores."""
        col = self.dataset.pathway_names.index(self.pathway)
        return self.dataset.pathways[:, col].numpy().astype(np.float64)

    @property
    def oracle(self) -> np.ndarray:
        """``(n, 1)`` the modulation parameter itself (log2 period), the best image feature."""
        return np.log2(self.period_px)[:, None]

    @property
    def patches(self) -> np.ndarray:
        """``(n, H, W, 3)`` uint8 patches with the grating."""
        return self.dataset.images.numpy()

    def independence(self) -> dict[str, float]:
        """Pearson r of the planted pathway with log depth and with each channel's mean."""
        t = self.target
        colour = self.patches.reshape(len(t), -1, 3).mean(axis=1)
        out = {"log_library_size": float(np.corrcoef(t, self.log_library_size)[0, 1])}
        for c, name in enumerate("RGB"):
            out[f"mean_{name}"] = float(np.corrcoef(t, colour[:, c])[0, 1])
        return out


def _section_arrays(
    adata: AnnData, size_px: int, mpp: float | None, pathway_key: str, in_tissue_only: bool
) -> tuple[np.ndarray, pd.DataFrame, np.ndarray, list[str]]:
    """Patches, pathway scores, log depth and barcodes of the usable spots of one section."""
    from .. import im

    patch_mpp = float(adata.uns[K.STALIGN]["mpp"]) if mpp is None else float(mpp)
    patches = im.extract_patches(adata, mpp=patch_mpp, size_px=size_px, progress=False)
    keep = adata.obs[K.PATCH_IN_IMAGE].to_numpy(bool)
    if in_tissue_only and K.IN_TISSUE in adata.obs:
        keep &= adata.obs[K.IN_TISSUE].to_numpy(bool)
    idx = np.flatnonzero(keep)
    counts = adata.layers[K.COUNTS_LAYER] if K.COUNTS_LAYER in adata.layers else adata.X
    depth = library_size(counts[idx])[:, 0].astype(np.float64)
    scores = pd.DataFrame(adata.obsm[pathway_key]).iloc[idx]
    return patches[idx], scores, depth, list(adata.obs_names[idx])


def _profile_columns(
    sections: Sequence[AnnData],
    pathway_key: str,
    pathway: str | None,
    keep_pathways: Sequence[str] | None,
) -> tuple[str, list[str]]:
    """Return the planted pathway and the profile's columns, checked before any work."""
    for i, a in enumerate(sections):
        if pathway_key not in a.obsm:
            msg = (
                f"planted_signal_pairs: section {i} has no obsm[{pathway_key!r}]; "
                "run stalign.tl.score_pathways on it first"
            )
            raise KeyError(msg)
    names = [str(c) for c in pd.DataFrame(sections[0].obsm[pathway_key]).columns]
    pathway = names[0] if pathway is None else pathway
    if pathway not in names:
        msg = f"planted_signal_pairs: pathway {pathway!r} not among the scored ones {names[:5]}..."
        raise ValueError(msg)
    if keep_pathways is None:
        return pathway, names
    unknown = sorted(set(keep_pathways) - set(names))
    if unknown:
        msg = f"planted_signal_pairs: keep_pathways names unscored pathways {unknown}"
        raise ValueError(msg)
    return pathway, [n for n in names if n == pathway or n in set(keep_pathways)]


def planted_signal_pairs(
    sections: Sequence[AnnData],
    *,
    patients: Sequence[str] | None = None,
    pathway: str | None = None,
    keep_pathways: Sequence[str] | None = None,
    size_px: int = 40,
    mpp: float | None = None,
    period_px: tuple[float, float] = (4.0, 16.0),
    amplitude: float = 0.8,
    seed: int = 0,
    in_tissue_only: bool = True,
    pathway_key: str = K.PATHWAY_SCORES,
) -> PlantedPairs:
    """Build a pair set whose patches carry a known, depth- and colour-free molecular signal.

    Each usable spot of ``sections`` keeps its real H&E patch and its real pathway
    profile, except the ``pathway`` column: its scores are replaced by a latent drawn
    with ``seed``, regressed on a cubic in log library size and on the patch's mean
    RGB (so it is uncorrelated with both in-sample, and independent of them by
    construction), and rescaled to the pathway's own mean and sd. The patch gets a faint
    stain-density grating (`plant_grating`) whose period, log-uniform in
    ``period_px``, is the normal CDF of the latent: a rank-preserving, noiseless code,
    so the period alone predicts the planted pathway with Pearson ≈ 0.98.

    Parameters
    ----------
    sections
        AnnData sections with ``obsm[pathway_key]`` (`stalign.tl.score_pathways`),
        raw counts (``layers['counts']`` or ``X``) and a registered H&E image, e.g.
        [`stalign.datasets.mob_section`][stalign.datasets.mob_section].
    patients
        Patient id of each section (default: one patient per section, its position).
    pathway
        The pathway column to plant (default: the first column).
    keep_pathways
        The real pathway columns kept in the profile beside the planted one (default:
        all). Fewer columns make the planted one a larger share of the profile; with
        the 40 Hallmark sets of MOB the tiny test encoder learns it far more slowly.
    size_px, mpp
        Patch side (px) and resolution (µm/px; default: each image's own). Store the
        patch ``2 * jitter_px`` larger than the training crop.
    period_px
        Shortest and longest grating period in px of the stored patch (≥ 2 px).
    amplitude
        Relative modulation of the stain density (`plant_grating`).
    seed
        Seed of the latent and the gratings.
    in_tissue_only
        Keep only spots with ``obs['in_tissue']`` when the column exists.
    pathway_key
        Key of the pathway scores in ``obsm``.

    Returns
    -------
    PlantedPairs
        Sample id = the section's ``library_id`` or position.
    """
    from ..train import TensorPairsDataset

    if len(sections) == 0:
        msg = "planted_signal_pairs: sections is empty"
        raise ValueError(msg)
    patients = [str(i) for i in range(len(sections))] if patients is None else list(patients)
    if len(patients) != len(sections):
        msg = f"patients has {len(patients)} entries for {len(sections)} sections"
        raise ValueError(msg)
    pathway, names = _profile_columns(sections, pathway_key, pathway, keep_pathways)
    parts = [_section_arrays(a, size_px, mpp, pathway_key, in_tissue_only) for a in sections]
    images = np.concatenate([p[0] for p in parts])
    scores = np.concatenate([p[1].reindex(columns=names).to_numpy(np.float64) for p in parts])
    scores = np.nan_to_num(scores)
    depth = np.concatenate([p[2] for p in parts])
    rng = np.random.default_rng(seed)
    latent = _orthogonal_latent(_depth_colour_covariates(depth, images), rng)
    col = names.index(pathway)
    scores[:, col] = scores[:, col].mean() + (scores[:, col].std() or 1.0) * latent
    period = _periods(latent, period_px)
    planted = plant_grating(images, period, amplitude=amplitude, seed=seed + 1)
    sample_ids = [
        str(a.uns.get(K.STALIGN, {}).get("library_id", i))
        for i, (a, p) in enumerate(zip(sections, parts, strict=True))
        for _ in range(len(p[3]))
    ]
    dataset = TensorPairsDataset(
        planted,
        scores.astype(np.float32),
        sample_ids=sample_ids,
        patient_ids=[pid for pid, p in zip(patients, parts, strict=True) for _ in p[3]],
        barcodes=[b for p in parts for b in p[3]],
        pathway_names=names,
    )
    params = {
        "pathway": pathway,
        "pathways": names,
        "size_px": size_px,
        "mpp": mpp,
        "period_px": list(period_px),
        "amplitude": amplitude,
        "seed": seed,
        "in_tissue_only": in_tissue_only,
    }
    return PlantedPairs(dataset, pathway, period, depth, params)


# ------------------------------------------------------------------------ the control
