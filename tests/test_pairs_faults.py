"""Fault battery of the pairs store: kills, concurrent runs, stale inputs, corrupt shards,
environment errors. Every case must end in either identical content or a clear refusal,
never in a silently mixed store. Small and fast: two MOB sections, 32 px patches, no
pathway scores unless the case is about them."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from stalign.cli import main
from stalign.pairs import ManifestError, build_pairs, merge_pairs, read_index

pytestmark = pytest.mark.faults  # the whole module is the store's fault battery

FAST = {"mpp": 9.4, "size_px": 32, "gene_sets": None, "progress": False}
CLI_FAST = ["--mpp", "9.4", "--size-px", "32", "--gene-sets", "none", "--no-progress"]
HEADER = "sample_id,patient_id,organ,species,platform,path,image,mpp,source,license\n"


def _manifest(folder: Path, rows: list[tuple[str, str, Path]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = HEADER + "".join(
        f"{sid},{pid},olfactory_bulb,mus_musculus,legacy_st,{path},,,test,MIT\n"
        for sid, pid, path in rows
    )
    p = folder / "manifest.csv"
    p.write_text(text)
    return p


def _copy_section(mob_dir: Path, folder: Path, section: str) -> Path:
    """Copy one MOB section's files (counts, alignment, image, genes) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in (
        f"{section}.tsv.gz",
        f"{section}.jpg",
        f"alignment_table_{section}.tsv",
        "mouse_genes.tsv.gz",
    ):
        shutil.copy(mob_dir / name, folder / name)
    return folder / f"{section}.tsv.gz"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, mob_dir) -> Path:
    tmp = tmp_path_factory.mktemp("faults")
    return _manifest(
        tmp,
        [("MOB1", "mouse1", mob_dir / "MOB1.tsv.gz"), ("MOB3", "mouse2", mob_dir / "MOB3.tsv.gz")],
    )


@pytest.fixture(scope="module")
def one(tmp_path_factory, mob_dir) -> Path:
    """A manifest of MOB1 only, for the cases one sample shows."""
    return _manifest(tmp_path_factory.mktemp("one"), [("MOB1", "mouse1", mob_dir / "MOB1.tsv.gz")])


@pytest.fixture(scope="module")
def ref(tmp_path_factory, manifest) -> Path:
    """Reference store, 32 px, built without interruption."""
    out = tmp_path_factory.mktemp("ref") / "pairs"
    build_pairs(manifest, out, **FAST)
    return out


@pytest.fixture(scope="module")
def ref40(tmp_path_factory, manifest) -> Path:
    """Reference store with other parameters (40 px)."""
    out = tmp_path_factory.mktemp("ref40") / "pairs"
    build_pairs(manifest, out, **{**FAST, "size_px": 40})
    return out


def _files(out: Path) -> dict[str, dict]:
    return {s["sample_id"]: s["files"] for s in read_index(out)["samples"]}


