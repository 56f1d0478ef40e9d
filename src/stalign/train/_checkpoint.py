"""Training checkpoints.

A checkpoint directory holds ``model.safetensors``, ``config.json``, ``model.json`` and
``state.json`` (+ ``optimizer.pt`` and per-rank ``rng_rank<r>.pt`` for exact resume).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._utils import atomic_path, atomic_write_text
from ._config import TrainConfig
from ._model import AlignmentModel, ImageTower, MolecularTower
from ._targets import transform_from_meta

__all__ = ["build_model", "latest_checkpoint", "load_model", "save_checkpoint"]

logger = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
META_FILE = "model.json"
STATE_FILE = "state.json"
OPTIM_FILE = "optimizer.pt"
HISTORY_FILE = "log.csv"  # the run's log up to this checkpoint (restored on resume)
_STATE_KEYS = ("step", "micro_in_epoch", "best_metric", "best_step", "bad_evals")


def _unreadable(path: Path, error: BaseException) -> ValueError:
    """Build the one-line error that names a checkpoint file which cannot be read."""
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    msg = (
        f"checkpoint file {str(path)!r} is unreadable ({type(error).__name__}: {first}); "
        f"it is truncated or corrupt: delete {str(path.parent)!r} to resume from an earlier "
        "checkpoint, or start afresh in a new output folder"
    )
    return ValueError(msg)


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a ``.safetensors`` file (no code runs); a corrupt one raises ``ValueError``."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        msg = f"checkpoint file {str(path)!r} does not exist"
        raise FileNotFoundError(msg)
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own SafetensorError (not an OSError)
        raise _unreadable(path, e) from e


def read_torch(path: str | os.PathLike) -> Any:
    """``torch.load(weights_only=True)`` (tensors and plain containers only, no pickled code).

    A corrupt file raises ``ValueError`` naming it.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"checkpoint file {str(path)!r} does not exist"
        raise FileNotFoundError(msg)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError (zip), EOFError, ...
        raise _unreadable(path, e) from e


