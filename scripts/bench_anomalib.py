"""Full fit on the magnetic-tile training set: anomalib's PatchCore against ours, same features.

anomalib cannot load our backbone (an 8-bit TFLite MobileNetV3 rebuilt in PyTorch), so the
training features are extracted once with our pipeline (652 images x 1024 patches x D = 72 at
256 x 256, the main job's setting) into a .npy file, and every coreset is built from that file,
each in its own process so that its peak resident memory is its own:

- anomalib: what `PatchcoreModel.subsample_embedding` does at the end of anomalib's fit: the
  per-batch embeddings are collected in a list (its `embedding_store`), stacked into the
  memory bank, and `KCenterGreedy(memory_bank, coreset_sampling_ratio).sample_coreset()`
  picks the coreset (sparse random projection with eps = 0.9, then farthest point first).
  It holds every feature by design, and the projection besides.
- greedy: our standard PatchCore (`method="greedy"`): all features concatenated, then
  `_C.greedy_coreset` with our projection setting (128 dimensions, so none at D = 72).
- sequential: our sequential coreset, `_C.SequentialCoreset(72, K)` fed the file image by
  image in stream order; the process never holds more than one image's features.
- fit: our whole `SequentialPatchCore.fit` on the image files, feature extraction included.

Then every coreset scores the same test images with the same nearest-neighbour scoring (ours:
`_C.nearest_neighbors`, anomaly map bilinear to the image size, Gaussian sigma = 4, image score
= max), so that the times are compared at a known image AUROC.

anomalib lives in its own virtual environment; the system python's torch stays untouched.
PyPI's torchvision does not import beside the torch 2.13.0 CPU wheel of this machine
("operator torchvision::nms does not exist"), so that environment has torch 2.14.1 and
torchvision 0.29.1 (a CUDA build, run on the CPU):

    python3 -m venv /tmp/anomalib-venv
    /tmp/anomalib-venv/bin/pip install --upgrade pip
    printf 'torch==2.14.1\\ntorchvision==0.29.1\\n' > /tmp/anomalib-constraints.txt
    /tmp/anomalib-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 \\
        -c /tmp/anomalib-constraints.txt
    /tmp/anomalib-venv/bin/pip install anomalib==2.7.0 -c /tmp/anomalib-constraints.txt

Run with the system python and the project's extension on PYTHONPATH:

    python3 scripts/bench_anomalib.py --results results/anomalib --venv /tmp/anomalib-venv
    python3 scripts/bench_anomalib.py --results results/anomalib --venv /tmp/anomalib-venv \\
        --anomalib-steps 400      # anomalib's selection cut short and extrapolated (see below)

anomalib's k-center greedy step costs the same at every step (a pass over the whole projected
memory bank), so `--anomalib-steps N` runs its fit with a coreset of N members and extrapolates
the selection time to K: setup (projection) + (K - 1) x step, with the setup timed by a
separate one-member run in the same process. Its peak memory is reached at the first step, so
it is the full fit's. A coreset of the first N farthest points is also the start of the full
selection, so the quality table then compares anomalib's N members with our first N greedy
members and a sequential coreset of capacity N.

Writes anomalib_fit.md and anomalib_fit.csv (atomically) into --results; the features, the
coresets and each process's log go into --work (default: <results>/work).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("bench_anomalib")

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "magnetic-tile"
ROLES = ("anomalib", "greedy", "sequential", "fit")
# Rows of the tables, in order: the role that built the coreset, and what the row is called.
LABELS = {
    "anomalib": "anomalib 2.7 PatchCore (memory bank + KCenterGreedy)",
    "greedy": "ours, standard fit (_C.greedy_coreset)",
    "sequential": "ours, sequential coreset (_C.SequentialCoreset, streamed)",
    "fit": "ours, SequentialPatchCore.fit on the images (extraction included)",
}
# Whether the process holds every training feature at once (by design of the method).
HOLDS_ALL_FEATURES = {"anomalib": True, "greedy": True, "sequential": False, "fit": False}
MB = 1 << 20


# -- measuring one process ---------------------------------------------------------------------


def _status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB, or None off Linux."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def current_rss_mb() -> float:
    """This process's resident memory now, MiB."""
    value = _status_mb("VmRSS")
    return value if value is not None else peak_rss_mb()


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, MiB.

    VmHWM belongs to the process's own address space. ru_maxrss, the fallback off Linux, also
    counts the address space the process had before exec (the parent's, after fork or vfork),
    so a large parent would inflate it.
    """
    value = _status_mb("VmHWM")
    if value is not None:
        return value
    import resource

    scale = 1.0 / MB if sys.platform == "darwin" else 1.0 / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def write_atomically(path: Path, text: str) -> None:
    """Write text to path through a temporary file beside it and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_child_result(path: Path, payload: dict[str, Any]) -> None:
    """End of a measured process: its results plus its peak resident memory, as JSON."""
    write_atomically(Path(path), json.dumps({**payload, "peak_rss_mb": peak_rss_mb()},
                                            indent=2) + "\n")


@dataclasses.dataclass
class Measurement:
    """One measured process.

    Attributes:
        wall_s: wall time of the whole process (start, imports, work, exit), seconds.
        peak_rss_mb: the process's peak resident memory, MiB (from its own VmHWM).
        result: what the process wrote with `write_child_result`.
        load_before, load_after: the machine's 1-minute load average around the run.
    """

    wall_s: float
    peak_rss_mb: float
    result: dict[str, Any]
    load_before: float
    load_after: float


def run_measured(command: Sequence[str], result_path: Path, log_path: Path | None = None,
                 env: dict[str, str] | None = None) -> Measurement:
    """Run a command that ends with `write_child_result(result_path, ...)` and measure it.

    Args:
        command: the program and its arguments.
        result_path: where the process writes its JSON result; removed first.
        log_path: file for the process's stdout and stderr; None: discarded.
        env: the process's environment; None: this process's.

    Returns:
        The Measurement.

    Raises:
        RuntimeError: the process failed or wrote no result; the message has its exit status
            and the end of its log.
    """
    result_path = Path(result_path)
    result_path.unlink(missing_ok=True)
    log = open(log_path, "w") if log_path is not None else subprocess.DEVNULL
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    try:
        process = subprocess.run(list(command), stdout=log, stderr=subprocess.STDOUT, env=env,
                                 check=False)
    finally:
        if log_path is not None:
            log.close()
    wall = time.perf_counter() - start
    if process.returncode != 0 or not result_path.is_file():
        tail = ""
        if log_path is not None:
            tail = "\n".join(Path(log_path).read_text(errors="replace").splitlines()[-20:])
        state = "written" if result_path.is_file() else "missing"
        raise RuntimeError(f"{' '.join(map(str, command))}: exit status {process.returncode}, "
                           f"result {result_path} {state}\n{tail}")
    result = json.loads(result_path.read_text())
    return Measurement(wall_s=wall, peak_rss_mb=float(result["peak_rss_mb"]), result=result,
                       load_before=load_before, load_after=os.getloadavg()[0])


# -- the features file -------------------------------------------------------------------------


def feature_file_layout(path: Path) -> tuple[int, int, int]:
    """(rows, D, byte offset of the data) of a float32 .npy feature file; raises ValueError
    for anything else."""
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable .npy file: {error}") from error
    if array.ndim != 2 or array.dtype != np.float32 or not array.flags.c_contiguous:
        raise ValueError(f"{path}: expected a C-ordered float32 [rows, D] array, got "
                         f"{array.dtype} {array.shape}")
    layout = (int(array.shape[0]), int(array.shape[1]), int(array.offset))
    del array
    return layout


def read_row_chunks(path: Path, rows_per_chunk: int) -> Iterator[np.ndarray]:
    """The rows of a float32 [rows, D] .npy file in order, rows_per_chunk at a time.

    Plain reads into a fresh array per chunk: the pages of a memory mapping that were touched
    count in the process's resident memory until unmapped, so reading a whole file through
    np.load(mmap_mode="r") would show all of it in RSS.

    Yields:
        float32 [<= rows_per_chunk, D] arrays, owned by the caller.
    """
    if rows_per_chunk < 1:
        raise ValueError(f"rows_per_chunk: expected >= 1, got {rows_per_chunk}")
    rows, dim, offset = feature_file_layout(path)
    with open(path, "rb") as stream:
        stream.seek(offset)
        for start in range(0, rows, rows_per_chunk):
            count = min(rows_per_chunk, rows - start)
            chunk = np.empty((count, dim), dtype=np.float32)
            if stream.readinto(memoryview(chunk).cast("B")) != chunk.nbytes:
                raise ValueError(f"{path}: file ends before row {start + count} of {rows}")
            yield chunk


# -- the measured processes --------------------------------------------------------------------


def _child_anomalib(args: argparse.Namespace) -> None:
    import anomalib
    import torch
    from anomalib.models.components.sampling import KCenterGreedy

    baseline = current_rss_mb()
    start = time.perf_counter()
    rows, _, _ = feature_file_layout(args.features)
    # anomalib's training_step appends each batch's embedding to embedding_store; its fit
    # stacks them into the memory bank and subsamples (PatchcoreModel.subsample_embedding).
    embedding_store = [torch.from_numpy(chunk)
                       for chunk in read_row_chunks(args.features, args.chunk_rows)]
    memory_bank = torch.vstack(embedding_store)
    embedding_store.clear()
    load_s = time.perf_counter() - start

    # coreset_size = int(n * ratio): a ratio half a member above size/n gives exactly size.
    def select(size: int) -> tuple[list[int], float, int]:
        # anomalib's sampler draws from the global generators (its projection from numpy's
        # and torch's, its first member from torch's) and takes no seed: seed them here.
        torch.manual_seed(args.seed)
        np.random.seed(args.seed)
        sampler = KCenterGreedy(embedding=memory_bank, sampling_ratio=(size + 0.5) / rows)
        assert sampler.coreset_size == size
        begin = time.perf_counter()
        indices = sampler.select_coreset_idxs()
        seconds = time.perf_counter() - begin
        components = int(sampler.model.n_components)
        del sampler
        return indices, seconds, components

    steps = args.size
    if steps < args.capacity:
        _, setup_s, _ = select(1)
        indices, measured_s, components = select(steps)
        step_s = (measured_s - setup_s) / max(1, steps - 1)
        coreset_s = setup_s + (args.capacity - 1) * step_s
        spent_s = setup_s + measured_s
    else:
        indices, coreset_s, components = select(args.capacity)
        setup_s, step_s, spent_s = None, None, coreset_s
    coreset = memory_bank[indices]
    np.save(args.coreset, coreset.numpy())
    write_child_result(args.result, {
        "role": "anomalib", "baseline_rss_mb": baseline, "load_s": load_s,
        "coreset_s": coreset_s, "coreset_spent_s": spent_s, "setup_s": setup_s,
        "step_s": step_s, "size": len(indices), "capacity": args.capacity,
        "extrapolated": steps < args.capacity, "projection_components": components,
        "rows": rows,
        "torch": torch.__version__, "anomalib": anomalib.__version__,
        "threads": torch.get_num_threads(),
    })


def _child_greedy(args: argparse.Namespace) -> None:
    import torch

    from seqpatchcore import _C

    baseline = current_rss_mb()
    start = time.perf_counter()
    # As SequentialPatchCore._fit_collected: one tensor per image, concatenated.
    collected = [torch.from_numpy(chunk)
                 for chunk in read_row_chunks(args.features, args.chunk_rows)]
    features = torch.cat(collected)
    del collected
    load_s = time.perf_counter() - start

    begin = time.perf_counter()
    indices = _C.greedy_coreset(features, args.capacity, projection_dim=args.projection_dim,
                                seed=args.seed)
    coreset_s = time.perf_counter() - begin
    np.save(args.coreset, features[indices].numpy())
    np.save(args.coreset.with_name(args.coreset.stem + "_order.npy"), indices.numpy())
    write_child_result(args.result, {
        "role": "greedy", "baseline_rss_mb": baseline, "load_s": load_s,
        "coreset_s": coreset_s, "size": len(indices), "capacity": args.capacity,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    })


def _child_sequential(args: argparse.Namespace) -> None:
    import torch

    from seqpatchcore import _C

    baseline = current_rss_mb()
    _, dim, _ = feature_file_layout(args.features)
    # The settings of SequentialPatchCore's default sequential builder.
    builder = _C.SequentialCoreset(dim, args.capacity, distance="matmul", projection_dim=0,
                                   seed=args.seed)
    begin = time.perf_counter()
    for chunk in read_row_chunks(args.features, args.chunk_rows):
        builder.update(torch.from_numpy(chunk))
    coreset_s = time.perf_counter() - begin
    coreset = builder.coreset()
    np.save(args.coreset, coreset.numpy())
    write_child_result(args.result, {
        "role": "sequential", "baseline_rss_mb": baseline, "coreset_s": coreset_s,
        "size": len(coreset), "capacity": args.capacity, "counters": str(builder.counters),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    })


def _child_fit(args: argparse.Namespace) -> None:
    import torch

    from seqpatchcore.data import read_split_csv
    from seqpatchcore.model import SequentialPatchCore

    baseline = current_rss_mb()
    paths = [sample.image for sample in read_split_csv(args.data, "train")]
    begin = time.perf_counter()
    model = SequentialPatchCore(capacity=args.capacity, random_state=args.seed).fit(paths)
    fit_s = time.perf_counter() - begin
    np.save(args.coreset, model.coreset_.numpy())
    write_child_result(args.result, {
        "role": "fit", "baseline_rss_mb": baseline, "fit_s": fit_s, "coreset_s": None,
        "size": len(model.coreset_), "capacity": args.capacity, "images": len(paths),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    })


CHILDREN = {"anomalib": _child_anomalib, "greedy": _child_greedy,
            "sequential": _child_sequential, "fit": _child_fit}


def child_main(argv: Sequence[str]) -> None:
    """Entry point of a measured process: `bench_anomalib.py child ROLE ...`."""
    parser = argparse.ArgumentParser(prog="bench_anomalib.py child")
    parser.add_argument("role", choices=ROLES)
    parser.add_argument("--features", type=Path, help="float32 [rows, D] .npy of the training "
                        "features, in stream order")
    parser.add_argument("--data", type=Path, help="dataset root with split.csv (role fit)")
    parser.add_argument("--capacity", type=int, required=True, help="coreset size K")
    parser.add_argument("--size", type=int, default=0,
                        help="anomalib: members actually selected (< K: extrapolate)")
    parser.add_argument("--chunk-rows", type=int, default=1024, help="rows per read")
    parser.add_argument("--projection-dim", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--coreset", type=Path, required=True, help=".npy for the coreset")
    parser.add_argument("--result", type=Path, required=True, help="JSON result file")
    args = parser.parse_args(argv)
    if args.capacity < 1:
        parser.error(f"--capacity: expected >= 1, got {args.capacity}")
    if args.role == "fit" and args.data is None:
        parser.error("--data: the role fit reads the training images")
    if args.role != "fit" and args.features is None:
        parser.error(f"--features: the role {args.role} reads the feature file")
    args.size = args.size if args.size > 0 else args.capacity
    CHILDREN[args.role](args)


# -- summary tables ----------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    """One method's medians over its repeats (seconds, MiB); None where not measured."""

    role: str
    repeats: int
    peak_rss_mb: float
    baseline_rss_mb: float
    wall_s: float
    coreset_s: float | None
    image_auroc: float | None
    extrapolated: bool = False

    @property
    def working_mb(self) -> float:
        """Peak minus the resident memory after the imports: what the fit itself added."""
        return self.peak_rss_mb - self.baseline_rss_mb


def summarize(role: str, measurements: Sequence[Measurement],
              image_auroc: float | None) -> Row:
    """Medians over the repeats of one role. A cut-short anomalib run counts the time its full
    selection would have taken (`coreset_s`) instead of the time it spent selecting."""
    if not measurements:
        raise ValueError(f"measurements: expected at least one for {role}, got none")
    walls, cores = [], []
    for measured in measurements:
        result = measured.result
        spent = result.get("coreset_spent_s", result.get("coreset_s"))
        full = result.get("coreset_s")
        walls.append(measured.wall_s - (spent or 0.0) + (full or 0.0))
        cores.append(full)
    return Row(
        role=role,
        repeats=len(measurements),
        peak_rss_mb=statistics.median(m.peak_rss_mb for m in measurements),
        baseline_rss_mb=statistics.median(m.result["baseline_rss_mb"] for m in measurements),
        wall_s=statistics.median(walls),
        coreset_s=None if any(c is None for c in cores) else statistics.median(cores),
        image_auroc=image_auroc,
        extrapolated=any(m.result.get("extrapolated", False) for m in measurements),
    )


def ratio(reference: float | None, value: float | None) -> float | None:
    """reference / value, None when either is missing or value is 0."""
    if reference is None or value is None or value == 0:
        return None
    return reference / value


def _cell(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


TABLE_HEADER = ["method", "holds all features", "peak RSS MB", "after imports MB",
                "fit's own MB", "wall s", "coreset s", "image AUROC", "RSS ratio",
                "own MB ratio", "wall ratio", "coreset ratio"]


def markdown_table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table; ratios against the anomalib row (> 1: anomalib needs
    more), none when there is no anomalib row."""
    reference = next((row for row in rows if row.role == "anomalib"), None)
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    for row in rows:
        mark = " (extrapolated)" if row.extrapolated else ""
        cells = [LABELS.get(row.role, row.role), "yes" if HOLDS_ALL_FEATURES.get(row.role)
                 else "no", _cell(row.peak_rss_mb, 0), _cell(row.baseline_rss_mb, 0),
                 _cell(row.working_mb, 0), _cell(row.wall_s, 1) + mark,
                 _cell(row.coreset_s, 1) + mark, _cell(row.image_auroc, 3)]
        if reference is None:
            cells += ["n/a"] * 4
        else:
            cells += [_cell(ratio(reference.peak_rss_mb, row.peak_rss_mb), 2),
                      _cell(ratio(reference.working_mb, row.working_mb), 2),
                      _cell(ratio(reference.wall_s, row.wall_s), 2),
                      _cell(ratio(reference.coreset_s, row.coreset_s), 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


CSV_FIELDS = ["role", "method", "repeats", "holds_all_features", "peak_rss_mb",
              "baseline_rss_mb", "working_mb", "wall_s", "coreset_s", "image_auroc",
              "extrapolated", "rss_ratio", "working_ratio", "wall_ratio", "coreset_ratio"]


def csv_text(rows: Sequence[Row]) -> str:
    """The rows as CSV; *_ratio columns are anomalib's value over the row's (empty: none)."""
    reference = next((row for row in rows if row.role == "anomalib"), None)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        ratios = {"rss_ratio": None, "working_ratio": None, "wall_ratio": None,
                  "coreset_ratio": None}
        if reference is not None:
            ratios = {"rss_ratio": ratio(reference.peak_rss_mb, row.peak_rss_mb),
                      "working_ratio": ratio(reference.working_mb, row.working_mb),
                      "wall_ratio": ratio(reference.wall_s, row.wall_s),
                      "coreset_ratio": ratio(reference.coreset_s, row.coreset_s)}
        writer.writerow({
            "role": row.role, "method": LABELS.get(row.role, row.role), "repeats": row.repeats,
            "holds_all_features": HOLDS_ALL_FEATURES.get(row.role), "peak_rss_mb":
            row.peak_rss_mb, "baseline_rss_mb": row.baseline_rss_mb, "working_mb":
            row.working_mb, "wall_s": row.wall_s, "coreset_s": row.coreset_s, "image_auroc":
            row.image_auroc, "extrapolated": row.extrapolated,
            **{name: ("" if value is None else value) for name, value in ratios.items()},
        })
    return buffer.getvalue()


# -- features and scoring (the parent process, system python) ----------------------------------


def extract_features(paths: Sequence[Path], out: Path, batch_size: int = 16) -> tuple[int, int]:
    """Patch features of the images, in order, into a float32 [images * P, D] .npy file.

    The images are batched as SequentialPatchCore.fit batches them (batch_size 16), so the
    features are bit for bit those that its fit streams. Written to a temporary file and
    renamed; returns (P, D).
    """
    from seqpatchcore.backbones import load_backbone
    from seqpatchcore.data import load_image
    from seqpatchcore.features import PatchFeatureExtractor

    extractor = PatchFeatureExtractor(load_backbone("mobilenet_v3_small_tflite"),
                                      batch_size=batch_size)
    grid = extractor.grid_shape()
    patches = grid[0] * grid[1]
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".npy", dir=out.parent)
    os.close(handle)
    try:
        array = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.float32,
                                          shape=(len(paths) * patches, extractor.dim))
        for start in range(0, len(paths), batch_size):
            images = [load_image(path) for path in paths[start : start + batch_size]]
            for offset, features in enumerate(extractor.extract_each(images)):
                row = (start + offset) * patches
                array[row : row + patches] = features.reshape(patches, -1).numpy()
        array.flush()
        del array
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return patches, extractor.dim


def test_features(paths: Sequence[Path]) -> tuple[np.ndarray, list[tuple[int, int]],
                                                   tuple[int, int]]:
    """Features [images, P, D] of the scored images, their (height, width), and the grid."""
    from seqpatchcore.backbones import load_backbone
    from seqpatchcore.data import load_image
    from seqpatchcore.features import PatchFeatureExtractor

    extractor = PatchFeatureExtractor(load_backbone("mobilenet_v3_small_tflite"))
    grid = extractor.grid_shape()
    features = np.empty((len(paths), grid[0] * grid[1], extractor.dim), dtype=np.float32)
    sizes = []
    for start in range(0, len(paths), extractor.batch_size):
        images = [load_image(path) for path in paths[start : start + extractor.batch_size]]
        sizes += [image.shape[:2] for image in images]
        for offset, item in enumerate(extractor.extract_each(images)):
            features[start + offset] = item.reshape(grid[0] * grid[1], -1).numpy()
    return features, sizes, grid


def image_scores(features: np.ndarray, sizes: Sequence[tuple[int, int]],
                 grid: tuple[int, int], coreset: np.ndarray, sigma: float = 4.0) -> np.ndarray:
    """Image scores against a coreset, as SequentialPatchCore scores them (k = 1).

    Args:
        features: [images, h * w, D] float32 patch features.
        sizes: (height, width) of each image; its anomaly map is upsampled to that size.
        grid: (h, w) of the patch grid.
        coreset: [K, D] float32 memory bank.
        sigma: Gaussian blur of the anomaly maps, pixels.

    Returns:
        [images] float64: the maximum of each anomaly map.
    """
    import torch

    from seqpatchcore import _C

    if features.ndim != 3 or features.shape[1] != grid[0] * grid[1]:
        raise ValueError(f"features: expected [images, {grid[0] * grid[1]}, D], got "
                         f"{features.shape}")
    if len(sizes) != len(features):
        raise ValueError(f"sizes: expected {len(features)} (height, width) pairs, got "
                         f"{len(sizes)}")
    queries = torch.from_numpy(np.ascontiguousarray(features.reshape(-1, features.shape[2])))
    distances, _ = _C.nearest_neighbors(queries, torch.from_numpy(coreset), 1)
    # patch_scores: [images, 1, h, w]
    patch_scores = distances[:, 0].reshape(len(features), 1, grid[0], grid[1])
    scores = np.empty(len(features), dtype=np.float64)
    for index, (height, width) in enumerate(sizes):
        maps, _ = _C.score_images(patch_scores[index], int(height), int(width), float(sigma))
        scores[index] = float(maps[0].max())
    return scores


# -- the benchmark -----------------------------------------------------------------------------


def _machine() -> str:
    import platform

    import torch

    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, system torch {torch.__version__}"


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True,
                              check=False).stdout.strip()
    except OSError:
        return "load average " + ", ".join(f"{value:.2f}" for value in os.getloadavg())


class Benchmark:
    """The parent process: extracts features, runs the measured processes, scores, reports."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work = args.work or args.results / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.features = self.work / "train_features.npy"
        self.uptimes: list[str] = []

    def prepare_features(self) -> tuple[int, int, int]:
        """The training feature file (reused when it matches); returns (images, P, D)."""
        from seqpatchcore.data import read_split_csv

        paths = [sample.image for sample in read_split_csv(self.args.data, "train")]
        meta_path = self.work / "train_features.json"
        meta = {"images": [str(path) for path in paths], "format": "float32 [images * P, D]"}
        if self.features.is_file() and meta_path.is_file():
            stored = json.loads(meta_path.read_text())
            if stored.get("images") == meta["images"]:
                logger.info("reusing %s", self.features)
                return len(paths), stored["patches"], stored["dim"]
        logger.info("extracting the features of %d training images into %s", len(paths),
                    self.features)
        begin = time.perf_counter()
        patches, dim = extract_features(paths, self.features)
        logger.info("extracted in %.1f s", time.perf_counter() - begin)
        write_atomically(meta_path, json.dumps({**meta, "patches": patches, "dim": dim}) + "\n")
        return len(paths), patches, dim

    def command(self, role: str, capacity: int, size: int, tag: str) -> list[str]:
        python = str(self.args.venv / "bin" / "python") if role == "anomalib" else sys.executable
        command = [python, str(SCRIPT), "child", role, "--capacity", str(capacity),
                   "--seed", str(self.args.seed), "--coreset", str(self.work / f"{tag}.npy"),
                   "--result", str(self.work / f"{tag}.json")]
        if role == "fit":
            command += ["--data", str(self.args.data)]
        else:
            command += ["--features", str(self.features), "--chunk-rows",
                        str(self.args.chunk_rows)]
        if role == "anomalib":
            command += ["--size", str(size)]
        return command

    def measure(self, role: str, capacity: int, size: int, tag: str) -> Measurement:
        env = dict(os.environ, TQDM_DISABLE="1")
        if role == "anomalib":
            # The venv's torch is not the one _C was built against: keep our package out.
            env.pop("PYTHONPATH", None)
        self.uptimes.append(f"before {tag}: {_uptime()}")
        measured = run_measured(self.command(role, capacity, size, tag),
                                self.work / f"{tag}.json", self.work / f"{tag}.log", env)
        logger.info("%s: wall %.1f s, peak RSS %.0f MB, coreset %s s (load %.1f -> %.1f)", tag,
                    measured.wall_s, measured.peak_rss_mb,
                    _cell(measured.result.get("coreset_s"), 1), measured.load_before,
                    measured.load_after)
        return measured

    def run(self) -> None:
        args = self.args
        from seqpatchcore.data import read_split_csv
        from seqpatchcore.metrics import auroc

        images, patches, _ = self.prepare_features()
        capacity = args.capacity or max(1, int(args.fraction * images * patches))
        steps = min(args.anomalib_steps or capacity, capacity)
        roles = [role for role in ROLES if role in args.methods]
        logger.info("K = %d; anomalib selects %d of them%s", capacity, steps,
                    " (extrapolated)" if steps < capacity else "")

        measured: dict[str, list[Measurement]] = {role: [] for role in roles}
        for round_index in range(args.repeats):
            for role in roles:
                if round_index > 0 and role in ("anomalib", "greedy") and not args.repeat_all:
                    continue
                tag = f"{role}_{round_index}"
                measured[role].append(self.measure(role, capacity, steps, tag))
        truncated = steps < capacity and "anomalib" in roles
        if truncated:
            # The sequential coreset at anomalib's size, for the quality table at N.
            self.measure("sequential", steps, steps, "sequential_at_n")

        samples = read_split_csv(args.data, args.split)
        labels = np.array([sample.is_anomalous for sample in samples])
        logger.info("scoring %d %s images", len(samples), args.split)
        features, sizes, grid = test_features([sample.image for sample in samples])
        quality = {}
        for role in roles:
            if role == "anomalib" and truncated:
                continue
            coreset = np.load(self.work / f"{role}_0.npy")
            quality[role] = auroc(labels, image_scores(features, sizes, grid, coreset,
                                                       args.sigma))
        rows = [summarize(role, measured[role], quality.get(role)) for role in roles]

        at_n = []
        if truncated:
            candidates = {"anomalib": np.load(self.work / "anomalib_0.npy"),
                          "sequential": np.load(self.work / "sequential_at_n.npy")}
            if "greedy" in roles:
                order = np.load(self.work / "greedy_0_order.npy")[:steps]
                everything = np.load(self.features, mmap_mode="r")
                candidates["greedy"] = np.ascontiguousarray(everything[np.sort(order)])
                del everything
            for role in ("anomalib", "greedy", "sequential"):
                if role in candidates:
                    at_n.append((role, len(candidates[role]), auroc(
                        labels, image_scores(features, sizes, grid, candidates[role],
                                             args.sigma))))
        self.uptimes.append(f"end: {_uptime()}")
        self.write(rows, measured, capacity, steps, at_n)

    def same_coresets(self) -> bool | None:
        """Whether the fit's coreset is the streamed sequential one (the same features, in
        the same order, batched alike), or None when either is missing."""
        paths = [self.work / "fit_0.npy", self.work / "sequential_0.npy"]
        if not all(path.is_file() for path in paths):
            return None
        first, second = (np.load(path) for path in paths)
        return first.shape == second.shape and bool(np.array_equal(first, second))

    def write(self, rows: Sequence[Row], measured: dict[str, list[Measurement]], capacity: int,
              steps: int, at_n: Sequence[tuple[str, int, float]]) -> None:
        args = self.args
        anomalib = measured.get("anomalib", [])
        details = anomalib[0].result if anomalib else {}
        lines = [
            "# Fit on the magnetic-tile training set: anomalib against seqpatchcore",
            "",
            f"Machine: {_machine()}; anomalib {details.get('anomalib', 'n/a')} with torch "
            f"{details.get('torch', 'n/a')} in {args.venv}. K = {capacity:,} members (1% of the "
            f"training patches), seed {args.seed}, image AUROC on the {args.split} split "
            f"(sigma {args.sigma}). Each method ran in its own process; medians over "
            f"{args.repeats} round{'s' if args.repeats > 1 else ''} for our sequential "
            "coreset and fit, anomalib and our standard fit "
            f"{'every round' if args.repeat_all else 'in the first round only'}. Wall s: the "
            "whole process, imports included. Ratios are anomalib's value over the row's "
            "(> 1: anomalib needs more). `fit's own MB` = peak RSS minus the RSS after the "
            "imports.",
            "",
            markdown_table(rows),
        ]
        if details:
            lines.append(
                f"anomalib's sparse random projection (eps = 0.9) maps D = 72 to "
                f"{details.get('projection_components')} dimensions (the Johnson-Lindenstrauss "
                f"bound for {details.get('rows', 0):,} points does not look at D).")
            if details.get("extrapolated"):
                lines.append(
                    f"anomalib's selection was cut short at {details['size']:,} members and "
                    f"extrapolated: setup {details['setup_s']:.1f} s + {capacity - 1:,} steps x "
                    f"{details['step_s']:.3f} s; its image AUROC at K is not measured.")
            lines.append("")
        if at_n:
            lines += [f"Image AUROC at anomalib's {steps:,} members (the first {steps:,} of a "
                      "farthest-point selection are that selection at size "
                      f"{steps:,}):", "", "| method | members | image AUROC |", "|---|---|---|"]
            lines += [f"| {LABELS[role]} | {size:,} | {value:.3f} |" for role, size, value in at_n]
            lines.append("")
        same = self.same_coresets()
        if same is not None:
            lines += [f"SequentialPatchCore.fit and the sequential coreset streamed from the "
                      f"feature file hold {'the same' if same else 'different'} members.", ""]
        lines += ["Load (uptime) around the runs:", "", "```", *self.uptimes, "```", ""]
        write_atomically(args.results / "anomalib_fit.md", "\n".join(lines))
        write_atomically(args.results / "anomalib_fit.csv", csv_text(rows))
        logger.info("wrote %s", args.results / "anomalib_fit.md")


def parse_methods(text: str) -> list[str]:
    methods = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in methods if item not in ROLES]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(f"--methods: expected a comma-separated subset of "
                                         f"{','.join(ROLES)}, got {text!r}")
    return methods


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if argv[:1] == ["child"]:
        child_main(argv[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, required=True, help="folder for the tables")
    parser.add_argument("--venv", type=Path, default=Path("/tmp/anomalib-venv"),
                        help="virtual environment with anomalib (see above)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="magnetic-tile root with split.csv")
    parser.add_argument("--work", type=Path, help="features, coresets, logs (default: "
                        "<results>/work)")
    parser.add_argument("--methods", type=parse_methods, default=list(ROLES),
                        help=f"comma-separated subset of {','.join(ROLES)}")
    parser.add_argument("--capacity", type=int, default=0, help="K; 0: --fraction of patches")
    parser.add_argument("--fraction", type=float, default=0.01)
    parser.add_argument("--anomalib-steps", type=int, default=0,
                        help="members anomalib selects before the extrapolation; 0: all K")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the cheap methods")
    parser.add_argument("--repeat-all", action="store_true",
                        help="repeat anomalib and the standard fit every round too")
    parser.add_argument("--chunk-rows", type=int, default=1024,
                        help="feature rows per read (1024 = one image)")
    parser.add_argument("--split", choices=["val", "test"], default="test")
    parser.add_argument("--sigma", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats: expected >= 1, got {args.repeats}")
    if args.anomalib_steps < 0 or args.capacity < 0:
        parser.error("--anomalib-steps and --capacity: expected >= 0")
    if not (args.data / "split.csv").is_file():
        parser.error(f"--data: expected a folder with split.csv, got {args.data}")
    if "anomalib" in args.methods and not (args.venv / "bin" / "python").is_file():
        parser.error(f"--venv: no {args.venv / 'bin' / 'python'}; create it as the docstring "
                     "says, or leave anomalib out of --methods")
    Benchmark(args).run()


if __name__ == "__main__":
    main()
