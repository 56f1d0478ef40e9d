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


def example_manifest() -> Path:
    """Return the manifest CSV of the bundled MOB sections (paths relative to it)."""
    return data_dir() / "manifests" / "examples.csv"
