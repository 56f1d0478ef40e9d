"""Batch embeddings of H&E patches with an image encoder (memory bounded).

:func:`iter_embeddings` is the package's one embedding loop (device, bf16 autocast on
CUDA, resizing, eval mode): :func:`embed`, :func:`stalign.bench.encoder_features` and
the embedding cache of :func:`stalign.bench.evaluate` all run through it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .. import _keys as K

__all__ = ["embed", "encoder_digest", "iter_embeddings", "resolve_encoder"]

logger = logging.getLogger(__name__)

_CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def resolve_encoder(
    encoder: Any,
    *,
    projected: bool = False,
    pretrained: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
    image_size: int | None = None,
    seed: int | None = None,
) -> tuple[Any, str, int | None]:
    """Turn ``encoder`` into ``(module, name, input_px)``.

    ``encoder`` may be an :class:`stalign.models.Encoder` (or any module mapping
    ``[0, 1]`` images to ``(B, D)``), a registry/timm name, a stalign training run or
    checkpoint directory (its image tower; with ``projected`` including the projection
    head), or a directory written by :func:`stalign.models.export_timm`.

    Parameters
    ----------
    encoder
        What to load (see above).
    projected
        Training checkpoints: return the image tower with its projection head.
    pretrained, checkpoint_path
        Registry names: load pretrained weights (from ``checkpoint_path`` if given).
    image_size
        Registry names: build the model for this input side (px).
    seed
        Registry names without pretrained weights: ``torch.manual_seed(seed)`` before
        the random initialisation, so the same seed gives the same weights.

    Raises
    ------
    FileNotFoundError
        A directory that is neither a timm export nor a training checkpoint.
    ValueError
        A bare weights file (its architecture is unknown).
    TypeError
        Anything else.
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

        try:
            model = load_model(path)
        except FileNotFoundError as e:
            msg = (
                f"encoder {str(path)!r}: not a `stalign export` timm directory "
                f"(config.json + stalign.json) and {e}"
            )
            raise FileNotFoundError(msg) from e
        enc: Encoder = model.image_tower.encoder
        module = model.image_tower if projected else enc
        name = f"{enc.name}_aligned" + ("_proj" if projected else "")
        return module, name, int(model.meta.get("input_px") or enc.config.input_size)
    if isinstance(encoder, str | os.PathLike) and Path(encoder).suffix in _CHECKPOINT_SUFFIXES:
        msg = (
            f"encoder {str(encoder)!r}: a bare checkpoint needs its architecture; "
            "use a `stalign export` directory, a training run or a registry name"
        )
        raise ValueError(msg)
    if isinstance(encoder, str):
        if seed is not None:
            torch.manual_seed(seed)
        enc = create_encoder(
            encoder, pretrained=pretrained, checkpoint_path=checkpoint_path, img_size=image_size
        )
        return enc, enc.name, enc.config.input_size
    msg = (
        "encoder must be an Encoder/nn.Module, an encoder name, a training "
        f"checkpoint directory or an export directory; got {type(encoder).__name__} {encoder!r}"
    )
    raise TypeError(msg)


def encoder_digest(module: Any) -> str:
    """SHA-256 of a module's class and state dict (names, dtypes, shapes and values).

    Two modules with the same digest compute the same function, so it keys the
    embedding cache of :func:`stalign.bench.evaluate` for encoders given as objects.
    """
    import torch

    h = hashlib.sha256(type(module).__qualname__.encode())
    for name, t in module.state_dict().items():
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        arr = t.detach().cpu().contiguous()
        if arr.dtype == torch.bfloat16:
            arr = arr.view(torch.int16)
        h.update(arr.numpy().tobytes())
    return h.hexdigest()


