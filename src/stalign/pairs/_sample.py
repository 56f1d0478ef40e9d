"""Build one shard: read a sample, extract patches, score pathways, write the files."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import _keys as K
from ._hest_reuse import NO_HEST_PATCH, HestPatchSource, plan_hest_reuse
from ._manifest import Sample
from ._params import PairsParams
from ._store import (
    PAIRS_H5AD,
    PATCHES_H5,
    SPOTS_CSV,
    THUMBNAIL_PNG,
    PatchWriter,
    ShardInputs,
    commit_shard,
    new_shard_tmpdir,
    sample_dir,
)

logger = logging.getLogger(__name__)

#: reasons a spot is dropped, in the order they are checked (spots.csv ``reason``)
DROP_REASONS = ("outside_image", "not_in_tissue_call", "low_tissue", "no_counts")
#: drop reason of a spot with fewer counts than ``PairsParams.rarefy_depth`` (when set)
BELOW_RAREFY_DEPTH = "below_rarefy_depth"
PAIRS_UNS = K.PAIRS_INFO  # uns key of pairs.h5ad: JSON string with sample + params
#: shard file: the slide's tissue mask on the thumbnail grid (uint8 coverage, 255 = tissue)
TISSUE_MASK_PNG = "tissue_mask.png"
#: spots.csv column: the per-pixel tissue fraction (``tissue_qc="pixels"`` rule), kept
#: beside the mask coverage so the QC report can compare the two rules
TISSUE_FRACTION_PIXELS = "tissue_fraction_pixels"


class SampleError(RuntimeError):
    """A sample could not be turned into pairs; the message says why."""


def _read(sample: Sample, **kwargs: Any) -> Any:
    """Read a manifest row with the platform's reader ``stalign.io.read_<platform>``.

    Falls back to ``stalign.io.read(path, platform=...)`` for platforms without a
    dedicated reader function. ``kwargs`` go to the reader.
    """
    from .. import io as st_io

    if sample.image:
        kwargs["image"] = sample.image
    if sample.mpp:
        kwargs["mpp"] = sample.mpp
    reader = getattr(st_io, f"read_{sample.platform}", None)
    if reader is None:
        generic = getattr(st_io, "read", None)
        if generic is None:
            msg = (
                f"sample {sample.sample_id}: no reader for platform {sample.platform!r} "
                f"(expected stalign.io.read_{sample.platform} or stalign.io.read)"
            )
            raise SampleError(msg)
        return generic(sample.path, platform=sample.platform, **kwargs)
    return reader(sample.path, **kwargs)


def _counts(adata: Any) -> Any:
    import scipy.sparse as sp

    X = adata.layers[K.COUNTS_LAYER] if K.COUNTS_LAYER in adata.layers else adata.X
    return sp.csr_matrix(X, dtype=np.float32)


def _panel_genes(adata: Any, panel: str) -> tuple[list[str], list[str]]:
    """Return the genes kept by ``panel`` ('all', 'hvg:N' or a gene-list file).

    Also returns the genes of a panel file that the sample lacks (warned: left out).
    """
    names = list(adata.var_names)
    if panel == "all":
        return names, []
    if panel.startswith("hvg:"):
        import scanpy as sc

        n = int(panel[4:])
        if n >= adata.n_vars:
            return names, []
        tmp = sc.AnnData(_counts(adata))
        tmp.var_names = adata.var_names
        sc.pp.normalize_total(tmp, target_sum=1e4)
        sc.pp.log1p(tmp)
        sc.pp.highly_variable_genes(tmp, n_top_genes=n, flavor="seurat")
        hv = tmp.var["highly_variable"].to_numpy()
        return [g for g, keep in zip(names, hv, strict=True) if keep], []
    wanted = [
        line.strip()
        for line in Path(panel).read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    lookup = {g.upper(): g for g in names}
    if K.GENE_IDS in adata.var:
        for g, gid in zip(names, adata.var[K.GENE_IDS].astype(str), strict=True):
            lookup.setdefault(gid.upper().split(".")[0], g)
    found = list(dict.fromkeys(lookup[w.upper()] for w in wanted if w.upper() in lookup))
    if not found:
        msg = (
            f"gene panel {panel}: none of its {len(wanted)} genes is in the sample "
            f"(e.g. panel {wanted[:3]} vs sample {names[:3]})"
        )
        raise SampleError(msg)
    missing = [w for w in dict.fromkeys(wanted) if w.upper() not in lookup]
    if missing:
        warnings.warn(
            f"gene panel {panel}: {len(missing)} of {len(wanted)} genes are not in the sample "
            f"and are left out: {', '.join(missing[:20])}{' …' if len(missing) > 20 else ''}",
            UserWarning,
            stacklevel=2,
        )
    return found, missing


def _thumbnail(adata: Any, mpp0: float, longest_px: int) -> tuple[np.ndarray, dict[str, float]]:
    """Down-sampled H&E of the whole image and the transform from level-0 px to it."""
    from .. import im

    slide = im.open_image(adata)
    w, h = int(slide.width), int(slide.height)
    scale = max(w, h) / float(longest_px)  # level-0 px per thumbnail px
    if scale < 1:
        scale = 1.0
    tw, th = max(1, round(w / scale)), max(1, round(h / scale))
    side = max(tw, th)
    patch = slide.read_patch(w / 2.0, h / 2.0, size_px=side, mpp=mpp0 * scale)
    ox = (side - tw) // 2
    oy = (side - th) // 2
    thumb = np.ascontiguousarray(patch[oy : oy + th, ox : ox + tw])
    return thumb, {"scale": scale, "width": w, "height": h}


def _tissue_qc_info(
    params: PairsParams,
    has_call: bool,
    min_tissue: float,
    tmask: Any,
    pixel_threshold: float | None,
) -> dict[str, Any]:
    """How this sample's tissue QC was decided (recorded in ``_SUCCESS`` and pairs.h5ad).

    ``pixel_threshold`` is ``None`` when no slide was opened (HEST's own patches and
    tissue segmentation were used; ``_SUCCESS['tissue_source']`` says which).
    """
    info: dict[str, Any] = {
        "rule": params.tissue_qc if pixel_threshold is not None else "hest",
        "in_tissue_call": bool(has_call),
        "min_tissue_fraction": float(min_tissue),
    }
    if pixel_threshold is not None:
        info["pixel_saturation_threshold"] = round(float(pixel_threshold), 4)
    if tmask is not None:
        info["mask"] = tmask.params
        info["mask_area_mm2"] = round(tmask.tissue_area_mm2, 4)
    return info


def _png_bytes(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def build_sample(
    sample: Sample,
    params: PairsParams,
    out: str | Path,
    *,
    fingerprint: str,
    inputs: ShardInputs | None = None,
    orphan_check: Callable[[], None] | None = None,
    progress_position: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Build and commit the shard ``OUT/samples/<sample_id>``.

    Parameters
    ----------
    sample
        A validated manifest row.
    params
        Build parameters.
    out
        Root of the pairs store.
    fingerprint
        `params_fingerprint` of the build, recorded in
        ``_SUCCESS`` so a resumed build with other parameters is refused.
    inputs
        The identity of the sample's input files (and their stat), recorded in
        ``_SUCCESS`` so a resume notices changed inputs; ``None`` records none.
    orphan_check
        Called right before the commit (see `commit_shard`): a worker process whose
        build is gone exits there.
    progress_position, progress
        Position of this sample's tqdm bar (one per worker) and whether to show it.

    Returns
    -------
    dict
        The ``_SUCCESS`` record (counts, pathways, checksums, timings).

    Raises
    ------
    SampleError
        No spot survives QC (e.g. all coordinates miss the image), or a gene
        panel matches nothing.
    """
    from .._utils import progress_bar as tqdm

    clock = _Clock()
    # the stack owns what outlives one phase (HEST's patch source, the progress bar):
    # every exit, error or not, closes them
    with contextlib.ExitStack() as stack:
        read = _read_sample(sample, params, clock)
        if read.source is not None:
            stack.callback(read.source.close)
        tmp = new_shard_tmpdir(out, sample.sample_id)
        bar = tqdm(
            total=read.spots.n,
            desc=f"{sample.sample_id:>10}",
            unit="spot",
            position=progress_position,
            leave=False,
            disable=not progress,
        )
        stack.callback(bar.close)
        image = _stream_patches(tmp, read, params, bar)
        clock.lap("patches")

        scores = _score_spots(read, params)
        clock.lap("pathways")

        shard = _write_shard_files(tmp, read, image, scores, params, fingerprint)
        clock.lap("write")

        record = _success_record(read, scores, shard, params, fingerprint)
        # timings vary from run to run: kept out of _SUCCESS (checksummed content)
        commit_shard(
            tmp,
            sample_dir(out, sample.sample_id),
            record,
            inputs=inputs,
            orphan_check=orphan_check,
        )
        record["timings_s"] = clock.total()
        return record


