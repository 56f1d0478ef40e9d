"""stalign export --baseline: the exact encoder an alignment started from, beside it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _fixtures_train import one_thread, tiny_config  # noqa: F401 (autouse fixture)

import stalign as st
from stalign.cli import main
from stalign.train import fit


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    pairs = st.datasets.mob_example_pairs(sections=["MOB1"], max_pairs=48, size_px=32)
    # a learning rate that moves the LoRA weights visibly in 2 steps
    fit(tiny_config(out, lr=5e-2, max_steps=2, device="cpu"), pairs)
    return out


def test_baseline_is_the_encoder_before_training(run_dir, tmp_path, capsys):
    out = tmp_path / "exp"
    assert main(["export", str(run_dir), "--out", str(out), "--baseline"]) == 0
    assert "baseline: " in capsys.readouterr().out
    baseline = st.models.load_exported(out / "baseline" / "timm")
    aligned = st.models.load_exported(out / "timm")
    trained = st.train.load_model(run_dir).image_tower.encoder
    before = st.models.remove_lora(trained)  # adapters removed: the starting weights
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(baseline(x), before(x), atol=1e-5, rtol=0)
        assert not np.allclose(baseline(x).numpy(), aligned(x).numpy(), atol=1e-4)
    assert not (out / "baseline" / "adapter").exists()
