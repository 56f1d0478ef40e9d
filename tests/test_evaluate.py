"""`stalign evaluate` end to end on a small real MOB pairs store built in the test.

Also its feature cache (streamed, resumable, sharded, shared by torch.distributed
ranks) and the batched patch reads it streams with.
"""

import csv
import dataclasses
import json
import os
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _report_html_check import check_self_contained

from stalign.bench import color_histogram, encoder_features
from stalign.bench._cache import FeatureCache, FeatureSource
from stalign.cli import main
from stalign.pairs import PairsDataset

MANIFEST_COLS = "sample_id,patient_id,organ,species,platform,path,image,mpp,source,license"


@pytest.fixture(scope="module")
def small_store(tmp_path_factory, mob_dir):
    from stalign.pairs import build_pairs, merge_pairs

    root = tmp_path_factory.mktemp("evaluate")
    manifest = root / "manifest.csv"
    rows = [
        f"{s},{p},olfactory_bulb,mus_musculus,legacy_st,{mob_dir / f'{s}.tsv.gz'},"
        f"{mob_dir / f'{s}.jpg'},,test,MIT"
        for s, p in (("MOB1", "mouse1"), ("MOB3", "mouse2"))
    ]
    manifest.write_text("\n".join([MANIFEST_COLS, *rows]) + "\n")
    store = root / "pairs"
    # native resolution (~4.7 µm/px), 24-px patches: small and fast
    build_pairs(manifest, store, mpp=4.7, size_px=24, progress=False, report=False)
    merge_pairs(store, report=False)  # index.json without the QC report (not under test)
    return store


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    import torch

    from stalign import models

    torch.manual_seed(3)
    enc = models.create_encoder("vit_tiny_patch16_224", img_size=32, depth=2)
    return models.export_timm(enc, tmp_path_factory.mktemp("export") / "aligned")


def test_evaluate_cli_writes_report_with_figures(small_store, tiny_export, tmp_path, capsys):
    out = tmp_path / "report"
    rc = main(
        [
            "evaluate",
            "--pairs",
            str(small_store),
            "--encoder",
            f"aligned={tiny_export}",
            "--out",
            str(out),
            "--references",
            "pixels",
            "--n-markers",
            "0",
            "1",
            "--img-size",
            "32",
            "--seeds",
            "0",
            "--mil-epochs",
            "5",
            "--threads",
            "1",
            "--no-progress",
        ]
    )
    assert rc == 0
    assert "report:" in capsys.readouterr().out
    report = (out / "report.md").read_text()
    for fig in ("scatter_genes", "scatter_pathways", "retrieval_curves"):
        png = out / "figures" / f"{fig}.png"
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
        assert f"figures/{fig}.png" in report
    for task in ("genes", "pathways"):  # maps of every tested section (leave one out: all)
        pngs = sorted((out / "figures").glob(f"maps_{task}_*.png"))
        assert [p.stem for p in pngs] == [f"maps_{task}_MOB1", f"maps_{task}_MOB3"]
        assert all(f"figures/{p.name}" in report for p in pngs)
    check_self_contained(out / "report.html")  # the same report, one file, images inline
    table = pd.read_csv(out / "summary.csv")
    for feats in ("8×8 pixels", "aligned"):
        sub = table[table["features"] == feats]
        assert {"genes", "pathways", "retrieval"} <= set(sub["task"])
        g = sub[(sub["task"] == "genes")]["mean"].iloc[0]
        assert np.isfinite(g) and -1 <= g <= 1
    assert (table["features"] == "chance").any()
    assert table["task"].str.startswith("marker").any()
    # leave-one-patient-out: 2 folds for a deterministic feature set
    runs = pd.read_csv(out / "runs.csv")
    gen = runs[(runs["task"] == "genes") & (runs["features"] == "aligned")]
    for metric in ("pearson", "pearson_depth_adjusted"):
        assert sorted(gen.loc[gen["metric"] == metric, "fold"]) == ["mouse1", "mouse2"]
    with open(out / "per_target_genes.csv") as fh:
        assert len(list(csv.reader(fh))) == 51  # header + 50 HEST genes
    assert "## Verdicts on the depth-adjusted readout" in report and "aligned" in report
    assert report.splitlines()[2].startswith("**Overall verdict: ")
    assert report.index("depth-adjusted readout") < report.index("## Verdicts on the HEST readout")
    assert "Probe protocol `hest_robust`" in report
    for key in ("genes_depth_adjusted", "genes_cp10k", "pathways_depth_adjusted"):
        assert (out / f"per_target_{key}.csv").is_file()


