"""``stalign train``: contrastive LoRA alignment on a pairs store."""

from __future__ import annotations

import argparse
import json
import logging
import warnings

logger = logging.getLogger(__name__)

# flag → TrainConfig field: (type, help, what an unset (None) default means); the default
# shown in --help is the dataclass field's
_FLAGS = {
    "encoder": (str, "registry or timm encoder name (`stalign encoders` lists them)", None),
    "epochs": (int, "passes over the training pairs", None),
    "max_steps": (int, "optimiser steps; wins over --epochs", "from --epochs"),
    "batch_size": (int, "contrastive batch (the negatives of each pair), at least 2", None),
    "lr": (float, "peak learning rate (AdamW, warm-up then cosine)", None),
    "img_size": (int, "encoder input side in px; crops are resized to it", "the crop size"),
    "lora_r": (int, "LoRA rank", None),
    "lora_alpha": (float, "LoRA scaling alpha", None),
    "seed": (int, "seed of everything (CPU runs are bit-reproducible)", None),
    "device": (str, "auto (CUDA if available), cpu, cuda, cuda:1, ...", None),
    "num_workers": (int, "DataLoader worker processes", None),
    "eval_every_steps": (int, "validate every this many optimiser steps", "once per epoch"),
    "checkpoint_every_steps": (int, "checkpoint every this many steps", "at evaluations"),
    "early_stopping_patience": (
        int,
        "stop after this many evaluations without a better validation recall@5",
        "never stop early",
    ),
    "checkpoint_path": (str, "local encoder weights (.safetensors or torch file)", "none"),
    "amp": (str, "mixed precision: auto (bf16 on CUDA), bf16 or none", None),
    "target_transform": (
        str,
        "none, or depth_regression: a cubic in log library size, fitted on the training "
        "pairs, removed from every pathway score",
        None,
    ),
}


