"""End-to-end pipeline on two real MOB sections (one per animal), tiny settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _report_html_check import check_self_contained

from stalign.models import remove_lora
from stalign.pipeline import PipelineConfig, ShuffledPairs, run_pipeline

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
    config = PipelineConfig.example(
        "mob",
        manifest=str(two_section_manifest),
        encoder="vit_tiny_patch16_224",
        pretrained=False,
        random_encoders=("vit_tiny_patch16_224",),
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
    assert text.startswith("# stalign evaluation report\n\n**Overall verdict:")
    assert "## Verdicts on the depth-adjusted readout" in text
    assert "shuffled control vs aligned" in text
    assert (r.report.parent / "figures" / "curves_aligned_seed0.png").is_file()
    # the HTML twin is rewritten after the training section is appended
    training = "Alignment training (joint embedding space, inner validation sections)"
    check_self_contained(r.report.with_suffix(".html"), headings=(training,))
    # the appended training section, its curves and the HTML are part of the signed set
    from stalign.bench import check_evaluation_outputs

    signed = check_evaluation_outputs(r.report.parent)["files"]
    assert {"report.md", "report.html", "figures/curves_aligned_seed0.png"} <= set(signed)
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
    base = remove_lora(enc)
    enc.eval()
    base.eval()
    assert not torch.allclose(enc(x), base(x))
    torch.manual_seed(0)
    ref = create_encoder("vit_tiny_patch16_224", img_size=32)
    ref.load_state_dict(before)
    ref.eval()
    torch.testing.assert_close(base(x), ref(x), rtol=1e-5, atol=1e-5)


def test_without_lora_is_the_pre_training_encoder_bit_for_bit(tmp_path):
    """peft's adapters removed: the export holds the weights LoRA started from, exactly."""
    import torch
    from safetensors.numpy import load_file

    from stalign.models import add_lora, create_encoder, export

    torch.manual_seed(0)
    enc = create_encoder("vit_tiny_patch16_224", img_size=32)
    before = {k: v.detach().clone().numpy() for k, v in enc.model.state_dict().items()}
    add_lora(enc, r=4, alpha=8)
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if "lora_" in name:
                p.normal_()  # a trained adapter: B != 0
    base = remove_lora(enc)
    assert base.peft_model is None and enc.peft_model is not None  # enc untouched
    assert not any("lora_" in name for name, _ in base.named_parameters())
    assert any("lora_B" in name for name, _ in enc.named_parameters())
    saved = load_file(export(base, tmp_path / "base", adapter=False)["timm"] / "model.safetensors")
    assert saved.keys() == before.keys()
    for key, value in before.items():
        np.testing.assert_array_equal(saved[key], value, err_msg=key)


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
    # each permuted profile keeps its own spot's library size (for depth_regression)
    depth = ds.obs["total_counts"].to_numpy()
    np.testing.assert_array_equal(shuffled.total_counts, depth[shuffled.perm])
    np.testing.assert_array_equal(shuffled.pathways, np.asarray(ds.pathways)[shuffled.perm])
    from stalign.train._targets import fit_depth_regression

    # the fit sees the same (profile, depth) pairs as the unshuffled data: same curve
    np.testing.assert_allclose(
        fit_depth_regression(shuffled).coef, fit_depth_regression(ds).coef, atol=1e-8
    )


# ---------------------------------------------------------------- pretrained / local weights


@pytest.fixture(scope="module")
def three_section_manifest(tmp_path_factory, mob_dir):
    """Animal 1 = MOB1 + MOB2 (train, inner validation on MOB2), animal 2 = MOB3 (test)."""
    path = tmp_path_factory.mktemp("manifest3") / "three.csv"
    rows = ["sample_id,patient_id,organ,species,platform,path,image"]
    for sid, patient in (("MOB1", "mouse1"), ("MOB2", "mouse1"), ("MOB3", "mouse2")):
        rows.append(
            f"{sid},{patient},olfactory_bulb,mus_musculus,legacy_st,"
            f"{mob_dir / (sid + '.tsv.gz')},{mob_dir / (sid + '.jpg')}"
        )
    path.write_text("\n".join(rows) + "\n")
    return path


