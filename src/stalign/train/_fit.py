"""The training loop: single process or DDP (``torchrun``), exact resume, early stopping."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from .. import StalignError
from .._distributed import distributed_group
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
    refuse_links,
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
from ._provenance import run_provenance
from ._targets import apply_target_transform

__all__ = ["FitResult", "TrainingDivergedError", "fit", "validate"]

logger = logging.getLogger(__name__)

EARLY_STOPPING_METRIC = "val_recall@5"  # higher is better; the only place it is named
LOCK_FILE = ".lock"  # in the run's out folder, held while a run writes there (as in a pairs store)


class TrainingDivergedError(StalignError):
    """Training produced a non-finite loss, embedding or weight (NaN or inf).

    The run stops at once: no checkpoint or ``best/`` of the diverged step is written.
    """


def _diverged(config: TrainConfig, step: int, what: str) -> TrainingDivergedError:
    """Build the one-line error of a run that diverged at optimiser ``step``."""
    msg = (
        f"training diverged at step {step}: {what}; nothing of this step was saved "
        f"(lower lr={config.lr:g} or temperature_lr={config.temperature_lr:g}, keep "
        "max_grad_norm on, or try amp='none')"
    )
    return TrainingDivergedError(msg)


@dataclass
class FitResult:
    """What [`fit`][stalign.train.fit] returns.

    Attributes
    ----------
    model
        The trained model: the best validation weights when early stopping was on and a
        validation set was given (kept in memory, so also without ``out``, and
        on every DDP rank); otherwise the final weights.
    history
        One row per logged training step / evaluation (the content of ``log.csv``).
    best_step, best_metric
        Step and value of the best `EARLY_STOPPING_METRIC` (``None`` without
        validation).
    steps
        Optimiser steps done in total.
    stopped_early
        Whether early stopping ended the run.
    out, last_checkpoint, best_checkpoint, log_csv
        Written paths (``None`` when ``config.out`` is ``None``); ``out`` was called
        ``output_dir`` (still readable, with a ``DeprecationWarning``). The curves
        figure is drawn from ``history`` by the caller (`stalign.pl.training_curves`).
    """

    model: AlignmentModel
    history: pd.DataFrame
    best_step: int | None = None
    best_metric: float | None = None
    steps: int = 0
    stopped_early: bool = False
    out: Path | None = None
    last_checkpoint: Path | None = None
    best_checkpoint: Path | None = None
    log_csv: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def output_dir(self) -> Path | None:
        """Deprecated name of `out`."""
        warnings.warn("FitResult.output_dir is now FitResult.out", DeprecationWarning, stacklevel=2)
        return self.out


# ------------------------------------------------------------------------ helpers
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
def validate(
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
    dict[str, float]
        ``val_loss``, ``val_recall@k``/``val_chance@k`` (k = 1, 5, 10), ``val_median_rank``,
        ``val_profile_r``.

    Raises
    ------
    TrainingDivergedError
        An embedding holds NaN or inf (a diverged model has no meaningful ranking).
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
    bad = int((~torch.isfinite(zi_t).all(1) | ~torch.isfinite(zp_t).all(1)).sum())
    if bad:
        msg = f"the embeddings of {bad} of {n} validation pairs hold NaN or inf"
        raise TrainingDivergedError(msg)
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
    """Hold ``config.out`` for this run (rank 0 locks; every rank learns the outcome).

    A second run on the same folder is refused at once instead of mixing its config,
    log and checkpoints into the first run's. The lock dies with its process.
    """
    if config.out is None:
        yield
        return
    with contextlib.ExitStack() as stack:
        error: Exception | None = None
        if rank == 0:
            out = Path(config.out)
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
    """Copy what training changes (`_trainable_names`) to the CPU."""
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


def _point_at_outputs(result: FitResult, out_dir: Path) -> None:
    """Point ``result`` at the run's ``log.csv`` and best checkpoint."""
    result.log_csv = out_dir / "log.csv"
    if (out_dir / "best").is_dir():
        result.best_checkpoint = out_dir / "best"


