"""MIL marker prediction: learnable vs shuffled task; region tasks from real MOB data."""

import numpy as np
import pandas as pd
import pytest
from test_bench_mobdata import PATIENT, load_mob

from stalign.bench import bags_from_task, marker_prediction, region_tasks, slide_task


def _mil_task(n_bags=96, n_inst=10, d=24, seed=0):
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=d)
    direction /= np.linalg.norm(direction)
    y = np.tile([0, 1], n_bags // 2)
    bags = []
    for label in y:
        b = rng.normal(size=(n_inst, d))
        if label:  # a few "marker-positive" instances carry the signal
            b[:4] += 3.0 * direction
        bags.append(b)
    groups = np.repeat([f"p{i}" for i in range(4)], n_bags // 4)
    return bags, y, groups


def test_mil_learns_signal_and_not_shuffled_labels():
    bags, y, groups = _mil_task()
    res = marker_prediction(bags, y, groups, epochs=20, pca_dim=16)
    assert res.auc_mean > 0.9
    assert len(res.per_fold) == 4
    assert res.pooled_auc > 0.9
    y_shuf = np.random.default_rng(1).permutation(y)
    res_s = marker_prediction(bags, y_shuf, groups, epochs=20, pca_dim=16)
    # null AUC sd for 48 vs 48 bags is sqrt(97 / (12 * 48 * 48)) = 0.059: allow 3 sd
    assert abs(res_s.pooled_auc - 0.5) < 0.18
    assert res_s.pooled_auc < res.pooled_auc - 0.3
    assert res.summary()["n_bags"] == 96


def test_mil_input_errors():
    bags, y, groups = _mil_task(n_bags=8)
    with pytest.raises(ValueError, match="2 groups"):
        marker_prediction(bags, y, np.zeros(8))
    with pytest.raises(ValueError, match="0/1"):
        marker_prediction(bags, y + 1, groups)
    with pytest.raises(ValueError, match="one entry per bag"):
        marker_prediction(bags, y[:5], groups)


def test_region_tasks_on_real_mob(mob_dir):
    parts = [(s, *load_mob(mob_dir, s)) for s in ("MOB1", "MOB3")]
    genes = sorted(set.intersection(*(set(c.columns) for _, c, _, _ in parts)))
    counts = np.vstack([c[genes].to_numpy() for _, c, _, _ in parts])
    xy = np.vstack([x for _, _, x, _ in parts])
    samples = np.concatenate([[s] * len(c) for s, c, _, _ in parts])
    patients = np.array([PATIENT[s] for s in samples])
    ps = pd.DataFrame({"toy": np.log1p(counts[:, genes.index("Penk")])})
    task = region_tasks(
        xy,
        samples,
        patients,
        counts=counts,
        gene_names=genes,
        genes=["Penk"],
        pathway_scores=ps,
        pathways=["toy"],
        window=5,
        min_spots=10,
    )
    assert list(task.labels.columns) == ["gene:Penk", "pathway:toy"]
    assert len(task.bags) >= 10
    # bags never cross sections, have >= min_spots, label = above the cohort median
    for b, row in zip(task.bags, task.bag_obs.itertuples(), strict=True):
        assert set(samples[b]) == {row.sample_id}
        assert len(b) >= 10 and len(b) <= 36
    v = task.values["gene:Penk"]
    assert (task.labels["gene:Penk"] == (v > v.median()).astype(int)).all()
    assert 0.3 < task.labels["gene:Penk"].mean() <= 0.5
    # check one pseudo-bulk value by hand
    b0 = task.bags[0]
    want = np.log1p(1e6 * counts[b0, genes.index("Penk")].sum() / counts[b0].sum())
    assert v.iloc[0] == pytest.approx(want)
    bags = bags_from_task(xy, task)
    assert bags[0].shape == (len(task.bags[0]), 2)


def test_slide_task_user_labels():
    s = np.array(["a", "a", "b", "c"])
    t = slide_task(s, ["p1", "p1", "p2", "p3"], {"a": 1, "b": 0})
    assert [list(b) for b in t.bags] == [[0, 1], [2]]
    assert t.labels["label"].tolist() == [1, 0]
    with pytest.raises(ValueError, match="no spots"):
        slide_task(s, s, {"zz": 1})
    with pytest.raises(ValueError, match="0/1"):
        slide_task(s, s, {"a": 3})