class _Clock:
    """Seconds per phase of a shard build (``timings_s`` of the returned record)."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        """Record the seconds since the previous lap as ``name``."""
        now = time.perf_counter()
        self.laps[name] = round(now - self.last, 3)
        self.last = time.perf_counter()

    def total(self) -> dict[str, float]:
        """Return the laps and the seconds since the start (``total``)."""
        return {**self.laps, "total": round(time.perf_counter() - self.start, 3)}


@dataclass
class _SampleRead:
    """A sample as read: its AnnData, counts, spot QC and where its patches come from."""

    sample: Sample
    adata: Any  # the reader's AnnData (with its WSI unless HEST's patches are used)
    meta: dict[str, Any]  # adata.uns['stalign'] of the first read
    mpp0: float  # µm/px of the level-0 image
    counts: Any  # CSR counts, spots × genes
    spots: _SpotQC
    source: HestPatchSource | None  # HEST's own patches, or None: read from the WSI
    wsi_reason: str  # why HEST's patches were not used ("" if they were, or no HEST)


def _read_sample(sample: Sample, params: PairsParams, clock: _Clock) -> _SampleRead:
    """Read the sample (lap ``read``), start its spot QC, open HEST's patches if they fit."""
    plan, wsi_reason = plan_hest_reuse(sample, params)
    adata = _read(sample, use_wsi=False) if plan is not None else _read(sample)
    meta = adata.uns.get(K.STALIGN, {})
    mpp0 = _level0_mpp(sample, meta)
    clock.lap("read")

    counts = _counts(adata)
    spots = _SpotQC.start(adata, counts, params)
    source = None
    if plan is not None:
        source, adata, wsi_reason = _hest_source(sample, plan, adata, params, mpp0)
    return _SampleRead(sample, adata, meta, mpp0, counts, spots, source, wsi_reason)


