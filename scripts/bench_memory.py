"""Memory study (issue 3): standard PatchCore against the sequential coreset.

Standard PatchCore ("greedy": every patch feature of every training image collected, then
greedy k-center) and the sequential coreset are fitted with the same backbone and the same K on
the magnetic-tile images, at the main job's 256 x 256 and upscaled to 1024 x 1024 and
2048 x 2048, for several numbers of training images. Every cell (method x images x size) runs
in a process of its own, so its peak resident memory is its own:

- fit peak: ru_maxrss of the child read right after `fit`, before anything else is computed;
- total peak: ru_maxrss at the end (scoring holds all anomaly maps of a split), read by the
  child and, independently, by this driver from the kernel's rusage of that child (wait4);
- fit, build (builder updates or the greedy selection alone), and the time of one
  nearest-neighbour pass of all training features against the final coreset, in the same
  child; the features of that pass are extracted again after the fit's peak was read;
- image AUROC, pixel AUROC and image F1 on test with the thresholds chosen on val, as in the
  main job (`seqpatchcore.runner`).

    python scripts/bench_memory.py [--results runs/memory_study] [--sizes 256 1024 2048]
    python scripts/bench_memory.py --quick --results /tmp/memory_quick   # a smoke test
    python scripts/bench_memory.py --report-only --results runs/memory_study

Writes memory_study.csv (one row per process), memory_study.md (table and target checks) and
memory_study.png (fit peak against training images) under --results; the CSV is rewritten
after each cell, and --resume skips the cells it already holds. Timings on a shared machine
are noisy: cheap cells are repeated (--repeats) and the table quotes medians.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

logger = logging.getLogger("bench_memory")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "magnetic_tile.yaml"
METHOD_NAMES = {"greedy": "standard", "sequential": "sequential"}

# Targets of issue 3.
FLAT_LIMIT = 1.1  # sequential fit peak, most images over fewest
PEAK_SHARE_LIMIT = 0.2  # sequential fit peak over standard's, at the most images
AUROC_GAP_LIMIT = 0.01  # |image AUROC sequential - standard| at the same K
BUILD_OVER_NN_LIMIT = 1.5  # sequential build time over one nearest-neighbour pass

COLUMNS = [
    "cell", "size", "method", "chunk_size", "n_images", "capacity", "batch_size", "repeat",
    "status",
    "pid", "patches_per_image", "n_patches", "dim", "feature_mb",
    "rss_before_fit_mb", "fit_peak_mb", "fit_increase_mb", "total_peak_mb", "kernel_peak_mb",
    "fit_s", "build_s", "extract_s", "nn_pass_s", "nn_pass_runs", "build_over_nn",
    "coverage_max", "coverage_mean", "replaced", "rejected",
    "eval_val_images", "eval_test_images", "image_auroc", "pixel_auroc", "image_f1",
    "image_f1_max", "pixel_f1_max", "eval_s", "load_before", "load_after", "torch_threads",
    "omp_wait_policy", "wall_s", "sampled_peak_mb", "peak_in_build_mb", "peak_outside_build_mb",
    "memory_only",
]


@dataclasses.dataclass(frozen=True)
class Cell:
    """One fit-and-measure run, executed in a child process.

    Attributes:
        method: "greedy" (standard PatchCore) or "sequential".
        n_images: training images, the first n of the train split.
        size: images are resized to size x size pixels.
        capacity: coreset size K.
        batch_size: images per backbone call (the same for both methods at a size).
        eval_limit: images of each of val and test, stratified by label; 0 all; -1 no scoring.
        repeat: 0 for the first run of a cell; repeats only time and measure memory.
        chunk_size: sequential builder's features per distance product; 0 the default (about
            4 MiB of distances: 157 features at K = 6676).
        config: the run config the cell starts from (data, backbone, features, scoring).
        phases: sample the resident memory during the fit and split its peak between the
            coreset build and the rest (--phases); such cells are not scored.
        memory_only: standard's peak where its full selection would take hours: the fit runs
            with a tiny `capacity`, neither scored nor timed against a nearest-neighbour
            pass. Standard's memory is its features, O(n * P * D), whatever K (see
            Note [Memory-only standard cells]).
    """

    method: str
    n_images: int
    size: int
    capacity: int
    batch_size: int
    eval_limit: int = 0
    repeat: int = 0
    chunk_size: int = 0
    config: str = str(DEFAULT_CONFIG)
    phases: bool = False
    memory_only: bool = False

    @property
    def name(self) -> str:
        chunk = f"-c{self.chunk_size}" if self.chunk_size else ""
        memory = "-mem" if self.memory_only else ""
        return f"{self.size}px-{self.method}{chunk}{memory}-n{self.n_images}-r{self.repeat}"

    def overrides(self) -> list[str]:
        """Config overrides (`--set` of the main job) that turn the base config into this cell."""
        values = [
            f"coreset.method={self.method}",
            f"coreset.capacity={self.capacity}",
            f"coreset.chunk_size={self.chunk_size}",
            f"features.input_size=[{self.size}, {self.size}]",
            f"features.batch_size={self.batch_size}",
            f"data.limit_train={self.n_images}",
            "output.overwrite=true",
        ]
        if self.eval_limit >= 0:
            values.append(f"data.limit_eval={self.eval_limit}")
        return values


@dataclasses.dataclass(frozen=True)
class Sweep:
    """The cells of one image size: both methods, the same K and batch size."""

    size: int
    capacity: int
    batch_size: int
    greedy_images: tuple[int, ...]
    sequential_images: tuple[int, ...]
    # eval_limit for scored cells (see Cell); which cells are scored: all, or only the largest
    # number of images that both methods reach.
    eval_limit: int = 0
    score_all: bool = True
    # Cells with at most this many training images are run `repeats` times (timing noise).
    repeat_greedy_up_to: int = 0
    repeat_sequential_up_to: int = 0
    # Sequential cells with a builder chunk other than the default (not scored): what the
    # chunk costs in peak memory and build time (Note [Chunk size] in sequential_coreset.cpp).
    other_chunk_images: tuple[int, ...] = ()
    other_chunk: int = 4096
    # Memory-only standard cells (see Cell) at these n, with this K.
    memory_only_images: tuple[int, ...] = ()
    memory_only_capacity: int = 16

    def cells(self, config: str, repeats: int) -> list[Cell]:
        common = set(self.greedy_images) & set(self.sequential_images)
        scored_n = max(common) if common else None
        cells = []
        for method, counts in (("greedy", self.greedy_images),
                               ("sequential", self.sequential_images)):
            for n in counts:
                scored = self.score_all or n == scored_n
                limit = (self.repeat_greedy_up_to if method == "greedy"
                         else self.repeat_sequential_up_to)
                runs = repeats if n <= limit else 1
                for repeat in range(runs):
                    eval_limit = self.eval_limit if scored and repeat == 0 else -1
                    cells.append(Cell(method, n, self.size, self.capacity, self.batch_size,
                                      eval_limit, repeat, config=config))
        for n in self.other_chunk_images:
            cells.append(Cell("sequential", n, self.size, self.capacity, self.batch_size, -1,
                              chunk_size=self.other_chunk, config=config))
        for n in self.memory_only_images:
            cells.append(Cell("greedy", n, self.size, self.memory_only_capacity,
                              self.batch_size, -1, config=config, memory_only=True))
        return cells


# K at 256 x 256 is the main job's: 1% of all 652 images' patches (652 * 32 * 32 / 100), for
# every n. Large images: standard's features take n * P * 72 * 4 bytes (P = 16,384 patches at
# 1024^2, 65,536 at 2048^2) and its greedy selection O(K * n * P * D) time, so its n is capped;
# the batch size keeps one backbone call at about the pixels of the main job's 16 images of
# 256^2. Cheap cells are repeated: all sequential ones (their build and nearest-neighbour
# times are the fourth target; their peaks at the large sizes scatter by up to 90 MiB from
# process to process) and standard's at the fewest images. See docs/memory_study.md for the
# budget behind these choices.
FULL_GRID = (
    Sweep(256, 6676, 16, (100, 200, 400, 652), (100, 200, 400, 652),
          repeat_greedy_up_to=100, repeat_sequential_up_to=652, other_chunk_images=(100, 652)),
    Sweep(1024, 4096, 1, (10, 25, 50), (10, 25, 50, 100, 652), eval_limit=48, score_all=False,
          repeat_sequential_up_to=50, memory_only_images=(10, 652)),
    Sweep(2048, 4096, 1, (5, 10), (5, 10, 20), eval_limit=24, score_all=False,
          repeat_sequential_up_to=20),
)
QUICK_GRID = (
    Sweep(64, 32, 4, (4,), (4, 8), eval_limit=8, score_all=False, repeat_greedy_up_to=4,
          repeat_sequential_up_to=4, other_chunk_images=(8,), other_chunk=16),
    Sweep(96, 32, 4, (), (4,), eval_limit=-1, memory_only_images=(4,)),
)


# -- the child: one cell ---------------------------------------------------------------------


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    """Resident memory of this process now, MiB (VmRSS of /proc/self/status)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("/proc/self/status has no VmRSS line; this benchmark needs Linux")


