"""A wheel built from the repository carries its example data and runs the demo's first stage.

The wheel is installed into a bare folder (``pip install --target``) and used from a
temporary directory outside the checkout, so neither the editable install nor
``data/`` of the repository can be what the command finds.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 300):
    proc = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """Build the wheel offline, install it with ``--target``; return (site, env)."""
    if importlib.util.find_spec("hatchling") is None:
        pytest.skip("hatchling (the build backend, in the 'test' extra) is not installed")
    root = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(root), str(REPO)]
    _run(build, cwd=root, env=env)
    (wheel,) = root.glob("stalign-*.whl")
    site = root / "site"
    _run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], cwd=root, env=env)
    run_env = {**env, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return site, run_env


@pytest.mark.slow
def test_installed_wheel_runs_demo_help_and_curation(installed, tmp_path):
    site, env = installed
    packaged = site / "stalign" / "datasets" / "_data"
    assert (packaged / "manifests" / "examples.csv").is_file()
    assert (packaged / "examples" / "mob" / "MOB1.tsv.gz").is_file()
    assert (packaged / "manifests" / "her2st_C.csv").is_file()  # the demo's human sections
    assert (packaged / "examples" / "her2st_C" / "C6.jpg").is_file()

    work = tmp_path / "elsewhere"  # outside the checkout: no data/ to fall back on
    work.mkdir()
    probe = (
        "import stalign, stalign.pipeline as p; "
        "print(stalign.__file__); print(p.PipelineConfig().manifest); "
        "print(p.PipelineConfig.example('mob').manifest)"
    )
    where = _run([sys.executable, "-c", probe], cwd=work, env=env).stdout.split()
    assert Path(where[0]).is_relative_to(site), f"stalign imported from {where[0]}"
    assert Path(where[1]).is_relative_to(packaged), f"demo manifest is {where[1]}"
    demo_manifest = Path(where[2])  # MOB: small, for the curation stage below
    assert demo_manifest.is_relative_to(packaged), f"MOB manifest is {demo_manifest}"

    help_text = _run([sys.executable, "-m", "stalign", "demo", "--help"], cwd=work, env=env).stdout
    assert "usage: stalign demo" in help_text and "--manifest" in help_text

    # the demo's curation stage on two packaged sections (one per mouse), small patches
    with open(demo_manifest, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["sample_id"] in {"MOB1", "MOB3"}]
    for row in rows:
        for col in ("path", "image"):
            row[col] = str((demo_manifest.parent / row[col]).resolve())
    manifest = work / "two_sections.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    cmd = [sys.executable, "-m", "stalign", "build-pairs", str(manifest), "--out", "pairs"]
    _run([*cmd, "--mpp", "4.4", "--size-px", "32", "--no-progress"], cwd=work, env=env)
    samples = sorted(p.name for p in (work / "pairs" / "samples").iterdir())
    assert samples == ["MOB1", "MOB3"]
    assert (work / "pairs" / "index.json").is_file()
    assert (work / "pairs" / "samples" / "MOB1" / "_SUCCESS").is_file()
