"""Patch features: grid and width, the pool/resize/concat composition, batching, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from seqpatchcore.features import PatchFeatureExtractor, compose_patch_features


def _mean_pool_valid(feature_map: np.ndarray, size: int) -> np.ndarray:
    # [C, h, w] -> [C, h, w]: sum over the size x size neighbours inside the map, divided by
    # size^2 (the zero padding outside the map counts in the average).
    channels, height, width = feature_map.shape
    radius = size // 2
    out = np.zeros_like(feature_map)
    for i in range(height):
        for j in range(width):
            window = feature_map[
                :, max(i - radius, 0) : i + radius + 1, max(j - radius, 0) : j + radius + 1
            ]
            out[:, i, j] = window.reshape(channels, -1).sum(axis=1) / (size * size)
    return out


def _bilinear_half_pixel(feature_map: np.ndarray, height: int, width: int) -> np.ndarray:
    # [C, h, w] -> [C, height, width], sampling at half-pixel centres, edges clamped.
    channels, in_height, in_width = feature_map.shape
    out = np.zeros((channels, height, width))
    for i in range(height):
        y = max((i + 0.5) * in_height / height - 0.5, 0.0)
        y0 = min(int(math.floor(y)), in_height - 1)
        y1 = min(y0 + 1, in_height - 1)
        wy = y - y0
        for j in range(width):
            x = max((j + 0.5) * in_width / width - 0.5, 0.0)
            x0 = min(int(math.floor(x)), in_width - 1)
            x1 = min(x0 + 1, in_width - 1)
            wx = x - x0
            out[:, i, j] = (1 - wy) * (
                (1 - wx) * feature_map[:, y0, x0] + wx * feature_map[:, y0, x1]
            ) + wy * ((1 - wx) * feature_map[:, y1, x0] + wx * feature_map[:, y1, x1])
    return out


def _reference_composition(maps: list[np.ndarray], pool_size: int) -> np.ndarray:
    # maps: [B, C_i, h_i, w_i] with the first the finest -> [B, sum C_i, h_0, w_0]
    height, width = maps[0].shape[2:]
    batches = []
    for b in range(maps[0].shape[0]):
        levels = []
        for feature_map in maps:
            pooled = _mean_pool_valid(feature_map[b], pool_size)
            if pooled.shape[1:] != (height, width):
                pooled = _bilinear_half_pixel(pooled, height, width)
            levels.append(pooled)
        batches.append(np.concatenate(levels, axis=0))
    return np.stack(batches)


@pytest.fixture(scope="module")
def extractor(mobilenet_v3) -> PatchFeatureExtractor:
    return PatchFeatureExtractor(mobilenet_v3)


@pytest.mark.parametrize(
    "fine, coarse, pool_size",
    [
        ((8, 10), (4, 5), 3),  # the usual factor 2
        ((7, 5), (4, 3), 3),  # odd grids: not an exact factor
        ((6, 6), (2, 3), 5),  # wider pool, unequal factors
        ((5, 4), (3, 2), 1),  # no pooling
    ],
)
def test_composition_matches_hand_reference(fine, coarse, pool_size):
    generator = torch.Generator().manual_seed(fine[0] * 10 + coarse[1])
    maps = [
        torch.randn(2, 3, *fine, generator=generator, dtype=torch.float64),
        torch.randn(2, 4, *coarse, generator=generator, dtype=torch.float64),
    ]

    out = compose_patch_features(maps, pool_size)

    expected = _reference_composition([m.numpy() for m in maps], pool_size)
    assert out.shape == (2, 7, *fine)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_composition_errors():
    with pytest.raises(ValueError, match="pool_size"):
        compose_patch_features([torch.zeros(1, 2, 4, 4)], pool_size=2)
    with pytest.raises(ValueError, match="maps: expected at least one"):
        compose_patch_features([])
    with pytest.raises(ValueError, match=r"maps\[1\]"):
        compose_patch_features([torch.zeros(1, 2, 4, 4), torch.zeros(2, 2, 2, 2)])


def test_grid_and_dim_at_256(extractor):
    generator = np.random.default_rng(0)
    images = [generator.integers(0, 256, (256, 256), dtype=np.uint8) for _ in range(2)]

    features = extractor(images)

    assert extractor.dim == 24 + 48 == 72
    assert extractor.grid_shape() == (32, 32)
    assert features.shape == (2, 32, 32, 72)
    assert features.dtype == torch.float32
    assert not features.is_inference() and not features.requires_grad


def test_features_are_the_composed_backbone_maps(mobilenet_v3):
    # Native 50 x 37 image: padded by reflection to 64 x 48 (multiples of 16), composed,
    # then cropped to ceil(50 / 8) x ceil(37 / 8) = 7 x 5 patches.
    generator = np.random.default_rng(1)
    image = generator.integers(0, 256, (50, 37, 3), dtype=np.uint8)
    extractor = PatchFeatureExtractor(mobilenet_v3, input_size=None)

    features = extractor([image])

    padded = np.pad(image, ((0, 14), (0, 11), (0, 0)), mode="reflect")
    with torch.inference_mode():
        x = mobilenet_v3.preprocess(torch.from_numpy(padded)[None])
        maps = mobilenet_v3(x, ["expanded_conv_2", "expanded_conv_7"])
    expected = _reference_composition(
        [maps["expanded_conv_2"].double().numpy(), maps["expanded_conv_7"].double().numpy()], 3
    )
    expected = expected[:, :, :7, :5].transpose(0, 2, 3, 1)
    assert extractor.grid_shape((50, 37)) == (7, 5)
    assert features.shape == (1, 7, 5, 72)
    np.testing.assert_allclose(features.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_deterministic_and_independent_of_batching(mobilenet_v3):
    generator = np.random.default_rng(2)
    images = [generator.integers(0, 256, (64, 64), dtype=np.uint8) for _ in range(5)]
    batched = PatchFeatureExtractor(mobilenet_v3, input_size=(64, 64), batch_size=4)
    single = PatchFeatureExtractor(mobilenet_v3, input_size=(64, 64), batch_size=1)

    first = batched(images)
    second = batched(images)
    one_by_one = single(images)

    assert torch.equal(first, second)
    torch.testing.assert_close(first, one_by_one, rtol=1e-4, atol=1e-4)


def test_differently_sized_images(mobilenet_v3):
    generator = np.random.default_rng(3)
    gray = generator.integers(0, 256, (100, 80), dtype=np.uint8)
    images = [
        gray,
        generator.integers(0, 256, (300, 200, 3), dtype=np.uint8),
        generator.random((64, 64)).astype(np.float32),
        gray[..., None],
    ]
    resized = PatchFeatureExtractor(mobilenet_v3, input_size=(128, 96), batch_size=3)
    native = PatchFeatureExtractor(mobilenet_v3, input_size=None, batch_size=3)

    features = resized(images)

    assert features.shape == (4, 16, 12, 72)
    for index, image in enumerate(images):
        torch.testing.assert_close(features[index], resized([image])[0], rtol=1e-4, atol=1e-4)
    # H x W and H x W x 1 of the same pixels are the same grayscale image.
    torch.testing.assert_close(features[0], features[3], rtol=1e-4, atol=1e-4)

    each = native.extract_each(images)
    assert [tuple(item.shape) for item in each] == [
        (13, 10, 72),
        (38, 25, 72),
        (8, 8, 72),
        (13, 10, 72),
    ]
    with pytest.raises(ValueError, match="extract_each"):
        native(images)


def test_grayscale_equals_replicated_rgb(extractor):
    generator = np.random.default_rng(4)
    gray = generator.integers(0, 256, (90, 70), dtype=np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=-1)

    torch.testing.assert_close(extractor([gray]), extractor([rgb]))
    batch = torch.from_numpy(np.stack([gray, gray]))  # uint8 [B, H, W]
    torch.testing.assert_close(extractor(batch)[1], extractor([rgb])[0])
    unit_batch = torch.from_numpy(gray)[None, None].float() / 255  # float [B, 1, H, W]
    torch.testing.assert_close(extractor(unit_batch), extractor([rgb]), rtol=1e-4, atol=1e-4)


def test_empty_input(extractor):
    assert extractor([]).shape == (0, 32, 32, 72)


def test_fingerprint(mobilenet_v3):
    default = PatchFeatureExtractor(mobilenet_v3)
    again = PatchFeatureExtractor(mobilenet_v3, batch_size=3)
    variants = [
        PatchFeatureExtractor(mobilenet_v3, input_size=(224, 224)),
        PatchFeatureExtractor(mobilenet_v3, input_size=None),
        PatchFeatureExtractor(mobilenet_v3, pool_size=5),
        PatchFeatureExtractor(mobilenet_v3, layers=("expanded_conv_1", "expanded_conv_7")),
    ]

    assert default.fingerprint() == again.fingerprint()  # batching does not change features
    assert default.fingerprint().startswith(mobilenet_v3.identity + "|")
    assert "layers=expanded_conv_2,expanded_conv_7" in default.fingerprint()
    assert len({default.fingerprint()} | {v.fingerprint() for v in variants}) == 5


def test_argument_and_image_errors(mobilenet_v3, extractor):
    with pytest.raises(ValueError, match="pool_size"):
        PatchFeatureExtractor(mobilenet_v3, pool_size=2)
    with pytest.raises(ValueError, match="input_size"):
        PatchFeatureExtractor(mobilenet_v3, input_size=(0, 10))
    with pytest.raises(ValueError, match="batch_size"):
        PatchFeatureExtractor(mobilenet_v3, batch_size=0)
    with pytest.raises(ValueError, match="unknown layer"):
        PatchFeatureExtractor(mobilenet_v3, layers=("expanded_conv_2", "layer3"))
    with pytest.raises(TypeError, match="backbone"):
        PatchFeatureExtractor(object())

    with pytest.raises(ValueError, match=r"images\[1\].*C in \(1, 3\)"):
        extractor([np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8)])
    with pytest.raises(TypeError, match=r"images\[0\].*uint8 or float"):
        extractor([np.zeros((8, 8), np.int16)])
    with pytest.raises(ValueError, match=r"images\[0\].*\[0, 1\]"):
        extractor([np.full((8, 8), 3.0, np.float32)])
    with pytest.raises(TypeError, match="wrap a single image"):
        extractor(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="image_hw"):
        PatchFeatureExtractor(mobilenet_v3, input_size=None).grid_shape()