class _BuildClock:
    """Stands in for `seqpatchcore._C` inside `seqpatchcore.model` during one fit and adds up
    the time of the coreset build alone: `SequentialCoreset.update` calls, or the greedy
    selection. Everything else passes through untouched."""

    def __init__(self, core: Any):
        self._core = core
        self.seconds = 0.0
        self.building = False  # read by _RssSampler from its thread

    def __getattr__(self, name: str) -> Any:
        return getattr(self._core, name)

    def greedy_coreset(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        self.building = True
        try:
            return self._core.greedy_coreset(*args, **kwargs)
        finally:
            self.building = False
            self.seconds += time.perf_counter() - start

    def SequentialCoreset(self, *args: Any, **kwargs: Any) -> Any:  # noqa: N802 (mirrors _C)
        return _TimedBuilder(self._core.SequentialCoreset(*args, **kwargs), self)


class _TimedBuilder:
    """A SequentialCoreset whose `update` calls are timed on a _BuildClock."""

    def __init__(self, builder: Any, clock: _BuildClock):
        self._builder = builder
        self._clock = clock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._builder, name)

    def update(self, features: Any) -> None:
        start = time.perf_counter()
        self._clock.building = True
        try:
            self._builder.update(features)
        finally:
            self._clock.building = False
            self._clock.seconds += time.perf_counter() - start


