"""Frozen feature backbones behind one interface, and a registry to load them by name.

>>> backbone = load_backbone("mobilenet_v3_small_tflite")  # doctest: +SKIP
>>> maps = backbone(backbone.preprocess(images), ["expanded_conv_2", "expanded_conv_7"])
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable

from seqpatchcore.backbones.base import WEIGHTS_ENV, Backbone, LayerInfo, to_unit_rgb
from seqpatchcore.backbones.tflite_mobilenet import (
    MOBILENET_V2_FILE,
    MOBILENET_V2_FOLDER,
    TFLiteFormatError,
    TFLiteMobileNet,
    load_tflite_mobilenet,
)
from seqpatchcore.backbones.torchvision_mobilenet import (
    TorchvisionMobileNet,
    load_torchvision_mobilenet,
)

logger = logging.getLogger(__name__)

__all__ = [
    "WEIGHTS_ENV",
    "Backbone",
    "LayerInfo",
    "TFLiteFormatError",
    "TFLiteMobileNet",
    "TorchvisionMobileNet",
    "available_backbones",
    "load_backbone",
    "register_backbone",
    "to_unit_rgb",
]

# name -> factory(weights) building the backbone on the CPU
_REGISTRY: dict[str, Callable[[str | os.PathLike | None], Backbone]] = {
    "mobilenet_v3_small_tflite": load_tflite_mobilenet,
    "mobilenet_v2_tflite": functools.partial(
        load_tflite_mobilenet, file_name=MOBILENET_V2_FILE, folder_name=MOBILENET_V2_FOLDER
    ),
    "mobilenet_v3_small_torchvision": functools.partial(
        load_torchvision_mobilenet, variant="small"
    ),
    "mobilenet_v3_large_torchvision": functools.partial(
        load_torchvision_mobilenet, variant="large"
    ),
}


def available_backbones() -> list[str]:
    """Names accepted by `load_backbone`."""
    return sorted(_REGISTRY)


def register_backbone(name: str, factory: Callable[[str | os.PathLike | None], Backbone]) -> None:
    """Make `load_backbone(name, weights)` call `factory(weights)`.

    Raises:
        ValueError: `name` is already registered.
    """
    if name in _REGISTRY:
        raise ValueError(f"name: backbone {name!r} is already registered")
    _REGISTRY[name] = factory


def load_backbone(
    name: str = "mobilenet_v3_small_tflite", weights: str | os.PathLike | None = None
) -> Backbone:
    """Build a frozen backbone from local weights; nothing is downloaded.

    Args:
        name: one of `available_backbones()`.
        weights: weights file or a folder holding it; None: the SEQPATCHCORE_WEIGHTS
            environment variable, then the backbone's default places.

    Returns:
        The backbone on the CPU, float32, eval mode; move it with `.to(device)`.

    Raises:
        ValueError: unknown `name`.
        FileNotFoundError: no weights file; the message lists every place looked at.
        ImportError: a library the backbone needs (torchvision) is not importable.
    """
    if name not in _REGISTRY:
        raise ValueError(f"name: unknown backbone {name!r}; available: {available_backbones()}")
    backbone = _REGISTRY[name](weights)
    logger.debug("loaded backbone %s as %s", name, backbone.identity)
    return backbone
