"""Benchmark the renderers: milliseconds per megapixel, median of several runs, as Markdown.

Impurity and defect sizes scale with the image side (radius, length and particle count), so
they cover the same fraction of every image and the time per megapixel is comparable across
sizes. Surfaces cover the whole image anyway. Not a test: it asserts nothing.

Usage:
    python scripts/bench_render.py [--sizes 256 512 1024 2048] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np

from seqpatchcore import render


def renderers(side: int, model: render.SurfaceModel) -> dict[str, Callable[[np.ndarray], object]]:
    """name -> call on a uint8 [side, side] image; sizes scale with `side` (256 = default)."""
    k = side / 256.0
    return {
        "water_stains (3)": lambda im: render.water_stains(im, count=3, seed=1, radius_px=30 * k),
        "fingerprints (1)": lambda im: render.fingerprints(im, count=1, seed=1, size_px=45 * k),
        "dust (60 / 256^2)": lambda im: render.dust(im, count=int(60 * k * k), seed=1),
        "scratch": lambda im: render.defect(im, "scratch", seed=1, length_px=70 * k,
                                            width_px=1.5 * k),
        "dent": lambda im: render.defect(im, "dent", seed=1, radius_px=18 * k),
        "blowhole": lambda im: render.defect(im, "blowhole", seed=1, radius_px=6 * k),
        "crack": lambda im: render.defect(im, "crack", seed=1, length_px=90 * k,
                                          width_px=1.8 * k, step_px=3 * k),
        "surface brushed": lambda im: render.surface("brushed", im.shape, seed=1),
        "surface milled": lambda im: render.surface("milled", im.shape, seed=1),
        "surface sandblasted": lambda im: render.surface("sandblasted", im.shape, seed=1),
        "surface calibrated": lambda im: render.surface(model, im.shape, seed=1),
    }


def median_seconds(call: Callable[[], object], repeats: int) -> float:
    call()  # warm-up: first-touch allocations, OpenCV's thread pool
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    # A calibrated model fitted on procedural images, so the benchmark needs no data.
    model = render.fit_surface_model(
        [render.surface("brushed", (256, 256), seed=s) for s in range(8)], work_size=256
    )
    rows: dict[str, list[float]] = {}
    for side in args.sizes:
        image = render.surface("brushed", (side, side), seed=0)
        megapixels = side * side / 1e6
        for name, call in renderers(side, model).items():
            seconds = median_seconds(lambda c=call, im=image: c(im), args.repeats)
            rows.setdefault(name, []).append(1e3 * seconds / megapixels)

    print(f"Milliseconds per megapixel (median of {args.repeats} runs, uint8 grey, "
          f"{os.cpu_count()} CPUs visible)\n")
    print("| renderer | " + " | ".join(f"{s}^2" for s in args.sizes) + " |")
    print("|---|" + "---:|" * len(args.sizes))
    for name, values in rows.items():
        print(f"| {name} | " + " | ".join(f"{v:.1f}" for v in values) + " |")


if __name__ == "__main__":
    main()