def _device(device: str | Any) -> Any:
    import torch

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _to_model_input(x: Any, dev: Any, image_size: int | None) -> Any:
    """Batch → float ``(B, 3, S, S)`` in ``[0, 1]`` on ``dev``.

    ``x`` is uint8 ``(B, H, W, 3)`` (moved to the device as uint8, 4× less transfer,
    then scaled) or float ``(B, 3, H, W)`` in ``[0, 1]``; resized (bilinear,
    antialiased) to ``image_size`` px when that differs.
    """
    import torch

    x = torch.as_tensor(x)
    if x.dtype == torch.uint8:
        if x.ndim != 4 or x.shape[-1] != 3:
            msg = f"uint8 batches must be (B, H, W, 3), got {tuple(x.shape)}"
            raise ValueError(msg)
        x = x.to(dev, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    else:
        x = x.to(dev, non_blocking=True)
    if image_size is not None and x.shape[-1] != image_size:
        x = torch.nn.functional.interpolate(
            x, size=(image_size, image_size), mode="bilinear", antialias=True
        ).clamp_(0.0, 1.0)
    return x


def iter_embeddings(
    module: Any,
    batches: Iterable[Any],
    *,
    device: str | Any = "auto",
    image_size: int | None = None,
) -> Iterator[np.ndarray]:
    """Yield ``(B, D)`` float32 embeddings, one per input batch (the one embedding loop).

    Each batch is uint8 ``(B, H, W, 3)`` patches (numpy or torch) or a float
    ``(B, 3, H, W)`` tensor in ``[0, 1]``. The module runs in eval mode under
    ``torch.inference_mode`` on ``device``; on CUDA inside bf16 autocast (embeddings are
    returned as float32 either way), on the CPU in float32. The module is left on
    ``device`` and its train/eval mode is restored afterwards.

    Parameters
    ----------
    module
        A torch module mapping ``[0, 1]`` RGB ``(B, 3, S, S)`` to ``(B, D)``.
    batches
        Iterable of batches (see above); memory is bounded by one batch.
    device
        ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    image_size
        Resize to this side (px) first; ``None`` keeps the batch size.

    Yields
    ------
    ``(B, D)`` float32 numpy arrays, in input order.
    """
    import torch

    dev = _device(device)
    was_training = module.training
    module.eval().to(dev)  # stays there: the caller embeds chunk after chunk
    try:
        with torch.inference_mode():
            for batch in batches:
                x = _to_model_input(batch, dev, image_size)
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                    z = module(x)
                yield z.float().cpu().numpy()
    finally:
        module.train(was_training)


#: per-item labels an embedding batch carries along when every item has them
_ID_KEYS = ("barcode", "sample_id")


def _collate_images(items: list[dict]) -> dict[str, Any]:
    """Stack the items' ``'image'``; keep ``barcode`` / ``sample_id`` lists when present.

    The embedding loop needs nothing else: a dataset of ``{'image': ...}`` items (uint8
    ``(H, W, 3)`` or float ``(3, H, W)`` in ``[0, 1]``) is enough.
    """
    import torch

    if not items:
        msg = "embed: empty batch"
        raise ValueError(msg)
    if not all(isinstance(it, dict) and "image" in it for it in items):
        msg = "embed: dataset items must be dicts with an 'image' entry"
        raise TypeError(msg)
    batch: dict[str, Any] = {"image": torch.stack([torch.as_tensor(it["image"]) for it in items])}
    for key in _ID_KEYS:
        if all(it.get(key) is not None for it in items):
            batch[key] = [it[key] for it in items]
    return batch


def _batches_from_dataset(dataset, batch_size: int, num_workers: int, pin: bool) -> Iterator[dict]:
    from torch.utils.data import DataLoader

    yield from DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate_images,
        pin_memory=pin,
    )


def _batches_from_array(arr: np.ndarray, batch_size: int) -> Iterator[dict]:
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        msg = f"embed: patches must be (n, H, W, 3) uint8, got {arr.shape} {arr.dtype}"
        raise ValueError(msg)
    for s in range(0, arr.shape[0], batch_size):
        yield {"image": np.ascontiguousarray(arr[s : s + batch_size])}


def _batches_from_adata(adata, batch_size: int, mpp: float, size_px: int) -> Iterator[dict]:
    from .. import im

    # only the pixels are embedded: no tissue measurement (and so no slide mask)
    for b in im.iter_patches(
        adata, mpp=mpp, size_px=size_px, batch_size=batch_size, tissue_qc=None, progress=False
    ):
        yield {"image": np.ascontiguousarray(b.images), "index": np.asarray(b.index)}


def _embed_with_meta(
    module, batches: Iterable[dict], **loop_kw
) -> Iterator[tuple[dict, np.ndarray]]:
    """:func:`iter_embeddings` over ``batch['image']``, paired with each batch dict."""
    pending: list[dict] = []

    def images() -> Iterator[Any]:
        for b in batches:
            pending.append(b)
            yield b["image"]

    for z in iter_embeddings(module, images(), **loop_kw):
        yield pending.pop(0), z


class _H5Sink:
    """Write embeddings (and barcodes / sample ids when known) into an ``.h5`` file."""

    def __init__(
        self, out: str | os.PathLike, n: int, dim: int, name: str, ids: Iterable[str]
    ) -> None:
        import h5py

        Path(out).parent.mkdir(parents=True, exist_ok=True)
        self.f = h5py.File(out, "w")
        self.f.create_dataset(
            "embeddings", (n, dim), dtype="float32", chunks=(max(1, min(n, 1024)), dim)
        )
        self.ids = tuple(ids)
        for key in self.ids:
            self.f.create_dataset(key, (n,), dtype=h5py.string_dtype())
        self.f.attrs["encoder"] = name

    def write(self, start: int, z: np.ndarray, batch: dict) -> None:
        stop = start + z.shape[0]
        self.f["embeddings"][start:stop] = z
        for key in self.ids:
            self.f[key][start:stop] = [str(v) for v in batch[key]]

    def close(self) -> None:
        self.f.close()


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
        ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``... On CUDA the encoder
        runs under bf16 autocast (see :func:`iter_embeddings`).
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
        batches = _batches_from_dataset(data, batch_size, num_workers, dev.type == "cuda")
    else:
        msg = (
            f"embed: data must be an AnnData, a dataset or a uint8 array, got {type(data).__name__}"
        )
        raise TypeError(msg)

    sink = result = None
    written = 0
    pbar = tqdm(total=n, desc=f"embed {name}", unit="patch", disable=not progress, leave=False)
    try:
        for batch, z in _embed_with_meta(module, batches, device=dev, image_size=image_size):
            if sink is None and result is None:
                if out is not None and not is_adata:
                    sink = _H5Sink(out, n, z.shape[1], name, [k for k in _ID_KEYS if k in batch])
                else:
                    result = np.empty((n, z.shape[1]), dtype=np.float32)
            b = z.shape[0]
            if sink is not None:
                sink.write(written, z, batch)
            else:
                rows = batch.get("index")
                result[rows if rows is not None else slice(written, written + b)] = z
            written += b
            pbar.update(b)
    finally:
        pbar.close()
        if sink is not None:
            sink.close()
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
