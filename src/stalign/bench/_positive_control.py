"""A positive control for the aligner: real H&E patches that carry a planted molecular signal.

Real spots keep their patch and their pathway profile, except that one pathway's score is
replaced by a latent drawn at random (independent of depth and colour by construction, and
residualised on both in-sample) and every patch gets a faint zero-mean grating in its stain
density whose spatial period encodes that latent. The images then carry a known molecular
signal that no colour statistic and no depth proxy can read: an aligner that works must
learn it, a frozen encoder hardly sees it, a shuffled-pair control cannot learn it.

::

    from stalign import bench, datasets, tl
    from stalign.train import TrainConfig

    sections = [datasets.mob_section(s) for s in ("MOB1", "MOB3")]
    for a in sections:
        tl.score_pathways(a, "hallmark")
    names = list(sections[0].obsm["pathway_scores"].columns)
    planted = bench.planted_signal_pairs(
        sections, patients=["mouse1", "mouse2"], keep_pathways=names[1:6]
    )
    config = TrainConfig(  # the test's setting (tests/test_positive_control.py)
        encoder_kwargs={"depth": 2, "global_pool": "avg"}, img_size=32, batch_size=32,
        max_steps=150, lr=3e-3, lora_dropout=0.0,
    )
    res = bench.positive_control(planted, config, test_patients=["mouse2"], seeds=(0, 1, 2))
    print(res.summary())
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ._features import encoder_features
from ._planted_signal import PlantedPairs, plant_grating, planted_signal_pairs
from ._probe import pathway_prediction

if TYPE_CHECKING:
    from ..train import TensorPairsDataset, TrainConfig

__all__ = [
    "PlantedPairs",
    "PositiveControlResult",
    "plant_grating",
    "planted_signal_pairs",
    "positive_control",
]

logger = logging.getLogger(__name__)

#: margins of the positive control (issue 19): the frozen encoder must not read the
#: planted pathway, the oracle must, and training must add this much over both controls
MAX_BASELINE = 0.2
MIN_ORACLE = 0.8
MIN_MARGIN = 0.1
MIN_MARGIN_SDS = 3.0
MIN_SEEDS = 3


@dataclass
class PositiveControlResult:
    """Outcome of `positive_control`.

    Attributes
    ----------
    table
        One row per seed: ``seed``, ``baseline`` (frozen encoder), ``shuffled``
        (trained on shuffled pairs), ``aligned``, ``oracle`` (the grating period) — each
        the probe's Pearson on the planted pathway over the held-out spots — and
        ``margin`` = ``aligned - max(baseline, shuffled)``.
    pathway
        The planted pathway.
    params
        Settings: training config, test patients, probe.
    """

    table: pd.DataFrame
    pathway: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def margin_mean(self) -> float:
        """Mean over seeds of ``aligned - max(baseline, shuffled)``."""
        return float(self.table["margin"].mean())

    @property
    def margin_sd(self) -> float:
        """Sample sd (``ddof=1``) of the per-seed margins (NaN with one seed)."""
        return float(self.table["margin"].std(ddof=1))

    def checks(self) -> dict[str, bool]:
        """Return the pass conditions by name (thresholds: this module's constants)."""
        t = self.table
        return {
            f"baseline <= {MAX_BASELINE}": bool((t["baseline"] <= MAX_BASELINE).all()),
            f"oracle >= {MIN_ORACLE}": bool((t["oracle"] >= MIN_ORACLE).all()),
            f"margin >= {MIN_MARGIN}": self.margin_mean >= MIN_MARGIN,
            f"margin >= {MIN_MARGIN_SDS:g} sd": bool(
                self.margin_mean >= MIN_MARGIN_SDS * self.margin_sd
            ),
            f"seeds >= {MIN_SEEDS}": len(t) >= MIN_SEEDS,
        }

    def passed(self) -> bool:
        """Whether every condition of `checks` holds."""
        return all(self.checks().values())

    def summary(self) -> str:
        """Return a markdown table of the per-seed figures, their mean and the checks."""
        t = self.table
        cols = [c for c in t.columns if c != "seed"]
        values = t[cols].to_numpy()
        rows = [[str(s), *(f"{v:.3f}" for v in r)] for s, r in zip(t["seed"], values, strict=True)]
        rows.append(["mean", *(f"{v:.3f}" for v in t[cols].mean())])
        lines = [
            f"Planted pathway `{self.pathway}`; Pearson on held-out spots.",
            "",
            "| " + " | ".join(["seed", *cols]) + " |",
            "|" + "---|" * (len(cols) + 1),
            *("| " + " | ".join(r) + " |" for r in rows),
            "",
            f"margin {self.margin_mean:.3f} ± {self.margin_sd:.3f} (sd over seeds)",
        ]
        lines += [f"- {'pass' if ok else 'FAIL'}: {name}" for name, ok in self.checks().items()]
        return "\n".join(lines)


def _subset(dataset: TensorPairsDataset, rows: np.ndarray, *, perm: np.ndarray | None = None):
    """Return the pairs ``rows`` of ``dataset``; with ``perm``, profiles permuted among them."""
    from ..train import TensorPairsDataset

    profiles = dataset.pathways[rows]
    if perm is not None:
        profiles = profiles[perm]
    return TensorPairsDataset(
        dataset.images[rows],
        profiles,
        sample_ids=[dataset.sample_ids[i] for i in rows],
        patient_ids=[dataset.patient_ids[i] for i in rows],
        barcodes=[dataset.barcodes[i] for i in rows],
        pathway_names=dataset.pathway_names,
    )


def _train_encoder(config: TrainConfig, dataset: TensorPairsDataset) -> Any:
    """Fit ``config`` on ``dataset``; return the trained image encoder (with its adapters)."""
    from ..train import fit

    return fit(config, dataset).model.image_tower.encoder


def _embed(encoder: Any, patches: np.ndarray, config: TrainConfig) -> np.ndarray:
    """Backbone features of the centre crops the training saw at evaluation."""
    j = config.jitter_px
    crops = patches[:, j : patches.shape[1] - j, j : patches.shape[2] - j] if j else patches
    size = config.img_size or crops.shape[1]
    return encoder_features(encoder, crops, image_size=size, device=config.device)


def _baseline_features(encoder: Any, patches: np.ndarray, config: TrainConfig) -> np.ndarray:
    """Features of ``encoder`` with its LoRA adapters switched off: the untrained encoder."""
    with encoder.peft_model.disable_adapter():
        return _embed(encoder, patches, config)


class _Probe:
    """The project's pathway probe on all pathways; reads the planted pathway's Pearson."""

    def __init__(self, planted: PlantedPairs, test_patients: Sequence[str]) -> None:
        ds = planted.dataset
        self.scores = ds.pathways.numpy()
        self.names = list(ds.pathway_names)
        self.groups = np.asarray(ds.patient_ids)
        self.test_patients = list(test_patients)
        self.pathway = planted.pathway

    def __call__(self, X: np.ndarray) -> float:
        res = pathway_prediction(
            X,
            self.scores,
            self.groups,
            pathway_names=self.names,
            test_groups=self.test_patients,
        )
        per = res.per_target.set_index("target")["pearson"]
        return float(per.loc[self.pathway])


def _seed_row(
    planted: PlantedPairs,
    config: TrainConfig,
    train_rows: np.ndarray,
    probe: _Probe,
    seed: int,
) -> dict[str, float]:
    """Train the aligned and the shuffled-pair run of one seed; probe both and the baseline."""
    cfg = config.replace(seed=seed)

    def run_config(name: str) -> TrainConfig:  # one output folder per run, if any
        return cfg if cfg.out is None else cfg.replace(out=str(Path(cfg.out) / name))

    aligned = _train_encoder(
        run_config(f"aligned_seed{seed}"), _subset(planted.dataset, train_rows)
    )
    perm = np.random.default_rng(seed).permutation(len(train_rows))
    shuffled = _train_encoder(
        run_config(f"shuffled_seed{seed}"), _subset(planted.dataset, train_rows, perm=perm)
    )
    patches = planted.patches
    row = {
        "seed": seed,
        "baseline": probe(_baseline_features(aligned, patches, cfg)),
        "shuffled": probe(_embed(shuffled, patches, cfg)),
        "aligned": probe(_embed(aligned, patches, cfg)),
    }
    logger.info("positive control, seed %d: %s", seed, row)
    return row


def positive_control(
    planted: PlantedPairs,
    config: TrainConfig,
    *,
    test_patients: Sequence[str],
    seeds: Sequence[int] = (0, 1, 2),
) -> PositiveControlResult:
    """Train on planted pairs and check that alignment learns the planted pathway.

    For each seed, [`stalign.train.fit`][stalign.train.fit] aligns the encoder of
    ``config`` on the pairs of the patients not in ``test_patients``, and again on the
    same pairs with their profiles shuffled; the probe of `pathway_prediction` (fitted on the
    training patients, scored on ``test_patients``, all pathways as targets) then
    reads the planted pathway from the backbone features of

    - the frozen baseline: the aligned encoder with its LoRA adapters switched off
      (the same weights and cohort colour normalisation, no training),
    - the shuffled-pair run and the aligned run,
    - and, once, the oracle: the grating period itself.

    Features are taken from the centre crop (``config.jitter_px``) resized to
    ``config.img_size``, the geometry the training evaluated.

    Parameters
    ----------
    planted
        From `planted_signal_pairs`.
    config
        Training settings (LoRA required; ``seed`` is replaced by each of ``seeds``;
        with ``out`` set, each run writes to ``out/aligned_seed<s>`` or
        ``out/shuffled_seed<s>``).
    test_patients
        Held-out patient ids (neither trained on nor used to fit the probe).
    seeds
        Training seeds (3 or more for the sd condition).

    Returns
    -------
    PositiveControlResult
        `passed` tells whether the margins of issue 19 hold.
    """
    if not config.lora:
        msg = (
            "positive_control: config.lora must be True (the baseline is the aligned "
            "encoder with its adapters switched off)"
        )
        raise ValueError(msg)
    groups = np.asarray(planted.dataset.patient_ids)
    test = np.isin(groups, [str(p) for p in test_patients])
    if not test.any() or test.all():
        msg = f"test_patients must name some but not all of the patients {sorted(set(groups))}"
        raise ValueError(msg)
    if len(seeds) == 0:
        msg = "positive_control: seeds is empty"
        raise ValueError(msg)
    probe = _Probe(planted, test_patients)
    train_rows = np.flatnonzero(~test)
    rows = [_seed_row(planted, config, train_rows, probe, int(s)) for s in seeds]
    table = pd.DataFrame(rows)
    table["oracle"] = probe(planted.oracle)
    table["margin"] = table["aligned"] - table[["baseline", "shuffled"]].max(axis=1)
    params = {
        "config": config.to_dict(),
        "test_patients": list(test_patients),
        "seeds": [int(s) for s in seeds],
        "planted": dict(planted.params),
        "n_train": len(train_rows),
        "n_test": int(test.sum()),
    }
    return PositiveControlResult(table, planted.pathway, params)