def test_split_by_section_scores_both_readouts_and_library_size_is_zero_net_of_depth(
    small_store, tiny_export, tmp_path
):
    """test_samples splits by section (probes and MIL); the depth-adjusted readout takes the
    library-size row from its HEST score to ~0 on real MOB data; the report leads with it."""
    from stalign.bench import evaluate

    res = evaluate(
        small_store,
        [f"baseline={tiny_export}", f"shuffled={tiny_export}", f"aligned={tiny_export}"],
        out=tmp_path,
        test_samples=["MOB3"],
        references=("histogram", "library_size"),
        image_size=32,
        seeds=(0,),
        n_marker_genes=0,
        n_marker_pathways=1,
        mil_epochs=2,
        threads=1,
        progress=False,
    )
    t = res.table.set_index(["features", "task", "metric"])["mean"]
    lib = "library size only"
    assert t[(lib, "genes", "pearson")] > 0.3  # depth carries the HEST readout on MOB
    for task in ("genes", "genes (log CP10k)", "pathways"):
        assert abs(t[(lib, task, "pearson_depth_adjusted")]) < 0.05
    assert (
        t[("colour histogram", "genes", "pearson_depth_adjusted")]
        < t[("colour histogram", "genes", "pearson")]
    )
    runs = res.runs
    assert set(runs["fold"]) <= {"MOB3", "all"}  # sections, never patient ids
    assert runs["task"].str.startswith("marker").any()
    report = res.report.read_text()
    assert report.splitlines()[2].startswith("**Overall verdict: inconclusive**")
    assert "Rule: **helped** only if" in report
    assert "sections of one tumour (or tissue block) are near-replicates" in report
    assert "train on sections ['MOB1'], test on sections ['MOB3']" in report
    verdict = json.loads((tmp_path / "results.json").read_text())["overall_verdict"]
    assert verdict["verdict"] == "inconclusive" and "no spread" in verdict["reason"]


def test_evaluate_cli_old_spellings_still_parse_with_a_warning(tmp_path, capsys):
    from stalign.cli import build_parser
    from stalign.cli._args import take_positional
    from stalign.cli._evaluate import _options

    old = build_parser().parse_args(
        ["evaluate", str(tmp_path), "--encoder", "a=x", "--out", "o", "--references",
         "histogram,pixels", "--random-encoder", "vit_tiny_patch16_224,resnet18",
         "--image-size", "32", "--probes", "ridge,mlp"]
    )  # fmt: skip
    take_positional(old, "stalign evaluate", "--pairs", dest="pairs")
    new = build_parser().parse_args(
        ["evaluate", "--pairs", str(tmp_path), "--encoder", "a=x", "--out", "o",
         "--references", "histogram", "pixels", "--random-encoders", "vit_tiny_patch16_224",
         "resnet18", "--img-size", "32", "--probes", "ridge", "mlp"]
    )  # fmt: skip
    assert old.pairs == new.pairs == str(tmp_path)
    assert _options(old) == _options(new)
    assert _options(new)["random_encoder"] == ["vit_tiny_patch16_224", "resnet18"]
    err = capsys.readouterr().err
    for word in ("--image-size is deprecated", "--random-encoder is deprecated", "comma"):
        assert word in err
    assert "positionally is deprecated" in err
    unset = build_parser().parse_args(
        ["evaluate", "--pairs", "p", "--encoder", "a=x", "--out", "o"]
    )
    assert _options(unset) == {}  # every flag unset: the EvaluationSpec defaults apply


def test_evaluate_flags_are_unset_and_show_the_evaluationspec_defaults():
    import argparse

    from stalign.bench import EvaluationSpec
    from stalign.cli import build_parser
    from stalign.cli._args import format_default

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    fields = {f.name: f.default for f in dataclasses.fields(EvaluationSpec)}
    flags = [
        a
        for a in sub.choices["evaluate"]._actions
        if a.option_strings and a.help != argparse.SUPPRESS
    ]
    shown = 0
    for action in flags:
        if action.dest in ("help", "encoders", "out"):
            continue
        assert action.default is None, (action.option_strings, action.default)
        default = fields.get(action.dest, dataclasses.MISSING)
        if default is not dataclasses.MISSING and default is not None and action.dest != "progress":
            assert format_default(default) in action.help, (action.dest, action.help)
            shown += 1
    assert shown >= 10
    n_markers = next(a for a in flags if a.dest == "n_markers")
    want = format_default((fields["n_marker_genes"], fields["n_marker_pathways"]))
    assert n_markers.help.endswith(want)


