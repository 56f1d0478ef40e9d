"""``stalign evaluate``: baseline vs aligned encoders on a pairs store → markdown report."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``evaluate`` to ``subparsers``."""
    from ._args import (
        add_command,
        add_deprecated_alias,
        add_deprecated_positional,
        add_list,
        format_default,
        settings_defaults,
    )

    d = settings_defaults("bench._spec", "EvaluationSpec")
    p = add_command(
        subparsers,
        "evaluate",
        summary="compare encoders (baseline vs aligned export) on a pairs store; write a report",
        description=(
            "Score encoders and reference features (colour histogram, 8x8 pixels, squidpy "
            "features, library size, a random-weights encoder) on the same pairs store: HEST "
            "ridge gene and pathway prediction, scored plain and net of sequencing depth, "
            "image->profile retrieval, attention-MIL marker prediction. Writes OUT/report.md, "
            "led by an overall verdict, with tables and figures."
        ),
        examples=[
            "stalign evaluate --pairs results/pairs --encoder baseline=results/export/baseline "
            "--encoder shuffled=results/export/shuffled --encoder aligned=results/export/aligned "
            "--test-patients mouse2 --out results/evaluation",
            "stalign evaluate --pairs results/pairs --encoder aligned=results/export/aligned "
            "--test-samples C5 C6 --references histogram library_size --out results/eval_c",
        ],
    )
    p.add_argument("--pairs", help="pairs store (the --out of `stalign build-pairs`); required")
    add_deprecated_positional(p, "--pairs", dest="pairs", metavar="PAIRS")
    p.add_argument(
        "--encoder",
        dest="encoders",
        action="append",
        required=True,
        metavar="LABEL=SOURCE",
        help=(
            "encoder to compare; SOURCE is a `stalign export` timm directory or a registry "
            "name (random weights). Repeat it: the first is the baseline, the last the "
            "aligned model"
        ),
    )
    p.add_argument("--out", required=True, help="output directory of the report")
    add_list(
        p,
        "--test-patients",
        metavar="ID",
        help="fixed test patients (default: leave one patient out)",
    )
    add_list(
        p,
        "--test-samples",
        metavar="ID",
        help="fixed test sections (sample_id), instead of --test-patients: a split by section "
        "(weaker than by patient: sections of one tumour are near-replicates)",
    )
    p.add_argument(
        "--split-by",
        choices=("patient", "sample"),
        help="unit of the folds: patient, or sample (section; leave one section out without "
        "--test-samples) (default: sample with --test-samples, else patient)",
    )
    add_list(
        p,
        "--references",
        metavar="NAME",
        help="reference feature sets, or 'none'" + format_default(d["references"]),
    )
    add_list(
        p,
        "--random-encoders",
        dest="random_encoder",
        metavar="NAME",
        help="registry name(s) of the random-weights reference, one row each"
        + format_default(d["random_encoder"]),
    )
    add_deprecated_alias(
        p, "--random-encoder", "--random-encoders", dest="random_encoder", list_values=True
    )
    p.add_argument(
        "--img-size",
        type=int,
        dest="image_size",
        metavar="PX",
        help="input side in px of encoders created by name (default: their config's)",
    )
    add_deprecated_alias(p, "--image-size", "--img-size", dest="image_size", type=int)
    _add_scoring_flags(p, d)
    p.set_defaults(func=_run)


def _add_scoring_flags(p: argparse.ArgumentParser, d: dict) -> None:
    """Add the flags of what is scored and how (seeds, references, probes, MIL, runtime)."""
    from ._args import add_list, format_default

    add_list(p, "--seeds", type=int, metavar="SEED", help="seeds" + format_default(d["seeds"]))
    add_list(
        p,
        "--probes",
        metavar="PROBE",
        help="spot probes: ridge (HEST), ridge_cv, mlp" + format_default(d["probes"]),
    )
    p.add_argument(
        "--protocol",
        choices=("hest_robust", "hest"),
        help="probe feature pipeline: hest (HEST-Benchmark exactly) or hest_robust (also drops "
        "training-constant features and clips test features to their training range)"
        + format_default(d["protocol"]),
    )
    add_list(
        p,
        "--marker-genes",
        metavar="GENE",
        help="marker genes of the MIL tasks (default: the most variable balanced panel genes)",
    )
    p.add_argument(
        "--n-markers",
        type=int,
        nargs=2,
        metavar=("GENES", "PATHWAYS"),
        help="number of MIL marker tasks chosen automatically: genes and pathways"
        + format_default((d["n_marker_genes"], d["n_marker_pathways"])),
    )
    p.add_argument("--mil-epochs", type=int, help="ABMIL epochs" + format_default(d["mil_epochs"]))
    p.add_argument(
        "--batch-size",
        type=int,
        help="patches per forward pass" + format_default(d["batch_size"]),
    )
    p.add_argument(
        "--device",
        help="where encoders run: auto (CUDA if available, bf16 there), cpu, cuda, cuda:1 ..."
        + format_default(d["device"]),
    )
    p.add_argument(
        "--cache",
        metavar="DIR",
        help="feature cache; reuse it across runs on the same store (default: OUT/cache)",
    )
    p.add_argument(
        "--chunk-rows",
        type=int,
        help="patches read and featurised at once (bounds memory)"
        + format_default(d["chunk_rows"]),
    )
    p.add_argument(
        "--shard",
        metavar="I/N",
        help="only fill the feature cache for samples I, I+N, ... and stop (array jobs); "
        "then run evaluate once without --shard to score",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="cap BLAS/torch threads; 1 is fastest on small shared CPU machines (default: no cap)",
    )
    p.add_argument(
        "--allow-patient-overlap",
        action="store_true",
        help="evaluate even when an export was trained or validated on a test patient "
        "(split by section: a test section); refused by default",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


#: argparse dest → EvaluationSpec field, for flags given as they are
_SAME = (
    "test_patients",
    "test_samples",
    "split_by",
    "random_encoder",
    "image_size",
    "seeds",
    "probes",
    "protocol",
    "marker_genes",
    "mil_epochs",
    "batch_size",
    "device",
    "chunk_rows",
)


def _options(args: argparse.Namespace) -> dict:
    """Return the EvaluationSpec keywords the command line set (others keep defaults)."""
    options = {k: getattr(args, k) for k in _SAME if getattr(args, k) is not None}
    if args.references is not None:
        options["references"] = [] if args.references == ["none"] else args.references
    if args.n_markers is not None:
        options["n_marker_genes"], options["n_marker_pathways"] = args.n_markers
    if args.cache is not None:
        options["cache_dir"] = args.cache
    options["progress"] = not args.no_progress
    if args.allow_patient_overlap:
        options["allow_patient_overlap"] = True
    return options


def _run(args: argparse.Namespace) -> int:
    from ..bench import EvaluationSpec, embed_features, evaluate
    from ._args import take_positional

    take_positional(args, "stalign evaluate", "--pairs", dest="pairs")
    options = _options(args)
    spec = EvaluationSpec(pairs_dir=args.pairs, encoders=args.encoders, out=args.out, **options)
    if args.shard:
        from ..pairs import PairsDataset, parse_shard

        cache = embed_features(spec, PairsDataset(args.pairs), shard=parse_shard(args.shard))
        print(f"shard {args.shard}: features cached in {cache.root}")
        return 0
    _init_distributed()
    res = evaluate(args.pairs, args.encoders, out=args.out, threads=args.threads, **options)
    if res is not None:  # None on the ranks > 0 of a torchrun launch
        print(f"report: {res.report}")
    return 0


def _init_distributed() -> None:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1) join the process group: ranks share the embedding."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
