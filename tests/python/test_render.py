"""The Python API of seqpatchcore.render: impurities, defects and surfaces on numpy images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seqpatchcore import render

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
MAGNETIC = SHARED / "data" / "magnetic-tile"
PHOTOS = SHARED / "data" / "photos"


def noisy(shape: tuple[int, ...], dtype, seed: int) -> np.ndarray:
    """A noisy image, so that a change to any pixel is visible."""
    rng = np.random.default_rng(seed)
    if dtype == np.uint8:
        return rng.integers(40, 220, shape, dtype=np.uint8)
    return rng.uniform(0.15, 0.85, shape).astype(np.float32)


def changed_pixels(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """[H, W] bool: any channel differs."""
    diff = before != after
    return diff.reshape(*diff.shape[:2], -1).any(axis=-1)


CALLS = {
    "water_stains": lambda image, seed: render.water_stains(image, count=2, seed=seed,
                                                            radius_px=12),
    "fingerprints": lambda image, seed: render.fingerprints(image, count=1, seed=seed,
                                                            size_px=20),
    "dust": lambda image, seed: render.dust(image, count=30, seed=seed),
    "scratch": lambda image, seed: render.defect(image, "scratch", seed=seed, length_px=40),
    "dent": lambda image, seed: render.defect(image, "dent", seed=seed, radius_px=12),
    "blowhole": lambda image, seed: render.defect(image, "blowhole", seed=seed),
    "crack": lambda image, seed: render.defect(image, "crack", seed=seed, length_px=40),
}


@pytest.mark.parametrize("name", list(CALLS))
@pytest.mark.parametrize("shape", [(64, 80), (64, 80, 1), (64, 80, 3)])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_seeded_and_untouched_outside_the_mask(name, shape, dtype):
    image = noisy(shape, dtype, 1)
    original = image.copy()

    out, mask = CALLS[name](image, 3)
    again, mask_again = CALLS[name](image, 3)
    other, _ = CALLS[name](image, 4)

    np.testing.assert_array_equal(image, original)  # the input is not modified
    assert out.shape == image.shape and out.dtype == image.dtype
    assert mask.shape == shape[:2] and mask.dtype == np.uint8
    assert out.tobytes() == again.tobytes() and mask.tobytes() == mask_again.tobytes()
    assert out.tobytes() != other.tobytes()

    changed = changed_pixels(image, out)
    assert not (changed & (mask == 0)).any(), "a pixel outside the mask changed"
    assert set(np.unique(mask)) <= {0, 255}
    assert (mask > 0).sum() > 0
    # Most of the mask moved (a fingerprint's mask is its whole patch, valleys included).
    assert changed.sum() > 0.25 * (mask > 0).sum()


def single_stain(image: np.ndarray, **params) -> tuple[np.ndarray, np.ndarray]:
    defaults = dict(count=1, radius_px=40, radius_jitter=0.0, elongation=0.0, rim_strength=0.0,
                    strength_variation=0.0, seed=5)
    return render.water_stains(image, **{**defaults, **params})


def radial_change(before, after, mask, rings: int, radius: float) -> np.ndarray:
    """Mean relative change 1 - after/before in rings around the pixel that changed most.

    Without rim and variation the change is largest at rho = 0, so that pixel is the centre
    to within a pixel, even when the image border clips the stain.
    """
    change = 1.0 - after / before
    cy, cx = np.unravel_index(np.argmax(np.abs(change)), change.shape)
    yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]]
    ring = (np.hypot(yy - cy, xx - cx) / radius * rings).astype(int)
    return np.array([change[(ring == k) & (mask > 0)].mean() for k in range(rings)])


@pytest.mark.parametrize("strength", [0.3, -0.3])
def test_stain_brightness_moves_in_the_configured_direction_and_falls_off(strength):
    image = np.full((160, 160), 0.5, np.float32)
    out, mask = single_stain(image, strength=strength, outline_amplitude=0.0, falloff=2.0)

    inside = mask > 0
    if strength > 0:
        assert (out[inside] <= 0.5).all() and (out[inside] < 0.5).mean() > 0.99
    else:
        assert (out[inside] >= 0.5).all() and (out[inside] > 0.5).mean() > 0.99
    # |change| shrinks from the centre outwards: exp(-2 rho) by the parameters.
    profile = np.abs(radial_change(image, out, mask, rings=5, radius=38.0))
    assert np.all(np.diff(profile) < 0), profile
    # Ring 0 is the disc d < 7.6 px = 0.19 R: its area-weighted mean of exp(-2 d / R) is
    # 2 / 0.19^2 * integral_0^0.19 exp(-2 t) t dt = 0.778.
    assert profile[0] == pytest.approx(0.3 * 0.779, rel=0.05)


def boundary_spread(mask: np.ndarray) -> float:
    """(max - min) / mean distance from the mask's centroid to its boundary pixels."""
    inside = mask > 0
    interior = inside.copy()
    interior[1:-1, 1:-1] &= (inside[:-2, 1:-1] & inside[2:, 1:-1] & inside[1:-1, :-2]
                             & inside[1:-1, 2:])
    ys, xs = np.nonzero(inside & ~interior)
    cy, cx = np.nonzero(inside)[0].mean(), np.nonzero(inside)[1].mean()
    distance = np.hypot(ys - cy, xs - cx)
    return float((distance.max() - distance.min()) / distance.mean())


