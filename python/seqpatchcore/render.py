"""Procedural impurities, synthetic surfaces and defects, and the dataset writer.

A thin layer over ``seqpatchcore._C.render`` (C++, OpenCV). Every renderer takes a seed and is
deterministic: the same seed and parameters give the same bytes on the same build. Images are
numpy arrays ``[H, W]`` or ``[H, W, C]`` (C in {1, 3}) of dtype uint8 or float32; masks are
uint8 ``[H, W]`` with 255 where the impurity or defect is. Pixels outside the mask are
bit-identical to the input. A positive ``strength`` darkens, a negative one brightens (see
``docs/render.md`` for every parameter, its unit, range and default).

Example:
    >>> import numpy as np
    >>> from seqpatchcore import render
    >>> tile = render.surface("brushed", size=(256, 256), seed=1)
    >>> stained, mask = render.water_stains(tile, count=2, seed=7, radius_px=30)
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from seqpatchcore import _C

logger = logging.getLogger(__name__)

_R = _C.render

SurfaceModel = _R.SurfaceModel

#: Impurity kinds: name -> (parameter class, renderer).
IMPURITIES = {
    "water_stains": (_R.WaterStainParams, _R.water_stains),
    "fingerprints": (_R.FingerprintParams, _R.fingerprints),
    "dust": (_R.DustParams, _R.dust),
}

#: Defect kinds: name -> (parameter class, renderer).
DEFECTS = {
    "scratch": (_R.ScratchParams, _R.scratch),
    "dent": (_R.DentParams, _R.dent),
    "blowhole": (_R.BlowholeParams, _R.blowhole),
    "crack": (_R.CrackParams, _R.crack),
}

#: Procedural surface families; "calibrated" surfaces come from a SurfaceModel.
SURFACE_FAMILIES = ("brushed", "milled", "sandblasted")

MANIFEST_FORMAT = "seqpatchcore-render/1"

# Seeds are kept below 2**53 so that JSON readers that parse numbers as doubles keep them exact.
_SEED_BITS = 53


# --------------------------------------------------------------------------------------------
# Parameters


def param_names(params: Any) -> list[str]:
    """Field names of a parameter struct such as ``_C.render.WaterStainParams()``."""
    return sorted(
        name
        for name in dir(type(params))
        if not name.startswith("_") and not callable(getattr(params, name))
    )


def params_to_dict(params: Any) -> dict[str, Any]:
    """All fields of a parameter struct as a plain dict (for manifests and YAML)."""
    return {name: getattr(params, name) for name in param_names(params)}


def make_params(cls: type, values: Mapping[str, Any], what: str) -> Any:
    """Build and validate a parameter struct from a mapping of field names to values.

    Args:
        cls: the struct, e.g. ``_C.render.WaterStainParams``.
        values: field -> value; fields not given keep their defaults.
        what: the name used in error messages, e.g. ``"water_stains"``.

    Returns:
        The validated struct.

    Raises:
        TypeError: an unknown field, or a value of the wrong type.
        ValueError: a value out of range (the message names the field).
    """
    params = cls()
    known = param_names(params)
    for name, value in values.items():
        if name not in known:
            raise TypeError(
                f"{what}: unknown parameter {name!r}; expected one of {', '.join(known)}"
            )
        try:
            setattr(params, name, value)
        except TypeError as error:
            expected = type(getattr(params, name)).__name__
            raise TypeError(
                f"{what}: parameter {name!r} must be {expected}, got {value!r}"
            ) from error
    try:
        params.validate()
    except ValueError as error:
        raise ValueError(f"{what}: {error}") from error
    return params


def _check_image(image: Any, name: str = "image") -> np.ndarray:
    array = np.asarray(image)
    if array.dtype not in (np.uint8, np.float32):
        raise TypeError(f"{name} must have dtype uint8 or float32, got {array.dtype}")
    return np.ascontiguousarray(array)


def _check_seed(seed: Any, name: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(seed).__name__}")
    if not 0 <= int(seed) < 2**64:
        raise ValueError(f"{name} must be in [0, 2**64), got {seed}")
    return int(seed)


# --------------------------------------------------------------------------------------------
# Single images


def _impurity(kind: str, image: Any, seed: int, params: Mapping[str, Any]):
    cls, renderer = IMPURITIES[kind]
    return renderer(_check_image(image), make_params(cls, params, kind), _check_seed(seed))


def water_stains(
    image: np.ndarray, count: int = 3, seed: int = 0, **params: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Add water stains: irregular closed outlines, reflectance falling from the centre.

    Args:
        image: ``[H, W]`` or ``[H, W, C]`` uint8 or float32, any size.
        count: stains; they must fit the jittered grid (cells of at least ``radius_px``).
        seed: any int in [0, 2**64).
        **params: fields of ``WaterStainParams`` (``radius_px``, ``strength``, ...).

    Returns:
        ``(image, mask)``: the stained image (same shape and dtype) and a uint8 ``[H, W]`` mask,
        255 inside the stains.
    """
    return _impurity("water_stains", image, seed, {"count": count, **params})


