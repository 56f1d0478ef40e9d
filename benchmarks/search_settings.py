"""Choose the demo's alignment settings on the INNER split of the training animal only.

Selection protocol (what makes the held-out numbers in the README honest):

* only the training animal is read: the manifest this script builds pairs from holds
  the rows of ``--train-patients`` (MOB: animal 1 = MOB1 + MOB2); the test animal's
  counts and images are never opened here;
* every candidate trains on ``--fit-sample`` (MOB1) and validates on ``--val-sample``
  (MOB2): early stopping (patience 2 on joint-space recall@5) and the score both come
  from MOB2;
* score = mean Pearson of the HEST ridge gene probe (50 HVGs) fitted on the MOB1
  embeddings and tested on MOB2, with PCA 32 instead of HEST's 256 (with ~300
  training spots PCA 256 nearly interpolates them: the first search scored the
  untrained encoder 0.08 and a trained one 0.01 that way; both are recorded);
  the pretrained encoder without training is scored the same way (``baseline``);
* coordinate search from the demo's starting point: learning rate → soft targets →
  image size → LoRA placement → temperature → LoRA rank, one seed per candidate;
  each stage keeps the best score (ties within 0.002 keep the earlier, simpler
  setting); stages that would start after ``--budget-min`` are skipped and listed;
  the chosen setting then gets a shuffled-pair control run (and, with
  ``--confirm-seeds``, re-runs of the start and the choice with other seeds).

Writes ``OUT/runs.csv`` (every run), ``OUT/search.json`` (chosen settings, protocol) and
``OUT/README.md`` (tables). Run it niced on a shared machine::

    PYTHONPATH=src nice -n 10 .venv/bin/python benchmarks/search_settings.py \\
        --out benchmarks/search
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from stalign import bench, pairs, train
from stalign.pipeline import EXAMPLE_MANIFEST, PipelineConfig, ShuffledPairs, train_config

logger = logging.getLogger("search")

# the starting point: the untuned settings of the first pretrained run (SCIENCE-NOTES)
START = {
    "lr": 1e-3,
    "lora_r": 8,
    "lora_alpha": 16.0,
    "lora_last_n_blocks": None,
    "img_size": 64,  # the patch's native side (64 px ≈ 280 µm at 4.4 µm/px)
    "temperature": 0.07,
    "learn_temperature": True,
    "soft_targets": False,
}
# one stage per question; each candidate changes the current best in these keys only
STAGES = [
    ("learning rate", [{"lr": 3e-3}, {"lr": 3e-4}]),
    ("pathway-soft targets", [{"soft_targets": True}]),
    ("image size (up-sampled patch)", [{"img_size": 112}]),
    ("LoRA placement", [{"lora_last_n_blocks": 3}]),  # last 3 of 7 stages + the head conv
    ("temperature", [{"temperature": 0.1, "learn_temperature": False}]),
    ("LoRA rank", [{"lora_r": 16, "lora_alpha": 32.0}]),
]
TIE = 0.002  # Pearson: smaller differences keep the earlier setting
PCA_DIM = 32  # probe dimension of the selection score (see InnerSplit.score)


def _inner_manifest(manifest: Path, patients: list[str], out: Path) -> Path:
    """Copy of ``manifest`` with the training patients' rows only (absolute paths)."""
    from stalign.pairs._manifest import read_manifest

    rows = [r for r in read_manifest(manifest) if r.patient_id in patients]
    if not rows:
        msg = f"no row of {manifest} belongs to patients {patients}"
        raise ValueError(msg)
    frame = pd.DataFrame([r.to_dict() for r in rows]).drop(columns=["line"])
    frame = frame.drop(
        columns=[c for c in frame if frame[c].isna().all() or (frame[c] == "").all()]
    )
    path = out / "manifest_train_animal.csv"
    frame.to_csv(path, index=False)
    return path