def test_pipeline_config_is_validated_up_front(three_section_manifest, tmp_path):
    from stalign.pipeline import plan_sections

    base = {"manifest": str(three_section_manifest)}
    with pytest.raises(FileNotFoundError, match=r"checkpoint_path.*nowhere\.safetensors"):
        PipelineConfig.example("mob", **base, checkpoint_path=str(tmp_path / "nowhere.safetensors"))
    with pytest.raises(ValueError, match="not_a_model"):
        PipelineConfig.example("mob", **base, encoder="not_a_model")
    with pytest.raises(ValueError, match="test_patients"):
        PipelineConfig.example("mob", **base, test_patients=("mouse1",))
    with pytest.raises(ValueError, match="normalization"):
        PipelineConfig.example("mob", **base, normalization="imagenet")
    assert plan_sections(PipelineConfig.example("mob", **base)) == {
        "fit": ["MOB1"],
        "val": ["MOB2"],
        "test": ["MOB3"],
    }
    assert plan_sections(PipelineConfig.example("mob", **base, val_samples=()))["val"] == []
    # validation on the test animal is refused
    with pytest.raises(ValueError, match="never use the test sections"):
        plan_sections(PipelineConfig.example("mob", **base, val_samples=("MOB3",)))
    assert (
        PipelineConfig.example("mob", **base).resolved_normalization == "encoder"
    )  # pretrained default
    assert (
        PipelineConfig.example("mob", **base, pretrained=False).resolved_normalization == "cohort"
    )
    # a checkpoint that does not fit the encoder fails before any pairs are built
    import torch
    from safetensors.torch import save_file

    save_file({"nothing.weight": torch.zeros(2)}, tmp_path / "bad.safetensors")
    config = PipelineConfig.example(
        "mob", **base, encoder="resnet10t", checkpoint_path=str(tmp_path / "bad.safetensors")
    )
    with pytest.raises(ValueError, match="lacks"):
        run_pipeline(tmp_path / "out", config, progress=False)
    assert not (tmp_path / "out" / "pairs").exists()


def test_demo_runs_end_to_end_from_a_local_checkpoint(three_section_manifest, tmp_path, capsys):
    """``stalign demo --encoder NAME --checkpoint-path FILE``: how a user runs UNI from disk."""
    import torch
    from safetensors.numpy import load_file
    from safetensors.torch import save_file

    from stalign import models
    from stalign.cli import main

    torch.manual_seed(7)
    weights = models.create_encoder("resnet10t").model.state_dict()
    ckpt = tmp_path / "resnet10t.safetensors"
    save_file({k: v.contiguous() for k, v in weights.items()}, ckpt)
    out = tmp_path / "demo"
    rc = main(
        [
            "demo",
            "--example",
            "mob",
            "--out",
            str(out),
            "--manifest",
            str(three_section_manifest),
            "--encoder",
            "resnet10t",
            "--checkpoint-path",
            str(ckpt),
            "--size-px",
            "32",
            "--mpp",
            "8.8",
            "--img-size",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "64",
            "--seeds",
            "0",
            "--references",
            "library_size",
            "random",
            "--random-encoders",
            "resnet10t",
            "--mil-epochs",
            "2",
            "--no-progress",
        ]
    )
    assert rc == 0 and "report" in capsys.readouterr().out
    summary = json.loads((out / "pipeline.json").read_text())
    # inner split: trained on MOB1, validated on MOB2 (animal 1); MOB3 only evaluated
    assert summary["sections"] == {"fit": ["MOB1"], "val": ["MOB2"], "test": ["MOB3"]}
    assert summary["normalization"] == "encoder"
    log = (out / "train" / "aligned_seed0" / "log.csv").read_text()
    assert "val_loss" in log.splitlines()[0]
    # the baseline is the local checkpoint, bit for bit, with the encoder's own mean/std
    base = load_file(out / "exports" / "baseline_seed0" / "timm" / "model.safetensors")
    for key, value in weights.items():
        if key in base:
            np.testing.assert_array_equal(base[key], value.numpy())
    meta = json.loads((out / "exports" / "baseline_seed0" / "timm" / "stalign.json").read_text())
    from stalign.models._registry import IMAGENET_MEAN

    np.testing.assert_allclose(meta["normalization"]["mean"], IMAGENET_MEAN, rtol=1e-6)
    import pandas as pd

    table = pd.read_csv(out / "eval" / "summary.csv")
    assert {"library size only", "random resnet10t", "baseline", "aligned"} <= set(
        table["features"]
    )
    report = (out / "eval" / "report.md").read_text()
    assert "validated during training on MOB2" in report and "(MOB3)" in report


def test_pipeline_config_composes_train_and_pairs_configs(three_section_manifest):
    """Flat settings reach the TrainConfig / PairsParams that own them; their rules validate."""
    from stalign.pairs import PairsParams
    from stalign.pipeline import DEMO_TRAIN, train_config
    from stalign.train import TrainConfig

    config = PipelineConfig.example(
        "mob",
        manifest=str(three_section_manifest),
        pretrained=False,
        lr=1e-4,
        epochs=5,
        lora_target_modules=("attn.qkv",),
        mpp=8.8,
        size_px=32,
        method="zscore",
    )
    assert isinstance(config.train, TrainConfig) and isinstance(config.pairs, PairsParams)
    assert (config.train.lr, config.train.epochs, config.train.pretrained) == (1e-4, 5, False)
    assert config.train.lora_target_modules == ["attn.qkv"]  # TrainConfig's type
    assert config.train.normalization == "cohort"  # "auto" resolved: no pretrained weights
    tcfg = train_config(config, seed=3, out=None, early_stopping=False)
    assert tcfg == config.train.replace(seed=3, progress=False, early_stopping_patience=None)
    assert config.pairs == PairsParams(mpp=8.8, size_px=32, method="zscore")
    # every demo training setting reaches TrainConfig (the her2st defaults)
    default = PipelineConfig().train
    assert {k: getattr(default, k) for k in DEMO_TRAIN} == DEMO_TRAIN
    assert default.normalization == "encoder"  # "auto" with pretrained weights
    # the owners' rules apply up front, before any pairs are built
    with pytest.raises(ValueError, match="method"):
        PipelineConfig.example("mob", manifest=str(three_section_manifest), method="not_a_method")
    with pytest.raises(ValueError, match="size_px"):
        PipelineConfig.example("mob", manifest=str(three_section_manifest), size_px=4, img_size=4)


