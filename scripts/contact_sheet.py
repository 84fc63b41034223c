"""Write a contact sheet (PNG) of every impurity, surface family, calibrated surface and defect.

For a person to look at: each panel is one sample; impurities and defects carry the outline of
their mask in red next to a copy without it. The calibrated surfaces are fitted on the first
``--fit-count`` magnetic-tile training images and shown beside real ones.

Usage:
    python scripts/contact_sheet.py --out runs/render/contact_sheet.png
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from seqpatchcore import render  # noqa: E402

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "magnetic-tile"


def split_paths(data: Path, split: str, label: str = "good") -> list[Path]:
    """Image paths of one split and label of the magnetic-tile split.csv, in file order."""
    with open(data / "split.csv", newline="") as file:
        return [data / row["image"] for row in csv.DictReader(file)
                if row["split"] == split and row["label"] == label]


def show(ax, image: np.ndarray, title: str, mask: np.ndarray | None = None) -> None:
    ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    if mask is not None and mask.any():
        ax.contour(mask > 127, levels=[0.5], colors="red", linewidths=0.6)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "render" / "contact_sheet.png")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="magnetic-tile folder with split.csv")
    parser.add_argument("--size", type=int, default=256, help="side of the synthetic images, px")
    parser.add_argument("--fit-count", type=int, default=50,
                        help="training images to fit the calibrated surface on")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    size = (args.size, args.size)
    seed = args.seed
    flat = np.full(size, 150, np.uint8)
    brushed = render.surface("brushed", size, seed=seed)
    rows: list[list[tuple[str, np.ndarray, np.ndarray | None]]] = []

    # Impurities: each on a flat grey field (to see its profile) and on a brushed surface.
    row = []
    for name, image in (("flat", flat), ("brushed", brushed)):
        stained, mask = render.water_stains(image, count=3, seed=seed + 1, radius_px=45)
        row += [(f"water stains on {name}", stained, None), ("  + mask", stained, mask)]
    stained, mask = render.water_stains(flat, count=2, seed=seed + 2, radius_px=55,
                                        strength=-0.3, rim_strength=-0.1)
    row += [("bright stains (s < 0)", stained, mask)]
    rows.append(row)

    row = []
    for name, image in (("flat", flat), ("brushed", brushed)):
        printed, mask = render.fingerprints(image, count=1, seed=seed + 3, size_px=70)
        row += [(f"fingerprint on {name}", printed, None), ("  + mask", printed, mask)]
    dusty, mask = render.dust(brushed, count=120, seed=seed + 4)
    row += [("dust on brushed", dusty, mask)]
    rows.append(row)

    # Surfaces: the procedural families and calibrated ones next to real tiles.
    row = [(family, render.surface(family, size, seed=seed + 5), None)
           for family in render.SURFACE_FAMILIES]
    train = split_paths(args.data, "train")
    if train:
        model = render.fit_surface_model(train[: args.fit_count], work_size=args.size)
        row += [(f"calibrated #{k}", render.surface(model, size, seed=seed + 6 + k), None)
                for k in range(2)]
        rows.append(row)
        real = [np.asarray(Image.open(p).convert("L").resize(size, Image.BILINEAR))
                for p in train[args.fit_count: args.fit_count + 5]]
        rows.append([(f"real train #{k} (resized)", image, None) for k, image in enumerate(real)])
    else:
        logger.warning("no magnetic-tile training images under %s; skipping calibration",
                       args.data)
        rows.append(row)

    # Defects on a brushed surface, with and without their masks.
    row = []
    for k, kind in enumerate(render.DEFECTS):
        image, mask = render.defect(brushed, kind, seed=seed + 20 + k)
        row.append((kind, image, mask))
    crack, mask = render.defect(brushed, "crack", seed=seed + 30, branch_probability=0.15)
    row.append(("crack (more branches)", crack, None))
    rows.append(row)

    # Stains on real good test images, as stain_real_images writes them.
    test = split_paths(args.data, "test")[:5]
    if test:
        row = []
        for k, path in enumerate(test[:3]):
            image = np.asarray(Image.open(path).convert("L"))
            stained, mask = render.water_stains(image, seed=seed + 40 + k,
                                                **{**render.REAL_STAIN_DEFAULTS, "count": 2})
            row += [(f"{path.stem} stained", stained, mask if k == 2 else None)]
        image = np.asarray(Image.open(test[3]).convert("L"))
        printed, _ = render.fingerprints(image, seed=seed + 50, size_px=40)
        row.append((f"{test[3].stem} fingerprint", printed, None))
        dusty, _ = render.dust(image, seed=seed + 51, count=80)
        row.append((f"{test[3].stem} dust", dusty, None))
        rows.append(row)

    columns = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), columns, figsize=(3.2 * columns, 3.3 * len(rows)))
    for r, row in enumerate(rows):
        for c in range(columns):
            ax = axes[r, c]
            if c < len(row):
                title, image, mask = row[c]
                show(ax, image, title, mask)
            else:
                ax.axis("off")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".partial.png")
    fig.savefig(partial, dpi=90)
    os.replace(partial, args.out)
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