def fingerprints(
    image: np.ndarray, count: int = 1, seed: int = 0, **params: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Add fingerprints: curved ridges in elliptical patches of varying pressure.

    Args and returns as :func:`water_stains`; ``**params`` are ``FingerprintParams`` fields.
    """
    return _impurity("fingerprints", image, seed, {"count": count, **params})


def dust(
    image: np.ndarray, count: int = 60, seed: int = 0, **params: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Add dust: small irregular specks and thin fibres.

    Args and returns as :func:`water_stains`; ``**params`` are ``DustParams`` fields.
    """
    return _impurity("dust", image, seed, {"count": count, **params})


def impurity(
    image: np.ndarray, kind: str, seed: int = 0, **params: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Add the impurity ``kind`` (a key of :data:`IMPURITIES`); see :func:`water_stains`."""
    if kind not in IMPURITIES:
        raise ValueError(f"kind must be one of {', '.join(IMPURITIES)}, got {kind!r}")
    return _impurity(kind, image, seed, params)


def defect(
    image: np.ndarray, kind: str, seed: int = 0, **params: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Add one defect: ``"scratch"``, ``"dent"``, ``"blowhole"`` or ``"crack"``.

    Args:
        image: ``[H, W]`` or ``[H, W, C]`` uint8 or float32.
        kind: a key of :data:`DEFECTS`.
        seed: any int in [0, 2**64).
        **params: fields of the kind's parameter struct, e.g. ``length_px`` for a scratch;
            ``center_x_px``/``center_y_px`` place it (px), otherwise the seed does.

    Returns:
        ``(image, mask)``; the mask (uint8 ``[H, W]``) is 255 on the defect.
    """
    if kind not in DEFECTS:
        raise ValueError(f"kind must be one of {', '.join(DEFECTS)}, got {kind!r}")
    cls, renderer = DEFECTS[kind]
    return renderer(_check_image(image), make_params(cls, params, kind), _check_seed(seed))


def _check_size(size: Any) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        size = (size, size)
    if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in size):
        raise ValueError(f"size must be (height, width) of positive ints, got {size!r}")
    return int(size[0]), int(size[1])


def surface(
    family: str | SurfaceModel,
    size: int | tuple[int, int] = (256, 256),
    seed: int = 0,
    dtype: str = "uint8",
    channels: int = 1,
    **params: Any,
) -> np.ndarray:
    """Render a synthetic surface (there is no mask: the surface is all normal).

    Args:
        family: ``"brushed"``, ``"milled"``, ``"sandblasted"``, or a :class:`SurfaceModel`
            from :func:`fit_surface_model` for a calibrated surface.
        size: ``(height, width)`` px, or one int for a square.
        seed: any int in [0, 2**64).
        dtype: ``"uint8"`` (0-255) or ``"float32"`` (0-1 for the procedural families; the
            fitted images' units for a calibrated surface).
        channels: 1 (``[H, W]``) or 3 (``[H, W, 3]``, grey replicated).
        **params: ``SurfaceParams`` fields for a family; for a model only ``quantile_row``
            (which fitted image's grey levels to match; -1, the default, draws one).

    Returns:
        The image, ``[H, W]`` or ``[H, W, 3]``.
    """
    height, width = _check_size(size)
    seed = _check_seed(seed)
    if isinstance(family, SurfaceModel):
        unknown = set(params) - {"quantile_row"}
        if unknown:
            raise TypeError(f"surface: a SurfaceModel takes only quantile_row, got {unknown}")
        return _R.surface_from_model(
            family, height, width, seed, dtype, channels, params.get("quantile_row", -1)
        )
    if family not in SURFACE_FAMILIES:
        raise ValueError(
            f"family must be one of {', '.join(SURFACE_FAMILIES)} or a SurfaceModel, "
            f"got {family!r}"
        )
    return _R.surface(
        family, make_params(_R.SurfaceParams, params, family), height, width, seed, dtype,
        channels,
    )


def _load_grey(path: str | os.PathLike) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L"))
    except (OSError, ValueError) as error:
        raise OSError(f"cannot read image {os.fspath(path)!r}: {error}") from error


def _load_image(path: str | os.PathLike) -> np.ndarray:
    """uint8 ``[H, W]`` for grey files, ``[H, W, 3]`` for colour ones."""
    try:
        with Image.open(path) as image:
            colour = image.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV")
            return np.asarray(image.convert("RGB" if colour else "L"))
    except (OSError, ValueError) as error:
        raise OSError(f"cannot read image {os.fspath(path)!r}: {error}") from error


_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def fit_surface_model(
    images: Iterable[np.ndarray | str | os.PathLike] | str | os.PathLike,
    work_size: int = 256,
    scale: str = "image",
    crops_per_image: int = 4,
    quantile_count: int = 256,
    seed: int = 0,
) -> SurfaceModel:
    """Fit the amplitude spectrum and grey-level quantiles of real normal images.

    Args:
        images: grey images as uint8/float32 ``[H, W]`` arrays or paths (read as 8-bit grey),
            or one folder: every image file in it, in name order.
        work_size: side of the square working grid, px, [16, 4096].
        scale: ``"image"`` (resize each image to the grid; spectra in cycles per image, so a
            rendering of size S looks like a real image resized to S) or ``"pixel"`` (random
            native-resolution crops; spectra in cycles per pixel).
        crops_per_image: crops per image for ``scale="pixel"``, [1, 64].
        quantile_count: quantile steps per working image, [2, 65536].
        seed: picks the crops.

    Returns:
        The :class:`SurfaceModel`; render with :func:`surface`, store with
        :func:`save_surface_model`.
    """
    if isinstance(images, (str, os.PathLike)):
        folder = Path(images)
        if not folder.is_dir():
            raise ValueError(f"images must be a folder, arrays or paths; {folder} is no folder")
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    arrays = []
    for i, image in enumerate(images):
        if isinstance(image, (str, os.PathLike)):
            arrays.append(_load_grey(image))
        else:
            array = _check_image(image, f"images[{i}]")
            if array.ndim == 3 and array.shape[2] == 1:
                array = array[:, :, 0]
            if array.ndim != 2:
                raise ValueError(f"images[{i}] must be grey [H, W], got shape {array.shape}")
            arrays.append(np.ascontiguousarray(array))
    if not arrays:
        raise ValueError("images must hold at least one image, got none")
    return _R.fit_surface_model(
        arrays, work_size, scale, crops_per_image, quantile_count, _check_seed(seed)
    )


def save_surface_model(model: SurfaceModel, path: str | os.PathLike) -> None:
    """Write a :class:`SurfaceModel` to ``path`` (.npz), atomically."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as file:
        np.savez(
            file,
            amplitude=model.amplitude,
            quantiles=model.quantiles,
            slope=np.float64(model.slope),
            scale=np.str_(model.scale),
            mean_image=np.zeros((0, 0), np.float32) if model.mean_image is None
            else model.mean_image,
            residual_std=np.float64(model.residual_std),
        )
    os.replace(partial, path)


def load_surface_model(path: str | os.PathLike) -> SurfaceModel:
    """Read a :class:`SurfaceModel` written by :func:`save_surface_model`."""
    try:
        with np.load(path) as data:
            mean_image = data["mean_image"]
            return SurfaceModel(
                data["amplitude"], data["quantiles"], float(data["slope"]), str(data["scale"]),
                mean_image if mean_image.size else None, float(data["residual_std"]),
            )
    except (OSError, KeyError, ValueError) as error:
        raise ValueError(
            f"cannot read a surface model from {os.fspath(path)!r}: {error}"
        ) from error


# --------------------------------------------------------------------------------------------
# Atomic files


def _write_png(path: Path, array: np.ndarray) -> None:
    """Write a uint8 image as PNG under a temporary name, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    Image.fromarray(array).save(partial, format="PNG")
    os.replace(partial, path)


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w") as file:
        json.dump(data, file, indent=1, sort_keys=False)
        file.write("\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)


def _remove_partials(out_dir: Path) -> None:
    """Temporary files of an interrupted run: never complete, never read."""
    for partial in out_dir.rglob("*.partial"):
        partial.unlink()
        logger.debug("removed %s left by an interrupted run", partial)


def _derive(seed: int, *parts: Any) -> int:
    """A seed for one component, from the parent seed and the component's name."""
    text = "/".join([str(seed), *(str(p) for p in parts)])
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << _SEED_BITS) - 1)


