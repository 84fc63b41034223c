"""Studies: the cells of a study config, sweeps that restart where they stopped, reports, and
the four notebooks executed on tiny studies."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seqpatchcore import study
from seqpatchcore.cli import main

REPO = Path(__file__).resolve().parents[2]


def tiny_mvtec(root: Path, seed: int, impurities: bool = False) -> Path:
    """A tiny MVTec-layout dataset of 48x48 images: 3 train, val and test with one defect."""
    rng = np.random.default_rng(seed)
    layout = {"train": {"good": 3}, "val": {"good": 2, "crack": 1},
              "test": {"good": 2, "crack": 1}}
    for split, labels in layout.items():
        for label, count in labels.items():
            for index in range(count):
                name = f"{split}_{label}_{index}"
                path = root / split / label / f"{name}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(60, 200, (48, 48), dtype=np.uint8)).save(path)
                if label != "good":
                    mask = np.zeros((48, 48), np.uint8)
                    mask[10:20, 10:20] = 255
                    target = root / "ground_truth" / label / f"{name}_mask.png"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(mask).save(target)
                if impurities:
                    mask = np.zeros((48, 48), np.uint8)
                    mask[30:40, 5:15] = 255 if label == "good" else 0
                    target = root / "impurities" / split / f"{name}_mask.png"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(mask).save(target)
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, mobilenet_v3_path) -> Path:
    """A folder with a base run config and three tiny datasets (real, synthetic, stained)."""
    folder = tmp_path_factory.mktemp("study")
    tiny_mvtec(folder / "real", seed=0)
    tiny_mvtec(folder / "synthetic", seed=1)
    tiny_mvtec(folder / "stained", seed=2, impurities=True)
    (folder / "base.yaml").write_text(
        f"name: base\ndata:\n  root: real\n  workers: 0\nbackbone:\n  weights: "
        f"{mobilenet_v3_path}\nfeatures:\n  input_size: [48, 48]\ncoreset:\n  capacity: 20\n"
        f"output:\n  heatmaps: 0\n  save_model: false\n")
    return folder


def write_study(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(f"name: {name}\nbase: base.yaml\noutput: out/{name}\n{body}")
    return path


MEMORY = """axes:
  method:
    sequential: {coreset.method: sequential}
    greedy: {coreset.method: greedy}
grid:
  data.limit_train: [1, 3]
metrics: [peak_rss_mb_fit, seconds.fit, test.image_auroc, test.pixel_auroc]
"""

MELDING = """overrides: {data.train_subset: random}
axes:
  setting:
    synthetic_only: {data.train_root: synthetic, data.limit_train: 0}
    real_only: {}
    melded: {data.pretrain_root: synthetic}
grid:
  data.limit_train: [1, 2]
seeds: [0, 1]
metrics: [test.image_auroc, test.pixel_auroc]
"""

IMPURITY = """overrides: {data.impure_root: stained}
axes:
  train_data:
    real: {}
    real_stains: {data.train_root: stained}
metrics: [test.image_auroc, test_impure.image_auroc, impurity.false_positive_rate_with_impurities,
          impurity.region_flag_rate, test.defect_recall.recall]
