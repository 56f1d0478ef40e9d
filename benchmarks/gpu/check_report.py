"""The markdown summary of a device check's ``results.json`` (no torch needed)."""

from __future__ import annotations

from typing import Any


def _num(value: Any, digits: int = 0) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _sig(value: float | None) -> str:
    """Three significant digits (FLOPs and rates span 1e-3 to 1e3 across the two modes)."""
    if value is None:
        return "—"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _pct(value: Any) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def _summary(parts: dict[str, dict]) -> list[str]:
    lines = ["| part | status | wall s | note |", "|---|---|---|---|"]
    for name, rec in parts.items():
        note = rec.get("reason") or rec.get("error") or ""
        note = note.replace("|", "/").replace("\n", " ")[:160]
        lines.append(f"| {name} | {rec['status']} | {_num(rec.get('wall_s'), 1)} | {note} |")
    return lines


def training_rows(parts: dict[str, dict]) -> list[dict[str, Any]]:
    """Every training measurement (synthetic, loader-fed, compiled) as a flat row."""
    rows = []
    for name, rec in parts.items():
        if not name.startswith("train_") or not rec.get("result"):
            continue
        res = rec["result"]
        for row in res.get("rows", []):
            rows.append(
                {
                    "part": name,
                    "model": res["model"],
                    "feed": res["feed"],
                    **row,
                    "flops_per_image": res.get("flops_per_image"),
                }
            )
    return rows


def _training(parts: dict[str, dict]) -> list[str]:
    rows = training_rows(parts)
    if not rows:
        return ["No training measurement finished."]
    lines = [
        "| model | feed | variant | batch | images/s | step ms | peak GiB | GFLOP/image "
        "| TFLOP/s | MFU | loader alone images/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['feed']} | {r['variant']} | failed: {r['error']} |")
            continue
        gflop = r["flops_per_image"] / 1e9 if r.get("flops_per_image") else None
        lines.append(
            f"| {r['model']} | {r['feed']} | {r['variant']} | {r['batch']} | "
            f"{_num(r['images_per_s'])} | {_num(r['step_ms'], 1)} | {_num(r['peak_mem_gib'], 2)} | "
            f"{_sig(gflop)} | {_sig(r.get('achieved_tflops'))} | {_pct(r.get('mfu'))} | "
            f"{_num(r.get('loader_alone_images_per_s'))} |"
        )
    return lines


def _training_notes(parts: dict[str, dict]) -> list[str]:
    """FLOPs ratio, compilation time, out-of-memory retries and the loader's share."""
    notes = []
    for name, rec in parts.items():
        res = rec.get("result") or {}
        if not name.startswith("train_") or not res:
            continue
        if res.get("step_over_forward"):
            notes.append(
                f"- {name}: a training step counts {res['step_over_forward']:.2f}× the FLOPs of "
                f"its forward (LoRA: no weight gradients for the frozen weights)"
                + (f"; **{res['flops_note']}**" if res.get("flops_note") else "")
            )
        if "first_step_s (compilation)" in res:
            notes.append(
                f"- {name}: first step (compilation) {res['first_step_s (compilation)']:.0f} s"
            )
        for row in res.get("rows", []):
            if row.get("oom_at"):
                notes.append(f"- {name} {row['variant']}: out of memory at batch {row['oom_at']}")
    notes += _loader_share(parts)
    return ["", *notes] if notes else []


def _loader_share(parts: dict[str, dict]) -> list[str]:
    """The loader-fed rate as a share of the synthetic rate of the same model and optimiser."""
    notes = []
    for name, rec in parts.items():
        if not name.startswith("train_loader_") or not rec.get("result"):
            continue
        synthetic = _result(parts, name.replace("train_loader_", "train_synthetic_"))
        fed = rec["result"]["rows"][0]
        base = next((r for r in synthetic.get("rows", []) if r["variant"] == fed["variant"]), None)
        if base and "images_per_s" in base:
            share = 100 * fed["images_per_s"] / base["images_per_s"]
            notes.append(
                f"- {name}: fed from the store at {share:.0f} % "
                f"of the synthetic rate; the loader alone delivers "
                f"{_num(fed['loader_alone_images_per_s'])} images/s"
            )
    return notes