def fit(
    config: TrainConfig,
    train_dataset: Dataset,
    val_dataset: Dataset | None = None,
) -> FitResult:
    """Align an image encoder with molecular profiles by symmetric InfoNCE.

    Parameters
    ----------
    config
        All settings (see [`TrainConfig`][stalign.train.TrainConfig]).
    train_dataset, val_dataset
        ``Dataset`` s whose items are dicts with ``'image'`` (float32 ``(3, H, W)`` in
        ``[0, 1]``) and ``'pathways'`` (float32 ``(P,)``), e.g.
        `stalign.pairs.PairsDataset` or `TensorPairsDataset`.

    Returns
    -------
    FitResult
        With ``config.out`` set, the run writes there: ``config.json``, ``log.csv``
        (step, epoch, lr, train_loss, temperature, val_* and images_per_s),
        ``checkpoints/step_<n>/`` (``model.safetensors``, ``config.json``,
        ``model.json``, ``state.json``, ``optimizer.pt``, ``rng_rank<r>.pt``) and
        ``best/`` (best `EARLY_STOPPING_METRIC`). The CLI and the pipeline add
        ``curves.png``, drawn from the log by
        [`stalign.pl.training_curves`][stalign.pl.training_curves].

    Raises
    ------
    FolderLockedError
        Another live process trains into the same ``out`` (see
        ``stalign._lock``); nothing is written.
    ValueError, FileNotFoundError
        A bad dataset, or a resume checkpoint that is incomplete, corrupt or from a
        run with other structural settings (the message names the file).

    Notes
    -----
    The run holds a lock on ``out`` (``.lock``) while it runs; the lock
    dies with the process, so a crashed run never blocks the next.

    Under ``torchrun`` (``WORLD_SIZE > 1``) the process group is initialised here
    (``stalign._distributed.distributed_group``: NCCL on GPU, gloo on CPU) unless the
    caller did; ``batch_size`` is the global batch, split across ranks,
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
    if val_dataset is not None and len(val_dataset) < 2:
        msg = (
            f"fit: the validation set has {len(val_dataset)} pairs; ranking a profile among "
            "the others needs at least 2 (give more validation pairs, or none)"
        )
        raise ValueError(msg)
    from ..models import get_encoder_config

    get_encoder_config(config.encoder)  # an unknown name or missing folder: before any work
    with distributed_group() as (rank, world), _output_folder_lock(config, rank, world):
        return _fit(config, train_dataset, val_dataset, rank, world)


# ------------------------------------------------------------------------ one run
@dataclass
class _Run:
    """What a run fixes before its first step: settings, model, optimiser and data plan.

    Nothing here changes during training except the tensors inside ``model``,
    ``optimizer``, ``scheduler`` and ``generator``; the counters live in
    `TrainingState`.
    """

    config: TrainConfig
    train_dataset: Dataset
    val_dataset: Dataset | None
    model: AlignmentModel
    ddp_model: torch.nn.Module  # ``model`` itself, or its DDP wrapper under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator  # crops and augmentation: the same stream on every rank
    sampler: GlobalBatchSampler
    meta: dict[str, Any]
    device: torch.device
    rank: int
    world: int
    out_dir: Path | None
    steps_per_epoch: int
    total_steps: int
    eval_every: int

    @property
    def is_main(self) -> bool:
        """Whether this process writes files, logs and evaluates (rank 0)."""
        return self.rank == 0

    @property
    def keep_best(self) -> bool:
        """Whether the best validation weights are kept (early stopping with a validation set)."""
        return self.config.early_stopping_patience is not None and self.val_dataset is not None


@dataclass
class TrainingState:
    """The counters of a run: everything an exact resume restores besides the tensors.

    Attributes
    ----------
    step
        Optimiser steps done.
    micro_done
        Micro-batches consumed in the current epoch.
    best_metric, best_step, bad_evals
        Early stopping: the best `EARLY_STOPPING_METRIC`, its step, and the
        evaluations since without improvement.
    history
        The rows of ``log.csv``.
    loss_window, images_in_window, window_start
        Training losses, images and start time (``time.perf_counter``, s) since the
        last log row.
    best_state
        A CPU copy of the best weights (only with `_Run.keep_best`), on every rank.
    stopped_early, last_checkpoint
        How the run ended, and its last checkpoint folder.
    """

    step: int = 0
    micro_done: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    loss_window: list[float] = field(default_factory=list)
    images_in_window: int = 0
    window_start: float = 0.0
    best_state: dict[str, torch.Tensor] | None = None
    stopped_early: bool = False
    last_checkpoint: Path | None = None

    def checkpoint_fields(self, run: _Run) -> dict[str, Any]:
        """Return the content of a checkpoint's ``state.json``."""
        return {
            "step": self.step,
            "epoch": self.step // run.steps_per_epoch,
            "micro_in_epoch": self.micro_done,
            "best_metric": self.best_metric,
            "best_step": self.best_step,
            "bad_evals": self.bad_evals,
            "total_steps": run.total_steps,
            "loss_window": self.loss_window,
            "images_in_window": self.images_in_window,
        }


