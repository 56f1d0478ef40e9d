"""``stalign evaluate``: baseline vs aligned encoders on a pairs store → markdown report.

Every settings flag is unset (``None``) unless given and is then an `EvaluationSpec`
field of the same name (``--n-markers`` sets two); the defaults, shown in ``--help``, are
the dataclass's. Under ``torchrun`` the library joins the process group itself.
"""

from __future__ import annotations

import argparse

#: argparse dest → EvaluationSpec field of the same name, passed on when given
_FIELDS = (
    "test_patients",
    "test_samples",
    "split_by",
    "references",
    "random_encoder",
    "image_size",
    "seeds",
    "probes",
    "protocol",
    "marker_genes",
    "mil_epochs",
    "batch_size",
    "device",
    "cache_dir",
    "chunk_rows",
    "threads",
    "allow_patient_overlap",
    "progress",
)


def _defaults() -> dict:
    """EvaluationSpec's defaults, read from its source (no torch import for ``--help``)."""
    from ._args import settings_defaults

    return settings_defaults("bench._spec", "EvaluationSpec")


def _shown(field: str, none: str | None = None) -> str:
    """`` (default: X)`` of EvaluationSpec's ``field``; ``none`` words a ``None`` default."""
    from ._args import format_default

    return format_default(_defaults().get(field), none)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``evaluate`` to ``subparsers``."""
    from ._args import add_command, add_deprecated_alias, add_deprecated_positional, add_list

    p = add_command(
        subparsers,
        "evaluate",
        summary="compare encoders (baseline vs aligned export) on a pairs store; write a report",
        description=(
            "Score encoders and reference features (colour histogram, 8x8 pixels, squidpy "
            "features, library size, a random-weights encoder) on the same pairs store: HEST "
            "ridge gene and pathway prediction, scored plain and net of sequencing depth, "
            "image->profile retrieval, attention-MIL marker prediction. Writes OUT/report.md, "
            "led by an overall verdict, with tables and figures. A default shown below is "
            "EvaluationSpec's. Calls stalign.bench.evaluate (under torchrun, ranks share the "
            "embedding)."
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
        help="fixed test patients" + _shown("test_patients", "leave one patient out"),
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
        "--test-samples)" + _shown("split_by", "sample with --test-samples, else patient"),
    )
    add_list(
        p,
        "--references",
        metavar="NAME",
        help="reference feature sets, or 'none'" + _shown("references"),
    )
    add_list(
        p,
        "--random-encoders",
        dest="random_encoder",
        metavar="NAME",
        help="registry name(s) of the random-weights reference, one row each"
        + _shown("random_encoder"),
    )
    add_deprecated_alias(
        p, "--random-encoder", "--random-encoders", dest="random_encoder", list_values=True
    )
    p.add_argument(
        "--img-size",
        type=int,
        dest="image_size",
        metavar="PX",
        help="input side in px of encoders created by name"
        + _shown("image_size", "their config's"),
    )
    add_deprecated_alias(p, "--image-size", "--img-size", dest="image_size", type=int)
    _add_scoring_flags(p)
    _add_runtime_flags(p)
    p.set_defaults(func=_run)


def _add_scoring_flags(p: argparse.ArgumentParser) -> None:
    """Add the flags of what is scored and how (seeds, probes, MIL)."""
    from ._args import add_list, format_default

    add_list(p, "--seeds", type=int, metavar="SEED", help="seeds" + _shown("seeds"))
    add_list(
        p,
        "--probes",
        metavar="PROBE",
        help="spot probes: ridge (HEST), ridge_cv, mlp" + _shown("probes"),
    )
    p.add_argument(
        "--protocol",
        choices=("hest_robust", "hest"),
        help="probe feature pipeline: hest (HEST-Benchmark exactly) or hest_robust (also drops "
        "training-constant features and clips test features to their training range)"
        + _shown("protocol"),
    )
    add_list(
        p,
        "--marker-genes",
        metavar="GENE",
        help="marker genes of the MIL tasks"
        + _shown("marker_genes", "the most variable balanced panel genes"),
    )
    d = _defaults()
    p.add_argument(
        "--n-markers",
        type=int,
        nargs=2,
        metavar=("GENES", "PATHWAYS"),
        help="number of MIL marker tasks chosen automatically: genes and pathways"
        + format_default((d["n_marker_genes"], d["n_marker_pathways"])),
    )
    p.add_argument("--mil-epochs", type=int, help="ABMIL epochs" + _shown("mil_epochs"))
    p.add_argument(
        "--allow-patient-overlap",
        action="store_true",
        default=None,
        help="evaluate even when an export was trained or validated on a test patient "
        "(split by section: a test section)" + _shown("allow_patient_overlap"),
    )


def _add_runtime_flags(p: argparse.ArgumentParser) -> None:
    """Add the flags of where and how fast it runs (device, cache, shards, threads)."""
    p.add_argument("--batch-size", type=int, help="patches per forward pass" + _shown("batch_size"))
    p.add_argument(
        "--device",
        help="where encoders run: auto (CUDA if available, bf16 there), cpu, cuda, cuda:1 ..."
        + _shown("device"),
    )
    p.add_argument(
        "--cache",
        dest="cache_dir",
        metavar="DIR",
        help="feature cache; reuse it across runs on the same store"
        + _shown("cache_dir", "OUT/cache"),
    )
    p.add_argument(
        "--chunk-rows",
        type=int,
        help="patches read and featurised at once (bounds memory)" + _shown("chunk_rows"),
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
        help="cap BLAS/torch threads; 1 is fastest on small shared CPU machines"
        + _shown("threads", "no cap"),
    )
    p.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=None,
        help="hide the progress bar",
    )


def _options(args: argparse.Namespace) -> dict:
    """Return the EvaluationSpec fields the command line set (the others keep defaults)."""
    options = {k: getattr(args, k) for k in _FIELDS if getattr(args, k) is not None}
    if options.get("references") == ["none"]:
        options["references"] = []
    if args.n_markers is not None:
        options["n_marker_genes"], options["n_marker_pathways"] = args.n_markers
    return options


def _run(args: argparse.Namespace) -> int:
    from ..bench import EvaluationSpec, embed_features, evaluate
    from ._args import take_positional

    take_positional(args, "stalign evaluate", "--pairs", dest="pairs")
    spec = EvaluationSpec(args.pairs, args.encoders, args.out, **_options(args))
    if args.shard:
        from ..pairs import PairsDataset, parse_shard

        cache = embed_features(spec, PairsDataset(args.pairs), shard=parse_shard(args.shard))
        print(f"shard {args.shard}: features cached in {cache.root}")
        return 0
    res = evaluate(spec=spec)
    if res is not None:  # None on the ranks > 0 of a torchrun launch
        print(f"report: {res.report}")
    return 0
