"""One source of defaults for a pairs build: `PairsParams` holds them; `build_pairs` takes
the object plus keyword overrides; every ``stalign build-pairs`` flag is unset unless given
and its help shows the dataclass's (or build_pairs') default."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from pathlib import Path

import pytest

from stalign.cli import build_parser, main
from stalign.cli._args import format_default
from stalign.pairs import PairsParams, build_pairs, merge_pairs, read_index

FIELDS = {f.name: f.default for f in dataclasses.fields(PairsParams)}
HEADER = "sample_id,patient_id,organ,species,platform,path,image,mpp,source,license\n"


def _subcommand(name: str) -> argparse.ArgumentParser:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise LookupError(name)


def test_build_pairs_declares_no_parameter_default_of_its_own():
    signature = inspect.signature(build_pairs).parameters
    assert not set(signature) & set(FIELDS), "a PairsParams field is also a build_pairs keyword"
    assert signature["overrides"].kind is inspect.Parameter.VAR_KEYWORD


def test_overrides_are_converted_as_the_keywords_always_were():
    p = PairsParams().with_overrides(mpp=4, size_px=64.0, use_in_tissue=0, rarefy_depth=None)
    assert (p.mpp, p.size_px, p.use_in_tissue, p.rarefy_depth) == (4.0, 64, False, None)
    assert type(p.mpp) is float and type(p.size_px) is int
    assert p.fingerprint() == PairsParams(mpp=4.0, size_px=64, use_in_tissue=False).fingerprint()
    assert PairsParams(mpp=4).with_overrides().to_dict()["mpp"] == 4.0  # the object's own too
    base = PairsParams(size_px=32, gene_sets=None)
    assert base.with_overrides(jpeg=True) == dataclasses.replace(base, jpeg=True)
    with pytest.raises(TypeError, match=r"unknown pairs parameter 'sizepx'"):
        base.with_overrides(sizepx=32)
    with pytest.raises(ValueError, match=r"jpeg_quality must be in 1\.\.100"):
        base.with_overrides(jpeg_quality=0)


def test_unknown_keywords_and_params_are_refused_before_any_work(tmp_path):
    out = tmp_path / "pairs"
    with pytest.raises(TypeError, match="'bogus'"):
        build_pairs(tmp_path / "no_manifest.csv", out, bogus=1)
    with pytest.raises(TypeError, match="params must be a PairsParams"):
        build_pairs(tmp_path / "no_manifest.csv", out, {"mpp": 4.4})
    assert not out.exists()


def test_object_and_keywords_give_one_build(tmp_path, mob_dir):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        HEADER + f"MOB1,mouse1,olfactory_bulb,mus_musculus,legacy_st,{mob_dir / 'MOB1.tsv.gz'}"
        ",,,test,MIT\n"
    )
    out = tmp_path / "pairs"
    params = PairsParams(mpp=9.4, size_px=32, gene_sets=None)
    first = build_pairs(manifest, out, params, progress=False, report=False)
    assert list(first.table["status"]) == ["done"]
    again = build_pairs(manifest, out, mpp=9.4, size_px=32, gene_sets=None, progress=False)
    assert list(again.table["status"]) == ["skipped"]  # same fingerprint: resumed
    index = read_index(merge_pairs(out).parent)
    assert index["params"]["mpp"] == 9.4 and index["params"]["size_px"] == 32


def test_every_build_pairs_flag_is_unset_unless_given():
    from stalign.cli._pairs import _BUILD_FLAGS

    args = build_parser().parse_args(["build-pairs", "m.csv", "--out", "o"])
    assert {k: getattr(args, k) for k in _BUILD_FLAGS} == dict.fromkeys(_BUILD_FLAGS)
    signature = {
        k: p.default
        for k, p in inspect.signature(build_pairs).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    assert set(_BUILD_FLAGS) <= set(FIELDS) | set(signature)  # each goes under its own name
    helps = {a.dest: a.help for a in _subcommand("build-pairs")._actions}
    for dest, spec in _BUILD_FLAGS.items():
        default = FIELDS[dest] if dest in FIELDS else signature[dest]
        if spec.get("action") == "store_const":
            default = default == spec["const"]
        assert helps[dest].endswith(format_default(default, spec.get("none"))), dest


def test_the_cli_passes_only_the_flags_given(monkeypatch, tmp_path, capsys):
    import pandas as pd

    import stalign.pairs
    from stalign.pairs import BuildResult

    seen: list[dict] = []

    def fake(manifest, out, **kwargs):
        seen.append(kwargs)
        cols = ["sample_id", "patient_id", "status", "n_spots", "n_pairs", "seconds", "reason"]
        table = pd.DataFrame(columns=cols)
        return BuildResult(out=Path(out), table=table, index_path=Path(out) / "index.json")

    monkeypatch.setattr(stalign.pairs, "build_pairs", fake)
    base = ["build-pairs", "m.csv", "--out", str(tmp_path)]
    assert main(base) == 0
    assert main([*base, "--mpp", "4.4", "--gene-sets", "None", "--ignore-in-tissue"]) == 0
    assert main([*base, "--jpeg", "--no-resume", "--no-progress", "--workers", "2"]) == 0
    assert seen == [
        {},
        {"mpp": 4.4, "gene_sets": None, "use_in_tissue": False},
        {"jpeg": True, "resume": False, "progress": False, "workers": 2},
    ]
    merged: list[dict] = []
    monkeypatch.setattr(
        stalign.pairs, "merge_pairs", lambda out, **kw: merged.append(kw) or Path(out) / "i.json"
    )
    assert main(["merge-pairs", "--out", str(tmp_path)]) == 0
    assert main(["merge-pairs", "--out", str(tmp_path), "--verify", "--allow-missing"]) == 0
    assert merged == [{}, {"verify": True, "allow_missing": True}]
    capsys.readouterr()