def _resume_point(config: TrainConfig, out_dir: Path | None, rank: int) -> ResumeState | None:
    """Read and check the checkpoint to resume from; on a fresh run clear an earlier one."""
    if out_dir is not None:
        refuse_links(out_dir)  # before anything is read from, or deleted in, the folder
    resume_dir = _resume_dir(config, out_dir)
    if resume_dir is not None:
        saved = TrainConfig.from_file(resume_dir / "config.json").replace(resume=None)
        _check_resume_config(saved, config, resume_dir)
        return read_resume_checkpoint(resume_dir, rank)
    if out_dir is not None and rank == 0:
        clear_previous_run(out_dir)  # a fresh run: nothing of an earlier one may mix in
    return None


def _steps_per_epoch(sampler: GlobalBatchSampler, config: TrainConfig) -> int:
    steps = len(sampler) // config.grad_accum_steps
    if steps == 0:
        msg = (
            f"one epoch has {len(sampler)} batches of {config.batch_size}, fewer than "
            f"grad_accum_steps={config.grad_accum_steps}"
        )
        raise ValueError(msg)
    return steps


def _setup(
    config: TrainConfig,
    train_dataset: Dataset,
    val_dataset: Dataset | None,
    rank: int,
    world: int,
) -> tuple[_Run, ResumeState | None]:
    """Seed, read the resume point, build the model, optimiser and batch plan (in this order)."""
    device = _device(config, world)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    out_dir = Path(config.out) if config.out else None
    _seed_everything(config.seed)
    # every resume file read and checked before any statistics or model
    resume = _resume_point(config, out_dir, rank)
    # fitted on the training pairs only, or the resumed run's own fit
    train_dataset, val_dataset, targets = apply_target_transform(
        config.target_transform, train_dataset, val_dataset, resume.meta if resume else None
    )
    model, meta = _build(config, train_dataset, val_dataset, device, world, log=rank == 0)
    meta["target_transform"] = targets
    meta["provenance"] = run_provenance(train_dataset, val_dataset)
    sampler = GlobalBatchSampler(
        len(train_dataset), config.batch_size, seed=config.seed, rank=rank, world_size=world
    )
    steps_per_epoch = _steps_per_epoch(sampler, config)
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    optimizer = _optimizer(model, config)
    run = _Run(
        config=config,
        train_dataset=train_dataset,
        val_dataset=val_dataset,
        model=model,
        ddp_model=model,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config, total_steps)),
        generator=torch.Generator().manual_seed(config.seed * 7919),
        sampler=sampler,
        meta=meta,
        device=device,
        rank=rank,
        world=world,
        out_dir=out_dir,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        eval_every=config.eval_every_steps or steps_per_epoch,
    )
    return run, resume


