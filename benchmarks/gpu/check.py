"""The device check of issue 23: what a GPU run of stalign costs, and that it works.

On a machine with one NVIDIA GPU, within ``--budget-s`` (450 s by default, under the
issue's 8 minutes), it runs and records, part by part:

- ``env``: versions, the card, its dense bf16 peak (named table) and a measured
  bf16 matmul ceiling;
- ``store``: a JPEG pairs store built from the bundled MOB sections (232 px,
  0.5 µm/px), used by the parts below;
- ``cuda_tests``: ``pytest -m cuda`` on the test files that use the marker (fails
  when it selects no test);
- ``train_synthetic_<model>``: LoRA contrastive training of ViT-B/16 and ViT-L/16
  (random init, 224 px, bf16 autocast) on a batch held on the GPU: images/s, peak
  GPU memory, FLOPs of a real step (``torch.utils.flop_counter``) and MFU; default
  AdamW, fused AdamW, and channels-last;
- ``train_loader_<model>``: the same fed from the store by ``PairsDataset`` +
  ``DataLoader`` workers, beside the loader's own rate;
- ``embed``: ``tl.write_embeddings`` of 20,480 images with workers (bf16, 224 px);
- ``cli_train``: one ``stalign train --device cuda --amp bf16`` of 10 steps;
- ``ddp``: a 2-process DDP run on the one GPU with NCCL if possible (else why not),
  and gloo beside it;
- ``train_compiled_<model>``: ``torch.compile`` + fused AdamW (last: the slowest).

Each part runs in a worker process and is written to ``OUT/results.json`` as it
finishes; a part that fails, crashes the worker or passes its time limit is recorded
as such and the worker restarts with the next part. ``OUT/results.md`` holds the
tables at the end (also printed). Exit status 0 when no part failed.

``--cpu`` runs the same parts with a tiny model on the CPU in seconds (what
``tests/test_gpu_check.py`` runs, so the script cannot rot); the CUDA-only branches
are the functions of ``check_cuda.py``, and NCCL is skipped with that reason.

Usage::

    python benchmarks/gpu/check.py --out OUT [--cpu] [--parts env store ...]
        [--budget-s 450] [--peak-tflops T] [--work DIR]

On the device machine use ``benchmarks/gpu/check.sh`` (README.md beside this file).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from check_profiles import PROFILES, Profile, peak_bf16_tflops, src_env  # noqa: E402
from check_report import render  # noqa: E402

POLL_S = 0.5
MIN_START_S = 10.0  # a part is not started with less of the budget left


# ------------------------------------------------------------------ files
def clean(value: Any) -> Any:
    """``value`` with non-finite floats replaced by ``None`` (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as strict JSON, atomically (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(clean(data), indent=2, allow_nan=False, default=str) + "\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------ worker
def resolve_peak(args: argparse.Namespace, profile: Profile) -> tuple[str, float] | None:
    """``(source, TFLOP/s)``: ``--peak-tflops``, else the table's entry for the GPU."""
    if args.peak_tflops is not None:
        return ("--peak-tflops", float(args.peak_tflops))
    if profile.device != "cuda":
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    found = peak_bf16_tflops(torch.cuda.get_device_name(0))
    return (f"datasheet, {found[0]} (dense bf16)", found[1]) if found else None


def run_part(ctx: Any, name: str) -> dict[str, Any]:
    """Run one part; return its record (status, wall time, result or error)."""
    import check_parts as P

    record: dict[str, Any] = {"status": "ok"}
    t = time.perf_counter()
    try:
        record["result"] = P.part_function(name)(ctx)
    except P.Skipped as e:
        record.update(status="skipped", reason=str(e))
    except P.CheckFailed as e:
        record.update(status="failed", error=str(e), result=e.result)
    except Exception as e:
        record.update(status="failed", error=f"{type(e).__name__}: {e}"[:2000])
        record["traceback"] = traceback.format_exc()[-4000:]
    finally:
        P.free_memory(ctx.device)
    record["wall_s"] = time.perf_counter() - t
    return record


def worker(args: argparse.Namespace) -> int:
    """Run ``args.parts`` in order, each record into ``WORK/parts/<name>.json``."""
    import check_parts as P

    profile = PROFILES[args.profile]
    work = Path(args.work)
    ctx = P.Context(profile=profile, repo=REPO, work=work, peak=resolve_peak(args, profile))
    parts_dir = work / "parts"
    for name in args.parts:
        (parts_dir / f"{name}.started").write_text(str(time.time()))
        write_json(parts_dir / f"{name}.json", run_part(ctx, name))
    return 0


# ------------------------------------------------------------------ orchestrator
class Orchestrator:
    """Run the parts in worker processes, enforce time limits, keep ``results.json`` current."""

    def __init__(self, args: argparse.Namespace, profile: Profile) -> None:
        self.args, self.profile = args, profile
        self.out = Path(args.out)
        self.work = Path(args.work)
        self.parts_dir = self.work / "parts"
        self.start = time.time()
        self.budget = float(args.budget_s or profile.budget_s)
        self.deadline = self.start + self.budget
        self.results: dict[str, Any] = {
            "meta": {
                "mode": profile.name,
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
                "started": datetime.now(UTC).isoformat(timespec="seconds"),
                "budget_s": self.budget,
                "parts_planned": list(args.parts),
            },
            "parts": {},
        }

    def save(self) -> None:
        self.results["meta"]["wall_s"] = time.time() - self.start
        write_json(self.out / "results.json", self.results)
        (self.out / "results.md").write_text(render(self.results))

    def record(self, name: str, rec: dict[str, Any]) -> None:
        self.results["parts"][name] = rec
        self.save()
        note = rec.get("reason") or rec.get("error") or ""
        print(
            f"[{time.time() - self.start:6.1f} s] {name}: {rec['status']} {note[:200]}", flush=True
        )

    def spawn(self, parts: list[str]) -> subprocess.Popen:
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            "--profile",
            self.profile.name,
            "--out",
            str(self.out),
            "--work",
            str(self.work),
            "--parts",
            *parts,
        ]
        if self.args.peak_tflops is not None:
            cmd += ["--peak-tflops", str(self.args.peak_tflops)]
        with (self.out / "worker.log").open("a") as log:  # the child keeps its own handle
            return subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=src_env(REPO), start_new_session=True
            )

    def collect(self, pending: list[str]) -> None:
        """Move the finished parts (in order) from ``pending`` into the results."""
        while pending and (self.parts_dir / f"{pending[0]}.json").is_file():
            name = pending.pop(0)
            self.record(name, json.loads((self.parts_dir / f"{name}.json").read_text()))

    def overdue(self, name: str) -> str | None:
        """Why the running part ``name`` must stop now (``None`` while it may go on)."""
        marker = self.parts_dir / f"{name}.started"
        if not marker.is_file():
            return None
        started = float(marker.read_text() or time.time())
        now = time.time()
        if now - started > self.profile.timeout(name):
            return f"passed its time limit of {self.profile.timeout(name):.0f} s"
        if now > self.deadline:
            return f"the check's budget of {self.budget:.0f} s ran out"
        return None

    def stop(self, proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def watch(self, proc: subprocess.Popen, pending: list[str]) -> None:
        """Follow one worker until it ends or is stopped; record what it did."""
        while True:
            self.collect(pending)
            if not pending:
                proc.wait()
                return
            name = pending[0]
            why = self.overdue(name)
            if why is not None:
                self.stop(proc)
                self.collect(pending)
                if pending and pending[0] == name:
                    pending.pop(0)
                    self.record(
                        name,
                        {
                            "status": "timeout",
                            "error": why,
                            "wall_s": time.time()
                            - float((self.parts_dir / f"{name}.started").read_text()),
                        },
                    )
                return
            if proc.poll() is not None:
                self.collect(pending)
                if pending and pending[0] == name:
                    pending.pop(0)
                    self.record(
                        name,
                        {
                            "status": "crashed",
                            "error": f"the worker exited with {proc.returncode} during this part; "
                            f"end of worker.log: {self.log_tail()}",
                        },
                    )
                return
            time.sleep(POLL_S)

    def log_tail(self, n: int = 1500) -> str:
        path = self.out / "worker.log"
        return path.read_text(errors="replace")[-n:] if path.is_file() else ""

    def run(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        for old in self.parts_dir.iterdir():  # records of an earlier run in the same --work
            old.unlink()
        pending = list(self.args.parts)
        self.save()
        while pending:
            if self.deadline - time.time() < MIN_START_S:
                for name in pending:
                    self.record(
                        name,
                        {
                            "status": "not_run",
                            "reason": f"the check's budget of {self.budget:.0f} s was spent",
                        },
                    )
                break
            proc = self.spawn(pending)
            try:
                self.watch(proc, pending)
            finally:  # also on Ctrl-C or a bug here: never leave a worker behind
                if proc.poll() is None:
                    self.stop(proc)
        self.results["meta"]["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
        self.save()
        print(render(self.results), flush=True)
        bad = [n for n, r in self.results["parts"].items() if r["status"] not in ("ok", "skipped")]
        return 1 if bad else 0


# ------------------------------------------------------------------ command line
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--out", required=True, help="folder for results.json, results.md and worker.log"
    )
    p.add_argument(
        "--cpu", action="store_true", help="the CPU mode: tiny model, a few steps, tiny store"
    )
    p.add_argument("--parts", nargs="+", help="run only these parts, in this order (default: all)")
    p.add_argument(
        "--budget-s",
        type=float,
        help="wall-clock budget of the whole check in s (default: the profile's, 450 s on the GPU)",
    )
    p.add_argument(
        "--peak-tflops",
        type=float,
        help="dense bf16 peak (TFLOP/s) for MFU, instead of the card table",
    )
    p.add_argument(
        "--work", help="scratch folder: store, runs, part records (default: a new temporary folder)"
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--profile", choices=sorted(PROFILES), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.profile = args.profile or ("cpu" if args.cpu else "gpu")
    known = PROFILES[args.profile].parts()
    unknown = [x for x in args.parts or [] if x not in known]
    if unknown:
        p.error(f"--parts: unknown {unknown}; the {args.profile} profile has {known}")
    args.parts = args.parts or known
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    args.work = args.work or tempfile.mkdtemp(prefix="stalign-gpu-check-")
    return Orchestrator(args, PROFILES[args.profile]).run()


if __name__ == "__main__":
    sys.exit(main())
