"""A full disk under every writing command: one line naming the file, exit 1, no crash.

The disk is filled portably with a file-size limit (``RLIMIT_FSIZE``, SIGXFSZ ignored):
every write past the limit fails with ``EFBIG`` like one on a full disk fails with
``ENOSPC``; HDF5, safetensors and torch lose the file name and the cause in their own
ways, and h5py crashed the interpreter (SIGSEGV/SIGBUS) releasing the objects of a file
it failed to write. Issue 21, item 2.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.faults,
    pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE semantics of Linux"),
]

#: runs ``stalign ARGS`` as the program (``main()`` without argv), every file capped
RUNNER = """
import os, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv.pop(1))
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from stalign.cli import main
sys.argv[0] = "stalign"
sys.exit(main())
"""
FAST = {"mpp": 9.4, "size_px": 32, "gene_sets": None, "progress": False}
TINY = ["--encoder", "efficientnet_lite0", "--device", "cpu"]


def _store(folder: Path, mob_dir: Path, **params) -> Path:
    from stalign.pairs import build_pairs

    manifest = folder / "manifest.csv"
    manifest.write_text(
        "sample_id,patient_id,organ,species,platform,path,image,mpp,source,license\n"
        f"MOB1,mouse1,olfactory_bulb,mus_musculus,legacy_st,{mob_dir / 'MOB1.tsv.gz'},,,t,MIT\n"
        f"MOB3,mouse2,olfactory_bulb,mus_musculus,legacy_st,{mob_dir / 'MOB3.tsv.gz'},,,t,MIT\n"
    )
    build_pairs(manifest, folder / "pairs", **{**FAST, **params})
    return folder / "pairs"


@pytest.fixture(scope="module")
def store(tmp_path_factory, mob_dir) -> Path:
    """MOB1 (mouse1) and MOB3 (mouse2), 32 px, with pathway scores (evaluate needs them)."""
    return _store(tmp_path_factory.mktemp("full_disk"), mob_dir, gene_sets="hallmark")


def _full_disk_run(limit: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", RUNNER, str(limit), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def _check_one_line(proc: subprocess.CompletedProcess, command: str, out: Path) -> str:
    """The run ended with exit 1 and one error line naming a file under ``out``."""
    err = proc.stderr
    assert proc.returncode == 1, f"rc {proc.returncode}\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    # (after a progress bar the line may start behind the bar)
    errors = re.findall(rf"stalign {command}: error: [^\r\n]*", err)
    assert len(errors) == 1, err[-3000:]
    line = errors[0]
    assert "File too large" in line and str(out) in line, line
    assert err.rstrip().endswith(line), err[-3000:]  # nothing printed after it
    return line


def test_build_pairs_on_a_full_disk(tmp_path, store):
    manifest = store.parent / "manifest.csv"
    out = tmp_path / "pairs"
    fast = ["--mpp", "9.4", "--size-px", "32", "--gene-sets", "none", "--no-progress"]
    proc = _full_disk_run(100_000, "build-pairs", str(manifest), "--out", str(out), *fast)
    line = _check_one_line(proc, "build-pairs", out)
    assert "sample MOB" in line and ".h5" in line  # the sample and the HDF5 file
    assert not list(out.glob("samples/*/_SUCCESS")) and not list(out.glob("samples/.tmp-*"))


def test_embed_on_a_full_disk(tmp_path, store):
    out = tmp_path / "emb.h5"
    cmd = ["embed", "--pairs", str(store), "--out", str(out), "--image-size", "32", *TINY]
    _check_one_line(_full_disk_run(100_000, *cmd), "embed", tmp_path)
    assert not out.exists() and not list(tmp_path.glob(".emb.h5*"))


def test_train_on_a_full_disk(tmp_path, store):
    out = tmp_path / "run"
    cmd = ["train", "--pairs", str(store), "--out", str(out), "--img-size", "32", *TINY]
    cmd += ["--train-samples", "MOB1", "--val-samples", "MOB3", "--batch-size", "8"]
    line = _check_one_line(_full_disk_run(1_000_000, *cmd, "--max-steps", "1"), "train", out)
    assert ".safetensors" in line or ".pt" in line or ".json" in line, line


@pytest.mark.slow
def test_evaluate_on_a_full_disk(tmp_path, store):
    out = tmp_path / "eval"
    cmd = ["evaluate", str(store), "--encoder", "a=efficientnet_lite0", "--out", str(out)]
    cmd += ["--image-size", "32", "--device", "cpu", "--references", "none", "--seeds", "0"]
    line = _check_one_line(_full_disk_run(100_000, *cmd, "--no-progress"), "evaluate", out)
    assert "cache" in line, line


def test_embed_h5ad_given_a_jpeg_names_the_file(tmp_path, mob_dir, capsys):
    """Issue 21.14: 'file signature not found' without the file."""
    from stalign.cli import main

    jpeg = tmp_path / "MOB1.h5ad"
    jpeg.write_bytes((mob_dir / "MOB1.jpg").read_bytes())
    cmd = ["embed", "--h5ad", str(jpeg), "--out", str(tmp_path / "o.h5ad"), *TINY]
    assert main(cmd) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--h5ad {jpeg}: not an AnnData .h5ad (HDF5) file" in err[0], err