def _restored_state(run: _Run, resume: ResumeState) -> TrainingState:
    """Put ``resume``'s tensors into ``run`` and return its counters."""
    _restore(resume, run.model, run.optimizer, run.scheduler, run.generator)
    st = resume.state
    state = TrainingState(
        step=int(st["step"]),
        micro_done=int(st["micro_in_epoch"]),
        best_metric=st["best_metric"],
        best_step=st["best_step"],
        bad_evals=st["bad_evals"],
        loss_window=[float(x) for x in st.get("loss_window", [])],
        images_in_window=int(st.get("images_in_window", 0)),
    )
    log_csv = run.out_dir / "log.csv" if run.out_dir is not None else None
    if resume.history is not None:
        state.history = [r for r in resume.history if r["step"] <= state.step]
    elif log_csv is not None and log_csv.is_file():
        old = pd.read_csv(log_csv)
        state.history = old[old["step"] <= state.step].to_dict("records")
    if run.keep_best:
        state.best_state = _best_from_disk(run.out_dir, state.best_step, run.model)
    if run.is_main:
        logger.info("resumed from %s at step %d", resume.path, state.step)
    return state


def _wrap_ddp(run: _Run) -> None:
    """Under torchrun, train through a ``DistributedDataParallel`` wrapper of the model."""
    if run.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [run.device.index] if run.device.type == "cuda" else None
        run.ddp_model = DistributedDataParallel(run.model, device_ids=device_ids)


def _barrier(run: _Run) -> None:
    if run.world > 1:
        import torch.distributed as dist

        dist.barrier()


def _format_metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if "chance" not in k)


def _append_history(run: _Run, state: TrainingState, row: dict[str, Any]) -> None:
    """Add a row to the log (rank 0) and rewrite ``log.csv``."""
    state.history.append(row)
    if run.out_dir is not None:
        _write_history(state.history, run.out_dir / "log.csv")


def _log_starting_point(run: _Run, state: TrainingState) -> None:
    """Evaluate the untrained model, so the log and curves show what training changed.

    Logged only: it never counts as a "best" checkpoint.
    """
    if run.val_dataset is None or state.step != 0 or not run.is_main:
        return
    try:
        metrics = validate(run.model, run.val_dataset, run.config, device=run.device)
    except TrainingDivergedError as e:  # e.g. weights that were NaN before any step
        raise _diverged(run.config, 0, str(e)) from e
    _append_history(run, state, {"step": 0, "epoch": 0.0, **metrics})
    logger.info("step 0 (before training): %s", _format_metrics(metrics))


