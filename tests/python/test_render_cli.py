"""`seqpatchcore render CONFIG`: configs validated by the render schema, datasets that
`data.load_dataset` reads, and errors that name the config's file and line."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seqpatchcore import _C, data, render
from seqpatchcore.cli import main

REPO = Path(__file__).resolve().parents[2]

# A tiny calibrated dataset: the surface model is fitted on four real tiles at 32 px.
TINY = """\
seed: 5
output: out
size: [40, 48]
surface:
  family: calibrated
  fit:
    images: ["{tiles}/exp1_num_1*.jpg"]
    limit: 4
    work_size: 32
splits:
  train: {{good: 3}}
  test: {{good: 2, scratch: 1, crack: 1}}
defects:
  scratch: {{length_px: 20}}
impurities:
  - kind: water_stains
    splits: [test]
    count: [1, 2]
    params: {{radius_px: 8, strength: -0.3}}
"""


def run_render(*args) -> int:
    return main(["render", *map(str, args), "--no-progress"])


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def line_column(text: str, needle: str, offset: int = 0) -> str:
    """'line:column' (1-based) of `needle` in `text`, plus `offset` columns."""
    start = text.index(needle)
    line = text.count("\n", 0, start) + 1
    column = start - (text.rfind("\n", 0, start) + 1) + 1 + offset
    return f"{line}:{column}"


@pytest.fixture()
def tiles(shared_dir: Path) -> Path:
    return shared_dir / "data/magnetic-tile/images/MT_Free"


@pytest.fixture()
def tiny_config(tmp_path: Path, tiles: Path) -> Path:
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY.format(tiles=tiles))
    return config


def test_synthetic_config_writes_a_dataset_that_load_dataset_reads(tiny_config, tiles):
    assert run_render(tiny_config) == 0
    out = tiny_config.parent / "out"  # `output: out` is relative to the config file

    # The layout: image counts per split and label as the config gives them.
    counts = {(split, label.name): len(list(label.glob("*.png")))
              for split in ("train", "test") for label in (out / split).iterdir()}
    assert counts == {("train", "good"): 3, ("test", "good"): 2, ("test", "scratch"): 1,
                      ("test", "crack"): 1}
    for name in ("manifest.json", "spec.json", "surface_model.npz"):
        assert (out / name).is_file()
    assert not list(out.rglob("*.partial"))

    # The manifest holds the config's seed, the fitted images and every parameter.
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["spec"]["seed"] == 5
    fitted = manifest["spec"]["surface"]["fit"]["images"]
    assert fitted == [str(p) for p in sorted(tiles.glob("exp1_num_1*.jpg"))][:4]
    scratch = next(i for i in manifest["items"] if i["label"] == "scratch")
    assert scratch["defect"]["params"]["length_px"] == 20.0
    assert "width_px" in scratch["defect"]["params"]
    for item in manifest["items"]:
        assert all(layer["params"]["radius_px"] == 8.0 for layer in item["impurities"])
        assert bool(item["impurities"]) == (item["split"] == "test")

    # Any item renders again to the bytes on disk.
    model = render.load_dataset_surface_model(out)
    for item in (scratch, manifest["items"][0]):
        image, defect_mask, impurity_mask = render.render_item(item, model)
        np.testing.assert_array_equal(read_png(out / item["image"]), image)
        np.testing.assert_array_equal(read_png(out / item["impurity_mask"]), impurity_mask)
        if defect_mask is not None:
            np.testing.assert_array_equal(read_png(out / item["mask"]), defect_mask)

    # The main job's reader takes the folder as it is.
    dataset = data.load_dataset(out)
    assert [len(dataset[s]) for s in ("train", "val", "test")] == [3, 0, 4]
    for sample in dataset["train"] + dataset["test"]:
        data.validate_samples([sample], sample.split)
        assert sample.impurity_mask is not None
        impurities = data.load_mask(sample.impurity_mask, (40, 48))
        assert impurities.any() == (sample.split == "test")
        if sample.is_anomalous:
            assert data.load_mask(sample.mask, (40, 48)).any()


def test_overrides_and_output_option(tiny_config, tmp_path, capsys):
    out = tmp_path / "elsewhere"
    assert run_render(tiny_config, "--output", out, "--set", "seed=6",
                      "--set", "impurities[0].params.radius_px=6") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["spec"]["seed"] == 6
    assert manifest["spec"]["impurities"][0]["params"]["radius_px"] == 6.0
    assert not (tmp_path / "out").exists()

    # The folder holds another config's dataset now: refused without --overwrite.
    assert run_render(tiny_config, "--output", out) == 2
    message = capsys.readouterr().err
    assert "from another spec (spec.json differs)" in message and "--overwrite" in message
    assert run_render(tiny_config, "--output", out, "--overwrite") == 0
    assert json.loads((out / "manifest.json").read_text())["spec"]["seed"] == 5


def real_config(path: Path, shared_dir: Path, extra: str = "") -> Path:
    path.write_text(f"kind: real_stains\nseed: 3\nreal:\n  data: "
                    f"{shared_dir / 'data/magnetic-tile'}\n  split: test\n  limit: 3\n"
                    f"  params: {{count: 1, radius_px: 20}}\n{extra}")
    return path


def split_csv_rows(shared_dir: Path) -> list[dict[str, str]]:
    with open(shared_dir / "data/magnetic-tile/split.csv", newline="") as stream:
        return list(csv.DictReader(stream))


def test_real_stains_on_three_magnetic_tile_images(tmp_path, shared_dir):
    config = real_config(tmp_path / "real.yaml", shared_dir, "  copy: []\n")
    assert run_render(config, "--output", tmp_path / "out") == 0
    out = tmp_path / "out"

    # The first three test good images of split.csv, in its order.
    root = shared_dir / "data/magnetic-tile"
    sources = [root / r["image"] for r in split_csv_rows(shared_dir)
               if r["split"] == "test" and r["label"] == "good"][:3]
    for source in sources:
        stained = read_png(out / "test/good" / f"{source.stem}.png")
        mask = read_png(out / "impurities/test" / f"{source.stem}_mask.png") > 0
        with Image.open(source) as image:
            original = np.asarray(image.convert("L"))
        # The stain changes pixels inside its mask only.
        assert mask.any() and (stained[mask] != original[mask]).any()
        np.testing.assert_array_equal(stained[~mask], original[~mask])

    manifest = json.loads((out / "manifest.json").read_text())
    assert [item["source"] for item in manifest["items"]] == [str(s) for s in sources]
    assert all(item["impurities"][0]["params"]["radius_px"] == 20.0
               for item in manifest["items"])
    restained, _ = render.restain_item(manifest["items"][0])
    np.testing.assert_array_equal(restained, read_png(out / manifest["items"][0]["image"]))

    dataset = data.load_dataset(out)
    assert [(s.label, s.impurity_mask is not None) for s in dataset["test"]] == [("good", True)] * 3


def test_real_stains_copy_the_rest_into_a_complete_dataset(tmp_path, shared_dir):
    config = real_config(tmp_path / "real.yaml", shared_dir, "  copy: [val, test]\n")
    assert run_render(config, "--output", tmp_path / "out") == 0
    out = tmp_path / "out"

    rows = split_csv_rows(shared_dir)
    dataset = data.load_dataset(out)
    assert len(dataset["val"]) == sum(r["split"] == "val" for r in rows)
    assert len(dataset["test"]) == sum(r["split"] == "test" for r in rows)
    assert not dataset["train"]
    stained = [s for s in dataset["test"] if s.impurity_mask is not None]
    assert len(stained) == 3 and {s.label for s in stained} == {"good"}

    # Copies are the source files byte for byte, defect masks included.
    root = shared_dir / "data/magnetic-tile"
    row = next(r for r in rows if r["split"] == "val" and r["label"] == "crack")
    image = Path(row["image"])
    copied = out / "val/crack" / image.name
    assert copied.read_bytes() == (root / image).read_bytes()
    mask = out / "ground_truth/crack" / f"{image.stem}_mask.png"
    assert mask.read_bytes() == (root / row["mask"]).read_bytes()


# --- errors name the file and line -----------------------------------------------------------


def expect_error(capsys, config: Path, *needles: str, output: Path | None = None) -> str:
    output = output or config.parent / "out"
    assert run_render(config, "--output", output) == 2
    message = capsys.readouterr().err
    for needle in needles:
        assert needle in message, message
    assert not output.exists() or not list(output.rglob("*.png")), "nothing may be written"
    return message


def test_unknown_key_names_file_line_and_suggestion(tmp_path, capsys, tiles):
    text = TINY.format(tiles=tiles).replace("work_size: 32", "work_sise: 32")
    config = tmp_path / "c.yaml"
    config.write_text(text)
    expect_error(capsys, config, f"{config}:{line_column(text, 'work_sise')}",
                 "unknown key 'surface.fit.work_sise'", "did you mean 'work_size'")


@pytest.mark.parametrize(
    ("old", "new", "needle", "problem"),
    [
        ("radius_px: 8,", "radius_px: 0,", "radius_px: 0", "stain.radius_px must be > 0, got 0"),
        ("strength: -0.3", "strength: dark", "strength: dark",
         "parameter 'strength' must be float, got 'dark'"),
        ("radius_px: 8,", "radius: 8,", "radius: 8", "unknown parameter 'radius'"),
        ("length_px: 20", "length_px: -4", "length_px: -4", "defects.scratch: "),
        ("scratch: {length", "scrach: {length", "scrach: {", "defects: unknown key 'scrach'"),
        ("good: 2,", "gold: 2,", "gold: 2", "splits.test: unknown key 'gold'"),
        ("count: [1, 2]", "count: [2, 1]", "count: [2, 1]", "impurities[0].count must be"),
        ("count: [1, 2]", "count: [1, 200]", "count: [1, 200]",
         "stain.count = 200 cannot fit in a 48x40 image"),
    ],
)
def test_bad_value_inside_a_parameter_map_names_its_line(tmp_path, capsys, tiles, old, new,
                                                         needle, problem):
    text = TINY.format(tiles=tiles).replace(old, new)
    config = tmp_path / "c.yaml"
    config.write_text(text)
    # Locations point at the key's value.
    value_offset = len(needle.split(": ")[0]) + 2
    message = expect_error(capsys, config, problem)
    assert f"{config}:{line_column(text, needle, value_offset)}:" in message, message
    assert "spec." not in message  # the config's keys, not the spec's


def test_missing_data_folders(tmp_path, capsys, shared_dir, tiles):
    config = real_config(tmp_path / "real.yaml", shared_dir)
    text = config.read_text().replace(str(shared_dir / "data/magnetic-tile"), "../nowhere")
    config.write_text(text)
    expect_error(capsys, config, f"{config}:{line_column(text, '../nowhere')}: real.data: "
                 f"no such folder {tmp_path.parent / 'nowhere'}")

    text = TINY.format(tiles=tiles).replace(f'images: ["{tiles}/exp1_num_1*.jpg"]',
                                            "data: missing")
    config = tmp_path / "fit.yaml"
    config.write_text(text)
    expect_error(capsys, config, f"{config}:{line_column(text, 'missing')}: surface.fit.data: "
                 f"no such folder {tmp_path / 'missing'}")

    text = TINY.format(tiles=tiles).replace("exp1_num_1*", "no_such_tile*")
    config.write_text(text)
    expect_error(capsys, config, "surface.fit.images[0]: no image matches",
                 f"{config}:{line_column(text, chr(34) + str(tiles))}")


def test_keys_of_the_other_kind_and_missing_output(tmp_path, capsys, shared_dir, tiles):
    config = real_config(tmp_path / "real.yaml", shared_dir, "splits: {train: {good: 2}}\n")
    expect_error(capsys, config, "splits: only used with kind: synthetic", f"{config}:8:")

    text = TINY.format(tiles=tiles).replace("output: out\n", "")
    config = tmp_path / "c.yaml"
    config.write_text(text)
    assert run_render(config) == 2
    assert "no output folder: give --output" in capsys.readouterr().err

    config.write_text("kind: real_stains\noutput: out\n")
    expect_error(capsys, config, "real.data: is required for kind: real_stains")


# --- the configs of the repository and their reference ----------------------------------------


# Each repository config, shrunk by overrides to a few images.
SHRINK = {
    "render_synthetic": ["size=[64, 64]", "splits={train: {good: 2}, test: {crack: 1}}",
                         "surface.fit.limit=3", "surface.fit.work_size=32"],
    "render_stained_test": ["real.limit=2", "real.copy=[]"],
    "render_stained_train": ["real.limit=2", "real.copy=[]"],
}


@pytest.mark.parametrize("name", sorted(SHRINK))
def test_repository_configs_render(name, tmp_path, shared_dir):
    config = REPO / "configs" / f"{name}.yaml"
    values, _ = _C.load_config(str(config), "render", [])
    assert Path(values["output"]).parent == REPO / "runs/render"
    overrides = [part for o in SHRINK[name] for part in ("--set", o)]
    assert run_render(config, "--output", tmp_path / "out", *overrides) == 0

    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    dataset = data.load_dataset(tmp_path / "out")
    assert sum(map(len, dataset.values())) == len(manifest["items"]) > 0
    real = shared_dir / "data/magnetic-tile"
    if values["kind"] == "synthetic":
        fitted = manifest["spec"]["surface"]["fit"]["images"]
        train = [str(real / r["image"]) for r in split_csv_rows(shared_dir)
                 if r["split"] == "train"]
        assert fitted == train[:3]  # the training images of split.csv, nothing held out
    else:
        assert all(Path(item["source"]).parent.parent.parent == real
                   for item in manifest["items"])
        assert {s.split for s in dataset[values["real"]["split"]]} == {values["real"]["split"]}


def test_config_reference_is_up_to_date():
    text = (REPO / "docs/configs.md").read_text()
    for schema in _C.config_schemas():
        assert f"## `{schema}`" in text
        assert _C.describe_config(schema) in text, (
            f"docs/configs.md is out of date for schema {schema!r}; regenerate it with "
            "`seqpatchcore config --describe`")


def test_help_explains_the_render_command(capsys):
    with pytest.raises(SystemExit):
        main(["render", "--help"])
    text = re.sub(r"\s+", " ", capsys.readouterr().out)
    for needle in ("CONFIG", "--output", "--overwrite", "--set", "manifest.json",
                   "interrupted run leaves no half-written image"):
        assert needle in text