def _uniform(seed: int, *parts: Any) -> float:
    """Uniform in [0, 1), derived like :func:`_derive`."""
    return _derive(seed, *parts) / float(1 << _SEED_BITS)


# --------------------------------------------------------------------------------------------
# Dataset spec


_SPEC_KEYS = {"seed", "size", "channels", "surface", "splits", "defects", "impurities"}
_SURFACE_KEYS = {"family", "params", "model", "fit", "quantile_row"}
_FIT_KEYS = {"images", "limit", "work_size", "scale", "crops_per_image", "quantile_count", "seed"}
_LAYER_KEYS = {"kind", "splits", "labels", "probability", "count", "params"}


def _check_keys(where: str, data: Any, allowed: set[str]) -> None:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(
            f"{where}: unknown key {unknown[0]!r}; expected one of {', '.join(sorted(allowed))}"
        )


def _check_count(where: str, count: Any) -> list[int]:
    if isinstance(count, (int, np.integer)) and not isinstance(count, bool):
        count = [int(count), int(count)]
    if (
        not isinstance(count, Sequence)
        or len(count) != 2
        or not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in count)
        or not 0 <= count[0] <= count[1]
    ):
        raise ValueError(f"{where} must be an int >= 0 or [min, max] with 0 <= min <= max, "
                         f"got {count!r}")
    return [int(count[0]), int(count[1])]


