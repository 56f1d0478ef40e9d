"""Training faults: locks, SIGKILL + resume, corrupt checkpoints, leakage, bad configs."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _fixtures_train import one_thread, tiny_config  # noqa: F401 (autouse fixture)

from stalign._lock import FolderLockedError
from stalign.cli import main
from stalign.datasets import mob_example_pairs
from stalign.train import TrainConfig, TrainingDivergedError, fit

pytestmark = pytest.mark.faults

REPO = Path(__file__).resolve().parents[1]
MANIFEST_COLS = "sample_id,patient_id,organ,species,platform,path,image,mpp,source,license"


@pytest.fixture(scope="module")
def mob_pairs(mob_dir):
    """48 real (64-px H&E patch, Hallmark ssGSEA) pairs from MOB1."""
    return mob_example_pairs(mob_dir, ["MOB1"], max_pairs=48)


@pytest.fixture(scope="module")
def store(tmp_path_factory, mob_dir) -> Path:
    """A small pairs store: MOB1 and MOB2 from animal1, MOB3 from animal2."""
    from stalign.pairs import build_pairs, merge_pairs

    root = tmp_path_factory.mktemp("fault_store")
    rows = [
        f"{s},{p},olfactory_bulb,mus_musculus,legacy_st,{mob_dir / f'{s}.tsv.gz'},"
        f"{mob_dir / f'{s}.jpg'},,test,MIT"
        for s, p in (("MOB1", "animal1"), ("MOB2", "animal1"), ("MOB3", "animal2"))
    ]
    (root / "manifest.csv").write_text("\n".join([MANIFEST_COLS, *rows]) + "\n")
    build_pairs(
        root / "manifest.csv", root / "pairs", mpp=4.7, size_px=24, progress=False, report=False
    )
    merge_pairs(root / "pairs", report=False)
    return root / "pairs"


def _train_cli(store: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--pairs",
        str(store),
        "--out",
        str(out),
        "--img-size",
        "32",
        "--batch-size",
        "16",
        "--max-steps",
        "2",
        "--set",
        'encoder_kwargs={"depth": 2}',
        "--no-progress",
        *extra,
    ]


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            msg = f"child exited ({proc.returncode}) before {path} appeared:\n{out}\n{err}"
            raise AssertionError(msg)
        if time.monotonic() - t0 > timeout:
            proc.kill()
            msg = f"{path} did not appear within {timeout} s"
            raise AssertionError(msg)
        time.sleep(0.02)


def _spawn(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# a training child that blocks (inside the data loader) once TRIGGER exists and until
# RELEASE does, so the parent can SIGKILL it at a known point or run a second job meanwhile
_CHILD = """
    import sys, time
    from pathlib import Path
    import torch
    from stalign.train import TensorPairsDataset, TrainConfig, fit

    torch.set_num_threads(1)
    data_path, config_path, trigger, release = sys.argv[1:5]
    data = torch.load(data_path, weights_only=True)


    class Blocking(TensorPairsDataset):
        def __getitem__(self, i):
            while Path(trigger).exists() and not Path(release).exists():
                time.sleep(0.05)
            return super().__getitem__(i)


    train = Blocking(data["images"], data["pathways"])
    val = TensorPairsDataset(data["images"][:32], data["pathways"][:32])
    fit(TrainConfig.from_file(config_path), train, val)