@dataclass
class _ImageQC:
    """The slide-level tissue QC of a sample read from its WSI (both ``None`` for HEST's)."""

    tmask: Any = None  # the slide's tissue mask (``tissue_qc="mask"``)
    pixel_threshold: float | None = None  # the slide's saturation threshold (per-pixel rule)


def _stream_patches(tmp: Path, read: _SampleRead, params: PairsParams, bar: Any) -> _ImageQC:
    """Stream the patches into ``tmp/patches.h5`` (bounded memory), filling the spot QC.

    Patches come from HEST's own files (no WSI is opened) or from the slide, which is
    open only while they stream.
    """
    from .. import im

    image = _ImageQC()
    with contextlib.ExitStack() as stack:
        writer = stack.enter_context(_patch_writer(tmp, params))
        if read.source is not None:
            batches = read.source.batches()
        else:
            slide = im.open_image(read.adata)
            stack.callback(slide.close)
            image.tmask = im.tissue_mask(slide) if params.tissue_qc == "mask" else None
            image.pixel_threshold = im.tissue_threshold(slide)
            batches = _wsi_batches(read.adata, slide, params, image.tmask, image.pixel_threshold)
        for batch in batches:
            pixels = (
                None
                if image.tmask is None
                else im.tissue_fraction(batch.images, image.pixel_threshold)
            )
            ok = read.spots.record(batch, pixels)
            writer.append(batch.images[ok], batch.topleft[ok], list(batch.barcodes[ok]))
            bar.update(len(batch))
    return image


