"""Tests of seqpatchcore.data: the real magnetic-tile split, tiny MVTec layouts, error cases."""

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seqpatchcore import data
from seqpatchcore.data import DatasetError, ImageReadError, Sample


def shared_folder() -> Path:
    """The read-only shared folder: $SEQPATCHCORE_SHARED, else ../shared beside the repo."""
    default = Path(__file__).resolve().parents[2].parent / "shared"
    return Path(os.environ.get("SEQPATCHCORE_SHARED", default))


@pytest.fixture(scope="module")
def magnetic_tile() -> Path:
    root = shared_folder() / "data" / "magnetic-tile"
    if not (root / "split.csv").is_file():
        pytest.fail(
            f"magnetic-tile data not found: looked for {root / 'split.csv'}; set "
            "SEQPATCHCORE_SHARED to the shared folder"
        )
    return root


def save(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def grey(h: int, w: int, value: int = 100) -> np.ndarray:
    return np.full((h, w), value, np.uint8)


def mask_pixels(h: int, w: int) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[1:3, 1:3] = 255
    return mask


# ---------------------------------------------------------------------------------------------
# The real magnetic-tile split


def test_magnetic_tile_counts_match_the_readme(magnetic_tile):
    dataset = data.load_dataset(magnetic_tile)

    counts = {
        split: Counter("good" if s.label == "good" else "defective" for s in samples)
        for split, samples in dataset.items()
    }
    # The table of shared/README.md.
    assert counts == {
        "train": {"good": 652},
        "val": {"good": 50, "defective": 78},
        "test": {"good": 150, "defective": 236},
    }
    labels = {s.label for samples in dataset.values() for s in samples}
    assert labels == {"good", "blowhole", "break", "crack", "fray", "uneven"}
    for split, samples in dataset.items():
        data.validate_samples(samples, split, magnetic_tile)


def test_magnetic_tile_images_and_masks_load(magnetic_tile):
    samples = data.read_split_csv(magnetic_tile, split="val")
    defective = next(s for s in samples if s.label == "crack")

    image = data.load_image(defective.image)
    mask = data.load_mask(defective.mask, image.shape, defective.image)

    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    # The tiles are grayscale JPGs: the three channels are copies.
    assert np.array_equal(image[:, :, 0], image[:, :, 2])
    raw = np.asarray(Image.open(defective.mask))
    assert np.array_equal(mask, raw > 127)
    assert mask.any()


def test_magnetic_tile_has_four_empty_uneven_masks(magnetic_tile):
    samples = data.read_split_csv(magnetic_tile)
    uneven = [s for s in samples if s.label == "uneven"]
    empty = [s for s in uneven if not np.asarray(Image.open(s.mask)).max() > 127]
    assert len(empty) == 4


# ---------------------------------------------------------------------------------------------
# split.csv errors


def write_csv(root: Path, rows: list[str], header: str = "split,label,image,mask") -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "split.csv").write_text("\n".join([header, *rows]) + "\n")


def tiny_csv_dataset(root: Path) -> Path:
    save(root / "a.png", grey(5, 6))
    save(root / "b.png", grey(5, 6))
    save(root / "c.png", grey(5, 6))
    save(root / "c_mask.png", mask_pixels(5, 6))
    write_csv(root, ["train,good,a.png,", "val,good,b.png,", "test,crack,c.png,c_mask.png"])
    return root


def test_split_csv_reads_and_filters(tmp_path):
    root = tiny_csv_dataset(tmp_path)
    everything = data.read_split_csv(root)
    assert [(s.split, s.label, s.image.name) for s in everything] == [
        ("train", "good", "a.png"),
        ("val", "good", "b.png"),
        ("test", "crack", "c.png"),
    ]
    assert everything[0].mask is None and everything[2].mask == root / "c_mask.png"
    assert [s.image.name for s in data.read_split_csv(root, "val")] == ["b.png"]
    assert [s.image.name for s in data.read_split_csv(root, ["train", "test"])] == [
        "a.png",
        "c.png",
    ]
    with pytest.raises(ValueError, match="split: expected split names"):
        data.read_split_csv(root, "validation")


def test_split_csv_names_missing_files_with_their_lines(tmp_path):
    root = tiny_csv_dataset(tmp_path)
    (root / "b.png").unlink()
    (root / "c_mask.png").unlink()
    with pytest.raises(DatasetError) as error:
        data.read_split_csv(root)
    message = str(error.value)
    assert f"line 3: file not found: {root / 'b.png'}" in message
    assert f"line 4: file not found: {root / 'c_mask.png'}" in message
    assert len(error.value.problems) == 2


