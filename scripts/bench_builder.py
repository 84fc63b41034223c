"""Benchmark the sequential builder alone: build time against one nearest-neighbour pass.

Streams the 652 magnetic-tile training images' patch features (extracted once into a .npy
file, as SequentialPatchCore.fit extracts them: 256 x 256, D = 72) through
`_C.SequentialCoreset` of capacity K in batches of 16 images, for each builder chunk size, and
times one `_C.nearest_neighbors` pass of all features against the final coreset right after
each build: the issue-3 ratio build / NN pass, without feature extraction around it. Rounds
are interleaved (each round builds once with every chunk size), and the table quotes medians.
Every build must give the same members in the same slots (the chunk size never changes the
result); the script fails otherwise. Not a test: it asserts nothing about speed.

    python scripts/bench_builder.py [--chunks 0 128 256 1024 4096] [--rounds 3] \\
        [--features runs/builder/train_features.npy] [--results runs/builder]

Chunk 0 is the builder's default (Note [Chunk size] in csrc/core/sequential_coreset.cpp).
Writes builder.csv and builder.md under --results.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from bench_anomalib import extract_features  # noqa: E402  (the same extraction, reused)

from seqpatchcore import _C  # noqa: E402
from seqpatchcore.data import read_split_csv  # noqa: E402
from seqpatchcore.files import write_text  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "magnetic-tile"
BATCH_ROWS = 16 * 1024  # one fit batch: 16 images of 32 x 32 patches


def build(features: torch.Tensor, capacity: int, chunk: int) -> tuple[float, torch.Tensor, int]:
    """Seconds to stream the features through a fresh builder, its members, its chunk."""
    builder = _C.SequentialCoreset(features.shape[1], capacity, chunk_size=chunk, seed=0)
    start = time.perf_counter()
    for row in range(0, features.shape[0], BATCH_ROWS):
        builder.update(features[row : row + BATCH_ROWS])
    return time.perf_counter() - start, builder.coreset(), builder.chunk_size


def nearest_pass(features: torch.Tensor, coreset: torch.Tensor) -> float:
    start = time.perf_counter()
    _C.nearest_neighbors(features, coreset, 1)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="magnetic-tile folder with split.csv (default: %(default)s)")
    parser.add_argument("--features", type=Path, default=Path("runs/builder/train_features.npy"),
                        help="feature file, extracted first when missing (default: %(default)s)")
    parser.add_argument("--results", type=Path, default=Path("runs/builder"))
    parser.add_argument("--capacity", type=int, default=6676, help="K (default: 1%% of patches)")
    parser.add_argument("--chunks", type=int, nargs="+", default=[0, 128, 256, 1024, 4096],
                        help="builder chunk sizes; 0 is the default (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.capacity < 1 or any(chunk < 0 for chunk in args.chunks):
        parser.error("--rounds and --capacity must be >= 1 and --chunks >= 0")

    if not args.features.is_file():
        if not (args.data / "split.csv").is_file():
            parser.error(f"--features {args.features} does not exist, and --data {args.data} "
                         f"has no split.csv to extract them from")
        paths = [sample.image for sample in read_split_csv(args.data, "train")]
        print(f"extracting the features of {len(paths)} training images into {args.features}")
        extract_features(paths, args.features)
    try:
        array = np.load(args.features)
    except (OSError, ValueError) as error:
        parser.error(f"--features {args.features}: not a .npy array ({error})")
    if array.ndim != 2 or array.shape[0] == 0 or array.dtype not in (np.float32, np.float64):
        parser.error(f"--features {args.features}: expected a non-empty float32 or float64 "
                     f"[features, D] array, got {array.dtype} of shape {array.shape}")
    if not np.isfinite(array).all():
        parser.error(f"--features {args.features}: holds NaN or infinity")
    features = torch.from_numpy(array)
    print(f"{features.shape[0]:,} features of D = {features.shape[1]}, K = {args.capacity:,}, "
          f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', 'default')}")

    rows = []
    reference = None
    for round_ in range(args.rounds):
        for chunk in args.chunks:
            seconds, coreset, resolved = build(features, args.capacity, chunk)
            if reference is None:
                reference = coreset
            elif not torch.equal(coreset, reference):
                print(f"chunk {chunk}: the coreset differs from the first build's",
                      file=sys.stderr)
                return 1
            nn = nearest_pass(features, coreset)
            rows.append({"round": round_, "chunk_size": chunk, "resolved_chunk": resolved,
                         "build_s": seconds, "nn_pass_s": nn, "build_over_nn": seconds / nn,
                         "load": os.getloadavg()[0]})
            print(f"round {round_} chunk {resolved}: build {seconds:.1f} s, NN pass {nn:.1f} s, "
                  f"ratio {seconds / nn:.2f}")

    lines = ["| chunk (features) | rounds | build s | NN pass s | build / NN |",
             "|---|---|---|---|---|"]
    for chunk in args.chunks:
        mine = [row for row in rows if row["chunk_size"] == chunk]
        label = f"{mine[0]['resolved_chunk']}" + (" (default)" if chunk == 0 else "")
        lines.append(f"| {label} | {len(mine)} "
                     f"| {statistics.median(r['build_s'] for r in mine):.1f} "
                     f"| {statistics.median(r['nn_pass_s'] for r in mine):.1f} "
                     f"| {statistics.median(r['build_over_nn'] for r in mine):.2f} |")
    loads = [row["load"] for row in rows]
    lines += ["", f"Medians over rounds; every build gave the same members. Load average "
                  f"{min(loads):.1f}-{max(loads):.1f} during the run."]
    table = "\n".join(lines) + "\n"
    print("\n" + table)

    stream = io.StringIO()
    writer = csv.DictWriter(stream, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(args.results / "builder.csv", stream.getvalue())
    write_text(args.results / "builder.md", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