# ------------------------------------------------------------------------ checkpoints
def _write_checkpoint(run: _Run, state: TrainingState) -> Path | None:
    """Write ``checkpoints/step_<n>/`` for an exact resume; ``state.json`` comes last."""
    if run.out_dir is None:
        return None
    d = run.out_dir / "checkpoints" / f"step_{state.step:08d}"
    fields = state.checkpoint_fields(run)
    if run.is_main:
        d.mkdir(parents=True, exist_ok=True)
        _write_history(state.history, d / HISTORY_FILE)
        with atomic_path(d / OPTIM_FILE) as tmp:
            torch.save(
                {"optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict()},
                tmp,
            )
    _barrier(run)
    d.mkdir(parents=True, exist_ok=True)
    save_rng(d, run.rank, run.generator)
    _barrier(run)
    if run.is_main:
        # state.json last: a checkpoint without it is incomplete and never resumed
        save_checkpoint(d, model=run.model, config=run.config, meta=run.meta, state=fields)
        prune_checkpoints(run.out_dir, run.config.keep_checkpoints)
    return d


def _checkpoint_due(run: _Run, state: TrainingState) -> bool:
    every = run.config.checkpoint_every_steps
    step = state.step
    return bool(every and step % every == 0) or step == run.total_steps or state.stopped_early


# ------------------------------------------------------------------------ early stopping
def _update_early_stopping(run: _Run, state: TrainingState, metrics: dict[str, float]) -> None:
    """Track the best `EARLY_STOPPING_METRIC` (rank 0); save ``best/`` when it improves."""
    value = metrics[EARLY_STOPPING_METRIC]
    if state.best_metric is None or value > state.best_metric:
        state.best_metric, state.best_step, state.bad_evals = value, state.step, 0
        if run.out_dir is not None:
            save_checkpoint(
                run.out_dir / "best",
                model=run.model,
                config=run.config,
                meta={**run.meta, "step": state.step, **metrics},
            )
    else:
        state.bad_evals += 1
    patience = run.config.early_stopping_patience
    state.stopped_early = patience is not None and state.bad_evals >= patience


def _share_early_stopping(run: _Run, state: TrainingState, diverged: str | None) -> None:
    """Send rank 0's early-stopping decision (or divergence) to every rank; raise on divergence."""
    if run.world > 1:
        import torch.distributed as dist

        box = [state.stopped_early, state.best_metric, state.best_step, state.bad_evals, diverged]
        dist.broadcast_object_list(box, src=0)
        state.stopped_early, state.best_metric, state.best_step, state.bad_evals, diverged = box
    if diverged is not None:
        raise _diverged(run.config, state.step, diverged)


def _validate(run: _Run, state: TrainingState, row: dict[str, Any] | None) -> dict[str, Any] | None:
    """Evaluate after this step if due; update early stopping; return the log row."""
    if run.val_dataset is None:
        return row
    if not (state.step % run.eval_every == 0 or state.step == run.total_steps):
        return row
    diverged = None
    if run.is_main:
        try:
            metrics = validate(run.model, run.val_dataset, run.config, device=run.device)
        except TrainingDivergedError as e:
            diverged = str(e)  # every rank stops, none waits for rank 0 forever
        else:
            row = {**(row or _row_start(run, state)), **metrics}
            _update_early_stopping(run, state, metrics)
            logger.info("step %d: %s", state.step, _format_metrics(metrics))
    _share_early_stopping(run, state, diverged)
    if run.keep_best and state.best_step == state.step:
        state.best_state = _trainable_state(run.model)  # the same weights on every rank
    return row


# ------------------------------------------------------------------------ training
def _row_start(run: _Run, state: TrainingState) -> dict[str, Any]:
    return {"step": state.step, "epoch": state.step / run.steps_per_epoch}


def _training_row(run: _Run, state: TrainingState) -> dict[str, Any] | None:
    """Return the log row of the training window ending now (``None`` if not due)."""
    step = state.step
    if not (step % run.config.log_every_steps == 0 or step == run.total_steps):
        return None
    elapsed = time.perf_counter() - state.window_start
    row = {
        **_row_start(run, state),
        "lr": run.optimizer.param_groups[0]["lr"],
        "train_loss": float(np.mean(state.loss_window)),
        "temperature": run.model.temperature,
        "images_per_s": state.images_in_window / elapsed if elapsed > 0 else float("nan"),
    }
    state.loss_window, state.images_in_window = [], 0
    state.window_start = time.perf_counter()
    return row


def _forward_backward(
    run: _Run, state: TrainingState, batch: dict[str, torch.Tensor], sync: bool
) -> None:
    """Contrastive loss of one micro-batch (gathered over ranks) and its gradients."""
    config, model, world = run.config, run.model, run.world
    local = batch["image"].shape[0]
    images = _prepare(
        batch["image"], config, run.device, run.generator, slot=(run.rank * local, local * world)
    )
    pathways = batch["pathways"].to(run.device, non_blocking=True)
    no_sync = world > 1 and not sync
    with run.ddp_model.no_sync() if no_sync else contextlib.nullcontext():
        with _autocast(config, run.device):
            zi, zp = run.ddp_model(images, pathways)
        zi_all, zp_all = gather_features(zi), gather_features(zp)
        targets = None
        if config.soft_targets:
            p_all = gather_features(model.molecular_tower.standardize(pathways), with_grad=False)
            targets = pathway_soft_targets(p_all, config.soft_target_temperature)
        loss = contrastive_loss(zi_all, zp_all, model.logit_scale, targets=targets)
        value = float(loss.detach())  # the same on every rank (gathered embeddings)
        if not math.isfinite(value):
            raise _diverged(config, state.step + 1, f"the contrastive loss is {value}")
        (loss / config.grad_accum_steps).backward()
    state.loss_window.append(value)
    state.images_in_window += images.shape[0] * world


def _optimizer_step(run: _Run, step: int) -> None:
    """Clip, step the optimiser and learning rate, clamp the temperature.

    Raises `TrainingDivergedError` when a weight is NaN or inf afterwards
    (``step`` names the step in the message).
    """
    model = run.model
    if run.config.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(
            [p for p in model.parameters() if p.requires_grad], run.config.max_grad_norm
        )
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100.0))
        trained = [p for p in model.parameters() if p.requires_grad]
        finite = torch.stack([torch.isfinite(p).all() for p in trained]).all()
    if not bool(finite):
        raise _diverged(run.config, step, "a weight is NaN or inf after the optimiser step")


