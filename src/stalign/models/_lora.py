"""LoRA adapters on encoders, via peft (``LoraConfig`` + ``get_peft_model``)."""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from ._encoder import Encoder

__all__ = ["LoraSummary", "add_lora", "count_parameters", "lora_target_names", "remove_lora"]

logger = logging.getLogger(__name__)

_ADAPTABLE = (nn.Linear, nn.Conv2d)


@dataclass(frozen=True)
class LoraSummary:
    """What [`add_lora`][stalign.models.add_lora] did."""

    r: int
    alpha: float
    dropout: float
    target_modules: tuple[str, ...]
    trainable_params: int
    total_params: int

    @property
    def trainable_fraction(self) -> float:
        """Trainable / total parameters."""
        return self.trainable_params / max(self.total_params, 1)

    def __str__(self) -> str:
        return (
            f"LoRA r={self.r} alpha={self.alpha} on {len(self.target_modules)} modules: "
            f"{self.trainable_params:,} trainable of {self.total_params:,} parameters "
            f"({100 * self.trainable_fraction:.2f} %)"
        )


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """Return ``(trainable, total)`` parameter counts of ``module``."""
    trainable = total = 0
    for p in module.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def _blocks(model: nn.Module, containers: Sequence[str]) -> list[str]:
    """Qualified names of the blocks, in order (children of each container)."""
    names = []
    modules = dict(model.named_modules())
    for cont in containers:
        if cont in modules:
            names.extend(f"{cont}.{child}" for child, _ in modules[cont].named_children())
    return names


def lora_target_names(
    model: nn.Module,
    patterns: Sequence[str],
    *,
    containers: Sequence[str] = ("blocks",),
    last_n_blocks: int | None = None,
) -> list[str]:
    """Qualified names of the ``nn.Linear``/``nn.Conv2d`` modules LoRA will adapt.

    Parameters
    ----------
    model
        The backbone.
    patterns
        Regular expressions; a module is selected when one of them matches the end of
        its qualified name at a ``.`` boundary (``"attn.qkv"`` matches
        ``"blocks.3.attn.qkv"``).
    containers
        Attributes whose children are the blocks counted by ``last_n_blocks``.
    last_n_blocks
        Only adapt modules inside the last ``n`` blocks.
    """
    regexes = [re.compile(rf"(^|.*\.)(?:{p})$") for p in patterns]
    allowed_prefixes: tuple[str, ...] | None = None
    if last_n_blocks is not None:
        if int(last_n_blocks) <= 0:
            msg = f"add_lora: last_n_blocks must be a positive integer, got {last_n_blocks!r}"
            raise ValueError(msg)
        blocks = _blocks(model, containers)
        if not blocks:
            msg = (
                f"add_lora: last_n_blocks={last_n_blocks} but the model has none of the block "
                f"containers {list(containers)}; pass last_n_blocks=None"
            )
            raise ValueError(msg)
        allowed_prefixes = tuple(f"{b}." for b in blocks[-int(last_n_blocks) :])
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, _ADAPTABLE) or not name:
            continue
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            continue  # depth-wise convs: LoRA adds little and peft support varies
        if allowed_prefixes is not None and not name.startswith(allowed_prefixes):
            continue
        if any(r.match(name) for r in regexes):
            names.append(name)
    return names


def add_lora(
    encoder: Encoder,
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.1,
    target_modules: Sequence[str] | None = None,
    last_n_blocks: int | None = None,
) -> Encoder:
    """Freeze ``encoder`` and add trainable LoRA adapters (peft) to it, in place.

    Parameters
    ----------
    encoder
        An `Encoder` from `create_encoder`.
    r
        LoRA rank.
    alpha
        LoRA scaling numerator (the update is scaled by ``alpha / r``).
    dropout
        Dropout on the LoRA branch.
    target_modules
        Regular expressions for module-name suffixes; ``None`` uses the encoder's
        ``config.lora_targets`` (``qkv|proj|fc1|fc2`` for ViTs, convolutions for ResNets).
    last_n_blocks
        Only adapt the last ``n`` blocks (``None``: all).

    Returns
    -------
    Encoder
        The same encoder, whose ``model`` now holds LoRA layers; ``encoder.peft_model`` is
        the peft wrapper (for ``save_pretrained`` / ``merge_and_unload``) and
        ``encoder.lora_summary`` a `LoraSummary` with trainable vs total parameters.

    Raises
    ------
    ValueError
        Bad hyper-parameters, an encoder that already has LoRA, or no module matching.
    """
    from peft import LoraConfig, get_peft_model

    if not isinstance(encoder, Encoder):
        msg = f"add_lora expects a stalign.models.Encoder, got {type(encoder).__name__}"
        raise TypeError(msg)
    if encoder.peft_model is not None:
        msg = f"add_lora: encoder {encoder.name!r} already has LoRA adapters"
        raise ValueError(msg)
    if int(r) <= 0 or float(alpha) <= 0 or not 0 <= float(dropout) < 1:
        msg = (
            f"add_lora: need r > 0, alpha > 0 and 0 <= dropout < 1; got r={r}, "
            f"alpha={alpha}, dropout={dropout}"
        )
        raise ValueError(msg)
    patterns = tuple(target_modules) if target_modules is not None else encoder.config.lora_targets
    names = lora_target_names(
        encoder.model,
        patterns,
        containers=encoder.config.block_containers,
        last_n_blocks=last_n_blocks,
    )
    if not names:
        msg = (
            f"add_lora: no nn.Linear/nn.Conv2d module of encoder {encoder.name!r} matches "
            f"target_modules={list(patterns)}"
        )
        raise ValueError(msg)
    config = LoraConfig(
        r=int(r),
        lora_alpha=float(alpha),
        lora_dropout=float(dropout),
        target_modules=names,
        bias="none",
    )
    peft_model = get_peft_model(encoder.model, config)  # injects into encoder.model in place
    object.__setattr__(encoder, "peft_model", peft_model)
    trainable, total = count_parameters(encoder)
    summary = LoraSummary(int(r), float(alpha), float(dropout), tuple(names), trainable, total)
    object.__setattr__(encoder, "lora_summary", summary)
    logger.info("%s: %s", encoder.name, summary)
    return encoder


def remove_lora(encoder: Encoder) -> Encoder:
    """Return a copy of ``encoder`` with its LoRA adapters removed: the encoder it started from.

    LoRA keeps the base weights frozen, so peft's ``unload`` (the adapter layers replaced
    by the layers they wrap, nothing merged) gives back the backbone an alignment started
    from, bit for bit, with the same colour normalisation as the aligned export.
    ``encoder`` itself is not modified; one without adapters is returned as a plain copy.
    """
    base = copy.deepcopy(encoder)
    if base.peft_model is not None:
        base.model = base.peft_model.unload()
        object.__setattr__(base, "peft_model", None)
        base.__dict__.pop("lora_summary", None)  # set by add_lora
    return base
