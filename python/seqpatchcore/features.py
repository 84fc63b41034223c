"""Patch features: two backbone levels, locally averaged, resized to one grid, concatenated.

For each image, every requested layer's map is 3x3 average-pooled (stride 1, so the grid is
kept), the coarser maps are bilinearly resized to the finest grid, and the maps are
concatenated along channels: one D-dimensional feature per patch of the finest grid (stride 8
for the default MobileNetV3 layers, so a 256 x 256 image gives 32 x 32 patches of D = 72).

Decisions (see docs/backbone.md):
- The pool counts its zero padding in the average (`count_include_pad=True`, torch's and
  PatchCore's default). Chosen on the magnetic-tile validation split: with a random 1% memory
  bank, image AUROC is 0.867 counting the padding and 0.654 excluding it (pixel AUROC 0.784
  and 0.768). Border patches then form their own, consistently damped population; averaged
  over fewer neighbours instead they are noisy and dominate the image score (the maximum).
- Before the backbone, an image is padded on the bottom and right, by reflection, to a multiple
  of the coarsest layer's stride, and the result is cropped back to ceil(H / s) x ceil(W / s)
  patches (s = finest stride). The coarse grid is then exactly half the fine one (for strides 8
  and 16), so bilinear resizing aligns cell centres exactly, and border patches see image
  content rather than zeros. A 256 x 256 image needs no padding.
- Resizing to `input_size` is plain bilinear (half-pixel centres, no antialiasing). On the
  validation split antialiasing lowered pixel AUROC from 0.784 to 0.774 at equal image AUROC.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from seqpatchcore.backbones.base import Backbone, to_unit_rgb

logger = logging.getLogger(__name__)

DEFAULT_LAYERS = ("expanded_conv_2", "expanded_conv_7")


def compose_patch_features(maps: Sequence[torch.Tensor], pool_size: int = 3) -> torch.Tensor:
    """Pool each map locally, resize all to the finest grid and concatenate.

    Args:
        maps: feature maps [B, C_i, h_i, w_i] of one batch; the finest grid is the largest
            h_i * w_i.
        pool_size: odd side of the average-pooling window (stride 1, padding pool_size // 2,
            zero padding counted in the average); 1 disables pooling.

    Returns:
        [B, sum C_i, h, w] with (h, w) the finest grid, in the order of `maps`.
    """
    if len(maps) == 0:
        raise ValueError("maps: expected at least one feature map, got none")
    if pool_size < 1 or pool_size % 2 == 0:
        raise ValueError(f"pool_size: expected an odd integer >= 1, got {pool_size}")
    for index, feature_map in enumerate(maps):
        if feature_map.dim() != 4 or feature_map.shape[0] != maps[0].shape[0]:
            raise ValueError(
                f"maps[{index}]: expected [B, C, h, w] with B = "
                f"{maps[0].shape[0]}, got {tuple(feature_map.shape)}"
            )

    finest = max(maps, key=lambda feature_map: feature_map.shape[2] * feature_map.shape[3])
    grid = tuple(finest.shape[2:])

    levels = []
    for feature_map in maps:
        if pool_size > 1:
            feature_map = F.avg_pool2d(
                feature_map, pool_size, stride=1, padding=pool_size // 2, count_include_pad=True
            )
        if tuple(feature_map.shape[2:]) != grid:
            feature_map = F.interpolate(
                feature_map, size=grid, mode="bilinear", align_corners=False
            )
        levels.append(feature_map)
    return torch.cat(levels, dim=1)


class PatchFeatureExtractor:
    """Images in, patch features out, with a frozen backbone.

    Args:
        backbone: a `Backbone`; it is moved to `device`.
        layers: backbone layer names, e.g. the stride-8 and stride-16 blocks.
        input_size: (height, width) every image is resized to, or None for native resolution
            (the whole field at its own size, no centre crop).
        pool_size: odd side of the local average pool; 1 disables it.
        batch_size: images per backbone call.
        device: where the backbone runs and where the features are returned.

    Attributes:
        dim: D, the feature length (sum of the layers' channels).
        stride: input pixels per patch (the finest layer stride).
    """

    def __init__(
        self,
        backbone: Backbone,
        layers: Sequence[str] = DEFAULT_LAYERS,
        input_size: tuple[int, int] | None = (256, 256),
        pool_size: int = 3,
        batch_size: int = 16,
        device: str | torch.device = "cpu",
    ):
        if not isinstance(backbone, Backbone):
            raise TypeError(
                f"backbone: expected a seqpatchcore Backbone, got {type(backbone).__name__}"
            )
        backbone.check_layers(layers)
        if input_size is not None:
            if (
                len(input_size) != 2
                or not all(isinstance(side, int) for side in input_size)
                or min(input_size) < 1
            ):
                raise ValueError(
                    f"input_size: expected (height, width) of positive ints or "
                    f"None, got {input_size!r}"
                )
            input_size = (int(input_size[0]), int(input_size[1]))
        if not isinstance(pool_size, int) or pool_size < 1 or pool_size % 2 == 0:
            raise ValueError(f"pool_size: expected an odd integer >= 1, got {pool_size!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")

        self.device = torch.device(device)
        self.backbone = backbone.to(self.device).eval()
        self.layers = tuple(layers)
        self.input_size = input_size
        self.pool_size = pool_size
        self.batch_size = batch_size
        info = backbone.layer_info()
        self.dim = sum(info[name].channels for name in self.layers)
        self.stride = min(info[name].stride for name in self.layers)
        self._pad_multiple = max(info[name].stride for name in self.layers)

    def grid_shape(self, image_hw: tuple[int, int] | None = None) -> tuple[int, int]:
        """Patch grid (h, w) for an image of `image_hw` = (H, W) pixels.

        With a fixed `input_size` the image size does not matter and may be omitted.
        """
        if self.input_size is not None:
            image_hw = self.input_size
        elif image_hw is None:
            raise ValueError("image_hw: required when input_size is None (native resolution)")
        return (math.ceil(image_hw[0] / self.stride), math.ceil(image_hw[1] / self.stride))

    def fingerprint(self) -> str:
        """Stable string identifying the feature space (weights, layers, scale, pooling)."""
        size = "native" if self.input_size is None else "x".join(map(str, self.input_size))
        return (
            f"{self.backbone.identity}|layers={','.join(self.layers)}|input={size}"
            f"|resize=bilinear|pad=reflect-to-{self._pad_multiple}"
            f"|pool={self.pool_size}-include-pad|upsample=bilinear"
        )

    def __call__(self, images) -> torch.Tensor:
        """Patch features of a batch of images.

        Args:
            images: a list of numpy arrays or tensors, each H x W or H x W x C (C in 1, 3),
                uint8 or float in [0, 1], any sizes; or a uint8 tensor [B, H, W, C] / [B, H, W];
                or a float tensor [B, C, H, W] in [0, 1]. Grayscale is replicated to RGB.

        Returns:
            float32 [B, h, w, D] on `device`, (h, w) = `grid_shape`.

        Raises:
            ValueError: at native resolution (input_size None) with images of different sizes;
                use `extract_each` for those.
        """
        features = self.extract_each(images)
        shapes = {tuple(item.shape[:2]) for item in features}
        if len(shapes) > 1:
            raise ValueError(
                f"images: at native resolution (input_size=None) all images must "
                f"have one size to be stacked, got patch grids {sorted(shapes)}; "
                f"call extract_each() for a list, or set input_size"
            )
        if not features:
            grid = self.grid_shape() if self.input_size is not None else (0, 0)
            return torch.empty(0, *grid, self.dim, device=self.device)
        return torch.stack(features)

    def extract_each(self, images) -> list[torch.Tensor]:
        """Patch features per image, for images that may differ in size.

        Args:
            images: as for `__call__`.

        Returns:
            One float32 [h_i, w_i, D] tensor per image on `device`, in input order; same-size
            images are batched together.
        """
        items = _as_image_list(images)

        # Images are converted and resized one chunk at a time, so a long list costs the memory
        # of its inputs and outputs, not of all the float copies at once.
        by_size: dict[tuple[int, int], list[int]] = {}
        for index, item in enumerate(items):
            size = self.input_size or _image_hw(item)
            by_size.setdefault(size, []).append(index)

        results: list[torch.Tensor | None] = [None] * len(items)
        with torch.inference_mode():
            for indices in by_size.values():
                for start in range(0, len(indices), self.batch_size):
                    chunk = indices[start : start + self.batch_size]
                    # [b, 3, H, W] in [0, 1]
                    batch = torch.stack([self._load(items[i], i) for i in chunk])
                    features = self._extract_batch(batch)
                    for offset, index in enumerate(chunk):
                        results[index] = features[offset]
        # Copies made outside inference mode are ordinary tensors, which callers may modify in
        # place or use in autograd; inference tensors would refuse both.
        return [item.clone() for item in results]

    def _load(self, item, index: int) -> torch.Tensor:
        # One input image -> float32 [3, H, W] in [0, 1] on the device, resized if asked.
        image = item.tensor if isinstance(item, _UnitImage) else _image_to_unit(item, index)
        image = image.to(self.device)
        if self.input_size is not None:
            image = _resize(image, self.input_size)
        return image

    def _extract_batch(self, batch: torch.Tensor) -> torch.Tensor:
        # batch: [b, 3, H, W] in [0, 1] -> [b, ceil(H / s), ceil(W / s), D]
        height, width = batch.shape[2:]
        grid = (math.ceil(height / self.stride), math.ceil(width / self.stride))
        padded = _pad_to_multiple(batch, self._pad_multiple)
        maps = self.backbone(self.backbone.normalize(padded), self.layers)
        features = compose_patch_features([maps[name] for name in self.layers], self.pool_size)
        features = features[:, :, : grid[0], : grid[1]]
        return features.permute(0, 2, 3, 1).contiguous().float()


@dataclasses.dataclass
class _UnitImage:
    """An image already converted: float32 [3, H, W] in [0, 1]."""

    tensor: torch.Tensor


def _as_image_list(images) -> list:
    """Any accepted image input -> list of per-image items (arrays, tensors, _UnitImage)."""
    if isinstance(images, torch.Tensor):
        if images.dim() == 4 and images.is_floating_point():
            return [_UnitImage(image) for image in to_unit_rgb(images)]
        if images.dtype != torch.uint8 or images.dim() not in (3, 4):
            raise ValueError(
                f"images: a tensor batch must be uint8 [B, H, W, C] / [B, H, W] or float "
                f"[B, C, H, W], got {images.dtype} {tuple(images.shape)}"
            )
        return list(images)
    if isinstance(images, np.ndarray):
        raise TypeError(
            "images: expected a list of arrays (or a tensor batch), got one numpy "
            "array; wrap a single image as [image]"
        )
    if not isinstance(images, Sequence):
        raise TypeError(
            f"images: expected a list of images or a tensor batch, got {type(images).__name__}"
        )
    return list(images)


def _image_hw(item) -> tuple[int, int]:
    if isinstance(item, _UnitImage):
        return (item.tensor.shape[1], item.tensor.shape[2])
    if not isinstance(item, (np.ndarray, torch.Tensor)) or item.ndim < 2:
        return (-1, -1)  # reported with its index by _image_to_unit
    return (int(item.shape[0]), int(item.shape[1]))


def _image_to_unit(image, index: int) -> torch.Tensor:
    # One H x W or H x W x C image -> float32 [3, H, W] in [0, 1].
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 and not np.issubdtype(image.dtype, np.floating):
            raise TypeError(f"images[{index}]: expected uint8 or float, got {image.dtype}")
        # torch.from_numpy warns on read-only arrays (e.g. from PIL); copy those.
        image = np.ascontiguousarray(image) if image.flags.writeable else image.copy()
        image = torch.from_numpy(image)
    elif not isinstance(image, torch.Tensor):
        raise TypeError(
            f"images[{index}]: expected a numpy array or tensor, got {type(image).__name__}"
        )
    if image.dim() == 2:
        image = image.unsqueeze(-1)
    if image.dim() != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(
            f"images[{index}]: expected H x W or H x W x C with C in (1, 3), got "
            f"shape {tuple(image.shape)}"
        )
    if image.dtype == torch.uint8:
        return to_unit_rgb(image.unsqueeze(0))[0]
    if not image.is_floating_point():
        raise TypeError(f"images[{index}]: expected uint8 or float, got {image.dtype}")
    try:
        return to_unit_rgb(image.permute(2, 0, 1).unsqueeze(0))[0]
    except ValueError as error:
        raise ValueError(f"images[{index}]: {error}") from error


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    # image: [3, H, W] -> [3, size[0], size[1]]
    if tuple(image.shape[1:]) == size:
        return image
    resized = F.interpolate(
        image.unsqueeze(0), size=size, mode="bilinear", align_corners=False, antialias=False
    )
    return resized[0]


def _pad_to_multiple(batch: torch.Tensor, multiple: int) -> torch.Tensor:
    # batch: [b, 3, H, W] -> [b, 3, ceil(H / m) * m, ceil(W / m) * m], bottom/right only
    height, width = batch.shape[2:]
    pad_bottom = -height % multiple
    pad_right = -width % multiple
    if pad_bottom == 0 and pad_right == 0:
        return batch
    # Reflection needs the pad to be smaller than the side; tiny images fall back to edge copy.
    mode = "reflect" if pad_bottom < height and pad_right < width else "replicate"
    return F.pad(batch, (0, pad_right, 0, pad_bottom), mode=mode)
