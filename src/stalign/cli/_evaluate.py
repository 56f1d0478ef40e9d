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
            "features, a random-weights encoder) on the same pairs store: HEST ridge gene "
            "and pathway prediction, image->profile retrieval, attention-MIL marker "
            "prediction. Writes OUT/report.md with tables and figures."
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
        "--references",
        default="histogram,pixels,squidpy,random",
        help="comma-separated reference features (default: histogram,pixels,squidpy,random; "
        "'none' for none)",
    )
    p.add_argument(
        "--random-encoder",
        default="vit_tiny_patch16_224",
        help="registry name of the random-weights reference (default vit_tiny_patch16_224)",
    )
    p.add_argument("--image-size", type=int, default=None, help="encoder input side in px")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    p.add_argument(
        "--probes",
        default="ridge",
        help="comma-separated spot probes: ridge (HEST), ridge_cv, mlp (default ridge)",
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
        "--threads",
        type=int,
        default=None,
        help="cap BLAS/torch threads (1 is fastest on small shared CPU machines)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from ..bench import evaluate

    refs = [] if args.references.strip() == "none" else args.references.split(",")
    res = evaluate(
        args.pairs,
        args.encoders,
        out=args.out,
        test_patients=args.test_patients,
        references=[r.strip() for r in refs if r.strip()],
        random_encoder=args.random_encoder,
        image_size=args.image_size,
        seeds=args.seeds,
        probes=[q.strip() for q in args.probes.split(",") if q.strip()],
        marker_genes=args.marker_genes,
        n_marker_genes=args.n_markers[0],
        n_marker_pathways=args.n_markers[1],
        mil_epochs=args.mil_epochs,
        batch_size=args.batch_size,
        threads=args.threads,
        progress=not args.no_progress,
    )
    print(f"report: {res.report}")
    return 0
