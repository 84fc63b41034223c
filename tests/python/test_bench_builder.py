"""scripts/bench_builder.py on a small feature file: the table, the CSV and the check that every
chunk size gives the same coreset."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from script_loader import load_script


def _features(tmp_path: Path) -> Path:
    path = tmp_path / "features.npy"
    np.save(path, np.random.default_rng(0).normal(size=(3000, 8)).astype(np.float32))
    return path


def test_rounds_of_every_chunk_are_timed_and_tabled(tmp_path):
    bench = load_script("bench_builder")
    results = tmp_path / "results"
    status = bench.main(["--features", str(_features(tmp_path)), "--capacity", "30",
                         "--chunks", "0", "5", "1", "--rounds", "2", "--results", str(results)])

    assert status == 0
    with open(results / "builder.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [(row["round"], row["chunk_size"]) for row in rows] == [
        ("0", "0"), ("0", "5"), ("0", "1"), ("1", "0"), ("1", "5"), ("1", "1")]
    # The default for K = 30 float32: 4 MiB / (30 * 4 bytes) features, capped at 4096.
    assert {row["resolved_chunk"] for row in rows if row["chunk_size"] == "0"} == {"4096"}
    for row in rows:
        build, nn, ratio = (float(row[key]) for key in ("build_s", "nn_pass_s", "build_over_nn"))
        assert build > 0 and nn > 0 and abs(ratio - build / nn) < 1e-9 * ratio
    table = (results / "builder.md").read_text()
    assert "| 4096 (default) | 2 |" in table and "| 5 | 2 |" in table and "| 1 | 2 |" in table


def test_a_coreset_that_differs_between_chunks_fails(tmp_path, monkeypatch):
    bench = load_script("bench_builder")
    real_build = bench.build
    calls = []

    def build(features, capacity, chunk):
        seconds, coreset, resolved = real_build(features, capacity, chunk)
        calls.append(chunk)
        return seconds, coreset + (len(calls) > 1), resolved  # the second build "differs"

    monkeypatch.setattr(bench, "build", build)
    status = bench.main(["--features", str(_features(tmp_path)), "--capacity", "30",
                         "--chunks", "0", "7", "--rounds", "1", "--results", str(tmp_path)])
    assert status == 1
    assert calls == [0, 7] and not (tmp_path / "builder.csv").exists()


@pytest.mark.parametrize("array, message", [
    (np.zeros(5, np.float32), "expected a non-empty float32 or float64 [features, D] array"),
    (np.zeros((0, 8), np.float32), "got float32 of shape (0, 8)"),
    (np.zeros((5, 8), np.int64), "got int64 of shape (5, 8)"),
    (np.full((5, 8), np.nan, np.float32), "holds NaN or infinity"),
])
def test_bad_feature_files_are_named_before_any_build(tmp_path, capsys, array, message):
    bench = load_script("bench_builder")
    path = tmp_path / "features.npy"
    np.save(path, array)
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--features", str(path), "--results", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