@dataclass
class _SpotScores:
    """Which spots are kept (and why the others are not) and the kept spots' scores."""

    reason: np.ndarray  # drop reason per spot, "" = kept
    keep: np.ndarray  # bool per spot
    kept: Any  # AnnData of the kept spots, obsm['pathway_scores'] filled
    pathways: list[str]
    pathway_uns: dict[str, Any]  # recorded scoring parameters (+ the depth table)
    depth: dict[str, Any]  # depth diagnostics ({} without scores)


def _score_spots(read: _SampleRead, params: PairsParams) -> _SpotScores:
    """Decide each spot's fate, score the kept spots' pathways and their depth diagnostics."""
    sid = read.sample.sample_id
    missing = read.source.missing() if read.source is not None else None
    reason = read.spots.reasons(sid, missing)
    keep = reason == ""
    kept = read.adata[keep].copy()
    names, uns = _score_pathways(kept, params)
    depth = _pathway_depth(kept, params, read.spots, keep, sid, uns)
    return _SpotScores(reason, keep, kept, names, uns, depth)


@dataclass
class _ShardFiles:
    """What writing the shard's files decided (recorded in ``_SUCCESS``)."""

    genes: list[str]  # the stored gene panel
    panel_missing: list[str]  # genes of a panel file the sample lacks
    thumbnail: dict[str, Any]
    tissue_qc: dict[str, Any]


def _write_shard_files(
    tmp: Path,
    read: _SampleRead,
    image: _ImageQC,
    scores: _SpotScores,
    params: PairsParams,
    fingerprint: str,
) -> _ShardFiles:
    """Write ``pairs.h5ad``, ``spots.csv`` and the thumbnail (+ tissue mask) into ``tmp``."""
    sample, adata, spots = read.sample, read.adata, read.spots
    tissue_qc = _tissue_qc_info(
        params, spots.has_call, spots.min_tissue, image.tmask, image.pixel_threshold
    )
    genes, panel_missing = _panel_genes(adata, params.gene_panel)
    pairs = _pairs_anndata(
        adata, read.counts, scores.kept, spots, scores.keep, genes, sample, params
    )
    info = {
        "sample": sample.to_dict(),
        "params": params.to_dict(),
        "params_fingerprint": fingerprint,
        "mpp_level0": read.mpp0,
        "pathways": scores.pathways,
        "pathway_scores": scores.pathway_uns,
        "tissue_qc": tissue_qc,
    }
    pairs.uns[PAIRS_UNS] = json.dumps(info, sort_keys=True, default=str)
    pairs.write_h5ad(tmp / PAIRS_H5AD)

    spots.table(adata.obs_names, scores.reason).to_csv(
        tmp / SPOTS_CSV, float_format="%.6g", lineterminator="\n"
    )
    thumbnail = _write_thumbnail(tmp, adata, read.source, image.tmask, read.mpp0, params)
    return _ShardFiles(genes, panel_missing, thumbnail, tissue_qc)


