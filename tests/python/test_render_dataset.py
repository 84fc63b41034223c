"""The dataset writers: render_dataset (synthetic, MVTec layout) and stain_real_images."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import seqpatchcore
from seqpatchcore import render

ROOT = Path(__file__).resolve().parents[2]
MAGNETIC = ROOT.parent / "shared" / "data" / "magnetic-tile"

SPEC = {
    "seed": 11,
    "size": [40, 48],
    "surface": {"family": "milled", "params": {"mill_pitch_px": 6.0}},
    "splits": {
        "train": {"good": 4},
        "val": {"good": 1, "dent": 1},
        "test": {"good": 2, "scratch": 2, "blowhole": 1, "crack": 1},
    },
    "defects": {"scratch": {"length_px": 20.0}, "dent": {"radius_px": 8.0}},
    "impurities": [
        {"kind": "water_stains", "probability": 0.6, "count": [1, 2],
         "params": {"radius_px": 8.0}},
        {"kind": "dust", "splits": ["test"], "labels": ["good"], "count": 5},
    ],
}


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        image.load()
        return np.asarray(image)


def check_dataset(out_dir: Path, manifest: dict) -> None:
    """Every item's files exist, decode, and equal a fresh rendering of the item."""
    model = render.load_dataset_surface_model(out_dir)
    for item in manifest["items"]:
        image, defect_mask, impurity_mask = render.render_item(item, model)
        np.testing.assert_array_equal(read_png(out_dir / item["image"]), image)
        np.testing.assert_array_equal(read_png(out_dir / item["impurity_mask"]), impurity_mask)
        if item["label"] == "good":
            assert item["mask"] is None and defect_mask is None
        else:
            assert item["mask"] == f"ground_truth/{item['label']}/{item['name']}_mask.png"
            mask = read_png(out_dir / item["mask"])
            np.testing.assert_array_equal(mask, defect_mask)
            assert (mask == 255).any()
        assert impurity_mask.any() == bool(item["impurities"])


def test_layout_manifest_and_exact_rerendering(tmp_path):
    manifest = render.render_dataset(SPEC, tmp_path, progress=False)

    # Layout: MVTec folders, ground truth per defect, impurity masks per split.
    names = {(i["split"], i["label"]) for i in manifest["items"]}
    for split, labels in SPEC["splits"].items():
        for label, count in labels.items():
            files = sorted((tmp_path / split / label).glob("*.png"))
            assert len(files) == count
            assert (split, label) in names
    assert len(list((tmp_path / "ground_truth" / "scratch").glob("*_mask.png"))) == 2
    assert len(list((tmp_path / "impurities" / "test").glob("*_mask.png"))) == 6
    assert len(manifest["items"]) == 12
    assert len({i["name"] for i in manifest["items"]}) == 12

    # The manifest on disk is the one returned, and has every seed and parameter.
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    scratch = next(i for i in manifest["items"] if i["label"] == "scratch")
    assert scratch["defect"]["params"]["length_px"] == 20.0
    assert "width_px" in scratch["defect"]["params"]  # defaults are written out too
    dusty = [i for i in manifest["items"]
             if any(layer["kind"] == "dust" for layer in i["impurities"])]
    assert {(i["split"], i["label"]) for i in dusty} == {("test", "good")}
    check_dataset(tmp_path, manifest)


def test_rerun_skips_complete_items_and_overwrite_reproduces_them(tmp_path):
    render.render_dataset(SPEC, tmp_path, progress=False)
    files = sorted(tmp_path.rglob("*.png"))
    stamps = {p: p.stat().st_mtime_ns for p in files}
    contents = {p: p.read_bytes() for p in files}
    time.sleep(0.01)

    render.render_dataset(SPEC, tmp_path, progress=False)
    assert {p: p.stat().st_mtime_ns for p in files} == stamps

    render.render_dataset(SPEC, tmp_path, overwrite=True, progress=False)
    assert all(p.stat().st_mtime_ns != stamps[p] for p in files)
    assert {p: p.read_bytes() for p in files} == contents

    other = {**SPEC, "seed": 12}
    with pytest.raises(ValueError, match="another spec"):
        render.render_dataset(other, tmp_path, progress=False)


