"""Batch embeddings of H&E patches with an image encoder (memory bounded).

`iter_embeddings` is the package's one embedding loop (device, bf16 autocast on
CUDA, resizing, eval mode): `embed`, `embed_patches`, `embed_dataset`,
`write_embeddings`, `stalign.bench.encoder_features` and the embedding cache
of `stalign.bench.evaluate` all run through it. One function per input, each
with one return type: an AnnData ([`embed`][stalign.tl.embed], scanpy style: ``obsm``, returns
``None`` or the copy), an array of patches (`embed_patches` → array), a dataset
(`embed_dataset` → array, `write_embeddings` → the ``.h5`` path).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _keys as K
from .._utils import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from anndata import AnnData

    from ..models import Encoder

__all__ = [
    "embed",
    "embed_dataset",
    "embed_patches",
    "encoder_digest",
    "iter_embeddings",
    "resolve_encoder",
    "write_embeddings",
]

logger = logging.getLogger(__name__)

_CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def resolve_encoder(
    encoder: Encoder | torch.nn.Module | str | os.PathLike,
    *,
    projected: bool = False,
    pretrained: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
    image_size: int | None = None,
    seed: int | None = None,
) -> tuple[Any, str, int | None]:
    """Turn ``encoder`` into ``(module, name, input_px)``.

    ``encoder`` may be an [`stalign.models.Encoder`][stalign.models.Encoder] (or any module mapping
    ``[0, 1]`` images to ``(B, D)``), a registry/timm name, a stalign training run or
    checkpoint directory (its image tower; with ``projected`` including the projection
    head), or a directory written by [`stalign.models.export_timm`][stalign.models.export_timm].

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

    from ..models import create_encoder, load_exported

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
    embedding cache of `stalign.bench.evaluate` for encoders given as objects.
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


