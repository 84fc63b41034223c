"""Studies: a grid of runs of the main job, each in its own process, with a table and plots.

    seqpatchcore sweep configs/study_melding.yaml      # runs every cell not finished yet
    seqpatchcore report runs/studies/melding            # rebuilds the table and plots

A study config (schema "study", `seqpatchcore config --describe study`) names a base run
config, axes of named levels (each level a set of run-config overrides), plain value grids,
seeds and the metrics to tabulate. The cells are the product of all axes, grid values and
seeds. Each cell is the main job (`seqpatchcore run`) in a child process, so its peak memory
is its own; its run folder appears atomically when it ends, which is what makes a study
restartable: finished cells are skipped.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seqpatchcore import _C
from seqpatchcore.files import write_bytes, write_json, write_text

logger = logging.getLogger(__name__)

STUDY_FILE = "study.yaml"


class StudyError(ValueError):
    """A study config or folder that cannot be used; the message says what and where."""


@dataclass
class Cell:
    """One run of a study: its levels on every axis, its overrides and its seed."""

    levels: dict[str, str]
    overrides: dict[str, Any]
    seed: int
    name: str = field(init=False)

    def __post_init__(self) -> None:
        parts = [f"{axis}={level}" for axis, level in self.levels.items()]
        parts.append(f"seed={self.seed}")
        readable = ",".join(parts)
        digest = hashlib.sha1(json.dumps(self.overrides, sort_keys=True).encode()).hexdigest()
        safe = "".join(c if c.isalnum() or c in "=,.-_" else "-" for c in readable)
        self.name = f"{safe[:120]}-{digest[:8]}"


def load_study(file: str | os.PathLike, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read and validate a study config; the base run config is validated too."""
    study, locations = _C.load_config(str(file), "study", list(overrides or []))
    base = Path(study["base"])
    if not base.is_file():
        raise StudyError(f"{locations.get('base', file)}: base: no such run config {base}")
    # Relative paths among the overrides start at the study file, like every path in it.
    here = Path(file).resolve().parent
    for axis, levels in (study["axes"] or {}).items():
        for level, assignments in levels.items():
            for key, value in (assignments or {}).items():
                where = locations.get(f"axes.{axis}.{level}.{key}", str(file))
                assignments[key] = _resolve(key, value, here, where)
    for key, value in (study["overrides"] or {}).items():
        study["overrides"][key] = _resolve(key, value, here, locations.get(f"overrides.{key}",
                                                                           str(file)))
    for key, values in (study["grid"] or {}).items():
        where = locations.get(f"grid.{key}", str(file))
        if not isinstance(values, list) or not values:
            raise StudyError(f"{where}: grid.{key}: expected a non-empty list of values, got "
                             f"{values!r}")
        study["grid"][key] = [_resolve(key, value, here, where) for value in values]
    _check_cells(study, locations, str(file))
    study["_locations"] = locations
    study["_file"] = str(Path(file).resolve())
    for cell in cells_of(study):
        cell_config(study, cell)  # any bad override fails here, before any cell runs
    return study


# Keys every cell sets itself: a study that sets them would be silently overruled.
_CELL_KEYS = {"seed": "seeds", "name": "the cell's name"}


def _check_cells(study: dict[str, Any], locations: dict[str, str], file: str) -> None:
    """Refuse what would make cells that never run or that share a run folder."""
    places = [("overrides", study["overrides"] or {}), ("grid", study["grid"] or {})]
    places += [(f"axes.{axis}.{level}", assignments or {})
               for axis, levels in (study["axes"] or {}).items()
               for level, assignments in levels.items()]
    for place, assignments in places:
        for key in assignments:
            if key in _CELL_KEYS:
                where = locations.get(f"{place}.{key}", file)
                raise StudyError(f"{where}: {place}.{key}: every cell sets '{key}' itself (from "
                                 f"{_CELL_KEYS[key]}); remove it here")
    for key, values in (study["grid"] or {}).items():
        repeated = [value for value in values if values.count(value) > 1]
        if repeated:
            where = locations.get(f"grid.{key}", file)
            raise StudyError(f"{where}: grid.{key}: each value once, got {repeated[0]!r} "
                             f"{values.count(repeated[0])} times in {values!r}")
    seeds = study["seeds"]
    if len(set(seeds)) != len(seeds):
        raise StudyError(f"{locations.get('seeds', file)}: seeds: each seed once, got {seeds}")
    if not seeds:
        raise StudyError(f"{locations.get('seeds', file)}: seeds: expected at least one seed")
    for axis, levels in (study["axes"] or {}).items():
        if not levels:
            where = locations.get(f"axes.{axis}", file)
            raise StudyError(f"{where}: axes.{axis}: expected at least one level, got none")


