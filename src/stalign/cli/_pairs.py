"""``stalign build-pairs`` and ``stalign merge-pairs`` (thin wrappers of stalign.pairs)."""

from __future__ import annotations

import argparse


def _build(args: argparse.Namespace) -> int:
    from ..pairs import build_pairs

    result = build_pairs(
        args.manifest,
        args.out,
        mpp=args.mpp,
        size_px=args.size_px,
        tissue_threshold=args.tissue_threshold,
        tissue_qc=args.tissue_qc,
        min_mask_coverage=args.min_mask_coverage,
        gene_sets=None if args.gene_sets.lower() == "none" else args.gene_sets,
        method=args.method,
        ties=args.ties,
        min_genes=args.min_genes,
        gene_panel=args.gene_panel,
        use_in_tissue=not args.ignore_in_tissue,
        jpeg=args.jpeg,
        jpeg_quality=args.jpeg_quality,
        workers=args.workers,
        shard=args.shard,
        resume=args.resume,
        verify=args.verify,
        keep_going=args.keep_going,
        progress=not args.no_progress,
    )
    print(result.summary())
    if result.index_path is not None:
        print(f"index: {result.index_path}\nQC report: {result.out / 'qc' / 'report.md'}")
    elif args.shard:
        print(f"shard {args.shard} done; run `stalign merge-pairs {args.out}` after all shards")
    return 1 if result.failures else 0


def _merge(args: argparse.Namespace) -> int:
    from ..pairs import merge_pairs

    path = merge_pairs(args.out, allow_missing=args.allow_missing, verify=args.verify)
    print(f"index: {path}\nQC report: {path.parent / 'qc' / 'report.md'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``build-pairs`` and ``merge-pairs`` to ``subparsers``."""
    p = subparsers.add_parser(
        "build-pairs",
        help="curate (H&E patch, expression, pathway) pairs from a manifest",
        description=(
            "Build a sharded, resumable pairs store from a sample manifest (one shard per "
            "sample, written atomically) plus index.json and a QC report. Calls "
            "stalign.pairs.build_pairs."
        ),
    )
    p.add_argument("manifest", help="manifest CSV (see data/manifests/README.md)")
    p.add_argument("--out", required=True, help="output directory of the pairs store")
    p.add_argument("--mpp", type=float, default=0.5, help="patch µm per pixel (default 0.5)")
    p.add_argument("--size-px", type=int, default=224, help="patch side in pixels (default 224)")
    p.add_argument(
        "--tissue-threshold",
        type=float,
        default=0.5,
        help="minimum tissue fraction of a patch, 0..1, where the platform's in-tissue "
        "call is not used (default 0.5)",
    )
    p.add_argument(
        "--tissue-qc",
        choices=("mask", "pixels"),
        default="mask",
        help="tissue fraction of a patch: its coverage by the slide's tissue mask, or its "
        "share of stained pixels (the older rule; fat counts as background) (default mask)",
    )
    p.add_argument(
        "--min-mask-coverage",
        type=float,
        default=0.1,
        help="minimum tissue-mask coverage of a spot the platform calls in tissue, 0..1 "
        "(default 0.1)",
    )
    p.add_argument(
        "--gene-sets",
        default="hallmark",
        help="gene sets for pathway scores: a bundled name or a GMT path; 'none' to skip "
        "(default hallmark)",
    )
    p.add_argument(
        "--method",
        default="ssgsea",
        help="pathway scoring method of stalign.tl.score_pathways (default ssgsea)",
    )
    p.add_argument(
        "--ties",
        choices=("average", "gseapy"),
        default="average",
        help="ssGSEA tie mode: 'average' ranks tied genes by their mean rank, so scores do "
        "not depend on the gene order; 'gseapy' walks them in matrix order like gseapy "
        "(default average)",
    )
    p.add_argument(
        "--min-genes", type=int, default=5, help="minimum genes of a set in the panel (default 5)"
    )
    p.add_argument(
        "--gene-panel",
        default="all",
        help="genes stored: 'all', 'hvg:N' (N most variable per sample) or a file with one "
        "gene per line (default all)",
    )
    p.add_argument(
        "--ignore-in-tissue",
        action="store_true",
        help="keep spots the platform calls outside tissue (QC on the image only)",
    )
    p.add_argument("--jpeg", action="store_true", help="store patches as JPEG")
    p.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality 1..100 (default 90)")
    p.add_argument(
        "--workers", type=int, default=1, help="samples processed in parallel (default 1)"
    )
    p.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="build only job I of N (0 <= I < N), e.g. "
        "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT; then run merge-pairs",
    )
    p.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="skip samples whose shard is finished with the same parameters and inputs "
        "(default on; --no-resume rebuilds)",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="re-hash every finished shard's files before skipping it (slow on big stores; "
        "by default a file is re-hashed only if its size or mtime changed)",
    )
    p.add_argument(
        "--keep-going",
        action="store_true",
        help="report a failing sample and finish the others (exit code 1 if any failed)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=_build)

    m = subparsers.add_parser(
        "merge-pairs",
        help="build index.json and the QC report from finished shards",
        description="Merge the shards of a (sharded) build-pairs run: writes OUT/index.json "
        "and OUT/qc/report.md. Calls stalign.pairs.merge_pairs.",
    )
    m.add_argument("out", help="the pairs store (the --out of build-pairs)")
    m.add_argument(
        "--allow-missing",
        action="store_true",
        help="write the index even if some samples have no finished shard yet",
    )
    m.add_argument(
        "--verify",
        action="store_true",
        help="recompute every file's SHA-256 and every sample's input identity; stale "
        "shards are reported (build-pairs rebuilds them)",
    )
    m.set_defaults(func=_merge)
