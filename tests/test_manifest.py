"""Manifest schema and validation (stalign.pairs.read_manifest)."""

from __future__ import annotations

import pytest

from stalign.pairs import ManifestError, read_manifest


def test_examples_manifest_is_valid(examples_dir):
    samples = read_manifest(examples_dir.parent / "manifests" / "examples.csv")
    assert [s.sample_id for s in samples] == ["MOB1", "MOB2", "MOB3", "MOB4"]
    assert [s.patient_id for s in samples] == ["mouse1", "mouse1", "mouse2", "mouse2"]
    assert {s.platform for s in samples} == {"legacy_st"}
    for s in samples:  # relative paths resolve against the manifest's folder
        assert s.path.endswith(f"mob/{s.sample_id}.tsv.gz")
        assert s.image.endswith(f"mob/{s.sample_id}.jpg")


def _write(tmp_path, text):
    (tmp_path / "counts.tsv").write_text("x\n")
    (tmp_path / "img.jpg").write_bytes(b"\xff\xd8")
    p = tmp_path / "m.csv"
    p.write_text(text)
    return p


HEADER = "sample_id,patient_id,organ,species,platform,path,image,mpp,source,license\n"


def test_every_bad_row_is_reported_with_its_line(tmp_path):
    text = (
        HEADER
        + "A,p1,brain,mouse,legacy_st,counts.tsv,img.jpg,0.5,,\n"  # line 2: ok
        + "B,p1,brain,mouse,visiumm,counts.tsv,,,,\n"  # 3: unknown platform
        + "A,p2,brain,mouse,legacy_st,counts.tsv,,,,\n"  # 4: duplicate id
        + "# a comment line is skipped\n"  # 5
        + "C,p2,brain,mouse,legacy_st,missing.tsv,,,,\n"  # 6: missing file
        + "D,p2,brain,mouse,legacy_st,counts.tsv,nope.jpg,-1,,\n"  # 7: image + mpp
        + "E,,brain,mouse,legacy_st,counts.tsv,,,,\n"  # 8: empty patient
        + "F,p3,brain,mouse,legacy_st,counts.tsv,,abc,,\n"  # 9: mpp not a number
        + "G,p3,brain,mouse\n"  # 10: wrong field count
    )
    with pytest.raises(ManifestError) as err:
        read_manifest(_write(tmp_path, text))
    lines = [line for line, _ in err.value.problems]
    assert lines == [3, 4, 6, 7, 7, 8, 9, 10]
    msg = str(err.value)
    assert "line 3: unknown platform 'visiumm'" in msg
    assert "line 4: duplicate sample_id 'A' (first used on line 2)" in msg
    assert "line 6: path 'missing.tsv' not found" in msg
    assert "line 7: image 'nope.jpg' not found" in msg
    assert "line 7: mpp '-1' is not a positive number" in msg
    assert "line 8: empty required column 'patient_id'" in msg
    assert "line 9: mpp 'abc'" in msg
    assert "line 10: expected 10 fields, found 4" in msg
    assert isinstance(err.value, ValueError)


def test_header_problems(tmp_path):
    with pytest.raises(ManifestError, match=r"missing required column\(s\) \['platform'\]"):
        read_manifest(_write(tmp_path, "sample_id,patient_id,organ,species,path\n"))
    with pytest.raises(ManifestError, match=r"unknown column\(s\) \['paht'\]"):
        read_manifest(_write(tmp_path, "sample_id,patient_id,organ,species,platform,path,paht\n"))
    with pytest.raises(ManifestError, match="no sample rows"):
        read_manifest(_write(tmp_path, HEADER))
    with pytest.raises(FileNotFoundError, match=r"nothere\.csv"):
        read_manifest(tmp_path / "nothere.csv")


def test_unsafe_sample_id_and_optional_columns(tmp_path):
    text = (
        "sample_id,patient_id,organ,species,platform,path\n"
        "../evil,p,brain,mouse,h5ad,counts.tsv\n"
        "ok-1,p,brain,mouse,H5AD,counts.tsv\n"
    )
    with pytest.raises(ManifestError, match=r"line 2: sample_id .\.\./evil. must match"):
        read_manifest(_write(tmp_path, text))
    (s,) = read_manifest(
        _write(tmp_path, text.replace("../evil,p,brain,mouse,h5ad,counts.tsv\n", ""))
    )
    assert s.platform == "h5ad" and s.image is None and s.mpp is None and s.source == ""


def test_non_utf8_manifest_is_named(tmp_path):
    p = _write(tmp_path, HEADER + "A,p1,brain,mouse,legacy_st,counts.tsv,,,Köln,\n")
    p.write_bytes(p.read_bytes().replace("ö".encode(), "ö".encode("latin-1")))
    with pytest.raises(ManifestError, match=r"(?s)m\.csv.*line 2: not UTF-8"):
        read_manifest(p)


def test_one_data_path_under_two_patients_is_refused(tmp_path):
    (tmp_path / "other.tsv").write_text("x\n")
    (tmp_path / "link.tsv").symlink_to(tmp_path / "counts.tsv")
    text = (
        HEADER
        + "A,p1,brain,mouse,legacy_st,counts.tsv,,,,\n"  # line 2
        + "B,p2,brain,mouse,legacy_st,link.tsv,,,,\n"  # 3: the same file under another patient
        + "C,p1,brain,mouse,legacy_st,./counts.tsv,,,,\n"  # 4: the same data twice
        + "D,p2,brain,mouse,legacy_st,other.tsv,,,,\n"  # 5: fine
    )
    with pytest.raises(ManifestError) as err:
        read_manifest(_write(tmp_path, text))
    assert [line for line, _ in err.value.problems] == [3, 4]
    msg = str(err.value)
    assert "line 3: path 'link.tsv' is the data of sample 'A' (line 2, patient 'p1')" in msg
    assert "line 4: path './counts.tsv' is the data of sample 'A' (line 2" in msg
    # symbolic links keep the name they were given (readers find sidecar files by it)
    text = HEADER + "B,p2,brain,mouse,legacy_st,link.tsv,,,,\n"
    (s,) = read_manifest(_write(tmp_path, text))
    assert s.path == str(tmp_path / "link.tsv")
