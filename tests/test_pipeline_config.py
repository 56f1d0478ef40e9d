"""PipelineConfig: composed of TrainConfig and PairsParams by type, flat keywords routed."""

from __future__ import annotations

import dataclasses
import json
import warnings

import pytest

from stalign.pairs import PairsParams
from stalign.pipeline import (
    DEMO_PAIRS,
    DEMO_TRAIN,
    EXAMPLES,
    PipelineConfig,
    example_settings,
    pairs_params,
    train_config,
)
from stalign.train import TrainConfig


def _renamed_train_config(old: str, new: str) -> type:
    """A copy of TrainConfig whose field ``old`` is called ``new`` (same default)."""
    fields = []
    for f in dataclasses.fields(TrainConfig):
        default = (
            {"default": f.default}
            if f.default is not dataclasses.MISSING
            else {"default_factory": f.default_factory}
        )
        fields.append((new if f.name == old else f.name, f.type, dataclasses.field(**default)))

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    return dataclasses.make_dataclass("TrainConfig", fields, namespace={"replace": replace})


@pytest.mark.parametrize("field", ["lr", "batch_size", "epochs"])
def test_a_renamed_train_config_field_fails_loudly(monkeypatch, field):
    """A TrainConfig field renamed in a copy: the demo's settings and flat keywords refuse it."""
    import stalign.train

    monkeypatch.setattr(stalign.train, "TrainConfig", _renamed_train_config(field, "renamed"))
    value = {"lr": 1e-4, "batch_size": 16, "epochs": 2}[field]
    with pytest.raises(TypeError, match=rf"unknown setting '{field}'"):
        PipelineConfig(**{field: value})
    with pytest.raises(TypeError, match=rf"DEMO_TRAIN names \['{field}'\].*renamed\?"):
        PipelineConfig()  # the demo's own settings name it too
    with pytest.raises(TypeError, match=field):
        PipelineConfig.example("mob")
    # the new name is routed to the copy: nothing is dropped silently
    config = PipelineConfig(train=stalign.train.TrainConfig(), renamed=value)
    assert config.train.renamed == value


def test_flat_keywords_are_routed_to_the_owner_configs():
    config = PipelineConfig(lr=1e-4, max_steps=50, mpp=2.0, weight_decay=0.0, seeds=(1,))
    assert (config.train.lr, config.train.max_steps, config.train.weight_decay) == (1e-4, 50, 0.0)
    assert (config.pairs.mpp, config.pairs.size_px) == (2.0, DEMO_PAIRS["size_px"])
    assert config.seeds == (1,)
    # flat settings go on top of a given config; the given object is not changed
    given = TrainConfig(encoder="resnet10t", batch_size=8)
    config = PipelineConfig(train=given, batch_size=16, random_encoders=None)
    assert (config.train.encoder, config.train.batch_size, given.batch_size) == (
        "resnet10t",
        16,
        8,
    )
    assert config.train.epochs == TrainConfig().epochs  # a given TrainConfig keeps its own
    assert PipelineConfig(pairs=PairsParams(mpp=3.0, size_px=64)).pairs.size_px == 64
    # dataclasses.replace takes flat names too
    assert dataclasses.replace(config, lr=5e-4).train.lr == 5e-4


def test_unknown_and_per_run_settings_are_type_errors():
    with pytest.raises(TypeError, match=r"unknown setting 'lrr' \(did you mean 'lr'"):
        PipelineConfig(lrr=1e-4)
    with pytest.raises(TypeError, match="'seed' is set for each run; use seeds"):
        PipelineConfig(seed=1)
    with pytest.raises(TypeError, match="'out' is set for each run"):
        PipelineConfig(out="x")
    with pytest.raises(ValueError, match=r"PipelineConfig: TrainConfig\.lr: expected a number"):
        PipelineConfig(lr=-1)
    with pytest.raises(ValueError, match=r"PipelineConfig\.normalization"):
        PipelineConfig(normalization="imagenet")
    with pytest.raises(ValueError, match=r"train\.resume"):
        PipelineConfig(train=TrainConfig(resume="auto", out="x"))


def test_the_demo_defaults_are_unchanged():
    """her2st and MOB: the settings of the flat PipelineConfig before composition."""
    her2st = PipelineConfig()
    assert (her2st.train.encoder, her2st.train.pretrained, her2st.train.img_size) == (
        "efficientnet_lite0",
        True,
        112,
    )
    assert (her2st.train.epochs, her2st.train.max_steps, her2st.train.batch_size) == (100, 100, 32)
    assert (her2st.train.lr, her2st.train.lora_last_n_blocks, her2st.train.eval_every_steps) == (
        1e-3,
        4,
        25,
    )
    assert her2st.pairs == PairsParams(mpp=1.4, size_px=112, method="score_genes")
    assert (her2st.train_samples, her2st.test_samples, her2st.val_samples) == (
        ("C2", "C3", "C4"),
        ("C5", "C6"),
        ("C4",),
    )
    mob = PipelineConfig.example("mob")
    assert (mob.train.lr, mob.train.epochs, mob.train.max_steps, mob.train.batch_size) == (
        3e-4,
        3,
        None,
        128,
    )
    assert (mob.train.img_size, mob.train.jitter_px, mob.train.early_stopping_patience) == (
        64,
        0,
        2,
    )
    assert mob.pairs == PairsParams(mpp=4.4, size_px=64, method="ssgsea")
    assert (mob.train_patients, mob.test_patients) == (("mouse1",), ("mouse2",))
    # the flat view the demo's --help reads, without torch
    assert example_settings("mob") == example_settings("her2st") | EXAMPLES["mob"]
    assert {k: example_settings()[k] for k in DEMO_TRAIN} == DEMO_TRAIN


def test_flat_reads_and_pairs_params_are_deprecated_aliases():
    config = PipelineConfig.example("mob")
    with pytest.warns(DeprecationWarning, match=r"PipelineConfig\.lr is now .*train\.lr"):
        assert config.lr == 3e-4
    with pytest.warns(DeprecationWarning, match=r"PipelineConfig\.mpp is now .*pairs\.mpp"):
        assert config.mpp == 4.4
    with pytest.warns(DeprecationWarning, match="config.pairs"):
        assert pairs_params(config) is config.pairs
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert config.normalization == "auto"  # the pipeline's own field: no warning
    with pytest.raises(AttributeError, match="nope"):
        _ = config.nope


def test_to_dict_nests_the_owner_configs_and_is_json():
    config = PipelineConfig.example("mob")
    d = json.loads(json.dumps(config.to_dict()))
    assert d["train"]["lr"] == 3e-4 and d["pairs"]["mpp"] == 4.4
    assert d["seeds"] == [0, 1, 2] and "lr" not in d
    tcfg = train_config(config, seed=2, out="runs/x", progress=True)
    assert (tcfg.seed, tcfg.out, tcfg.progress) == (2, "runs/x", True)
    assert tcfg.early_stopping_patience == 2