class _RssSampler(threading.Thread):
    """Samples this process's resident memory every `interval` seconds and keeps the largest
    sample inside and outside the coreset build (the _BuildClock's flag). The C++ calls release
    the GIL, so the samples continue while they run; peaks shorter than the interval can be
    missed, which ru_maxrss (fit_peak_mb) does not."""

    def __init__(self, clock: _BuildClock, interval: float = 0.005):
        super().__init__(daemon=True)
        self.clock = clock
        self.interval = interval
        self.peaks = {True: 0.0, False: 0.0}
        self._stop_event = threading.Event()
        self._page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20

    def run(self) -> None:
        with open("/proc/self/statm") as statm:
            while not self._stop_event.wait(self.interval):
                statm.seek(0)
                resident = int(statm.read().split()[1]) * self._page_mb
                building = self.clock.building
                self.peaks[building] = max(self.peaks[building], resident)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


@contextmanager
def build_clock():
    """Times the coreset build inside `SequentialPatchCore.fit` (see _BuildClock)."""
    from seqpatchcore import model as model_module

    clock = _BuildClock(model_module._C)
    with mock.patch.object(model_module, "_C", clock):
        yield clock


def training_features(extractor: Any, paths: Sequence[Path], batch_size: int) -> Any:
    """All patch features of the training images, [n * P, D] float32, extracted in the fit's
    batches (so with the fit's bits) into one preallocated tensor."""
    import torch

    from seqpatchcore.data import load_image

    height, width = extractor.grid_shape()
    per_image = height * width
    features = torch.empty(len(paths) * per_image, extractor.dim)
    for start in range(0, len(paths), batch_size):
        batch = [load_image(path) for path in paths[start : start + batch_size]]
        # [b, h, w, D] -> [b * h * w, D]
        block = extractor(batch).reshape(-1, extractor.dim)
        features[start * per_image : start * per_image + len(block)] = block
    return features


def time_nearest_pass(features: Any, coreset: Any) -> tuple[float, int, Any]:
    """Seconds of one nearest-neighbour pass of `features` [N, D] against `coreset` [K, D]
    (the median of 3 when one takes under 10 s), the passes run, and the distances [N]."""
    from seqpatchcore import _C

    seconds = []
    while True:
        start = time.perf_counter()
        distances, _ = _C.nearest_neighbors(features, coreset, 1)
        seconds.append(time.perf_counter() - start)
        if len(seconds) == 3 or seconds[0] >= 10.0:
            break
    return statistics.median(seconds), len(seconds), distances[:, 0]


def run_cell(cell: Cell) -> dict[str, Any]:
    """Fit, measure and (optionally) score one cell in this process; returns one CSV row."""
    import torch

    from seqpatchcore import runner
    from seqpatchcore.model import patches_per_image

    started = time.perf_counter()
    row: dict[str, Any] = {"cell": cell.name, "size": cell.size, "method": cell.method,
                           "chunk_size": cell.chunk_size, "n_images": cell.n_images,
                           "capacity": cell.capacity, "batch_size": cell.batch_size,
                           "repeat": cell.repeat, "memory_only": cell.memory_only,
                           "pid": os.getpid(),
                           "torch_threads": torch.get_num_threads(),
                           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
                           "load_before": os.getloadavg()[0]}

    config, locations = runner.load_run_config(cell.config, cell.overrides())
    plan = runner.plan_run(config, locations, Path(cell.config))
    train = [sample.image for sample in plan.splits["train"]]
    if len(train) != cell.n_images:
        raise ValueError(f"n_images: the train split has {len(train)} images, the cell asks "
                         f"for {cell.n_images}")
    model = runner.model_from_config(config, progress=False)
    # The fit reuses this cached extractor; loading it now puts the backbone's weights into
    # the baseline rather than into the fit.
    extractor = model._extractor()
    row["dim"] = extractor.dim
    row["patches_per_image"] = patches_per_image((cell.size, cell.size), extractor.stride)
    row["n_patches"] = row["patches_per_image"] * cell.n_images
    row["feature_mb"] = row["n_patches"] * extractor.dim * 4 / 2**20
    row["rss_before_fit_mb"] = current_rss_mb()

    # The claim is about this peak: nothing but the fit has run on top of the baseline.
    with build_clock() as clock:
        sampler = _RssSampler(clock) if cell.phases else None
        if sampler is not None:
            sampler.start()
        start = time.perf_counter()
        model.fit(train)
        row["fit_s"] = time.perf_counter() - start
        if sampler is not None:
            sampler.stop()
            row["peak_in_build_mb"] = sampler.peaks[True]
            row["peak_outside_build_mb"] = sampler.peaks[False]
            row["sampled_peak_mb"] = max(sampler.peaks.values())
    row["fit_peak_mb"] = peak_rss_mb()
    row["fit_increase_mb"] = row["fit_peak_mb"] - row["rss_before_fit_mb"]
    row["build_s"] = clock.seconds
    row["extract_s"] = row["fit_s"] - clock.seconds
    if model.builder_ is not None:
        counters = dict(model.builder_.counters)
        row["replaced"], row["rejected"] = counters["replaced"], counters["rejected"]

    if cell.memory_only:
        row["total_peak_mb"] = peak_rss_mb()
        row["load_after"] = os.getloadavg()[0]
        row["wall_s"] = time.perf_counter() - started
        row["status"] = "ok"
        return row

    features = training_features(extractor, train, cell.batch_size)
    row["nn_pass_s"], row["nn_pass_runs"], distances = time_nearest_pass(features,
                                                                         model.coreset_)
    row["build_over_nn"] = row["build_s"] / row["nn_pass_s"]
    # How far the farthest and the average training patch lie from the coreset: the
    # k-center objective that greedy minimises.
    row["coverage_max"] = float(distances.max())
    row["coverage_mean"] = float(distances.double().mean())
    del features, distances

    if cell.eval_limit >= 0:
        row.update(score_cell(model, plan, config))
    row["total_peak_mb"] = peak_rss_mb()
    row["load_after"] = os.getloadavg()[0]
    row["wall_s"] = time.perf_counter() - started
    row["status"] = "ok"
    return row