"""


@pytest.fixture(scope="module")
def swept(tiny) -> dict[str, Path]:
    folders = {}
    for name, body in (("memory", MEMORY), ("melding", MELDING), ("impurity", IMPURITY)):
        assert main(["sweep", str(write_study(tiny, name, body)), "--no-progress"]) == 0
        folders[name] = tiny / "out" / name
    return folders


def test_cells_are_the_product_of_axes_grid_and_seeds(tiny):
    loaded = study.load_study(write_study(tiny, "melding_cells", MELDING))
    cells = study.cells_of(loaded)
    assert len(cells) == 3 * 2 * 2
    assert len({cell.name for cell in cells}) == 12
    synthetic = [c for c in cells if c.levels["setting"] == "synthetic_only"]
    # The level's limit_train wins over the grid's; relative paths start at the study file.
    assert all(c.overrides["data.limit_train"] == 0 for c in synthetic)
    assert synthetic[0].overrides["data.train_root"] == str(tiny / "synthetic")
    assert {c.overrides["seed"] for c in cells} == {0, 1}


def test_command_line_overrides_reach_dotted_grid_and_level_keys(tiny):
    # `seqpatchcore sweep ... --set grid.data.limit_train=[2]`: the grid's key is
    # data.limit_train, whole (Note [Dotted keys in overrides]).
    loaded = study.load_study(write_study(tiny, "melding_narrowed", MELDING),
                              ["grid.data.limit_train=[2]",
                               "axes.setting.melded.data.limit_eval=4"])
    cells = study.cells_of(loaded)
    assert loaded["grid"] == {"data.limit_train": [2]}
    assert len(cells) == 3 * 1 * 2
    melded = [c for c in cells if c.levels["setting"] == "melded"]
    assert all(c.overrides["data.limit_eval"] == 4 for c in melded)
    assert all(c.overrides["data.limit_train"] == 2 for c in melded)


@pytest.mark.parametrize("override, message", [
    ("grid.data.limit_train=[2, 2]", "grid.data.limit_train: each value once, got 2 2 times"),
    ("seeds=[1, 1]", "seeds: each seed once"),
    ("seeds=[]", "seeds: expected at least one seed"),
    ("grid.seed=[1, 2]", "grid.seed: every cell sets 'seed' itself"),
    ("overrides.seed=5", "overrides.seed: every cell sets 'seed' itself"),
    ("axes.setting.melded.name=x", "axes.setting.melded.name: every cell sets 'name' itself"),
    ("axes.setting=null", "axes.setting: expected at least one level"),
])
def test_studies_whose_cells_would_collide_or_vanish_are_refused(tiny, override, message):
    # Two cells of one name would share a run folder; a seed set in the study would be
    # overruled by every cell's own; an empty axis would leave no cell to run.
    with pytest.raises(study.StudyError, match=re.escape(message)):
        study.load_study(write_study(tiny, "melding_refused", MELDING), [override])


def test_study_errors_name_file_and_key(tiny):
    bad = write_study(tiny, "bad", "axes:\n  x:\n    a: {coreset.capcity: 3}\n")
    with pytest.raises(study.StudyError, match=r"bad\.yaml:6:26: unknown key 'coreset.capcity'"):
        study.load_study(bad)
    bad = write_study(tiny, "bad_value", "grid:\n  coreset.capacity: [-1]\n")
    with pytest.raises(study.StudyError, match="coreset.capacity"):
        study.load_study(bad)
    bad = write_study(tiny, "bad_top", "seedz: [1]\n")
    with pytest.raises(ValueError, match=r"bad_top\.yaml:4:1: unknown key 'seedz'"):
        study.load_study(bad)


def test_every_cell_ran_in_its_own_process(swept):
    folder = swept["memory"]
    with open(folder / "results.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 4
    pids = {json.loads((folder / "cells" / row["cell"] / "environment.json").read_text())["pid"]
            for row in rows}
    assert len(pids) == 4 and os.getpid() not in pids
    assert all(float(row["peak_rss_mb_fit"]) > 0 for row in rows)


def test_a_sweep_restarts_where_it_stopped(swept, tiny):
    folder = swept["memory"]
    victim = sorted((folder / "cells").iterdir())[0]
    kept = sorted((folder / "cells").iterdir())[1]
    stamp = (kept / "metrics.json").stat().st_mtime_ns
    for path in sorted(victim.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    victim.rmdir()
    assert main(["sweep", str(tiny / "memory.yaml"), "--no-progress"]) == 0
    assert (victim / "metrics.json").exists(), "the missing cell was not run again"
    assert (kept / "metrics.json").stat().st_mtime_ns == stamp, "a finished cell was re-run"


def test_the_report_is_rebuilt_from_the_run_folders(swept):
    folder = swept["melding"]
    (folder / "results.md").unlink()
    assert main(["report", str(folder)]) == 0
    text = (folder / "results.md").read_text()
    assert "| setting | data.limit_train | seeds | test.image_auroc | test.pixel_auroc |" in text
    with open(folder / "results.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 12
    # The table's medians are the medians of the rows, computed here independently.
    melded = [float(r["test.pixel_auroc"]) for r in rows
              if r["setting"] == "melded" and r["data.limit_train"] == "2"]
    assert f"{np.median(melded):.4g}" in text
    assert (folder / "plots" / "test_pixel_auroc.png").is_file()


def test_identical_cells_are_run_once(swept):
    folder = swept["melding"]
    synthetic = sorted(p for p in (folder / "cells").iterdir()
                       if p.name.startswith("setting=synthetic_only") and "seed=0" in p.name)
    assert len(synthetic) == 2
    logs = {p.name for p in (folder / "logs").iterdir()}
    assert sum(name.startswith("setting=synthetic_only") for name in logs) == 2  # one per seed
    first, second = (cell / "metrics.json" for cell in synthetic)
    assert first.read_text() == second.read_text()


def test_melded_cells_stream_the_pretraining_images(swept):
    folder = swept["melding"]
    for cell in (folder / "cells").iterdir():
        results = json.loads((cell / "metrics.json").read_text())
        assert ("pretrain" in results["split"]) == cell.name.startswith("setting=melded")


def test_impure_condition_reports_false_alarms(swept):
    folder = swept["impurity"]
    for cell in (folder / "cells").iterdir():
        results = json.loads((cell / "metrics.json").read_text())
        assert results["split_impure"] == 2
        assert results["impurity"]["regions"] == 2
        assert results["impurity"]["images_with_impurities"] == 2


@pytest.mark.parametrize(
    "notebook, folder",
    [("memory.ipynb", "memory"), ("melding.ipynb", "melding"),
     ("impurity_ablation.ipynb", "impurity"), ("quickstart.ipynb", None)],
)
def test_notebooks_run(notebook, folder, swept, shared_dir, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    if folder is not None:
        monkeypatch.setenv("STUDY_DIR", str(swept[folder]))
    monkeypatch.setenv("QUICKSTART_TRAIN", "8")
    monkeypatch.setenv("QUICKSTART_TEST", "6")
    monkeypatch.setenv("SEQPATCHCORE_SHARED", str(shared_dir))
    document = nbformat.read(REPO / "experiments" / notebook, as_version=4)
    NotebookClient(document, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "experiments")}}).execute()
    errors = [output for cell in document.cells for output in cell.get("outputs", [])
              if output.get("output_type") == "error"]
    assert not errors