def test_evaluate_takes_the_settings_object_plus_overrides(tmp_path, monkeypatch):
    import stalign.bench._evaluate as ev
    from stalign.bench import EvaluationSpec, evaluate

    ran: list[EvaluationSpec] = []
    monkeypatch.setattr(ev, "run_evaluation", ran.append)
    spec = EvaluationSpec(tmp_path, [], tmp_path / "a", references=("histogram",))
    assert spec.feature_cache_dir == tmp_path / "a" / "cache" and spec.split_level == "patient"
    evaluate(spec=spec, out=tmp_path / "b", test_samples=["MOB3"], seeds=(4,))
    evaluate(tmp_path, [], out=tmp_path / "b", references=("histogram",), test_samples=["MOB3"])
    changed, keywords = ran
    assert changed.feature_cache_dir == tmp_path / "b" / "cache"  # follows the new out
    assert changed.split_level == "sample" and changed.test_groups == ["MOB3"]
    assert changed.seeds == (4,) and spec.seeds == (0, 1, 2)  # the given spec is unchanged
    assert keywords == dataclasses.replace(changed, seeds=(0, 1, 2))
    with pytest.raises(TypeError, match=r"unknown setting\(s\) \['sedes'\]"):
        evaluate(spec=spec, sedes=(1,))
    with pytest.raises(TypeError, match="out required"):
        evaluate(tmp_path, [])


def test_an_unknown_encoder_name_is_refused_before_any_work(tmp_path):
    from stalign.bench import EvaluationSpec

    with pytest.raises(ValueError, match="encoder foo=bar: unknown encoder 'bar'"):
        EvaluationSpec(tmp_path, ["foo=bar"], tmp_path, references=("histogram",))
    with pytest.raises(ValueError, match="encoder random=not_a_net"):
        EvaluationSpec(tmp_path, [], tmp_path, random_encoder="not_a_net")


def test_split_level_is_resolved_from_the_fixed_test_set(tmp_path):
    from stalign.bench import EvaluationSpec

    def spec(**kw):
        return EvaluationSpec(tmp_path, [], tmp_path, **kw)

    assert spec().split_level == "patient" and spec().test_groups is None
    assert spec().split_by is None  # as given: the level is derived, so replace() stays right
    assert spec(test_patients=["mouse2"]).test_groups == ["mouse2"]
    by_section = spec(test_samples=["MOB3"])
    assert by_section.split_level == "sample" and by_section.test_groups == ["MOB3"]
    loso = spec(split_by="sample")  # leave one section out
    assert loso.split_level == "sample" and loso.test_groups is None
    with pytest.raises(TypeError, match="list of ids"):
        spec(test_samples="MOB3")
    with pytest.raises(ValueError, match="split_by must be"):
        spec(split_by="slide")


def test_evaluate_errors(small_store, tmp_path, capsys):
    from stalign.bench import evaluate

    cli = ["evaluate", "--pairs", str(small_store), "--encoder", "x=vit_tiny_patch16_224", "--out"]
    both = ["--test-samples", "MOB3", "--test-patients", "mouse1", "--shard", "0/1"]
    assert main([*cli, str(tmp_path / "cli"), *both]) != 0
    captured = capsys.readouterr()
    assert "not both" in captured.err, captured

    with pytest.raises(ValueError, match="references"):
        evaluate(small_store, [], out=tmp_path, references=("colour",))
    with pytest.raises(ValueError, match="probes"):
        evaluate(small_store, [], out=tmp_path, probes=("svm",))
    with pytest.raises(ValueError, match="not both"):
        evaluate(small_store, [], out=tmp_path, test_patients=["mouse1"], test_samples=["MOB1"])
    with pytest.raises(ValueError, match="split_by"):
        evaluate(small_store, [], out=tmp_path, test_samples=["MOB1"], split_by="patient")
    with pytest.raises(ValueError, match="protocol"):
        evaluate(small_store, [], out=tmp_path, protocol="hest_exact")
    with pytest.raises(FileNotFoundError, match="not a finished pairs store"):
        evaluate(Path(tmp_path) / "nowhere", [], out=tmp_path, references=("histogram",))


