"""Contrastive training: config, loss, batching, reproducibility, exact resume (CPU)."""

from __future__ import annotations

import json

import pytest
import torch
from _fixtures_train import one_thread, tiny_config  # noqa: F401 (autouse fixture)

from stalign.datasets import mob_example_pairs
from stalign.pl import save_training_curves
from stalign.train import (
    GlobalBatchSampler,
    TensorPairsDataset,
    TrainConfig,
    augment_batch,
    contrastive_loss,
    crop_batch,
    fit,
    load_model,
    pathway_soft_targets,
    retrieval_metrics,
)


@pytest.fixture(scope="module")
def mob_pairs(mob_dir) -> TensorPairsDataset:
    """48 real (64-px H&E patch, Hallmark ssGSEA) pairs from MOB1."""
    return mob_example_pairs(mob_dir, ["MOB1"], max_pairs=48)


def test_mob_pairs_are_real_patches_and_pathways(mob_pairs):
    item = mob_pairs[0]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert 0 <= float(item["image"].min()) and float(item["image"].max()) <= 1
    assert float(item["image"].std()) > 0.02  # real tissue, not a blank
    assert len(mob_pairs.pathway_names) == item["pathways"].shape[0] >= 30
    assert all(n.startswith("HALLMARK_") for n in mob_pairs.pathway_names)
    assert set(mob_pairs.patient_ids) == {"mouse1"}  # as in data/manifests/examples.csv


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("batch_size", 0, "batch_size"),
        ("amp", "fp8", "amp"),
        ("lora_dropout", 1.5, "lora_dropout"),
        ("img_size", -3, "img_size"),
        ("normalization", "x", "normalization"),
    ],
)
def test_config_validation_names_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{field: value})


def test_config_json_yaml_roundtrip(tmp_path):
    cfg = TrainConfig(encoder="resnet18", lora_r=4, encoder_kwargs={"depth": 2})
    cfg.to_json(tmp_path / "c.json")
    assert TrainConfig.from_file(tmp_path / "c.json") == cfg
    (tmp_path / "c.yaml").write_text("encoder: resnet18\nlora_r: 4\nepochs: 3\n")
    assert TrainConfig.from_file(tmp_path / "c.yaml").epochs == 3
    with pytest.raises(ValueError, match="unknown settings"):
        TrainConfig.from_dict({"learning_rate": 1})
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        TrainConfig.from_file(tmp_path / "nope.json")


def test_contrastive_loss_hard_soft_and_aligned():
    torch.manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    other = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    scale = torch.tensor(2.0)
    aligned, random = contrastive_loss(z, z, scale), contrastive_loss(z, other, scale)
    assert aligned < random
    # soft targets with a vanishing temperature are the identity → hard InfoNCE
    sharp = pathway_soft_targets(torch.randn(8, 5), temperature=1e-4)
    torch.testing.assert_close(sharp, torch.eye(8), atol=1e-4, rtol=0)
    torch.testing.assert_close(contrastive_loss(z, other, scale, targets=sharp), random)
    soft = pathway_soft_targets(torch.randn(8, 5), temperature=1.0)
    torch.testing.assert_close(soft.sum(1), torch.ones(8))
    assert float(soft.diagonal().min()) < 0.9


def test_global_batches_split_exactly_across_ranks():
    one = GlobalBatchSampler(50, 8, seed=3).epoch_batches(2)
    two = [GlobalBatchSampler(50, 8, seed=3, rank=r, world_size=2).epoch_batches(2) for r in (0, 1)]
    assert len(one) == 6
    for b, glob in enumerate(one):
        assert two[0][b] + two[1][b] == glob
    assert GlobalBatchSampler(50, 8, seed=3).epoch_batches(3) != one
    with pytest.raises(ValueError, match="divisible"):
        GlobalBatchSampler(50, 9, world_size=2)


def test_crop_and_augment_are_seeded():
    x = torch.rand(4, 3, 40, 40)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a = augment_batch(crop_batch(x, jitter_px=4, out_px=24, generator=g1), g1)
    b = augment_batch(crop_batch(x, jitter_px=4, out_px=24, generator=g2), g2)
    assert a.shape == (4, 3, 24, 24) and torch.equal(a, b)
    centre = crop_batch(x, jitter_px=4, out_px=None)
    torch.testing.assert_close(centre, x[:, :, 4:36, 4:36])
    assert 0 <= float(a.min()) and float(a.max()) <= 1


