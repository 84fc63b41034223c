"""How close calibrated synthetic surfaces come to the real images they were fitted on.

The surfaces of ``configs/render_synthetic.yaml`` are fitted on the magnetic-tile training
images (split.csv's train split). This script renders ``--count`` good images of each kind
(calibrated at image and at pixel scale, and the procedural families as baselines) and compares
them with held-out real good images (val and test good, never fitted on) in the main job's
feature space (``configs/magnetic_tile.yaml``: MobileNetV3-Small, 72-D patch features):

* **image AUROC**: a coreset built on the real training images scores a reference half of the
  held-out real good images and the images of the row; the AUROC separates the row from the
  reference (0.5: the detector cannot tell them apart; 1.0: every image of the row scores
  above every real one).
* **NN distance**: the mean distance of the row's patches to their nearest coreset member,
  divided by that of the reference patches (1.0: as close to the real training patches as
  held-out real patches are).
* **Fréchet distance** between Gaussians fitted to the reference's and the row's patch
  features (mean and covariance; the FID formula on patches).

The row "real, held out" is the other half of the held-out real good images: the floor that
sampling alone gives. Not a test: it asserts nothing.

Usage:
    PYTHONPATH=python python3 scripts/compare_calibration.py [--count 100] \\
        [--data ../shared/data/magnetic-tile] [--out runs/compare_calibration.md]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from sklearn.metrics import roc_auc_score

from seqpatchcore import _C, data, render, runner
from seqpatchcore.backbones import load_backbone
from seqpatchcore.features import PatchFeatureExtractor
from seqpatchcore.files import write_text
from seqpatchcore.model import SequentialPatchCore

logger = logging.getLogger("compare_calibration")

REPO = Path(__file__).resolve().parents[1]


def patch_features(extractor: PatchFeatureExtractor, images: list[np.ndarray]) -> torch.Tensor:
    """Patch features of every image (uint8 arrays), stacked: [n * h * w, D] float64."""
    features = extractor.extract_each(images)
    return torch.cat([f.reshape(-1, extractor.dim) for f in features]).double().cpu()


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to the rows of a [n, D] and b [m, D]."""
    mean_a, mean_b = a.mean(0).numpy(), b.mean(0).numpy()
    cov_a, cov_b = np.cov(a.numpy(), rowvar=False), np.cov(b.numpy(), rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b)
    # sqrtm of a product of covariances is real up to rounding; drop the imaginary noise.
    root = np.real(root)
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a + cov_b - 2.0 * root))


def nn_distance(features: torch.Tensor, coreset: torch.Tensor) -> float:
    """Mean distance of each feature [n, D] to its nearest coreset member [K, D]."""
    distances, _ = _C.nearest_neighbors(features.float(), coreset, 1)
    return float(distances[:, 0].double().mean())


def synthetic_sets(train: list[Path], fit: dict, count: int, size: tuple[int, int],
                   seed: int) -> dict[str, list[np.ndarray]]:
    """name -> `count` rendered good images, uint8 [H, W]."""
    sets = {}
    for scale in ("image", "pixel"):
        started = time.perf_counter()
        model = render.fit_surface_model(train, fit["work_size"], scale, fit["crops_per_image"],
                                         fit["quantile_count"], fit["seed"])
        sets[f"calibrated ({scale} scale)"] = [render.surface(model, size, seed + i)
                                               for i in range(count)]
        logger.info("calibrated %s scale: fitted and rendered in %.1f s", scale,
                    time.perf_counter() - started)
    for family in render.SURFACE_FAMILIES:
        sets[f"{family} (procedural)"] = [render.surface(family, size, seed + i)
                                          for i in range(count)]
    return sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/magnetic-tile",
                        help="the magnetic-tile dataset (split.csv)")
    parser.add_argument("--count", type=int, default=100,
                        help="images per row, and per half of the held-out real images")
    parser.add_argument("--seed", type=int, default=0, help="seeds the renderings and halves")
    parser.add_argument("--out", type=Path, default=REPO / "runs/compare_calibration.md",
                        help="where the Markdown table is written")
    parser.add_argument("--model", type=Path,
                        help="a model.spc of the main job to reuse; written there when missing "
                             "(fitting the coreset is the slow step)")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    # The main job's model and the synthetic config's fit settings.
    run_config, _ = runner.load_run_config(REPO / "configs/magnetic_tile.yaml",
                                           [f"data.root={args.data.absolute()}"])
    render_config, _ = _C.load_config(str(REPO / "configs/render_synthetic.yaml"), "render", [])
    fit = render_config["surface"]["fit"]
    size = tuple(render_config["size"])

    dataset = data.load_dataset(args.data)
    train = [s.image for s in dataset["train"]]
    held_out = [s.image for s in dataset["val"] + dataset["test"] if not s.is_anomalous]
    if len(held_out) < 2 * args.count:
        raise SystemExit(f"--count {args.count}: needs {2 * args.count} held-out good images, "
                         f"the dataset has {len(held_out)}")
    order = np.random.default_rng(args.seed).permutation(len(held_out))
    reference = [data.load_image(held_out[i]) for i in order[: args.count]]
    rows: dict[str, list] = {"real, held out": [data.load_image(held_out[i]) for i in
                                                order[args.count : 2 * args.count]]}

    started = time.perf_counter()
    if args.model is not None and args.model.is_file():
        model = SequentialPatchCore.load(args.model)
        logger.info("loaded %s", args.model)
    else:
        model = runner.model_from_config(run_config, progress=args.progress).fit(train)
        if args.model is not None:
            model.save(args.model)
    coreset = model.coreset_
    logger.info("coreset of %d members from %d training images in %.1f s", len(coreset),
                len(train), time.perf_counter() - started)
    rows.update(synthetic_sets(train, fit, args.count, size, args.seed))

    features = run_config["features"]
    extractor = PatchFeatureExtractor(
        load_backbone(run_config["backbone"]["name"], run_config["backbone"]["weights"]),
        layers=features["layers"], input_size=tuple(features["input_size"]),
        pool_size=features["pool_size"], batch_size=features["batch_size"])
    reference_features = patch_features(extractor, reference)
    reference_scores = model.score_samples(reference)
    reference_nn = nn_distance(reference_features, coreset)

    lines = [
        f"Coreset: {len(coreset)} members from the {len(train)} real training images "
        f"(configs/magnetic_tile.yaml). Reference: {args.count} held-out real good images "
        f"(val + test good, mean NN distance {reference_nn:.3f}, mean image score "
        f"{reference_scores.mean():.3f}). {args.count} images per row; synthetic rows "
        f"{size[0]}x{size[1]} px, calibrated ones fitted on the training images.",
        "",
        "| images | image AUROC vs real | mean image score | NN distance / real | "
        "Fréchet distance |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, images in rows.items():
        row_features = patch_features(extractor, images)
        scores = model.score_samples(images)
        labels = np.r_[np.zeros(len(reference_scores)), np.ones(len(scores))]
        auroc = roc_auc_score(labels, np.r_[reference_scores, scores])
        ratio = nn_distance(row_features, coreset) / reference_nn
        distance = frechet_distance(reference_features, row_features)
        lines.append(f"| {name} | {auroc:.3f} | {scores.mean():.3f} | {ratio:.2f} | "
                     f"{distance:.2f} |")
        logger.info("%s: AUROC %.3f, NN ratio %.2f, Fréchet %.2f", name, auroc, ratio, distance)

    table = "\n".join(lines) + "\n"
    print(table, end="")
    write_text(args.out, table)
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