def _embedding(res: dict[str, Any]) -> list[str]:
    if "images_per_s" not in res:
        return ["Not measured (see the part's status)."]
    return [
        "| model | images | batch | workers | precision | images/s (write_embeddings) "
        "| images/s (in-memory batch) | peak GiB | MFU |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {res['model']} | {_num(res['images'])} | {res['batch']} | {res['workers']} | "
        f"{res['precision']} | {_num(res['images_per_s'])} | "
        f"{_num(res['in_memory_images_per_s'])} | {_num(res['peak_mem_gib'], 2)} | "
        f"{_pct(res.get('mfu'))} |",
    ]


def _result(parts: dict[str, dict], name: str) -> dict[str, Any]:
    """The part's result (also of a failed check), or an empty dict."""
    return (parts.get(name) or {}).get("result") or {}


def _tests_line(tests: dict[str, Any]) -> list[str]:
    if "selected" not in tests:
        return []
    counts = ", ".join(f"{tests[k]} {k}" for k in ("passed", "failed", "errors", "skipped"))
    files = ", ".join(tests["files"])
    return [f"- CUDA tests (`-m cuda`): {tests['selected']} selected: {counts} ({files})."]


def _cli_line(cli: dict[str, Any]) -> list[str]:
    if "steps" not in cli:
        return []
    return [
        f"- `stalign train`: {cli['steps']} steps in {cli['wall_s']:.1f} s wall (start-up, "
        f"statistics, validation and checkpoints included), {_num(cli.get('images_per_s'))} "
        f"images/s in the logged steps; `{cli['command']}`."
    ]


def _ddp_lines(ddp: dict[str, Any]) -> list[str]:
    lines = []
    for backend, a in ddp.get("attempts", {}).items():
        what = f"- DDP, 2 processes, {backend}"
        if "skipped" in a:
            lines.append(f"{what}: not run ({a['skipped']}).")
        elif a.get("ok"):
            lines.append(
                f"{what} on {a['device']}: equal weights on both ranks ({a['wall_s']:.1f} s)."
            )
        else:
            errors = "; ".join(r.get("error", "") for r in a.get("ranks", []) if not r.get("ok"))
            lines.append(f"{what} on {a['device']}: **failed**: {errors[:400]}")
    return lines


def _others(parts: dict[str, dict]) -> list[str]:
    return [
        *_tests_line(_result(parts, "cuda_tests")),
        *_cli_line(_result(parts, "cli_train")),
        *_ddp_lines(_result(parts, "ddp")),
    ]


def _header(meta: dict[str, Any], env: dict[str, Any]) -> list[str]:
    mm = env.get("matmul") or {}
    return [
        f"# Device check ({meta['mode']} mode)",
        "",
        f"- device: {env.get('device_name', 'unknown')}; torch {env.get('torch', '?')}, "
        f"CUDA {env.get('cuda', '—')}, driver {env.get('driver', '—')}, "
        f"Python {env.get('python', '?')}",
        f"- dense bf16 peak used for MFU: {_num(env.get('peak_bf16_tflops'))} TFLOP/s "
        f"({env.get('peak_source', '—')}); measured matmul ceiling: "
        f"{_sig(mm.get('tflops'))} TFLOP/s ({mm.get('dtype', '?')}, n = {mm.get('n', '?')})",
        f"- started {meta['started']}, wall {_num(meta.get('wall_s'), 0)} s of a "
        f"{meta['budget_s']:.0f} s budget; commit {env.get('git_commit', '?')}",
        f"- command: `{meta['command']}`",
    ]


def render(results: dict[str, Any]) -> str:
    """The report: what ran where, a summary per part, the training and embedding tables."""
    meta, parts = results["meta"], results["parts"]
    env = _result(parts, "env")
    body = [
        "",
        "## Parts",
        "",
        *_summary(parts),
        "",
        "## LoRA contrastive training",
        "",
        *_training(parts),
        *_training_notes(parts),
        "",
        "## Embedding (`tl.write_embeddings`)",
        "",
        *_embedding(_result(parts, "embed")),
        "",
        "## Other checks",
        "",
        *(_others(parts) or ["None finished."]),
        "",
    ]
    return "\n".join(_header(meta, env) + body)
