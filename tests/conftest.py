"""Shared fixtures: paths to the bundled and the shared real data."""

from __future__ import annotations

import os
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


#: set to 1 (e.g. in CI) to fail, not skip, the tests that need ../shared/data
REQUIRE_SHARED_DATA_ENV = "STALIGN_REQUIRE_SHARED_DATA"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository.

    When it is absent the test is skipped, or fails with ``STALIGN_REQUIRE_SHARED_DATA=1``.
    Every test using this fixture (directly or through another fixture) carries the
    ``shared_data`` marker (`pytest_collection_modifyitems`), so ``-m shared_data`` lists
    them and ``-m "not shared_data"`` leaves them out.
    """
    if not SHARED_DATA.is_dir():
        msg = f"{SHARED_DATA} is not present beside the repository"
        if os.environ.get(REQUIRE_SHARED_DATA_ENV) == "1":
            pytest.fail(f"{msg} ({REQUIRE_SHARED_DATA_ENV}=1)")
        pytest.skip(msg)
    return SHARED_DATA


def pytest_collection_modifyitems(config, items) -> None:
    """Mark every test that needs the ``shared_data`` fixture with ``shared_data``."""
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.shared_data)


@pytest.fixture(scope="session")
def _mob_adata_cached():
    from stalign.io import read_legacy_st

    return read_legacy_st(EXAMPLES / "mob" / "MOB1")


@pytest.fixture
def mob_adata(_mob_adata_cached):
    """MOB1 read with ``stalign.io.read_legacy_st`` (a fresh copy per test; read once)."""
    return _mob_adata_cached.copy()
