"""The parts of scripts/bench_anomalib.py that run without anomalib.

anomalib is not installed here (nor in CI): its process is checked only by running the
benchmark. What is tested is everything around it: the per-process measurement, the chunked
reading of the feature file, our two coreset processes against the brute-force references,
the scoring, and the tables with their ratios.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import numpy as np
import pytest
from reference import is_farthest_point_sequence, reference_coreset
from script_loader import SCRIPTS, load_script


bench = load_script("bench_anomalib")


def _child_code(body: str) -> list[str]:
    """A python -c command that imports the script as bench and runs body."""
    prelude = f"import sys; sys.path.insert(0, {str(SCRIPTS)!r}); import bench_anomalib as bench\n"
    return [sys.executable, "-c", prelude + body]


def _save_features(path: Path, rows: int, dim: int, seed: int) -> np.ndarray:
    features = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    np.save(path, features)
    return features


# -- measuring one process ---------------------------------------------------------------------


def test_run_measured_sees_what_the_child_allocates(tmp_path):
    result = tmp_path / "result.json"
    # 256 MiB of ones, touched page by page, then 0.3 s of sleep.
    body = (
        "import time, numpy as np\n"
        "before = bench.current_rss_mb()\n"
        "block = np.ones(256 * 2**20 // 8)\n"
        "time.sleep(0.3)\n"
        f"bench.write_child_result({str(result)!r}, {{'before': before}})\n"
    )
    measured = bench.run_measured(_child_code(body), result, tmp_path / "log.txt")

    assert measured.peak_rss_mb - measured.result["before"] >= 0.95 * 256
    assert measured.wall_s >= 0.3
    assert measured.load_before >= 0.0 and measured.load_after >= 0.0


def test_run_measured_does_not_count_the_parent(tmp_path):
    # A parent holding 256 MiB more than the child ever does: with ru_maxrss, a child started
    # by fork or vfork would report the parent's memory; VmHWM must not.
    held = np.ones(256 * 2**20 // 8)
    result = tmp_path / "result.json"
    measured = bench.run_measured(
        _child_code(f"bench.write_child_result({str(result)!r}, {{}})"), result)

    assert measured.peak_rss_mb < bench.current_rss_mb() - 200
    assert held.sum() == held.size


def test_run_measured_reports_a_failing_child(tmp_path):
    result = tmp_path / "result.json"
    command = _child_code("print('something went wrong'); raise SystemExit(3)")

    with pytest.raises(RuntimeError, match=r"exit status 3(.|\n)*something went wrong"):
        bench.run_measured(command, result, tmp_path / "log.txt")


def test_run_measured_requires_a_result(tmp_path):
    with pytest.raises(RuntimeError, match="missing"):
        bench.run_measured(_child_code("pass"), tmp_path / "result.json", tmp_path / "log.txt")


# -- the features file -------------------------------------------------------------------------


@pytest.mark.parametrize("rows_per_chunk", [1, 7, 50, 51, 1000])
def test_read_row_chunks_returns_the_file_in_order(tmp_path, rows_per_chunk):
    path = tmp_path / "features.npy"
    features = _save_features(path, rows=50, dim=3, seed=rows_per_chunk)

    chunks = list(bench.read_row_chunks(path, rows_per_chunk))

    assert [len(chunk) for chunk in chunks[:-1]] == [rows_per_chunk] * (len(chunks) - 1)
    assert len(chunks) == -(-50 // rows_per_chunk)
    np.testing.assert_array_equal(np.concatenate(chunks), features)


def test_read_row_chunks_rejects_other_arrays(tmp_path):
    wrong_type = tmp_path / "float64.npy"
    np.save(wrong_type, np.zeros((4, 2)))
    wrong_shape = tmp_path / "three_d.npy"
    np.save(wrong_shape, np.zeros((4, 2, 2), dtype=np.float32))
    not_numpy = tmp_path / "text.npy"
    not_numpy.write_text("not an array")

    for path in (wrong_type, wrong_shape, not_numpy):
        with pytest.raises(ValueError, match=str(path.name)):
            list(bench.read_row_chunks(path, 2))
    with pytest.raises(ValueError, match="rows_per_chunk"):
        list(bench.read_row_chunks(wrong_type, 0))


def test_read_row_chunks_notices_a_truncated_file(tmp_path):
    path = tmp_path / "features.npy"
    _save_features(path, rows=20, dim=4, seed=0)
    path.write_bytes(path.read_bytes()[:-10])

    # Found when the header is read (the mapping is longer than the file).
    with pytest.raises(ValueError, match="features.npy: not a readable .npy file"):
        list(bench.read_row_chunks(path, 8))


# -- our coreset processes ---------------------------------------------------------------------


def _run_child(tmp_path: Path, role: str, features: Path, capacity: int, chunk_rows: int):
    command = [sys.executable, str(SCRIPTS / "bench_anomalib.py"), "child", role,
               "--features", str(features), "--capacity", str(capacity), "--chunk-rows",
               str(chunk_rows), "--coreset", str(tmp_path / f"{role}.npy"),
               "--result", str(tmp_path / f"{role}.json")]
    return bench.run_measured(command, tmp_path / f"{role}.json", tmp_path / f"{role}.log")


def test_greedy_process_selects_farthest_points(tmp_path):
    path = tmp_path / "features.npy"
    features = _save_features(path, rows=300, dim=6, seed=1)

    measured = _run_child(tmp_path, "greedy", path, capacity=25, chunk_rows=64)
    order = np.load(tmp_path / "greedy_order.npy")
    coreset = np.load(tmp_path / "greedy.npy")

    # D = 6 < 128: the default projection leaves the features as they are.
    assert len(set(order.tolist())) == 25
    assert is_farthest_point_sequence(features, order)
    np.testing.assert_array_equal(coreset, features[order])
    assert measured.result["size"] == 25 and measured.result["coreset_s"] >= 0.0


def test_sequential_process_streams_to_the_reference_coreset(tmp_path):
    path = tmp_path / "features.npy"
    features = _save_features(path, rows=240, dim=5, seed=2)

    measured = _run_child(tmp_path, "sequential", path, capacity=12, chunk_rows=17)
    coreset = np.load(tmp_path / "sequential.npy")

    np.testing.assert_array_equal(coreset, features[reference_coreset(features, 12)])
    assert measured.result["baseline_rss_mb"] <= measured.peak_rss_mb


def test_child_arguments_are_checked():
    with pytest.raises(SystemExit):
        bench.child_main(["greedy", "--capacity", "3", "--coreset", "c.npy",
                          "--result", "r.json"])
    with pytest.raises(SystemExit):
        bench.child_main(["sequential", "--features", "f.npy", "--capacity", "0",
                          "--coreset", "c.npy", "--result", "r.json"])


# -- scoring -----------------------------------------------------------------------------------


def test_image_scores_are_the_largest_nearest_member_distance():
    rng = np.random.default_rng(3)
    grid = (4, 5)
    features = rng.standard_normal((6, 20, 3)).astype(np.float32)
    coreset = rng.standard_normal((9, 3)).astype(np.float32)

    # Maps at the grid's own size without blur: the map is the patch scores themselves.
    scores = bench.image_scores(features, [grid] * 6, grid, coreset, sigma=0.0)

    differences = features.astype(np.float64)[:, :, None, :] - coreset[None, None]
    nearest = np.sqrt((differences**2).sum(axis=3)).min(axis=2)
    np.testing.assert_allclose(scores, nearest.max(axis=1), rtol=1e-6)


def test_image_scores_rejects_mismatched_inputs():
    features = np.zeros((2, 6, 3), dtype=np.float32)
    coreset = np.ones((4, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="features"):
        bench.image_scores(features, [(2, 3)] * 2, (2, 2), coreset)
    with pytest.raises(ValueError, match="sizes"):
        bench.image_scores(features, [(2, 3)], (2, 3), coreset)


# -- tables ------------------------------------------------------------------------------------


def _measurement(wall, peak, **result):
    return bench.Measurement(wall_s=wall, peak_rss_mb=peak, result=result, load_before=1.0,
                             load_after=1.0)


def _rows():
    anomalib = bench.summarize("anomalib", [_measurement(
        wall=110.0, peak=3000.0, baseline_rss_mb=1000.0, coreset_s=400.0,
        coreset_spent_s=100.0, extrapolated=True)], image_auroc=None)
    sequential = bench.summarize("sequential", [
        _measurement(wall=w, peak=p, baseline_rss_mb=200.0, coreset_s=c)
        for w, p, c in [(30.0, 300.0, 20.0), (10.0, 500.0, 10.0), (20.0, 400.0, 40.0)]
    ], image_auroc=0.9)
    fit = bench.summarize("fit", [_measurement(wall=50.0, peak=600.0, baseline_rss_mb=300.0,
                                               coreset_s=None)], image_auroc=0.8)
    return anomalib, sequential, fit


def test_summarize_takes_medians_and_the_extrapolated_selection():
    anomalib, sequential, fit = _rows()

    # anomalib: 110 s of process, of which 100 s selecting; the full selection would take 400.
    assert anomalib.wall_s == pytest.approx(410.0)
    assert anomalib.coreset_s == 400.0 and anomalib.extrapolated
    assert anomalib.working_mb == 2000.0
    assert (sequential.wall_s, sequential.peak_rss_mb, sequential.coreset_s) == (20.0, 400.0,
                                                                                 20.0)
    assert sequential.repeats == 3 and not sequential.extrapolated
    assert fit.coreset_s is None
    with pytest.raises(ValueError, match="sequential"):
        bench.summarize("sequential", [], None)


def test_csv_has_the_ratios_against_anomalib():
    rows = list(bench.csv.DictReader(io.StringIO(bench.csv_text(_rows()))))

    by_role = {row["role"]: row for row in rows}
    assert list(by_role) == ["anomalib", "sequential", "fit"]
    sequential = by_role["sequential"]
    assert float(sequential["rss_ratio"]) == pytest.approx(3000.0 / 400.0)
    assert float(sequential["working_ratio"]) == pytest.approx(2000.0 / 200.0)
    assert float(sequential["wall_ratio"]) == pytest.approx(410.0 / 20.0)
    assert float(sequential["coreset_ratio"]) == pytest.approx(400.0 / 20.0)
    assert by_role["fit"]["coreset_ratio"] == "" and by_role["fit"]["coreset_s"] == ""
    assert float(by_role["anomalib"]["rss_ratio"]) == 1.0
    assert by_role["anomalib"]["image_auroc"] == ""


def test_markdown_table_lists_every_row_with_its_ratios():
    text = bench.markdown_table(_rows())

    lines = text.strip().splitlines()
    assert len(lines) == 2 + 3
    cells = [cell.strip() for cell in lines[3].strip("|").split("|")]
    assert len(cells) == len(bench.TABLE_HEADER)
    assert cells[0] == bench.LABELS["sequential"] and cells[1] == "no"
    assert cells[8:] == ["7.50", "10.00", "20.50", "20.00"]
    assert "(extrapolated)" in lines[2] and "(extrapolated)" not in lines[3]


def test_tables_without_anomalib_have_no_ratios():
    _, sequential, fit = _rows()

    assert bench.markdown_table([sequential, fit]).count("n/a") >= 8
    rows = list(csv.DictReader(io.StringIO(bench.csv_text([sequential]))))
    assert rows[0]["wall_ratio"] == ""


def test_methods_argument_is_checked():
    assert bench.parse_methods("greedy, sequential") == ["greedy", "sequential"]
    with pytest.raises(bench.argparse.ArgumentTypeError, match="--methods"):
        bench.parse_methods("greedy,faiss")