def score_cell(model: Any, plan: Any, config: dict[str, Any]) -> dict[str, Any]:
    """Thresholds chosen on val, metrics of test, as the main job computes them."""
    from seqpatchcore import runner

    start = time.perf_counter()
    workers = config["data"]["workers"]
    val = runner.score_split(model, plan.splits["val"], workers, "val", progress=False)
    thresholds = runner.choose_thresholds(val, config["evaluation"]["good_quantile"])
    del val  # its maps are not needed any more; test's take their place
    test = runner.score_split(model, plan.splits["test"], workers, "test", progress=False)
    result = runner.evaluate_split(test, thresholds, config["evaluation"])
    at_threshold = result["image_at_threshold"] or {}
    return {
        "eval_val_images": len(plan.splits["val"]),
        "eval_test_images": len(plan.splits["test"]),
        "image_auroc": result["image_auroc"],
        "pixel_auroc": result["pixel_auroc"],
        "image_f1": at_threshold.get("f1"),
        "image_f1_max": result["image_f1_max"],
        "pixel_f1_max": result["pixel_f1_max"],
        "eval_s": time.perf_counter() - start,
    }


# -- the driver ------------------------------------------------------------------------------

# Note [OpenMP waiting on a shared machine]
# By default an OpenMP worker thread spins after each parallel region, waiting for the next.
# The sequential builder starts many tiny parallel regions (a [K, D] x [D] product per
# replacement, in distances_to_member); when the machine runs more threads than it has cores
# (here: 2 cores shared with other jobs), the main thread then waits at every region's barrier
# for a worker that the scheduler has parked behind the spinning threads. Measured on the first
# 30 training images at 256^2, K = 6676, load average about 6: 290 s to build with the default
# policy, 24.5 s with one thread, 14.5 s with OMP_WAIT_POLICY=passive; the nearest-neighbour
# pass took 4-6 s in all three, and greedy selection 6.4-6.7 s under both policies. The cells
# therefore run with passive waiting, which measures the algorithms rather than the
# oversubscription; --omp-wait-policy inherit measures the default instead.