class InnerSplit:
    """Patches, counts and pathway scores of the inner split, and the probe scores on it."""

    def __init__(self, pairs_dir: Path, fit_sample: str, val_sample: str) -> None:
        self.data = bench.load_pairs_arrays(pairs_dir)
        self.samples = self.data.obs["sample_id"].to_numpy(str)
        self.fit_sample, self.val_sample = fit_sample, val_sample
        self.fit_ds = pairs.PairsDataset(pairs_dir, samples=[fit_sample])
        self.val_ds = pairs.PairsDataset(pairs_dir, samples=[val_sample])

    def score(self, encoder, img_size: int) -> dict[str, float]:
        """Inner gene / pathway Pearson of ``encoder`` (probe fit on MOB1, tested on MOB2).

        ``genes`` / ``pathways`` use PCA 32 before the ridge: with ~300 training spots
        HEST's PCA 256 nearly interpolates them (``genes_pca256`` is recorded too).
        """
        X = bench.encoder_features(encoder, self.data.patches, image_size=img_size)
        common = {"samples": self.samples, "test_groups": [self.val_sample]}
        out = {}
        for suffix, dim in (("", PCA_DIM), ("_pca256", 256)):
            g = bench.gene_prediction(
                X,
                self.data.counts,
                self.samples,
                gene_names=self.data.gene_names,
                pca_dim=dim,
                **common,
            )
            p = bench.pathway_prediction(X, self.data.pathways, self.samples, pca_dim=dim, **common)
            out[f"genes{suffix}"], out[f"pathways{suffix}"] = float(g.mean), float(p.mean)
        return out


def _settings_config(base: PipelineConfig, setting: dict) -> PipelineConfig:
    return dataclasses.replace(base, **setting)


def run_one(split: InnerSplit, base: PipelineConfig, setting: dict, seed: int, shuffled=False):
    """Train one candidate on the fit section, validate on the val section, score it."""
    cfg = _settings_config(base, setting)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="stalign-search-") as tmp:
        tcfg = train_config(cfg, seed=seed, out=tmp)
        data = ShuffledPairs(split.fit_ds, seed=seed) if shuffled else split.fit_ds
        result = train.fit(tcfg, data, split.val_ds)
        encoder = result.model.image_tower.encoder
        scores = split.score(encoder, cfg.img_size)
        hist = result.history.dropna(subset=["val_recall@5"])
        best = hist.loc[hist["val_recall@5"].idxmax()] if len(hist) else None
    return {
        **scores,
        "seed": seed,
        "shuffled": shuffled,
        "best_epoch": float(best["epoch"]) if best is not None else np.nan,
        "val_recall@5_best": float(best["val_recall@5"]) if best is not None else np.nan,
        "stopped_early": bool(result.stopped_early),
        "steps": int(result.steps),
        "seconds": time.perf_counter() - t0,
    }


def baseline(split: InnerSplit, base: PipelineConfig, img_size: int) -> dict[str, float]:
    """The pretrained encoder without training, scored the same way."""
    from stalign import models

    enc = models.create_encoder(base.encoder, pretrained=True, img_size=img_size)
    return split.score(enc, img_size)


