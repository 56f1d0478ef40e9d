"""Export a (LoRA-adapted) encoder as a plain timm model directory and/or a peft adapter."""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

from ._encoder import Encoder

__all__ = [
    "code_provenance",
    "export",
    "export_adapter",
    "export_timm",
    "load_exported",
    "read_provenance",
]

logger = logging.getLogger(__name__)

STALIGN_META = "stalign.json"
_GIT_TIMEOUT_S = 5.0


def code_provenance() -> dict[str, str | None]:
    """Return the version of stalign and, in a git checkout of it, its commit.

    The commit is ``git rev-parse HEAD`` run in the checkout that holds this package (no
    network); ``None`` for an installed wheel, without git, or on any git error.

    Returns
    -------
    dict
        ``{"stalign_version": ..., "git_commit": ... or None}``.
    """
    import subprocess

    from .. import __version__

    root = Path(__file__).resolve().parents[3]  # src/stalign/models/_export.py -> checkout
    commit = None
    if (root / ".git").exists() and (root / "src" / "stalign").is_dir():
        try:
            done = subprocess.run(
                ["git", "-C", str(root), "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=_GIT_TIMEOUT_S,
                env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
                check=False,
            )
            out = done.stdout.strip()
            commit = out if done.returncode == 0 and len(out) == 40 else None
        except (OSError, subprocess.SubprocessError):
            commit = None
    return {"stalign_version": __version__, "git_commit": commit}


def _write_meta(out: Path, meta: dict[str, Any], provenance: dict[str, Any] | None) -> None:
    """Write ``stalign.json``: ``meta`` plus the provenance (training data and code)."""
    from .._utils import atomic_write_text

    record = {**(provenance or {}), "exported_by": code_provenance()}
    text = json.dumps({**meta, "provenance": record}, indent=2)
    atomic_write_text(out / STALIGN_META, text + "\n")


def read_provenance(export_dir: str | os.PathLike) -> dict[str, Any]:
    """Read what an export records of how its encoder was trained.

    Parameters
    ----------
    export_dir
        A folder written by [`export`][stalign.models.export] (with ``timm/`` and/or
        ``adapter/``), or one of those folders.

    Returns
    -------
    dict
        ``training_samples``, ``training_patients``, ``validation_samples``,
        ``validation_patients`` (sorted lists), ``pairs_store`` (path),
        ``store_fingerprint`` (the store's ``params_fingerprint``), ``store_index_sha256``,
        ``stalign_version`` and ``git_commit`` of the training run, and ``exported_by``
        (the same two of the export); only what the export recorded. Empty for a folder
        without ``stalign.json`` or an export written before provenance was recorded.

    Raises
    ------
    FileNotFoundError
        ``export_dir`` does not exist.
    ValueError
        Its ``stalign.json`` is not valid JSON.
    """
    path = Path(export_dir)
    if not path.exists():
        msg = f"export folder {str(path)!r} does not exist"
        raise FileNotFoundError(msg)
    for folder in (path, path / "timm", path / "adapter"):
        candidate = folder / STALIGN_META
        if candidate.is_file():
            try:
                meta = json.loads(candidate.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                msg = f"{str(candidate)!r} is not valid JSON: {e}"
                raise ValueError(msg) from e
            found = meta.get("provenance") if isinstance(meta, dict) else None
            return dict(found) if isinstance(found, dict) else {}
    return {}


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


def export_timm(
    encoder: Encoder, out: str | os.PathLike, *, provenance: dict[str, Any] | None = None
) -> Path:
    """Save ``encoder`` (LoRA merged into the base weights) as a timm model directory.

    The directory holds ``config.json`` (architecture, ``model_args``, ``num_classes=0``
    and a ``pretrained_cfg`` whose ``mean``/``std`` are the encoder's current
    normalisation, e.g. the training cohort's colour statistics), ``model.safetensors``
    and ``stalign.json`` (the encoder config and the provenance). Load it with timm alone::

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
    provenance
        How the encoder was trained (training/validation samples and patients, pairs
        store and its fingerprint, stalign version and commit): the ``provenance`` of a
        training run's ``model.json``; written to ``stalign.json`` with the exporting
        code's version and commit (see [`read_provenance`][stalign.models.read_provenance]).

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
    _write_meta(out, meta, provenance)
    logger.info("exported timm model to %s", out)
    return out


def export_adapter(
    encoder: Encoder, out: str | os.PathLike, *, provenance: dict[str, Any] | None = None
) -> Path:
    """Save only the LoRA adapter (peft ``save_pretrained``) plus ``stalign.json``.

    Parameters
    ----------
    encoder
        An encoder with a LoRA adapter (it is not modified).
    out
        Output directory (created).
    provenance
        How the encoder was trained (training/validation samples and patients, pairs
        store and its fingerprint, stalign version and commit): the ``provenance`` of a
        training run's ``model.json``; written to ``stalign.json`` with the exporting
        code's version and commit (see [`read_provenance`][stalign.models.read_provenance]).

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
    _write_meta(out, meta, provenance)
    return out


def export(
    encoder: Encoder,
    out: str | os.PathLike,
    *,
    merged: bool = True,
    adapter: bool = True,
    provenance: dict[str, Any] | None = None,
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
    provenance
        How the encoder was trained (training/validation samples and patients, pairs
        store and its fingerprint, stalign version and commit): the ``provenance`` of a
        training run's ``model.json``; written to ``stalign.json`` with the exporting
        code's version and commit (see [`read_provenance`][stalign.models.read_provenance]).

    Returns
    -------
    dict[str, Path]
        ``{"timm": path, "adapter": path}`` for what was written.
    """
    out = Path(out)
    written: dict[str, Path] = {}
    if merged:
        written["timm"] = export_timm(encoder, out / "timm", provenance=provenance)
    if adapter and encoder.peft_model is not None:
        written["adapter"] = export_adapter(encoder, out / "adapter", provenance=provenance)
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