def read_json(path: str | os.PathLike) -> Any:
    """Parse a checkpoint's JSON file; malformed content raises ``ValueError`` naming it."""
    path = Path(path)
    if not path.is_file():
        msg = f"checkpoint file {str(path)!r} does not exist"
        raise FileNotFoundError(msg)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _unreadable(path, e) from e


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """``model.load_state_dict(state)``; a mismatch raises ``ValueError`` naming ``path``."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        msg = f"weights in {str(path)!r} do not fit the model built from its config: {first}"
        raise ValueError(msg) from e


@dataclass
class ResumeState:
    """Everything a step checkpoint holds for one rank, read and checked before training.

    Attributes
    ----------
    path
        The checkpoint directory.
    weights, optimizer, scheduler, rng
        Model tensors, optimiser and LR-scheduler states, this rank's RNG states.
    state
        The content of ``state.json`` (step, position in the epoch, early-stopping state).
    history
        Log rows up to the checkpoint (``None`` for checkpoints written before the log
        was stored with them).
    meta
        The content of ``model.json`` (e.g. the fitted ``target_transform``).
    """

    path: Path
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]
    state: dict[str, Any]
    history: list[dict[str, Any]] | None
    meta: dict[str, Any]


def read_resume_checkpoint(directory: str | os.PathLike, rank: int = 0) -> ResumeState:
    """Read every file of a step checkpoint, so a corrupt one is found before any work.

    Raises
    ------
    FileNotFoundError
        A file of the checkpoint is missing.
    ValueError
        A file is truncated, corrupt or lacks an entry; the message names it.
    """
    d = Path(directory)
    state = read_json(d / STATE_FILE)
    missing = [k for k in _STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        msg = f"checkpoint file {str(d / STATE_FILE)!r} lacks {missing}; it is corrupt"
        raise ValueError(msg)
    opt = read_torch(d / OPTIM_FILE)
    if not isinstance(opt, dict) or not {"optimizer", "scheduler"} <= set(opt):
        msg = f"checkpoint file {str(d / OPTIM_FILE)!r} lacks the optimizer/scheduler states"
        raise ValueError(msg)
    rng_path = d / f"rng_rank{rank}.pt"
    if not rng_path.is_file():
        msg = f"checkpoint {str(d)!r} has no RNG state for rank {rank} ({rng_path.name})"
        raise FileNotFoundError(msg)
    rng = read_torch(rng_path)
    if not isinstance(rng, dict) or not {"torch", "generator", "numpy", "python"} <= set(rng):
        msg = f"checkpoint file {str(rng_path)!r} lacks RNG states; it is corrupt"
        raise ValueError(msg)
    history = None
    if (d / HISTORY_FILE).is_file():
        import pandas as pd

        try:
            history = pd.read_csv(d / HISTORY_FILE).to_dict("records")
        except (ValueError, UnicodeDecodeError) as e:
            raise _unreadable(d / HISTORY_FILE, e) from e
    return ResumeState(
        path=d,
        weights=read_tensors(d / MODEL_FILE),
        optimizer=opt["optimizer"],
        scheduler=opt["scheduler"],
        rng=rng,
        state=state,
        history=history,
        meta=read_json(d / META_FILE),
    )


def build_model(
    config: TrainConfig,
    n_pathways: int,
    *,
    image_mean: list[float] | None = None,
    image_std: list[float] | None = None,
    pathway_mean: np.ndarray | None = None,
    pathway_std: np.ndarray | None = None,
    input_px: int | None = None,
) -> AlignmentModel:
    """Create the alignment model that ``config`` describes (encoder, LoRA, towers)."""
    from ..models import add_lora, create_encoder

    encoder = create_encoder(
        config.encoder,
        pretrained=config.pretrained,
        checkpoint_path=config.checkpoint_path,
        img_size=input_px,
        **config.encoder_kwargs,
    )
    if image_mean is not None and image_std is not None:
        encoder.set_normalization(image_mean, image_std)
    if config.lora:
        add_lora(
            encoder,
            r=config.lora_r,
            alpha=config.lora_alpha,
            dropout=config.lora_dropout,
            target_modules=config.lora_target_modules,
            last_n_blocks=config.lora_last_n_blocks,
        )
    else:
        for p in encoder.parameters():
            p.requires_grad_(True)
    image_tower = ImageTower(encoder, config.proj_dim, config.hidden_dim)
    mol = MolecularTower(
        n_pathways,
        config.proj_dim,
        config.hidden_dim,
        mean=pathway_mean,
        std=pathway_std,
        dropout=config.mol_dropout,
    )
    return AlignmentModel(
        image_tower,
        mol,
        temperature=config.temperature,
        learn_temperature=config.learn_temperature,
    )


def _save_safetensors(
    state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def weights_step(path: str | os.PathLike) -> int | None:
    """Training step recorded inside a checkpoint's ``model.safetensors`` (``None`` if absent).

    It is written in the same atomic file as the weights, so it cannot disagree with them
    (``model.json`` beside it is a separate file and can, after a crash between the two).
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            step = (f.metadata() or {}).get("step")
    except Exception as e:  # SafetensorError, OSError
        raise _unreadable(Path(path), e) from e
    return int(step) if step not in (None, "None") else None


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every RNG a training step touches."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
        "numpy": torch.from_numpy(
            np.frombuffer(json.dumps(_np_state()).encode(), dtype=np.uint8).copy()
        ),
        "python": torch.from_numpy(
            np.frombuffer(json.dumps(random.getstate()).encode(), dtype=np.uint8).copy()
        ),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _np_state() -> list[Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (restore global state)
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    """Inverse of `rng_state`."""
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    name, keys, pos, has_gauss, cached = json.loads(bytes(state["numpy"].numpy()).decode())
    np.random.set_state(  # noqa: NPY002
        (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached)
    )
    py = json.loads(bytes(state["python"].numpy()).decode())
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    directory: str | os.PathLike,
    *,
    model: AlignmentModel,
    config: TrainConfig,
    meta: dict[str, Any],
    state: dict[str, Any] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory (atomically per file; ``state.json`` last)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    step = (state or {}).get("step", meta.get("step"))
    metadata = {"step": str(int(step))} if step is not None else None
    _save_safetensors(model.state_dict(), d / MODEL_FILE, metadata)
    config.to_json(d / CONFIG_FILE)
    atomic_write_text(d / META_FILE, json.dumps(meta, indent=2) + "\n")
    if optimizer_state is not None:
        with atomic_path(d / OPTIM_FILE) as tmp:
            torch.save(optimizer_state, tmp)
    if state is not None:
        atomic_write_text(d / STATE_FILE, json.dumps(state, indent=2) + "\n")
    return d


def save_rng(directory: str | os.PathLike, rank: int, generator: torch.Generator) -> None:
    """Write this rank's RNG states next to a checkpoint."""
    with atomic_path(Path(directory) / f"rng_rank{rank}.pt") as tmp:
        torch.save(rng_state(generator), tmp)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """Return the newest complete ``checkpoints/step_*`` directory (with ``state.json``), if any."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return None
    done = sorted(p for p in root.glob("step_*") if (p / STATE_FILE).is_file())
    return done[-1] if done else None


def refuse_links(run_dir: str | os.PathLike) -> None:
    """Refuse a run folder whose ``checkpoints/``, ``best/`` or a ``step_*`` is a symbolic link.

    A run deletes old checkpoints and an earlier run's files; through a link it would
    delete (and write) outside its folder. Raised before anything is deleted.

    Raises
    ------
    ValueError
        Naming the first link found.
    """
    out = Path(run_dir)
    links = [out / name for name in ("checkpoints", "best") if (out / name).is_symlink()]
    if not links and (out / "checkpoints").is_dir():
        links = sorted(p for p in (out / "checkpoints").glob("step_*") if p.is_symlink())
    if links:
        msg = (
            f"{str(links[0])!r} is a symbolic link: a training run deletes and writes only "
            "inside its output folder and never follows a link out of it; replace the link "
            "with a folder, or choose another output folder"
        )
        raise ValueError(msg)


def prune_checkpoints(run_dir: str | os.PathLike, keep: int) -> None:
    """Delete all but the ``keep`` newest step checkpoints (never through a link)."""
    refuse_links(run_dir)
    root = Path(run_dir) / "checkpoints"
    done = sorted(p for p in root.glob("step_*") if (p / STATE_FILE).is_file())
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def previous_run_files(run_dir: str | os.PathLike) -> list[Path]:
    """List what a training run left in ``run_dir``: checkpoints, ``best/``, log, curves.

    Raises
    ------
    ValueError
        ``checkpoints/``, ``best/`` or a checkpoint in ``run_dir`` is a symbolic link
        (see `refuse_links`).
    """
    refuse_links(run_dir)
    out = Path(run_dir)
    found = sorted((out / "checkpoints").glob("step_*")) if (out / "checkpoints").is_dir() else []
    found += [out / n for n in ("best", "log.csv", "curves.png") if (out / n).exists()]
    return found


def clear_previous_run(run_dir: str | os.PathLike) -> None:
    """Remove another run's checkpoints, ``best/``, log and curves before a fresh run.

    Left in place they would be mixed with the new run's: pruning by step could delete
    the new checkpoints and keep the old ones, and ``resume='auto'`` would pick them.
    """
    stale = previous_run_files(run_dir)
    if not stale:
        return
    logger.warning(
        "%s held files of an earlier training run (%s); a fresh run replaces them "
        "(resume='auto' continues a run instead)",
        run_dir,
        ", ".join(p.name for p in stale[:4]) + (", ..." if len(stale) > 4 else ""),
    )
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def load_model(checkpoint: str | os.PathLike, *, device: str = "cpu") -> AlignmentModel:
    """Rebuild the trained `AlignmentModel` from a checkpoint directory.

    ``checkpoint`` is a ``checkpoints/step_*`` directory, a run's ``best/`` directory,
    or a run's folder (``TrainConfig.out``; then ``best/`` or the latest step is used).
    The model carries ``meta`` (``model.json``), ``pathway_names`` and
    ``target_transform``: the fitted transform of the training targets
    ([`DepthRegression`][stalign.pp.DepthRegression], or ``None``), to apply to new
    profiles before the molecular tower.

    Raises
    ------
    FileNotFoundError
        No checkpoint files in ``checkpoint``.
    """
    path = Path(checkpoint)
    if not (path / MODEL_FILE).is_file():
        cands = [path / "best", latest_checkpoint(path)]
        found = [c for c in cands if c is not None and (c / MODEL_FILE).is_file()]
        if not found:
            msg = (
                f"{str(path)!r} is not a stalign training checkpoint: no {MODEL_FILE} in it, "
                "in best/ or in checkpoints/step_*"
            )
            raise FileNotFoundError(msg)
        path = found[0]
    config = TrainConfig.from_file(path / CONFIG_FILE).replace(
        pretrained=False, resume=None, checkpoint_path=None
    )
    meta = read_json(path / META_FILE)
    state = read_tensors(path / MODEL_FILE)
    model = build_model(config, int(meta["n_pathways"]), input_px=meta.get("input_px"))
    load_weights(model, state, path / MODEL_FILE)
    model.pathway_names = meta.get("pathway_names")  # type: ignore[attr-defined]
    model.meta = meta  # type: ignore[attr-defined]
    # the fitted transform of the training targets (None without one), for new profiles
    model.target_transform = transform_from_meta(meta)  # type: ignore[attr-defined]
    return model.to(device).eval()