def test_default_config_is_the_human_example_split_by_section():
    """The main job: her2st patient C, train C2-C3, validate C4, test C5-C6 (by section)."""
    from stalign.pipeline import plan_sections

    config = PipelineConfig()
    assert config.split_by == "sample"
    assert plan_sections(config) == {"fit": ["C2", "C3"], "val": ["C4"], "test": ["C5", "C6"]}
    train = config.train
    assert (train.batch_size, train.img_size, train.max_steps) == (32, 112, 100)
    assert config.train.early_stopping_patience is None  # no early stop before step 100
    # an explicit split by patient replaces the default sections
    mob = PipelineConfig.example("mob")
    assert (mob.split_by, mob.train_samples, mob.test_samples) == ("patient", None, None)
    with pytest.raises(ValueError, match="not both"):
        PipelineConfig(test_patients=("her2st_C",), test_samples=("C6",))
    with pytest.raises(ValueError, match="test_samples"):
        PipelineConfig(train_samples=("C2", "C6"), test_samples=("C6",))
    with pytest.raises(ValueError, match=r"sections \['C9'\] are not in"):
        plan_sections(PipelineConfig(test_samples=("C9",)))
    with pytest.raises(ValueError, match="example"):
        PipelineConfig.example("nope")


def test_demo_flags_override_the_example_settings():
    import argparse

    from stalign.cli._demo import _config, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["demo", "--test-samples", "C6", "--train-samples", "C2", "C3"])
    config = _config(args)
    assert (config.train_samples, config.test_samples) == (("C2", "C3"), ("C6",))
    # the example's validation section C4 is no longer a training section: said up front
    from stalign.pipeline import plan_sections

    with pytest.raises(ValueError, match=r"val_samples \['C4'\] are not training sections"):
        plan_sections(config)
    args = parser.parse_args(["demo", "--example", "mob", "--lr", "1e-4"])
    config = _config(args)
    assert (config.test_patients, config.train.lr, config.pairs.mpp) == (("mouse2",), 1e-4, 4.4)
    args = parser.parse_args(["demo", "--train-patients", "her2st_C", "--test-patients", "x"])
    config = _config(args)
    assert (config.split_by, config.train_samples) == ("patient", None)


@pytest.fixture(scope="module")
def her2st_three_sections(tmp_path_factory):
    """The bundled her2st manifest restricted to C2-C4 (absolute paths)."""
    from stalign.pipeline import HER2ST_MANIFEST

    lines = Path(HER2ST_MANIFEST).read_text().splitlines()
    root = Path(HER2ST_MANIFEST).parent
    out = [lines[0]]
    for line in lines[1:]:
        if line.split(",")[0] in ("C2", "C3", "C4"):
            out.append(line.replace("../examples/", str(root.parent / "examples") + "/"))
    path = tmp_path_factory.mktemp("her2st") / "manifest.csv"
    path.write_text("\n".join(out) + "\n")
    return path


def test_pipeline_splits_human_sections_and_evaluates_held_out_section(
    her2st_three_sections, tmp_path
):
    """Split by section end to end: train C2, validate C3, evaluate C4 only."""
    config = PipelineConfig(
        manifest=str(her2st_three_sections),
        train_samples=("C2", "C3"),
        test_samples=("C4",),
        val_samples=("C3",),
        encoder="vit_tiny_patch16_224",
        pretrained=False,
        random_encoders=("vit_tiny_patch16_224",),
        lora_last_n_blocks=None,
        mpp=5.6,
        size_px=32,
        img_size=32,
        batch_size=32,
        max_steps=3,
        eval_every_steps=None,
        seeds=(0,),
        references=("library_size",),
        mil_epochs=2,
    )
    r = run_pipeline(tmp_path / "run", config, progress=False)
    summary = json.loads((tmp_path / "run" / "pipeline.json").read_text())
    assert summary["sections"] == {"fit": ["C2"], "val": ["C3"], "test": ["C4"]}
    assert r.training["aligned_seed0"]["steps"] == 3
    runs = pd.read_csv(r.report.parent / "runs.csv")
    genes = runs[(runs.task == "genes") & (runs.metric == "pearson")]
    assert set(genes.fold) == {"C4"}  # only the held-out section is ever scored
    assert {"baseline", "aligned"} <= set(genes.features)
    adjusted = runs[(runs.task == "genes") & (runs.metric == "pearson_depth_adjusted")]
    assert set(adjusted.fold) == {"C4"}
    report = r.report.read_text()
    assert "near-replicates" in report
