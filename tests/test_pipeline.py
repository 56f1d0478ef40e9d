"""End-to-end pipeline on two real MOB sections (one per animal), tiny settings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stalign.pipeline import PipelineConfig, ShuffledPairs, _without_lora, run_pipeline

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_section_manifest(tmp_path_factory, mob_dir):
    path = tmp_path_factory.mktemp("manifest") / "two.csv"
    rows = ["sample_id,patient_id,organ,species,platform,path,image"]
    for sid, patient in (("MOB1", "mouse1"), ("MOB3", "mouse2")):
        rows.append(
            f"{sid},{patient},olfactory_bulb,mus_musculus,legacy_st,"
            f"{mob_dir / (sid + '.tsv.gz')},{mob_dir / (sid + '.jpg')}"
        )
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, two_section_manifest):
    out = tmp_path_factory.mktemp("pipeline")
    config = PipelineConfig(
        manifest=str(two_section_manifest),
        size_px=32,
        mpp=8.8,
        img_size=32,
        epochs=2,
        batch_size=64,
        seeds=(0,),
        references=("pixels",),
        mil_epochs=3,
    )
    return run_pipeline(out, config, progress=False)


def test_pipeline_writes_report_exports_and_summary(pipeline_run):
    r = pipeline_run
    assert r.report.is_file()
    text = r.report.read_text()
    assert "**aligned**" in text and "**baseline**" in text and "**shuffled control**" in text
    assert "Alignment training (joint embedding space" in text
    assert "## Verdict (shuffled control vs aligned)" in text
    assert (r.report.parent / "figures" / "curves_aligned_seed0.png").is_file()
    for name in ("aligned_seed0", "baseline_seed0", "shuffled_seed0"):
        assert (r.exports[name] / "model.safetensors").is_file()
    summary = json.loads((r.out / "pipeline.json").read_text())
    assert summary["training"]["aligned_seed0"]["steps"] > 0
    assert (r.pairs_dir / "qc" / "report.md").is_file()


def test_baseline_export_is_the_untrained_base(pipeline_run):
    """The baseline is the aligned model with LoRA removed: same backbone, no delta."""
    from safetensors.numpy import load_file

    aligned = load_file(pipeline_run.exports["aligned_seed0"] / "model.safetensors")
    base = load_file(pipeline_run.exports["baseline_seed0"] / "model.safetensors")
    assert aligned.keys() == base.keys()
    lora_targets = [k for k in aligned if k.endswith("qkv.weight")]
    assert lora_targets
    # LoRA changed the adapted weights, and only those
    assert any(not np.array_equal(aligned[k], base[k]) for k in lora_targets)
    untouched = [k for k in aligned if "norm" in k or k.endswith("pos_embed")]
    assert all(np.array_equal(aligned[k], base[k]) for k in untouched)


def test_without_lora_merges_to_base_weights():
    import torch

    from stalign.models import add_lora, create_encoder

    torch.manual_seed(0)
    enc = create_encoder("vit_tiny_patch16_224", img_size=32)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    add_lora(enc, r=4, alpha=8)
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if "lora_B" in name:
                p.normal_()
    x = torch.rand(2, 3, 32, 32)
    base = _without_lora(enc)
    enc.eval()
    base.eval()
    assert not torch.allclose(enc(x), base(x))
    torch.manual_seed(0)
    ref = create_encoder("vit_tiny_patch16_224", img_size=32)
    ref.load_state_dict(before)
    ref.eval()
    torch.testing.assert_close(base(x), ref(x), rtol=1e-5, atol=1e-5)


def test_shuffled_pairs_permutes_profiles_not_images():
    items = [
        {"image": np.full((3, 2, 2), i, np.float32), "pathways": np.array([i], np.float32)}
        for i in range(20)
    ]
    shuffled = ShuffledPairs(items, seed=3)
    images = [int(shuffled[i]["image"][0, 0, 0]) for i in range(20)]
    profiles = [int(shuffled[i]["pathways"][0]) for i in range(20)]
    assert images == list(range(20))
    assert sorted(profiles) == list(range(20))
    assert profiles != list(range(20))


def test_shuffled_pairs_reads_profiles_from_the_array(pipeline_run):
    from stalign.pairs import PairsDataset

    ds = PairsDataset(pipeline_run.pairs_dir, patients=["mouse1"])
    shuffled = ShuffledPairs(ds, seed=1)
    for i in (0, 5, len(ds) - 1):
        j = int(shuffled.perm[i])
        np.testing.assert_array_equal(shuffled[i]["image"].numpy(), ds[i]["image"].numpy())
        np.testing.assert_array_equal(shuffled[i]["pathways"].numpy(), ds[j]["pathways"].numpy())
