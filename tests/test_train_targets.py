"""Depth-robust training targets: ``TrainConfig.target_transform='depth_regression'``.

A cubic in log library size is fitted per pathway on the training pairs only, applied to
training and validation targets, saved with every checkpoint and compared on resume.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _fixtures_train import one_thread, tiny_config  # noqa: F401 (autouse fixture)

from stalign.cli import main
from stalign.pp import DepthRegression, log_depth
from stalign.train import TensorPairsDataset, TransformedTargets, fit, load_model

MANIFEST_COLS = "sample_id,patient_id,organ,species,platform,path,image,mpp,source,license"


def _depth_pairs(n: int, seed: int) -> TensorPairsDataset:
    """Pairs whose 3 'pathways' follow log depth (nonlinearly) plus noise; random 40-px images."""
    rng = np.random.default_rng(seed)
    depth = rng.lognormal(8, 1, n).round()
    z = np.log(depth)
    scores = np.column_stack([z, z**2 / 8, np.exp(z / 4)]) + rng.normal(0, 0.3, (n, 3))
    images = rng.integers(0, 256, (n, 40, 40, 3), dtype=np.uint8)
    return TensorPairsDataset(images, scores, total_counts=depth)


@pytest.fixture(scope="module")
def pairs() -> tuple[TensorPairsDataset, TensorPairsDataset, TensorPairsDataset]:
    """Training pairs and two different validation sets."""
    return _depth_pairs(64, 0), _depth_pairs(32, 1), _depth_pairs(32, 2)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def _saved_transform(run: Path) -> dict:
    return json.loads((run / "checkpoints" / "step_00000002" / "model.json").read_text())[
        "target_transform"
    ]


def test_fitted_on_the_training_pairs_only(pairs, tmp_path):
    train, val_a, val_b = pairs
    cfg = dict(target_transform="depth_regression", max_steps=2, checkpoint_every_steps=2)
    fit(tiny_config(tmp_path / "a", **cfg), train, val_a)
    fit(tiny_config(tmp_path / "b", **cfg), train, val_b)
    saved_a, saved_b = _saved_transform(tmp_path / "a"), _saved_transform(tmp_path / "b")
    assert saved_a == saved_b  # the validation pairs do not change it
    direct = DepthRegression(degree=3).fit(train.pathways.numpy(), log_depth(train.total_counts))
    assert saved_a["name"] == "depth_regression" and saved_a["degree"] == 3
    np.testing.assert_allclose(saved_a["coef"], direct.coef, rtol=1e-10)
    # a transform fitted on training + validation pairs would differ
    both = np.concatenate([train.pathways.numpy(), val_a.pathways.numpy()])
    depth = log_depth(np.concatenate([train.total_counts, val_a.total_counts]))
    assert not np.allclose(DepthRegression(degree=3).fit(both, depth).coef, direct.coef)


def test_transformed_targets_do_not_follow_depth(pairs):
    train, val, _ = pairs
    z = log_depth(train.total_counts)
    raw = train.pathways.numpy()
    assert min(abs(_pearson(raw[:, j], z)) for j in range(3)) > 0.3  # the planted dependence
    transform = DepthRegression(degree=3).fit(raw, z)
    adjusted = TransformedTargets(train, transform)
    assert len(adjusted) == len(train)
    assert torch.equal(adjusted[5]["pathways"], adjusted.pathways[5])
    assert torch.equal(adjusted[5]["image"], train[5]["image"])  # images untouched
    res = adjusted.pathways.numpy().astype(np.float64)
    assert max(abs(_pearson(res[:, j], z)) for j in range(3)) < 1e-5
    # validation targets get the training curve, not one fitted on themselves
    expected = transform.transform(val.pathways.numpy(), log_depth(val.total_counts))
    np.testing.assert_allclose(TransformedTargets(val, transform).pathways, expected, atol=1e-5)


def test_round_trips_through_a_checkpoint_and_resumes_exactly(pairs, tmp_path):
    import shutil

    train, val, _ = pairs
    kw = dict(target_transform="depth_regression", checkpoint_every_steps=2, eval_every_steps=2)
    full = fit(tiny_config(tmp_path / "full", max_steps=4, **kw), train, val)
    part = tmp_path / "part"  # the run as a crash after step 2 would have left it
    shutil.copytree(tmp_path / "full", part)
    shutil.rmtree(part / "checkpoints" / "step_00000004")
    resumed = fit(tiny_config(part, max_steps=4, resume="auto", **kw), train, val)
    pf, pr = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(pf[k], pr[k]) for k in pf)
    saved = full.extra["meta"]["target_transform"]
    assert resumed.extra["meta"]["target_transform"] == saved
    # a resumed run keeps the transform saved with the checkpoint instead of refitting it
    # (a refit on pairs whose library sizes changed would give another curve)
    shutil.rmtree(part / "checkpoints" / "step_00000004")
    shifted = TensorPairsDataset(train.images, train.pathways, total_counts=train.total_counts * 3)
    again = fit(tiny_config(part, max_steps=4, resume="auto", **kw), shifted, val)
    assert again.extra["meta"]["target_transform"] == saved
    refit = fit(tiny_config(max_steps=1, **kw), shifted).extra["meta"]["target_transform"]
    assert refit["centre"] != saved["centre"]
    model = load_model(tmp_path / "full")
    assert model.target_transform.to_dict() == {k: v for k, v in saved.items() if k != "name"}
    assert load_model(tmp_path / "full").target_transform is not None
    plain = fit(tiny_config(tmp_path / "plain", max_steps=2), train)
    assert plain.extra["meta"]["target_transform"] == {"name": "none"}
    prov = plain.extra["meta"]["provenance"]  # in-memory pairs: labels, no store
    assert prov["training_patients"] == ["patient"] and prov["validation_samples"] == []
    assert "pairs_store" not in prov and prov["stalign_version"]
    assert load_model(tmp_path / "plain").target_transform is None


def test_a_changed_target_transform_is_refused_on_resume(pairs, tmp_path):
    train = pairs[0]
    fit(tiny_config(tmp_path, max_steps=2, checkpoint_every_steps=2), train)
    cfg = tiny_config(tmp_path, max_steps=4, resume="auto", target_transform="depth_regression")
    with pytest.raises(ValueError, match=r"config changed \(target_transform: 'none' → 'depth"):
        fit(cfg, train)


def test_pairs_without_library_sizes_are_refused(pairs):
    train = pairs[0]
    bare = TensorPairsDataset(train.images, train.pathways)
    with pytest.raises(ValueError, match=r"needs each pair's library size.*total_counts"):
        fit(tiny_config(target_transform="depth_regression"), bare)
    with pytest.raises(ValueError, match=r"TrainConfig\.target_transform: expected one of"):
        tiny_config(target_transform="rarefy")


@pytest.fixture(scope="module")
def store(tmp_path_factory, mob_dir) -> Path:
    """A one-section pairs store (MOB1), whose pairs.h5ad records each spot's total counts."""
    from stalign.pairs import build_pairs, merge_pairs

    root = tmp_path_factory.mktemp("depth_store")
    row = f"MOB1,animal1,olfactory_bulb,mus_musculus,legacy_st,{mob_dir / 'MOB1.tsv.gz'},"
    row += f"{mob_dir / 'MOB1.jpg'},,test,MIT"
    (root / "manifest.csv").write_text(f"{MANIFEST_COLS}\n{row}\n")
    build_pairs(
        root / "manifest.csv", root / "pairs", mpp=4.7, size_px=24, progress=False, report=False
    )
    merge_pairs(root / "pairs", report=False)
    return root / "pairs"


def test_cli_trains_on_depth_adjusted_pathway_scores_of_a_store(store, tmp_path):
    from stalign.pairs import PairsDataset

    out = tmp_path / "run"
    args = ["train", "--pairs", str(store), "--out", str(out), "--img-size", "32"]
    args += ["--batch-size", "16", "--max-steps", "2", "--val-fraction", "0", "--no-progress"]
    args += ["--set", 'encoder_kwargs={"depth": 2}', "--target-transform", "depth_regression"]
    assert main(args) == 0
    assert json.loads((out / "config.json").read_text())["target_transform"] == "depth_regression"
    transform = load_model(out).target_transform
    data = PairsDataset(store)
    z = log_depth(data.obs["total_counts"].to_numpy())
    raw, adjusted = data.pathways, TransformedTargets(data, transform).pathways.numpy()
    r_raw = [abs(_pearson(raw[:, j], z)) for j in range(raw.shape[1])]
    r_adj = [abs(_pearson(adjusted[:, j], z)) for j in range(raw.shape[1])]
    assert np.median(r_raw) > 0.1  # real Hallmark ssGSEA scores follow depth (issue 19)
    assert max(r_adj) < 1e-4