def test_split_csv_format_errors(tmp_path):
    root = tiny_csv_dataset(tmp_path)
    write_csv(root, ["train,good,a.png"], header="split,label,image")
    with pytest.raises(DatasetError, match=r"missing columns \['mask'\]"):
        data.read_split_csv(root)

    write_csv(root, ["training,good,a.png,", "test,crack,c.png,", "val,good,a.png,"])
    with pytest.raises(DatasetError) as error:
        data.read_split_csv(root)
    message = str(error.value)
    assert "line 2: unknown split 'training'" in message
    assert "line 3: defective sample 'c.png' (crack) has no mask" in message
    assert "line 4" not in message  # a.png on line 2 was rejected, so this is no duplicate

    write_csv(root, ["train,good,a.png,", "test,good,a.png,"])
    with pytest.raises(DatasetError, match="line 3: image a.png is listed again"):
        data.read_split_csv(root)

    with pytest.raises(FileNotFoundError, match="split.csv"):
        data.read_split_csv(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------
# MVTec layout


def tiny_mvtec(root: Path, with_val: bool = True) -> Path:
    for name in ("000", "001", "002"):
        save(root / "train/good" / f"{name}.png", grey(6, 8))
    save(root / "test/good/000.png", grey(6, 8))
    save(root / "test/good/001.png", grey(6, 8))
    for name in ("000", "001"):
        save(root / "test/crack" / f"{name}.png", grey(6, 8))
        save(root / "ground_truth/crack" / f"{name}_mask.png", mask_pixels(6, 8))
    save(root / "test/dent/000.png", np.zeros((7, 8, 3), np.uint8))
    save(root / "ground_truth/dent/000_mask.png", mask_pixels(7, 8))
    save(root / "impurities/train/001_mask.png", mask_pixels(6, 8))
    if with_val:
        save(root / "val/good/100.png", grey(6, 8))
        save(root / "val/crack/100.png", grey(6, 8))
        save(root / "ground_truth/crack/100_mask.png", mask_pixels(6, 8))
    return root


def test_mvtec_layout_is_read(tmp_path):
    root = tiny_mvtec(tmp_path)
    dataset = data.load_dataset(root)

    assert [s.name for s in dataset["train"]] == ["000", "001", "002"]
    assert [(s.label, s.name) for s in dataset["test"]] == [
        ("crack", "000"),
        ("crack", "001"),
        ("dent", "000"),
        ("good", "000"),
        ("good", "001"),
    ]
    assert [(s.label, s.name) for s in dataset["val"]] == [("crack", "100"), ("good", "100")]
    crack = dataset["test"][0]
    assert crack.mask == root / "ground_truth/crack/000_mask.png" and crack.is_anomalous
    assert dataset["test"][3].mask is None and not dataset["test"][3].is_anomalous
    assert dataset["train"][1].impurity_mask == root / "impurities/train/001_mask.png"
    assert dataset["train"][0].impurity_mask is None
    for split, samples in dataset.items():
        data.validate_samples(samples, split, root)


def test_mvtec_errors_are_listed_together(tmp_path):
    root = tiny_mvtec(tmp_path)
    (root / "ground_truth/crack/001_mask.png").unlink()
    save(root / "train/crack/005.png", grey(6, 8))
    save(root / "val/crack/000.png", grey(6, 8))  # would share test/crack/000's mask

    with pytest.raises(DatasetError) as error:
        data.read_mvtec(root)

    message = str(error.value)
    assert f"mask not found, expected {root / 'ground_truth/crack/001_mask.png'}" in message
    assert "the train split holds good images only, found label 'crack'" in message
    assert "val and test images of one defect type need distinct names" in message
    assert len(error.value.problems) == 3


def test_mvtec_without_train_or_test_is_rejected(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match="not an MVTec AD layout"):
        data.load_dataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="dataset folder not found"):
        data.read_mvtec(tmp_path / "missing")


def test_split_validation_is_stratified_and_seeded(tmp_path):
    samples = [Sample(Path(f"{i}.png"), None, "good", "test") for i in range(10)]
    samples += [Sample(Path(f"c{i}.png"), Path("m.png"), "crack", "test") for i in range(4)]

    val, test = data.split_validation(samples, 0.5, seed=1)

    assert Counter(s.label for s in val) == {"good": 5, "crack": 2}
    assert {s.split for s in val} == {"val"} and {s.split for s in test} == {"test"}
    assert sorted(s.image for s in val + test) == sorted(s.image for s in samples)
    assert data.split_validation(samples, 0.5, seed=1) == (val, test)
    draws = {
        tuple(s.image for s in data.split_validation(samples, 0.5, seed)[0]) for seed in range(5)
    }
    assert len(draws) > 1
    with pytest.raises(ValueError, match="fraction"):
        data.split_validation(samples, 1.0, seed=0)


