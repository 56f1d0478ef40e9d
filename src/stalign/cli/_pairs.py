"""``stalign build-pairs`` and ``stalign merge-pairs`` (thin wrappers of stalign.pairs)."""

from __future__ import annotations

import argparse
from typing import Any

#: build-pairs flags: dest → argparse keywords (plus ``flag``: the spelling when not
#: ``--<dest>``; ``none``: what an unset default means). Every flag is unset (None) unless
#: given, and only given ones go to stalign.pairs.build_pairs, under their dest: a
#: PairsParams field or a build_pairs keyword, whose default --help shows.
_BUILD_FLAGS: dict[str, dict[str, Any]] = {
    "mpp": {"type": float, "help": "patch µm per pixel"},
    "size_px": {"type": int, "help": "patch side in pixels"},
    "tissue_threshold": {
        "type": float,
        "help": "minimum tissue fraction of a patch, 0..1, where the platform's in-tissue "
        "call is not used",
    },
    "tissue_qc": {
        "choices": ("mask", "pixels"),
        "help": "tissue fraction of a patch: its coverage by the slide's tissue mask, or its "
        "share of stained pixels (the older rule; fat counts as background)",
    },
    "min_mask_coverage": {
        "type": float,
        "help": "minimum tissue-mask coverage of a spot the platform calls in tissue, 0..1",
    },
    "gene_sets": {
        "help": "gene sets for pathway scores: hallmark, reactome, wikipathways, a GMT path, "
        "'enrichr:NAME' (downloads it) or 'none'",
    },
    "method": {
        "help": "pathway scoring method: ssgsea, aucell, zscore, ulm or score_genes (scanpy's)"
    },
    "ties": {
        "choices": ("average", "gseapy"),
        "help": "ssGSEA tie mode: 'average' ranks tied genes by their mean rank, so scores do "
        "not depend on the gene order; 'gseapy' walks them in matrix order like gseapy",
    },
    "rarefy_depth": {
        "type": int,
        "metavar": "N",
        "none": "no rarefaction",
        "help": "score pathways on counts rarefied to N per spot (drawn without replacement, "
        "seeded per spot, genes in name order), so the targets cannot follow sequencing "
        "depth through the counts; spots with fewer counts are dropped and counted in the "
        "QC report",
    },
    "rarefy_draws": {
        "type": int,
        "help": "rarefy this many times and average the scores; the QC report shows the "
        "agreement of two draws",
    },
    "random_state": {
        "type": int,
        "help": "seed of the pathway scores' random draws (rarefaction, score_genes' control "
        "genes)",
    },
    "min_genes": {"type": int, "help": "minimum genes of a set in the panel"},
    "gene_panel": {
        "help": "genes stored: 'all', 'hvg:N' (N most variable per sample) or a file with one "
        "gene per line",
    },
    "use_in_tissue": {
        "flag": "--ignore-in-tissue",
        "action": "store_const",
        "const": False,
        "help": "keep spots the platform calls outside tissue (QC on the image only)",
    },
    "jpeg": {"action": "store_const", "const": True, "help": "store patches as JPEG"},
    "jpeg_quality": {"type": int, "help": "JPEG quality 1..100"},
    "workers": {"type": int, "help": "samples processed in parallel"},
    "shard": {
        "metavar": "I/N",
        "none": "every sample",
        "help": "build only job I of N (0 <= I < N), e.g. "
        "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT; then run merge-pairs",
    },
    "resume": {
        "action": argparse.BooleanOptionalAction,
        "help": "skip samples whose shard is finished with the same parameters and inputs; "
        "--no-resume rebuilds",
    },
    "verify": {
        "action": "store_const",
        "const": True,
        "help": "re-hash every finished shard's files before skipping it (slow on big stores; "
        "otherwise a file is re-hashed only if its size or mtime changed)",
    },
    "keep_going": {
        "action": "store_const",
        "const": True,
        "help": "report a failing sample and finish the others (exit code 1 if any failed)",
    },
    "progress": {
        "flag": "--no-progress",
        "action": "store_const",
        "const": False,
        "help": "hide the progress bars",
    },
}


#: merge-pairs flags (as `_BUILD_FLAGS`): stalign.pairs.merge_pairs keywords
_MERGE_FLAGS: dict[str, dict[str, Any]] = {
    "allow_missing": {
        "action": "store_const",
        "const": True,
        "help": "write the index even if some samples have no finished shard yet",
    },
    "verify": {
        "action": "store_const",
        "const": True,
        "help": "recompute every file's SHA-256 and every sample's input identity; stale "
        "shards are reported (build-pairs rebuilds them)",
    },
}


def _given(args: argparse.Namespace, flags: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Return the flags of ``flags`` that were given (unset ones are None), by dest."""
    return {k: getattr(args, k) for k in flags if getattr(args, k) is not None}


def _add_flags(
    p: argparse.ArgumentParser, flags: dict[str, dict[str, Any]], defaults: dict[str, Any]
) -> None:
    """Add ``flags`` (unset by default) to ``p``; each help ends with its ``defaults`` entry."""
    from ._args import format_default

    for dest, spec in flags.items():
        kw = dict(spec)
        flag = kw.pop("flag", "--" + dest.replace("_", "-"))
        shown = defaults[dest]
        if kw.get("action") == "store_const":  # a switch: on when it sets a non-default
            shown = shown == kw["const"]
        kw["help"] += format_default(shown, kw.pop("none", None))
        p.add_argument(flag, dest=dest, default=None, **kw)


def _build(args: argparse.Namespace) -> int:
    from ..pairs import build_pairs

    kwargs = _given(args, _BUILD_FLAGS)
    if kwargs.get("gene_sets", "").lower() == "none":  # the word for "no pathway scores"
        kwargs["gene_sets"] = None
    result = build_pairs(args.manifest, args.out, **kwargs)
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
    path = merge_pairs(args.out, **_given(args, _MERGE_FLAGS))
    print(f"index: {path}\nQC report: {path.parent / 'qc' / 'report.md'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``build-pairs`` and ``merge-pairs`` to ``subparsers``."""
    _register_build(subparsers)
    _register_merge(subparsers)


def _register_build(subparsers: argparse._SubParsersAction) -> None:
    from ._args import add_command, settings_defaults, signature_defaults

    defaults = {
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
            "stalign.pairs.build_pairs; a default shown below is PairsParams' (or "
            "build_pairs')."
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
    _add_flags(p, _BUILD_FLAGS, defaults)
    p.set_defaults(func=_build)


def _register_merge(subparsers: argparse._SubParsersAction) -> None:
    from ._args import add_command, add_deprecated_positional, signature_defaults

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
    _add_flags(m, _MERGE_FLAGS, signature_defaults("pairs._build", "merge_pairs"))
    m.set_defaults(func=_merge)
