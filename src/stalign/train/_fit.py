"""The training loop: single process or DDP (``torchrun``), exact resume, early stopping."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from .._lock import FolderLockedError, folder_lock
from .._utils import atomic_path
from ._checkpoint import (
    HISTORY_FILE,
    MODEL_FILE,
    OPTIM_FILE,
    STATE_FILE,
    ResumeState,
    build_model,
    clear_previous_run,
    latest_checkpoint,
    load_weights,
    prune_checkpoints,
    read_resume_checkpoint,
    read_tensors,
    save_checkpoint,
    save_rng,
    set_rng_state,
    weights_step,
)
from ._config import STRUCTURAL_FIELDS, TrainConfig
from ._data import (
    GlobalBatchSampler,
    augment_batch,
    collate_pairs,
    crop_batch,
    image_statistics,
    pathway_statistics,
)
from ._loss import contrastive_loss, gather_features, pathway_soft_targets
from ._metrics import retrieval_metrics
from ._model import AlignmentModel

__all__ = ["FitResult", "evaluate", "fit"]

logger = logging.getLogger(__name__)

EARLY_STOPPING_METRIC = "val_recall@5"
LOCK_FILE = ".lock"  # in output_dir, held while a run writes there (as in a pairs store)


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes
    ----------
    model
        The trained model: the best validation weights when early stopping was on and a
        validation set was given (kept in memory, so also without ``output_dir``, and
        on every DDP rank); otherwise the final weights.
    history
        One row per logged training step / evaluation (the content of ``log.csv``).
    best_step, best_metric
        Step and value of the best validation recall@5 (``None`` without validation).
    steps
        Optimiser steps done in total.
    stopped_early
        Whether early stopping ended the run.
    output_dir, last_checkpoint, best_checkpoint, log_csv, curves_png
        Written paths (``None`` when ``output_dir`` is ``None``).
    """

    model: AlignmentModel
    history: pd.DataFrame
    best_step: int | None = None
    best_metric: float | None = None
    steps: int = 0
    stopped_early: bool = False
    output_dir: Path | None = None
    last_checkpoint: Path | None = None
    best_checkpoint: Path | None = None
    log_csv: Path | None = None
    curves_png: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------ helpers
def _dist_info() -> tuple[int, int, bool]:
    """(rank, world_size, initialised_here); initialises from torchrun's env if needed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        return dist.get_rank(), dist.get_world_size(), True
    return 0, 1, False


def _device(config: TrainConfig, world: int) -> torch.device:
    if config.device != "auto":
        return torch.device(config.device)
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0")) if world > 1 else 0
        return torch.device("cuda", local)
    return torch.device("cpu")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (third-party code may use it)
    torch.manual_seed(seed)


def _schedule(config: TrainConfig, total_steps: int):
    warmup = round(config.warmup_fraction * total_steps)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine

    return factor


def _optimizer(model: AlignmentModel, config: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad or name == "logit_scale":
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay, "lr": config.lr},
        {"params": no_decay, "weight_decay": 0.0, "lr": config.lr},
    ]
    if config.learn_temperature:
        groups.append(
            {"params": [model.logit_scale], "weight_decay": 0.0, "lr": config.temperature_lr}
        )
    return torch.optim.AdamW([g for g in groups if g["params"]], betas=(0.9, 0.98), eps=1e-6)


def _autocast(config: TrainConfig, device: torch.device):
    use_bf16 = config.amp == "bf16" or (config.amp == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _patch_px(dataset: Dataset) -> int:
    img = torch.as_tensor(dataset[0]["image"])
    if img.ndim != 3 or img.shape[0] != 3:
        msg = f"dataset items must hold 'image' as float (3, H, W), got shape {tuple(img.shape)}"
        raise ValueError(msg)
    return int(img.shape[-1])


def _prepare(
    images: torch.Tensor,
    config: TrainConfig,
    device: torch.device,
    generator: torch.Generator | None,
    slot: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Crop (random with ``generator``, centred without), resize, augment."""
    images = images.to(device, non_blocking=True)
    images = crop_batch(
        images, jitter_px=config.jitter_px, out_px=config.img_size, generator=generator, slot=slot
    )
    if generator is not None and config.augment:
        images = augment_batch(images, generator, color_jitter=config.color_jitter, slot=slot)
    return images


