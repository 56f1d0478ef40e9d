"""Batch embeddings of H&E patches with an image encoder (memory bounded)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .. import _keys as K

__all__ = ["embed", "resolve_encoder"]

logger = logging.getLogger(__name__)


def resolve_encoder(
    encoder: Any,
    *,
    projected: bool = False,
    pretrained: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
) -> tuple[Any, str, int | None]:
    """Turn ``encoder`` into ``(module, name, input_px)``.

    ``encoder`` may be an :class:`stalign.models.Encoder` (or any module mapping
    ``[0, 1]`` images to ``(B, D)``), a registry/timm name, a stalign training run or
    checkpoint directory (its image tower; with ``projected`` including the projection
    head), or a directory written by :func:`stalign.models.export_timm`.
    """
    import torch

    from ..models import Encoder, create_encoder, load_exported

    if isinstance(encoder, torch.nn.Module):
        inner = getattr(encoder, "encoder", encoder)  # an ImageTower wraps its Encoder
        name = getattr(inner, "name", None) or type(encoder).__name__
        cfg = getattr(encoder, "config", None) or getattr(inner, "config", None)
        return encoder, str(name), getattr(cfg, "input_size", None)
    if isinstance(encoder, str | os.PathLike) and Path(encoder).is_dir():
        path = Path(encoder)
        if (path / "stalign.json").is_file() and (path / "config.json").is_file():
            enc = load_exported(path)
            return enc, enc.name, enc.config.input_size
        from ..train import load_model

        model = load_model(path)
        enc: Encoder = model.image_tower.encoder
        module = model.image_tower if projected else enc
        name = f"{enc.name}_aligned" + ("_proj" if projected else "")
        return module, name, int(model.meta.get("input_px") or enc.config.input_size)
    if isinstance(encoder, str):
        enc = create_encoder(encoder, pretrained=pretrained, checkpoint_path=checkpoint_path)
        return enc, enc.name, enc.config.input_size
    msg = (
        "embed: encoder must be an Encoder/nn.Module, an encoder name, a training "
        f"checkpoint directory or an export directory; got {type(encoder).__name__} {encoder!r}"
    )
    raise TypeError(msg)


def _device(device: str) -> Any:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _batches_from_dataset(dataset, batch_size: int, num_workers: int) -> Iterator[dict]:
    from torch.utils.data import DataLoader

    from ..train import collate_pairs

    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_pairs,
    )
    for batch in loader:
        yield {
            "image": batch["image"],
            "barcode": batch["barcode"],
            "sample_id": batch["sample_id"],
        }


def _batches_from_array(arr: np.ndarray, batch_size: int) -> Iterator[dict]:
    import torch

    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        msg = f"embed: patches must be (n, H, W, 3) uint8, got {arr.shape} {arr.dtype}"
        raise ValueError(msg)
    for s in range(0, arr.shape[0], batch_size):
        x = torch.from_numpy(np.ascontiguousarray(arr[s : s + batch_size]))
        yield {"image": x.permute(0, 3, 1, 2).float().div_(255.0)}


def _batches_from_adata(adata, batch_size: int, mpp: float, size_px: int) -> Iterator[dict]:
    import torch

    from .. import im

    for b in im.iter_patches(
        adata, mpp=mpp, size_px=size_px, batch_size=batch_size, progress=False
    ):
        x = torch.from_numpy(np.ascontiguousarray(b.images)).permute(0, 3, 1, 2).float()
        yield {"image": x.div_(255.0), "index": np.asarray(b.index)}


def embed(
    data: Any,
    encoder: Any,
    *,
    batch_size: int = 64,
    key_added: str | None = None,
    out: str | os.PathLike | None = None,
    image_size: int | None = None,
    mpp: float | None = None,
    size_px: int | None = None,
    projected: bool = False,
    device: str = "auto",
    num_workers: int = 0,
    progress: bool = True,
    copy: bool = False,
):
    """Embed every patch of ``data`` with ``encoder``, batch by batch.

    Parameters
    ----------
    data
        An AnnData with an H&E image (patches are cut around ``obsm['spatial']``), a
        pairs dataset (:class:`stalign.pairs.PairsDataset`,
        :class:`stalign.train.TensorPairsDataset`, any dataset of ``{'image': ...}``),
        or an ``(n, H, W, 3)`` uint8 array of patches.
    encoder
        An :class:`stalign.models.Encoder` (or module mapping ``[0, 1]`` images to
        ``(B, D)``), an encoder name, a training run/checkpoint directory or a timm
        export directory (see :func:`resolve_encoder`).
    batch_size
        Patches per forward pass; memory is bounded by it (plus the ``(n, D)`` output,
        which goes to disk with ``out``).
    key_added
        ``obsm`` key for AnnData input (default ``X_<encoder name>``).
    out
        Write the embeddings to this ``.h5`` file (datasets ``embeddings`` and, when
        known, ``barcode``/``sample_id``) instead of returning them.
    image_size
        Resize patches to this side (px) before the encoder; default: the encoder's
        input size.
    mpp, size_px
        AnnData input only: cut ``size_px`` patches at ``mpp`` µm/px. Defaults: the
        encoder's native µm/px (else the image's own) and its input size.
    projected
        For a training checkpoint: embed with the projection head (the aligned
        ``proj_dim`` space) instead of the encoder's backbone features.
    device
        ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``...
    num_workers
        DataLoader workers for dataset input.
    progress
        Show a tqdm progress bar.
    copy
        AnnData input: return a copy instead of writing in place.

    Returns
    -------
    AnnData input: ``None`` (or the copy), with ``obsm[key_added]`` ``(n, D)`` float32
    in ``obs_names`` order and ``uns[key_added]['params']`` (encoder, batch_size,
    image_size, mpp, size_px). Other input: the ``(n, D)`` float32 array, or the ``out``
    path when ``out`` is given.
    """
    import torch
    from tqdm.auto import tqdm

    if int(batch_size) <= 0:
        msg = f"embed: batch_size must be a positive integer, got {batch_size!r}"
        raise ValueError(msg)
    module, name, input_px = resolve_encoder(encoder, projected=projected)
    image_size = image_size or input_px
    dev = _device(device)
    is_adata = type(data).__name__ == "AnnData"
    n: int
    if is_adata:
        adata = data.copy() if copy else data
        cfg = getattr(module, "config", None) or getattr(
            getattr(module, "encoder", None), "config", None
        )
        native = float(adata.uns.get(K.STALIGN, {}).get(K.MPP) or 0) or None
        mpp = mpp or getattr(cfg, "mpp", None) or native
        if mpp is None:
            msg = (
                "embed: the AnnData has no uns['stalign']['mpp'] and the encoder no "
                "native µm/px; pass mpp="
            )
            raise ValueError(msg)
        size_px = size_px or image_size or 224
        n = adata.n_obs
        batches = _batches_from_adata(adata, batch_size, mpp, size_px)
    elif isinstance(data, np.ndarray):
        n = data.shape[0]
        batches = _batches_from_array(data, batch_size)
    elif hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        n = len(data)
        batches = _batches_from_dataset(data, batch_size, num_workers)
    else:
        msg = (
            f"embed: data must be an AnnData, a dataset or a uint8 array, got {type(data).__name__}"
        )
        raise TypeError(msg)

    was_training = module.training
    module.eval().to(dev)
    h5 = result = None
    written = 0
    try:
        pbar = tqdm(total=n, desc=f"embed {name}", unit="patch", disable=not progress, leave=False)
        with torch.inference_mode():
            for batch in batches:
                x = batch["image"].to(dev)
                if image_size is not None and x.shape[-1] != image_size:
                    x = torch.nn.functional.interpolate(
                        x, size=(image_size, image_size), mode="bilinear", antialias=True
                    ).clamp_(0.0, 1.0)
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                    z = module(x)
                z = z.float().cpu().numpy()
                b = z.shape[0]
                if result is None and h5 is None:
                    if out is not None and not is_adata:
                        import h5py

                        Path(out).parent.mkdir(parents=True, exist_ok=True)
                        h5 = h5py.File(out, "w")
                        h5.create_dataset(
                            "embeddings",
                            (n, z.shape[1]),
                            dtype="float32",
                            chunks=(min(n, 1024), z.shape[1]),
                        )
                        str_dt = h5py.string_dtype()
                        if "barcode" in batch:
                            h5.create_dataset("barcode", (n,), dtype=str_dt)
                            h5.create_dataset("sample_id", (n,), dtype=str_dt)
                        h5.attrs["encoder"] = name
                    else:
                        result = np.empty((n, z.shape[1]), dtype=np.float32)
                rows = batch.get("index")
                sl = rows if rows is not None else slice(written, written + b)
                if h5 is not None:
                    h5["embeddings"][written : written + b] = z
                    if "barcode" in h5:
                        h5["barcode"][written : written + b] = [str(v) for v in batch["barcode"]]
                        h5["sample_id"][written : written + b] = [
                            str(v) for v in batch["sample_id"]
                        ]
                else:
                    result[sl] = z
                written += b
                pbar.update(b)
        pbar.close()
    finally:
        module.train(was_training)
        if h5 is not None:
            h5.close()
    if written != n:
        msg = f"embed: expected {n} patches, got {written}"
        raise RuntimeError(msg)
    if not is_adata:
        return Path(out) if out is not None else result
    key = key_added or K.embedding_key(name)
    adata.obsm[key] = result
    adata.uns[key] = {
        "params": {
            "encoder": name,
            "batch_size": int(batch_size),
            "image_size": image_size,
            "mpp": float(mpp),
            "size_px": int(size_px),
            "projected": bool(projected),
        }
    }
    if out is not None:
        adata.write_h5ad(out)
    return adata if copy else None