def normalize_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Check a dataset spec and fill in its defaults; see docs/render.md for the keys.

    Args:
        spec: the spec as a plain dict (it maps 1:1 onto YAML).

    Returns:
        A new dict with every key present.

    Raises:
        ValueError: an unknown key or a bad value, named by its path (``spec.surface.family``).
    """
    _check_keys("spec", spec, _SPEC_KEYS)
    out: dict[str, Any] = {}
    out["seed"] = _check_seed(spec.get("seed", 0), "spec.seed")
    try:
        out["size"] = list(_check_size(spec.get("size", [256, 256])))
    except ValueError as error:
        raise ValueError(f"spec.{error}") from error
    out["channels"] = spec.get("channels", 1)
    if out["channels"] not in (1, 3):
        raise ValueError(f"spec.channels must be 1 or 3, got {out['channels']!r}")

    surface_spec = spec.get("surface", {"family": "brushed"})
    _check_keys("spec.surface", surface_spec, _SURFACE_KEYS)
    family = surface_spec.get("family", "brushed")
    if family not in (*SURFACE_FAMILIES, "calibrated"):
        raise ValueError(
            f"spec.surface.family must be one of {', '.join(SURFACE_FAMILIES)} or calibrated, "
            f"got {family!r}"
        )
    surface_out: dict[str, Any] = {"family": family}
    if family == "calibrated":
        if ("model" in surface_spec) == ("fit" in surface_spec):
            raise ValueError("spec.surface: a calibrated surface needs exactly one of 'model' "
                             "(a saved .npz) or 'fit' (real images to fit)")
        if "params" in surface_spec:
            raise ValueError("spec.surface.params: not used by a calibrated surface; remove it")
        if "model" in surface_spec:
            surface_out["model"] = os.fspath(surface_spec["model"])
        else:
            fit = dict(surface_spec["fit"])
            _check_keys("spec.surface.fit", fit, _FIT_KEYS)
            if "images" not in fit:
                raise ValueError("spec.surface.fit.images is required (a glob, a folder or a "
                                 "list of paths)")
            fit.setdefault("limit", None)
            fit.setdefault("work_size", 256)
            fit.setdefault("scale", "image")
            fit.setdefault("crops_per_image", 4)
            fit.setdefault("quantile_count", 256)
            fit.setdefault("seed", 0)
            surface_out["fit"] = fit
        surface_out["quantile_row"] = int(surface_spec.get("quantile_row", -1))
    else:
        if "model" in surface_spec or "fit" in surface_spec:
            raise ValueError(f"spec.surface: 'model' and 'fit' need family: calibrated, got "
                             f"{family!r}")
        params = make_params(_R.SurfaceParams, surface_spec.get("params", {}),
                             "spec.surface.params")
        surface_out["params"] = params_to_dict(params)
    out["surface"] = surface_out

    defect_params = spec.get("defects", {}) or {}
    _check_keys("spec.defects", defect_params, set(DEFECTS))
    out["defects"] = {}
    for kind, values in defect_params.items():
        out["defects"][kind] = params_to_dict(
            make_params(DEFECTS[kind][0], values or {}, f"spec.defects.{kind}")
        )

    splits = spec.get("splits", {"train": {"good": 10}})
    if not isinstance(splits, Mapping) or not splits:
        raise ValueError(f"spec.splits must be a non-empty mapping, got {splits!r}")
    out["splits"] = {}
    for split, labels in splits.items():
        _check_keys(f"spec.splits.{split}", labels, {"good", *DEFECTS})
        out["splits"][str(split)] = {}
        for label, count in labels.items():
            if not isinstance(count, (int, np.integer)) or isinstance(count, bool) or count < 0:
                raise ValueError(f"spec.splits.{split}.{label} must be an int >= 0, "
                                 f"got {count!r}")
            out["splits"][str(split)][label] = int(count)

    layers = spec.get("impurities", []) or []
    if not isinstance(layers, Sequence) or isinstance(layers, (str, bytes)):
        raise ValueError(f"spec.impurities must be a list of layers, got {layers!r}")
    out["impurities"] = []
    for i, layer in enumerate(layers):
        where = f"spec.impurities[{i}]"
        _check_keys(where, layer, _LAYER_KEYS)
        kind = layer.get("kind")
        if kind not in IMPURITIES:
            raise ValueError(f"{where}.kind must be one of {', '.join(IMPURITIES)}, got {kind!r}")
        params = dict(layer.get("params", {}) or {})
        if "count" in params:
            raise ValueError(f"{where}.params.count: give the count as {where}.count")
        count = _check_count(f"{where}.count", layer.get("count", 1))
        probability = layer.get("probability", 1.0)
        if not isinstance(probability, (int, float)) or not 0.0 <= probability <= 1.0:
            raise ValueError(f"{where}.probability must be in [0, 1], got {probability!r}")
        layer_splits = list(layer.get("splits", list(out["splits"])))
        for split in layer_splits:
            if split not in out["splits"]:
                raise ValueError(f"{where}.splits: unknown split {split!r}; the spec has "
                                 f"{', '.join(out['splits'])}")
        labels = layer.get("labels")
        checked = make_params(IMPURITIES[kind][0], {**params, "count": count[1]},
                              f"{where}.params")
        # Fail now, not halfway through the dataset, when the largest count cannot fit.
        try:
            IMPURITIES[kind][1](np.zeros(out["size"], np.uint8), checked, 0)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from error
        resolved = params_to_dict(checked)
        del resolved["count"]
        out["impurities"].append({
            "kind": kind,
            "splits": layer_splits,
            "labels": None if labels is None else list(labels),
            "probability": float(probability),
            "count": count,
            "params": resolved,
        })
    return out


def _spec_hash(spec: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _fit_images(fit: Mapping[str, Any]) -> list[str]:
    images = fit["images"]
    if isinstance(images, (str, os.PathLike)) and os.path.isdir(images):
        paths = sorted(os.fspath(p) for p in Path(images).iterdir()
                       if p.suffix.lower() in _IMAGE_SUFFIXES)
    elif isinstance(images, (str, os.PathLike)):
        paths = sorted(glob.glob(os.fspath(images)))
    else:
        paths = [os.fspath(p) for p in images]
    if fit.get("limit") is not None:
        paths = paths[: int(fit["limit"])]
    if not paths:
        raise ValueError(f"spec.surface.fit.images matched no files: {images!r}")
    return paths


# --------------------------------------------------------------------------------------------
# Dataset items


def _plan_items(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every item of the dataset with its seeds and resolved parameters; renders nothing."""
    items = []
    height, width = spec["size"]
    for split, labels in spec["splits"].items():
        for label, count in labels.items():
            for index in range(count):
                item_seed = _derive(spec["seed"], split, label, index)
                name = f"{split}_{label}_{index:04d}"
                item: dict[str, Any] = {
                    "split": split,
                    "label": label,
                    "name": name,
                    "seed": item_seed,
                    "image": f"{split}/{label}/{name}.png",
                    "mask": None if label == "good" else f"ground_truth/{label}/{name}_mask.png",
                    "impurity_mask": f"impurities/{split}/{name}_mask.png",
                    "size": [height, width],
                    "channels": spec["channels"],
                }
                surface_spec = spec["surface"]
                surface_item = {"family": surface_spec["family"],
                                "seed": _derive(item_seed, "surface")}
                if surface_spec["family"] == "calibrated":
                    surface_item["quantile_row"] = surface_spec["quantile_row"]
                else:
                    surface_item["params"] = dict(surface_spec["params"])
                item["surface"] = surface_item

                item["defect"] = None
                if label != "good":
                    params = spec["defects"].get(label)
                    if params is None:
                        params = params_to_dict(DEFECTS[label][0]())
                    item["defect"] = {"kind": label, "seed": _derive(item_seed, "defect"),
                                      "params": dict(params)}

                item["impurities"] = []
                for layer_index, layer in enumerate(spec["impurities"]):
                    if split not in layer["splits"]:
                        continue
                    if layer["labels"] is not None and label not in layer["labels"]:
                        continue
                    if _uniform(item_seed, "layer", layer_index, "probability") >= layer[
                        "probability"
                    ]:
                        continue
                    lo, hi = layer["count"]
                    draw = _uniform(item_seed, "layer", layer_index, "count")
                    count_drawn = lo + min(int(draw * (hi - lo + 1)), hi - lo)
                    item["impurities"].append({
                        "kind": layer["kind"],
                        "seed": _derive(item_seed, "layer", layer_index),
                        "params": {**layer["params"], "count": count_drawn},
                    })
                items.append(item)
    return items