def _loader(
    dataset: Dataset, batches: list[list[int]], config: TrainConfig, pin: bool, seed: int = 0
):
    # an own generator: creating the iterator must not consume the global torch RNG
    # (dropout draws from it, and exact resume restores it mid-epoch)
    return DataLoader(
        dataset,
        batch_sampler=batches,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=collate_pairs,
        num_workers=config.num_workers,
        pin_memory=pin,
        persistent_workers=False,
    )


@torch.no_grad()
def evaluate(
    model: AlignmentModel,
    dataset: Dataset,
    config: TrainConfig,
    *,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Compute the validation contrastive loss and image→profile retrieval on ``dataset``.

    The loss is averaged over batches of ``config.batch_size`` drawn in a fixed random
    order (comparable to the training loss); retrieval ranks each spot's profile
    among all ``len(dataset)`` profiles.

    Returns
    -------
    ``val_loss``, ``val_recall@k``/``val_chance@k`` (k = 1, 5, 10), ``val_median_rank``,
    ``val_profile_r``.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    n = len(dataset)
    order = list(range(n))
    loader = _loader(
        dataset, [order[s : s + 256] for s in range(0, n, 256)], config, device.type == "cuda"
    )
    zi, zp, pw = [], [], []
    for batch in loader:
        images = _prepare(batch["image"], config, device, None)
        with _autocast(config, device):
            a, b = model(images, batch["pathways"].to(device))
        zi.append(a.float().cpu())
        zp.append(b.float().cpu())
        pw.append(batch["pathways"].float())
    zi_t, zp_t, pw_t = torch.cat(zi), torch.cat(zp), torch.cat(pw)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    losses, weights = [], []
    scale = model.logit_scale.detach().float().cpu()
    for s in range(0, n, config.batch_size):
        idx = perm[s : s + config.batch_size]
        if len(idx) < 2:
            continue
        losses.append(float(contrastive_loss(zi_t[idx], zp_t[idx], scale)))
        weights.append(len(idx))
    metrics = retrieval_metrics(zi_t, zp_t, pw_t)
    out = {"val_loss": float(np.average(losses, weights=weights)) if losses else float("nan")}
    out.update({f"val_{k}": v for k, v in metrics.items()})
    model.train(was_training)
    return out


def _check_resume_config(saved: TrainConfig, config: TrainConfig, path: Path) -> None:
    diffs = [f for f in STRUCTURAL_FIELDS if getattr(saved, f) != getattr(config, f)]
    if diffs:
        details = ", ".join(f"{f}: {getattr(saved, f)!r} → {getattr(config, f)!r}" for f in diffs)
        msg = f"cannot resume from {str(path)!r}: the config changed ({details})"
        raise ValueError(msg)


def _write_history(rows: list[dict[str, Any]], path: Path) -> None:
    with atomic_path(path, suffix=".csv") as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)


@contextlib.contextmanager
def _output_folder_lock(config: TrainConfig, rank: int, world: int):
    """Hold ``config.output_dir`` for this run (rank 0 locks; every rank learns the outcome).

    A second run on the same folder is refused at once instead of mixing its config,
    log and checkpoints into the first run's. The lock dies with its process.
    """
    if config.output_dir is None:
        yield
        return
    with contextlib.ExitStack() as stack:
        error: Exception | None = None
        if rank == 0:
            out = Path(config.output_dir)
            what = f"training output folder {out}"
            try:
                out.mkdir(parents=True, exist_ok=True)
                stack.enter_context(
                    folder_lock(out / LOCK_FILE, command="stalign train", what=what)
                )
            except (FolderLockedError, OSError) as e:  # in use, or not writable
                error = e  # raised on every rank, so none waits for the others forever
        if world > 1:
            import torch.distributed as dist

            box = [str(error) if error is not None else None]
            dist.broadcast_object_list(box, src=0)
            if box[0] is not None and error is None:
                error = FolderLockedError(box[0])
        if error is not None:
            raise error
        yield


