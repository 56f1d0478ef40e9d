"""``stalign evaluate``: baseline vs aligned encoders on a pairs store → markdown report."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``evaluate`` to ``subparsers``."""
    p = subparsers.add_parser(
        "evaluate",
        help="compare encoders (baseline vs aligned export) on a pairs store; write a report",
        description=(
            "Score encoders and reference features (colour histogram, 8x8 pixels, squidpy "
            "features, library size, a random-weights encoder) on the same pairs store: HEST "
            "ridge gene and pathway prediction, scored plain and net of sequencing depth, "
            "image->profile retrieval, attention-MIL marker prediction. Writes OUT/report.md, "
            "led by an overall verdict, with tables and figures."
        ),
    )
    p.add_argument("pairs", help="pairs store (the --out of `stalign build-pairs`)")
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
    p.add_argument(
        "--test-patients",
        nargs="+",
        default=None,
        metavar="ID",
        help="fixed test patients (default: leave one patient out)",
    )
    p.add_argument(
        "--test-samples",
        nargs="+",
        default=None,
        metavar="ID",
        help="fixed test sections (sample_id), instead of --test-patients: a split by section "
        "(weaker than by patient: sections of one tumour are near-replicates)",
    )
    p.add_argument(
        "--split-by",
        choices=("patient", "sample"),
        default=None,
        help="unit of the folds: patient, or sample (section; leave one section out without "
        "--test-samples) (default: sample with --test-samples, else patient)",
    )
    p.add_argument(
        "--references",
        default="histogram,pixels,squidpy,library_size,random",
        help="comma-separated reference features (default: "
        "histogram,pixels,squidpy,library_size,random; 'none' for none)",
    )
    p.add_argument(
        "--random-encoder",
        default="vit_tiny_patch16_224",
        help="registry name(s) of the random-weights reference, comma-separated, one row "
        "each (default vit_tiny_patch16_224)",
    )
    p.add_argument("--image-size", type=int, default=None, help="encoder input side in px")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    p.add_argument(
        "--probes",
        default="ridge",
        help="comma-separated spot probes: ridge (HEST), ridge_cv, mlp (default ridge)",
    )
    p.add_argument(
        "--protocol",
        choices=("hest_robust", "hest"),
        default="hest_robust",
        help="probe feature pipeline: hest (HEST-Benchmark exactly) or hest_robust (also drops "
        "training-constant features and clips test features to their training range) "
        "(default hest_robust)",
    )
    p.add_argument("--marker-genes", nargs="+", default=None, help="marker genes for the MIL")
    p.add_argument(
        "--n-markers",
        type=int,
        nargs=2,
        default=[2, 2],
        metavar=("GENES", "PATHWAYS"),
        help="number of default MIL marker tasks: genes and pathways (default 2 2)",
    )
    p.add_argument("--mil-epochs", type=int, default=30, help="ABMIL epochs (default 30)")
    p.add_argument("--batch-size", type=int, default=64, help="patches per forward pass")
    p.add_argument(
        "--device",
        default="auto",
        help="where encoders run: auto (CUDA if available, bf16 there), cpu, cuda, cuda:1 ...",
    )
    p.add_argument(
        "--cache",
        default=None,
        metavar="DIR",
        help="feature cache (default OUT/cache); reuse it across runs on the same store",
    )
    p.add_argument(
        "--chunk-rows",
        type=int,
        default=1024,
        help="patches read and featurised at once (bounds memory; default 1024)",
    )
    p.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="only fill the feature cache for samples I, I+N, ... and stop (array jobs); "
        "then run evaluate once without --shard to score",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="cap BLAS/torch threads (1 is fastest on small shared CPU machines)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from ..bench import EvaluationSpec, embed_features, evaluate

    refs = [] if args.references.strip() == "none" else args.references.split(",")
    options = dict(
        test_patients=args.test_patients,
        test_samples=args.test_samples,
        split_by=args.split_by,
        references=[r.strip() for r in refs if r.strip()],
        random_encoder=[n.strip() for n in args.random_encoder.split(",") if n.strip()],
        image_size=args.image_size,
        seeds=args.seeds,
        probes=[q.strip() for q in args.probes.split(",") if q.strip()],
        protocol=args.protocol,
        marker_genes=args.marker_genes,
        n_marker_genes=args.n_markers[0],
        n_marker_pathways=args.n_markers[1],
        mil_epochs=args.mil_epochs,
        batch_size=args.batch_size,
        device=args.device,
        cache_dir=args.cache,
        chunk_rows=args.chunk_rows,
        progress=not args.no_progress,
    )
    if args.shard:
        from ..pairs import PairsDataset, parse_shard

        spec = EvaluationSpec(pairs_dir=args.pairs, encoders=args.encoders, out=args.out, **options)
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