def test_stain_outline_is_irregular_and_a_circle_without_outline_noise():
    # The centre is uniform over the image; stains cut by the border are left out.
    image = np.full((600, 600), 128, np.uint8)
    checked = 0
    for seed in range(10):
        _, mask = single_stain(image, seed=seed, outline_amplitude=0.3)
        ys, xs = np.nonzero(mask)
        if ys.min() == 0 or xs.min() == 0 or ys.max() == 599 or xs.max() == 599:
            continue
        checked += 1
        assert boundary_spread(mask) > 0.1  # a circle, below, stays under 0.08
        _, circle = single_stain(image, seed=seed, outline_amplitude=0.0)
        assert boundary_spread(circle) < 0.08
    assert checked >= 5


def test_stain_errors_name_the_parameter():
    image = np.zeros((64, 64), np.uint8)
    with pytest.raises(ValueError, match=r"stain.radius_px must be > 0, got 0"):
        render.water_stains(image, radius_px=0)
    with pytest.raises(ValueError, match=r"stain.outline_amplitude must be in \[0, 1\)"):
        render.water_stains(image, outline_amplitude=-0.2)
    with pytest.raises(ValueError, match=r"stain.count = 100 cannot fit in a 64x64 image"):
        render.water_stains(image, count=100, radius_px=10)
    with pytest.raises(TypeError, match=r"unknown parameter 'radius'"):
        render.water_stains(image, radius=10)
    with pytest.raises(TypeError, match=r"'strength' must be float"):
        render.water_stains(image, strength="strong")
    with pytest.raises(TypeError, match=r"dtype uint8 or float32, got float64"):
        render.water_stains(image.astype(np.float64))
    with pytest.raises(ValueError, match=r"shape \[H, W\] or \[H, W, C\]"):
        render.water_stains(np.zeros((4, 4, 4, 1), np.uint8))
    with pytest.raises(ValueError, match=r"kind must be one of scratch"):
        render.defect(image, "smudge")
    with pytest.raises(ValueError, match=r"seed must be in"):
        render.dust(image, seed=-1)


def test_non_contiguous_input_is_accepted():
    image = noisy((64, 128), np.uint8, 2)[:, ::2]
    out, mask = render.dust(image, count=10, seed=1)
    assert not (changed_pixels(image, out) & (mask == 0)).any()


@pytest.fixture(scope="module")
def real_tile() -> np.ndarray:
    paths = sorted((MAGNETIC / "images" / "MT_Free").glob("*.jpg"))
    if not paths:
        pytest.skip(f"the magnetic-tile data is not under {MAGNETIC}")
    return np.asarray(Image.open(paths[0]))


def test_impurities_on_real_photographs(real_tile):
    photos = sorted(PHOTOS.glob("*.jpg"))
    images = [real_tile] + [np.asarray(Image.open(photos[0]).convert("RGB"))] * bool(photos)
    for image in images:
        for name in ("water_stains", "fingerprints", "dust"):
            out, mask = render.impurity(image, name, seed=2)
            assert out.shape == image.shape
            assert (mask > 0).any()
            assert not (changed_pixels(image, out) & (mask == 0)).any()


