"""Where the bundled example files are: the installed package first, else the checkout."""

from __future__ import annotations

from pathlib import Path

#: inside an installed wheel (``[tool.hatch.build.targets.wheel.force-include]``)
PACKAGED_DATA = Path(__file__).resolve().parent / "_data"
#: in a source checkout / editable install: ``<repo>/data`` (src/stalign/datasets → repo)
CHECKOUT_DATA = Path(__file__).resolve().parents[3] / "data"


def data_dir() -> Path:
    """Return the folder holding ``examples/`` and ``manifests/examples.csv``.

    The copy inside the installed package is used when present; an editable install
    or a source checkout falls back to the repository's ``data/`` folder. When neither
    holds the data, the package's location is returned (never an error here: the CLI
    names the path as a default); the functions that read the files raise then.
    """
    for root in (PACKAGED_DATA, CHECKOUT_DATA):
        if (root / "manifests" / "examples.csv").is_file():
            return root
    return PACKAGED_DATA


def require(path: Path) -> Path:
    """Return ``path`` if it exists, else raise a `FileNotFoundError` that says why."""
    if not path.exists():
        msg = (
            f"stalign's example data are missing: {str(path)!r} does not exist (looked in "
            f"{str(PACKAGED_DATA)!r}, the installed package, and {str(CHECKOUT_DATA)!r}, a "
            "source checkout); reinstall stalign from a wheel built by hatchling, which "
            "includes them"
        )
        raise FileNotFoundError(msg)
    return path


def examples_dir() -> Path:
    """Return the folder of bundled samples (``mob/``, ``visium_human_heart/``, ...)."""
    return data_dir() / "examples"


def mob_dir() -> Path:
    """Return the folder of the four mouse olfactory bulb sections (legacy ST, MOB1-4)."""
    return examples_dir() / "mob"


#: Manifest file of each bundled example, in ``data/manifests/``.
EXAMPLE_MANIFESTS = {"mob": "examples.csv", "her2st": "her2st_C.csv"}


def example_manifest(example: str = "mob") -> Path:
    """Return the manifest CSV of a bundled example (paths relative to it).

    Parameters
    ----------
    example
        ``"mob"``: the four mouse olfactory bulb sections (2 animals, legacy ST,
        ~4.4 µm/px, 1,000 genes). ``"her2st"``: five sections C2-C6 of one human
        HER2-positive breast tumour (her2st patient C, legacy ST, reduced copy at
        ≈1.38 µm/px, ~15,600 genes).

    Raises
    ------
    ValueError
        An unknown example name.
    """
    if example not in EXAMPLE_MANIFESTS:
        msg = f"example_manifest: expected one of {sorted(EXAMPLE_MANIFESTS)}, got {example!r}"
        raise ValueError(msg)
    return data_dir() / "manifests" / EXAMPLE_MANIFESTS[example]


def her2st_dir() -> Path:
    """Return the folder of the five her2st patient C sections (legacy ST, C2-C6)."""
    return examples_dir() / "her2st_C"
