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


@pytest.fixture(scope="session")
def _mob_adata_cached():
    from stalign.io import read_legacy_st

    return read_legacy_st(EXAMPLES / "mob" / "MOB1")


@pytest.fixture
def mob_adata(_mob_adata_cached):
    """MOB1 read with ``stalign.io.read_legacy_st`` (a fresh copy per test; read once)."""
    return _mob_adata_cached.copy()
