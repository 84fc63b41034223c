"""The `seqpatchcore` command: the main job on a small config, and bad input stopped before
any work with a message that names what is wrong."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from seqpatchcore.cli import main

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> int:
    return main([*map(str, args)])


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory, shared_dir) -> Path:
    """The CI config's run folder (the same code path as the main job, smaller)."""
    output = tmp_path_factory.mktemp("run") / "magnetic_tile_ci"
    assert run_cli("run", REPO / "configs/magnetic_tile_ci.yaml", "--output", output,
                   "--no-progress", "--set", f"data.root={shared_dir / 'data/magnetic-tile'}") == 0
    return output


def test_run_folder_holds_everything(ci_run):
    names = {p.name for p in ci_run.iterdir()}
    assert {"config.yaml", "metrics.json", "scores.csv", "defects.md", "defects.csv",
            "score_histogram.png", "environment.json", "model.spc", "heatmaps"} <= names
    assert len(list((ci_run / "heatmaps").glob("*.png"))) == 4
    assert not [p for p in ci_run.parent.iterdir() if p.name.startswith(".")], "staging left"


def test_reported_auroc_matches_scikit_learn_on_the_written_scores(ci_run):
    results = json.loads((ci_run / "metrics.json").read_text())
    with open(ci_run / "scores.csv") as stream:
        rows = [row for row in csv.DictReader(stream) if row["split"] == "test"]
    labels = [row["label"] != "good" for row in rows]
    scores = [float(row["score"]) for row in rows]
    assert results["test"]["image_auroc"] == pytest.approx(roc_auc_score(labels, scores),
                                                           abs=1e-6)
    assert results["split"] == {"train": 60, "val": len(rows), "test": len(rows)} or \
        results["split"]["test"] == len(rows)


def test_defect_table_counts_the_test_images(ci_run):
    with open(ci_run / "scores.csv") as stream:
        labels = [row["label"] for row in csv.DictReader(stream) if row["split"] == "test"]
    with open(ci_run / "defects.csv") as stream:
        table = {row["type"]: int(row["images"]) for row in csv.DictReader(stream)}
    assert table == {label: labels.count(label) for label in set(labels)}


def test_resolved_config_is_valid_and_complete(ci_run):
    from seqpatchcore import _C

    config, _ = _C.load_config(str(ci_run / "config.yaml"), "run")
    assert config["coreset"]["capacity"] == 500
    assert config["scoring"]["sigma"] == 4.0


def test_predict_with_the_saved_model(ci_run, tmp_path, shared_dir):
    images = sorted((shared_dir / "data/magnetic-tile/images/MT_Free").glob("*.jpg"))[:3]
    assert run_cli("predict", ci_run / "model.spc", *images, "--output", tmp_path / "out") == 0
    lines = (tmp_path / "out/scores.csv").read_text().splitlines()
    assert lines[0] == "image,score,anomalous" and len(lines) == 4


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli("--help")
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for command in ("run", "render", "config", "predict", "info"):
        assert command in text


# --- bad input, stopped before any work ------------------------------------------------------


def tiny_dataset(root: Path, train: int = 2) -> Path:
    """A split.csv dataset with a few 64x64 images."""
    (root / "images").mkdir(parents=True)
    rows = ["split,label,image,mask"]
    rng = np.random.default_rng(0)
    for split, label, count in (("train", "good", train), ("val", "good", 2), ("val", "crack", 1),
                                ("test", "good", 2), ("test", "crack", 1)):
        for index in range(count):
            name = f"images/{split}_{label}_{index}.png"
            Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(root / name)
            mask = ""
            if label != "good":
                mask = f"images/{split}_{label}_{index}_mask.png"
                pixels = np.zeros((64, 64), np.uint8)
                pixels[20:30, 20:30] = 255
                Image.fromarray(pixels).save(root / mask)
            rows.append(f"{split},{label},{name},{mask}")
    (root / "split.csv").write_text("\n".join(rows) + "\n")
    return root


def write_config(path: Path, data_root: Path, extra: str = "") -> Path:
    path.write_text(f"name: tiny\ndata:\n  root: {data_root}\ncoreset:\n  capacity: 10\n"
                    f"features:\n  input_size: [64, 64]\n{extra}")
    return path