def _success_record(
    read: _SampleRead,
    scores: _SpotScores,
    shard: _ShardFiles,
    params: PairsParams,
    fingerprint: str,
) -> dict[str, Any]:
    """Return the ``_SUCCESS`` record, before `commit_shard` adds checksums and inputs."""
    sample, source = read.sample, read.source
    return {
        "format": "stalign-pairs-shard",
        "sample_id": sample.sample_id,
        "patient_id": sample.patient_id,
        "sample": sample.to_dict(),
        "params_fingerprint": fingerprint,
        "n_spots": int(read.spots.n),
        "n_pairs": int(scores.keep.sum()),
        "n_genes": len(shard.genes),
        "genes": shard.genes,
        **({"panel_missing": shard.panel_missing} if shard.panel_missing else {}),
        "pathways": scores.pathways,
        "dropped": _dropped(scores.reason, hest=source is not None, rarefy=params.rarefy_depth),
        **({"pathway_depth": scores.depth} if scores.depth else {}),
        **(source.info if source is not None else _wsi_info(read.adata, read.wsi_reason, params)),
        **_geometry(read.meta, params, read.mpp0),
        "thumbnail": shard.thumbnail,
        "tissue_qc": shard.tissue_qc,
    }


def _level0_mpp(sample: Sample, meta: dict[str, Any]) -> float:
    """Return the µm/px of the sample's level-0 image; refuse an unknown one."""
    mpp0 = meta.get(K.MPP)
    if not mpp0:
        msg = (
            f"sample {sample.sample_id}: the image's µm/px is unknown; "
            "set the 'mpp' column of the manifest"
        )
        raise SampleError(msg)
    return float(mpp0)


@dataclass
class _SpotQC:
    """Per-spot QC of one sample, filled batch by batch as the patches stream past."""

    xy: np.ndarray  # (n, 2) level-0 px
    total: np.ndarray  # counts per spot
    n_genes: np.ndarray  # genes with counts per spot
    in_tissue_call: np.ndarray  # the platform's call (all True when not used)
    has_call: bool
    min_tissue: float  # minimum tissue fraction of a kept patch
    in_image: np.ndarray
    tissue_fraction: np.ndarray
    pixel_fraction: np.ndarray  # the per-pixel rule, for the QC report
    min_counts: float = 0.0  # fewest counts of a kept spot (the rarefaction depth, if any)

    @property
    def n(self) -> int:
        """Number of spots."""
        return len(self.xy)

    @classmethod
    def start(cls, adata: Any, counts: Any, params: PairsParams) -> _SpotQC:
        """Start from the counts and platform call of every spot; image QC still empty."""
        n = adata.n_obs
        has_call = bool(params.use_in_tissue and K.IN_TISSUE in adata.obs)
        call = adata.obs[K.IN_TISSUE].to_numpy(bool) if has_call else np.ones(n, bool)
        # a trusted platform call needs only a minimum mask coverage (see PairsParams)
        trusted = params.tissue_qc == "mask" and has_call
        return cls(
            xy=np.asarray(adata.obsm[K.SPATIAL], dtype=np.float64)[:, :2],
            total=np.asarray(counts.sum(axis=1)).ravel(),
            n_genes=np.diff(counts.indptr),
            in_tissue_call=call,
            has_call=has_call,
            min_tissue=params.min_mask_coverage if trusted else params.tissue_threshold,
            in_image=np.zeros(n, bool),
            tissue_fraction=np.zeros(n, np.float32),
            pixel_fraction=np.zeros(n, np.float32),
            min_counts=float(params.rarefy_depth or 0),
        )

    def record(self, batch: Any, pixel_fraction: np.ndarray | None) -> np.ndarray:
        """Store a batch's image QC; return which of its patches are kept."""
        sl = slice(batch.start, batch.start + len(batch))
        self.in_image[sl] = batch.in_image
        self.tissue_fraction[sl] = batch.tissue_fraction
        self.pixel_fraction[sl] = (
            batch.tissue_fraction if pixel_fraction is None else pixel_fraction
        )
        return (
            batch.in_image
            & (batch.tissue_fraction >= self.min_tissue)
            & self.in_tissue_call[sl]
            & (self.total[sl] > 0)
            & (self.total[sl] >= self.min_counts)
        )

    def reasons(self, sample_id: str, missing: np.ndarray | None) -> np.ndarray:
        """Drop reason per spot (``""``: kept); refuse a sample with nothing to keep."""
        reason = np.full(self.n, "", dtype=object)
        for name, bad in (
            (BELOW_RAREFY_DEPTH, self.total < self.min_counts),
            ("no_counts", self.total <= 0),
            ("low_tissue", self.tissue_fraction < self.min_tissue),
            ("not_in_tissue_call", ~self.in_tissue_call),
            ("outside_image", ~self.in_image),
            *([(NO_HEST_PATCH, missing)] if missing is not None else []),
        ):  # the last assignment wins: each spot reports the first reason of DROP_REASONS
            reason[bad] = name
        if not self.in_image.any():
            lo, hi = self.xy.min(axis=0), self.xy.max(axis=0)
            msg = (
                f"sample {sample_id}: the coordinates miss the image: none of "
                f"{self.n} patch windows lies inside it (spot x in [{lo[0]:.0f}, "
                f"{hi[0]:.0f}], y in [{lo[1]:.0f}, {hi[1]:.0f}] level-0 px)"
            )
            raise SampleError(msg)
        if not (reason == "").any():
            counts_by = pd.Series(reason).value_counts().to_dict()
            msg = f"sample {sample_id}: no spot passed QC (dropped: {counts_by})"
            raise SampleError(msg)
        return reason

    def table(self, obs_names: Any, reason: np.ndarray) -> pd.DataFrame:
        """``spots.csv``: every spot, its QC values and why it was dropped."""
        return pd.DataFrame(
            {
                "x": self.xy[:, 0],
                "y": self.xy[:, 1],
                "total_counts": self.total,
                "n_genes_by_counts": self.n_genes,
                K.IN_TISSUE: self.in_tissue_call,
                K.PATCH_IN_IMAGE: self.in_image,
                K.TISSUE_FRACTION: self.tissue_fraction,
                TISSUE_FRACTION_PIXELS: self.pixel_fraction,
                "kept": reason == "",
                "reason": reason,
            },
            index=pd.Index(obs_names.astype(str), name="barcode"),
        )


