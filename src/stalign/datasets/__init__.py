"""Example data shipped with stalign, in scanpy's ``datasets`` style.

The files live in ``data/examples/`` and ``data/manifests/examples.csv`` of the
repository and are copied into the wheel as ``stalign/datasets/_data/``, so an
installed package finds them without a checkout::

    from stalign import datasets

    datasets.example_manifest()          # Path of the MOB manifest (4 sections, 2 mice)
    datasets.example_manifest("her2st")  # 5 sections of one human breast tumour
    adata = datasets.mob_section("MOB1")  # AnnData via stalign.io.read_legacy_st
    pairs = datasets.mob_example_pairs(sections=["MOB1"], max_pairs=48)
"""

from ._mob import mob_example_pairs, mob_patients, mob_section
from ._paths import data_dir, example_manifest, examples_dir, her2st_dir, mob_dir

__all__ = [
    "data_dir",
    "example_manifest",
    "examples_dir",
    "her2st_dir",
    "mob_dir",
    "mob_example_pairs",
    "mob_patients",
    "mob_section",
]
