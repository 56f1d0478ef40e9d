"""Export a (LoRA-adapted) encoder as a plain timm model directory and/or a peft adapter."""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

from ._encoder import Encoder

__all__ = ["export", "export_adapter", "export_timm", "load_exported"]

logger = logging.getLogger(__name__)

STALIGN_META = "stalign.json"


def _refuse_non_finite(encoder: Encoder) -> None:
    """Refuse to export weights that hold NaN or inf (a diverged training run)."""
    import torch

    bad = [name for name, p in encoder.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        msg = (
            f"encoder {encoder.name!r} has NaN or inf weights in {len(bad)} tensors (e.g. "
            f"{bad[0]}): refusing to export a diverged model"
        )
        raise ValueError(msg)


def export_timm(encoder: Encoder, out: str | os.PathLike) -> Path:
    """Save ``encoder`` (LoRA merged into the base weights) as a timm model directory.

    The directory holds ``config.json`` (architecture, ``model_args``, ``num_classes=0``
    and a ``pretrained_cfg`` whose ``mean``/``std`` are the encoder's current
    normalisation, e.g. the training cohort's colour statistics), ``model.safetensors``
    and ``stalign.json`` (the encoder config). Load it with timm alone::

        import timm
        model = timm.create_model("local-dir:/path/to/export", pretrained=True).eval()
        cfg = timm.data.resolve_data_config({}, model=model)  # mean/std, input size

    and feed ``(x - mean) / std`` for ``x`` RGB in ``[0, 1]``. For ``pooling="cls_mean"``
    encoders (Virchow2) compute ``cat(tokens[:, 0], tokens[:, n_prefix:].mean(1))``
    from ``model.forward_features(x)`` yourself.

    Parameters
    ----------
    encoder
        The encoder, with or without LoRA (it is not modified).
    out
        Output directory (created).

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    ValueError
        A weight is NaN or inf (a diverged training run); nothing is written.
    """
    from timm.models import save_for_hf

    _refuse_non_finite(encoder)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    enc = copy.deepcopy(encoder).cpu().eval()
    model = enc.peft_model.merge_and_unload() if enc.peft_model is not None else enc.model
    mean, std = enc.normalization
    size = enc.config.input_size
    data_config = {"input_size": (3, size, size), "mean": mean, "std": std, "crop_pct": 1.0}
    model_config: dict[str, Any] = {
        "pretrained_cfg": {"mean": list(mean), "std": list(std)},
    }
    save_for_hf(
        model,
        str(out),
        model_config=model_config,
        safe_serialization=True,
        data_config=data_config,
    )
    meta = {
        "encoder": enc.config.to_dict(),
        "normalization": {"mean": list(mean), "std": list(std)},
        "lora_merged": encoder.peft_model is not None,
        "pooling": enc.config.pooling,
    }
    (out / STALIGN_META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    logger.info("exported timm model to %s", out)
    return out


def export_adapter(encoder: Encoder, out: str | os.PathLike) -> Path:
    """Save only the LoRA adapter (peft ``save_pretrained``) plus ``stalign.json``.

    Parameters
    ----------
    encoder
        An encoder with a LoRA adapter (it is not modified).
    out
        Output directory (created).

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    ValueError
        The encoder has no LoRA adapter, or a weight is NaN or inf.
    """
    if encoder.peft_model is None:
        msg = f"export_adapter: encoder {encoder.name!r} has no LoRA adapter (call add_lora first)"
        raise ValueError(msg)
    _refuse_non_finite(encoder)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    encoder.peft_model.save_pretrained(str(out))
    mean, std = encoder.normalization
    meta = {
        "encoder": encoder.config.to_dict(),
        "normalization": {"mean": list(mean), "std": list(std)},
        "lora": {k: v for k, v in vars(encoder.lora_summary).items() if k != "target_modules"},
    }
    (out / STALIGN_META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return out


def export(
    encoder: Encoder,
    out: str | os.PathLike,
    *,
    merged: bool = True,
    adapter: bool = True,
) -> dict[str, Path]:
    """Export ``encoder``: merged timm model in ``out/timm`` and adapter in ``out/adapter``.

    Parameters
    ----------
    encoder
        The encoder (it is not modified).
    out
        Output directory (created).
    merged, adapter
        Write the merged timm model / the LoRA adapter (skipped with a warning when the
        encoder has none).

    Returns
    -------
    dict[str, Path]
        ``{"timm": path, "adapter": path}`` for what was written.
    """
    out = Path(out)
    written: dict[str, Path] = {}
    if merged:
        written["timm"] = export_timm(encoder, out / "timm")
    if adapter and encoder.peft_model is not None:
        written["adapter"] = export_adapter(encoder, out / "adapter")
    elif adapter:
        logger.warning(
            "encoder %s has no LoRA adapter; only the timm model is exported", encoder.name
        )
    return written


def load_exported(path: str | os.PathLike) -> Encoder:
    """Load a directory written by `export_timm` back into an `Encoder`.

    Raises
    ------
    FileNotFoundError
        ``path`` lacks ``config.json`` or ``stalign.json``.
    """
    import timm

    from ._registry import EncoderConfig

    path = Path(path)
    for name in ("config.json", STALIGN_META):
        if not (path / name).is_file():
            msg = f"{str(path)!r} is not a stalign timm export: {name} is missing"
            raise FileNotFoundError(msg)
    meta = json.loads((path / STALIGN_META).read_text(encoding="utf-8"))
    cfg = EncoderConfig.from_dict(meta["encoder"])
    model = timm.create_model(f"local-dir:{path}", pretrained=True)
    enc = Encoder(model, cfg)
    enc.set_normalization(meta["normalization"]["mean"], meta["normalization"]["std"])
    return enc.eval()