def launch(cell: Cell, work_dir: Path, omp_wait_policy: str | None) -> dict[str, Any]:
    """Run one cell in a fresh Python process and return its row.

    The child's peak resident memory is also taken from the kernel (wait4 returns the rusage
    of that child alone) as kernel_peak_mb, a check on the child's own reading.
    `omp_wait_policy` sets the child's OMP_WAIT_POLICY (None: inherit), see Note [OpenMP
    waiting on a shared machine].
    """
    output = work_dir / f"{cell.name}.json"
    output.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--cell",
               json.dumps(dataclasses.asdict(cell)), "--cell-output", str(output)]
    # The child imports the seqpatchcore this driver runs, whatever the caller's PYTHONPATH.
    import seqpatchcore

    package_root = str(Path(seqpatchcore.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    if omp_wait_policy is not None:
        env["OMP_WAIT_POLICY"] = omp_wait_policy
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start

    if child.returncode != 0 or not output.is_file():
        logger.error("cell %s failed with exit status %d", cell.name, child.returncode)
        row = {"cell": cell.name, "status": f"failed (exit {child.returncode})",
               "pid": child.pid, "wall_s": wall}
        row.update({key: value for key, value in dataclasses.asdict(cell).items()
                    if key in COLUMNS})
        return row
    row = json.loads(output.read_text())
    if row["pid"] != child.pid:
        raise RuntimeError(f"cell {cell.name}: the row comes from process {row['pid']}, the "
                           f"driver started {child.pid}")
    row["kernel_peak_mb"] = usage.ru_maxrss / 1024.0
    return row


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a memory_study.csv, numbers converted back (empty cells are None)."""
    rows = []
    with open(path, newline="") as stream:
        for raw in csv.DictReader(stream):
            rows.append({key: _parse(value) for key, value in raw.items()})
    return rows


def _parse(value: str) -> Any:
    if value == "":
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    stream = io.StringIO()
    writer = csv.DictWriter(stream, fieldnames=COLUMNS, extrasaction="raise", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _format(row.get(key)) for key in COLUMNS})
    return stream.getvalue()


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def variant(row: dict[str, Any]) -> str:
    """"greedy", "sequential", "sequential-c4096" for a builder chunk of 4096 features, or
    "greedy-mem" for a memory-only standard cell."""
    if _truthy(row.get("memory_only")):
        return f"{row['method']}-mem"
    chunk = row.get("chunk_size")
    return f"{row['method']}-c{chunk}" if chunk else row["method"]


def variant_label(name: str) -> str:
    if name.endswith("-mem"):
        return f"{METHOD_NAMES.get(name[:-4], name[:-4])} (memory only)"
    method, _, chunk = name.partition("-c")
    label = METHOD_NAMES.get(method, method)
    return f"{label} (chunk {chunk})" if chunk else label


def _truthy(value: Any) -> bool:
    # Rows read back from the CSV hold strings.
    return value is True or str(value).lower() == "true"


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (size, variant, n_images): medians over repeats of memory and times, the
    metrics of the scored run."""
    groups: dict[tuple[int, str, int], list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("status") == "ok":
            groups.setdefault((row["size"], variant(row), row["n_images"]), []).append(row)
    summary = []
    for (size, name, n_images), members in sorted(groups.items()):
        entry = {"size": size, "method": name, "n_images": n_images, "runs": len(members),
                 "capacity": members[0]["capacity"], "batch_size": members[0]["batch_size"],
                 "feature_mb": members[0]["feature_mb"]}
        for key in ("rss_before_fit_mb", "fit_peak_mb", "fit_increase_mb", "total_peak_mb",
                    "kernel_peak_mb", "fit_s", "build_s", "extract_s", "nn_pass_s",
                    "build_over_nn", "coverage_max", "coverage_mean"):
            values = [member[key] for member in members if member.get(key) is not None]
            entry[key] = statistics.median(values) if values else None
        scored = [member for member in members if member.get("image_auroc") is not None]
        for key in ("image_auroc", "pixel_auroc", "image_f1", "image_f1_max",
                    "eval_val_images", "eval_test_images"):
            entry[key] = scored[0].get(key) if scored else None
        summary.append(entry)
    return summary


@dataclasses.dataclass
class Check:
    target: str
    measured: str
    passed: bool | None  # None: the grid lacks the cells to decide


def check_targets(summary: Sequence[dict[str, Any]], main_size: int) -> list[Check]:
    """The issue's four targets, at the main image size (the first of the grid)."""
    table = {(e["method"], e["n_images"]): e for e in summary if e["size"] == main_size}
    sequential = sorted(n for method, n in table if method == "sequential")
    greedy = sorted(n for method, n in table if method == "greedy")
    common = sorted(set(sequential) & set(greedy))
    checks = []

    if len(sequential) >= 2:
        checks.append(_flat_check(table, sequential, ""))
    else:
        checks.append(Check("sequential fit peak flat", "needs two sequential cells", None))

    if common:
        n = common[-1]
        seq, std = table["sequential", n], table["greedy", n]
        checks.append(_share_check(seq, std, n, "", ""))
        if seq["image_auroc"] is not None and std["image_auroc"] is not None:
            gap = seq["image_auroc"] - std["image_auroc"]
            checks.append(Check(
                f"|image AUROC sequential - standard| <= {AUROC_GAP_LIMIT} at n={n}, "
                f"K={seq['capacity']}",
                f"{seq['image_auroc']:.4f} - {std['image_auroc']:.4f} = {gap:+.4f}",
                abs(gap) <= AUROC_GAP_LIMIT))
        else:
            checks.append(Check("image AUROC gap", f"n={n} was not scored", None))
    else:
        checks.append(Check("sequential against standard", "no n run by both methods", None))

    if sequential:
        n = sequential[-1]
        seq = table["sequential", n]
        checks.append(Check(
            f"sequential build <= {BUILD_OVER_NN_LIMIT} x one nearest-neighbour pass at n={n}",
            f"{seq['build_over_nn']:.2f} (median over {seq.get('runs', 1)} processes of build / NN "
            f"pass; median build {seq['build_s']:.1f} s, NN pass {seq['nn_pass_s']:.1f} s)",
            seq["build_over_nn"] <= BUILD_OVER_NN_LIMIT))
    return checks


# Note [Memory-only standard cells]
# Standard PatchCore holds every patch feature before its greedy selection starts, so its peak
# is reached once all features are in memory and the selection's working arrays (O(n * P))
# are allocated; the selection then adds K members, K * D values. At 1024^2 a full selection
# over 652 images (10.7 million features) would take about 75 minutes here, so standard's
# peak at that n comes from a fit with K = 16: the same features, the same allocations, a
# selection that ends in seconds. A memory-only cell beside a full one at the same n (n = 10
# at 1024^2) shows how much K adds. Such cells are not scored and have no nearest-neighbour
# pass; the peak-share target at a large size compares against them where no full standard
# cell has that many images.
def large_size_checks(summary: Sequence[dict[str, Any]], main_size: int) -> list[Check]:
    """The flatness and peak-share targets at every other image size, against full standard
    cells where they reach the n, else against memory-only ones."""
    checks = []
    for size in sorted({e["size"] for e in summary} - {main_size}):
        table = {(e["method"], e["n_images"]): e for e in summary if e["size"] == size}
        sequential = sorted(n for method, n in table if method == "sequential")
        if len(sequential) >= 2:
            checks.append(_flat_check(table, sequential, f"{size}²: "))
        for n in sequential[-1:]:
            standard = table.get(("greedy", n)) or table.get(("greedy-mem", n))
            if standard is None:
                continue
            source = "memory-only cell" if ("greedy", n) not in table else "full cell"
            checks.append(_share_check(table["sequential", n], standard, n, f"{size}²: ",
                                       f"standard: {source}; "))
        for (method, n), entry in sorted(table.items()):
            full = table.get(("greedy", n))
            if method == "greedy-mem" and full is not None:
                checks.append(Check(
                    f"{size}²: memory-only standard (K={entry['capacity']}) against full "
                    f"(K={full['capacity']}) at n={n}",
                    f"{entry['fit_peak_mb']:.0f} against {full['fit_peak_mb']:.0f} MiB",
                    None))
    return checks


def _flat_check(table: dict[tuple[str, int], dict[str, Any]], sequential: list[int],
                label: str) -> Check:
    """Sequential fit peak at the most images over that at the fewest."""
    low, high = table["sequential", sequential[0]], table["sequential", sequential[-1]]
    ratio = high["fit_peak_mb"] / low["fit_peak_mb"]
    return Check(
        f"{label}sequential fit peak flat, n={sequential[-1]} over n={sequential[0]} "
        f"<= {FLAT_LIMIT}",
        f"{high['fit_peak_mb']:.0f} / {low['fit_peak_mb']:.0f} MiB = {ratio:.3f} (increase "
        f"over the pre-fit baseline: {_ratio(high['fit_increase_mb'], low['fit_increase_mb'])})",
        ratio <= FLAT_LIMIT)


def _share_check(seq: dict[str, Any], standard: dict[str, Any], n: int, label: str,
                 source: str) -> Check:
    """Sequential fit peak over standard's at n images."""
    share = seq["fit_peak_mb"] / standard["fit_peak_mb"]
    return Check(
        f"{label}sequential fit peak <= {PEAK_SHARE_LIMIT} x standard's at n={n}",
        f"{seq['fit_peak_mb']:.0f} / {standard['fit_peak_mb']:.0f} MiB = {share:.3f} ({source}"
        f"increase over the pre-fit baseline: "
        f"{_ratio(seq['fit_increase_mb'], standard['fit_increase_mb'])})",
        share <= PEAK_SHARE_LIMIT)


def other_chunk_notes(summary: Sequence[dict[str, Any]], main_size: int) -> list[str]:
    """The fit peak and build time of the other-chunk sequential cells against standard's
    and the default chunk's at the same n."""
    table = {(e["method"], e["n_images"]): e for e in summary if e["size"] == main_size}
    notes = []
    for (name, n), entry in sorted(table.items()):
        if "-c" in name and ("greedy", n) in table:
            standard = table["greedy", n]
            note = (f"{variant_label(name)} at n={n}: fit peak {entry['fit_peak_mb']:.0f} / "
                    f"{standard['fit_peak_mb']:.0f} MiB = "
                    f"{entry['fit_peak_mb'] / standard['fit_peak_mb']:.3f} of standard's; "
                    f"increase over the pre-fit baseline "
                    f"{_ratio(entry['fit_increase_mb'], standard['fit_increase_mb'])}")
            default = table.get(("sequential", n))
            if default and entry.get("build_over_nn") and default.get("build_over_nn"):
                note += (f"; build / NN pass {entry['build_over_nn']:.2f} against "
                         f"{default['build_over_nn']:.2f} with the default chunk")
            notes.append(note)
    return notes


def _ratio(numerator: float | None, denominator: float | None) -> str:
    if numerator is None or denominator is None or denominator <= 0:
        return "n/a"
    return f"{numerator:.0f} / {denominator:.0f} MiB = {numerator / denominator:.3f}"


def markdown(rows: Sequence[dict[str, Any]], environment: dict[str, Any]) -> str:
    """The results table, the target checks and the environment, as Markdown."""
    summary = summarise(rows)
    sizes = sorted({entry["size"] for entry in summary}, key=lambda s: (s != _main_size(rows), s))
    lines = ["# Memory study: standard PatchCore against the sequential coreset", ""]
    lines.append("Peaks are resident memory (MiB) of the cell's own process; `fit peak` is read "
                 "right after `fit`, `increase` is that peak minus the resident memory just "
                 "before `fit` (Python, torch, the backbone), `total` includes scoring. Times "
                 "in seconds; `build` is the coreset build alone (builder updates or greedy "
                 "selection), `NN pass` one nearest-neighbour pass of all training features "
                 "against the final coreset in the same process. Times and peaks are medians "
                 "over `runs` processes. Metrics: test split, thresholds from val.")
    lines.append("")
    header = ("| size | method | n | K | runs | features MiB | fit peak | increase | total | "
              "fit s | build s | NN pass s | build/NN | max NN dist | image AUROC | "
              "pixel AUROC | image F1 | image F1-max | val/test images |")
    lines += [header, _rule(header)]
    for size in sizes:
        for entry in (e for e in summary if e["size"] == size):
            lines.append(
                f"| {size}² | {variant_label(entry['method'])} "
                f"| {entry['n_images']} | {entry['capacity']} | {entry['runs']} "
                f"| {_cell(entry['feature_mb'], 0)} | {_cell(entry['fit_peak_mb'], 0)} "
                f"| {_cell(entry['fit_increase_mb'], 0)} | {_cell(entry['total_peak_mb'], 0)} "
                f"| {_cell(entry['fit_s'], 1)} | {_cell(entry['build_s'], 1)} "
                f"| {_cell(entry['nn_pass_s'], 1)} | {_cell(entry['build_over_nn'], 2)} "
                f"| {_cell(entry['coverage_max'], 3)} | {_cell(entry['image_auroc'], 4)} "
                f"| {_cell(entry['pixel_auroc'], 4)} | {_cell(entry['image_f1'], 4)} "
                f"| {_cell(entry['image_f1_max'], 4)} | {_eval_images(entry)} |")
    sampled = [row for row in rows if row.get("sampled_peak_mb") is not None]
    if sampled:
        lines += ["", "## Where the fit's peak is (memory sampled every 5 ms, MiB)", "",
                  "| cell | before fit | fit peak (ru_maxrss) | in build | outside build |",
                  "|---|---|---|---|---|"]
        for row in sampled:
            lines.append(f"| {row['cell']} | {row['rss_before_fit_mb']:.0f} "
                         f"| {row['fit_peak_mb']:.0f} | {row['peak_in_build_mb']:.0f} "
                         f"| {row['peak_outside_build_mb']:.0f} |")
    failed = [row for row in rows if row.get("status") != "ok"]
    if failed:
        lines += ["", "Failed cells: " + ", ".join(f"{row['cell']} ({row['status']})"
                                                    for row in failed)]

    lines += ["", f"## Targets (at {_main_size(rows)}²)", "", "| target | measured | result |",
              "|---|---|---|"]
    for check in check_targets(summary, _main_size(rows)):
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[check.passed]
        lines.append(f"| {check.target} | {check.measured} | {verdict} |")
    large = large_size_checks(summary, _main_size(rows))
    if large:
        lines += ["", "## At the large sizes", "", "| target | measured | result |",
                  "|---|---|---|"]
        for check in large:
            verdict = {True: "PASS", False: "FAIL", None: "(note)"}[check.passed]
            lines.append(f"| {check.target} | {check.measured} | {verdict} |")
    notes = other_chunk_notes(summary, _main_size(rows))
    if notes:
        lines += [""] + [f"- {note}" for note in notes]

    lines += ["", "## Environment", ""]
    lines += [f"- {key}: {value}" for key, value in environment.items()]
    return "\n".join(lines) + "\n"


def _rule(header: str) -> str:
    return "|" + "---|" * (header.count("|") - 1)


def _cell(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _eval_images(entry: dict[str, Any]) -> str:
    if entry["eval_val_images"] is None:
        return "not scored"
    return f"{entry['eval_val_images']}/{entry['eval_test_images']}"


def _main_size(rows: Sequence[dict[str, Any]]) -> int:
    return rows[0]["size"]


def plot(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Fit peak against training images, both methods, one panel per image size (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from seqpatchcore.files import write_bytes

    summary = summarise(rows)
    sizes = sorted({entry["size"] for entry in summary})
    figure, axes = plt.subplots(1, len(sizes), figsize=(4.8 * len(sizes), 4.0), squeeze=False)
    for axis, size in zip(axes[0], sizes, strict=True):
        names = sorted({e["method"] for e in summary if e["size"] == size})
        for name in names:
            entries = [e for e in summary if e["size"] == size and e["method"] == name]
            # One colour per method in every panel; memory-only standard hollow and dotted.
            styles = {"greedy": ("o-", "C0"), "greedy-mem": ("o:", "C0"),
                      "sequential": ("s-", "C1")}
            style, colour = styles.get(name, ("^--", "C2"))
            axis.plot([e["n_images"] for e in entries], [e["fit_peak_mb"] for e in entries],
                      style, color=colour, label=f"{variant_label(name)}: fit peak",
                      fillstyle="none" if name == "greedy-mem" else "full")
        baseline = [e["rss_before_fit_mb"] for e in summary if e["size"] == size]
        axis.axhline(statistics.median(baseline), color="grey", linestyle=":",
                     label="resident before fit")
        capacity = next(e["capacity"] for e in summary
                        if e["size"] == size and e["method"] != "greedy-mem")
        axis.set_title(f"{size} x {size} px, K = {capacity}")
        counts = [e["n_images"] for e in summary if e["size"] == size]
        if max(counts) > 20 * min(counts):
            axis.set_xscale("log")
        axis.set_xlabel("training images")
        axis.set_ylabel("peak resident memory (MiB)")
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return write_bytes(path, buffer.getvalue())


def environment(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Versions and machine, and the commit of the seqpatchcore that was measured."""
    import torch

    import seqpatchcore

    package = Path(seqpatchcore.__file__).resolve().parent
    commit = subprocess.run(["git", "-C", str(package), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    policies = sorted({str(row.get("omp_wait_policy")) for row in rows})
    seconds = sum(row.get("wall_s") or 0.0 for row in rows)
    return {"seqpatchcore": f"{package} at commit {commit or 'unknown'}",
            "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "OMP_WAIT_POLICY of the cells": ", ".join(policies),
            "platform": platform.platform(),
            "processes": f"{len(rows)}, {seconds / 60:.1f} minutes in all",
            "load average at the end (other jobs share the CPUs)":
                f"{os.getloadavg()[0]:.2f}"}


def write_reports(rows: Sequence[dict[str, Any]], results: Path) -> None:
    from seqpatchcore.files import write_text

    write_text(results / "memory_study.csv", csv_text(rows))
    if any(row.get("status") == "ok" for row in rows):
        write_text(results / "memory_study.md", markdown(rows, environment(rows)))
        plot(rows, results / "memory_study.png")


def grid(args: argparse.Namespace) -> list[Cell]:
    """The cells to run: the full or quick grid, narrowed by --sizes and --only, and with
    --phases turned into unscored phase-sampling cells."""
    sweeps = QUICK_GRID if args.quick else FULL_GRID
    if args.sizes:
        unknown = sorted(set(args.sizes) - {sweep.size for sweep in sweeps})
        if unknown:
            raise SystemExit(f"--sizes: no sweep for {unknown}; this grid has "
                             f"{[sweep.size for sweep in sweeps]}")
        sweeps = tuple(sweep for sweep in sweeps if sweep.size in args.sizes)
    cells = [cell for sweep in sweeps for cell in sweep.cells(str(args.config), args.repeats)]
    if args.only:
        names = {cell.name for cell in cells}
        unknown = sorted(set(args.only) - names)
        if unknown:
            raise SystemExit(f"--only: no cell named {unknown} in this grid; it has "
                             f"{sorted(names)}")
        cells = [cell for cell in cells if cell.name in args.only]
    if args.phases:
        cells = [dataclasses.replace(cell, phases=True, eval_limit=-1) for cell in cells]
    return cells


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("runs/memory_study"),
                        help="folder of memory_study.csv/.md/.png (default runs/memory_study)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="the run config every cell starts from")
    parser.add_argument("--quick", action="store_true", help="a tiny grid (smoke test)")
    parser.add_argument("--sizes", type=int, nargs="+", help="run only these image sizes")
    parser.add_argument("--only", nargs="+", metavar="CELL",
                        help="run only these cells, e.g. 256px-greedy-n652-r0")
    parser.add_argument("--phases", action="store_true",
                        help="sample memory during the fit to split its peak between the "
                             "coreset build and the rest (feature extraction; for standard "
                             "also the concatenation of all features); no scoring")
    parser.add_argument("--repeats", type=int, default=3,
                        help="processes per cheap cell (timing noise); default 3")
    parser.add_argument("--omp-wait-policy", default="passive",
                        help="OMP_WAIT_POLICY of the cells: passive (default), active, or "
                             "inherit (this shell's); see Note [OpenMP waiting on a shared "
                             "machine] in this file")
    parser.add_argument("--resume", action="store_true",
                        help="keep the rows of an existing CSV and skip their cells")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the table and plot from the CSV; run nothing")
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    parser.add_argument("--cell-output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    if args.cell:
        from seqpatchcore.files import write_json

        row = run_cell(Cell(**json.loads(args.cell)))
        write_json(args.cell_output, row)
        return 0

    if args.repeats < 1:
        parser.error(f"--repeats: expected an integer >= 1, got {args.repeats}")
    csv_path = args.results / "memory_study.csv"
    if args.report_only:
        if not csv_path.is_file():
            parser.error(f"--report-only: no {csv_path} to report")
        write_reports(read_rows(csv_path), args.results)
        return 0

    rows = read_rows(csv_path) if args.resume and csv_path.is_file() else []
    done = {row["cell"] for row in rows if row.get("status") == "ok"}
    rows = [row for row in rows if row["cell"] in done]
    cells = [cell for cell in grid(args) if cell.name not in done]
    work_dir = args.results / "cells"
    work_dir.mkdir(parents=True, exist_ok=True)
    logger.info("%d cells to run (%d kept from %s)", len(cells), len(done), csv_path)
    policy = None if args.omp_wait_policy == "inherit" else args.omp_wait_policy
    for index, cell in enumerate(cells, 1):
        logger.info("cell %d/%d: %s", index, len(cells), cell.name)
        row = launch(cell, work_dir, policy)
        rows.append(row)
        logger.info("cell %s: fit peak %s MiB, fit %s s, build %s s, NN pass %s s",
                    cell.name, _cell(row.get("fit_peak_mb"), 0), _cell(row.get("fit_s"), 1),
                    _cell(row.get("build_s"), 1), _cell(row.get("nn_pass_s"), 1))
        write_reports(rows, args.results)
    failed = [row["cell"] for row in rows if row.get("status") != "ok"]
    if failed:
        logger.error("failed cells: %s", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