def expect_error(capsys, config: Path, *needles: str, output: Path | None = None) -> str:
    output = output or config.parent / "out"
    assert run_cli("run", config, "--output", output, "--no-progress") == 2
    message = capsys.readouterr().err
    for needle in needles:
        assert needle in message, message
    assert not output.exists(), "a failed run must not leave its folder"
    return message


def test_unknown_key_names_file_and_line(tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", tiny_dataset(tmp_path / "data"),
                          "scoring:\n  sigmma: 2\n")
    expect_error(capsys, config, f"{config}:9:3", "unknown key 'scoring.sigmma'",
                 "did you mean 'sigma'")


def test_wrong_type_and_out_of_range(tmp_path, capsys):
    data = tiny_dataset(tmp_path / "data")
    config = write_config(tmp_path / "a.yaml", data, "scoring:\n  k: two\n")
    expect_error(capsys, config, "scoring.k: expected an integer, got 'two'")
    config = write_config(tmp_path / "b.yaml", data, "scoring:\n  sigma: -1\n")
    expect_error(capsys, config, "scoring.sigma: expected a number in [0, 64], got -1")


def test_missing_data_folder(tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", tmp_path / "nowhere")
    expect_error(capsys, config, "data.root: no such folder", str(tmp_path / "nowhere"))


def test_empty_training_set(tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", tiny_dataset(tmp_path / "data", train=0))
    expect_error(capsys, config, "split 'train' has no images")


def test_unreadable_image_is_named(tmp_path, capsys):
    data = tiny_dataset(tmp_path / "data")
    (data / "images/train_good_1.png").write_bytes(b"not a png at all")
    config = write_config(tmp_path / "c.yaml", data)
    expect_error(capsys, config, "train_good_1.png")


def test_missing_image_is_named(tmp_path, capsys):
    data = tiny_dataset(tmp_path / "data")
    (data / "images/test_good_0.png").unlink()
    config = write_config(tmp_path / "c.yaml", data)
    expect_error(capsys, config, "test_good_0.png")


def test_mask_of_another_size_is_named(tmp_path, capsys):
    data = tiny_dataset(tmp_path / "data")
    Image.fromarray(np.zeros((32, 64), np.uint8)).save(data / "images/val_crack_0_mask.png")
    config = write_config(tmp_path / "c.yaml", data)
    expect_error(capsys, config, "val_crack_0_mask.png", "val_crack_0.png")


def test_missing_weights_say_where_they_were_looked_for(tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", tiny_dataset(tmp_path / "data"),
                          f"backbone:\n  weights: {tmp_path / 'no.tflite'}\n")
    expect_error(capsys, config, "backbone.weights", str(tmp_path / "no.tflite"))


def test_existing_output_folder_is_kept(tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", tiny_dataset(tmp_path / "data"))
    output = tmp_path / "existing"
    output.mkdir()
    (output / "keep.txt").write_text("results")
    assert run_cli("run", config, "--output", output, "--no-progress") == 2
    assert "exists" in capsys.readouterr().err
    assert (output / "keep.txt").read_text() == "results"


def test_tiny_run_completes(tmp_path):
    config = write_config(tmp_path / "c.yaml", tiny_dataset(tmp_path / "data"))
    assert run_cli("run", config, "--output", tmp_path / "out", "--no-progress") == 0
    results = json.loads((tmp_path / "out/metrics.json").read_text())
    assert results["coreset"]["size"] == 10
    shutil.rmtree(tmp_path / "out")


def test_config_check_takes_the_schema_the_file_is_written_for(capsys):
    configs = Path(__file__).resolve().parents[2] / "configs"
    # A render config (top-level kind), a study (top-level base) and a run config.
    assert main(["config", "--check", str(configs / "render_stained_test.yaml"),
                 "--set", "real.copy[0]=val"]) == 0
    render = capsys.readouterr().out
    assert "kind: real_stains" in render and "- val" in render
    assert main(["config", "--check", str(configs / "study_memory.yaml"),
                 "--set", "grid.data.limit_train=[10]"]) == 0
    assert "data.limit_train:\n    - 10\n" in capsys.readouterr().out
    assert main(["config", "--check", str(configs / "magnetic_tile.yaml")]) == 0
    assert "coreset:" in capsys.readouterr().out
    # An explicit schema wins: a study is not a run config.
    assert main(["config", "--check", str(configs / "study_memory.yaml"),
                 "--schema", "run"]) == 2
    assert "unknown key 'base'" in capsys.readouterr().err
