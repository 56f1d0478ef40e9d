"""Shared fixtures: paths to the bundled and the shared real data."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "data" / "examples"
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    """``data/examples`` inside the repository (always present)."""
    return EXAMPLES


@pytest.fixture(scope="session")
def mob_dir() -> Path:
    """The bundled MOB legacy-ST sections (``data/examples/mob``)."""
    return EXAMPLES / "mob"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present beside the repository")
    return SHARED_DATA