def render_item(
    item: Mapping[str, Any], surface_model: SurfaceModel | None = None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Render one manifest item exactly as the dataset writer did.

    Args:
        item: an entry of ``manifest["items"]``.
        surface_model: the dataset's model when its surface is calibrated (see
            :func:`load_dataset_surface_model`).

    Returns:
        ``(image, defect_mask, impurity_mask)``: uint8 ``[H, W]`` (or ``[H, W, 3]``) image,
        uint8 ``[H, W]`` defect mask (None for good items) and impurity mask.
    """
    height, width = item["size"]
    surface_item = item["surface"]
    if surface_item["family"] == "calibrated":
        if surface_model is None:
            raise ValueError(f"item {item['name']!r} has a calibrated surface; pass its "
                             "surface_model")
        image = surface(surface_model, (height, width), surface_item["seed"],
                        channels=item["channels"], quantile_row=surface_item["quantile_row"])
    else:
        image = surface(surface_item["family"], (height, width), surface_item["seed"],
                        channels=item["channels"], **surface_item["params"])

    defect_mask = None
    if item["defect"] is not None:
        image, defect_mask = defect(image, item["defect"]["kind"], item["defect"]["seed"],
                                    **item["defect"]["params"])

    impurity_mask = np.zeros((height, width), np.uint8)
    for layer in item["impurities"]:
        try:
            image, mask = impurity(image, layer["kind"], layer["seed"], **layer["params"])
        except ValueError as error:
            raise ValueError(f"item {item['name']!r}, {layer['kind']}: {error}") from error
        np.maximum(impurity_mask, mask, out=impurity_mask)
    return image, defect_mask, impurity_mask


def _item_files(item: Mapping[str, Any]) -> list[str]:
    return [f for f in (item["image"], item["mask"], item["impurity_mask"]) if f is not None]


def _write_item(out_dir: Path, item: Mapping[str, Any], image, defect_mask, impurity_mask):
    # Masks first, image last: a reader that sees the image also finds its masks.
    if defect_mask is not None:
        _write_png(out_dir / item["mask"], defect_mask)
    _write_png(out_dir / item["impurity_mask"], impurity_mask)
    _write_png(out_dir / item["image"], image)


def load_dataset_surface_model(dataset_dir: str | os.PathLike) -> SurfaceModel | None:
    """The calibrated surface model of a written dataset, or None for a procedural one."""
    manifest = json.loads((Path(dataset_dir) / "manifest.json").read_text())
    if manifest.get("surface_model") is None:
        return None
    return load_surface_model(Path(dataset_dir) / manifest["surface_model"])


def _prepare_out_dir(out_dir: Path, spec_record: Mapping[str, Any], overwrite: bool) -> None:
    """Claims out_dir for this spec; refuses a folder that holds another spec's dataset."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_partials(out_dir)
    marker = out_dir / "spec.json"
    if marker.exists() and not overwrite:
        previous = json.loads(marker.read_text())
        if previous.get("spec_sha256") != spec_record["spec_sha256"]:
            raise ValueError(
                f"{out_dir} holds a dataset rendered from another spec (spec.json differs); "
                "choose another folder or pass overwrite=True"
            )
    _write_json(marker, spec_record)