def _cli(manifest: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "stalign", "build-pairs", str(manifest), "--out", str(out)]
    return subprocess.Popen(
        [*cmd, *CLI_FAST, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def _wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            pytest.fail(f"the build ended before {what}: rc {proc.returncode}\n{err[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def _fingerprint(out: Path, sid: str) -> str | None:
    try:
        return json.loads((out / "samples" / sid / "_SUCCESS").read_text())["params_fingerprint"]
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------- kills
def test_sigkill_during_no_resume_rebuild_never_leaves_a_mixed_store(
    tmp_path, ref, ref40, manifest
):
    from stalign.pairs import PairsDataset

    out = tmp_path / "pairs"
    shutil.copytree(ref, out)
    old_fp = read_index(ref)["params_fingerprint"]
    proc = _cli(manifest, out, "--no-resume", "--size-px", "40")
    _wait_for(lambda: _fingerprint(out, "MOB1") not in (None, old_fp), proc, "MOB1 was rebuilt")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _fingerprint(out, "MOB3") != read_index(ref40)["params_fingerprint"], "killed too late"
    # the half-rebuilt store is not a finished store: nothing can train on it
    with pytest.raises((FileNotFoundError, ValueError), match=r"index\.json|finished|mix"):
        PairsDataset(out)
    # the old parameters are refused, the new ones resume to the reference content
    with pytest.raises(ValueError, match="other parameters"):
        build_pairs(manifest, out, **FAST)
    result = build_pairs(manifest, out, **{**FAST, "size_px": 40})
    assert dict(zip(result.table["sample_id"], result.table["status"], strict=True)) == {
        "MOB1": "skipped",
        "MOB3": "done",
    }
    assert _files(out) == _files(ref40)
    assert len(PairsDataset(out)) == len(PairsDataset(ref40))


def test_pairs_dataset_refuses_a_store_whose_shards_do_not_match_the_index(tmp_path, ref, ref40):
    from stalign.pairs import PairsDataset

    out = tmp_path / "pairs"
    shutil.copytree(ref, out)
    shutil.rmtree(out / "samples" / "MOB3")
    shutil.copytree(ref40 / "samples" / "MOB3", out / "samples" / "MOB3")
    with pytest.raises(ValueError, match=r"MOB3.*different parameters.*index\.json"):
        PairsDataset(out)
    with pytest.raises(ValueError, match="MOB3"):  # train goes through PairsDataset too
        PairsDataset(out, samples=["MOB3"])
    assert len(PairsDataset(out, samples=["MOB1"])) > 0  # the intact shard is still usable


def test_killing_the_parent_kills_the_workers(tmp_path, manifest):
    out = tmp_path / "pairs"
    proc = _cli(manifest, out, "--workers", "2")

    def tmpdirs() -> list[Path]:
        d = out / "samples"
        return [p for p in d.iterdir() if p.name.startswith(".tmp-")] if d.is_dir() else []

    _wait_for(lambda: len(tmpdirs()) == 2, proc, "both workers started")
    workers = [int(p.name.rsplit(".", 1)[1]) for p in tmpdirs()]
    assert proc.pid not in workers
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    def alive(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    # the death signal kills at once (the watcher within 0.5 s); a worker left alone
    # would finish its sample first (seconds) and exit on its own, so wait 1.5 s only
    deadline = time.monotonic() + 1.5
    while any(alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = [p for p in workers if alive(p)]
    for p in survivors:
        os.kill(p, signal.SIGKILL)
    assert not survivors, f"worker processes {survivors} outlived the killed build"
    time.sleep(0.5)
    assert not list(out.glob("samples/*/_SUCCESS")), "a shard was committed after the kill"
    assert not list(out.glob("samples/*/_FAILED"))


def test_a_killed_worker_stops_the_build_with_one_line_and_it_resumes(tmp_path, ref, manifest):
    out = tmp_path / "pairs"
    proc = _cli(manifest, out, "--workers", "2")
    tmp = out / "samples"
    _wait_for(lambda: tmp.is_dir() and len(list(tmp.glob(".tmp-MOB3.*"))) == 1, proc, "MOB3")
    worker = int(next(tmp.glob(".tmp-MOB3.*")).name.rsplit(".", 1)[1])
    os.kill(worker, signal.SIGKILL)  # e.g. the kernel's OOM killer
    assert proc.wait(timeout=120) == 1
    err = proc.stderr.read().decode().strip().splitlines()
    assert err[-1].startswith("stalign build-pairs: error:") and "MOB3" in err[-1], err
    assert "Traceback" not in "\n".join(err)
    result = build_pairs(manifest, out, **FAST)
    assert result.table.set_index("sample_id").loc["MOB3", "status"] == "done"
    assert _files(out) == _files(ref)


class _Orphaned(Exception):
    """Stands in for ``os._exit(1)`` of an orphaned worker."""


def test_an_orphaned_worker_commits_nothing(tmp_path):
    """The orphan check runs after ``_SUCCESS`` is written and before the shard moves in."""
    from stalign.pairs._store import SHARD_FILES, ShardInputs, commit_shard, write_failure

    tmp, final = tmp_path / "samples" / ".tmp-S.1", tmp_path / "samples" / "S"
    tmp.mkdir(parents=True)
    for name in SHARD_FILES:
        (tmp / name).write_bytes(name.encode())
    inputs = ShardInputs({"/data/S.tsv": {"missing": True}}, {"/data/S.tsv": [3, 4]})

    def gone() -> None:
        assert (tmp / "_SUCCESS").is_file()
        raise _Orphaned

    with pytest.raises(_Orphaned):
        commit_shard(tmp, final, {"sample_id": "S"}, inputs=inputs, orphan_check=gone)
    assert not final.exists()
    with pytest.raises(_Orphaned):
        write_failure(tmp_path, "F", {"reason": "x"}, orphan_check=gone)
    assert not (tmp_path / "samples" / "F").exists()
    commit_shard(tmp, final, {"sample_id": "S"}, inputs=inputs, orphan_check=lambda: None)
    assert json.loads((final / "_SUCCESS").read_text())["inputs"] == inputs.identity
    assert json.loads((final / ".stat.json").read_text())["inputs"] == inputs.stats


def test_a_worker_exits_once_its_build_is_gone(monkeypatch):
    import stalign.pairs._build as build_module

    def exit_(code: int) -> None:
        raise _Orphaned(code)

    monkeypatch.setattr(build_module.os, "_exit", exit_)
    for parent in (None, os.getppid()):  # the build process itself; a worker of a live build
        monkeypatch.setattr(build_module, "_worker_parent", parent)
        build_module._exit_if_orphaned()
    monkeypatch.setattr(build_module, "_worker_parent", -1)  # re-parented: the build is gone
    with pytest.raises(_Orphaned, match="1"):
        build_module._exit_if_orphaned()


# ----------------------------------------------------------------------------- concurrency
def test_a_second_run_on_the_same_folder_is_refused_at_once(tmp_path, ref, manifest):
    out = tmp_path / "pairs"
    first = _cli(manifest, out)
    _wait_for(lambda: (out / "build.json").exists(), first, "the first run started")
    second = _cli(manifest, out, "--size-px", "48")  # other parameters: would mix
    assert second.wait(timeout=60) == 1
    err = second.stderr.read().decode().strip().splitlines()
    assert len(err) == 1 and err[0].startswith("stalign build-pairs: error:"), err
    assert f"{out} is in use by pid {first.pid}" in err[0]
    for params in (FAST, {**FAST, "size_px": 48}):  # same refusal through the API, at once
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match=rf"{out}.* in use by pid {first.pid}"):
            build_pairs(manifest, out, **params)
        assert time.monotonic() - t0 < 5
    with pytest.raises(RuntimeError, match=f"pid {first.pid}"):
        merge_pairs(out)
    assert first.wait(timeout=120) == 0
    assert json.loads((out / "build.json").read_text())["params"]["size_px"] == 32
    result = build_pairs(manifest, out, **FAST)  # the next run resumes: identical content
    assert set(result.table["status"]) == {"skipped"}
    assert _files(out) == _files(ref)


def test_shard_jobs_share_a_folder_but_not_a_shard(tmp_path, manifest):
    from stalign.pairs._build import store_lock

    out = tmp_path / "pairs"
    out.mkdir()
    with store_lock(out, shard=(0, 2), command="test job 0/2"):
        r = build_pairs(manifest, out, shard="1/2", **FAST)  # another job of the array: fine
        assert len(r.table) == 1
        with pytest.raises(RuntimeError, match=r"in use by pid \d+ .*test job 0/2"):
            build_pairs(manifest, out, shard="0/2", **FAST)
        with pytest.raises(RuntimeError, match="in use"):
            build_pairs(manifest, out, **FAST)  # an unsharded run needs the whole folder
        with pytest.raises(RuntimeError, match="in use"):
            merge_pairs(out, allow_missing=True)
    build_pairs(manifest, out, shard="0/2", **FAST)
    merge_pairs(out)
    assert read_index(out)["n_samples"] == 2


# ----------------------------------------------------------------------------- stale content
def test_edited_gene_set_file_changes_the_fingerprint(tmp_path, one):
    from stalign.tl._genesets import bundled_gmt_path

    gmt = tmp_path / "sets.gmt"
    lines = bundled_gmt_path("hallmark").read_text().splitlines()
    gmt.write_text("\n".join(lines[:20]) + "\n")
    manifest = one
    out = tmp_path / "pairs"
    params = {**FAST, "gene_sets": str(gmt), "method": "zscore"}
    build_pairs(manifest, out, **params)
    assert set(build_pairs(manifest, out, **params).table["status"]) == {"skipped"}
    gmt.write_text("\n".join(lines[:10]) + "\n")  # same path, other content
    with pytest.raises(ValueError, match="other parameters"):
        build_pairs(manifest, out, **params)
    result = build_pairs(manifest, out, resume=False, **params)
    assert len(read_index(out)["pathways"]) < 20 and result.table["status"][0] == "done"


def test_changed_input_file_rebuilds_its_shard(tmp_path, mob_dir, monkeypatch):
    import stalign.pairs._store as store

    data = tmp_path / "data"
    counts = _copy_section(mob_dir, data, "MOB1")
    manifest = _manifest(tmp_path / "m", [("MOB1", "m1", counts)])
    out = tmp_path / "pairs"
    build_pairs(manifest, out, **FAST)
    before = _files(out)
    read: list[str] = []
    identity = store.file_identity
    monkeypatch.setattr(store, "file_identity", lambda p: read.append(Path(p).name) or identity(p))
    assert set(build_pairs(manifest, out, **FAST).table["status"]) == {"skipped"}
    assert read == []  # unchanged size + mtime: the inputs are not read again
    shutil.copy2(data / "MOB1.jpg", tmp_path / "copy.jpg")  # a copy with a new mtime only
    os.replace(tmp_path / "copy.jpg", data / "MOB1.jpg")
    os.utime(data / "MOB1.jpg")
    assert set(build_pairs(manifest, out, **FAST).table["status"]) == {"skipped"}
    assert read == ["MOB1.jpg"]  # re-read, same content: still finished
    assert set(build_pairs(manifest, out, **FAST).table["status"]) == {"skipped"}
    assert read == ["MOB1.jpg"]  # and its new mtime is cached
    table = (data / "alignment_table_MOB1.tsv").read_text().splitlines()
    header, body = table[0], table[1:]
    (data / "alignment_table_MOB1.tsv").write_text(
        "\n".join([header, *body[: len(body) // 2]]) + "\n"
    )
    result = build_pairs(manifest, out, **FAST)
    assert list(result.table["status"]) == ["done"]
    assert _files(out)["MOB1"] != before["MOB1"]


def _corrupt_middle(path: Path, *, keep_mtime: bool) -> None:
    st = path.stat()
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(255 - b for b in data[mid : mid + 64])
    path.write_bytes(bytes(data))
    assert path.stat().st_size == st.st_size
    if keep_mtime:  # bit rot: the content changes, the file's metadata does not
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_same_size_corrupted_shard_is_rebuilt(tmp_path, ref, manifest):
    out = tmp_path / "pairs"
    shutil.copytree(ref, out, copy_function=shutil.copy2)
    _corrupt_middle(out / "samples" / "MOB1" / "patches.h5", keep_mtime=False)
    result = build_pairs(manifest, out, **FAST)
    status = dict(zip(result.table["sample_id"], result.table["status"], strict=True))
    assert status == {"MOB1": "done", "MOB3": "skipped"}
    assert _files(out) == _files(ref)


def test_merge_verify_and_build_agree_on_bit_rot(tmp_path, ref, manifest):
    out = tmp_path / "pairs"
    shutil.copytree(ref, out, copy_function=shutil.copy2)
    _corrupt_middle(out / "samples" / "MOB3" / "patches.h5", keep_mtime=True)
    merge_pairs(out, report=False)  # cheap checks trust size + mtime (documented)
    with pytest.raises(ValueError, match=r"MOB3.*patches\.h5 does not match its checksum"):
        merge_pairs(out, verify=True, report=False)
    result = build_pairs(manifest, out, **FAST)  # what verify called stale is rebuilt
    status = dict(zip(result.table["sample_id"], result.table["status"], strict=True))
    assert status == {"MOB1": "skipped", "MOB3": "done"}
    assert _files(out) == _files(ref)
    merge_pairs(out, verify=True, report=False)


# ----------------------------------------------------------------------------- bad input
def test_bad_method_fails_before_any_work_and_the_corrected_command_runs(tmp_path, one):
    manifest = one
    out = tmp_path / "pairs"
    t0 = time.monotonic()
    with pytest.raises(ValueError, match=r"method must be one of .*'bogus'"):
        build_pairs(manifest, out, **{**FAST, "gene_sets": "hallmark", "method": "bogus"})
    assert time.monotonic() - t0 < 5
    assert not (out / "samples").exists()
    build_pairs(manifest, out, **{**FAST, "gene_sets": "hallmark", "method": "zscore"})
    assert read_index(out)["params"]["method"] == "zscore"


def test_a_store_without_finished_shards_accepts_other_parameters(tmp_path, one, monkeypatch):
    import stalign.pairs._build as build_module

    def broken(*args, **kwargs):
        raise ValueError("a parameter the sample could not take")

    out = tmp_path / "pairs"
    with monkeypatch.context() as m:  # a first run that fails before any shard is committed
        m.setattr(build_module, "build_sample", broken)
        with pytest.raises(RuntimeError, match="could not take"):
            build_pairs(one, out, **FAST)
    assert (out / "build.json").exists()
    build_pairs(one, out, **{**FAST, "size_px": 40})  # another command: not refused
    assert read_index(out)["params"]["size_px"] == 40
    with pytest.raises(ValueError, match="other parameters"):  # now there is a shard to protect
        build_pairs(one, out, **FAST)


def test_environment_errors_are_one_line(tmp_path, manifest, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for out in (a_file, a_file / "sub"):
        assert main(["build-pairs", str(manifest), "--out", str(out), *CLI_FAST]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("stalign build-pairs: error:"), err
        assert str(out) in err[0]
    assert main(["merge-pairs", "--out", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "missing") in err[0], err
    with pytest.raises(FileNotFoundError):  # -vv keeps the traceback
        main(["-vv", "merge-pairs", "--out", str(tmp_path / "missing")])


@pytest.mark.parametrize("name", ["build.json", "index.json"])
def test_malformed_store_json_is_named(tmp_path, ref, manifest, capsys, name):
    from stalign.pairs import PairsDataset

    out = tmp_path / "pairs"
    shutil.copytree(ref, out)
    (out / name).write_text('{"format_version": 1, "params": ')
    if name == "build.json":
        commands = [["build-pairs", str(manifest), "--out", str(out), *CLI_FAST]]
        commands.append(["merge-pairs", "--out", str(out)])
    else:
        with pytest.raises(ValueError, match=r"index\.json is not valid JSON"):
            PairsDataset(out)
        commands = [["train", "--pairs", str(out), "--out", str(tmp_path / "t")]]
    for cmd in commands:  # each command prints exactly one line, the one naming the file
        assert main(cmd) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, (cmd[0], err)
        assert err[0].startswith(f"stalign {cmd[0]}: error: {out / name} is not valid JSON")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_out_of_disk_is_one_line_and_commits_nothing(
    tmp_path, manifest, monkeypatch, capsys, workers
):
    from stalign.pairs._store import PatchWriter

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PatchWriter, "append", full)
    out = tmp_path / "pairs"
    cmd = ["build-pairs", str(manifest), "--out", str(out), "--workers", workers, *CLI_FAST]
    assert main(cmd) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("stalign build-pairs: error:"), err
    assert "No space left on device" in err[0] and str(out) in err[0] and "MOB" in err[0]
    assert not list(out.glob("samples/*/_SUCCESS")) and not list(out.glob("samples/*/_FAILED"))
    assert not list(out.glob("samples/.tmp-*")) and not (out / "index.json").exists()


def test_store_json_files_respect_the_umask(tmp_path, one):
    old = os.umask(0o022)
    try:
        out = tmp_path / "pairs"
        build_pairs(one, out, **FAST)
    finally:
        os.umask(old)
    for p in (out / "build.json", out / "index.json", out / "samples" / "MOB1" / "_SUCCESS"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p


def test_same_counts_path_under_two_patients_is_refused(tmp_path, mob_dir):
    manifest = _manifest(
        tmp_path,
        [("A", "mouse1", mob_dir / "MOB1.tsv.gz"), ("B", "mouse2", mob_dir / "MOB1.tsv.gz")],
    )
    with pytest.raises(ManifestError, match=r"line 3: .*MOB1\.tsv\.gz.*line 2.*patient"):
        build_pairs(manifest, tmp_path / "out", **FAST)
    assert not (tmp_path / "out").exists()


def test_the_lock_of_a_killed_process_never_blocks(tmp_path):
    from stalign._lock import FolderLockedError, folder_lock

    lock = tmp_path / ".lock"
    code = (
        "import sys, time\nfrom stalign._lock import folder_lock\n"
        "with folder_lock(sys.argv[1], command='holder'):\n"
        "    print('held', flush=True)\n    time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"held"
        with pytest.raises(FolderLockedError, match=rf"{tmp_path} is in use by pid {proc.pid} "):
            with folder_lock(lock, command="second"):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with folder_lock(lock, command="next"):  # released by the kernel: no stale lock
        assert lock.read_text().split()[0] == f"pid={os.getpid()}"


def test_a_store_of_an_older_stalign_is_rebuilt_not_refused(tmp_path, one):
    """Stores from before content fingerprints: same parameters → rebuilt, not refused."""
    from stalign.pairs._store import params_fingerprint

    out = tmp_path / "pairs"
    params = {**FAST, "gene_sets": "hallmark", "method": "zscore"}
    build_pairs(one, out, **params)
    before = _files(out)
    build = json.loads((out / "build.json").read_text())  # rewrite it as stalign 0.1 did
    del build["fingerprint_version"], build["params"]["gene_sets_sha256"]
    build["params_fingerprint"] = params_fingerprint(build["params"])
    (out / "build.json").write_text(json.dumps(build))
    success = json.loads((out / "samples" / "MOB1" / "_SUCCESS").read_text())
    del success["inputs"]
    success["params_fingerprint"] = build["params_fingerprint"]
    (out / "samples" / "MOB1" / "_SUCCESS").write_text(json.dumps(success))
    result = build_pairs(one, out, **params)
    assert list(result.table["status"]) == ["done"]
    assert _files(out) == before
    with pytest.raises(ValueError, match="other parameters"):  # other parameters still refused
        build_pairs(one, out, **{**params, "method": "ssgsea"})


def test_a_change_of_the_tissue_mask_rule_changes_the_fingerprint(monkeypatch):
    """The mask's settings are code defaults, not parameters: they are fingerprinted, so
    shards masked by another rule are never reused (the pixel rule is not affected)."""
    import stalign.im._tissue as tissue
    from stalign.pairs import PairsParams

    mask, pixels = PairsParams(tissue_qc="mask"), PairsParams(tissue_qc="pixels")
    fp_mask, fp_pixels = mask.fingerprint(), pixels.fingerprint()
    assert mask.to_dict()["tissue_mask_settings"]["closing_um"] == 50.0
    monkeypatch.setattr(tissue, "_MIN_CONTRAST", tissue._MIN_CONTRAST + 1)
    assert mask.fingerprint() != fp_mask
    assert pixels.fingerprint() == fp_pixels
    monkeypatch.undo()
    defaults = tissue.tissue_mask.__kwdefaults__
    monkeypatch.setitem(defaults, "closing_um", 40.0)
    assert mask.fingerprint() != fp_mask


def test_a_store_fingerprinted_before_the_mask_settings_is_rebuilt_not_refused(tmp_path, one):
    """A v2 record (no tissue_mask_settings) of the same parameters: its shards are
    rebuilt with today's rule, not reused and not refused."""
    from stalign.pairs._store import params_fingerprint

    out = tmp_path / "pairs"
    build_pairs(one, out, **FAST)
    build = json.loads((out / "build.json").read_text())  # rewrite it as fingerprint v2 did
    assert build["fingerprint_version"] == 3
    build["fingerprint_version"] = 2
    del build["params"]["tissue_mask_settings"]
    build["params_fingerprint"] = params_fingerprint(build["params"])
    (out / "build.json").write_text(json.dumps(build))
    success_path = out / "samples" / "MOB1" / "_SUCCESS"
    success = json.loads(success_path.read_text())
    success["params_fingerprint"] = build["params_fingerprint"]
    success_path.write_text(json.dumps(success))
    result = build_pairs(one, out, **FAST)
    assert list(result.table["status"]) == ["done"]  # rebuilt, not skipped as finished
    assert json.loads(success_path.read_text())["params_fingerprint"] != build["params_fingerprint"]
    with pytest.raises(ValueError, match="other parameters"):  # other parameters still refused
        build_pairs(one, out, **{**FAST, "size_px": 48})


def test_input_identity_reads_whole_small_files_and_the_ends_of_big_ones(tmp_path):
    from stalign.pairs._store import FULL_DIGEST_MAX_BYTES, file_identity, input_identity

    small = tmp_path / "counts.tsv"
    small.write_bytes(b"a" * 1000)
    ident = file_identity(small)
    assert ident["digest"] == "full" and ident["bytes"] == 1000
    small.write_bytes(b"a" * 500 + b"b" + b"a" * 499)  # same size, other middle byte
    assert file_identity(small)["sha256"] != ident["sha256"]

    big = tmp_path / "slide.tif"
    with open(big, "wb") as fh:  # sparse: instant, no disk used
        fh.truncate(FULL_DIGEST_MAX_BYTES + (8 << 20))
    ident = file_identity(big)
    assert ident["digest"] == "size+head+tail"
    with open(big, "r+b") as fh:
        fh.seek(-10, os.SEEK_END)
        fh.write(b"new tail")
    assert file_identity(big)["sha256"] != ident["sha256"]
    with open(big, "ab") as fh:
        fh.write(b"x")
    assert file_identity(big)["bytes"] == ident["bytes"] + 1
    both = input_identity([tmp_path, tmp_path / "absent.jpg"])
    assert set(both) == {str(small), str(big), str(tmp_path / "absent.jpg")}
    assert both[str(tmp_path / "absent.jpg")] == {"missing": True}


# ----------------------------------------------------------------------------- gene sets
@pytest.fixture
def no_network(monkeypatch):
    """Fail the test on any connection attempt or gseapy download."""
    import socket

    import gseapy

    def refuse(*args, **kwargs):
        pytest.fail(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(gseapy, "get_library", refuse)


def test_a_gene_set_typo_never_reaches_the_network(tmp_path, one, capsys, no_network):
    out = tmp_path / "pairs"
    cmd = ["build-pairs", str(one), "--out", str(out), *CLI_FAST[:-3], "--no-progress"]
    assert main([*cmd, "--gene-sets", "hallmrk"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'hallmrk'" in err[0] and "did you mean 'hallmark'" in err[0], err
    assert "reactome" in err[0] and "wikipathways" in err[0] and "enrichr:" in err[0]
    assert not list(out.glob("samples/*"))  # refused before any work


def test_enrichr_prefix_is_the_only_way_to_download(monkeypatch):
    import gseapy

    from stalign.tl._genesets import gene_set_source, load_gene_sets

    asked = []

    def library(name, organism):
        asked.append((name, organism))
        return {"SET": ["A", "B", "A"]}

    monkeypatch.setattr(gseapy, "get_library", library)
    assert load_gene_sets("enrichr:GO_Biological_Process_2023") == {"SET": ["A", "B"]}
    assert asked == [("GO_Biological_Process_2023", "Human")]
    with pytest.raises(ValueError, match="unknown gene sets 'GO_Biological_Process_2023'"):
        load_gene_sets("GO_Biological_Process_2023")
    assert len(asked) == 1
    assert gene_set_source("HALLMARK") == ("bundled", "hallmark")


def _gmt(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "sets.gmt"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("data", "line", "why"),
    [
        (b"A\tx\tActb\tPtgds\n\tx\tApod\tCst3\n", 2, "no name"),  # empty set name (21.11)
        (b"A\tx\tActb\n\nB\tcaf\xe9\tApod\n", 3, "not UTF-8"),  # Latin-1 text (21.14)
    ],
)
def test_a_malformed_gmt_is_one_line_naming_file_and_line(tmp_path, one, capsys, data, line, why):
    gmt = _gmt(tmp_path, data)
    out = tmp_path / "pairs"
    cmd = ["build-pairs", str(one), "--out", str(out), *CLI_FAST[:-3], "--no-progress"]
    assert main([*cmd, "--gene-sets", str(gmt), "--min-genes", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{gmt}:{line}:" in err[0] and why in err[0], err
    assert not list(out.glob("samples/*"))


# ----------------------------------------------------------------------------- litter (21.15)
_KILLED_WRITER = """
import os, signal, sys
from stalign._utils import atomic_path
with atomic_path(sys.argv[1], suffix=sys.argv[2]) as tmp:
    tmp.write_bytes(b"x" * 100_000)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    return int(proc.stdout)


@pytest.mark.parametrize("suffix", [".h5.tmp", ".png"])
def test_the_next_write_removes_the_temp_file_of_a_killed_one(tmp_path, suffix):
    from stalign._utils import atomic_write_bytes

    target = tmp_path / "qc" / "figure"
    killed = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(target), suffix])
    assert killed.returncode == -signal.SIGKILL
    assert len(list(target.parent.glob(".figure.*"))) == 1  # the killed run's litter
    live = target.parent / f".figure.{os.getpid()}.busy{suffix}"  # a live writer's file
    live.write_bytes(b"")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert list(target.parent.glob(".figure.*")) == [live]


def test_build_pairs_removes_shard_litter_of_gone_processes(tmp_path, ref, manifest):
    out = tmp_path / "pairs"
    shutil.copytree(ref, out)
    dead = _dead_pid()
    gone = [out / "samples" / f".tmp-DROPPED.old{dead}", out / "samples" / f".tmp-DROPPED.{dead}"]
    busy = out / "samples" / f".tmp-OTHER.{os.getpid()}"  # e.g. another shard job, alive
    for d in [*gone, busy]:
        d.mkdir()
        (d / "patches.h5").write_bytes(b"x" * 1000)
    assert main(["build-pairs", str(manifest), "--out", str(out), *CLI_FAST]) == 0
    assert not any(d.exists() for d in gone) and busy.is_dir()


def test_absent_panel_genes_are_warned_and_reported(tmp_path, one):
    """Issue 21.13: they were dropped silently (a 3-gene store, no word)."""
    panel = tmp_path / "panel.txt"
    panel.write_text("Actb\nPtgds\nApod\nNOT_A_GENE1\nNOT_A_GENE2\n")
    out = tmp_path / "pairs"
    with pytest.warns(UserWarning, match=r"2 of 5 genes .* NOT_A_GENE1, NOT_A_GENE2"):
        build_pairs(one, out, gene_panel=str(panel), **FAST)
    entry = read_index(out)["samples"][0]
    assert entry["n_genes"] == 3
    report = (out / "qc" / "report.md").read_text()
    assert "panel genes missing" in report and "NOT_A_GENE1, NOT_A_GENE2" in report
