"""The QC report of a pairs store: ``qc/report.md`` (+ ``report.html``) and its figures."""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._utils import atomic_path, atomic_write_text
from ._sample import TISSUE_FRACTION_PIXELS, TISSUE_MASK_PNG, shard_pathway_depth
from ._store import QC_DIR, SPOTS_CSV, THUMBNAIL_PNG, read_success, sample_dir

logger = logging.getLogger(__name__)

__all__ = ["write_qc_report"]


def _load_spots(out: Path, sid: str) -> pd.DataFrame:
    df = pd.read_csv(sample_dir(out, sid) / SPOTS_CSV, index_col=0, keep_default_na=False)
    for col in ("kept", "in_tissue", "patch_in_image"):
        if col in df:
            df[col] = df[col].astype(str).str.lower().isin(["true", "1"])
    return df


def _load_mask(out: Path, sid: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """Read the shard's tissue mask on the thumbnail grid (``None``: pixel rule, old shard)."""
    from PIL import Image

    path = sample_dir(out, sid) / TISSUE_MASK_PNG
    if not path.is_file():
        return None
    mask = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0
    return mask if mask.shape == tuple(shape) else None


def _kept_columns(df: pd.DataFrame, params: dict[str, Any]) -> dict[str, str]:
    """Return the kept share of the spots the platform calls in tissue.

    By this build, and by the per-pixel rule (``tissue_qc="pixels"``, threshold
    ``tissue_threshold``) on the same spots.
    """
    call = df["in_tissue"].to_numpy(bool) if "in_tissue" in df else np.ones(len(df), bool)
    n_call = max(1, int(call.sum()))
    cols = {
        "in tissue (platform)": str(int(call.sum())),
        "kept % of in-tissue": f"{100.0 * (df['kept'].to_numpy() & call).sum() / n_call:.1f}",
    }
    if TISSUE_FRACTION_PIXELS in df and "patch_in_image" in df:
        old = (
            df["patch_in_image"].to_numpy(bool)
            & call
            & (df[TISSUE_FRACTION_PIXELS].to_numpy(float) >= float(params["tissue_threshold"]))
            & (df["total_counts"].to_numpy(float) > 0)
        )
        cols["kept % of in-tissue, pixel rule"] = f"{100.0 * old.sum() / n_call:.1f}"
    return cols


def _savefig(fig: Any, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png", metadata={"Software": None})


def _draw_sample_spots(out: Path, s: dict[str, Any], df: pd.DataFrame, qc: Path) -> None:
    """Write ``qc/<sample_id>_spots.png``: kept and dropped spots over the shard's thumbnail."""
    from PIL import Image

    from .. import pl  # the QC figures (pl sits below pairs)

    sid = s["sample_id"]
    rec = read_success(out, sid) or {}
    thumb = np.asarray(Image.open(sample_dir(out, sid) / THUMBNAIL_PNG).convert("RGB"))
    scale = float(rec.get("thumbnail", {}).get("scale", 1.0))
    spot_um = rec.get("spot_diameter_um")
    mpp0 = rec.get("mpp_level0")
    spot_px = float(spot_um) / float(mpp0) / scale if spot_um and mpp0 else None
    fig = pl.qc_spots(
        thumb,
        df,
        scale=scale,
        spot_diameter_px=max(1.5, spot_px) if spot_px else None,
        tissue_mask=_load_mask(out, sid, thumb.shape[:2]),
        title=f"{sid} ({s['patient_id']}): {s['n_pairs']} of {s['n_spots']} spots kept",
    )
    _savefig(fig, qc / f"{sid}_spots.png")


def _sample_row(
    s: dict[str, Any], df: pd.DataFrame, params: dict[str, Any], rec: dict[str, Any]
) -> dict[str, Any]:
    """One row of the report's sample table (``rec``: the shard's ``_SUCCESS`` record)."""
    kept = df[df["kept"]]
    return {
        "sample": s["sample_id"],
        "patient": s["patient_id"],
        "platform": s["platform"],
        "spots": s["n_spots"],
        "pairs": s["n_pairs"],
        "kept %": f"{100.0 * s['n_pairs'] / max(1, s['n_spots']):.0f}",
        **_kept_columns(df, params),
        **{f"drop: {k}": v for k, v in s.get("dropped", {}).items()},
        "median counts (kept)": f"{kept['total_counts'].median():.0f}",
        "median tissue (kept)": f"{kept['tissue_fraction'].median():.2f}",
        "genes": s["n_genes"],
        **_panel_column(rec),
        "pathways": s["n_pathways"],
        "patches from": _patch_source(rec),
        "licence": s.get("license") or "unknown",
    }


def write_qc_report(out: str | Path, index: dict[str, Any]) -> Path:
    """Write ``OUT/qc/report.md``, ``report.html`` and the QC figures.

    Figures: ``qc/<sample_id>_spots.png`` (kept/dropped spots on the H&E),
    ``qc/counts_per_spot.png``, ``qc/tissue_fraction.png`` and, with pathway scores,
    ``qc/pathway_depth.png`` (each pathway's r with log total counts, per section).

    Parameters
    ----------
    out
        Root of the pairs store.
    index
        The content of ``index.json`` (as built by [`merge_pairs`][stalign.pairs.merge_pairs]).

    Returns
    -------
    Path
        ``OUT/qc/report.md``.
    """
    from .. import pl  # the QC figures (pl sits below pairs)

    out = Path(out)
    qc = out / QC_DIR
    qc.mkdir(parents=True, exist_ok=True)
    params = index["params"]
    spots: dict[str, pd.DataFrame] = {}
    rows = []
    for s in index["samples"]:
        spots[s["sample_id"]] = _load_spots(out, s["sample_id"])
        _draw_sample_spots(out, s, spots[s["sample_id"]], qc)
        rows.append(
            _sample_row(s, spots[s["sample_id"]], params, read_success(out, s["sample_id"]) or {})
        )
    if spots:
        _savefig(pl.qc_counts_histogram(spots), qc / "counts_per_spot.png")
        _savefig(
            pl.qc_tissue_histogram(spots, threshold=_tissue_cut(params)),
            qc / "tissue_fraction.png",
        )
    table = pd.DataFrame(rows)
    fov = float(params["mpp"]) * int(params["size_px"])
    md = [
        "# Pairs QC report",
        "",
        f"{index['n_pairs']} pairs from {index['n_samples']} samples; "
        f"{len(index['failed'])} failed, {len(index['missing'])} missing.",
        "",
        f"Patches: {params['size_px']} px at {params['mpp']} µm/px ({fov:.0f} µm field of "
        f"view); {_tissue_rule(params)}; "
        f"{'JPEG q' + str(params['jpeg_quality']) if params['jpeg'] else 'raw uint8'}; "
        f"gene panel `{params['gene_panel']}`; pathway scores: "
        f"{params['gene_sets'] or 'none'} ({params['method']}), "
        f"{len(index['pathways'])} pathways scored in every sample; "
        f"{len(index['genes'])} genes in the union of panels.",
        "",
        _licence_line(index),
        "",
        "## Samples",
        "",
        table.to_markdown(index=False) if len(table) and _has_tabulate() else _md_table(table),
        "",
    ]
    depth_md, depth_rows = _depth_section(out, index, qc)
    md += depth_md
    if index["failed"]:
        md += ["## Failed samples", ""]
        md += [f"- **{sid}**: {reason}" for sid, reason in index["failed"].items()]
        md += [""]
    if index["missing"]:
        md += ["## Missing samples (no shard yet)", "", ", ".join(index["missing"]), ""]
    if spots:
        md += [
            "## Distributions",
            "",
            "![counts per spot](counts_per_spot.png)",
            "",
            "![tissue fraction](tissue_fraction.png)",
            "",
            "## Spots on the H&E",
            "",
            "Green: kept; orange: patch below the tissue threshold; grey: outside the "
            "platform's tissue call; red: patch window leaves the image; purple: no counts; "
            "lilac: fewer counts than the rarefaction depth; blue line: the slide's tissue "
            "mask.",
            "",
        ]
        md += [f"![{sid}]({sid}_spots.png)" for sid in spots]
        md += [""]
    text = "\n".join(md)
    path = qc / "report.md"
    atomic_write_text(path, text)
    tables = {"Samples": table, DEPTH_HEADING: depth_rows}
    atomic_write_text(qc / "report.html", _html(text, tables, index))
    return path


#: heading of the report's section on depth in the pathway scores
DEPTH_HEADING = "Pathway scores and sequencing depth"


def _depth_section(out: Path, index: dict[str, Any], qc: Path) -> tuple[list[str], pd.DataFrame]:
    """Write ``qc/pathway_depth.png``; return the depth section's markdown and table."""
    from .. import pl
    from ..tl import depth_table_from_record

    params = index["params"]
    threshold = float(index.get("pathway_depth_threshold", 0.5))
    tables, rows = {}, []
    for s in index["samples"]:
        depth = shard_pathway_depth(out, s["sample_id"], read_success(out, s["sample_id"]) or {})
        if not depth:
            continue
        tables[s["sample_id"]] = depth_table_from_record(depth["table"])
        rows.append(_depth_row(s, depth["summary"], tables[s["sample_id"]], threshold))
    if not rows:
        return [], pd.DataFrame()
    _savefig(pl.qc_pathway_depth(tables, threshold=threshold), qc / "pathway_depth.png")
    depth_rows = pd.DataFrame(rows)
    md = [
        f"## {DEPTH_HEADING}",
        "",
        f"Per section, the Pearson r of each pathway score ({params['method']}"
        f"{_rarefy_text(params)}) with log total counts and log detected genes of the spot, "
        "and the R² of a cubic in log total counts (the share of a score's variance that "
        f"depth explains). A median absolute r above {threshold} (marked **!**) means the training "
        "targets largely follow sequencing depth, which colour and cellularity already "
        "predict; see the 'Pathway scoring' concept page for rarefaction, score_genes and "
        "depth regression in training.",
        "",
        _md_table(depth_rows) if not _has_tabulate() else depth_rows.to_markdown(index=False),
        "",
        "![pathway scores vs depth](pathway_depth.png)",
        "",
    ]
    return md, depth_rows


def _depth_row(
    s: dict[str, Any], summary: dict[str, Any], table: pd.DataFrame, threshold: float
) -> dict[str, Any]:
    """One section's row of the depth table."""
    med = summary.get("median_abs_r_log_counts")
    flag = " **!**" if med is not None and med > threshold else ""
    row = {
        "sample": s["sample_id"],
        "median abs r, log counts": f"{med:.2f}{flag}" if med is not None else "n/a",
        "median abs r, log genes": _fmt(summary.get("median_abs_r_log_genes")),
        "median R² (cubic, log counts)": _fmt(table["r2_log_counts"].median()),
        "most depth-driven": f"{summary.get('most_depth_driven')} "
        f"({_fmt(summary.get('max_abs_r_log_counts'))})",
        f"pathways abs r > {threshold}": summary.get("n_above_threshold", ""),
    }
    if "below_rarefy_depth" in s.get("dropped", {}):
        row["dropped below rarefy depth"] = s["dropped"]["below_rarefy_depth"]
        row["r of 2 draws (median)"] = _fmt(summary.get("median_draw_agreement_r"))
    return row


def _panel_column(rec: dict[str, Any]) -> dict[str, str]:
    """``{'panel genes missing': 'A, B'}`` for a shard whose gene panel named absent genes."""
    missing = rec.get("panel_missing") or []
    return {"panel genes missing": ", ".join(missing)} if missing else {}


def _fmt(v: Any) -> str:
    return "n/a" if v is None or not np.isfinite(float(v)) else f"{float(v):.2f}"


def _rarefy_text(params: dict[str, Any]) -> str:
    """Return the clause on rarefaction of the build's parameters (``""``: none)."""
    depth = params.get("rarefy_depth")
    if depth is None:
        return ""
    draws = int(params.get("rarefy_draws", 1))
    return f", on counts rarefied to {depth} per spot, {draws} draw{'s' if draws > 1 else ''}"


def _tissue_cut(params: dict[str, Any]) -> float | None:
    """Return the tissue-fraction cut that applies to spots under a trusted platform call."""
    if params.get("tissue_qc", "pixels") == "mask" and params.get("use_in_tissue", True):
        return params.get("min_mask_coverage")
    return params.get("tissue_threshold")


def _tissue_rule(params: dict[str, Any]) -> str:
    """One sentence on the build's tissue QC (older stores have no ``tissue_qc``)."""
    if params.get("tissue_qc", "pixels") == "pixels":
        return (
            f"tissue QC per pixel: a patch needs a fraction {params['tissue_threshold']} of "
            "stained pixels (fat and pale stroma count as background)"
        )
    call = (
        f"spots the platform calls in tissue are kept down to "
        f"{params['min_mask_coverage']} mask coverage, other samples need "
        if params.get("use_in_tissue", True)
        else "a patch needs "
    )
    return (
        f"tissue QC by the slide's tissue mask (fat and pale stroma inside the tissue count "
        f"as tissue): {call}{params['tissue_threshold']} coverage. The columns "
        "'kept % of in-tissue' compare this build with the per-pixel rule "
        f"(tissue_qc='pixels', threshold {params['tissue_threshold']}) on the same spots"
    )


def _patch_source(rec: dict[str, Any]) -> str:
    """Where a shard's patches and tissue fractions came from (``_SUCCESS`` fields)."""
    if rec.get("patch_source") == "hest_patches":
        geo = rec.get("hest_patch_geometry", {})
        return (
            f"HEST patches/ ({geo.get('size_px')} px → centre {geo.get('centre_crop_px')} px, "
            f"no WSI read); tissue: {rec.get('tissue_source')}"
        )
    return "WSI" + (f" ({rec['hest_patches_not_used']})" if "hest_patches_not_used" in rec else "")


def _licence_line(index: dict[str, Any]) -> str:
    licences = index.get("licenses") or {}
    if len(licences) > 1:
        parts = "; ".join(f"{lic}: {', '.join(ids)}" for lic, ids in licences.items())
        return f"**Mixed licences** — the store is bound by each of them: {parts}."
    return f"Licence: {next(iter(licences), 'unknown')}."


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def _md_table(table: pd.DataFrame) -> str:
    if table.empty:
        return "(no finished samples)"
    cols = [str(c) for c in table.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in table.iterrows():
        lines.append("| " + " | ".join(str(v) for v in r.to_numpy()) + " |")
    return "\n".join(lines)


def _html(markdown_text: str, tables: dict[str, pd.DataFrame], index: dict[str, Any]) -> str:
    """Render the report as dependency-free HTML (tables and images)."""
    body = []
    for line in markdown_text.splitlines():
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("!["):
            alt, src = line[2:].split("](", 1)
            body.append(f'<img alt="{html.escape(alt)}" src="{html.escape(src[:-1])}">')
        elif line.startswith("|"):
            continue  # tables are rendered from their DataFrames after their heading
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:]).replace('**', '')}</li>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
        heading = line[3:] if line.startswith("## ") else None
        if heading in tables and not tables[heading].empty:
            body.append(tables[heading].to_html(index=False, border=0).replace("**!**", "!"))
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Pairs QC report</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
        "table{border-collapse:collapse;font-size:13px}td,th{padding:3px 8px;"
        "border-bottom:1px solid #ddd}img{max-width:100%}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
