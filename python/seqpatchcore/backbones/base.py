"""The interface every frozen feature backbone implements.

A backbone turns images into named intermediate feature maps. It owns its input normalisation
(the TFLite MobileNetV3 expects [-1, 1], torchvision's ImageNet mean/std), reports the stride
and width of each named layer, and identifies its weights with a stable string so that feature
spaces can be fingerprinted.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

# Environment variable naming a weights file, or a folder searched for one.
WEIGHTS_ENV = "SEQPATCHCORE_WEIGHTS"


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """Geometry of one named layer output.

    Attributes:
        stride: input pixels per output cell along each axis; the output of an H x W input is
            ceil(H / stride) x ceil(W / stride) cells.
        channels: number of channels of the layer output.
    """

    stride: int
    channels: int


class Backbone(torch.nn.Module, abc.ABC):
    """A frozen network that maps images to named feature maps.

    Attributes:
        identity: stable string naming the architecture and the exact weights (with a hash of
            the weights file), used in feature-space fingerprints.
    """

    identity: str

    @abc.abstractmethod
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Map RGB images in [0, 1] to the network's input range.

        Args:
            images: float [B, 3, H, W] in [0, 1].

        Returns:
            float32 [B, 3, H, W] as the first layer expects it.
        """

    @abc.abstractmethod
    def layer_info(self) -> dict[str, LayerInfo]:
        """Names of the layers `forward` can return, in network order, with their geometry."""

    @abc.abstractmethod
    def forward(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        """Run the network up to the last requested layer.

        Args:
            x: model input [B, 3, H, W] as returned by `preprocess`; any H, W >= 1.
            layers: names from `layer_info()`.

        Returns:
            name -> float32 [B, C, ceil(H / stride), ceil(W / stride)] for each requested name.
        """

    @abc.abstractmethod
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Run the whole network, classifier head included.

        Args:
            x: model input [B, 3, H, W] as returned by `preprocess`.

        Returns:
            float32 logits [B, num_classes] (before the softmax).
        """

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Turn a batch of images into the network's input.

        Args:
            images: uint8 [B, H, W, C] (channels last, C in {1, 3}) or uint8 [B, H, W]
                (grayscale), or float [B, C, H, W] (channels first, C in {1, 3}) with values in
                [0, 1]. Grayscale is replicated to 3 channels.

        Returns:
            float32 [B, 3, H, W] on the device of `images`, normalised for this network.
        """
        return self.normalize(to_unit_rgb(images))

    def check_layers(self, layers: Sequence[str]) -> None:
        """Raise a ValueError naming any entry of `layers` that is not a known layer."""
        if isinstance(layers, str):
            raise TypeError(
                f"layers: expected a sequence of layer names, got the string "
                f"{layers!r}; write ({layers!r},)"
            )
        if len(layers) == 0:
            raise ValueError("layers: expected at least one layer name, got none")
        known = self.layer_info()
        unknown = [name for name in layers if name not in known]
        if unknown:
            raise ValueError(
                f"layers: unknown layer(s) {unknown} for backbone "
                f"{self.identity}; known layers: {list(known)}"
            )

    def feature_shape(self, layer: str, image_hw: tuple[int, int]) -> tuple[int, int]:
        """Grid size of `layer` for an input of `image_hw` = (H, W) pixels.

        Both backbones pad so that every stride-s stage maps n cells to ceil(n / s) cells
        (TensorFlow "SAME" padding, and torchvision's kernel // 2 padding for odd kernels),
        and nested ceilings compose: ceil(ceil(n / a) / b) = ceil(n / (a * b)).
        """
        self.check_layers([layer])
        stride = self.layer_info()[layer].stride
        return (math.ceil(image_hw[0] / stride), math.ceil(image_hw[1] / stride))

    def train(self, mode: bool = True) -> Backbone:
        # Frozen: there is no training mode; keep eval whatever a caller asks.
        return super().train(False)


def to_unit_rgb(images: torch.Tensor) -> torch.Tensor:
    """Convert an image batch to float32 RGB [B, 3, H, W] in [0, 1].

    Args:
        images: uint8 [B, H, W, C] with C in {1, 3}, uint8 [B, H, W], or floating point
            [B, C, H, W] with C in {1, 3} and values in [0, 1].

    Returns:
        float32 [B, 3, H, W] in [0, 1] on the device of `images`.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images: expected a torch.Tensor, got {type(images).__name__}")

    if images.dtype == torch.uint8:
        if images.dim() == 3:
            images = images.unsqueeze(-1)
        if images.dim() != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(
                f"images: a uint8 batch must be [B, H, W, C] with C in (1, 3) or "
                f"[B, H, W], got shape {tuple(images.shape)}"
            )
        # [B, H, W, C] -> [B, C, H, W]
        unit = images.permute(0, 3, 1, 2).to(torch.float32) / 255.0
    elif images.is_floating_point():
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(
                f"images: a float batch must be [B, C, H, W] with C in (1, 3), "
                f"got shape {tuple(images.shape)}"
            )
        unit = images.to(torch.float32)
        if unit.numel() > 0:
            low, high = float(unit.min()), float(unit.max())
            if low < 0.0 or high > 1.0 or math.isnan(low) or math.isnan(high):
                raise ValueError(
                    f"images: float images must have values in [0, 1], got [{low:g}, {high:g}]"
                )
    else:
        raise TypeError(f"images: expected uint8 or floating point, got {images.dtype}")

    if unit.shape[2] < 1 or unit.shape[3] < 1:
        raise ValueError(f"images: height and width must be >= 1, got {tuple(unit.shape[2:])}")

    if unit.shape[1] == 1:
        unit = unit.expand(-1, 3, -1, -1)
    return unit.contiguous()


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_weights(
    weights: str | os.PathLike | None,
    patterns: Sequence[str],
    subfolders: Sequence[str],
    default_folders: Sequence[Path],
    how_to_get: str,
) -> Path:
    """Find a weights file without downloading anything.

    Order: the explicit `weights` argument, else the `SEQPATCHCORE_WEIGHTS` environment
    variable, else `default_folders`. A file is taken as is; a folder is searched for a name
    matching one of `patterns` directly inside it and inside each of `subfolders`. The first
    source that is given decides: an explicit argument that does not exist is an error, not a
    reason to fall back to the environment.

    Args:
        weights: a file or folder, or None.
        patterns: glob patterns of acceptable file names, best first.
        subfolders: relative folders to search below a folder, after the folder itself.
        default_folders: folders searched when neither argument nor variable is given.
        how_to_get: sentence appended to the error, saying where the file comes from.

    Returns:
        Path of an existing file.

    Raises:
        FileNotFoundError: nothing found; the message lists every place looked at.
    """
    if weights is not None:
        sources = [("argument weights", Path(weights))]
    elif os.environ.get(WEIGHTS_ENV):
        sources = [(f"environment variable {WEIGHTS_ENV}", Path(os.environ[WEIGHTS_ENV]))]
    else:
        sources = [("default location", folder) for folder in default_folders]

    looked = []
    for origin, path in sources:
        path = path.expanduser()
        if path.is_file():
            return path
        if not path.is_dir():
            looked.append(f"{path} (from {origin}: no such file or folder)")
            continue
        for folder in [path] + [path / sub for sub in subfolders]:
            for pattern in patterns:
                matches = sorted(folder.glob(pattern))
                if matches:
                    logger.debug("weights %s found in %s (%s)", matches[0], folder, origin)
                    return matches[0]
                looked.append(f"{folder / pattern} (from {origin})")

    if weights is None and not os.environ.get(WEIGHTS_ENV):
        looked.append(f"environment variable {WEIGHTS_ENV} (not set)")
    places = "\n  ".join(looked)
    raise FileNotFoundError(
        f"weights file not found. Looked at:\n  {places}\n{how_to_get} "
        f"Pass its path as `weights=` or set {WEIGHTS_ENV} to the file or "
        f"to a folder holding it. Nothing is downloaded."
    )