def render_dataset(
    spec: Mapping[str, Any],
    out_dir: str | os.PathLike,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Render a synthetic dataset in the MVTec layout, with impurity masks and a manifest.

    Layout under ``out_dir``: ``<split>/<label>/<name>.png``,
    ``ground_truth/<defect>/<name>_mask.png``, ``impurities/<split>/<name>_mask.png`` (every
    image has one, empty when it carries no impurity), ``manifest.json`` (every seed and
    resolved parameter; :func:`render_item` re-renders any item exactly), ``spec.json`` and,
    for a calibrated surface, ``surface_model.npz``. Names are ``<split>_<label>_<index>``.

    Every file is written under a temporary name and renamed into place, the manifest last, so
    an interrupted run leaves no half-written image. A re-run with the same spec skips items
    whose files all exist (they would be rendered to the same bytes); ``overwrite=True``
    renders every item again and replaces its files.

    Args:
        spec: the dataset spec (see :func:`normalize_spec` and docs/render.md).
        out_dir: the output folder; created if missing.
        overwrite: re-render existing items, and accept a folder written from another spec.
        progress: show a progress bar.

    Returns:
        The manifest that was written.
    """
    spec_norm = normalize_spec(spec)
    out_dir = Path(out_dir)
    spec_record = {"spec": spec_norm, "spec_sha256": _spec_hash(spec_norm)}
    _prepare_out_dir(out_dir, spec_record, overwrite)

    model = None
    model_file = None
    surface_spec = spec_norm["surface"]
    if surface_spec["family"] == "calibrated":
        model_file = "surface_model.npz"
        if "model" in surface_spec:
            model = load_surface_model(surface_spec["model"])
            save_surface_model(model, out_dir / model_file)
        elif (out_dir / model_file).exists() and not overwrite:
            # Resume with the model this spec already fitted, so old and new items agree.
            model = load_surface_model(out_dir / model_file)
        else:
            fit = surface_spec["fit"]
            paths = _fit_images(fit)
            logger.info("fitting the surface model to %d images", len(paths))
            model = fit_surface_model(paths, fit["work_size"], fit["scale"],
                                      fit["crops_per_image"], fit["quantile_count"], fit["seed"])
            save_surface_model(model, out_dir / model_file)

    items = _plan_items(spec_norm)
    rendered = 0
    for item in tqdm(items, desc="render", unit="image", disable=not progress):
        if not overwrite and all((out_dir / f).exists() for f in _item_files(item)):
            continue
        _write_item(out_dir, item, *render_item(item, model))
        rendered += 1
    logger.info("rendered %d of %d items into %s", rendered, len(items), out_dir)

    manifest = {
        "format": MANIFEST_FORMAT,
        "kind": "synthetic",
        **spec_record,
        "surface_model": model_file,
        "items": items,
    }
    _write_json(out_dir / "manifest.json", manifest)
    return manifest


# --------------------------------------------------------------------------------------------
# Impurities on real images


#: Defaults of :func:`stain_real_images` for water stains: sized to fit every magnetic-tile
#: image (100-630 px), and brighter than the surface, as dried limescale looks on dark ferrite.
REAL_STAIN_DEFAULTS = {"count": [1, 2], "radius_px": 28.0, "strength": -0.35,
                       "rim_strength": -0.25}


def stain_real_images(
    paths: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    seed: int = 0,
    params: Mapping[str, Any] | None = None,
    kind: str = "water_stains",
    split: str = "test",
    label: str = "good",
    overwrite: bool = False,
    progress: bool = True,
    keep: Sequence[Any] = (),
) -> dict[str, Any]:
    """Add impurities to real (good) images: a test set of good-but-dirty images with masks.

    Writes ``<split>/<label>/<stem>.png`` (lossless, same mode as the source: grey or RGB),
    ``impurities/<split>/<stem>_mask.png`` and ``manifest.json`` with each source path, its
    SHA-256, the seed and the resolved parameters. Files are written atomically, the
    manifest last; a re-run with the same arguments skips complete items. With ``keep``,
    other real samples are copied unchanged beside them (MVTec layout), so that ``out_dir``
    is a complete dataset for :func:`seqpatchcore.data.load_dataset`.

    Args:
        paths: source images, e.g. the magnetic-tile test good images from split.csv. Their
            file stems name the outputs and must be unique.
        out_dir: the output folder.
        seed: master seed; each image derives its own from it and its stem.
        params: fields of the impurity's parameter struct; ``count`` may be an int or
            ``[min, max]`` (drawn per image). Defaults: :data:`REAL_STAIN_DEFAULTS` for water
            stains, the struct's defaults otherwise.
        kind: a key of :data:`IMPURITIES`.
        split, label: folder names of the output.
        overwrite: re-render existing items.
        progress: show a progress bar.
        keep: real samples (:class:`seqpatchcore.data.Sample`: ``image``, ``mask``,
            ``label``, ``split``) copied byte for byte to ``<split>/<label>/<file name>``, their
            defect masks to ``ground_truth/<label>/<stem>_mask.png`` (PNG), e.g. the train and
            val splits and the test defects; listed in the manifest with no impurities.

    Returns:
        The manifest that was written.
    """
    if kind not in IMPURITIES:
        raise ValueError(f"kind must be one of {', '.join(IMPURITIES)}, got {kind!r}")
    seed = _check_seed(seed)
    values = dict(REAL_STAIN_DEFAULTS if kind == "water_stains" and params is None else {})
    values.update(params or {})
    count = _check_count("params.count", values.pop("count", 1))
    resolved = params_to_dict(make_params(IMPURITIES[kind][0], {**values, "count": count[1]},
                                          "params"))
    del resolved["count"]

    sources = [Path(p) for p in paths]
    kept = list(keep)
    # One name per image across the whole folder: masks of val and test share
    # ground_truth/<label>/, and a reader pairs masks with images by name.
    stems = [p.stem for p in sources] + [Path(s.image).stem for s in kept]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise ValueError(f"paths: file stems must be unique, {duplicates[0]!r} repeats")
    out_dir = Path(out_dir)
    arguments = {"seed": seed, "kind": kind, "count": count, "params": resolved,
                 "split": split, "label": label, "sources": [os.fspath(p) for p in sources]}
    if kept:
        arguments["keep"] = [[s.split, s.label, os.fspath(s.image),
                              None if s.mask is None else os.fspath(s.mask)] for s in kept]
    spec_record = {"spec": arguments, "spec_sha256": _spec_hash(arguments)}
    _prepare_out_dir(out_dir, spec_record, overwrite)

    items = []
    for source in tqdm(sources, desc="stain", unit="image", disable=not progress):
        stem = source.stem
        item_seed = _derive(seed, stem)
        lo, hi = count
        count_drawn = lo + min(int(_uniform(item_seed, "count") * (hi - lo + 1)), hi - lo)
        item = {
            "split": split,
            "label": label,
            "name": stem,
            "source": os.fspath(source),
            "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
            "image": f"{split}/{label}/{stem}.png",
            "mask": None,
            "impurity_mask": f"impurities/{split}/{stem}_mask.png",
            "impurities": [{"kind": kind, "seed": _derive(item_seed, kind),
                            "params": {**resolved, "count": count_drawn}}],
        }
        items.append(item)
        if not overwrite and all((out_dir / f).exists() for f in _item_files(item)):
            continue
        image, mask = restain_item(item)
        _write_png(out_dir / item["impurity_mask"], mask)
        _write_png(out_dir / item["image"], image)

    for sample in tqdm(kept, desc="copy", unit="image", disable=not progress):
        item = _kept_item(sample)
        items.append(item)
        if not overwrite and all((out_dir / f).exists() for f in _item_files(item)):
            continue
        # Mask first, image last, as for rendered items.
        if item["mask"] is not None:
            _copy_mask(Path(sample.mask), out_dir / item["mask"])
        _copy_file(Path(sample.image), out_dir / item["image"])

    manifest = {"format": MANIFEST_FORMAT, "kind": "real+impurities", **spec_record,
                "surface_model": None, "items": items}
    _write_json(out_dir / "manifest.json", manifest)
    logger.info("stained %d real images into %s, copied %d", len(sources), out_dir, len(kept))
    return manifest


def _kept_item(sample: Any) -> dict[str, Any]:
    """The manifest item of a real sample copied unchanged by :func:`stain_real_images`."""
    source = Path(sample.image)
    has_mask = sample.mask is not None and sample.label != "good"
    return {
        "split": sample.split,
        "label": sample.label,
        "name": source.stem,
        "source": os.fspath(source),
        "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
        "image": f"{sample.split}/{sample.label}/{source.name}",
        "mask": f"ground_truth/{sample.label}/{source.stem}_mask.png" if has_mask else None,
        "mask_source": os.fspath(sample.mask) if has_mask else None,
        "impurity_mask": None,
        "impurities": [],
    }


def _copy_file(source: Path, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(source.read_bytes())
    os.replace(partial, path)


def _copy_mask(source: Path, path: Path) -> None:
    """A PNG mask is copied byte for byte; another format is converted to PNG losslessly."""
    if source.suffix.lower() == ".png":
        _copy_file(source, path)
        return
    try:
        with Image.open(source) as mask:
            pixels = np.asarray(mask)
    except (OSError, ValueError) as error:
        raise OSError(f"cannot read mask {os.fspath(source)!r}: {error}") from error
    _write_png(path, pixels)


def restain_item(item: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Re-render one item of :func:`stain_real_images` from its source image.

    Returns:
        ``(image, impurity_mask)``, uint8.

    Raises:
        ValueError: the source file no longer has the recorded SHA-256.
    """
    source = Path(item["source"])
    if hashlib.sha256(source.read_bytes()).hexdigest() != item["source_sha256"]:
        raise ValueError(f"{source} changed since the manifest was written (SHA-256 differs)")
    image = _load_image(source)
    mask = np.zeros(image.shape[:2], np.uint8)
    for layer in item["impurities"]:
        try:
            image, layer_mask = impurity(image, layer["kind"], layer["seed"], **layer["params"])
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from error
        np.maximum(mask, layer_mask, out=mask)
    return image, mask


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m seqpatchcore.render SPEC.json OUT_DIR``: render a dataset from a JSON spec.

    The spec as a plain JSON dict, for scripts; ``seqpatchcore render CONFIG`` reads the same
    keys from a validated YAML config (docs/render.md).
    """
    parser = argparse.ArgumentParser(prog="python -m seqpatchcore.render",
                                     description="Render a synthetic dataset from a JSON spec.")
    parser.add_argument("spec", type=Path, help="the dataset spec, JSON")
    parser.add_argument("out_dir", type=Path, help="output folder")
    parser.add_argument("--overwrite", action="store_true",
                        help="re-render existing items; accept a folder of another spec")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        spec = json.loads(args.spec.read_text())
    except (OSError, json.JSONDecodeError) as error:
        parser.error(f"cannot read the spec {args.spec}: {error}")
    manifest = render_dataset(spec, args.out_dir, overwrite=args.overwrite)
    logger.info("wrote %d items to %s", len(manifest["items"]), args.out_dir)


if __name__ == "__main__":
    main()