def test_the_streamed_panel_is_the_in_memory_panel(small_store):
    """evaluate reads the store one sample at a time; its panel is hest_gene_panel's."""
    from stalign.bench import hest_gene_panel, load_pairs_arrays
    from stalign.bench._spot_table import OTHER_COUNTS, _spot_table

    data, panel = _spot_table(PairsDataset(small_store), small_store, None)
    full = load_pairs_arrays(small_store, patches=False)
    want = [full.gene_names[i] for i in hest_gene_panel(full.counts, full.gene_names)]
    assert panel == want and len(panel) == 50
    assert data.gene_names == [*(g for g in full.gene_names if g in set(panel)), OTHER_COUNTS]
    library = np.asarray(full.counts.sum(axis=1)).ravel()
    np.testing.assert_array_equal(np.asarray(data.counts.sum(axis=1)).ravel(), library)


def test_a_marker_gene_the_store_lacks_fails_before_any_embedding(small_store, tmp_path):
    from stalign.bench import evaluate

    with pytest.raises(ValueError, match=r"target genes not in gene_names: \['NOT_A_GENE'\]"):
        evaluate(
            small_store,
            [],
            out=tmp_path,
            references=("histogram",),
            marker_genes=["NOT_A_GENE"],
            progress=False,
        )
    assert not list((tmp_path / "cache").rglob("*.h5"))


def _all_patches(ds: PairsDataset) -> np.ndarray:
    return np.stack([ds.read_patch(i) for i in range(len(ds))])


def test_read_patches_matches_read_patch_in_any_order(small_store):
    ds = PairsDataset(small_store)
    rng = np.random.default_rng(0)
    idx = np.concatenate([rng.permutation(len(ds))[:40], [3, 3, 4, 5, len(ds) - 1]])
    got = ds.read_patches(idx)
    want = np.stack([ds.read_patch(int(i)) for i in idx])
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="no indices"):
        ds.read_patches([])


def test_read_patches_of_a_jpeg_store_decode_each_patch_in_any_order(tmp_path, mob_dir):
    """JPEG stores take read_patches' per-patch decode branch: same pixels as read_patch."""
    from stalign.pairs import build_pairs, merge_pairs

    manifest = tmp_path / "manifest.csv"
    row = (
        f"MOB1,mouse1,olfactory_bulb,mus_musculus,legacy_st,{mob_dir / 'MOB1.tsv.gz'},"
        f"{mob_dir / 'MOB1.jpg'},,test,MIT"
    )
    manifest.write_text(f"{MANIFEST_COLS}\n{row}\n")
    store = tmp_path / "jpeg_pairs"
    build_pairs(manifest, store, mpp=4.7, size_px=24, jpeg=True, progress=False, report=False)
    merge_pairs(store, report=False)
    ds = PairsDataset(store)
    assert ds.index_json["params"]["jpeg"] is True
    idx = np.concatenate([np.random.default_rng(1).permutation(len(ds))[:30], [2, 2, 0]])
    got = ds.read_patches(idx)
    want = np.stack([ds.read_patch(int(i)) for i in idx])
    assert got.dtype == np.uint8 and got.shape == (idx.size, 24, 24, 3)
    np.testing.assert_array_equal(got, want)


def _histogram_source(fail_after: int | None = None, calls: list | None = None):
    def make():
        def fn(chunk):
            if calls is not None:
                calls.append(len(chunk))
            if fail_after is not None and calls is not None and len(calls) > fail_after:
                raise KeyboardInterrupt  # an interrupted job
            return color_histogram(chunk)

        return fn

    return FeatureSource("colour histogram", {"reference": "histogram"}, make)


def test_cache_streams_resumes_and_equals_in_memory_features(small_store, tmp_path):
    ds = PairsDataset(small_store)
    cache = FeatureCache(tmp_path / "cache", ds, chunk_rows=50)
    calls: list[int] = []
    with pytest.raises(KeyboardInterrupt):
        cache.fill(_histogram_source(fail_after=2, calls=calls))
    first = cache.samples[0]
    partial = cache.directory(_histogram_source()) / f"{first}.h5.partial"
    assert partial.is_file() and not cache.is_complete(_histogram_source(), first)

    calls.clear()
    assert cache.fill(_histogram_source(calls=calls)) == 2  # both samples finished now
    n_first = int((ds.obs["sample_id"] == first).sum())
    assert sum(calls) == len(ds) - 100  # the two chunks written before the stop are kept
    assert not partial.exists()
    feats = cache.load(_histogram_source())
    np.testing.assert_array_equal(feats, color_histogram(_all_patches(ds)))
    assert n_first > 100

    calls.clear()
    assert cache.fill(_histogram_source(calls=calls)) == 0 and not calls  # all cached