def test_retrieval_metrics_perfect_and_chance():
    z = torch.nn.functional.normalize(torch.randn(20, 8), dim=-1)
    m = retrieval_metrics(z, z, torch.randn(20, 6))
    assert m["recall@1"] == 1.0 and m["chance@5"] == 0.25 and m["profile_r"] == pytest.approx(1.0)
    shuffled = retrieval_metrics(z, z[torch.roll(torch.arange(20), 1)])
    assert shuffled["recall@1"] == 0.0


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_fit_is_bit_reproducible_and_learns(mob_pairs, tmp_path):
    cfg = tiny_config(max_steps=6, lr=3e-3, augment=False)
    a = fit(cfg, mob_pairs)
    b = fit(cfg, mob_pairs)
    pa, pb = _params(a.model), _params(b.model)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    # the adapters, heads and temperature moved; frozen backbone weights did not
    fresh = fit(cfg.replace(max_steps=1, lr=1e-12, temperature_lr=1e-12), mob_pairs)
    p0 = _params(fresh.model)
    moved = [k for k in pa if not torch.allclose(pa[k], p0[k])]
    assert any("lora_B" in k for k in moved) and any("molecular_tower" in k for k in moved)
    assert "logit_scale" in moved
    assert not any("base_layer" in k for k in moved)
    hist = a.history.dropna(subset=["train_loss"])
    assert hist["train_loss"].iloc[-2:].mean() < hist["train_loss"].iloc[:2].mean()


def test_exact_resume_matches_uninterrupted_run(mob_pairs, tmp_path):
    # 3 batches of 16 per epoch: the step-4 checkpoint is in the middle of epoch 2
    cfg = tiny_config(
        tmp_path / "full", max_steps=6, checkpoint_every_steps=4, lora_dropout=0.1, mol_dropout=0.1
    )
    full = fit(cfg, mob_pairs)
    ckpt = tmp_path / "full" / "checkpoints" / "step_00000004"
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 4 and state["micro_in_epoch"] == 1
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "config.json").is_file()
    resumed = fit(cfg.replace(out=str(tmp_path / "resumed"), resume=str(ckpt)), mob_pairs)
    pf, pr = _params(full.model), _params(resumed.model)
    assert resumed.steps == 6
    assert all(torch.equal(pf[k], pr[k]) for k in pf)
    # a changed structural setting refuses to resume
    with pytest.raises(ValueError, match="lora_r"):
        fit(cfg.replace(resume=str(ckpt), lora_r=4), mob_pairs)


def test_validation_early_stopping_outputs_and_reload(mob_pairs, tmp_path):
    val = mob_pairs.subset(range(32))
    cfg = tiny_config(
        tmp_path,
        max_steps=9,
        eval_every_steps=1,
        early_stopping_patience=2,
        lr=1e-9,
        temperature_lr=1e-9,
    )
    res = fit(cfg, mob_pairs, val)
    assert res.stopped_early and res.steps < 9  # a frozen model (lr≈0) cannot improve
    assert res.best_step == 1
    for name in (
        "log.csv",
        "config.json",
        "best/model.safetensors",
        "best/model.json",
    ):
        assert (tmp_path / name).is_file(), name
    # train draws nothing (no upward import of pl); the caller draws from the log table
    assert not (tmp_path / "curves.png").exists()
    assert save_training_curves(tmp_path / "log.csv", tmp_path / "curves.png").is_file()
    evals = res.history.dropna(subset=["val_recall@5"])
    assert {"val_loss", "val_recall@5", "val_chance@5", "val_profile_r"} <= set(evals.columns)
    assert (evals["val_chance@5"] == 5 / 32).all()
    model = load_model(tmp_path)
    meta = json.loads((tmp_path / "best" / "model.json").read_text())
    assert meta["pathway_names"] == mob_pairs.pathway_names
    # cohort colour statistics were computed from the H&E and stored in the model
    mean, _std = model.image_tower.encoder.normalization
    assert mean != pytest.approx((0.5, 0.5, 0.5), abs=1e-3)
    assert meta["image_mean"] == pytest.approx(list(mean))
