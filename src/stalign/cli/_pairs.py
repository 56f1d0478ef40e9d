"""``stalign build-pairs`` and ``stalign merge-pairs`` (thin wrappers of stalign.pairs)."""

from __future__ import annotations

import argparse

#: build-pairs flags whose value goes to stalign.pairs.build_pairs under the same name;
#: unset (None) ones keep the library's default, the one --help shows
_BUILD_KEYWORDS = (
    "mpp",
    "size_px",
    "tissue_threshold",
    "tissue_qc",
    "min_mask_coverage",
    "method",
    "ties",
    "rarefy_depth",
    "rarefy_draws",
    "random_state",
    "min_genes",
    "gene_panel",
    "jpeg_quality",
    "workers",
    "shard",
    "resume",
)


def _build(args: argparse.Namespace) -> int:
    from ..pairs import build_pairs

    kwargs = {k: getattr(args, k) for k in _BUILD_KEYWORDS if getattr(args, k) is not None}
    if args.gene_sets is not None:
        kwargs["gene_sets"] = None if args.gene_sets.lower() == "none" else args.gene_sets
    result = build_pairs(
        args.manifest,
        args.out,
        use_in_tissue=not args.ignore_in_tissue,
        jpeg=args.jpeg,
        verify=args.verify,
        keep_going=args.keep_going,
        progress=not args.no_progress,
        **kwargs,
    )
    print(result.summary())
    if result.index_path is not None:
        print(f"index: {result.index_path}\nQC report: {result.out / 'qc' / 'report.md'}")
    elif args.shard:
        print(
            f"shard {args.shard} done; run `stalign merge-pairs --out {args.out}` after all shards"
        )
    return 1 if result.failures else 0