def test_cache_is_keyed_by_source_and_sample_digest(small_store, tmp_path):
    ds = PairsDataset(small_store)
    cache = FeatureCache(tmp_path / "cache", ds, chunk_rows=1000)
    src = _histogram_source()
    cache.fill(src)
    other = FeatureSource("colour histogram", {"reference": "histogram", "bins": 8}, src.make)
    assert cache.directory(other) != cache.directory(src)
    with pytest.raises(FileNotFoundError, match="not cached yet"):
        cache.load(other)
    # a rebuilt sample (new patches.h5 digest) is recomputed, never mixed in
    sid = cache.samples[1]
    cache._digest[sid] = "0" * 64
    assert cache.is_complete(src, cache.samples[0]) and not cache.is_complete(src, sid)
    assert cache.fill(src) == 1
    with pytest.raises(ValueError, match="chunk_rows"):
        FeatureCache(tmp_path / "c2", ds, chunk_rows=0)


def test_cache_fill_of_no_samples_computes_nothing(small_store, tmp_path):
    """A rank whose share is empty (more ranks than samples) must not embed everything."""
    cache = FeatureCache(tmp_path / "cache", PairsDataset(small_store), chunk_rows=1000)
    calls: list[int] = []
    assert cache.fill(_histogram_source(calls=calls), samples=[]) == 0 and not calls
    assert cache.fill(_histogram_source(calls=calls), samples=cache.samples[:1]) == 1
    assert sum(calls) == len(cache._rows[cache.samples[0]])


def test_cache_key_records_the_embedding_precision(small_store, tiny_export, tmp_path):
    """bf16-autocast (CUDA) and float32 (CPU) features never share a cache entry."""
    from stalign.bench._feature_sources import _feature_source
    from stalign.bench._spec import EvaluationSpec, FeatureSet

    ds = PairsDataset(small_store)
    cache = FeatureCache(tmp_path / "cache", ds, chunk_rows=1000)
    fs = FeatureSet("tiny", "encoder", str(tiny_export))
    dirs = {}
    for device in ("cpu", "cuda"):  # a key only: nothing runs on the device
        spec = EvaluationSpec(small_store, [f"tiny={tiny_export}"], tmp_path, device=device)
        source = _feature_source(fs, spec, 0)
        want = "bf16-autocast" if device == "cuda" else "float32"
        assert source.key["precision"] == want
        dirs[device] = cache.directory(source)
    assert dirs["cpu"] != dirs["cuda"]