def _wsi_batches(
    adata: Any, slide: Any, params: PairsParams, tmask: Any, pixel_threshold: float
) -> Any:
    """Patch batches read from the whole-slide image, in spatial order."""
    from .. import im

    return im.iter_patches(
        adata,
        image=slide,
        mpp=params.mpp,
        size_px=params.size_px,
        tissue_qc=params.tissue_qc,
        tissue_mask=tmask,
        saturation_threshold=None if tmask is not None else pixel_threshold,
        progress=False,
    )


def _pairs_anndata(
    adata: Any,
    counts: Any,
    kept: Any,
    spots: _SpotQC,
    keep: np.ndarray,
    genes: list[str],
    sample: Sample,
    params: PairsParams,
) -> Any:
    """``pairs.h5ad`` without its ``uns``: kept spots, panel genes, positions, scores."""
    barcodes = [str(b) for b in kept.obs_names]
    obs = pd.DataFrame(
        {
            K.SAMPLE_ID: sample.sample_id,
            K.PATIENT_ID: sample.patient_id,
            "organ": sample.organ,
            "species": sample.species,
            "platform": sample.platform,
            K.TISSUE_FRACTION: spots.tissue_fraction[keep].astype(np.float32),
            K.TOTAL_COUNTS: spots.total[keep].astype(np.float32),
            K.N_GENES_BY_COUNTS: spots.n_genes[keep].astype(np.int32),
        },
        index=pd.Index(barcodes),
    )
    for col in ("sample_id", "patient_id", "organ", "species", "platform"):
        obs[col] = obs[col].astype("category")
    gene_idx = adata.var_names.get_indexer(genes)
    pairs = _anndata(
        counts[np.flatnonzero(keep)][:, gene_idx], obs=obs, var=adata.var.iloc[gene_idx].copy()
    )
    pairs.obsm[K.SPATIAL] = spots.xy[keep]
    if params.gene_sets:
        pairs.obsm[K.PATHWAY_SCORES] = kept.obsm[K.PATHWAY_SCORES].loc[barcodes].astype(np.float32)
    return pairs