def _resume_dir(config: TrainConfig, out_dir: Path | None) -> Path | None:
    """Return the checkpoint to resume from: the latest in ``out_dir`` or the given one."""
    if config.resume == "auto":
        return latest_checkpoint(out_dir) if out_dir is not None else None
    if config.resume is None:
        return None
    resume_dir = Path(config.resume)
    if not (resume_dir / STATE_FILE).is_file():
        msg = (
            f"cannot resume from {str(resume_dir)!r}: {STATE_FILE} is missing "
            "(incomplete checkpoint?)"
        )
        raise FileNotFoundError(msg)
    return resume_dir


def _restore(
    resume: ResumeState,
    model: AlignmentModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
) -> None:
    """Put the weights, optimiser, scheduler and RNG states of ``resume`` in place."""
    load_weights(model, resume.weights, resume.path / MODEL_FILE)
    try:
        optimizer.load_state_dict(resume.optimizer)
        scheduler.load_state_dict(resume.scheduler)
    except (ValueError, KeyError, RuntimeError) as e:
        msg = f"{str(resume.path / OPTIM_FILE)!r} does not fit this run's optimiser: {e}"
        raise ValueError(msg) from e
    set_rng_state(resume.rng, generator)


def _trainable_names(model: torch.nn.Module) -> set[str]:
    """Names of what training changes: trainable parameters and all buffers."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return names | {n for n, _ in model.named_buffers()}


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copy what training changes (:func:`_trainable_names`) to the CPU."""
    names = _trainable_names(model)
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items() if k in names}


