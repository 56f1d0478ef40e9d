"""The evaluation report's figures (maps over the H&E, retrieval with spread) and its HTML.

A hand-made pairs store of two sections (thumbnail + shard record) and hand-made probe
results go through ``write_figures`` and ``write_report``; the HTML is checked statically
and, where Chromium is installed, opened headless.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from _report_html_check import check_self_contained
from PIL import Image

from stalign.bench._figures import MapSection, section_image, write_figures
from stalign.bench._report import DEPTH_METRIC, write_report
from stalign.bench._report_html import markdown_to_html, write_report_html
from stalign.pairs._store import SUCCESS, THUMBNAIL_PNG, sample_dir

SCALE = 8.0  # level-0 px per thumbnail px
MPP0 = 0.5  # µm per level-0 px
SECTIONS = ("S1", "S 2/b")  # the second needs a safe file name
LONG = "HALLMARK_EPITHELIAL_MESENCHYMAL_TRANSITION_AND_A_VERY_LONG_TAIL_OF_WORDS"
TARGETS = ["G0", "G1", LONG]


def _store(root):
    """Two shards: a thumbnail (left half red) and the record stating its scale."""
    for sid in SECTIONS:
        d = sample_dir(root, sid)
        d.mkdir(parents=True)
        img = np.full((100, 120, 3), 230, np.uint8)
        img[:, :60] = (200, 40, 40)
        Image.fromarray(img).save(d / THUMBNAIL_PNG)
        rec = {"thumbnail": {"scale": SCALE}, "mpp_level0": MPP0, "spot_diameter_um": 55.0}
        (d / SUCCESS).write_text(json.dumps(rec))
    return root


def _probe(rng, n_per, offset):
    """A probe result over 3 sections: the first is training (NaN), two are tested."""
    n = 3 * n_per
    targets = rng.normal(size=(n, len(TARGETS)))
    pred = targets * 0.5 + rng.normal(scale=0.5, size=targets.shape) + offset
    pred[:n_per] = np.nan
    return SimpleNamespace(predictions=pred, targets=targets, target_names=TARGETS)


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("run")
    store = _store(root / "store")
    n_per = 40
    samples = np.repeat(["train", *SECTIONS], n_per)
    # spots on a grid inside the thumbnail (level-0 px up to 120 * 8 = 960)
    grid = np.stack(np.meshgrid(np.arange(8), np.arange(5)), -1).reshape(-1, 2)
    coords = np.vstack([grid * 100.0 + 100.0] * 3)
    sections = {
        lab: {k: MapSection.of(_probe(rng, n_per, off), samples) for k in ("genes", "pathways")}
        for lab, off in (("baseline", 0.0), ("aligned", 0.1))
    }
    per = pd.Series([0.3, 0.1, 0.5], index=TARGETS)
    per_target = {
        k: {"baseline": per - 0.05, "aligned": per}
        for k in ("genes", "pathways", "genes_depth_adjusted")
    }
    curves = {
        "colour histogram": np.linspace(0.02, 0.5, 20),
        "baseline": np.stack([np.linspace(0.02, 0.5, 20) + d for d in (0.0, 0.02)]),
        "aligned": np.stack([np.linspace(0.03, 0.6, 20) + d for d in (0.0, 0.04)]),
    }
    out = root / "eval"
    figs = write_figures(
        out,
        per_target=per_target,
        sections=sections,
        curves=curves,
        chance_curve=np.arange(1, 21) / 40,
        coords=coords,
        base="baseline",
        aligned="aligned",
        n_maps=3,
        store=store,
    )
    return SimpleNamespace(out=out, figs=figs, store=store, coords=coords)


def test_section_image_reads_the_recorded_scale(tmp_path):
    store = _store(tmp_path)
    img = section_image(store, "S1")
    assert img.image.shape == (100, 120, 3) and img.scale == SCALE and img.mpp == MPP0
    assert img.um_per_px == SCALE * MPP0
    assert img.spot_diameter == pytest.approx(55.0 / MPP0)  # level-0 px
    (sample_dir(store, "S1") / SUCCESS).write_text(json.dumps({"mpp_level0": MPP0}))
    assert section_image(store, "S1") is None  # no recorded scale: no guess


def test_map_section_keeps_every_tested_section():
    rng = np.random.default_rng(1)
    sec = MapSection.of(_probe(rng, 10, 0.0), np.repeat(["train", *SECTIONS], 10))
    assert sec.sections == list(SECTIONS)
    assert len(sec.rows) == 20 and sec.predictions.dtype == np.float32


def test_write_figures_draws_maps_of_every_tested_section(figures):
    maps = {k: f for k, f in figures.figs.items() if k.startswith("maps_")}
    assert set(maps) == {f"maps_{k}:{s}" for k in ("genes", "pathways") for s in SECTIONS}
    assert maps["maps_genes:S 2/b"] == "figures/maps_genes_S_2_b.png"
    for f in [*maps.values(), figures.figs["retrieval"]]:
        assert (figures.out / f).read_bytes()[:4] == b"\x89PNG"


def _table():
    rows = []
    for feats, m in (
        ("colour histogram", 0.10),
        ("baseline", 0.10),
        ("shuffled", 0.11),
        ("aligned", 0.2),
    ):
        for task in ("genes", "pathways"):
            for metric in ("pearson", DEPTH_METRIC):
                rows.append(
                    {
                        "task": task,
                        "metric": metric,
                        "features": feats,
                        "mean": m,
                        "std": 0.01,
                        "n": 3,
                    }
                )
        for metric in ("recall@1", "recall@5", "profile_corr"):
            rows.append(
                {
                    "task": "retrieval",
                    "metric": metric,
                    "features": feats,
                    "mean": m / 4,
                    "std": 0.001,
                    "n": 3,
                }
            )
    return pd.DataFrame(rows)


PARAMS = {
    "pairs_dir": "/somewhere/pairs",
    "n_spots": 120,
    "samples": ["train", *SECTIONS],
    "patients": ["p1"],
    "split": "train on sections ['train'], test on sections ['S1', 'S 2/b']",
    "split_by": "sample",
    "patients_on_both_sides": ["p1"],
    "seeds": [0, 1],
    "probes": ["ridge"],
    "protocol": "hest_robust",
    "encoders": {"baseline": "b", "shuffled": "s", "aligned": "a"},
    "references": ["colour histogram"],
    "random_encoder": "vit_tiny_patch16_224",
    "gene_panel": ["G0", "G1"],
    "baseline": "baseline",
    "aligned": "aligned",
}


@pytest.fixture(scope="module")
def report(figures):
    return write_report(figures.out, _table(), dict(PARAMS), figures.figs)


def test_report_shows_every_section_map_and_one_margin(report, figures):
    text = report.read_text()
    for f in figures.figs.values():
        assert f"]({f})" in text
    assert text.count("Maps: every test section") == 2  # genes and pathways
    # the per-metric lines use the overall verdict's margin (2 × larger sd)
    assert "margin 2 × larger sd = 0.020" in text
    assert "`report.html`" in text


def test_report_html_is_self_contained(report):
    html_path = report.with_suffix(".html")
    doc = check_self_contained(
        html_path, headings=("Verdicts on the depth-adjusted readout", "genes", "retrieval")
    )
    imgs = [a for t, a in doc.tags if t == "img"]
    assert len(imgs) == report.read_text().count("![")
    rules = [line for line in report.read_text().splitlines() if line.startswith("|---")]
    assert sum(t == "table" for t, _ in doc.tags) == len(rules) > 0
    assert "".join(doc.verdict).startswith("Overall verdict: alignment helped")


def test_report_html_follows_an_appended_section(report, figures):
    """The pipeline appends its training section to report.md, then rewrites the HTML."""
    shutil.copyfile(figures.out / figures.figs["retrieval"], figures.out / "figures" / "extra.png")
    appended = report.parent / "appended.md"
    appended.write_text(
        report.read_text() + "\n## Alignment training\n\n![run](figures/extra.png)\n"
    )
    doc = check_self_contained(write_report_html(appended), headings=("Alignment training",))
    assert sum(t == "img" for t, _ in doc.tags) == appended.read_text().count("![")


@pytest.mark.parametrize(
    ("md", "error"),
    [
        ("![x](../outside.png)", ValueError),
        ("![x](/abs.png)", ValueError),
        ("![x](nope.png)", FileNotFoundError),
    ],
)
def test_report_html_refuses_images_it_cannot_embed(tmp_path, md, error):
    with pytest.raises(error):
        markdown_to_html(f"# r\n\n{md}\n", root=tmp_path)


def test_markdown_inline_constructs_are_escaped_and_rendered(tmp_path):
    md = "# t\n\n**b** `<x>` a < b\n`unpaired **c**\n\n- **one**\n- two\n"
    out = markdown_to_html(md, root=tmp_path)
    assert "<p><strong>b</strong> <code>&lt;x&gt;</code> a &lt; b<br>\n`unpaired " in out
    assert "<strong>c</strong></p>" in out
    assert "<ul><li><strong>one</strong></li><li>two</li></ul>" in out


def _chromium() -> str | None:
    return next(
        (p for n in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(n))),
        None,
    )


def test_report_html_opens_in_headless_chromium(report, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium / chromium-browser / google-chrome on PATH")
    html_path = report.with_suffix(".html")
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",  # root in containers
        "--disable-gpu",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--dump-dom",
        html_path.as_uri(),
    ]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    assert "Overall verdict: alignment helped" in dom
    assert dom.count("<img") == report.read_text().count("![")
    shot = tmp_path / "page.png"
    cmd[-2:] = [f"--screenshot={shot}", "--window-size=1200,2000", html_path.as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=120, check=True)
    assert shot.read_bytes()[:4] == b"\x89PNG"
