"""The memory-study driver (scripts/bench_memory.py): its smoke grid runs every cell in a
process of its own and writes a CSV, a table and a plot; the target checks decide as the
issue's numbers say."""

from __future__ import annotations

import argparse
import csv
import os
import sys

import pytest
from PIL import Image
from script_loader import load_script

D = 72  # expanded_conv_2 (24 channels) + expanded_conv_7 (48 channels)


@pytest.fixture(scope="module")
def bench():
    yield load_script("bench_memory")
    del sys.modules["bench_memory"]


@pytest.fixture(scope="module")
def quick_run(bench, tmp_path_factory, shared_dir):
    results = tmp_path_factory.mktemp("memory_quick")
    status = bench.main(["--quick", "--repeats", "1", "--results", str(results)])
    with open(results / "memory_study.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    return status, results, rows


def test_quick_grid_runs_each_cell_in_its_own_process(quick_run):
    status, _, rows = quick_run

    assert status == 0
    # QUICK_GRID with one run per cell: 64 px: greedy n=4, sequential n=4 and 8, sequential
    # with a 16-feature builder chunk n=8; 96 px: sequential n=4, memory-only standard n=4.
    assert sorted(row["cell"] for row in rows) == sorted([
        "64px-greedy-n4-r0", "64px-sequential-n4-r0", "64px-sequential-n8-r0",
        "64px-sequential-c16-n8-r0", "96px-sequential-n4-r0", "96px-greedy-mem-n4-r0",
    ])
    pids = [int(row["pid"]) for row in rows]
    assert len(set(pids)) == len(rows)
    assert os.getpid() not in pids
    assert all(row["status"] == "ok" for row in rows)


def test_quick_csv_columns_and_values(quick_run):
    _, results, rows = quick_run
    with open(results / "memory_study.csv", newline="") as stream:
        header = next(csv.reader(stream))

    required = {"size", "method", "n_images", "capacity", "pid", "fit_peak_mb",
                "total_peak_mb", "kernel_peak_mb", "rss_before_fit_mb", "fit_s", "build_s",
                "nn_pass_s", "build_over_nn", "image_auroc", "pixel_auroc", "image_f1",
                "image_f1_max"}
    assert required <= set(header)
    for row in rows:
        size, n = int(row["size"]), int(row["n_images"])
        # The feature grid has stride 8: (size / 8)^2 patches of D floats per image.
        assert int(row["n_patches"]) == n * (size // 8) ** 2
        assert float(row["feature_mb"]) == pytest.approx(n * (size // 8) ** 2 * D * 4 / 2**20,
                                                         rel=1e-5)
        # Peaks only grow: before fit <= after fit <= at the end <= the kernel's reading.
        before, fit, total, kernel = (float(row[key]) for key in (
            "rss_before_fit_mb", "fit_peak_mb", "total_peak_mb", "kernel_peak_mb"))
        assert 0 < before <= fit <= total <= kernel
        assert 0 <= float(row["build_s"]) <= float(row["fit_s"])
        assert row["omp_wait_policy"] == "passive"
        if row["memory_only"] == "True":
            # A tiny K, and neither a nearest-neighbour pass nor scores.
            assert int(row["capacity"]) == 16 and row["method"] == "greedy"
            assert row["nn_pass_s"] == "" and row["image_auroc"] == ""
        else:
            assert row["memory_only"] == "False"
            assert float(row["nn_pass_s"]) > 0

    scored = [row for row in rows if row["image_auroc"]]
    # Only the largest n both methods ran (4 at 64 px) is scored, in its first run.
    assert sorted(row["cell"] for row in scored) == ["64px-greedy-n4-r0",
                                                     "64px-sequential-n4-r0"]
    for row in scored:
        assert int(row["eval_val_images"]) == 8 and int(row["eval_test_images"]) == 8
        for key in ("image_auroc", "pixel_auroc", "image_f1_max"):
            assert 0.0 <= float(row[key]) <= 1.0


def test_quick_table_plot_and_resume(bench, quick_run):
    _, results, rows = quick_run
    table = (results / "memory_study.md").read_text()
    plot = Image.open(results / "memory_study.png")

    # The four targets at 64 px and, at 96 px, the peak share against the memory-only cell.
    assert table.count("| PASS |") + table.count("| FAIL |") == 5
    assert "96²: sequential fit peak <= 0.2 x standard's at n=4" in table
    assert "standard: memory-only cell" in table
    assert "| 64² | standard | 4 | 32 | 1 |" in table
    assert "| 64² | sequential (chunk 16) | 8 | 32 | 1 |" in table
    assert plot.size[0] > 2 * plot.size[1]  # two panels side by side

    # Resuming a complete study runs nothing: the same processes' rows come back.
    assert bench.main(["--quick", "--repeats", "1", "--resume", "--results", str(results)]) == 0
    with open(results / "memory_study.csv", newline="") as stream:
        again = list(csv.DictReader(stream))
    assert [row["pid"] for row in again] == [row["pid"] for row in rows]


def test_sweep_repeats_cheap_cells_and_scores_the_common_largest_n(bench):
    sweep = bench.Sweep(512, 100, 2, (10, 20), (10, 20, 40), eval_limit=16, score_all=False,
                        repeat_greedy_up_to=10, repeat_sequential_up_to=20,
                        other_chunk_images=(40,), other_chunk=64)

    cells = {cell.name: cell for cell in sweep.cells("run.yaml", repeats=3)}

    assert sorted(cells) == sorted([
        "512px-greedy-n10-r0", "512px-greedy-n10-r1", "512px-greedy-n10-r2",
        "512px-greedy-n20-r0", "512px-sequential-n10-r0", "512px-sequential-n10-r1",
        "512px-sequential-n10-r2", "512px-sequential-n20-r0", "512px-sequential-n20-r1",
        "512px-sequential-n20-r2", "512px-sequential-n40-r0",
        "512px-sequential-c64-n40-r0",
    ])
    scored = sorted(name for name, cell in cells.items() if cell.eval_limit >= 0)
    assert scored == ["512px-greedy-n20-r0", "512px-sequential-n20-r0"]
    assert cells["512px-sequential-c64-n40-r0"].overrides() == [
        "coreset.method=sequential", "coreset.capacity=100", "coreset.chunk_size=64",
        "features.input_size=[512, 512]", "features.batch_size=2", "data.limit_train=40",
        "output.overwrite=true",
    ]


def test_summary_takes_medians_over_repeats_and_metrics_of_the_scored_run(bench):
    rows = [
        {"status": "ok", "size": 256, "method": "sequential", "chunk_size": 0, "n_images": 10,
         "capacity": 5, "batch_size": 1, "feature_mb": 1.0, "fit_peak_mb": peak,
         "fit_s": seconds, "image_auroc": auroc, "eval_val_images": val,
         "eval_test_images": val}
        for peak, seconds, auroc, val in ((300.0, 9.0, 0.8, 4), (310.0, 1.0, None, None),
                                          (320.0, 2.0, None, None))
    ]
    rows.append(dict(rows[0], status="failed (exit 1)", fit_peak_mb=9999.0))

    (entry,) = bench.summarise(rows)

    assert entry["runs"] == 3
    assert entry["fit_peak_mb"] == 310.0 and entry["fit_s"] == 2.0
    assert entry["image_auroc"] == 0.8 and entry["eval_test_images"] == 4


def _entry(method, n, peak, before=250.0, auroc=0.9, build=1.0, nn=1.0):
    return {"size": 256, "method": method, "n_images": n, "capacity": 100,
            "fit_peak_mb": peak, "fit_increase_mb": peak - before, "image_auroc": auroc,
            "build_s": build, "nn_pass_s": nn, "build_over_nn": build / nn}


def test_target_checks_decide_at_the_issue_limits(bench):
    summary = [
        _entry("greedy", 100, 400.0), _entry("greedy", 652, 2000.0, auroc=0.940),
        _entry("sequential", 100, 300.0),
        # 330 / 300 = 1.1 (flat, at the limit); 330 / 2000 = 0.165 <= 0.2;
        # AUROC gap -0.012 > 0.01; build 3 s over NN 2 s = 1.5 (at the limit).
        _entry("sequential", 652, 330.0, auroc=0.928, build=3.0, nn=2.0),
    ]

    verdicts = [check.passed for check in bench.check_targets(summary, 256)]

    assert verdicts == [True, True, False, True]


def test_target_checks_fail_above_the_limits(bench):
    summary = [
        _entry("greedy", 652, 1000.0, auroc=0.940),
        _entry("sequential", 100, 300.0),
        _entry("sequential", 652, 331.0, auroc=0.935, build=3.1, nn=2.0),
    ]

    verdicts = [check.passed for check in bench.check_targets(summary, 256)]

    # 331 / 300 > 1.1; 331 / 1000 > 0.2; |gap| 0.005 passes; 3.1 / 2 > 1.5.
    assert verdicts == [False, False, True, False]


def test_unknown_size_is_refused(bench, tmp_path):
    with pytest.raises(SystemExit, match="--sizes: no sweep for \\[512\\]"):
        bench.main(["--quick", "--sizes", "512", "--results", str(tmp_path)])


def test_only_and_phases_narrow_the_grid(bench):
    args = argparse.Namespace(quick=True, sizes=None, config="run.yaml", repeats=1,
                              only=["64px-sequential-n8-r0", "96px-sequential-n4-r0"],
                              phases=True)

    cells = bench.grid(args)

    assert [cell.name for cell in cells] == ["64px-sequential-n8-r0", "96px-sequential-n4-r0"]
    assert all(cell.phases and cell.eval_limit == -1 for cell in cells)
    with pytest.raises(SystemExit, match="--only: no cell named \\['64px-greedy-n99-r0'\\]"):
        bench.grid(argparse.Namespace(**{**vars(args), "only": ["64px-greedy-n99-r0"]}))


def test_large_size_checks_use_memory_only_cells_where_standard_stops(bench):
    def entry(method, n, peak, increase, capacity=4096):
        return {"size": 1024, "method": method, "n_images": n, "fit_peak_mb": peak,
                "fit_increase_mb": increase, "capacity": capacity}

    summary = [entry("sequential", 10, 450.0, 160.0), entry("sequential", 652, 470.0, 180.0),
               entry("greedy", 10, 700.0, 410.0), entry("greedy-mem", 10, 690.0, 400.0, 16),
               entry("greedy-mem", 652, 9400.0, 9110.0, 16)]
    checks = {check.target: check for check in bench.large_size_checks(summary, 256)}

    flat = checks["1024²: sequential fit peak flat, n=652 over n=10 <= 1.1"]
    assert flat.passed and "470 / 450 MiB = 1.044" in flat.measured
    share = checks["1024²: sequential fit peak <= 0.2 x standard's at n=652"]
    # 470 / 9400 = 0.05, against the memory-only cell: no full standard cell has n = 652.
    assert share.passed and "= 0.050" in share.measured and "memory-only cell" in share.measured
    note = checks["1024²: memory-only standard (K=16) against full (K=4096) at n=10"]
    assert note.passed is None and note.measured == "690 against 700 MiB"
