"""Image encoders: registry, LoRA adapters (peft) and export (see docs/architecture.md).

>>> from stalign import models
>>> enc = models.create_encoder("vit_tiny_patch16_224", img_size=112)  # random init
>>> enc = models.add_lora(enc, r=8, alpha=16)
"""

from ._encoder import Encoder, create_encoder, load_state_dict_file
from ._export import (
    code_provenance,
    export,
    export_adapter,
    export_timm,
    load_exported,
    read_provenance,
)
from ._lora import LoraSummary, add_lora, count_parameters, lora_target_names, remove_lora
from ._packaged import PackagedWeights, packaged_weights, weights_available
from ._registry import (
    EncoderConfig,
    get_encoder_config,
    list_encoders,
    register_encoder,
)

__all__ = [
    "Encoder",
    "EncoderConfig",
    "LoraSummary",
    "PackagedWeights",
    "add_lora",
    "code_provenance",
    "count_parameters",
    "create_encoder",
    "export",
    "export_adapter",
    "export_timm",
    "get_encoder_config",
    "list_encoders",
    "load_exported",
    "load_state_dict_file",
    "lora_target_names",
    "packaged_weights",
    "read_provenance",
    "register_encoder",
    "remove_lora",
    "weights_available",
]
