"""Datasets: lists of samples, image and mask loading, and cheap up-front validation.

Two on-disk formats are read:

* **split.csv** (the magnetic-tile format): ``root/split.csv`` with the columns
  ``split,label,image,mask``; paths are relative to ``root``.
* **MVTec AD layout**: ``train/good``, ``test/good``, ``test/<defect>``, an optional ``val``
  folder shaped like ``test``, masks in ``ground_truth/<defect>/<name>_mask.png`` and optional
  impurity masks in ``impurities/<split>/<name>_mask.png``.

A sample only holds paths; pixels are read when needed with :func:`load_image` and
:func:`load_mask`. :func:`validate_samples` reads image headers only, so a whole dataset can be
checked in well under a second before any feature is extracted. See ``docs/metrics.md`` for
the decisions taken here (mask threshold, colour conversion, validation splits).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
GOOD = "good"
SPLIT_CSV = "split.csv"
CSV_COLUMNS = ("split", "label", "image", "mask")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_SUFFIX = "_mask.png"

# Masks are 8-bit and anti-aliased: a pixel is defect where its value is above the middle.
MASK_LEVEL_8BIT = 127
MASK_LEVEL_16BIT = 32767

# An error message lists at most this many problems; the count of the rest follows.
MAX_LISTED_PROBLEMS = 50


class DatasetError(ValueError):
    """A dataset on disk or a list of samples is not usable.

    Attributes:
        problems: every problem found, one line each, so that a user can fix all of them at once.
    """

    def __init__(self, headline: str, problems: Sequence[str] = ()) -> None:
        self.problems = list(problems)
        lines = [headline]
        lines += [f"  - {p}" for p in self.problems[:MAX_LISTED_PROBLEMS]]
        if len(self.problems) > MAX_LISTED_PROBLEMS:
            lines.append(f"  ... and {len(self.problems) - MAX_LISTED_PROBLEMS} more")
        super().__init__("\n".join(lines))


class ImageReadError(OSError):
    """An image or mask file exists but cannot be decoded."""


@dataclass(frozen=True)
class Sample:
    """One image of a dataset and the files that belong to it.

    Attributes:
        image: path of the image file.
        mask: path of the defect mask (same size as the image), or None where there is none;
            a good image without a mask has no defect pixels.
        label: ``"good"`` or the defect type, e.g. ``"crack"``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        impurity_mask: path of a mask of impurities (stains, dust) that are not defects, or
            None.
    """

    image: Path
    mask: Path | None
    label: str
    split: str
    impurity_mask: Path | None = None

    @property
    def is_anomalous(self) -> bool:
        """True for a defective image, False for a good one."""
        return self.label != GOOD

    @property
    def name(self) -> str:
        """The image file name without its suffix."""
        return self.image.stem


def _check_split_names(splits: Iterable[str], argument: str) -> tuple[str, ...]:
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"{argument}: expected split names among {SPLITS}, got {unknown}")
    return splits


def _format_problems_headline(what: str, count: int) -> str:
    return f"{what}: {count} problem{'s' if count != 1 else ''} found"


def read_split_csv(root: str | Path, split: str | Sequence[str] | None = None) -> list[Sample]:
    """Reads the samples listed in ``root/split.csv`` (the magnetic-tile format).

    The csv has the header ``split,label,image,mask`` (further columns are ignored). Paths are
    relative to ``root``. A defective sample needs a mask; a good sample may leave it empty. All
    problems of the file are collected and raised together.

    Args:
        root: folder holding ``split.csv`` and the files it lists.
        split: one split name, several, or None for all rows.

    Returns:
        The samples in file order.

    Raises:
        FileNotFoundError: ``root/split.csv`` does not exist.
        DatasetError: missing columns, unknown split names, empty fields, duplicate images or
            missing files; each problem names the csv line.
    """
    root = Path(root)
    csv_path = root / SPLIT_CSV
    wanted = SPLITS if split is None else _check_split_names(split, "split")
    if not csv_path.is_file():
        raise FileNotFoundError(f"split file not found: expected {csv_path}")

    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in CSV_COLUMNS if c not in header]
        if missing:
            raise DatasetError(
                f"{csv_path}: missing columns {missing}; expected {list(CSV_COLUMNS)}, got {header}"
            )
        rows = [(line, row) for line, row in enumerate(reader, start=2)]

    samples = []
    problems = []
    first_line_of_image: dict[Path, int] = {}
    for line, row in rows:
        where = f"{csv_path} line {line}"
        values = {c: (row[c] or "").strip() for c in CSV_COLUMNS}
        row_problems = []
        if values["split"] not in SPLITS:
            row_problems.append(
                f"{where}: unknown split {values['split']!r}, expected one of {SPLITS}"
            )
        if not values["label"]:
            row_problems.append(f"{where}: empty label")
        if not values["image"]:
            row_problems.append(f"{where}: empty image path")
        if not values["mask"] and values["label"] not in ("", GOOD):
            row_problems.append(
                f"{where}: defective sample {values['image']!r} ({values['label']}) has no mask"
            )
        if row_problems:
            problems += row_problems
            continue

        image = root / values["image"]
        mask = root / values["mask"] if values["mask"] else None
        if image in first_line_of_image:
            problems.append(
                f"{where}: image {values['image']} is listed again "
                f"(first on line {first_line_of_image[image]})"
            )
        first_line_of_image.setdefault(image, line)
        for path in (image, mask):
            if path is not None and not path.is_file():
                problems.append(f"{where}: file not found: {path}")
        if values["split"] in wanted:
            samples.append(Sample(image, mask, values["label"], values["split"]))

    if problems:
        raise DatasetError(_format_problems_headline(str(csv_path), len(problems)), problems)
    logger.info("read %d samples from %s", len(samples), csv_path)
    return samples


def _list_images(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def read_mvtec(root: str | Path, splits: str | Sequence[str] = SPLITS) -> list[Sample]:
    """Reads a dataset in the MVTec AD folder layout.

    Layout (``<name>`` is the image file name without its suffix)::

        train/good/*.png                          training images, good only
        val/<label>/*.png                         optional, shaped like test/
        test/good/*.png, test/<defect>/*.png
        ground_truth/<defect>/<name>_mask.png     one mask per defective image of val and test
        impurities/<split>/<name>_mask.png        optional impurity masks, any split

    Val and test share ``ground_truth/<defect>``, so a val and a test image of the same defect
    type must not share a name. MVTec AD itself has no val split: pass ``splits=("train",
    "test")`` and split the test samples with :func:`split_validation`, or let
    :func:`load_dataset` do it with ``val_fraction``.

    Args:
        root: the category folder, e.g. ``mvtec/bottle``.
        splits: the splits to read; a missing ``val`` folder gives no val samples.

    Returns:
        The samples, ordered by split, label and file name.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        DatasetError: neither ``train`` nor ``test`` exists, defective images in ``train``,
            missing masks or ambiguous names; all problems are listed together.
    """
    root = Path(root)
    splits = _check_split_names(splits, "splits")
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    if not (root / "train").is_dir() and not (root / "test").is_dir():
        raise DatasetError(
            f"{root}: not an MVTec AD layout (no 'train' or 'test' folder) and no {SPLIT_CSV}"
        )

    samples = []
    problems = []
    owner_of_mask: dict[Path, Path] = {}
    for split in splits:
        split_dir = root / split
        if not split_dir.is_dir():
            if split != "val":
                logger.warning("%s: no '%s' folder", root, split)
            continue
        label_dirs = sorted(p for p in split_dir.iterdir() if p.is_dir())
        split_samples = []
        for label_dir in label_dirs:
            label = label_dir.name
            if split == "train" and label != GOOD:
                problems.append(
                    f"{label_dir}: the train split holds good images only, found label {label!r}"
                )
                continue
            for image in _list_images(label_dir):
                mask = None
                if label != GOOD:
                    mask = root / "ground_truth" / label / f"{image.stem}{MASK_SUFFIX}"
                    if not mask.is_file():
                        problems.append(f"{image}: mask not found, expected {mask}")
                    elif mask in owner_of_mask:
                        problems.append(
                            f"{image}: its mask {mask} also belongs to {owner_of_mask[mask]}; "
                            "val and test images of one defect type need distinct names"
                        )
                    owner_of_mask.setdefault(mask, image)
                split_samples.append(Sample(image, mask, label, split))
        samples += _attach_impurities(root, split, split_samples, problems)

    if problems:
        raise DatasetError(_format_problems_headline(str(root), len(problems)), problems)
    logger.info("read %d samples from %s (MVTec layout)", len(samples), root)
    return samples


def _attach_impurities(
    root: Path, split: str, samples: list[Sample], problems: list[str]
) -> list[Sample]:
    folder = root / "impurities" / split
    if not folder.is_dir():
        return samples

    images_of_name: dict[str, list[Path]] = {}
    for s in samples:
        images_of_name.setdefault(s.name, []).append(s.image)
    result = []
    for s in samples:
        impurity = folder / f"{s.name}{MASK_SUFFIX}"
        if not impurity.is_file():
            result.append(s)
            continue
        if len(images_of_name[s.name]) > 1:
            problems.append(
                f"{impurity}: ambiguous, the {split} images "
                f"{[str(p) for p in images_of_name[s.name]]} share the name {s.name!r}"
            )
        result.append(dataclasses.replace(s, impurity_mask=impurity))

    unused = {p.name for p in folder.glob(f"*{MASK_SUFFIX}")}
    unused -= {f"{name}{MASK_SUFFIX}" for name in images_of_name}
    if unused:
        logger.warning(
            "%s: %d impurity masks match no %s image, e.g. %s",
            folder,
            len(unused),
            split,
            sorted(unused)[0],
        )
    return result


def split_validation(
    samples: Sequence[Sample], fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Splits samples into a validation and a test part, stratified by label.

    For every label, ``round(fraction * count)`` samples, drawn with ``seed``, go to val; the
    rest stay in test. Both parts keep the input order. Used for MVTec AD, which has no val
    split: thresholds are then chosen on the val part and reported on the test part.

    Args:
        samples: the samples to split, typically the test split.
        fraction: share of each label that goes to val, in (0, 1).
        seed: seed of the draw; the same seed and input give the same split.

    Returns:
        ``(val, test)``: the samples with ``split`` set to ``"val"`` and ``"test"``.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction: expected a value in (0, 1), got {fraction}")

    indices_of_label: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        indices_of_label.setdefault(s.label, []).append(i)

    # One generator walks the labels in sorted order, so the split does not depend on the
    # order in which labels first appear.
    rng = np.random.default_rng(seed)
    in_val = np.zeros(len(samples), dtype=bool)
    for label in sorted(indices_of_label):
        indices = np.asarray(indices_of_label[label])
        count = int(round(fraction * len(indices)))
        in_val[rng.permutation(indices)[:count]] = True

    val = [dataclasses.replace(s, split="val") for s, v in zip(samples, in_val, strict=True) if v]
    test = [
        dataclasses.replace(s, split="test") for s, v in zip(samples, in_val, strict=True) if not v
    ]
    return val, test


_LOAD_OPTIONS = ("root", "layout", "splits", "val_fraction", "seed")


def load_dataset(
    root: str | Path | Mapping,
    *,
    layout: str = "auto",
    splits: Sequence[str] = SPLITS,
    val_fraction: float | None = None,
    seed: int = 0,
) -> dict[str, list[Sample]]:
    """Reads a dataset and groups its samples by split.

    The layout is detected: ``root/split.csv`` means the magnetic-tile format, otherwise the
    MVTec AD layout. Where the MVTec layout has no ``val`` folder and ``val_fraction`` is given,
    the test images are split into val and test by :func:`split_validation`.

    Args:
        root: the dataset folder, or a mapping with the keys ``root`` and optionally
            ``layout``, ``splits``, ``val_fraction`` and ``seed`` (as in a config file).
        layout: ``"auto"``, ``"split_csv"`` or ``"mvtec"``.
        splits: the splits to return.
        val_fraction: share of each test label moved to val where the dataset has no val
            split; None leaves val empty.
        seed: seed of that split.

    Returns:
        A dict from each name in ``splits`` to its samples (possibly an empty list).
    """
    if isinstance(root, Mapping):
        unknown = sorted(set(root) - set(_LOAD_OPTIONS))
        if unknown or "root" not in root:
            raise ValueError(
                f"root: expected a path or a mapping with 'root' and keys among "
                f"{_LOAD_OPTIONS}, got keys {sorted(root)}"
            )
        options = dict(root)
        return load_dataset(options.pop("root"), **options)

    root = Path(root)
    splits = _check_split_names(splits, "splits")
    if layout == "auto":
        layout = "split_csv" if (root / SPLIT_CSV).is_file() else "mvtec"
    if layout not in ("split_csv", "mvtec"):
        raise ValueError(f"layout: expected 'auto', 'split_csv' or 'mvtec', got {layout!r}")

    if layout == "split_csv":
        samples = read_split_csv(root, splits)
    else:
        samples = read_mvtec(root, splits)
    dataset: dict[str, list[Sample]] = {s: [] for s in splits}
    for sample in samples:
        dataset[sample.split].append(sample)

    wants_val = "val" in splits and "test" in splits
    if wants_val and not dataset["val"] and val_fraction is not None:
        dataset["val"], dataset["test"] = split_validation(dataset["test"], val_fraction, seed)
        logger.info(
            "%s has no val split: moved %d of %d test samples to val (fraction %g, seed %d)",
            root,
            len(dataset["val"]),
            len(dataset["val"]) + len(dataset["test"]),
            val_fraction,
            seed,
        )
    elif "val" in splits and not dataset["val"]:
        logger.warning("%s has no val split; pass val_fraction to split the test samples", root)
    return dataset


def _open(path: str | Path, what: str) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError) as e:
        raise ImageReadError(f"cannot read {what} {path}: {e}") from e


def _decode(image: Image.Image, path: Path, what: str) -> Image.Image:
    try:
        image.load()
    except (OSError, ValueError) as e:
        raise ImageReadError(f"cannot decode {what} {path}: {e}") from e
    return image


def _as_8bit_rgb(image: Image.Image, path: Path) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grey: map the full 16-bit range onto 0..255, the same for every image, so
        # that brightness stays comparable across a dataset (no per-image stretching).
        levels = np.asarray(image).astype(np.int64)
        levels = np.clip(levels, 0, 65535)
        grey = ((levels * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        raise ImageReadError(
            f"cannot read image {path}: floating-point images (mode 'F') are not supported; "
            "expected 8- or 16-bit grey or RGB"
        )
    if mode in ("L", "1"):
        grey = np.asarray(image.convert("L"))
        return np.repeat(grey[:, :, None], 3, axis=2)
    # RGBA, LA, P, CMYK, YCbCr...: PIL converts to RGB. Alpha is dropped rather than
    # composited, since the colour channels are what the camera measured.
    return np.asarray(image.convert("RGB"))


def load_image(path: str | Path) -> np.ndarray:
    """Reads an image as 8-bit RGB.

    Grey images are replicated to three channels, 16-bit grey images are scaled by 255/65535,
    an alpha channel is dropped and palette images are expanded. Pixels are returned as stored
    (no EXIF rotation), so that they line up with their masks.

    Args:
        path: the image file.

    Returns:
        ``[H, W, 3]`` uint8 array, RGB.

    Raises:
        FileNotFoundError: the file does not exist.
        ImageReadError: the file cannot be decoded; the message names it.
    """
    path = Path(path)
    with _open(path, "image") as image:
        image = _decode(image, path, "image")
        rgb = _as_8bit_rgb(image, path)
    return np.ascontiguousarray(rgb)


def _mask_pixels(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode == "1":
        return np.asarray(image, dtype=bool)
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        return np.asarray(image) > MASK_LEVEL_16BIT
    if mode == "L":
        return np.asarray(image) > MASK_LEVEL_8BIT
    # Colour masks: a pixel is defect where any colour channel is above the middle, so that a
    # pure red or blue annotation counts (a luminance conversion would lose it).
    rgb = np.asarray(image.convert("RGB"))
    return (rgb > MASK_LEVEL_8BIT).any(axis=2)


def load_mask(
    path: str | Path | None,
    shape: Sequence[int],
    image_path: str | Path | None = None,
) -> np.ndarray:
    """Reads a defect (or impurity) mask as booleans.

    A pixel is defect where the 8-bit value is above 127 (masks are anti-aliased); 16-bit
    masks use 32767, 1-bit masks are taken as they are, colour masks count a pixel where any
    channel is above 127.

    Args:
        path: the mask file, or None for an image without defects.
        shape: the image shape, ``(H, W)`` or ``(H, W, C)``; the mask must have this size.
        image_path: the image the mask belongs to, named in the error on a size mismatch.

    Returns:
        ``[H, W]`` bool array, True on defect pixels.

    Raises:
        FileNotFoundError: ``path`` is given but does not exist.
        ImageReadError: the mask cannot be decoded.
        ValueError: the mask size differs from ``shape``; the message names both.
    """
    if len(shape) not in (2, 3):
        raise ValueError(f"shape: expected (H, W) or (H, W, C), got {tuple(shape)}")
    height, width = int(shape[0]), int(shape[1])
    if path is None:
        return np.zeros((height, width), dtype=bool)

    path = Path(path)
    with _open(path, "mask") as image:
        if image.size != (width, height):
            image_name = f"image {image_path}" if image_path is not None else "the image"
            raise ValueError(
                f"mask {path} is {image.size[0]}x{image.size[1]} (WxH), but {image_name} is "
                f"{width}x{height}"
            )
        image = _decode(image, path, "mask")
        mask = _mask_pixels(image)
    return np.ascontiguousarray(mask)


def _header_size(path: Path, what: str, problems: list[str]) -> tuple[int, int] | None:
    if not path.is_file():
        problems.append(f"{what} not found: {path}")
        return None
    try:
        # Image.open parses the header only; the pixels are not decoded here.
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError) as e:
        problems.append(f"{what} unreadable: {path} ({e})")
        return None


def validate_samples(samples: Sequence[Sample], split: str, root: str | Path | None = None) -> None:
    """Checks the files of one split cheaply and reports every problem at once.

    Reads only the image headers: checks that each image, mask and impurity mask exists and
    has a readable header, that masks have the size of their image, that every sample belongs
    to ``split``, and that the train split is not empty and holds good images only. A file
    whose header is intact but whose pixel data is truncated is only found when it is decoded.

    Args:
        samples: the samples of the split.
        split: the split name, ``"train"``, ``"val"`` or ``"test"``.
        root: the dataset folder, named in the message about an empty train split.

    Raises:
        DatasetError: listing all problems found.
    """
    _check_split_names(split, "split")
    if split == "train" and not samples:
        where = root if root is not None else "the dataset"
        raise DatasetError(f"no training images found in {where} for split 'train'")
    if not samples:
        logger.warning("split '%s' has no samples", split)

    problems: list[str] = []
    for s in samples:
        if s.split != split:
            problems.append(f"{s.image}: belongs to split {s.split!r}, expected {split!r}")
        if split == "train" and s.is_anomalous:
            problems.append(f"{s.image}: training images must be good, got label {s.label!r}")
        size = _header_size(Path(s.image), "image", problems)
        for path, what in ((s.mask, "mask"), (s.impurity_mask, "impurity mask")):
            if path is None:
                continue
            other = _header_size(Path(path), what, problems)
            if size is not None and other is not None and other != size:
                problems.append(
                    f"{what} {path} is {other[0]}x{other[1]} (WxH), but image {s.image} is "
                    f"{size[0]}x{size[1]}"
                )

    if problems:
        raise DatasetError(_format_problems_headline(f"split '{split}'", len(problems)), problems)
    logger.info("split '%s': %d samples checked", split, len(samples))