"""


def _start_child(tmp_path: Path, mob_pairs, cfg: TrainConfig, trigger: Path, release: Path):
    data = tmp_path / "data.pt"
    torch.save({"images": mob_pairs.images, "pathways": mob_pairs.pathways}, data)
    cfg_path = tmp_path / "child_config.json"
    cfg.to_json(cfg_path)
    return _spawn(_CHILD, str(data), str(cfg_path), str(trigger), str(release))


# ------------------------------------------------------------------------ the lock
def test_concurrent_train_on_one_folder_is_refused(mob_pairs, store, tmp_path, capsys):
    out = tmp_path / "run"
    release = tmp_path / "release"
    first = _start_child(
        tmp_path, mob_pairs, tiny_config(out, seed=0, max_steps=2), out / "config.json", release
    )
    try:
        _wait_for(out / "log.csv", first)  # step-0 validation done, training blocked
        with pytest.raises(FolderLockedError, match=rf"in use by pid {first.pid} .*stalign train"):
            fit(tiny_config(out, seed=1), mob_pairs)
        assert main([*_train_cli(store, out), "--seed", "1"]) == 1
        _one_line_error(capsys, str(out), f"in use by pid {first.pid}")
        release.touch()
        assert first.wait(timeout=120) == 0, first.communicate()
    finally:
        if first.poll() is None:
            first.kill()
    # nothing of the refused runs was mixed in: seed 0's config and log only
    assert json.loads((out / "config.json").read_text())["seed"] == 0
    assert pd.read_csv(out / "log.csv")["step"].max() == 2


# ------------------------------------------------------------------------ SIGKILL + resume
def test_sigkill_during_training_then_resume_matches_uninterrupted(mob_pairs, tmp_path):
    val = mob_pairs.subset(range(32))
    kw = dict(
        max_steps=8,
        checkpoint_every_steps=1,
        keep_checkpoints=2,
        eval_every_steps=4,
        log_every_steps=5,  # log.csv not yet written when the child dies at step 3
        resume="auto",
    )
    killed = tmp_path / "killed"
    block = killed / "checkpoints" / "step_00000003" / "state.json"
    child = _start_child(tmp_path, mob_pairs, tiny_config(killed, **kw), block, tmp_path / "never")
    try:
        _wait_for(block, child)
        time.sleep(0.2)  # let it reach the next batch (blocked there)
        child.send_signal(signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
    done = sorted(p.name for p in (killed / "checkpoints").glob("step_*"))
    assert done[-1] == "step_00000003"  # killed in the middle, not at the end
    # the dead run's lock file is still there (naming it), but it does not block
    assert (killed / ".lock").read_text().startswith(f"pid={child.pid} ")

    resumed = fit(tiny_config(killed, **kw), mob_pairs, val)
    full = fit(tiny_config(tmp_path / "full", **kw), mob_pairs, val)
    assert resumed.steps == full.steps == 8
    pr, pf = resumed.model.state_dict(), full.model.state_dict()
    assert all(torch.equal(pr[k], pf[k]) for k in pf)
    # the log is the uninterrupted run's log, step-0 validation row included
    timing = ["images_per_s"]
    log_r = pd.read_csv(killed / "log.csv").drop(columns=timing)
    log_f = pd.read_csv(tmp_path / "full" / "log.csv").drop(columns=timing)
    assert log_r["step"].iloc[0] == 0 and not pd.isna(log_r["val_recall@5"].iloc[0])
    pd.testing.assert_frame_equal(log_r, log_f)


# ------------------------------------------------------------------------ corrupt checkpoints
@pytest.fixture(scope="module")
def trained_run(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    split = ["--train-samples", "MOB1", "--val-samples", "MOB3"]
    assert main([*_train_cli(store, out), *split, "--checkpoint-every-steps", "1"]) == 0
    return out


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("model.safetensors", b"\x00garbage"),
        ("optimizer.pt", b"PK\x03\x04truncated"),
        ("rng_rank0.pt", b"not a torch file"),
        ("state.json", b'{"step": 2, "micro_in'),
    ],
)
def test_corrupt_checkpoint_on_resume_is_one_line_naming_the_file(
    trained_run, store, tmp_path, capsys, name, content
):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    bad = out / "checkpoints" / "step_00000002" / name
    bad.write_bytes(content)
    capsys.readouterr()
    split = ["--train-samples", "MOB1", "--val-samples", "MOB3"]
    args = [*_train_cli(store, out), *split, "--resume", "auto"]
    args[args.index("--max-steps") + 1] = "3"
    assert main(args) == 1
    _one_line_error(capsys, str(bad))


# ------------------------------------------------------------------------ leakage
def test_overlapping_train_and_val_samples_are_refused(store, tmp_path, capsys):
    out = tmp_path / "run"
    args = [*_train_cli(store, out), "--train-samples", "MOB1", "MOB3", "--val-samples", "MOB3"]
    assert main(args) == 1
    _one_line_error(capsys, "MOB3", "--val-samples")
    assert not out.exists()  # refused before anything was written


def test_train_and_val_sharing_a_patient_are_refused_unless_allowed(store, tmp_path, capsys):
    out = tmp_path / "run"
    split = ["--train-samples", "MOB1", "--val-samples", "MOB2"]  # both animal1
    assert main([*_train_cli(store, out), *split]) == 1
    _one_line_error(capsys, "animal1", "--allow-patient-overlap")
    assert not out.exists()
    # an inner validation split by section is a deliberate choice
    assert main([*_train_cli(store, out), *split, "--allow-patient-overlap"]) == 0
    assert (out / "log.csv").is_file()


# ------------------------------------------------------------------------ configs
def test_yaml_numbers_written_as_strings_are_numbers(tmp_path):
    # PyYAML reads 1e-3 (no dot) as the string '1e-3'
    (tmp_path / "c.yaml").write_text("lr: 1e-3\nweight_decay: 1e-4\nmax_steps: 1e2\n")
    cfg = TrainConfig.from_file(tmp_path / "c.yaml")
    assert cfg.lr == 1e-3 and isinstance(cfg.lr, float)
    assert cfg.weight_decay == 1e-4 and cfg.max_steps == 100 and isinstance(cfg.max_steps, int)
    assert TrainConfig(lr="2e-3", epochs="3").epochs == 3
    with pytest.raises(ValueError, match=r"TrainConfig\.lr: expected a number"):
        TrainConfig(lr="fast")
    with pytest.raises(ValueError, match=r"TrainConfig\.epochs: expected a positive integer"):
        TrainConfig(epochs="2.5")
    with pytest.raises(ValueError, match=r"TrainConfig\.augment: expected true or false"):
        TrainConfig(augment="no way")


def test_bad_yaml_value_fails_before_any_model_is_built(store, tmp_path, capsys, monkeypatch):
    import stalign.train._fit as fit_module

    def no_model(*a, **k):
        raise AssertionError("a model was built")

    monkeypatch.setattr(fit_module, "build_model", no_model)
    (tmp_path / "bad.yaml").write_text("lr: fast\n")
    out = tmp_path / "run"
    assert main([*_train_cli(store, out), "--config", str(tmp_path / "bad.yaml")]) == 1
    _one_line_error(capsys, "bad.yaml", "lr", "'fast'")
    assert not out.exists()


def test_encoder_pointing_at_a_missing_folder_says_so(store, tmp_path, capsys):
    from stalign.models import create_encoder

    missing = tmp_path / "runs" / "seed0"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_encoder(str(missing))
    assert main(["embed", "--encoder", str(missing), "--pairs", str(store), "--out", "e.h5"]) == 1
    err = _one_line_error(capsys, str(missing), "does not exist")
    assert "unknown encoder" not in err
    out = tmp_path / "run"
    assert (
        main([*_train_cli(store, out), "--train-samples", "MOB1", "--encoder", str(missing)]) == 1
    )
    _one_line_error(capsys, str(missing), "does not exist")
    assert not out.exists()  # refused before anything was written


# ------------------------------------------------------------------------ best weights
def test_early_stopping_returns_best_weights_without_out(mob_pairs, tmp_path):
    val = mob_pairs.subset(range(32))
    cfg = tiny_config(max_steps=12, lr=3e-2, eval_every_steps=1, early_stopping_patience=3)
    on_disk = fit(cfg.replace(out=str(tmp_path)), mob_pairs, val)
    assert on_disk.stopped_early and on_disk.best_step < on_disk.steps  # best ≠ last
    from safetensors.torch import load_file

    best = load_file(str(tmp_path / "best" / "model.safetensors"))
    in_memory = fit(cfg, mob_pairs, val)
    assert (in_memory.best_step, in_memory.steps) == (on_disk.best_step, on_disk.steps)
    for result in (on_disk, in_memory):
        state = result.model.state_dict()
        assert all(torch.equal(state[k], best[k]) for k in best)


def test_resume_after_the_best_step_restores_the_best_weights_from_disk(mob_pairs, tmp_path):
    import shutil

    val = mob_pairs.subset(range(32))
    cfg = tiny_config(
        tmp_path / "full",
        max_steps=12,
        lr=3e-2,
        eval_every_steps=1,
        early_stopping_patience=3,
        checkpoint_every_steps=1,
        keep_checkpoints=20,
    )
    full = fit(cfg, mob_pairs, val)
    assert full.stopped_early and full.best_step + 1 < full.steps
    # the run as a crash right after the step following the best would have left it
    run = tmp_path / "crashed"
    shutil.copytree(tmp_path / "full", run)
    for ckpt in (run / "checkpoints").glob("step_*"):
        if int(ckpt.name.removeprefix("step_")) > full.best_step + 1:
            shutil.rmtree(ckpt)
    resumed = fit(cfg.replace(out=str(run), resume="auto"), mob_pairs, val)
    assert (resumed.best_step, resumed.steps) == (full.best_step, full.steps)
    pf, pr = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(pf[k], pr[k]) for k in pf)


# ------------------------------------------------------------------------ the old spelling
def test_a_run_whose_config_says_output_dir_still_loads_and_resumes(mob_pairs, tmp_path):
    """Runs written before ``TrainConfig.output_dir`` became ``out`` keep working."""
    from stalign.train import load_model

    run = tmp_path / "old_run"
    first = fit(tiny_config(run, max_steps=2, checkpoint_every_steps=2), mob_pairs)
    configs = [run / "config.json", *run.glob("checkpoints/*/config.json")]
    assert len(configs) == 2
    for path in configs:  # as an earlier stalign wrote them
        settings = json.loads(path.read_text())
        settings["output_dir"] = settings.pop("out")
        path.write_text(json.dumps(settings))
    with pytest.warns(DeprecationWarning, match="output_dir"):
        model = load_model(run)
    loaded, trained = model.state_dict(), first.model.state_dict()
    assert all(torch.equal(loaded[k], trained[k].cpu()) for k in trained)
    with pytest.warns(DeprecationWarning, match="output_dir"):
        resumed = fit(tiny_config(run, max_steps=4, resume="auto"), mob_pairs)
    assert resumed.steps == 4 and resumed.out == run
    with pytest.warns(DeprecationWarning, match="output_dir"):
        assert resumed.output_dir == run
    assert json.loads((run / "config.json").read_text())["out"] == str(run)


def test_train_config_takes_the_old_name_output_dir_with_a_warning(tmp_path):
    (tmp_path / "old.yaml").write_text("epochs: 1\noutput_dir: runs/a\n")
    with pytest.warns(DeprecationWarning, match="output_dir"):
        assert TrainConfig.from_file(tmp_path / "old.yaml").out == "runs/a"
    with pytest.warns(DeprecationWarning, match="output_dir"):
        cfg = TrainConfig(output_dir="runs/b")
    assert cfg.out == "runs/b" and "output_dir" not in cfg.to_dict()
    with pytest.warns(DeprecationWarning, match="output_dir"):
        assert cfg.replace(output_dir="runs/c").out == "runs/c"
    with pytest.warns(DeprecationWarning, match="output_dir"):
        assert cfg.output_dir == "runs/b"
    with pytest.raises(ValueError, match=r"output_dir.*out"):
        TrainConfig.from_dict({"out": "runs/a", "output_dir": "runs/b"})


# ------------------------------------------------------------------------ runs one after another
def test_a_fresh_run_in_a_used_folder_replaces_the_earlier_run(mob_pairs, tmp_path):
    from stalign.train import latest_checkpoint

    kw = dict(checkpoint_every_steps=2, keep_checkpoints=2)
    fit(tiny_config(tmp_path, seed=0, max_steps=6, **kw), mob_pairs)
    fit(tiny_config(tmp_path, seed=1, max_steps=2, **kw), mob_pairs)
    # only the second run's files: its checkpoint survives pruning and is the one resumed
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000002"]
    assert json.loads((latest_checkpoint(tmp_path) / "config.json").read_text())["seed"] == 1
    assert pd.read_csv(tmp_path / "log.csv")["step"].max() == 2


def test_cli_refuses_to_start_afresh_over_a_run_without_overwrite(
    trained_run, store, tmp_path, capsys
):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    split = ["--train-samples", "MOB1", "--val-samples", "MOB3"]
    capsys.readouterr()
    assert main([*_train_cli(store, out), *split, "--seed", "1"]) == 1
    _one_line_error(capsys, str(out), "--resume auto", "--overwrite")
    assert json.loads((out / "config.json").read_text())["seed"] == 0
    assert main([*_train_cli(store, out), *split, "--seed", "1", "--overwrite"]) == 0
    assert json.loads((out / "config.json").read_text())["seed"] == 1


# ------------------------------------------------------------------------ non-finite numbers
_FLOAT_FIELDS = [f.name for f in dataclasses.fields(TrainConfig) if "float" in str(f.type)]


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), "1e999"])
@pytest.mark.parametrize("name", _FLOAT_FIELDS)
def test_non_finite_numbers_are_refused_naming_the_field(name, value):
    with pytest.raises(ValueError, match=rf"^TrainConfig\.{name}: expected a finite number"):
        TrainConfig(**{name: value})


@pytest.mark.parametrize(
    "how",
    [
        ["--lr", "inf"],
        ["--lr", "nan"],
        ["--set", "temperature=Infinity"],
        ["--config", "{tmp}/c.json"],  # "lr": 1e999 (json reads it as inf)
    ],
)
def test_cli_refuses_an_infinite_learning_rate_before_any_work(store, tmp_path, capsys, how):
    # the reproduction of issue 21.1: it trained and exited 0 with a NaN model
    (tmp_path / "c.json").write_text('{"lr": 1e999}')
    how = [h.replace("{tmp}", str(tmp_path)) for h in how]
    out = tmp_path / "run"
    split = ["--train-samples", "MOB1", "--val-samples", "MOB2", "--allow-patient-overlap"]
    args = [*_train_cli(store, out), *split, "--eval-every-steps", "1", *how]
    assert main(args) == 1
    field = "temperature" if "temperature" in how[-1] else "lr"
    _one_line_error(capsys, f"TrainConfig.{field}", "finite")
    assert not out.exists()


@pytest.mark.parametrize(
    ("lr", "validation", "step", "what"),
    [
        (1e30, True, 1, "embeddings of"),  # finite weights that overflow in the forward pass
        (1e30, False, 2, "contrastive loss is nan"),
    ],
)
def test_a_diverging_run_stops_naming_the_step(mob_pairs, tmp_path, lr, validation, step, what):
    val = mob_pairs.subset(range(32)) if validation else None
    cfg = tiny_config(tmp_path, lr=lr, max_steps=4, eval_every_steps=1, checkpoint_every_steps=1)
    expected = rf"^training diverged at step {step}: .*{what}"
    with pytest.raises(TrainingDivergedError, match=expected):
        fit(cfg, mob_pairs, val)
    assert not (tmp_path / "best").exists()  # no NaN model is kept as "best"
    saved = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert saved == [f"step_{s:08d}" for s in range(1, step)]  # none of the diverged step


def test_a_nan_weight_after_an_optimiser_step_stops_the_run(mob_pairs, tmp_path, monkeypatch):
    import stalign.train._fit as fit_module

    make = fit_module._optimizer

    def poisoning_optimizer(model, config):  # as NaN gradients would leave the weights
        opt = make(model, config)
        steps = []

        def poison(optimizer, args, kwargs):
            steps.append(1)
            if len(steps) == 2:
                optimizer.param_groups[0]["params"][0].data.fill_(float("nan"))

        opt.register_step_post_hook(poison)
        return opt

    monkeypatch.setattr(fit_module, "_optimizer", poisoning_optimizer)
    cfg = tiny_config(tmp_path, max_steps=4, checkpoint_every_steps=1)
    with pytest.raises(TrainingDivergedError, match=r"at step 2: a weight is NaN or inf"):
        fit(cfg, mob_pairs)
    assert [p.name for p in (tmp_path / "checkpoints").glob("step_*")] == ["step_00000001"]


def test_cli_reports_divergence_in_one_line(store, tmp_path, capsys):
    out = tmp_path / "run"
    split = ["--train-samples", "MOB1", "--val-samples", "MOB2", "--allow-patient-overlap"]
    assert main([*_train_cli(store, out), *split, "--eval-every-steps", "1", "--lr", "1e30"]) == 1
    _one_line_error(capsys, "training diverged at step 1")
    assert not (out / "best").exists()


def test_nan_similarities_are_misses():
    from stalign.train import retrieval_metrics

    z = torch.nn.functional.normalize(torch.randn(20, 8), dim=-1)
    broken = torch.full_like(z, float("nan"))
    m = retrieval_metrics(broken, z, torch.randn(20, 6))
    assert m["recall@1"] == m["recall@10"] == 0.0 and m["median_rank"] == 20
    half = z.clone()
    half[15:] = float("nan")  # 5 NaN candidates rank above every true pair (rank 6)
    m = retrieval_metrics(z, half)
    assert m["recall@5"] == 0.0 and m["recall@10"] == 0.75 and m["median_rank"] == 6


def test_a_nan_encoder_is_not_exported(tmp_path):
    from stalign import models

    enc = models.create_encoder("vit_tiny_patch16_224", img_size=32, depth=1)
    models.add_lora(enc, r=2)
    with torch.no_grad():
        next(p for n, p in enc.named_parameters() if "lora_B" in n).fill_(float("nan"))
    with pytest.raises(ValueError, match=r"NaN or inf weights.*diverged"):
        models.export(enc, tmp_path / "export")
    assert not (tmp_path / "export").exists()


# ------------------------------------------------------------------------ batch sizes
def test_a_batch_of_one_is_refused_at_the_door(store, tmp_path, capsys):
    # issue 21.10: --batch-size 1 trained nothing (loss 0, validation loss NaN) and exited 0
    with pytest.raises(ValueError, match=r"^TrainConfig\.batch_size: expected an integer >= 2"):
        TrainConfig(batch_size=1)
    out = tmp_path / "run"
    assert main([*_train_cli(store, out), "--train-samples", "MOB1", "--batch-size", "1"]) == 1
    _one_line_error(capsys, "TrainConfig.batch_size", ">= 2")
    assert not out.exists()


def test_incomplete_last_batches_are_dropped_and_a_one_pair_validation_refused(mob_pairs):
    from stalign.train import validate

    train = mob_pairs.subset(range(33))  # two batches of 16 and one of 1 (dropped)
    result = fit(tiny_config(max_steps=None, epochs=1), train)
    assert result.steps == 2 and (result.history["train_loss"] > 0).all()
    # validation losses skip a last batch of one (it has no negative), not the pair's ranking
    metrics = validate(result.model, mob_pairs.subset(range(17)), tiny_config())
    assert np.isfinite(metrics["val_loss"]) and metrics["val_chance@1"] == 1 / 17
    with pytest.raises(ValueError, match=r"validation set has 1 pairs.*at least 2"):
        fit(tiny_config(), train, mob_pairs.subset([0]))


# ------------------------------------------------------------------------ links out of --out
@pytest.mark.parametrize("link", ["checkpoints", "best", "checkpoints/step_00000002"])
def test_overwrite_never_deletes_through_a_link(trained_run, store, tmp_path, capsys, link):
    # issue 21.5: a symlinked checkpoints/ had every step_* folder of its target deleted
    import shutil

    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    elsewhere = tmp_path / "elsewhere"
    shutil.move(out / link, elsewhere)
    (elsewhere / "step_99999999").mkdir()  # belongs to no run
    (out / link).symlink_to(elsewhere, target_is_directory=True)

    def files() -> list[Path]:
        return sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))

    before = files()
    split = ["--train-samples", "MOB1", "--val-samples", "MOB3"]
    capsys.readouterr()
    assert main([*_train_cli(store, out), *split, "--seed", "1", "--overwrite"]) == 1
    _one_line_error(capsys, str(out / link), "symbolic link")
    assert files() == before  # nothing deleted, here or there
    with pytest.raises(ValueError, match="symbolic link"):
        fit(tiny_config(out, resume="auto"), store_pairs(store))
    assert files() == before


def store_pairs(store: Path):
    from stalign.pairs import PairsDataset

    return PairsDataset(store, samples=["MOB1"])


# ------------------------------------------------------------------------ default splits
@pytest.fixture(scope="module")
def one_patient_store(store, tmp_path_factory) -> Path:
    """``store`` without MOB3: two sections of one animal."""
    import shutil

    from stalign.pairs import merge_pairs

    root = tmp_path_factory.mktemp("one_patient") / "pairs"
    shutil.copytree(store, root, ignore=lambda d, names: ["MOB3"] if "MOB3" in names else [])
    merge_pairs(root, allow_missing=True, report=False)
    return root


def test_val_fraction_zero_means_no_validation(store, tmp_path, capsys):
    # issue 21.12: it failed with "no pairs in ... match samples=None, patients=None, split=val"
    out = tmp_path / "run"
    assert main([*_train_cli(store, out), "--val-fraction", "0"]) == 0
    log = pd.read_csv(out / "log.csv")
    assert log["step"].max() == 2 and not any(c.startswith("val_") for c in log)
    summary = json.loads(capsys.readouterr().out)
    assert summary["best_step"] is None


def test_one_patient_store_without_a_split_says_what_to_do(one_patient_store, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_train_cli(one_patient_store, out)) == 1
    _one_line_error(
        capsys,
        "1 patient(s) (animal1)",
        "--train-samples and --val-samples",
        "--allow-patient-overlap",
        "--val-fraction 0",
    )
    assert not out.exists()
    assert main([*_train_cli(one_patient_store, out), "--val-fraction", "1"]) == 1
    _one_line_error(capsys, "val_fraction: expected a number in [0, 1)")
    split = ["--train-samples", "MOB1", "--val-samples", "MOB2", "--allow-patient-overlap"]
    assert main([*_train_cli(one_patient_store, out), *split]) == 0


# ------------------------------------------------------------------------ provenance
def test_an_export_records_what_it_was_trained_on(trained_run, store, tmp_path):
    # issue 21.4: the export's stalign.json recorded no training samples, patients or store
    from stalign.models import read_provenance

    out = tmp_path / "export"
    assert main(["export", str(trained_run), "--out", str(out)]) == 0
    index = json.loads((store / "index.json").read_text())
    for where in (out, out / "timm", out / "adapter"):
        prov = read_provenance(where)
        assert prov["training_samples"] == ["MOB1"] and prov["training_patients"] == ["animal1"]
        assert prov["validation_samples"] == ["MOB3"]
        assert prov["validation_patients"] == ["animal2"]
        assert prov["pairs_store"] == str(store.resolve())
        assert prov["store_fingerprint"] == index["params_fingerprint"]
        assert len(prov["store_index_sha256"]) == 64
        for code in (prov, prov["exported_by"]):
            assert code["stalign_version"] and code["git_commit"] in (None, _git_head())


def _git_head() -> str | None:
    done = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else None


def test_resume_refuses_a_learning_rate_it_would_ignore(mob_pairs, tmp_path):
    # the optimiser and scheduler states of a checkpoint carry the old learning rate: a
    # resumed run with another lr trained on the old schedule without a word
    fit(tiny_config(tmp_path, max_steps=2, checkpoint_every_steps=2), mob_pairs)
    with pytest.raises(ValueError, match=r"config changed \(lr: 0\.001 → 1e-06\)"):
        fit(tiny_config(tmp_path, max_steps=4, resume="auto", lr=1e-6), mob_pairs)
