"""``TrainConfig``: every setting of a contrastive training run, validated, JSON round-trip."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TrainConfig"]

_AMP = ("auto", "bf16", "none")
_NORM = ("cohort", "encoder")
#: the values of ``TrainConfig.target_transform`` (see ``train._targets``)
TARGET_TRANSFORMS = ("none", "depth_regression")

# annotation → the number type its value is coerced to
_NUMERIC_FIELDS = {"int": int, "int | None": int, "float": float, "float | None": float}
_PATH_FIELDS = ("checkpoint_path", "out", "resume")

#: earlier spellings of settings -> today's field (still read, with a DeprecationWarning):
#: config files and ``config.json`` of runs written before the rename keep loading
RENAMED_FIELDS = {"output_dir": "out"}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _as_number(value: Any, kind: type) -> Any:
    """``value`` as ``kind`` when it is a number (or a number written as text), else as is.

    An ``int`` field takes integral values only (``'1e2'`` → 100, ``2.5`` stays 2.5 and
    fails validation); booleans are never numbers.
    """
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return value
    if not _is_number(value):
        return value
    if kind is int:
        return int(value) if float(value).is_integer() else value
    return float(value)


def _renamed(settings: dict[str, Any], *, stacklevel: int) -> dict[str, Any]:
    """Return ``settings`` with the old names of `RENAMED_FIELDS` replaced.

    Each old name found warns (``DeprecationWarning``); an old and a new name with
    different values is a ``ValueError``.
    """
    old = [name for name in settings if name in RENAMED_FIELDS]
    if not old:
        return settings
    settings = dict(settings)
    for name in old:
        new = RENAMED_FIELDS[name]
        value = settings.pop(name)
        if new in settings and settings[new] != value:
            msg = (
                f"TrainConfig: both {name!r} ({value!r}, the old name) and {new!r} "
                f"({settings[new]!r}) are given; keep only {new!r}"
            )
            raise ValueError(msg)
        warnings.warn(
            f"TrainConfig: the setting {name!r} is now called {new!r}; "
            f"{name!r} is read as {new!r} for now",
            DeprecationWarning,
            stacklevel=stacklevel + 1,
        )
        settings[new] = value
    return settings


# fields a resumed run must agree on: the model/optimiser structure and its schedule
STRUCTURAL_FIELDS = (
    "encoder",
    "encoder_kwargs",
    "img_size",
    "jitter_px",
    "lora",
    "lora_r",
    "lora_alpha",
    "lora_target_modules",
    "lora_last_n_blocks",
    "proj_dim",
    "hidden_dim",
    "learn_temperature",
    "seed",
    "batch_size",
    "grad_accum_steps",
    "target_transform",
    # the optimiser and schedule: a resumed run restores them from the checkpoint, so a
    # changed value would be silently ignored
    "lr",
    "weight_decay",
    "temperature_lr",
    "warmup_fraction",
    "min_lr_ratio",
)


@dataclass
class TrainConfig:
    """Settings of `stalign.train.fit` (saved as ``config.json`` with each checkpoint).

    Parameters
    ----------
    encoder
        Registry or timm name ([`stalign.models.create_encoder`][stalign.models.create_encoder]).
    pretrained
        Load pretrained weights (needs network or the local Hugging Face cache).
    checkpoint_path
        Local encoder weights (``.safetensors`` or torch file); wins over ``pretrained``.
    encoder_kwargs
        Extra ``timm.create_model`` arguments (e.g. ``{"depth": 2}``).
    img_size
        Model input side in px; crops are resized to it. ``None``: the crop size
        (patch side minus ``2 * jitter_px``).
    jitter_px
        Random-crop jitter in px of the stored patches (crops of ``H - 2 * jitter_px``,
        centred at evaluation).
    augment
        Random flips, 90° rotations and ± ``color_jitter`` brightness/contrast.
    color_jitter
        Relative brightness/contrast jitter (0.1 = ±10 %).
    normalization
        ``"cohort"``: normalise images with the training set's per-channel mean/std
        (recorded in the model); ``"encoder"``: the encoder's pre-training statistics.
    lora, lora_r, lora_alpha, lora_dropout, lora_target_modules, lora_last_n_blocks
        LoRA adapters (`stalign.models.add_lora`). With ``lora=False`` the whole
        encoder is trained.
    proj_dim
        Dimension of the shared embedding space (both projection heads).
    hidden_dim
        Hidden width of the projection heads and the molecular MLP.
    mol_dropout
        Dropout in the molecular tower.
    temperature
        Initial softmax temperature of the InfoNCE logits.
    learn_temperature
        Learn the temperature (as ``log(1/T)``) with its own learning rate.
    temperature_lr
        Learning rate of the temperature.
    soft_targets
        Soften the InfoNCE targets by pathway similarity within the batch:
        ``softmax(cos(p_i, p_j) / soft_target_temperature)``.
    soft_target_temperature
        Sharpness of the soft targets (small → identity).
    target_transform
        ``"none"``: train on the pathway scores as stored. ``"depth_regression"``: remove
        from each pathway a cubic in log library size fitted on the training pairs only
        (validation pairs get the same fitted curve); the fit is saved with every
        checkpoint (``model.json``), so resume and reload use the same transform. Needs
        each pair's library size (``total_counts``, recorded by pairs stores).
    batch_size
        Global contrastive batch (split across DDP ranks; negatives are drawn from it),
        at least 2. An epoch drops the last incomplete batch.
    grad_accum_steps
        Micro-batches of ``batch_size`` per optimiser step.
    epochs, max_steps
        Length of training; ``max_steps`` (optimiser steps) wins when given.
    lr, weight_decay, warmup_fraction, min_lr_ratio, max_grad_norm
        AdamW with linear warm-up then cosine decay to ``min_lr_ratio * lr``;
        gradient clipping (``None``: off).
    amp
        ``"auto"`` (bf16 on CUDA, off on CPU), ``"bf16"`` or ``"none"``.
    eval_every_steps
        Validate every this many optimiser steps (``None``: once per epoch).
    early_stopping_patience
        Stop after this many evaluations without a better validation recall@5.
    checkpoint_every_steps
        Write a checkpoint every this many steps (``None``: at evaluations and the end).
    keep_checkpoints
        How many step checkpoints to keep (the best model is kept separately).
    log_every_steps
        Training-loss rows in the CSV log.
    num_workers
        DataLoader workers.
    seed
        Seed of everything (CPU runs are bit-reproducible).
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    out
        The run's output folder: checkpoints, ``config.json`` and ``log.csv`` go there
        (``None``: nothing written). Formerly ``output_dir``, still accepted (with a
        ``DeprecationWarning``) as a keyword, in `replace` and in config files.
    resume
        ``None``, ``"auto"`` (latest checkpoint in ``out`` if any) or a checkpoint
        directory.
    stats_max_items
        Items sampled to compute the cohort colour and pathway statistics.
    progress
        Show a tqdm progress bar.
    """

    encoder: str = "vit_tiny_patch16_224"
    pretrained: bool = False
    checkpoint_path: str | None = None
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    img_size: int | None = 112
    jitter_px: int = 4
    augment: bool = True
    color_jitter: float = 0.1
    normalization: str = "cohort"
    lora: bool = True
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.1
    lora_target_modules: list[str] | None = None
    lora_last_n_blocks: int | None = None
    proj_dim: int = 128
    hidden_dim: int = 256
    mol_dropout: float = 0.1
    temperature: float = 0.07
    learn_temperature: bool = True
    temperature_lr: float = 1e-2
    soft_targets: bool = False
    soft_target_temperature: float = 0.1
    target_transform: str = "none"
    batch_size: int = 128
    grad_accum_steps: int = 1
    epochs: int = 10
    max_steps: int | None = None
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.0
    max_grad_norm: float | None = 1.0
    amp: str = "auto"
    eval_every_steps: int | None = None
    early_stopping_patience: int | None = None
    checkpoint_every_steps: int | None = None
    keep_checkpoints: int = 2
    log_every_steps: int = 10
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"
    out: str | None = None
    resume: str | None = None
    stats_max_items: int = 2048
    progress: bool = True

    def __post_init__(self) -> None:
        self._coerce()
        self.validate()

    def _coerce(self) -> None:
        """Turn numbers written as text into numbers and paths into strings.

        PyYAML reads ``lr: 1e-3`` (no decimal point) as the string ``'1e-3'``; JSON and
        ``--set`` may do the same. Values that are not numbers stay as they are, and
        [`validate`][stalign.train.validate] names the field.
        """
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = _NUMERIC_FIELDS.get(str(f.type))
            if kind is not None:
                setattr(self, f.name, _as_number(value, kind))
            elif f.name in _PATH_FIELDS and isinstance(value, os.PathLike):
                setattr(self, f.name, os.fspath(value))

    @classmethod
    def _number_fields(cls) -> list[str]:
        """Names of the fields that hold a number (int or float, optional or not)."""
        return [f.name for f in dataclasses.fields(cls) if str(f.type) in _NUMERIC_FIELDS]

    def validate(self) -> None:
        """Check every field; raise ``ValueError`` naming the first bad one.

        Numbers must be finite (``inf``/``nan``, e.g. ``1e999`` in a JSON file, are
        refused) and ``batch_size`` at least 2.
        """

        def bad(name: str, expected: str) -> None:
            msg = f"TrainConfig.{name}: expected {expected}, got {getattr(self, name)!r}"
            raise ValueError(msg)

        for name in self._number_fields():  # inf/nan (e.g. JSON's 1e999) never get in
            v = getattr(self, name)
            if _is_number(v) and not math.isfinite(v):
                bad(name, "a finite number")
        positive_ints = (
            "batch_size",
            "grad_accum_steps",
            "epochs",
            "lora_r",
            "proj_dim",
            "hidden_dim",
            "keep_checkpoints",
            "log_every_steps",
            "stats_max_items",
        )
        for name in positive_ints:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                bad(name, "a positive integer")
        if self.batch_size < 2:  # a batch of one has no negative: the loss is 0, nothing learns
            bad("batch_size", "an integer >= 2 (each pair's negatives are the rest of its batch)")
        for name in (f.name for f in dataclasses.fields(self) if f.type == "bool"):
            if not isinstance(getattr(self, name), bool):
                bad(name, "true or false")
        optional_positive = (
            "img_size",
            "max_steps",
            "eval_every_steps",
            "early_stopping_patience",
            "checkpoint_every_steps",
            "lora_last_n_blocks",
        )
        for name in optional_positive:
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                bad(name, "None or a positive integer")
        for name, expected in (
            ("jitter_px", "an integer >= 0 (px)"),
            ("num_workers", "an integer >= 0"),
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                bad(name, expected)
        for name in (
            "lr",
            "temperature",
            "temperature_lr",
            "lora_alpha",
            "soft_target_temperature",
        ):
            v = getattr(self, name)
            if not (_is_number(v) and v > 0):
                bad(name, "a number > 0")
        if not (_is_number(self.weight_decay) and self.weight_decay >= 0):
            bad("weight_decay", "a number >= 0")
        for name in (
            "lora_dropout",
            "mol_dropout",
            "warmup_fraction",
            "min_lr_ratio",
            "color_jitter",
        ):
            v = getattr(self, name)
            if not (_is_number(v) and 0 <= v < 1):
                bad(name, "a number in [0, 1)")
        norm = self.max_grad_norm
        if norm is not None and not (_is_number(norm) and norm > 0):
            bad("max_grad_norm", "None or a number > 0")
        if self.amp not in _AMP:
            bad("amp", f"one of {_AMP}")
        if self.normalization not in _NORM:
            bad("normalization", f"one of {_NORM}")
        if self.target_transform not in TARGET_TRANSFORMS:
            bad("target_transform", f"one of {TARGET_TRANSFORMS}")
        if not isinstance(self.encoder, str) or not self.encoder:
            bad("encoder", "an encoder name")
        if not isinstance(self.encoder_kwargs, dict):
            bad("encoder_kwargs", "a dict")
        if self.resume is not None and self.resume != "auto" and not Path(self.resume).is_dir():
            msg = f"TrainConfig.resume: checkpoint directory {self.resume!r} does not exist"
            raise FileNotFoundError(msg)
        if self.resume == "auto" and self.out is None:
            bad("resume", "a checkpoint directory when out is None ('auto' needs it)")

    @property
    def output_dir(self) -> str | None:
        """Deprecated name of `out`."""
        warnings.warn(
            "TrainConfig.output_dir is now TrainConfig.out", DeprecationWarning, stacklevel=2
        )
        return self.out

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable)."""
        return dataclasses.asdict(self)

    def to_json(self, path: str | os.PathLike) -> None:
        """Write the config as JSON (atomically)."""
        from .._utils import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a dict; unknown keys are an error that lists the valid ones.

        Old names of settings (`RENAMED_FIELDS`) are read as today's, with a
        ``DeprecationWarning``.
        """
        d = _renamed(d, stacklevel=2)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            msg = f"TrainConfig: unknown settings {unknown}; valid ones are {sorted(names)}"
            raise ValueError(msg)
        return cls(**d)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> TrainConfig:
        """Read a JSON or YAML config file.

        Raises
        ------
        FileNotFoundError
            ``path`` does not exist.
        ValueError
            The file is not a mapping of valid settings.
        """
        path = Path(path)
        if not path.is_file():
            msg = f"training config {str(path)!r} does not exist"
            raise FileNotFoundError(msg)
        text = path.read_text(encoding="utf-8")
        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as e:
            msg = f"could not parse training config {str(path)!r}: {e}"
            raise ValueError(msg) from e
        if not isinstance(data, dict):
            msg = (
                f"training config {str(path)!r}: expected a mapping of settings, got "
                f"{type(data).__name__}"
            )
            raise ValueError(msg)
        try:
            return cls.from_dict(data)
        except ValueError as e:
            msg = f"training config {str(path)!r}: {e}"
            raise ValueError(msg) from e

    def replace(self, **changes: Any) -> TrainConfig:
        """Copy with ``changes`` (validated)."""
        return dataclasses.replace(self, **_renamed(changes, stacklevel=2))


def _accepting_old_names(init):
    """Wrap the dataclass ``__init__`` so that ``TrainConfig(output_dir=...)`` still works."""

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **_renamed(kwargs, stacklevel=2))

    return __init__


TrainConfig.__init__ = _accepting_old_names(TrainConfig.__init__)  # type: ignore[method-assign]