def test_encoder_features_run_through_the_embedding_loop(small_store, tiny_export):
    from stalign.models import load_exported
    from stalign.tl import iter_embeddings

    ds = PairsDataset(small_store, samples=["MOB1"])
    patches = _all_patches(ds)[:37]
    enc = load_exported(tiny_export)
    got = encoder_features(enc, patches, batch_size=16, device="cpu")
    # the pre-unification arithmetic: float /255, antialiased resize, fp32 forward
    with torch.inference_mode():
        x = torch.from_numpy(patches).permute(0, 3, 1, 2).float().div_(255.0)
        x = torch.nn.functional.interpolate(
            x, size=(32, 32), mode="bilinear", antialias=True
        ).clamp_(0.0, 1.0)
        want = enc.eval()(x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    chunks = [patches[:20], patches[20:]]
    looped = np.concatenate(list(iter_embeddings(enc, chunks, device="cpu", image_size=32)))
    np.testing.assert_allclose(looped, got, atol=1e-5, rtol=0)


SMALL_RUN = {
    "references": ("histogram",),
    "seeds": (0,),
    "n_marker_genes": 0,
    "n_marker_pathways": 0,
    "threads": 1,
    "progress": False,
}


@pytest.fixture(scope="module")
def single_run(small_store, tiny_export, tmp_path_factory):
    """One process, own cache: the reference for the sharded and distributed runs."""
    from stalign.bench import evaluate

    out = tmp_path_factory.mktemp("single")
    return evaluate(small_store, [f"tiny={tiny_export}"], out=out, **SMALL_RUN)


def test_sharded_cache_then_one_scoring_step_equals_a_single_run(
    small_store, tiny_export, single_run, tmp_path, capsys
):
    from stalign.bench import evaluate
    from stalign.cli import main

    for shard in ("0/2", "1/2"):
        rc = main(
            [
                "evaluate",
                "--pairs",
                str(small_store),
                "--encoder",
                f"tiny={tiny_export}",
                "--out",
                str(tmp_path / "sharded"),
                "--references",
                "histogram",
                "--seeds",
                "0",
                "--n-markers",
                "0",
                "0",
                "--cache",
                str(tmp_path / "cache"),
                "--shard",
                shard,
                "--no-progress",
            ]
        )
        assert rc == 0
    files = sorted(p.name for p in (tmp_path / "cache").rglob("*.h5"))
    assert files == ["MOB1.h5", "MOB1.h5", "MOB3.h5", "MOB3.h5"]  # 2 feature sets × 2
    cache = {"cache_dir": tmp_path / "cache"}

    def recompute(*args, **kwargs):  # the scoring step must read what the shards wrote
        pytest.fail("the scoring step recomputed features the shard jobs had cached")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FeatureCache, "_fill_sample", recompute)
        res = evaluate(
            small_store, [f"tiny={tiny_export}"], out=tmp_path / "sharded", **SMALL_RUN, **cache
        )
    pd.testing.assert_frame_equal(res.table, single_run.table)
    bad = ["evaluate", "--pairs", str(small_store), "--encoder", str(tiny_export), "--out"]
    assert main([*bad, str(tmp_path / "x"), "--shard", "2/2"]) != 0
    assert "--shard I/N needs 0 <= I < N" in capsys.readouterr().err


def _rank_worker(rank: int, world: int, port: int, store: str, export: str, out: str) -> None:
    from stalign.bench import evaluate

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    filled: list[str] = []  # the samples this rank embedded (per feature set)
    fill_sample = FeatureCache._fill_sample

    def recording(self, source, sample, fn, bar):
        filled.append(sample)
        return fill_sample(self, source, sample, fn, bar)

    FeatureCache._fill_sample = recording
    try:
        res = evaluate(store, [f"tiny={export}"], out=out, **SMALL_RUN)
        record = {"result": res is not None, "filled": sorted(set(filled))}
        Path(out, f"rank{rank}.json").write_text(json.dumps(record))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
@pytest.mark.xdist_group("ddp")  # two processes of its own: keep it on one worker
def test_two_process_gloo_evaluate_shares_the_embedding(
    small_store, tiny_export, single_run, tmp_path
):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    out.mkdir()
    mp.spawn(_rank_worker, args=(2, port, str(small_store), str(tiny_export), str(out)), nprocs=2)
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "summary.csv"), pd.read_csv(single_run.out / "summary.csv")
    )
    assert (out / "report.md").is_file()
    # rank 0 scores and reports; rank 1 only embeds its share: each rank embeds a
    # different, non-empty half of the samples (not rank 0 all of them)
    rank0, rank1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["result"] is True and rank1["result"] is False
    assert rank0["filled"] and rank1["filled"], (rank0, rank1)
    assert not set(rank0["filled"]) & set(rank1["filled"])
    assert sorted(rank0["filled"] + rank1["filled"]) == ["MOB1", "MOB3"]


TORCHRUN_SCRIPT = """
import json, os, sys
from pathlib import Path

import torch
from stalign import bench

torch.set_num_threads(1)
store, export, out = sys.argv[1:4]
settings = json.loads(sys.argv[4])
res = bench.evaluate(store, [f"tiny={export}"], out=out, **settings)
record = {"result": res is not None, "group_left": not torch.distributed.is_initialized()}
Path(out, f"rank{os.environ['RANK']}.json").write_text(json.dumps(record))
"""


