"""``stalign train``: contrastive LoRA alignment on a pairs store."""

from __future__ import annotations

import argparse
import json
import logging

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


def _known_patient(patient_id) -> bool:
    return patient_id is not None and str(patient_id).strip().lower() not in ("", "nan", "none")


def check_disjoint_split(
    patients: dict[str, str],
    train_samples: list[str],
    val_samples: list[str],
    *,
    allow_patient_overlap: bool = False,
) -> None:
    """Refuse a validation set that shares samples (or, by default, patients) with training.

    Parameters
    ----------
    patients
        Sample id → patient id of the store.
    train_samples, val_samples
        The chosen samples.
    allow_patient_overlap
        Accept shared patients (an inner split by section of the same animal/person).

    Raises
    ------
    ValueError
        Naming the shared samples or patients.
    """
    shared = sorted(set(train_samples) & set(val_samples))
    if shared:
        msg = (
            f"--val-samples {shared} are also training samples (--train-samples): "
            "validation must be held out from training"
        )
        raise ValueError(msg)
    if allow_patient_overlap:
        return
    train_p = {patients[s] for s in train_samples if _known_patient(patients.get(s))}
    val_p = {patients[s] for s in val_samples if _known_patient(patients.get(s))}
    both = sorted(train_p & val_p)
    if both:
        where = {p: sorted(s for s in val_samples if patients.get(s) == p) for p in both}
        msg = (
            f"patients {both} are in both training and validation (validation samples "
            f"{where}): spots of one patient leak between the sets; hold out whole patients "
            "(--val-patients) or pass --allow-patient-overlap for an inner split by section"
        )
        raise ValueError(msg)


def _split_by_fraction(args: argparse.Namespace, patients: list[str]):
    """Hold out ``--val-fraction`` of the store's patients (0: train on all, no validation).

    A split that leaves training or validation without a patient (e.g. a one-patient
    store) is refused with the options that work instead.
    """
    from ..pairs import PairsDataset, split_by_patient

    fraction = args.val_fraction
    if not 0 <= fraction < 1:
        msg = f"--val-fraction: expected a number in [0, 1) (0: no validation), got {fraction}"
        raise ValueError(msg)
    if fraction == 0:
        return PairsDataset(args.pairs), None
    fr = {"train": 1 - fraction, "val": fraction}
    assignment = split_by_patient(patients, fr, seed=args.split_seed)
    empty = [name for name in ("train", "val") if not assignment[name]]
    if empty:
        unique = sorted(set(map(str, patients)))
        msg = (
            f"--val-fraction {fraction} leaves no patient for {empty[0]}: {args.pairs} has "
            f"{len(unique)} patient(s) ({', '.join(unique[:5])}); choose the sections with "
            "--train-samples and --val-samples (add --allow-patient-overlap for sections of "
            "one patient), or pass --val-fraction 0 to train on everything without validation"
        )
        raise ValueError(msg)
    kw = dict(split_fractions=fr, split_seed=args.split_seed)
    train = PairsDataset(args.pairs, split="train", **kw)
    return train, PairsDataset(args.pairs, split="val", **kw)


def _datasets(args: argparse.Namespace):
    from ..pairs import PairsDataset, read_index

    index = read_index(args.pairs)
    samples = {s["sample_id"]: s["patient_id"] for s in index["samples"]}
    if args.train_samples or args.val_samples:
        train_s = args.train_samples or [s for s in samples if s not in (args.val_samples or [])]
        val_s = args.val_samples or []
        check_disjoint_split(
            samples, train_s, val_s, allow_patient_overlap=args.allow_patient_overlap
        )
    elif args.val_patients:
        val_s = [s for s, p in samples.items() if p in set(args.val_patients)]
        if not val_s:
            msg = (
                f"--val-patients {args.val_patients}: no sample of {args.pairs} has these patients"
            )
            raise ValueError(msg)
        train_s = [s for s in samples if s not in val_s]
    else:
        return _split_by_fraction(args, [s["patient_id"] for s in index["samples"]])
    train = PairsDataset(args.pairs, samples=train_s)
    val = PairsDataset(args.pairs, samples=val_s, pathways=train.pathway_names) if val_s else None
    return train, val


def _check_output_folder(config, overwrite: bool) -> None:
    """Refuse an --out that another run is using, or that holds an earlier run.

    An earlier run is only replaced with ``--overwrite`` (``--resume auto`` continues
    it). [`stalign.train.fit`][stalign.train.fit] takes the folder's lock for real; this early look
    only gives the right message before any data is read.
    """
    from pathlib import Path

    from .._lock import folder_lock
    from ..train import LOCK_FILE, previous_run_files

    out = Path(config.out)
    if (out / LOCK_FILE).is_file():  # in use by a live run? (refuses at once if so)
        with folder_lock(out / LOCK_FILE, command="stalign train", what=f"--out {out}"):
            pass
    found = previous_run_files(config.out)  # refuses links out of --out, before any work
    if config.resume is not None or overwrite:
        return
    if found:
        names = ", ".join(p.name for p in found[:3]) + (", ..." if len(found) > 3 else "")
        msg = (
            f"--out {config.out!r} already holds a training run ({names}); continue "
            "it with --resume auto, replace it with --overwrite, or choose another --out"
        )
        raise ValueError(msg)


def run(args: argparse.Namespace) -> int:
    """Run ``stalign train``."""
    from ..train import fit

    config = build_config(args)
    from ..models import get_encoder_config

    get_encoder_config(config.encoder)  # an unknown name fails here, before any data is read
    _check_output_folder(config, args.overwrite)
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