def test_load_dataset_splits_test_when_val_is_missing(tmp_path):
    root = tiny_mvtec(tmp_path, with_val=False)
    assert data.load_dataset(root)["val"] == []

    dataset = data.load_dataset({"root": root, "val_fraction": 0.5, "seed": 3})

    assert Counter(s.label for s in dataset["val"]) == {"crack": 1, "good": 1}
    assert len(dataset["val"]) + len(dataset["test"]) == 5
    with pytest.raises(ValueError, match="keys among"):
        data.load_dataset({"root": root, "fraction": 0.5})
    with pytest.raises(ValueError, match="layout"):
        data.load_dataset(root, layout="coco")


# ---------------------------------------------------------------------------------------------
# Validation of samples


def test_validate_reports_every_problem(tmp_path):
    image = save(tmp_path / "a.png", grey(5, 6))
    small_mask = save(tmp_path / "a_mask.png", grey(4, 6))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image at all")
    samples = [
        Sample(image, small_mask, "crack", "test"),
        Sample(tmp_path / "gone.png", None, "good", "test"),
        Sample(broken, None, "good", "test"),
        Sample(image, None, "good", "val"),
    ]

    with pytest.raises(DatasetError) as error:
        data.validate_samples(samples, "test")

    message = str(error.value)
    assert f"mask {small_mask} is 6x4 (WxH), but image {image} is 6x5" in message
    assert f"image not found: {tmp_path / 'gone.png'}" in message
    assert f"image unreadable: {broken}" in message
    assert "belongs to split 'val', expected 'test'" in message
    assert len(error.value.problems) == 4


def test_validate_rejects_empty_and_defective_training_splits(tmp_path):
    with pytest.raises(
        DatasetError, match=f"no training images found in {tmp_path} for split 'train'"
    ):
        data.validate_samples([], "train", tmp_path)
    image = save(tmp_path / "a.png", grey(5, 6))
    mask = save(tmp_path / "a_mask.png", grey(5, 6))
    with pytest.raises(DatasetError, match="training images must be good, got label 'crack'"):
        data.validate_samples([Sample(image, mask, "crack", "train")], "train")
    data.validate_samples([], "val")  # an empty val split is allowed


# ---------------------------------------------------------------------------------------------
# Images and masks


def test_load_image_converts_every_mode(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (4, 5), dtype=np.uint8)
    rgba = np.dstack([rgb, np.full((4, 5), 7, np.uint8)])
    deep = np.array([[0, 200, 65535], [32768, 65280, 1]], dtype=np.uint16)

    assert np.array_equal(data.load_image(save(tmp_path / "rgb.png", rgb)), rgb)
    assert np.array_equal(data.load_image(save(tmp_path / "g.png", gray)), np.dstack([gray] * 3))
    assert np.array_equal(data.load_image(save(tmp_path / "a.png", rgba)), rgb)
    loaded = data.load_image(save(tmp_path / "deep.png", deep))
    # round(v * 255 / 65535): 200 -> 0.78 -> 1, 32768 -> 127.50 -> 128, 65280 -> 254.00.
    assert np.array_equal(loaded[:, :, 1], [[0, 1, 255], [128, 254, 0]])
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    palette.save(tmp_path / "p.png")
    assert np.array_equal(data.load_image(tmp_path / "p.png"), np.asarray(palette.convert("RGB")))


def test_load_image_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        data.load_image(tmp_path / "missing.png")
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(ImageReadError, match="garbage.jpg"):
        data.load_image(garbage)
    truncated = tmp_path / "truncated.png"
    save(tmp_path / "whole.png", np.random.default_rng(0).integers(0, 256, (64, 64), np.uint8))
    truncated.write_bytes((tmp_path / "whole.png").read_bytes()[:200])
    with pytest.raises(ImageReadError, match="truncated.png"):
        data.load_image(truncated)


def test_load_mask_thresholds_at_127(tmp_path):
    levels = np.array([[0, 127, 128], [255, 200, 1]], np.uint8)
    path = save(tmp_path / "m.png", levels)
    assert np.array_equal(data.load_mask(path, (2, 3)), levels > 127)
    assert np.array_equal(data.load_mask(path, (2, 3, 3)), levels > 127)
    assert not data.load_mask(None, (2, 3)).any() and data.load_mask(None, (2, 3)).shape == (2, 3)
    red = np.zeros((2, 3, 3), np.uint8)
    red[0, 0, 0] = 255
    assert np.array_equal(
        data.load_mask(save(tmp_path / "red.png", red), (2, 3)),
        [[True, False, False], [False, False, False]],
    )


def test_load_mask_size_mismatch_names_both(tmp_path):
    path = save(tmp_path / "m.png", grey(4, 6))
    with pytest.raises(
        ValueError,
        match=r"mask .*m\.png is 6x4 \(WxH\), but image .*a\.png "
        r"is 6x5",
    ):
        data.load_mask(path, (5, 6), tmp_path / "a.png")
    with pytest.raises(FileNotFoundError, match="nothing.png"):
        data.load_mask(tmp_path / "nothing.png", (5, 6))