def test_different_seed_different_dataset(tmp_path):
    a = render.render_dataset(SPEC, tmp_path / "a", progress=False)
    render.render_dataset({**SPEC, "seed": 12}, tmp_path / "b", progress=False)
    first = a["items"][0]["image"]
    assert read_png(tmp_path / "a" / first).tobytes() != read_png(tmp_path / "b" / first).tobytes()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sizes": [8, 8]}, r"spec: unknown key 'sizes'"),
        ({"surface": {"family": "polished"}}, r"spec.surface.family must be one of"),
        ({"surface": {"family": "brushed", "params": {"grain": 2}}}, r"unknown parameter 'grain'"),
        ({"splits": {"test": {"smudge": 2}}}, r"spec.splits.test: unknown key 'smudge'"),
        ({"splits": {"test": {"good": -1}}}, r"spec.splits.test.good must be an int >= 0"),
        ({"impurities": [{"kind": "water_stains", "count": [3, 1]}]},
         r"spec.impurities\[0\].count must be"),
        ({"impurities": [{"kind": "water_stains", "count": 40}]},
         r"spec.impurities\[0\]: stain.count = 40 cannot fit in a 48x40 image"),
        ({"impurities": [{"kind": "water_stains", "splits": ["valid"]}]},
         r"unknown split 'valid'"),
        ({"surface": {"family": "calibrated"}}, r"exactly one of 'model'"),
        ({"channels": 2}, r"spec.channels must be 1 or 3"),
    ],
)
def test_spec_errors_name_the_key(tmp_path, change, message):
    with pytest.raises((ValueError, TypeError), match=message):
        render.render_dataset({**SPEC, **change}, tmp_path, progress=False)
    assert not list(tmp_path.rglob("*.png"))


def test_colour_and_calibrated_datasets(tmp_path):
    paths = sorted((MAGNETIC / "images" / "MT_Free").glob("*.jpg"))[:4]
    if not paths:
        pytest.skip(f"the magnetic-tile data is not under {MAGNETIC}")
    spec = {
        "seed": 3,
        "size": [32, 32],
        "channels": 3,
        "surface": {"family": "calibrated",
                    "fit": {"images": os.fspath(paths[0].parent / "*.jpg"), "limit": 4,
                            "work_size": 32}},
        "splits": {"test": {"good": 2, "crack": 1}},
        "impurities": [{"kind": "fingerprints", "params": {"size_px": 10.0}}],
    }
    manifest = render.render_dataset(spec, tmp_path, progress=False)
    assert manifest["surface_model"] == "surface_model.npz"
    assert read_png(tmp_path / manifest["items"][0]["image"]).shape == (32, 32, 3)
    check_dataset(tmp_path, manifest)


# A dataset big enough that the writer is still busy when it is killed.
_INTERRUPTED_SPEC = {
    "seed": 5,
    "size": [32, 32],
    "splits": {"train": {"good": 1500}},
    "impurities": [{"kind": "water_stains", "probability": 0.5, "params": {"radius_px": 6.0}}],
}


