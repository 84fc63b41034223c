"""Time metrics.evaluate on 400 maps of 400x630 pixels (about the size of the magnetic-tile
test split at native resolution). Prints the median of several runs.

    python scripts/bench_metrics.py [--repeats 5]
"""

import argparse
import statistics
import time

import numpy as np

from seqpatchcore import metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=400)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    maps = [rng.random((400, 630), dtype=np.float32) for _ in range(args.images)]
    masks = [np.zeros((400, 630), bool) for _ in range(args.images)]
    for i in range(0, args.images, 2):
        masks[i][100:130, 200:260] = True
        maps[i][masks[i]] += 0.5
    labels = np.array([m.any() for m in masks])
    scores = np.array([m.max() for m in maps])

    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        metrics.evaluate(labels, scores, masks, maps, pixel_threshold=0.9)
        seconds.append(time.perf_counter() - start)
    pixels = args.images * 400 * 630
    print(f"evaluate on {pixels / 1e6:.1f}M pixels: median {statistics.median(seconds):.2f} s "
          f"over {args.repeats} runs (min {min(seconds):.2f}, max {max(seconds):.2f})")


if __name__ == "__main__":
    main()