def _after_step(run: _Run, state: TrainingState) -> None:
    """Log, validate and checkpoint after an optimiser step, as each is due."""
    row = _validate(run, state, _training_row(run, state))
    if row is not None and run.is_main:
        _append_history(run, state, row)
    if _checkpoint_due(run, state):
        state.last_checkpoint = _write_checkpoint(run, state)


def train_one_epoch(run: _Run, state: TrainingState, pbar: Any = None) -> None:
    """Train from ``state`` to the end of its epoch, the last step or an early stop.

    Resumes mid-epoch at ``state.micro_done``; each ``grad_accum_steps`` micro-batches
    make one optimiser step, followed by `_after_step`.
    """
    config = run.config
    epoch = state.step // run.steps_per_epoch
    n_micro = run.steps_per_epoch * config.grad_accum_steps
    loader = _loader(
        run.train_dataset,
        run.sampler.epoch_batches(epoch)[state.micro_done : n_micro],
        config,
        run.device.type == "cuda",
        seed=config.seed * 1_000_003 + epoch,
    )
    accum = 0
    for batch in loader:
        sync = accum + 1 == config.grad_accum_steps
        _forward_backward(run, state, batch, sync)
        accum += 1
        state.micro_done += 1
        if not sync:
            continue
        accum = 0
        _optimizer_step(run, state.step + 1)
        state.step += 1
        if pbar is not None:
            pbar.update(1)
            pbar.set_postfix(loss=f"{state.loss_window[-1]:.3f}")
        if state.micro_done >= n_micro:
            state.micro_done = 0
        _after_step(run, state)
        if state.step >= run.total_steps or state.stopped_early:
            return


def _progress_bar(run: _Run, state: TrainingState):
    if not (run.is_main and run.config.progress):
        return None
    from .._utils import progress_bar as tqdm

    return tqdm(total=run.total_steps, initial=state.step, desc="train", unit="step", leave=False)


def _finish(run: _Run, state: TrainingState) -> FitResult:
    """Return the result; with early stopping, put the best weights back into the model."""
    result = FitResult(
        model=run.model,
        history=pd.DataFrame(state.history),
        best_step=state.best_step,
        best_metric=state.best_metric,
        steps=state.step,
        stopped_early=state.stopped_early,
        out=run.out_dir,
        last_checkpoint=state.last_checkpoint,
        extra={"meta": run.meta},
    )
    if run.out_dir is not None and run.is_main:
        _point_at_outputs(result, run.out_dir)
    if run.keep_best and state.best_step is not None and state.best_step != state.step:
        if state.best_state is None:
            logger.warning(
                "the best weights (step %s) are not available after resuming; "
                "returning the final weights (step %d)",
                state.best_step,
                state.step,
            )
        else:
            _load_trainable(run.model, state.best_state)
    run.model.eval()
    return result


def _fit(
    config: TrainConfig,
    train_dataset: Dataset,
    val_dataset: Dataset | None,
    rank: int,
    world: int,
) -> FitResult:
    """Set up (or resume) a run, train epoch by epoch, and finish."""
    run, resume = _setup(config, train_dataset, val_dataset, rank, world)
    state = TrainingState()
    if resume is not None:
        state = _restored_state(run, resume)
        del resume  # the tensors are in the model and optimiser now
    _wrap_ddp(run)
    if run.out_dir is not None and run.is_main:
        run.out_dir.mkdir(parents=True, exist_ok=True)
        config.to_json(run.out_dir / "config.json")
    _log_starting_point(run, state)
    pbar = _progress_bar(run, state)
    run.model.train()
    state.window_start = time.perf_counter()
    while state.step < run.total_steps and not state.stopped_early:
        train_one_epoch(run, state, pbar)
    if pbar is not None:
        pbar.close()
    return _finish(run, state)
