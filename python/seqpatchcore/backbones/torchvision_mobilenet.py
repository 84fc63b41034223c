"""torchvision's MobileNetV3 (Small or Large) through the backbone interface.

Needs an importable torchvision and a local state-dict file (the .pth torchvision publishes,
e.g. mobilenet_v3_small-047dcff4.pth); nothing is downloaded. The feature blocks get the
TFLite block names, so the same layer names select the same depth in both implementations:
`features[0]` is "Conv", `features[i]` for 1 <= i < last is "expanded_conv" (i = 1) or
"expanded_conv_<i - 1>", and the last 1x1 conv is "Conv_1". For Small, "expanded_conv_2" is
stride 8 with 24 channels and "expanded_conv_7" stride 16 with 48, as in the TFLite model.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch

from seqpatchcore.backbones.base import Backbone, LayerInfo, file_sha256, resolve_weights

logger = logging.getLogger(__name__)

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_VARIANTS = ("small", "large")
# Input side of the dry run that measures strides: a multiple of the deepest stride (32).
_PROBE_SIZE = 64


def import_torchvision(backbone: str):
    """Import torchvision or raise an ImportError that says what to do.

    A torchvision built for another torch fails with a RuntimeError inside its C++ op
    registration rather than an ImportError; both become the same clear ImportError.
    """
    try:
        import torchvision
        import torchvision.models  # noqa: F401  (the attribute is used by the caller)
    except Exception as error:
        raise ImportError(
            f"backbone {backbone!r} needs torchvision, which is not importable here "
            f"({type(error).__name__}: {error}). Install the torchvision build that matches "
            f"torch {torch.__version__}, or use the 'mobilenet_v3_small_tflite' backbone, "
            f"which needs only torch."
        ) from error
    return torchvision


def block_names(count: int) -> list[str]:
    """TFLite-style names of torchvision's `features` blocks, in order."""
    middle = ["expanded_conv"] + [f"expanded_conv_{i}" for i in range(1, count - 2)]
    return ["Conv"] + middle + ["Conv_1"]


class TorchvisionMobileNet(Backbone):
    """A torchvision MobileNetV3 network, frozen, with named feature blocks.

    Attributes:
        identity: "torchvision:mobilenet_v3_<variant>:sha256=<16 hex digits of the file>".
        network: the torchvision module (`features`, `avgpool`, `classifier`).
    """

    def __init__(self, network: torch.nn.Module, identity: str):
        super().__init__()
        self.identity = identity
        self.network = network
        for parameter in self.network.parameters():
            parameter.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).reshape(1, 3, 1, 1))
        self.eval()

        features = self.network.features
        self._names = block_names(len(features))
        self._info = {}
        probe = torch.zeros(1, 3, _PROBE_SIZE, _PROBE_SIZE)
        with torch.no_grad():
            for name, block in zip(self._names, features, strict=True):
                probe = block(probe)
                self._info[name] = LayerInfo(_PROBE_SIZE // probe.shape[2], probe.shape[1])

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        # images: [B, 3, H, W] in [0, 1] -> ImageNet mean/std normalised [B, 3, H, W]
        return (images - self.mean) / self.std

    def layer_info(self) -> dict[str, LayerInfo]:
        return dict(self._info)

    def forward(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        self.check_layers(layers)
        wanted = set(layers)
        stop = max(self._names.index(name) for name in layers)
        outputs = {}
        for name, block in zip(
            self._names[: stop + 1], self.network.features[: stop + 1], strict=True
        ):
            x = block(x)
            if name in wanted:
                outputs[name] = x
        return {name: outputs[name] for name in layers}

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)


def load_torchvision_mobilenet(
    weights: str | os.PathLike | None = None, variant: str = "small"
) -> TorchvisionMobileNet:
    """Build torchvision's MobileNetV3 from a local state-dict file.

    Args:
        weights: the .pth state dict, or a folder searched for `mobilenet_v3_<variant>*.pth`.
            None: the SEQPATCHCORE_WEIGHTS environment variable.
        variant: "small" or "large".

    Returns:
        The backbone on the CPU, float32, eval mode.

    Raises:
        ImportError: torchvision is not importable.
        FileNotFoundError: no weights file; the message lists where it looked.
        ValueError: unknown variant, or a file that is not a matching state dict.
    """
    if variant not in _VARIANTS:
        raise ValueError(f"variant: expected one of {_VARIANTS}, got {variant!r}")
    name = f"mobilenet_v3_{variant}"
    torchvision = import_torchvision(f"{name}_torchvision")

    how_to_get = (
        f"torchvision publishes the ImageNet weights as {name}-<hash>.pth "
        f"(torchvision.models.MobileNet_V3_{variant.capitalize()}_Weights); fetch "
        f"the file on a machine with internet access and copy it here."
    )
    path = resolve_weights(weights, [f"{name}*.pth"], [], [], how_to_get)

    network = getattr(torchvision.models, name)(weights=None)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"{path}: cannot read a torch state dict ({type(error).__name__}: {error})"
        ) from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"{path}: not a state dict of torchvision's {name}: {error}") from error

    identity = f"torchvision:{name}:sha256={file_sha256(path)[:16]}"
    logger.info("loaded torchvision %s from %s", name, path)
    return TorchvisionMobileNet(network.float(), identity)