def test_interrupted_run_leaves_no_half_written_image(tmp_path):
    out_dir = tmp_path / "data"
    script = (
        "import json, sys\n"
        "from seqpatchcore import render\n"
        "render.render_dataset(json.loads(sys.argv[1]), sys.argv[2], progress=False)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(seqpatchcore.__file__).parents[1])}
    process = subprocess.Popen(
        [sys.executable, "-c", script, json.dumps(_INTERRUPTED_SPEC), str(out_dir)], env=env
    )
    try:
        deadline = time.monotonic() + 60
        while len(list(out_dir.rglob("*.png"))) < 40:
            assert process.poll() is None, "the writer ended before it could be interrupted"
            assert time.monotonic() < deadline, "the writer wrote nothing for 60 s"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL

    # What the killed run left: PNGs that all decode, no manifest, at most temporary files.
    left = sorted(out_dir.rglob("*.png"))
    assert 40 <= len(left) < 2 * 1500
    for path in left:
        read_png(path)
    assert not (out_dir / "manifest.json").exists()

    # A re-run completes the dataset; the items written before the kill are exact.
    manifest = render.render_dataset(_INTERRUPTED_SPEC, out_dir, progress=False)
    assert not list(out_dir.rglob("*.partial"))
    assert len(list(out_dir.rglob("*.png"))) == 2 * 1500
    earlier = {p.relative_to(out_dir).as_posix() for p in left}
    checked = 0
    for item in manifest["items"]:
        if item["image"] in earlier or item["impurity_mask"] in earlier:
            image, _, impurity_mask = render.render_item(item)
            np.testing.assert_array_equal(read_png(out_dir / item["image"]), image)
            np.testing.assert_array_equal(read_png(out_dir / item["impurity_mask"]),
                                          impurity_mask)
            checked += 1
    assert checked >= 20


def magnetic_test_good(count: int) -> list[Path]:
    if not (MAGNETIC / "split.csv").exists():
        pytest.skip(f"the magnetic-tile data is not under {MAGNETIC}")
    with open(MAGNETIC / "split.csv", newline="") as file:
        rows = [r for r in csv.DictReader(file) if r["split"] == "test" and r["label"] == "good"]
    return [MAGNETIC / r["image"] for r in rows[:count]]


def test_stain_real_images(tmp_path):
    paths = magnetic_test_good(4)
    manifest = render.stain_real_images(paths, tmp_path, seed=2, progress=False,
                                        params={"count": [1, 2], "radius_px": 15.0,
                                                "strength": 0.3, "rim_strength": 0.1})
    assert len(manifest["items"]) == 4
    for source, item in zip(paths, manifest["items"], strict=True):
        original = np.asarray(Image.open(source))
        stained = read_png(tmp_path / "test" / "good" / f"{source.stem}.png")
        mask = read_png(tmp_path / "impurities" / "test" / f"{source.stem}_mask.png")
        assert stained.shape == original.shape and stained.dtype == np.uint8
        assert (mask == 255).any()
        np.testing.assert_array_equal(stained[mask == 0], original[mask == 0])
        assert (stained[mask == 255] <= original[mask == 255]).all()  # strength > 0: darker
        assert item["impurities"][0]["params"]["count"] in (1, 2)
        again, again_mask = render.restain_item(item)
        np.testing.assert_array_equal(again, stained)
        np.testing.assert_array_equal(again_mask, mask)

    # The defaults brighten and fit every image given.
    default = render.stain_real_images(paths, tmp_path / "default", progress=False)
    for item in default["items"]:
        stained = read_png(tmp_path / "default" / item["image"]).astype(int)
        mask = read_png(tmp_path / "default" / item["impurity_mask"]) == 255
        original = np.asarray(Image.open(item["source"])).astype(int)
        assert (stained[mask] >= original[mask]).all() and (stained[mask] > original[mask]).any()

    with pytest.raises(ValueError, match="stems must be unique"):
        render.stain_real_images(paths + paths[:1], tmp_path / "dup", progress=False)
    with pytest.raises(ValueError, match=r"stain.radius_px must be > 0"):
        render.stain_real_images(paths, tmp_path / "bad", params={"radius_px": 0.0},
                                 progress=False)


def test_command_line_renders_a_json_spec(tmp_path):
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps({"seed": 4, "size": [24, 24],
                                     "splits": {"test": {"good": 1, "dent": 1}}}))
    render.main([str(spec_path), str(tmp_path / "out")])
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    check_dataset(tmp_path / "out", manifest)
    with pytest.raises(SystemExit):
        render.main([str(tmp_path / "missing.json"), str(tmp_path / "out2")])