def search(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="stalign-search-pairs-"))
    manifest = _inner_manifest(Path(args.manifest), args.train_patients, out)
    base = PipelineConfig.example(
        "mob",
        manifest=str(manifest),
        train_patients=tuple(args.train_patients),
        test_patients=("(not read)",),
        epochs=args.max_epochs,
        early_stopping_patience=2,
    )
    if not (work / "pairs" / "index.json").is_file():
        pairs.build_pairs(
            manifest, work / "pairs", mpp=base.mpp, size_px=base.size_px, progress=False
        )
    split = InnerSplit(work / "pairs", args.fit_sample, args.val_sample)
    logger.info("inner split: fit %d spots, validate %d", len(split.fit_ds), len(split.val_ds))

    rows: list[dict] = []
    baselines: dict[int, dict] = {}

    def record(stage: str, setting: dict, seed: int = 0, shuffled: bool = False) -> dict:
        size = setting.get("img_size", START["img_size"])
        if size not in baselines:
            baselines[size] = baseline(split, base, size)
        res = run_one(split, base, setting, seed, shuffled)
        row = {
            "stage": stage,
            **{k: setting.get(k, START[k]) for k in START},
            **res,
            "baseline_genes": baselines[size]["genes"],
            "baseline_pathways": baselines[size]["pathways"],
            "baseline_genes_pca256": baselines[size]["genes_pca256"],
        }
        rows.append(row)
        pd.DataFrame(rows).to_csv(out / "runs.csv", index=False)
        logger.info("%s %s seed %d: %s", stage, setting, seed, res)
        return row

    t_start = time.perf_counter()
    skipped: list[str] = []
    chosen = dict(START)
    best = record("start", chosen)
    stages = [(STAGES[0][0], STAGES[0][1][:1])] if args.smoke else STAGES
    for stage, candidates in stages:
        if (time.perf_counter() - t_start) / 60 > args.budget_min:
            logger.warning("budget of %s min spent: stage %r skipped", args.budget_min, stage)
            skipped.append(stage)
            continue
        stage_choice = chosen
        for change in candidates:  # each relative to the choice before this stage
            setting = {**chosen, **change}
            row = record(stage, setting)
            if row["genes"] > best["genes"] + TIE:
                best, stage_choice = row, setting
        chosen = stage_choice
    # confirmation: another seed for the start and the choice, and the shuffled control
    if not args.no_control:
        record("control", chosen, 0, shuffled=True)
    for seed in range(1, 1 + args.confirm_seeds):
        record("confirm", START, seed)
        if chosen != START:
            record("confirm", chosen, seed)
    epochs = [r["best_epoch"] for r in rows if r["stage"] != "control" and _same(r, chosen)]
    epochs = [e for e in epochs if np.isfinite(e)]
    best_epoch = int(max(epochs)) if epochs else None
    summary = {
        "protocol": __doc__.split("Writes")[0].strip(),
        "train_patients": args.train_patients,
        "fit_sample": args.fit_sample,
        "val_sample": args.val_sample,
        "start": START,
        "chosen": chosen,
        "chosen_best_epoch_max": best_epoch,
        "max_epochs": args.max_epochs,
        "early_stopping_patience": base.early_stopping_patience,
        "skipped_stages": skipped,
        "baselines": {str(k): v for k, v in baselines.items()},
        "minutes": (time.perf_counter() - t_start) / 60,
        "machine": args.machine,
        "date": args.date,
    }
    (out / "search.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    _write_readme(out, pd.DataFrame(rows), summary)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return summary


def _same(row: dict, setting: dict) -> bool:
    return all(row.get(k) == v for k, v in setting.items())


def _write_readme(out: Path, runs: pd.DataFrame, summary: dict) -> None:
    cols = [
        "stage",
        "lr",
        "lora_r",
        "lora_alpha",
        "lora_last_n_blocks",
        "img_size",
        "temperature",
        "learn_temperature",
        "soft_targets",
        "seed",
        "shuffled",
        "genes",
        "pathways",
        "baseline_genes",
        "genes_pca256",
        "baseline_genes_pca256",
        "val_recall@5_best",
        "best_epoch",
        "seconds",
    ]
    t = runs[cols].copy()
    for c in (
        "genes",
        "pathways",
        "baseline_genes",
        "genes_pca256",
        "baseline_genes_pca256",
        "val_recall@5_best",
    ):
        t[c] = t[c].map(lambda v: f"{v:.4f}")
    t["seconds"] = t["seconds"].map(lambda v: f"{v:.0f}")
    lines = [
        "# Settings search on the inner split (training animal only)",
        "",
        f"Date {summary['date']}; machine: {summary['machine']}; "
        f"{summary['minutes']:.1f} min in all.",
        "",
        "## Protocol",
        "",
        summary["protocol"],
        "",
        "## Runs",
        "",
        "Scores are inner-split numbers (probe fitted on "
        f"{summary['fit_sample']}, tested on {summary['val_sample']}); `baseline_genes` is "
        "the pretrained encoder without training at the same image size.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
        *["| " + " | ".join(str(v) for v in r) + " |" for r in t.itertuples(index=False)],
        "",
        "## Chosen",
        "",
        f"`{json.dumps(summary['chosen'])}`; best validation epoch (max over its runs): "
        f"{summary['chosen_best_epoch_max']} of {summary['max_epochs']} (early stopping "
        f"patience {summary['early_stopping_patience']} on {summary['val_sample']}).",
        "",
        "Stages skipped for time: " + (", ".join(summary["skipped_stages"]) or "none") + ".",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/search")
    p.add_argument("--manifest", default=str(EXAMPLE_MANIFEST))
    p.add_argument("--train-patients", nargs="+", default=["mouse1"])
    p.add_argument("--fit-sample", default="MOB1")
    p.add_argument("--val-sample", default="MOB2")
    p.add_argument("--max-epochs", type=int, default=3)
    p.add_argument("--budget-min", type=float, default=20.0, help="no new stage after this")
    p.add_argument("--confirm-seeds", type=int, default=0, help="extra seeds for start/choice")
    p.add_argument("--work", help="keep the inner pairs store here (default: a temp dir)")
    p.add_argument("--machine", default="2 cores, shared with other jobs")
    p.add_argument("--date", default="2026-12-01")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="one candidate only (checks the script)")
    p.add_argument("--no-control", action="store_true", help="skip the shuffled-pair control")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    summary = search(args)
    print(json.dumps(summary["chosen"]), summary["chosen_best_epoch_max"])


if __name__ == "__main__":
    main()