def _load_trainable(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:  # pragma: no cover - the state came from this model
        msg = f"best weights hold keys the model lacks: {result.unexpected_keys[:5]}"
        raise RuntimeError(msg)


def _best_from_disk(
    out_dir: Path | None, best_step: int | None, model: AlignmentModel
) -> dict[str, torch.Tensor] | None:
    """On resume: the best weights saved in ``out_dir/best`` if they are those of ``best_step``."""
    if out_dir is None or best_step is None:
        return None
    best = out_dir / "best"
    if not (best / MODEL_FILE).is_file() or weights_step(best / MODEL_FILE) != best_step:
        return None  # written after the checkpoint we resume from; replay rewrites it
    keep = _trainable_names(model)
    return {k: v for k, v in read_tensors(best / MODEL_FILE).items() if k in keep}


# ------------------------------------------------------------------------ fit
def _build(
    config: TrainConfig,
    train_dataset: Dataset,
    val_dataset: Dataset | None,
    device: torch.device,
    world: int,
    *,
    log: bool,
) -> tuple[AlignmentModel, dict[str, Any]]:
    """Compute the cohort statistics and build the model; return it with its metadata."""
    patch_px = _patch_px(train_dataset)
    n_pathways = int(torch.as_tensor(train_dataset[0]["pathways"]).numel())
    input_px = config.img_size or patch_px - 2 * config.jitter_px
    pw_mean, pw_std = pathway_statistics(train_dataset, seed=config.seed)
    img_mean = img_std = None
    if config.normalization == "cohort":
        img_mean, img_std = image_statistics(
            train_dataset,
            max_items=config.stats_max_items,
            seed=config.seed,
            jitter_px=config.jitter_px,
        )
    model = build_model(
        config,
        n_pathways,
        image_mean=img_mean,
        image_std=img_std,
        pathway_mean=pw_mean,
        pathway_std=pw_std,
        input_px=input_px,
    ).to(device)
    meta: dict[str, Any] = {
        "n_pathways": n_pathways,
        "pathway_names": list(getattr(train_dataset, "pathway_names", []) or []),
        "patch_px": patch_px,
        "input_px": input_px,
        "jitter_px": config.jitter_px,
        "image_mean": list(model.image_tower.encoder.normalization[0]),
        "image_std": list(model.image_tower.encoder.normalization[1]),
        "encoder": model.image_tower.encoder.config.to_dict(),
        "n_train": len(train_dataset),
        "n_val": len(val_dataset) if val_dataset is not None else 0,
        "world_size": world,
    }
    lora = getattr(model.image_tower.encoder, "lora_summary", None)
    from ..models import count_parameters

    trainable, total = count_parameters(model)
    meta["trainable_params"], meta["total_params"] = trainable, total
    if log:
        logger.info(
            "%s; model: %s of %s parameters trainable (%.2f %%)",
            lora or "no LoRA",
            f"{trainable:,}",
            f"{total:,}",
            100 * trainable / total,
        )
    return model, meta


def _write_outputs(result: FitResult, out_dir: Path) -> None:
    """Point ``result`` at the run's log and best checkpoint; draw ``curves.png``."""
    result.log_csv = out_dir / "log.csv"
    if (out_dir / "best").is_dir():
        result.best_checkpoint = out_dir / "best"
    if len(result.history):
        import matplotlib.pyplot as plt

        from ..pl import training_curves

        result.curves_png = out_dir / "curves.png"
        plt.close(training_curves(result.history, save=result.curves_png))


def fit(
    config: TrainConfig,
    train_dataset: Dataset,
    val_dataset: Dataset | None = None,
) -> FitResult:
    """Align an image encoder with molecular profiles by symmetric InfoNCE.

    Parameters
    ----------
    config
        All settings (see :class:`TrainConfig`).
    train_dataset, val_dataset
        ``Dataset`` s whose items are dicts with ``'image'`` (float32 ``(3, H, W)`` in
        ``[0, 1]``) and ``'pathways'`` (float32 ``(P,)``), e.g.
        :class:`stalign.pairs.PairsDataset` or :class:`TensorPairsDataset`.

    Returns
    -------
    A :class:`FitResult`. With ``config.output_dir`` set, the run writes there:
    ``config.json``, ``log.csv`` (step, epoch, lr, train_loss, temperature, val_* and
    images_per_s), ``curves.png``, ``checkpoints/step_<n>/`` (``model.safetensors``,
    ``config.json``, ``model.json``, ``state.json``, ``optimizer.pt``,
    ``rng_rank<r>.pt``) and ``best/`` (best validation recall@5).

    Raises
    ------
    FolderLockedError
        Another live process trains into the same ``output_dir`` (see
        ``stalign._lock``); nothing is written.
    ValueError, FileNotFoundError
        A bad dataset, or a resume checkpoint that is incomplete, corrupt or from a
        run with other structural settings (the message names the file).

    Notes
    -----
    The run holds a lock on ``output_dir`` (``.lock``) while it runs; the lock
    dies with the process, so a crashed run never blocks the next.

    Under ``torchrun`` (``WORLD_SIZE > 1``) the process group is initialised here
    (NCCL on GPU, gloo on CPU); ``batch_size`` is the global batch, split across ranks,
    and embeddings are gathered across ranks for the loss, so the result matches a
    single process with the same global batch. Negatives are drawn from each
    ``batch_size`` micro-batch (gradient accumulation does not enlarge them).
    """
    if not isinstance(config, TrainConfig):
        msg = f"fit: config must be a TrainConfig, got {type(config).__name__}"
        raise TypeError(msg)
    if len(train_dataset) == 0:
        msg = "fit: the training dataset is empty"
        raise ValueError(msg)
    from ..models import get_encoder_config

    get_encoder_config(config.encoder)  # an unknown name or missing folder: before any work
    rank, world, init_here = _dist_info()
    try:
        with _output_folder_lock(config, rank, world):
            return _fit(config, train_dataset, val_dataset, rank, world)
    finally:
        if init_here:
            import torch.distributed as dist

            dist.destroy_process_group()


def _fit(
    config: TrainConfig,
    train_dataset: Dataset,
    val_dataset: Dataset | None,
    rank: int,
    world: int,
) -> FitResult:
    import torch.distributed as dist

    device = _device(config, world)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    out_dir = Path(config.output_dir) if config.output_dir else None
    is_main = rank == 0
    _seed_everything(config.seed)

    # ---- resume point: every file read and checked before any statistics or model
    resume_dir = _resume_dir(config, out_dir)
    resume: ResumeState | None = None
    if resume_dir is not None:
        saved = TrainConfig.from_file(resume_dir / "config.json").replace(resume=None)
        _check_resume_config(saved, config, resume_dir)
        resume = read_resume_checkpoint(resume_dir, rank)
    elif out_dir is not None and is_main:
        clear_previous_run(out_dir)  # a fresh run: nothing of an earlier one may mix in

    model, meta = _build(config, train_dataset, val_dataset, device, world, log=is_main)

    sampler = GlobalBatchSampler(
        len(train_dataset), config.batch_size, seed=config.seed, rank=rank, world_size=world
    )
    steps_per_epoch = len(sampler) // config.grad_accum_steps
    if steps_per_epoch == 0:
        msg = (
            f"one epoch has {len(sampler)} batches of {config.batch_size}, fewer than "
            f"grad_accum_steps={config.grad_accum_steps}"
        )
        raise ValueError(msg)
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    eval_every = config.eval_every_steps or steps_per_epoch
    optimizer = _optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config, total_steps))
    # the same stream on every rank: each draws for the global batch and takes its slice
    generator = torch.Generator().manual_seed(config.seed * 7919)

    step, micro_done = 0, 0  # micro_done: micro-batches consumed in the current epoch
    best_metric: float | None = None
    best_step: int | None = None
    bad_evals = 0
    history: list[dict[str, Any]] = []
    loss_window: list[float] = []  # training losses since the last log row
    n_window = 0  # images since the last log row
    # early stopping: a CPU copy of the best weights, kept by every rank
    best_state: dict[str, torch.Tensor] | None = None
    keep_best = config.early_stopping_patience is not None and val_dataset is not None
    if resume is not None:
        _restore(resume, model, optimizer, scheduler, generator)
        st = resume.state
        step, micro_done = int(st["step"]), int(st["micro_in_epoch"])
        best_metric, best_step, bad_evals = st["best_metric"], st["best_step"], st["bad_evals"]
        loss_window = [float(x) for x in st.get("loss_window", [])]
        n_window = int(st.get("images_in_window", 0))
        if resume.history is not None:
            history = [r for r in resume.history if r["step"] <= step]
        elif out_dir is not None and (out_dir / "log.csv").is_file():
            old = pd.read_csv(out_dir / "log.csv")
            history = old[old["step"] <= step].to_dict("records")
        if keep_best:
            best_state = _best_from_disk(out_dir, best_step, model)
        if is_main:
            logger.info("resumed from %s at step %d", resume.path, step)
        del resume  # the tensors are in the model and optimiser now

    ddp_model: torch.nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    if out_dir is not None and is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        config.to_json(out_dir / "config.json")

    if val_dataset is not None and step == 0 and is_main:
        # the starting point, so the log and curves show what training changed
        # (logged only: it never counts as a "best" checkpoint)
        metrics = evaluate(model, val_dataset, config, device=device)
        history.append({"step": 0, "epoch": 0.0, **metrics})
        if out_dir is not None:
            _write_history(history, out_dir / "log.csv")
        logger.info(
            "step 0 (before training): %s",
            ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if "chance" not in k),
        )

    def checkpoint(tag_step: int, micro: int) -> Path | None:
        if out_dir is None:
            return None
        d = out_dir / "checkpoints" / f"step_{tag_step:08d}"
        if is_main:
            state = {
                "step": tag_step,
                "epoch": tag_step // steps_per_epoch,
                "micro_in_epoch": micro,
                "best_metric": best_metric,
                "best_step": best_step,
                "bad_evals": bad_evals,
                "total_steps": total_steps,
                "loss_window": loss_window,
                "images_in_window": n_window,
            }
            d.mkdir(parents=True, exist_ok=True)
            _write_history(history, d / HISTORY_FILE)
            with atomic_path(d / OPTIM_FILE) as tmp:
                torch.save(
                    {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp
                )
        if world > 1:
            dist.barrier()
        d.mkdir(parents=True, exist_ok=True)
        save_rng(d, rank, generator)
        if world > 1:
            dist.barrier()
        if is_main:
            # state.json last: a checkpoint without it is incomplete and never resumed
            save_checkpoint(d, model=model, config=config, meta=meta, state=state)
            prune_checkpoints(out_dir, config.keep_checkpoints)
        return d

    pbar = None
    if is_main and config.progress:
        from tqdm.auto import tqdm

        pbar = tqdm(total=total_steps, initial=step, desc="train", unit="step", leave=False)

    model.train()
    stopped_early = False
    last_ckpt: Path | None = None
    t_window = time.perf_counter()
    while step < total_steps and not stopped_early:
        epoch = step // steps_per_epoch
        batches = sampler.epoch_batches(epoch)
        n_micro = steps_per_epoch * config.grad_accum_steps
        loader = _loader(
            train_dataset,
            batches[micro_done:n_micro],
            config,
            device.type == "cuda",
            seed=config.seed * 1_000_003 + epoch,
        )
        accum = 0
        for batch in loader:
            local = batch["image"].shape[0]
            images = _prepare(
                batch["image"], config, device, generator, slot=(rank * local, local * world)
            )
            pathways = batch["pathways"].to(device, non_blocking=True)
            sync = accum + 1 == config.grad_accum_steps
            ctx = ddp_model.no_sync() if (world > 1 and not sync) else contextlib.nullcontext()
            with ctx:
                with _autocast(config, device):
                    zi, zp = ddp_model(images, pathways)
                zi_all, zp_all = gather_features(zi), gather_features(zp)
                targets = None
                if config.soft_targets:
                    p_all = gather_features(
                        model.molecular_tower.standardize(pathways), with_grad=False
                    )
                    targets = pathway_soft_targets(p_all, config.soft_target_temperature)
                loss = contrastive_loss(zi_all, zp_all, model.logit_scale, targets=targets)
                (loss / config.grad_accum_steps).backward()
            loss_window.append(float(loss.detach()))
            n_window += images.shape[0] * world
            accum += 1
            micro_done += 1
            if not sync:
                continue
            accum = 0
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(
                    [p for p in model.parameters() if p.requires_grad], config.max_grad_norm
                )
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100.0))
            step += 1
            if pbar is not None:
                pbar.update(1)
                pbar.set_postfix(loss=f"{loss_window[-1]:.3f}")
            if micro_done >= n_micro:
                micro_done = 0
            row: dict[str, Any] | None = None
            if step % config.log_every_steps == 0 or step == total_steps:
                elapsed = time.perf_counter() - t_window
                row = {
                    "step": step,
                    "epoch": step / steps_per_epoch,
                    "lr": optimizer.param_groups[0]["lr"],
                    "train_loss": float(np.mean(loss_window)),
                    "temperature": model.temperature,
                    "images_per_s": n_window / elapsed if elapsed > 0 else float("nan"),
                }
                loss_window, n_window, t_window = [], 0, time.perf_counter()
            if val_dataset is not None and (step % eval_every == 0 or step == total_steps):
                if is_main:
                    metrics = evaluate(model, val_dataset, config, device=device)
                    row = {**(row or {"step": step, "epoch": step / steps_per_epoch}), **metrics}
                    value = metrics["val_recall@5"]
                    if best_metric is None or value > best_metric:
                        best_metric, best_step, bad_evals = value, step, 0
                        if out_dir is not None:
                            save_checkpoint(
                                out_dir / "best",
                                model=model,
                                config=config,
                                meta={**meta, "step": step, **metrics},
                            )
                    else:
                        bad_evals += 1
                    logger.info(
                        "step %d: %s",
                        step,
                        ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if "chance" not in k),
                    )
                    patience = config.early_stopping_patience
                    stopped_early = patience is not None and bad_evals >= patience
                if world > 1:
                    flag = [stopped_early, best_metric, best_step, bad_evals]
                    dist.broadcast_object_list(flag, src=0)
                    stopped_early, best_metric, best_step, bad_evals = flag
                if keep_best and best_step == step:
                    best_state = _trainable_state(model)  # the same weights on every rank
            if row is not None and is_main:
                history.append(row)
                if out_dir is not None:
                    _write_history(history, out_dir / "log.csv")
            every = config.checkpoint_every_steps
            if (every and step % every == 0) or step == total_steps or stopped_early:
                last_ckpt = checkpoint(step, micro_done)
            if step >= total_steps or stopped_early:
                break
    if pbar is not None:
        pbar.close()

    result = FitResult(
        model=model,
        history=pd.DataFrame(history),
        best_step=best_step,
        best_metric=best_metric,
        steps=step,
        stopped_early=stopped_early,
        output_dir=out_dir,
        last_checkpoint=last_ckpt,
        extra={"meta": meta},
    )
    if out_dir is not None and is_main:
        _write_outputs(result, out_dir)
    if keep_best and best_step is not None and best_step != step:
        if best_state is None:
            logger.warning(
                "the best weights (step %s) are not available after resuming; "
                "returning the final weights (step %d)",
                best_step,
                step,
            )
        else:
            _load_trainable(model, best_state)
    model.eval()
    return result