def _dropped(reason: np.ndarray, *, hest: bool, rarefy: int | None = None) -> dict[str, int]:
    """Return how many spots each reason dropped (``_SUCCESS['dropped']``)."""
    names = DROP_REASONS + ((NO_HEST_PATCH,) if hest else ())
    names += (BELOW_RAREFY_DEPTH,) if rarefy is not None else ()
    return {r: int((reason == r).sum()) for r in names}


def _geometry(meta: dict[str, Any], params: PairsParams, mpp0: float) -> dict[str, Any]:
    """``_SUCCESS`` fields of the image and patch geometry (µm/px, µm, px)."""
    window0 = params.size_px * params.mpp / mpp0  # patch side in level-0 px
    return {
        "mpp_level0": mpp0,
        "spot_diameter_um": meta.get(K.SPOT_DIAMETER_UM),
        "patch": {"mpp": params.mpp, "size_px": params.size_px, "window_level0_px": window0},
    }


def _hest_source(
    sample: Sample, plan: Any, adata: Any, params: PairsParams, mpp0: float
) -> tuple[HestPatchSource | None, Any, str]:
    """HEST's own patches for the sample, or ``None`` (and the AnnData with its WSI)."""
    try:
        return HestPatchSource(plan, adata, params, mpp0), adata, ""
    except ValueError as e:  # the HEST patches do not fit: read the WSI instead
        logger.warning("sample %s: %s; using the WSI", sample.sample_id, e)
        return None, _read(sample), str(e)


def _patch_writer(tmp: Path, params: PairsParams) -> PatchWriter:
    """Open the shard's ``patches.h5`` writer (raw or JPEG, as the parameters say)."""
    return PatchWriter(
        tmp / PATCHES_H5,
        size_px=params.size_px,
        mpp=params.mpp,
        encoding="jpeg" if params.jpeg else "raw",
        jpeg_quality=params.jpeg_quality,
    )


def _score_pathways(kept: Any, params: PairsParams) -> tuple[list[str], dict[str, Any]]:
    """Score the kept spots' pathways in place; return the names and recorded params."""
    from .. import tl

    if not params.gene_sets:
        return [], {}
    tl.score_pathways(
        kept,
        params.gene_sets,
        method=params.method,
        min_genes=params.min_genes,
        ties=params.ties,
        rarefy_depth=params.rarefy_depth,
        rarefy_draws=params.rarefy_draws,
        random_state=params.random_state,
        depth_diagnostics=False,  # on the kept spots' own counts below, named by sample
        key_added=K.PATHWAY_SCORES,
        progress=False,
    )
    names = [str(c) for c in kept.obsm[K.PATHWAY_SCORES].columns]
    uns = kept.uns.get(K.PATHWAY_SCORES, {})
    out: dict[str, Any] = {"params": uns.get("params", {})}
    if K.PATHWAY_RAREFACTION in uns:
        out[K.PATHWAY_RAREFACTION] = _json_safe(uns[K.PATHWAY_RAREFACTION])
    return names, out


def _pathway_depth(
    kept: Any,
    params: PairsParams,
    spots: _SpotQC,
    keep: np.ndarray,
    sample_id: str,
    pathway_uns: dict[str, Any],
) -> dict[str, Any]:
    """Depth diagnostics of the shard's scores (``_SUCCESS['pathway_depth']``); may warn.

    ``{"summary": median / max |r| ..., "table": per pathway r and R², as columns}``;
    empty without pathway scores. Depth is the raw library size before any rarefaction.
    The table also goes to ``pathway_uns['depth']`` (the ``uns`` of ``pairs.h5ad``), the
    agreement of two rarefaction draws (if measured) to the summary.
    """
    from ..tl import depth_summary, depth_table, warn_if_depth_driven

    if not params.gene_sets:
        return {}
    table = depth_table(kept.obsm[K.PATHWAY_SCORES], spots.total[keep], spots.n_genes[keep])
    method = params.method + (f", rarefied to {params.rarefy_depth}" if params.rarefy_depth else "")
    warn_if_depth_driven(table, section=f"sample {sample_id}", method=method)
    summary = depth_summary(table)
    agreement = pathway_uns.get(K.PATHWAY_RAREFACTION, {}).get("median_draw_agreement_r")
    if agreement is not None:
        summary["median_draw_agreement_r"] = round(float(agreement), 4)
    pathway_uns[K.PATHWAY_DEPTH] = depth_table_json(table)
    return {"summary": summary, "table": pathway_uns[K.PATHWAY_DEPTH]}