def cells_of(study: dict[str, Any]) -> list[Cell]:
    """Every cell of the study, in a stable order: axes, then grid values, then seeds."""
    axes = study["axes"] or {}
    grid = study["grid"] or {}
    axis_levels = [[(axis, name, levels[name]) for name in levels] for axis, levels in axes.items()]
    grid_values = [[(key, value) for value in values] for key, values in grid.items()]
    cells = []
    for combination in itertools.product(*axis_levels) if axis_levels else [()]:
        for values in itertools.product(*grid_values) if grid_values else [()]:
            for seed in study["seeds"]:
                levels = {axis: name for axis, name, _ in combination}
                # Precedence: the study's common overrides, the grid, then the levels (the
                # most specific; e.g. a "synthetic only" level that ignores a real-data grid).
                overrides: dict[str, Any] = dict(study.get("overrides") or {})
                for key, value in values:
                    overrides[key] = value
                    levels[key] = _short(value)
                for _, _, level_overrides in combination:
                    overrides.update(level_overrides or {})
                overrides["seed"] = seed
                cells.append(Cell(levels, overrides, seed))
    return cells


def cell_config(study: dict[str, Any], cell: Cell) -> dict[str, Any]:
    """The validated run config of a cell: the base config with the cell's overrides."""
    assignments = [f"{key}={_yaml_value(value)}" for key, value in cell.overrides.items()]
    if study.get("device"):
        assignments.append(f"device={study['device']}")
    try:
        config, _ = _C.load_config(study["base"], "run", assignments)
    except _C.ConfigError as error:
        raise StudyError(f"{study['_file']}: cell {cell.name}: {error}") from error
    config["name"] = cell.name
    return config


def study_dir(study: dict[str, Any]) -> Path:
    return Path(study["output"]) if study["output"] else Path("runs/studies") / study["name"]


def sweep(file: str | os.PathLike, overrides: list[str] | None = None, progress: bool = True,
          fail_fast: bool = False) -> Path:
    """Run every unfinished cell of a study, then write its report; returns the study folder."""
    from tqdm.auto import tqdm

    study = load_study(file, overrides)
    folder = study_dir(study)
    (folder / "cells").mkdir(parents=True, exist_ok=True)
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    write_text(folder / STUDY_FILE, Path(study["_file"]).read_text())
    write_json(folder / "study.resolved.json",
               {k: v for k, v in study.items() if not k.startswith("_")})

    cells = cells_of(study)
    pending = [cell for cell in cells
               if not (folder / "cells" / cell.name / "metrics.json").exists()]
    logger.info("study %s: %d cells, %d to run", study["name"], len(cells), len(pending))
    failures = []
    for cell in tqdm(pending, desc=f"study {study['name']}", unit="cell", disable=not progress):
        twin = _finished_twin(folder, cells, cell)
        if twin is not None:
            # Same overrides and seed as a finished cell (a level that ignores a grid key):
            # the run would be identical, so its folder is copied instead.
            shutil.copytree(twin, folder / "cells" / cell.name)
            continue
        config_file = folder / "configs" / f"{cell.name}.yaml"
        config = cell_config(study, cell)
        config["output"]["dir"] = str((folder / "cells" / cell.name).resolve())
        config["output"]["overwrite"] = True
        config["output"]["save_model"] = study["save_models"]
        write_text(config_file, _C.dump_config(config))
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "seqpatchcore.cli", "run", str(config_file), "--no-progress"],
            capture_output=True, text=True,
        )
        log = folder / "logs" / f"{cell.name}.log"
        write_text(log, result.stdout + result.stderr)
        if result.returncode != 0:
            failures.append(cell.name)
            logger.error("cell %s failed after %.0f s; see %s", cell.name,
                         time.perf_counter() - started, log)
            if fail_fast:
                break
    report(folder)
    if failures:
        raise StudyError(f"{len(failures)} cell(s) failed: {', '.join(failures)}; their logs are "
                         f"in {folder / 'logs'}; run the sweep again to retry them")
    return folder


def _finished_twin(folder: Path, cells: list[Cell], cell: Cell) -> Path | None:
    for other in cells:
        finished = folder / "cells" / other.name
        if (other is not cell and other.overrides == cell.overrides
                and (finished / "metrics.json").exists()):
            return finished
    return None


