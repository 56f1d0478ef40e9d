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
    or a source checkout falls back to the repository's ``data/`` folder.

    Raises
    ------
    FileNotFoundError
        Neither location holds the example manifest (a wheel built without the data).
    """
    for root in (PACKAGED_DATA, CHECKOUT_DATA):
        if (root / "manifests" / "examples.csv").is_file():
            return root
    msg = (
        f"stalign's example data were not found in {str(PACKAGED_DATA)!r} (installed "
        f"package) nor in {str(CHECKOUT_DATA)!r} (source checkout); reinstall stalign "
        "from a wheel built by hatchling, which includes them"
    )
    raise FileNotFoundError(msg)


def examples_dir() -> Path:
    """Return the folder of bundled samples (``mob/``, ``visium_human_heart/``, ...)."""
    return data_dir() / "examples"


def mob_dir() -> Path:
    """Return the folder of the four mouse olfactory bulb sections (legacy ST, MOB1-4)."""
    return examples_dir() / "mob"


def example_manifest() -> Path:
    """Return the manifest CSV of the bundled MOB sections (paths relative to it)."""
    return data_dir() / "manifests" / "examples.csv"