def _add_settings_flags(p: argparse.ArgumentParser) -> None:
    """Add the TrainConfig flags, unset by default: they override --config only when given."""
    from ._args import add_deprecated_alias, format_default, settings_defaults

    defaults = settings_defaults("train._config", "TrainConfig")
    for name, (typ, text, none) in _FLAGS.items():
        flag = f"--{name.replace('_', '-')}"
        help_text = text + format_default(defaults.get(name), none)
        p.add_argument(flag, dest=name, type=typ, default=None, help=help_text)
    add_deprecated_alias(p, "--image-size", "--img-size", dest="img_size", type=int)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` to ``subparsers``."""
    from ._args import add_command, add_list

    p = add_command(
        subparsers,
        "train",
        summary="align an image encoder with pathway profiles (contrastive, LoRA)",
        description=(
            "Train on a pairs store written by `stalign build-pairs`. Settings come from "
            "--config (JSON/YAML, TrainConfig fields), then flags, then --set KEY=VALUE; "
            "a default shown below is TrainConfig's. Under torchrun the run is "
            "distributed (DDP). Calls stalign.train.fit."
        ),
        examples=[
            "stalign train --pairs results/pairs --out results/aligned \\\n"
            "    --encoder efficientnet_lite0 --pretrained \\\n"
            "    --train-samples MOB1 --val-samples MOB2 --allow-patient-overlap",
            "stalign train --pairs results/pairs --out results/aligned --config train.yaml "
            "--set temperature=0.05",
        ],
    )
    p.add_argument("--pairs", required=True, help="pairs store directory (with index.json)")
    p.add_argument(
        "--out", required=True, help="output directory (checkpoints, log.csv, curves.png)"
    )
    p.add_argument("--config", help="JSON or YAML file of TrainConfig settings")
    add_list(p, "--train-samples", metavar="ID", help="sample ids to train on")
    add_list(p, "--val-samples", metavar="ID", help="sample ids to validate on")
    add_list(p, "--val-patients", metavar="ID", help="patient ids to validate on (others train)")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help=(
            "fraction of patients held out for validation without an explicit split "
            "(default: %(default)s; 0: no validation)"
        ),
    )
    p.add_argument(
        "--split-seed",
        type=int,
        default=0,
        help="seed of that patient split (default: %(default)s)",
    )
    p.add_argument(
        "--allow-patient-overlap",
        action="store_true",
        help=(
            "let --train-samples and --val-samples share patients (an inner split by "
            "section); samples may never overlap"
        ),
    )
    p.add_argument(
        "--pretrained", action="store_true", help="load the encoder's pretrained weights"
    )
    p.add_argument(
        "--resume",
        help="continue a run: 'auto' (the latest checkpoint in --out) or a checkpoint directory",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in an --out that holds an earlier run (its files are removed)",
    )
    _add_settings_flags(p)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other TrainConfig field (value parsed as JSON when possible)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def _parse_set(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            msg = f"--set expects KEY=VALUE, got {item!r}"
            raise ValueError(msg)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def build_config(args: argparse.Namespace):
    """TrainConfig from --config, flags and --set (later wins)."""
    from ..train import TrainConfig

    base = TrainConfig.from_file(args.config).to_dict() if args.config else {}
    for name in _FLAGS:
        v = getattr(args, name)
        if v is not None:
            base[name] = v
    if args.pretrained:
        base["pretrained"] = True
    if args.resume:
        base["resume"] = args.resume
    if args.no_progress:
        base["progress"] = False
    base.update(_parse_set(args.set))
    base["out"] = args.out
    return TrainConfig.from_dict(base)


def check_disjoint_split(*args, **kwargs) -> None:
    """Check a split (deprecated: use `stalign.pairs.check_disjoint_split`)."""
    warnings.warn(
        "stalign.cli._train.check_disjoint_split is now stalign.pairs.check_disjoint_split",
        DeprecationWarning,
        stacklevel=2,
    )
    from ..pairs import check_disjoint_split as check

    check(*args, **kwargs)


def _datasets(args: argparse.Namespace):
    """Return the training and validation datasets that `stalign.pairs.plan_split` plans."""
    from ..pairs import PairsDataset, plan_split, read_index

    index = read_index(args.pairs)
    plan = plan_split(
        {s["sample_id"]: s["patient_id"] for s in index["samples"]},
        train_samples=args.train_samples or None,
        val_samples=args.val_samples or None,
        val_patients=args.val_patients or None,
        val_fraction=args.val_fraction,
        seed=args.split_seed,
        allow_patient_overlap=args.allow_patient_overlap,
        source=str(args.pairs),
    )
    train = PairsDataset(args.pairs, samples=plan.fit)
    if not plan.val:
        return train, None
    return train, PairsDataset(args.pairs, samples=plan.val, pathways=train.pathway_names)


def run(args: argparse.Namespace) -> int:
    """Run ``stalign train``."""
    from ..train import check_run_folder, fit

    config = build_config(args)
    from ..models import get_encoder_config

    get_encoder_config(config.encoder)  # an unknown name fails here, before any data is read
    check_run_folder(config.out, resume=config.resume, overwrite=args.overwrite)
    train, val = _datasets(args)
    logger.info("training on %d pairs, validating on %d", len(train), len(val) if val else 0)
    result = fit(config, train, val)
    if result.out is not None:
        from ..pl import save_training_curves

        save_training_curves(result.history, result.out / "curves.png")
    summary = {
        "steps": result.steps,
        "best_step": result.best_step,
        "best_val_recall@5": result.best_metric,
        "stopped_early": result.stopped_early,
        "out": str(result.out),
    }
    if len(result.history):
        last = result.history.dropna(subset=["val_loss"]) if "val_loss" in result.history else []
        if len(last):
            summary["first_val_loss"] = float(last["val_loss"].iloc[0])
            summary["last_val_loss"] = float(last["val_loss"].iloc[-1])
    print(json.dumps(summary, indent=2))
    return 0