def collect(folder: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The study config and one row per finished cell (levels, seed and every metric)."""
    if not (folder / STUDY_FILE).is_file():
        raise StudyError(f"{folder}: not a study folder (no {STUDY_FILE}); run a sweep first")
    study = json.loads((folder / "study.resolved.json").read_text())
    rows = []
    for cell in cells_of(study):
        metrics_file = folder / "cells" / cell.name / "metrics.json"
        if not metrics_file.exists():
            continue
        results = json.loads(metrics_file.read_text())
        row: dict[str, Any] = {"cell": cell.name, **cell.levels, "seed": cell.seed}
        for metric in study["metrics"]:
            row[metric] = _lookup(results, metric)
        rows.append(row)
    return study, rows


def report(folder: str | os.PathLike) -> Path:
    """Write results.csv, results.md (medians over seeds) and one plot per metric."""
    folder = Path(folder)
    study, rows = collect(folder)
    if not rows:
        raise StudyError(f"{folder}: no finished cells yet")
    axes = [key for key in rows[0] if key not in ("cell", "seed", *study["metrics"])]

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(folder / "results.csv", buffer.getvalue())

    summary = summarize(rows, axes, study["metrics"])
    write_text(folder / "results.md", _markdown(study, summary, axes, len(cells_of(study)),
                                                len(rows)))
    for metric in study["metrics"]:
        _plot(folder / "plots" / f"{metric.replace('.', '_')}.png", summary, axes, metric)
    return folder


def summarize(rows: list[dict[str, Any]], axes: list[str],
              metrics: list[str]) -> list[dict[str, Any]]:
    """Median, min and max over seeds of every metric, per combination of axis levels."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[axis] for axis in axes), []).append(row)
    summary = []
    for key, members in groups.items():
        entry: dict[str, Any] = dict(zip(axes, key, strict=True))
        entry["seeds"] = len(members)
        for metric in metrics:
            values = [m[metric] for m in members if m[metric] is not None]
            entry[metric] = statistics.median(values) if values else None
            entry[f"{metric}:min"] = min(values) if values else None
            entry[f"{metric}:max"] = max(values) if values else None
        summary.append(entry)
    return summary


def _markdown(study: dict[str, Any], summary: list[dict[str, Any]], axes: list[str],
              total: int, finished: int) -> str:
    metrics = study["metrics"]
    lines = [f"# Study {study['name']}", "",
             f"{finished} of {total} cells finished. Values are medians over seeds "
             f"(the range in brackets when there are several).", "",
             "| " + " | ".join([*axes, "seeds", *metrics]) + " |",
             "|" + "---|" * (len(axes) + 1 + len(metrics))]
    for entry in summary:
        cells = [str(entry[axis]) for axis in axes] + [str(entry["seeds"])]
        for metric in metrics:
            value = entry[metric]
            if value is None:
                cells.append("n/a")
            elif entry["seeds"] > 1:
                cells.append(f"{value:.4g} [{entry[metric + ':min']:.4g}, "
                             f"{entry[metric + ':max']:.4g}]")
            else:
                cells.append(f"{value:.4g}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot(path: Path, summary: list[dict[str, Any]], axes: list[str], metric: str) -> None:
    """The metric against the last axis, one line per combination of the other axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_axis = axes[-1] if axes else None
    series: dict[tuple, list[tuple[Any, float, float, float]]] = {}
    for entry in summary:
        if entry[metric] is None:
            continue
        key = tuple(entry[axis] for axis in axes[:-1])
        x = entry[x_axis] if x_axis else ""
        series.setdefault(key, []).append((x, entry[metric], entry[f"{metric}:min"],
                                           entry[f"{metric}:max"]))
    figure, axis = plt.subplots(figsize=(7, 4), constrained_layout=True)
    levels = [str(x) for x in dict.fromkeys(str(e[x_axis]) for e in summary)] if x_axis else [""]
    for key, points in series.items():
        position = [levels.index(str(x)) for x, *_ in points]
        values = [v for _, v, _, _ in points]
        low = [v - lo for _, v, lo, _ in points]
        high = [hi - v for _, v, _, hi in points]
        label = ", ".join(f"{a}={k}" for a, k in zip(axes[:-1], key, strict=True)) or metric
        axis.errorbar(position, values, yerr=[low, high], marker="o", capsize=3, label=label)
    axis.set_xticks(range(len(levels)), levels, rotation=20, fontsize=8)
    axis.set_xlabel(x_axis or "")
    axis.set_ylabel(metric)
    axis.set_title(f"{metric} (median over seeds, range as bars)", fontsize=9)
    if len(series) > 1:
        axis.legend(fontsize=7)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    write_bytes(path, buffer.getvalue())


def _resolve(key: str, value: Any, here: Path, where: str) -> Any:
    """Check that `key` is a run-config key; make a relative path value absolute."""
    try:
        kind = _C.config_key_kind("run", key)
    except _C.ConfigError as error:
        raise StudyError(f"{where}: {error}") from error
    if kind == "path" and isinstance(value, str) and not Path(value).is_absolute():
        return str((here / value).resolve())
    return value


def _lookup(results: dict[str, Any], dotted: str) -> Any:
    value: Any = results
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _short(value: Any) -> str:
    if isinstance(value, list):
        return "x".join(map(str, value))
    return str(value)


def _yaml_value(value: Any) -> str:
    return json.dumps(value)  # JSON is YAML: lists, strings and numbers keep their types


def iter_cells(folder: str | os.PathLike) -> Iterator[tuple[str, Path]]:
    """(cell name, run folder) of every finished cell of a study folder."""
    folder = Path(folder)
    for cell_dir in sorted((folder / "cells").iterdir()):
        if (cell_dir / "metrics.json").exists():
            yield cell_dir.name, cell_dir