def embedding_precision(device: str | Any = "auto") -> str:
    """Arithmetic of `iter_embeddings` on ``device``: ``"bf16-autocast"`` or ``"float32"``.

    bf16 autocast on CUDA, float32 elsewhere. Caches of embeddings record it, since
    the two give slightly different numbers.
    """
    return "bf16-autocast" if _device(device).type == "cuda" else "float32"


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
    np.ndarray
        ``(B, D)`` float32 numpy arrays, in input order.
    """
    import torch

    dev = _device(device)
    bf16 = embedding_precision(dev) == "bf16-autocast"
    was_training = module.training
    module.eval().to(dev)  # stays there: the caller embeds chunk after chunk
    try:
        with torch.inference_mode():
            for batch in batches:
                x = _to_model_input(batch, dev, image_size)
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
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


def _check_patches(arr: Any) -> None:
    if not isinstance(arr, np.ndarray) or arr.ndim != 4 or arr.shape[-1] != 3:
        shape = getattr(arr, "shape", type(arr).__name__)
        msg = f"embed_patches: patches must be an (n, H, W, 3) uint8 array, got {shape}"
        raise ValueError(msg)
    if arr.dtype != np.uint8:
        msg = f"embed_patches: patches must be an (n, H, W, 3) uint8 array, got {arr.dtype}"
        raise ValueError(msg)


def _batches_from_array(arr: np.ndarray, batch_size: int) -> Iterator[dict]:
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
    """`iter_embeddings` over ``batch['image']``, paired with each batch dict."""
    pending: list[dict] = []

    def images() -> Iterator[Any]:
        for b in batches:
            pending.append(b)
            yield b["image"]

    for z in iter_embeddings(module, images(), **loop_kw):
        yield pending.pop(0), z


class _ArraySink:
    """Collect embeddings in an ``(n, D)`` float32 array (rows by ``batch['index']`` if given)."""

    def __init__(self, n: int, dim: int) -> None:
        self.array = np.empty((n, dim), dtype=np.float32)

    def write(self, start: int, z: np.ndarray, batch: dict) -> None:
        rows = batch.get("index")
        self.array[rows if rows is not None else slice(start, start + z.shape[0])] = z

    def close(self) -> None:
        pass


class _H5Sink:
    """Write embeddings (and barcodes / sample ids when known) into an ``.h5`` file."""

    def __init__(
        self, path: str | os.PathLike, n: int, dim: int, name: str, ids: Iterable[str]
    ) -> None:
        import h5py

        self.f = h5py.File(path, "w")
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


def _encoder_for(
    caller: str, encoder: Any, batch_size: int, projected: bool, image_size: int | None
) -> tuple[Any, str, int | None]:
    """Check ``batch_size`` and resolve ``encoder``: ``(module, name, input side in px)``."""
    if isinstance(batch_size, bool) or int(batch_size) <= 0:
        msg = f"{caller}: batch_size must be a positive integer, got {batch_size!r}"
        raise ValueError(msg)
    module, name, input_px = resolve_encoder(encoder, projected=projected)
    return module, name, image_size or input_px


def _run(
    caller: str,
    module: Any,
    name: str,
    batches: Iterable[dict],
    n: int,
    open_sink: Any,
    *,
    image_size: int | None,
    device: Any,
    progress: bool,
) -> Any:
    """Embed ``n`` patches batch by batch into ``open_sink(dim, first_batch)``; return it."""
    from .._utils import progress_bar as tqdm

    sink = None
    written = 0
    pbar = tqdm(total=n, desc=f"embed {name}", unit="patch", disable=not progress, leave=False)
    try:
        for batch, z in _embed_with_meta(module, batches, device=device, image_size=image_size):
            if sink is None:
                sink = open_sink(z.shape[1], batch)
            sink.write(written, z, batch)
            written += z.shape[0]
            pbar.update(z.shape[0])
    finally:
        pbar.close()
        if sink is not None:
            sink.close()
    if sink is None:
        msg = f"{caller}: nothing to embed (0 patches)"
        raise ValueError(msg)
    if written != n:
        msg = f"{caller}: expected {n} patches, got {written}"
        raise RuntimeError(msg)
    return sink


def _check_dataset(caller: str, dataset: Any) -> int:
    if isinstance(dataset, np.ndarray) or not (
        hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")
    ):
        msg = (
            f"{caller}: dataset must be a map-style dataset of {{'image': ...}} items, got "
            f"{type(dataset).__name__} (arrays of patches: embed_patches)"
        )
        raise TypeError(msg)
    return len(dataset)


def _run_dataset(
    caller: str,
    dataset: Any,
    encoder: Any,
    open_sink: Any,
    *,
    batch_size: int,
    image_size: int | None,
    projected: bool,
    device: str,
    num_workers: int,
    progress: bool,
) -> Any:
    """`_run` over a dataset; ``open_sink(n, dim, first_batch, encoder_name)``."""
    n = _check_dataset(caller, dataset)
    module, name, image_size = _encoder_for(caller, encoder, batch_size, projected, image_size)
    dev = _device(device)
    return _run(
        caller,
        module,
        name,
        _batches_from_dataset(dataset, batch_size, num_workers, dev.type == "cuda"),
        n,
        lambda dim, first: open_sink(n, dim, first, name),
        image_size=image_size,
        device=dev,
        progress=progress,
    )


def embed(
    adata: AnnData,
    encoder: Encoder | torch.nn.Module | str | os.PathLike,
    *,
    batch_size: int = 64,
    key_added: str | None = None,
    image_size: int | None = None,
    mpp: float | None = None,
    size_px: int | None = None,
    projected: bool = False,
    device: str = "auto",
    progress: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """Embed the patch of every spot of ``adata`` with ``encoder`` (scanpy style).

    Patches are cut around ``obsm['spatial']`` from the AnnData's H&E, batch by batch
    (memory is bounded by ``batch_size`` plus the ``(n, D)`` result). Other inputs have
    their own functions: [`embed_patches`][stalign.tl.embed_patches] (an array of patches),
    `embed_dataset` (a dataset, e.g. a pairs store) and `write_embeddings`
    (a dataset into an ``.h5`` file).

    Parameters
    ----------
    adata
        An AnnData with an H&E image (any reader of [`stalign.io`][stalign.io]).
    encoder
        An `stalign.models.Encoder` (or module mapping ``[0, 1]`` images to
        ``(B, D)``), an encoder name, a training run/checkpoint directory or a timm
        export directory (see [`resolve_encoder`][stalign.tl.resolve_encoder]).
    batch_size
        Patches per forward pass.
    key_added
        ``obsm`` / ``uns`` key (default ``X_<encoder name>``).
    image_size
        Resize patches to this side (px) before the encoder; default: the encoder's
        input size.
    mpp, size_px
        Cut ``size_px`` patches at ``mpp`` µm/px. Defaults: the encoder's native µm/px
        (else the image's own) and its input size.
    projected
        For a training checkpoint: embed with the projection head (the aligned
        ``proj_dim`` space) instead of the encoder's backbone features.
    device
        ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``... On CUDA the encoder
        runs under bf16 autocast (see [`iter_embeddings`][stalign.tl.iter_embeddings]).
    progress
        Show a tqdm progress bar.
    copy
        Return a copy instead of writing in place.

    Returns
    -------
    Any
        ``None``, or the modified copy with ``copy=True``. Writes ``obsm[key_added]``
        ``(n, D)`` float32 in ``obs_names`` order and ``uns[key_added]['params']``
        (encoder, batch_size, image_size, mpp, size_px, projected).

    Raises
    ------
    TypeError
        ``adata`` is not an AnnData (the message names the function for it).
    ValueError
        No µm/px known (pass ``mpp=``), or ``batch_size`` not positive.
    """
    import anndata as ad

    if not isinstance(adata, ad.AnnData):
        msg = (
            f"embed: expected an AnnData, got {type(adata).__name__}; use embed_patches for "
            "an array of patches, embed_dataset / write_embeddings for a dataset"
        )
        raise TypeError(msg)
    module, name, image_size = _encoder_for("embed", encoder, batch_size, projected, image_size)
    adata = adata.copy() if copy else adata
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
    batches = _batches_from_adata(adata, batch_size, mpp, size_px)
    sink = _run(
        "embed",
        module,
        name,
        batches,
        adata.n_obs,
        lambda dim, _: _ArraySink(adata.n_obs, dim),
        image_size=image_size,
        device=_device(device),
        progress=progress,
    )
    key = key_added or K.embedding_key(name)
    adata.obsm[key] = sink.array
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
    return adata if copy else None


def embed_patches(
    patches: np.ndarray,
    encoder: Encoder | torch.nn.Module | str | os.PathLike,
    *,
    batch_size: int = 64,
    image_size: int | None = None,
    projected: bool = False,
    device: str = "auto",
    progress: bool = True,
) -> np.ndarray:
    """Embed an array of patches with ``encoder``, batch by batch.

    Parameters
    ----------
    patches
        ``(n, H, W, 3)`` uint8 RGB patches (e.g. `stalign.im.extract_patches`).
    encoder, batch_size, image_size, projected, device, progress
        As for [`embed`][stalign.tl.embed].

    Returns
    -------
    np.ndarray
        ``(n, D)`` float32 embeddings, row ``i`` for ``patches[i]``.
    """
    _check_patches(patches)  # before the encoder loads
    module, name, image_size = _encoder_for(
        "embed_patches", encoder, batch_size, projected, image_size
    )
    n = patches.shape[0]
    sink = _run(
        "embed_patches",
        module,
        name,
        _batches_from_array(patches, batch_size),
        n,
        lambda dim, _: _ArraySink(n, dim),
        image_size=image_size,
        device=_device(device),
        progress=progress,
    )
    return sink.array


def embed_dataset(
    dataset: Any,
    encoder: Encoder | torch.nn.Module | str | os.PathLike,
    *,
    batch_size: int = 64,
    image_size: int | None = None,
    projected: bool = False,
    device: str = "auto",
    num_workers: int = 0,
    progress: bool = True,
) -> np.ndarray:
    """Embed every item of a dataset with ``encoder`` into an in-memory array.

    Parameters
    ----------
    dataset
        A map-style dataset of ``{'image': ...}`` items: uint8 ``(H, W, 3)`` or float
        ``(3, H, W)`` in ``[0, 1]`` (`stalign.pairs.PairsDataset`,
        `stalign.train.TensorPairsDataset`, or your own); other keys are ignored.
    encoder, batch_size, image_size, projected, device, progress
        As for [`embed`][stalign.tl.embed].
    num_workers
        DataLoader workers.

    Returns
    -------
    np.ndarray
        ``(n, D)`` float32 embeddings in dataset order. For stores too large for memory use
        [`write_embeddings`][stalign.tl.write_embeddings].
    """
    sink = _run_dataset(
        "embed_dataset",
        dataset,
        encoder,
        lambda n, dim, first, name: _ArraySink(n, dim),
        batch_size=batch_size,
        image_size=image_size,
        projected=projected,
        device=device,
        num_workers=num_workers,
        progress=progress,
    )
    return sink.array


def write_embeddings(
    dataset: Any,
    encoder: Encoder | torch.nn.Module | str | os.PathLike,
    path: str | os.PathLike,
    *,
    batch_size: int = 64,
    image_size: int | None = None,
    projected: bool = False,
    device: str = "auto",
    num_workers: int = 0,
    progress: bool = True,
) -> Path:
    """Embed every item of a dataset with ``encoder`` into an ``.h5`` file.

    Memory is bounded by one batch: embeddings go to disk as they are computed, into a
    temporary file that replaces ``path`` only once every item is embedded (a failed or
    killed run leaves ``path`` as it was).

    Parameters
    ----------
    dataset
        As for `embed_dataset`; its items' ``barcode`` / ``sample_id`` are written
        when every item has them.
    encoder, batch_size, image_size, projected, device, progress
        As for [`embed`][stalign.tl.embed].
    path
        The ``.h5`` file to write (parent folders are created): datasets ``embeddings``
        ``(n, D)`` float32 and, when known, ``barcode`` / ``sample_id`` (strings);
        attribute ``encoder`` (the encoder's name).
    num_workers
        DataLoader workers.

    Returns
    -------
    Path
        ``path`` as a `Path`.
    """
    with atomic_path(path, suffix=".h5.tmp") as tmp:  # a failed run leaves no partial file
        _run_dataset(
            "write_embeddings",
            dataset,
            encoder,
            lambda n, dim, first, name: _H5Sink(
                tmp, n, dim, name, [k for k in _ID_KEYS if k in first]
            ),
            batch_size=batch_size,
            image_size=image_size,
            projected=projected,
            device=device,
            num_workers=num_workers,
            progress=progress,
        )
    return Path(path)
