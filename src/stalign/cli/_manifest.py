"""``stalign manifest --from-hest DIR``: a sample manifest from a HEST-1k folder."""

from __future__ import annotations

import argparse


def _manifest(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from ..io import hest_manifest
    from ..pairs import read_manifest

    out = Path(args.out)
    tmp = out.with_name(f".tmp-{out.name}")  # same folder: the relative paths hold
    try:
        frame = hest_manifest(
            args.from_hest,
            organ=args.organ,
            species=args.species,
            technology=args.technology,
            metadata=args.metadata,
            out=tmp,
        )
        samples = read_manifest(tmp)  # the same checks as build-pairs, before it is kept
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    patients = len({s.patient_id for s in samples})
    licences = sorted(set(frame["license"].replace("", "unknown")))
    print(
        f"{args.out}: {len(samples)} samples, {patients} patients, "
        f"licence(s): {', '.join(licences)}"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``manifest`` to ``subparsers``."""
    from ._args import add_command, add_list

    p = add_command(
        subparsers,
        "manifest",
        summary="write a sample manifest from a HEST-1k folder",
        description=(
            "Write a build-pairs manifest (one row per sample: ids, patient, organ, "
            "species, platform, path, µm/px, source, licence) from a HEST-1k folder's "
            "metadata table / per-sample JSON. Calls stalign.io.hest_manifest."
        ),
        examples=[
            "stalign manifest --from-hest hest_data --out breast.csv --organ Breast "
            "--technology Visium"
        ],
    )
    p.add_argument(
        "--from-hest", required=True, metavar="DIR", help="HEST-1k folder (with st/, metadata/)"
    )
    p.add_argument("--out", required=True, help="manifest CSV to write")
    add_list(p, "--organ", help="keep these organs (HEST 'organ', any case) (default: all)")
    add_list(p, "--species", help="keep these species, e.g. 'Homo sapiens' (default: all)")
    add_list(
        p, "--technology", help="keep these st_technology values, e.g. Visium Xenium (default: all)"
    )
    p.add_argument(
        "--metadata", help="HEST metadata CSV when not in DIR (default: DIR/HEST_v*.csv)"
    )
    p.set_defaults(func=_manifest)