@pytest.mark.parametrize("family", render.SURFACE_FAMILIES)
def test_surface_families(family):
    grey = render.surface(family, (48, 64), seed=1)
    assert grey.shape == (48, 64) and grey.dtype == np.uint8
    assert grey.std() > 1.0
    np.testing.assert_array_equal(grey, render.surface(family, (48, 64), seed=1))
    assert not np.array_equal(grey, render.surface(family, (48, 64), seed=2))
    colour = render.surface(family, (48, 64), seed=1, channels=3)
    assert colour.shape == (48, 64, 3)
    np.testing.assert_array_equal(colour[:, :, 2], grey)
    floats = render.surface(family, 32, seed=1, dtype="float32", mean=0.6)
    assert floats.dtype == np.float32 and 0.0 <= floats.min() and floats.max() <= 1.0
    assert floats.mean() == pytest.approx(0.6, abs=0.1)


def test_surface_errors():
    with pytest.raises(ValueError, match="family must be one of brushed"):
        render.surface("polished")
    with pytest.raises(ValueError, match=r"surface.light_elevation_deg must be in \(0, 90\]"):
        render.surface("brushed", light_elevation_deg=0)
    with pytest.raises(ValueError, match="size must be"):
        render.surface("brushed", (0, 5))
    with pytest.raises(ValueError, match="dtype must be 'uint8' or 'float32'"):
        render.surface("brushed", 8, dtype="float64")


def test_calibrated_surface_matches_the_real_grey_levels(tmp_path, real_tile):
    paths = sorted((MAGNETIC / "images" / "MT_Free").glob("*.jpg"))[:6]
    model = render.fit_surface_model(paths, work_size=64)
    assert model.amplitude.shape == (64, 64)
    assert model.quantiles.shape == (6, 257)
    assert model.mean_image.shape == (64, 64)

    # Fitting arrays gives the same model as fitting the paths they were read from.
    arrays = [np.asarray(Image.open(p).convert("L")) for p in paths]
    same = render.fit_surface_model(arrays, work_size=64)
    np.testing.assert_array_equal(same.amplitude, model.amplitude)

    # The grey levels follow the chosen real image: compare with that image resized by PIL.
    synthetic = render.surface(model, (64, 64), seed=3, quantile_row=1)
    real = np.asarray(Image.open(paths[1]).convert("L").resize((64, 64), Image.BOX))
    for q in (0.1, 0.5, 0.9):
        assert np.quantile(synthetic, q) == pytest.approx(np.quantile(real, q), abs=3.0)

    # Saved and loaded, the model renders the same bytes.
    render.save_surface_model(model, tmp_path / "model.npz")
    loaded = render.load_surface_model(tmp_path / "model.npz")
    for size in ((64, 64), (100, 37)):
        np.testing.assert_array_equal(render.surface(loaded, size, seed=9),
                                      render.surface(model, size, seed=9))
    with pytest.raises(ValueError, match="cannot read a surface model"):
        render.load_surface_model(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="at least one image"):
        render.fit_surface_model([])

    # A folder: every image file in it, in name order.
    for k, path in enumerate(paths[:3]):
        (tmp_path / f"{k}.jpg").write_bytes(path.read_bytes())
    (tmp_path / "notes.txt").write_text("not an image")
    from_folder = render.fit_surface_model(tmp_path, work_size=64)
    from_paths = render.fit_surface_model(paths[:3], work_size=64)
    np.testing.assert_array_equal(from_folder.quantiles, from_paths.quantiles)


@pytest.mark.parametrize(
    "struct",
    ["WaterStainParams", "FingerprintParams", "DustParams", "SurfaceParams", "ScratchParams",
     "DentParams", "BlowholeParams", "CrackParams"],
)
def test_docs_list_every_parameter_with_its_default(struct):
    """docs/render.md has a table per struct: | `field` | unit | range | default | meaning |."""
    text = (ROOT / "docs" / "render.md").read_text()
    section = text.split(f"### {struct}\n", 1)[1].split("\n#", 1)[0]
    documented = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            for name in cells[0].replace("`", "").split(","):
                documented[name.strip()] = float(cells[3].replace("−", "-"))
    defaults = render.params_to_dict(getattr(render._R, struct)())
    assert set(documented) == set(defaults)
    for name, value in defaults.items():
        assert documented[name] == pytest.approx(value), name
