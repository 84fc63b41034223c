"""What a run folder shows a person: a per-defect-type table, heatmap overlays and a score
histogram. Every file is written to a temporary name and renamed."""

from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from seqpatchcore.files import write_bytes

if TYPE_CHECKING:
    from seqpatchcore.runner import SplitScores

logger = logging.getLogger(__name__)


def write_run_report(folder: Path, results: dict[str, Any], test: SplitScores,
                     config: dict[str, Any]) -> None:
    """defects.md, defects.csv, heatmaps/*.png and score_histogram.png for the test split."""
    rows = defect_rows(results["test"], test, results["thresholds"]["image"]["value"])
    write_bytes(folder / "defects.csv", _csv(rows).encode())
    write_bytes(folder / "defects.md", _markdown(rows, results).encode())
    count = config["output"]["heatmaps"]
    if count > 0:
        for index in _heatmap_sample(test, count, config["seed"]):
            sample = test.samples[index]
            name = f"{sample.label}_{Path(sample.image).stem}.png"
            heatmap_overlay(folder / "heatmaps" / name, sample.image, test.maps[index],
                            test.masks[index], test.scores[index], results["thresholds"])
    score_histogram(folder / "score_histogram.png", test, results["thresholds"]["image"]["value"])


def defect_rows(evaluation: dict[str, Any], split: SplitScores,
                image_threshold: float) -> list[dict[str, Any]]:
    """One row per label: images, image-level detection rate at the threshold, defect-wise
    recall (found / total defects), mean image score."""
    per_type = (evaluation.get("defect_recall") or {}).get("per_type", {})
    rows = []
    for label in sorted(set(split.defect_types), key=lambda name: (name != "good", name)):
        chosen = np.array([t == label for t in split.defect_types])
        scores = split.scores[chosen]
        flagged = float(np.mean(scores >= image_threshold))
        recall = per_type.get(label, {})
        rows.append({
            "type": label,
            "images": int(chosen.sum()),
            "flagged_images": round(flagged, 4),
            "defects": recall.get("total", 0) if label != "good" else 0,
            "defects_found": recall.get("found", 0) if label != "good" else 0,
            "defect_recall": recall.get("recall") if label != "good" else None,
            "mean_score": round(float(scores.mean()), 4),
        })
    return rows


def _csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _markdown(rows: list[dict[str, Any]], results: dict[str, Any]) -> str:
    test = results["test"]
    lines = [
        "# Test split",
        "",
        f"image AUROC {_fmt(test.get('image_auroc'))}, pixel AUROC "
        f"{_fmt(test.get('pixel_auroc'))}, AUPRO {_fmt(test.get('aupro'))}, image F1-max "
        f"{_fmt(test.get('image_f1_max'))}, pixel F1-max {_fmt(test.get('pixel_f1_max'))}",
        "",
        f"Thresholds from the validation split: image {results['thresholds']['image']['value']:.4g}"
        f" ({results['thresholds']['image']['rule']}), pixel "
        f"{results['thresholds']['pixel']['value']:.4g} ({results['thresholds']['pixel']['rule']})."
        " 'flagged' is the share of images at or above the image threshold (for good images: "
        "false alarms); defect recall counts 8-connected defects with a pixel above the pixel "
        "threshold.",
        "",
        "| type | images | flagged | defects | found | defect recall | mean score |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['type']} | {row['images']} | {row['flagged_images']:.3f} | "
            f"{row['defects']} | {row['defects_found']} | {_fmt(row['defect_recall'])} | "
            f"{row['mean_score']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _heatmap_sample(split: SplitScores, count: int, seed: int) -> list[int]:
    """Up to `count` images spread over the labels, seeded, in split order."""
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[int]] = {}
    for index, label in enumerate(split.defect_types):
        by_label.setdefault(label, []).append(index)
    chosen: list[int] = []
    labels = sorted(by_label, key=lambda name: (name != "good", name))
    while len(chosen) < min(count, len(split.samples)):
        for label in labels:
            remaining = [i for i in by_label[label] if i not in chosen]
            if remaining and len(chosen) < count:
                chosen.append(int(rng.choice(remaining)))
    return sorted(chosen)


def heatmap_overlay(path: Path, image_path: str | os.PathLike, anomaly_map: np.ndarray,
                    mask: np.ndarray, score: float, thresholds: dict[str, Any]) -> None:
    """The image, its ground truth outlined, and the anomaly map over it, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from seqpatchcore.data import load_image

    image = load_image(image_path)
    figure, axes = plt.subplots(1, 2, figsize=(8, 4.2), constrained_layout=True)
    axes[0].imshow(image)
    if mask.any():
        axes[0].contour(mask, levels=[0.5], colors="lime", linewidths=1)
    axes[0].set_title(f"{Path(image_path).name}\nground truth outlined", fontsize=8)
    axes[1].imshow(image)
    shown = axes[1].imshow(anomaly_map, cmap="inferno", alpha=0.55)
    axes[1].contour(anomaly_map >= thresholds["pixel"]["value"], levels=[0.5], colors="cyan",
                    linewidths=0.8)
    verdict = "anomalous" if score >= thresholds["image"]["value"] else "normal"
    axes[1].set_title(f"score {score:.3f} ({verdict})\ncyan: above the pixel threshold",
                      fontsize=8)
    figure.colorbar(shown, ax=axes[1], fraction=0.046)
    for axis in axes:
        axis.axis("off")
    _save_figure(figure, path)


def score_histogram(path: Path, split: SplitScores, threshold: float) -> None:
    """Image scores of good images against each defect type, with the image threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4), constrained_layout=True)
    bins = np.linspace(split.scores.min(), split.scores.max(), 40)
    for label in sorted(set(split.defect_types), key=lambda name: (name != "good", name)):
        chosen = np.array([t == label for t in split.defect_types])
        axis.hist(split.scores[chosen], bins=bins, alpha=0.5, label=f"{label} ({chosen.sum()})",
                  histtype="stepfilled" if label == "good" else "step", linewidth=1.5)
    axis.axvline(threshold, color="black", linestyle="--", label="threshold (val)")
    axis.set_xlabel("image score (max of the anomaly map)")
    axis.set_ylabel("images")
    axis.legend(fontsize=8)
    _save_figure(figure, path)


def _save_figure(figure: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    write_bytes(path, buffer.getvalue())