@pytest.mark.slow
@pytest.mark.xdist_group("ddp")  # two processes of its own: keep it on one worker
def test_evaluate_under_torchrun_from_python_gives_the_single_process_numbers(
    small_store, tiny_export, single_run, tmp_path
):
    """bench.evaluate joins torchrun's group itself (nothing initialised by the caller)."""
    import subprocess
    import sys

    script = tmp_path / "run_evaluate.py"
    script.write_text(TORCHRUN_SCRIPT)
    out = tmp_path / "torchrun"
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in SMALL_RUN.items()}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    args = [str(script), str(small_store), str(tiny_export), str(out), json.dumps(settings)]
    proc = subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # rank 0 alone returned the result; each rank left the group evaluate joined
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks == [{"result": True, "group_left": True}, {"result": False, "group_left": True}]
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "runs.csv"),
        pd.read_csv(single_run.out / "runs.csv"),
        check_exact=False,
        rtol=0,
        atol=1e-6,
    )
    cached = sorted(p.name for p in (out / "cache").rglob("*.h5"))
    assert cached == ["MOB1.h5", "MOB1.h5", "MOB3.h5", "MOB3.h5"]  # both ranks' shares


LOCK_NAME = ".stalign-evaluate.lock"


def _folder_bytes(out: Path) -> dict[str, bytes]:
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in out.rglob("*")
        if p.is_file() and p.relative_to(out).parts[0] not in ("cache", LOCK_NAME)
    }


def test_a_rerun_killed_before_its_report_leaves_the_previous_set_whole(
    small_store, tiny_export, single_run, tmp_path, monkeypatch
):
    """Issue 21.3: a rerun stopped after its tables were written used to leave the new
    summary.csv/runs.csv beside the old report.md/results.json/figures."""
    import shutil

    from stalign.bench import _report, check_evaluation_outputs, evaluate

    out = tmp_path / "out"
    shutil.copytree(single_run.out, out, ignore=shutil.ignore_patterns("cache"))
    before = _folder_bytes(out)
    assert {"summary.csv", "report.md", "outputs.json"} <= set(before)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the run is stopped while writing its report

    monkeypatch.setattr(_report, "write_report", killed)
    cache = {"cache_dir": single_run.out / "cache"}
    rerun = {**SMALL_RUN, "references": ("pixels",)}  # other rows: other tables
    with pytest.raises(KeyboardInterrupt):
        evaluate(small_store, [f"tiny={tiny_export}"], out=out, **rerun, **cache)
    assert _folder_bytes(out) == before  # nothing of the stopped run is visible
    assert not list(out.glob(".staging-*"))
    check_evaluation_outputs(out)
    monkeypatch.undo()
    res = evaluate(small_store, [f"tiny={tiny_export}"], out=out, **rerun, **cache)
    manifest = check_evaluation_outputs(out)
    assert "8×8 pixels" in set(res.table["features"])
    assert set(manifest["files"]) == set(_folder_bytes(out)) - {"outputs.json"}
    assert not list(out.glob(".staging-*"))


def _stage(out: Path, run: str) -> Path:
    from stalign.bench._publish import staging_dir

    stage = staging_dir(out)
    for name in ("summary.csv", "report.md", "figures/a.png"):
        (stage / name).write_text(f"{run} {name}")
    return stage


def test_publishing_stopped_midway_is_marked_incomplete(tmp_path, monkeypatch):
    from stalign.bench import check_evaluation_outputs
    from stalign.bench._publish import publish

    out = tmp_path / "out"
    out.mkdir()
    publish(_stage(out, "old"), out, {"run": "old"})
    assert check_evaluation_outputs(out)["run"] == {"run": "old"}
    (out / "figures" / "a.png").write_text("edited")
    with pytest.raises(ValueError, match=r"a\.png: differs from outputs\.json"):
        check_evaluation_outputs(out)
    (out / "figures" / "a.png").write_text("old figures/a.png")

    calls = []
    real_replace = os.replace

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    stage = _stage(out, "new")
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="No space"):
        publish(stage, out, {"run": "new"})
    monkeypatch.undo()
    # one file of the new set moved in, the rest old, and no manifest: marked incomplete
    assert (out / "figures" / "a.png").read_text() == "new figures/a.png"
    assert (out / "summary.csv").read_text() == "old summary.csv"
    with pytest.raises(ValueError, match=r"no outputs\.json; the evaluation outputs there are"):
        check_evaluation_outputs(out)


def test_a_second_evaluate_on_one_folder_is_refused_up_front(small_store, tmp_path):
    from stalign._lock import FolderLockedError, folder_lock
    from stalign.bench import evaluate
    from stalign.bench._publish import LOCK_FILE

    with (
        folder_lock(tmp_path / LOCK_FILE, command="stalign evaluate"),
        pytest.raises(FolderLockedError),
    ):
        evaluate(small_store, [], out=tmp_path, references=("histogram",), progress=False)