def _merge(args: argparse.Namespace) -> int:
    from ..pairs import merge_pairs
    from ._args import take_positional

    take_positional(args, "stalign merge-pairs", "--out", dest="out")
    path = merge_pairs(args.out, allow_missing=args.allow_missing, verify=args.verify)
    print(f"index: {path}\nQC report: {path.parent / 'qc' / 'report.md'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``build-pairs`` and ``merge-pairs`` to ``subparsers``."""
    _register_build(subparsers)
    _register_merge(subparsers)


def _register_build(subparsers: argparse._SubParsersAction) -> None:
    from ._args import add_command, format_default, settings_defaults, signature_defaults

    d = {
        **signature_defaults("pairs._build", "build_pairs"),
        **settings_defaults("pairs._params", "PairsParams"),
    }
    p = add_command(
        subparsers,
        "build-pairs",
        summary="curate (H&E patch, expression, pathway) pairs from a manifest",
        description=(
            "Build a sharded, resumable pairs store from a sample manifest (one shard per "
            "sample, written atomically) plus index.json and a QC report. The manifest's "
            "columns are in the documentation (Reference → Manifest schema); "
            "stalign.datasets.example_manifest() gives the bundled one. Calls "
            "stalign.pairs.build_pairs."
        ),
        examples=[
            "stalign build-pairs data/manifests/examples.csv --out results/pairs "
            "--mpp 4.4 --size-px 64",
            "stalign build-pairs cohort.csv --out pairs --shard "
            "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT   # then merge-pairs",
        ],
    )
    p.add_argument("manifest", help="manifest CSV (one row per sample)")
    p.add_argument("--out", required=True, help="output directory of the pairs store")
    p.add_argument("--mpp", type=float, help="patch µm per pixel" + format_default(d["mpp"]))
    p.add_argument(
        "--size-px", type=int, help="patch side in pixels" + format_default(d["size_px"])
    )
    p.add_argument(
        "--tissue-threshold",
        type=float,
        help="minimum tissue fraction of a patch, 0..1, where the platform's in-tissue "
        "call is not used" + format_default(d["tissue_threshold"]),
    )
    p.add_argument(
        "--tissue-qc",
        choices=("mask", "pixels"),
        help="tissue fraction of a patch: its coverage by the slide's tissue mask, or its "
        "share of stained pixels (the older rule; fat counts as background)"
        + format_default(d["tissue_qc"]),
    )
    p.add_argument(
        "--min-mask-coverage",
        type=float,
        help="minimum tissue-mask coverage of a spot the platform calls in tissue, 0..1"
        + format_default(d["min_mask_coverage"]),
    )
    p.add_argument(
        "--gene-sets",
        help="gene sets for pathway scores: hallmark, reactome, wikipathways, a GMT path, "
        "'enrichr:NAME' (downloads it) or 'none'" + format_default(d["gene_sets"]),
    )
    p.add_argument(
        "--method",
        help="pathway scoring method: ssgsea, aucell, zscore, ulm or score_genes (scanpy's)"
        + format_default(d["method"]),
    )
    p.add_argument(
        "--ties",
        choices=("average", "gseapy"),
        help="ssGSEA tie mode: 'average' ranks tied genes by their mean rank, so scores do "
        "not depend on the gene order; 'gseapy' walks them in matrix order like gseapy"
        + format_default(d["ties"]),
    )
    _add_depth_flags(p, d)
    p.add_argument(
        "--min-genes",
        type=int,
        help="minimum genes of a set in the panel" + format_default(d["min_genes"]),
    )
    p.add_argument(
        "--gene-panel",
        help="genes stored: 'all', 'hvg:N' (N most variable per sample) or a file with one "
        "gene per line" + format_default(d["gene_panel"]),
    )
    p.add_argument(
        "--ignore-in-tissue",
        action="store_true",
        help="keep spots the platform calls outside tissue (QC on the image only)",
    )
    p.add_argument("--jpeg", action="store_true", help="store patches as JPEG")
    p.add_argument(
        "--jpeg-quality",
        type=int,
        help="JPEG quality 1..100" + format_default(d["jpeg_quality"]),
    )
    p.add_argument(
        "--workers",
        type=int,
        help="samples processed in parallel" + format_default(d["workers"]),
    )
    p.add_argument(
        "--shard",
        metavar="I/N",
        help="build only job I of N (0 <= I < N), e.g. "
        "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT; then run merge-pairs "
        "(default: every sample)",
    )
    p.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        help="skip samples whose shard is finished with the same parameters and inputs; "
        "--no-resume rebuilds" + format_default(d["resume"]),
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


def _add_depth_flags(p: argparse.ArgumentParser, d: dict) -> None:
    """``--rarefy-depth``, ``--rarefy-draws``, ``--random-state`` (``d``: the defaults)."""
    from ._args import format_default

    p.add_argument(
        "--rarefy-depth",
        type=int,
        metavar="N",
        help="score pathways on counts rarefied to N per spot (drawn without replacement, "
        "seeded per spot, genes in name order), so the targets cannot follow sequencing "
        "depth through the counts; spots with fewer counts are dropped and counted in the "
        "QC report" + format_default(d["rarefy_depth"], none="no rarefaction"),
    )
    p.add_argument(
        "--rarefy-draws",
        type=int,
        help="rarefy this many times and average the scores; the QC report shows the "
        "agreement of two draws" + format_default(d["rarefy_draws"]),
    )
    p.add_argument(
        "--random-state",
        type=int,
        help="seed of the pathway scores' random draws (rarefaction, score_genes' control "
        "genes)" + format_default(d["random_state"]),
    )


def _register_merge(subparsers: argparse._SubParsersAction) -> None:
    from ._args import add_command, add_deprecated_positional

    m = add_command(
        subparsers,
        "merge-pairs",
        summary="build index.json and the QC report from finished shards",
        description="Merge the shards of a (sharded) build-pairs run: writes OUT/index.json "
        "and OUT/qc/report.md. Calls stalign.pairs.merge_pairs.",
        examples=["stalign merge-pairs --out results/pairs"],
    )
    m.add_argument("--out", help="the pairs store (the --out of build-pairs); required")
    add_deprecated_positional(m, "--out", dest="out", metavar="OUT")
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
