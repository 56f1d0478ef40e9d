"""stalign.datasets: the bundled example data, found in the package or the checkout."""

from __future__ import annotations

import pytest

from stalign import datasets
from stalign.datasets import _paths


def test_paths_point_at_the_bundled_files():
    assert datasets.example_manifest().is_file()
    assert (datasets.mob_dir() / "MOB1.tsv.gz").is_file()
    assert datasets.examples_dir() == datasets.mob_dir().parent


def test_patients_come_from_the_manifest():
    assert datasets.mob_patients() == {
        "MOB1": "mouse1",
        "MOB2": "mouse1",
        "MOB3": "mouse2",
        "MOB4": "mouse2",
    }


def test_mob_section_reads_one_section_and_names_the_choices():
    adata = datasets.mob_section("MOB2")
    assert adata.n_obs > 1000 and adata.uns["stalign"]["platform"] == "legacy_st"
    with pytest.raises(ValueError, match=r"no section 'MOB9'.*'MOB1', 'MOB2'"):
        datasets.mob_section("MOB9")


def test_missing_data_raise_when_read_not_when_located(tmp_path, monkeypatch):
    """A wheel without its data still imports (the CLI names the path as a default)."""
    monkeypatch.setattr(_paths, "PACKAGED_DATA", tmp_path / "pkg")
    monkeypatch.setattr(_paths, "CHECKOUT_DATA", tmp_path / "repo")
    assert datasets.example_manifest() == tmp_path / "pkg" / "manifests" / "examples.csv"
    with pytest.raises(FileNotFoundError, match="example data are missing"):
        datasets.mob_patients()
    with pytest.raises(FileNotFoundError, match="example data are missing"):
        datasets.mob_section("MOB1")