def shard_pathway_depth(out: str | Path, sample_id: str, rec: dict[str, Any]) -> dict[str, Any]:
    """Return a finished shard's depth diagnostics (``_SUCCESS``, else its ``pairs.h5ad``).

    Shards built before the diagnostics existed (same fingerprint) lack the record; their
    scores and library sizes are read back and the diagnostics computed. ``{}`` for a
    shard without pathway scores.
    """
    if rec.get("pathway_depth"):
        return rec["pathway_depth"]
    if not rec.get("pathways"):
        return {}
    import anndata as ad

    from ..tl import depth_summary, depth_table

    pairs = ad.read_h5ad(sample_dir(out, sample_id) / PAIRS_H5AD, backed="r")
    try:
        obs = pairs.obs
        table = depth_table(
            pairs.obsm[K.PATHWAY_SCORES],
            obs[K.TOTAL_COUNTS].to_numpy(float),
            obs[K.N_GENES_BY_COUNTS].to_numpy(float),
        )
    finally:
        pairs.file.close()
    return {"summary": depth_summary(table), "table": depth_table_json(table)}


def depth_table_json(table: pd.DataFrame) -> dict[str, list]:
    """Return a depth table as JSON columns (NaN → ``null``)."""
    from ..tl import depth_table_to_record as table_to_record

    return _json_safe(table_to_record(table))


def _json_safe(obj: Any) -> Any:
    """Arrays → lists, numpy scalars → Python, NaN → ``None`` (for ``_SUCCESS`` and uns JSON)."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray | list | tuple):
        return [_json_safe(v) for v in list(obj)]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _write_thumbnail(
    tmp: Path, adata: Any, source: Any, tmask: Any, mpp0: float, params: PairsParams
) -> dict[str, Any]:
    """Write the QC thumbnail (and the tissue mask on its grid); return its info."""
    if source is not None:
        thumb, thumb_info = source.thumbnail()
    else:
        thumb, thumb_info = _thumbnail(adata, mpp0, params.thumbnail_px)
    (tmp / THUMBNAIL_PNG).write_bytes(_png_bytes(thumb))
    if tmask is not None:  # the mask on the thumbnail's grid, for the QC report
        cover = np.rint(tmask.resized(thumb.shape[:2]) * 255).astype(np.uint8)
        (tmp / TISSUE_MASK_PNG).write_bytes(_png_bytes(cover))
    return thumb_info


def _wsi_info(adata: Any, reason: str, params: PairsParams) -> dict[str, Any]:
    """``_SUCCESS`` fields of a shard whose patches were read from the image."""
    tissue = "wsi_tissue_mask" if params.tissue_qc == "mask" else "wsi_saturation_otsu"
    info: dict[str, Any] = {"patch_source": "wsi", "tissue_source": tissue}
    if adata.uns.get(K.STALIGN, {}).get(K.PLATFORM) == "hest":
        info["hest_patches_not_used"] = reason
    return info


def _anndata(X: Any, *, obs: pd.DataFrame, var: pd.DataFrame) -> Any:
    import anndata as ad

    var = var.copy()
    for col in var.columns:  # object columns of mixed types do not round-trip in h5ad
        if var[col].dtype == object:
            var[col] = var[col].astype(str)
    return ad.AnnData(X=X, obs=obs, var=var)
