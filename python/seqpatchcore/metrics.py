"""Anomaly detection metrics for images and pixels: AUROC, F1, AUPRO, defect-wise recall.

Conventions, used by every function here (``docs/metrics.md`` gives the full definitions):

* Labels are binary: True (or 1) is anomalous, False (or 0) is good. ``masks`` are pixel
  labels, ``anomaly_maps`` pixel scores; a higher score means more anomalous.
* A score is predicted anomalous when ``score >= threshold``.
* Regions (defects, impurities) are the 8-connected components of a mask.
* Pixel-level inputs are one ``[H, W]`` array per image, in a list, so images may differ in
  size; an ``[N, H, W]`` array is read as N images. A mask may be None for an image without
  defects. Scores are never copied more than once: defect and good pixels are gathered into
  two buffers, sorted in place, and every curve is read from those by binary search.

Scores must not be NaN; ``+inf`` and ``-inf`` are ordered like any other score.
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

# 8-connectivity: pixels that touch at a corner belong to one region.
CONNECTIVITY_8 = np.ones((3, 3), dtype=bool)


class UndefinedMetricError(ValueError):
    """A metric has no value for these data, e.g. AUROC when all labels are equal."""


class ThresholdRule(str, enum.Enum):
    """How :func:`choose_threshold` chose a threshold."""

    F1_MAX = "f1_max"
    GOOD_QUANTILE = "good_quantile"


class F1Max(NamedTuple):
    """The best F1 over all thresholds and the threshold that attains it."""

    f1: float
    threshold: float


class ThresholdChoice(NamedTuple):
    """A threshold and the rule that produced it."""

    value: float
    rule: ThresholdRule


class Confusion(NamedTuple):
    """Counts of a binary decision at one threshold."""

    true_positives: int
    false_positives: int
    false_negatives: int
    true_negatives: int

    @property
    def precision(self) -> float:
        """TP / (TP + FP); 0.0 when nothing is predicted anomalous."""
        predicted = self.true_positives + self.false_positives
        return self.true_positives / predicted if predicted else 0.0

    @property
    def recall(self) -> float:
        """TP / (TP + FN); raises without anomalous samples."""
        positives = self.true_positives + self.false_negatives
        if positives == 0:
            raise UndefinedMetricError(
                "recall is undefined without anomalous samples (labels are all 0)"
            )
        return self.true_positives / positives

    @property
    def f1(self) -> float:
        """2 TP / (2 TP + FP + FN); raises without anomalous samples."""
        if self.true_positives + self.false_negatives == 0:
            raise UndefinedMetricError(
                "F1 is undefined without anomalous samples (labels are all 0)"
            )
        tp = self.true_positives
        return 2 * tp / (2 * tp + self.false_positives + self.false_negatives)

    @property
    def false_positive_rate(self) -> float:
        """FP / (FP + TN); raises without good samples."""
        negatives = self.false_positives + self.true_negatives
        if negatives == 0:
            raise UndefinedMetricError("the false-positive rate is undefined without good samples")
        return self.false_positives / negatives


# ---------------------------------------------------------------------------------------------
# Input checks


def _is_block_list(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and any(
        b is None or (isinstance(b, np.ndarray) and b.ndim >= 1) for b in x
    )


def _as_blocks(x: Any, name: str) -> list[np.ndarray | None]:
    """One array, or a list of arrays (None allowed), as a list of blocks."""
    if _is_block_list(x):
        return [None if b is None else np.asarray(b) for b in x]
    return [np.asarray(x)]


def _as_images(x: Any, name: str) -> list[np.ndarray | None]:
    """A list of [H, W] arrays (None allowed), or an [N, H, W] / [H, W] array, as images."""
    if isinstance(x, np.ndarray):
        if x.ndim == 2:
            return [x]
        if x.ndim == 3:
            return list(x)
        raise ValueError(f"{name}: expected [N, H, W] or a list of [H, W] arrays, got {x.shape}")
    if not isinstance(x, (list, tuple)):
        raise TypeError(f"{name}: expected a list of [H, W] arrays, got {type(x).__name__}")
    images = []
    for i, b in enumerate(x):
        if b is not None:
            b = np.asarray(b)
            if b.ndim != 2:
                raise ValueError(f"{name}[{i}]: expected an [H, W] array, got shape {b.shape}")
        images.append(b)
    return images


def _check_labels(label: np.ndarray, name: str) -> np.ndarray:
    if label.dtype == bool:
        return label
    if label.dtype.kind not in "iuf":
        raise TypeError(f"{name}: expected bool or 0/1 labels, got dtype {label.dtype}")
    if not ((label == 0) | (label == 1)).all():
        values = np.unique(label)[:5]
        raise ValueError(
            f"{name}: expected binary labels (bool or 0/1), got values such as {values}; "
            "threshold an 8-bit mask with `mask > 127` first"
        )
    return label != 0


def _check_scores(score: np.ndarray, name: str) -> np.ndarray:
    if score.dtype.kind not in "iuf":
        raise TypeError(f"{name}: expected real-valued scores, got dtype {score.dtype}")
    if score.dtype == np.float16:
        score = score.astype(np.float32)
    return score


def _pairs(
    labels: Any, scores: Any, labels_name: str, scores_name: str, per_image: bool = False
) -> list[tuple[np.ndarray | None, np.ndarray]]:
    """Matches label and score blocks, checking count, shape and dtype of each."""
    label_blocks = _as_blocks(labels, labels_name)
    score_blocks = _as_blocks(scores, scores_name)
    if len(label_blocks) != len(score_blocks):
        raise ValueError(
            f"{labels_name} has {len(label_blocks)} arrays but {scores_name} has "
            f"{len(score_blocks)}; expected one label array per score array"
        )

    pairs = []
    for i, (label, score) in enumerate(zip(label_blocks, score_blocks, strict=True)):
        at = f"[{i}]" if per_image or len(score_blocks) > 1 else ""
        if score is None:
            raise ValueError(f"{scores_name}{at}: expected an array of scores, got None")
        score = _check_scores(score, f"{scores_name}{at}")
        if label is not None:
            if label.shape != score.shape:
                raise ValueError(
                    f"{labels_name}{at} has shape {label.shape} but {scores_name}{at} has "
                    f"shape {score.shape}; expected equal shapes"
                )
            label = _check_labels(label, f"{labels_name}{at}")
        pairs.append((label, score))
    return pairs


def _image_level(
    labels: Any, scores: Any, labels_name: str, scores_name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Image labels and scores as two [N] arrays."""
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    if labels.ndim != 1 or scores.shape != labels.shape:
        raise ValueError(
            f"{labels_name} and {scores_name}: expected two [N] arrays, got shapes "
            f"{labels.shape} and {scores.shape}"
        )
    return _check_labels(labels, labels_name), _check_scores(scores, scores_name)


def _raise_on_nan(blocks: Sequence[np.ndarray], name: str, per_image: bool = False) -> None:
    for i, b in enumerate(blocks):
        if b.dtype.kind == "f" and np.isnan(b).any():
            at = f"[{i}]" if per_image or len(blocks) > 1 else ""
            raise ValueError(f"{name}{at} contains NaN; expected finite scores or +-inf")


def _check_threshold(threshold: float, name: str) -> float:
    threshold = float(threshold)
    if math.isnan(threshold):
        raise ValueError(f"{name}: expected a number, got NaN")
    return threshold


def _cast_threshold(threshold: float, dtype: np.dtype) -> Any:
    """The threshold in the scores' dtype, so that ``score >= result`` iff ``score >= threshold``.

    A plain Python float would be rounded to nearest on comparison with float32 scores (and a
    float64 scalar would make NumPy cast a whole array), so round up to the next representable
    value instead.
    """
    if dtype.kind != "f":
        return threshold
    with np.errstate(over="ignore"):
        value = dtype.type(threshold)
    if float(value) < threshold:
        value = np.nextafter(value, dtype.type(np.inf))
    return value


# ---------------------------------------------------------------------------------------------
# Scores split by label and sorted: the shared state of every curve metric


@dataclass
class _SortedScores:
    """Scores of anomalous (positive) and good (negative) samples, each sorted ascending.

    ``component`` gives, for each positive, the index of its region (only where regions were
    labelled), aligned with ``positive``. ``below`` and ``not_above`` count, for each positive,
    the negatives with a smaller score and with a score not larger; they are computed once.
    """

    positive: np.ndarray  # [P]
    negative: np.ndarray  # [N]
    component: np.ndarray | None = None  # [P] int64
    n_components: int = 0
    _counts: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def negatives_below(self) -> tuple[np.ndarray, np.ndarray]:
        """Per positive: (#negatives < score, #negatives <= score), both [P] int64."""
        if self._counts is None:
            below = np.searchsorted(self.negative, self.positive, side="left").astype(np.int64)

            # The searches miss the cache on large inputs, so the second search is only run
            # for the positives that tie with a negative; the others have nothing to skip.
            not_above = below.copy()
            inside = below < self.negative.size
            tied = np.flatnonzero(inside)
            tied = tied[self.negative[below[tied]] == self.positive[tied]]
            not_above[tied] = np.searchsorted(self.negative, self.positive[tied], side="right")
            self._counts = (below, not_above)
        return self._counts


def _gather(
    pairs: Sequence[tuple[np.ndarray | None, np.ndarray]],
    scores_name: str,
    regions: Sequence[tuple[np.ndarray, int]] | None = None,
) -> _SortedScores:
    """Copies the scores once into a positive and a negative buffer and sorts both.

    ``regions`` holds, per pair, the output of :func:`_label_regions`; positives are then the
    labelled pixels and each keeps the global index of its region.
    """
    n_positive = 0
    n_total = 0
    for i, (label, score) in enumerate(pairs):
        if regions is not None:
            n_positive += int(np.count_nonzero(regions[i][0]))
        elif label is not None:
            n_positive += int(np.count_nonzero(label))
        n_total += score.size
    dtype = np.result_type(*[score.dtype for _, score in pairs])

    positive = np.empty(n_positive, dtype=dtype)
    negative = np.empty(n_total - n_positive, dtype=dtype)
    component = np.empty(n_positive, dtype=np.int64) if regions is not None else None
    p = n = 0
    region_offset = 0
    for i, (label, score) in enumerate(pairs):
        if regions is not None:
            region_map, count = regions[i]
            label = region_map > 0
        if label is None:
            negative[n : n + score.size] = score.ravel()
            n += score.size
            continue
        in_defect = score[label]
        positive[p : p + in_defect.size] = in_defect
        negative[n : n + score.size - in_defect.size] = score[~label]
        if regions is not None:
            # Boolean indexing walks pixels in the same (row-major) order for both arrays.
            component[p : p + in_defect.size] = region_map[label] - 1 + region_offset
            region_offset += count
        p += in_defect.size
        n += score.size - in_defect.size

    negative.sort()
    if component is not None:
        order = np.argsort(positive, kind="stable")
        positive = positive[order]
        component = component[order]
    else:
        positive.sort()

    # NaN sorts last, so one look at the end of each buffer finds it.
    if dtype.kind == "f" and (
        (positive.size and np.isnan(positive[-1])) or (negative.size and np.isnan(negative[-1]))
    ):
        _raise_on_nan([score for _, score in pairs], scores_name, regions is not None)
    return _SortedScores(positive, negative, component, region_offset)


def _require_both_classes(scores: _SortedScores, metric: str) -> None:
    n_pos, n_neg = scores.positive.size, scores.negative.size
    if n_pos == 0 or n_neg == 0:
        raise UndefinedMetricError(
            f"{metric} is undefined with one class only: expected anomalous and good samples, "
            f"got {n_pos} anomalous and {n_neg} good"
        )


def _auroc(scores: _SortedScores) -> float:
    _require_both_classes(scores, "AUROC")
    below, not_above = scores.negatives_below()

    # Mann-Whitney U: each (positive, negative) pair counts 1 when the positive scores higher
    # and 1/2 on a tie. Twice U is an exact integer.
    twice_u = 2 * int(below.sum()) + int((not_above - below).sum())
    return twice_u / (2 * scores.positive.size * scores.negative.size)


def _f1_max(scores: _SortedScores) -> F1Max:
    n_pos, n_neg = scores.positive.size, scores.negative.size
    if n_pos == 0:
        raise UndefinedMetricError("F1 is undefined without anomalous samples (labels are all 0)")
    below, _ = scores.negatives_below()

    # The best threshold is always a positive's score: moving a threshold up to the next
    # positive score keeps every true positive and can only drop false positives.
    positive = scores.positive
    first = np.flatnonzero(np.r_[True, positive[1:] != positive[:-1]])
    true_positives = n_pos - first
    false_positives = n_neg - below[first]
    f1 = 2.0 * true_positives / (true_positives + false_positives + n_pos)

    # Ties in F1: the highest threshold, which raises the fewest alarms.
    best = np.flatnonzero(f1 == f1.max())[-1]
    return F1Max(float(f1[best]), float(positive[first[best]]))


def _aupro(scores: _SortedScores, fpr_limit: float) -> float:
    if scores.n_components == 0:
        raise UndefinedMetricError(
            "AUPRO is undefined without defect regions (all masks are empty)"
        )
    if scores.negative.size == 0:
        raise UndefinedMetricError("AUPRO is undefined without good pixels (all masks are full)")
    below, not_above = scores.negatives_below()
    n_neg = scores.negative.size

    # Each region carries the weight 1/n_regions, spread evenly over its pixels, so PRO(t) is
    # the sum of the weights of the positives with score >= t.
    size = np.bincount(scores.component, minlength=scores.n_components)
    weight = 1.0 / (size[scores.component] * scores.n_components)

    # A positive with score s joins the curve between FPR(> s) and FPR(>= s), linearly when
    # good pixels tie with s. Its area under the curve up to fpr_limit is the integral of that
    # ramp; summing over positives gives the trapezoid area of the exact PRO curve.
    fpr_start = (n_neg - not_above) / n_neg
    fpr_end = (n_neg - below) / n_neg
    width = fpr_end - fpr_start
    step = np.maximum(fpr_limit - fpr_start, 0.0)
    ramp_inside = fpr_end <= fpr_limit
    area = np.where(
        ramp_inside,
        fpr_limit - 0.5 * (fpr_start + fpr_end),
        np.where(width > 0, step * step / (2.0 * np.where(width > 0, width, 1.0)), step),
    )
    return float(np.dot(weight, area) / fpr_limit)


# ---------------------------------------------------------------------------------------------
# Image- and pixel-level curve metrics


def auroc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve, exact, with ties counted half.

    Equals the probability that a random anomalous sample scores higher than a random good
    one, plus half the probability of a tie (the Mann-Whitney U statistic over n_pos * n_neg).

    Args:
        labels: binary labels, ``[N]`` or any shape, or a list of arrays (e.g. masks of
            differently sized images); None in a list means all good.
        scores: scores of the same shapes.

    Returns:
        AUROC in [0, 1], float64.

    Raises:
        ValueError: only one class present, shapes differ, or NaN scores.
    """
    pairs = _pairs(labels, scores, "labels", "scores")
    return _auroc(_gather(pairs, "scores"))


def f1_max(labels: Any, scores: Any) -> F1Max:
    """The best F1 over all thresholds.

    A sample is predicted anomalous when ``score >= threshold``; thresholds range over the
    distinct score values. Among thresholds with the same F1, the highest is returned.

    Args:
        labels: binary labels, or a list of arrays (see :func:`auroc`).
        scores: scores of the same shapes.

    Returns:
        ``(f1, threshold)``.

    Raises:
        ValueError: no anomalous sample, shapes differ, or NaN scores.
    """
    pairs = _pairs(labels, scores, "labels", "scores")
    return _f1_max(_gather(pairs, "scores"))


def confusion_at(labels: Any, scores: Any, threshold: float) -> Confusion:
    """Counts of the decision ``score >= threshold``.

    Args:
        labels: binary labels, or a list of arrays (see :func:`auroc`).
        scores: scores of the same shapes.
        threshold: the decision threshold, in score units.

    Returns:
        TP, FP, FN, TN counts, with ``precision``, ``recall``, ``f1`` properties.
    """
    threshold = _check_threshold(threshold, "threshold")
    pairs = _pairs(labels, scores, "labels", "scores")
    _raise_on_nan([score for _, score in pairs], "scores")

    tp = fp = n_pos = n_total = 0
    for label, score in pairs:
        alarm = score >= _cast_threshold(threshold, score.dtype)
        n_total += score.size
        if label is None:
            fp += int(np.count_nonzero(alarm))
            continue
        hits = int(np.count_nonzero(alarm & label))
        tp += hits
        fp += int(np.count_nonzero(alarm)) - hits
        n_pos += int(np.count_nonzero(label))
    return Confusion(tp, fp, n_pos - tp, n_total - n_pos - fp)


def f1_at(labels: Any, scores: Any, threshold: float) -> float:
    """F1 of the decision ``score >= threshold``; raises without anomalous samples."""
    return confusion_at(labels, scores, threshold).f1


def precision_at(labels: Any, scores: Any, threshold: float) -> float:
    """Precision of ``score >= threshold``; 0.0 when nothing is predicted anomalous."""
    return confusion_at(labels, scores, threshold).precision


def recall_at(labels: Any, scores: Any, threshold: float) -> float:
    """Recall of ``score >= threshold``; raises without anomalous samples."""
    return confusion_at(labels, scores, threshold).recall


def _label_regions(mask: np.ndarray | None, shape: tuple[int, ...]) -> tuple[np.ndarray, int]:
    """8-connected regions of a mask: ``([H, W] int32 region index, 0 = none), count``."""
    if mask is None or not mask.any():
        return np.zeros(shape, dtype=np.int32), 0
    region_map, count = ndimage.label(mask, structure=CONNECTIVITY_8)
    return region_map, int(count)


def _mask_map_pairs(
    masks: Any, anomaly_maps: Any, masks_name: str = "masks"
) -> list[tuple[np.ndarray | None, np.ndarray]]:
    mask_list = _as_images(masks, masks_name)
    map_list = _as_images(anomaly_maps, "anomaly_maps")
    if not map_list:
        raise ValueError("anomaly_maps: expected at least one [H, W] map, got none")
    return _pairs(mask_list, map_list, masks_name, "anomaly_maps", per_image=True)


def aupro(masks: Any, anomaly_maps: Any, fpr_limit: float = 0.3) -> float:
    """Normalised area under the per-region overlap (PRO) curve up to a false-positive rate.

    As in the MVTec AD evaluation: at threshold t, PRO(t) is the mean over all defect regions
    (8-connected components of every mask) of the share of the region's pixels with score >= t,
    and FPR(t) is the share of good pixels (over all images) with score >= t. The curve joins
    the points of every distinct score, from (0, 0), linearly; it is integrated up to
    ``fpr_limit`` (interpolating the last segment) and divided by ``fpr_limit``.

    Args:
        masks: one ``[H, W]`` bool mask per image (None for an image without defects).
        anomaly_maps: one ``[H, W]`` score map per image, same shapes.
        fpr_limit: the upper FPR, in (0, 1].

    Returns:
        AUPRO in [0, 1]; a perfect detector gets 1, random scores about fpr_limit / 2.

    Raises:
        ValueError: no defect region, no good pixel, mismatching shapes, or NaN scores.
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit: expected a value in (0, 1], got {fpr_limit}")
    pairs = _mask_map_pairs(masks, anomaly_maps)
    regions = [_label_regions(label, score.shape) for label, score in pairs]
    return _aupro(_gather(pairs, "anomaly_maps", regions), fpr_limit)


def choose_threshold(labels: Any, scores: Any, quantile: float = 0.99) -> ThresholdChoice:
    """A decision threshold chosen on validation data.

    With anomalous samples, the F1-optimal threshold (:func:`f1_max`). Without any, the
    ``quantile`` of the good scores (an observed score, rounding the rank up), so that about a
    share ``1 - quantile`` of good samples raise an alarm; the rule is returned so that the
    report can say which one was used.

    Args:
        labels: binary labels, or a list of arrays (see :func:`auroc`).
        scores: scores of the same shapes.
        quantile: the quantile of good scores used without anomalies, in (0, 1].

    Returns:
        ``(value, rule)``.
    """
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile: expected a value in (0, 1], got {quantile}")
    pairs = _pairs(labels, scores, "labels", "scores")
    sorted_scores = _gather(pairs, "scores")

    if sorted_scores.positive.size > 0:
        return ThresholdChoice(_f1_max(sorted_scores).threshold, ThresholdRule.F1_MAX)
    negative = sorted_scores.negative
    if negative.size == 0:
        raise ValueError("labels and scores are empty; expected at least one sample")
    rank = min(int(math.ceil(quantile * (negative.size - 1))), negative.size - 1)
    logger.info("no anomalous samples: threshold is the %g quantile of good scores", quantile)
    return ThresholdChoice(float(negative[rank]), ThresholdRule.GOOD_QUANTILE)


# ---------------------------------------------------------------------------------------------
# Region-level metrics


def _recall_entry(found: int, total: int) -> dict[str, Any]:
    return {"found": found, "total": total, "recall": found / total if total else None}


def _defect_recall(
    pairs: Sequence[tuple[np.ndarray | None, np.ndarray]],
    regions: Sequence[tuple[np.ndarray, int]],
    threshold: float,
    min_fraction: float,
    defect_types: Sequence[str] | None,
) -> dict[str, Any]:
    found_of_type: dict[str, int] = {}
    total_of_type: dict[str, int] = {}
    for i, ((_, score), (region_map, count)) in enumerate(zip(pairs, regions, strict=True)):
        if count == 0:
            continue
        alarm = score >= _cast_threshold(threshold, score.dtype)
        hits = np.bincount(region_map[alarm], minlength=count + 1)[1:]
        size = np.bincount(region_map.ravel(), minlength=count + 1)[1:]
        found = int(np.count_nonzero(hits > min_fraction * size))
        kind = defect_types[i] if defect_types is not None else None
        found_of_type[kind] = found_of_type.get(kind, 0) + found
        total_of_type[kind] = total_of_type.get(kind, 0) + count

    result = _recall_entry(sum(found_of_type.values()), sum(total_of_type.values()))
    result["per_type"] = {}
    if defect_types is not None:
        for kind in sorted(set(defect_types)):
            entry = _recall_entry(found_of_type.get(kind, 0), total_of_type.get(kind, 0))
            if entry["total"]:
                result["per_type"][kind] = entry
    return result


def _check_defect_types(defect_types: Sequence[str] | None, n_images: int) -> None:
    if defect_types is not None and len(defect_types) != n_images:
        raise ValueError(
            f"defect_types has {len(defect_types)} entries but there are {n_images} images; "
            "expected one type per image"
        )


def _check_min_fraction(min_fraction: float) -> None:
    if not 0.0 <= min_fraction < 1.0:
        raise ValueError(f"min_fraction: expected a value in [0, 1), got {min_fraction}")


def defect_recall(
    masks: Any,
    anomaly_maps: Any,
    threshold: float,
    min_fraction: float = 0.0,
    defect_types: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Share of ground-truth defects that the anomaly maps find.

    The defects are the 8-connected components of each mask. A defect is found when more than
    ``min_fraction`` of its pixels have ``score >= threshold``; with the default 0 this means
    at least one pixel. An image with an empty mask contributes no defect.

    Args:
        masks: one ``[H, W]`` bool mask per image (None for an image without defects).
        anomaly_maps: one ``[H, W]`` score map per image, same shapes.
        threshold: the pixel threshold, in score units.
        min_fraction: the share of a defect's pixels that must exceed the threshold, in [0, 1).
        defect_types: one defect type per image (e.g. the sample labels), or None.

    Returns:
        ``{"found", "total", "recall", "per_type": {type: {"found", "total", "recall"}}}``;
        ``recall`` is None where there is no defect; ``per_type`` lists the types with
        defects and is empty without ``defect_types``.
    """
    threshold = _check_threshold(threshold, "threshold")
    _check_min_fraction(min_fraction)
    pairs = _mask_map_pairs(masks, anomaly_maps)
    _check_defect_types(defect_types, len(pairs))
    _raise_on_nan([score for _, score in pairs], "anomaly_maps", per_image=True)

    regions = [_label_regions(label, score.shape) for label, score in pairs]
    return _defect_recall(pairs, regions, threshold, min_fraction, defect_types)


def _rate(count: int, total: int) -> float | None:
    return count / total if total else None


def impurity_false_alarms(
    impurity_masks: Any,
    anomaly_maps: Any,
    image_scores: Any,
    labels: Any,
    pixel_threshold: float,
    image_threshold: float,
) -> dict[str, Any]:
    """How often impurities (stains, dust) on good images raise alarms.

    Only good images count: on a defective image an alarm may come from the defect. An
    impurity region (8-connected component of an impurity mask) is flagged when any of its
    pixels has ``score >= pixel_threshold``. A good image is a false alarm when its image score
    is ``>= image_threshold``; rates are given separately for good images with and without
    impurities.

    Args:
        impurity_masks: one ``[H, W]`` bool mask per image, None where there is none.
        anomaly_maps: one ``[H, W]`` score map per image.
        image_scores: ``[N]`` image scores.
        labels: ``[N]`` binary image labels (True = anomalous).
        pixel_threshold: threshold on the maps.
        image_threshold: threshold on the image scores.

    Returns:
        ``{"regions", "regions_flagged", "region_flag_rate", "images_with_impurities",
        "images_with_impurities_flagged", "false_positive_rate_with_impurities",
        "images_without_impurities", "images_without_impurities_flagged",
        "false_positive_rate_without_impurities"}``; a rate is None where its count is 0.
    """
    pixel_threshold = _check_threshold(pixel_threshold, "pixel_threshold")
    image_threshold = _check_threshold(image_threshold, "image_threshold")
    pairs = _mask_map_pairs(impurity_masks, anomaly_maps, "impurity_masks")
    image_labels, image_scores = _image_level(labels, image_scores, "labels", "image_scores")
    if image_scores.size != len(pairs):
        raise ValueError(
            f"image_scores has {image_scores.size} scores but anomaly_maps has {len(pairs)} "
            "maps; expected one score per map"
        )
    _raise_on_nan([image_scores] + [score for _, score in pairs], "scores")

    regions = flagged_regions = 0
    with_impurity = [0, 0]  # images, flagged
    without_impurity = [0, 0]
    for i, (impurity, score) in enumerate(pairs):
        if image_labels[i]:
            continue
        region_map, count = _label_regions(impurity, score.shape)
        counter = with_impurity if count else without_impurity
        counter[0] += 1
        counter[1] += int(image_scores[i] >= _cast_threshold(image_threshold, image_scores.dtype))
        if count:
            alarm = score >= _cast_threshold(pixel_threshold, score.dtype)
            hits = np.bincount(region_map[alarm], minlength=count + 1)[1:]
            regions += count
            flagged_regions += int(np.count_nonzero(hits))

    return {
        "regions": regions,
        "regions_flagged": flagged_regions,
        "region_flag_rate": _rate(flagged_regions, regions),
        "images_with_impurities": with_impurity[0],
        "images_with_impurities_flagged": with_impurity[1],
        "false_positive_rate_with_impurities": _rate(with_impurity[1], with_impurity[0]),
        "images_without_impurities": without_impurity[0],
        "images_without_impurities_flagged": without_impurity[1],
        "false_positive_rate_without_impurities": _rate(without_impurity[1], without_impurity[0]),
    }


# ---------------------------------------------------------------------------------------------
# Everything at once


def _at_threshold(confusion: Confusion) -> dict[str, float | None]:
    positives = confusion.true_positives + confusion.false_negatives
    negatives = confusion.false_positives + confusion.true_negatives
    return {
        "precision": confusion.precision,
        "recall": confusion.recall if positives else None,
        "f1": confusion.f1 if positives else None,
        "false_positive_rate": confusion.false_positive_rate if negatives else None,
    }


def _or_none(compute, what: str, notes: list[str]) -> Any:
    """Runs a metric; where it is undefined for these data, records why and returns None."""
    try:
        return compute()
    except UndefinedMetricError as e:
        notes.append(f"{what}: {e}")
        return None


def evaluate(
    image_labels: Any,
    image_scores: Any,
    masks: Any = None,
    anomaly_maps: Any = None,
    defect_types: Sequence[str] | None = None,
    image_threshold: float | None = None,
    pixel_threshold: float | None = None,
    fpr_limit: float = 0.3,
    min_fraction: float = 0.0,
) -> dict[str, Any]:
    """All image and pixel metrics of one split, as JSON-serialisable values.

    Pixel scores are gathered and sorted once and shared by pixel AUROC, pixel F1-max and
    AUPRO. A metric that is undefined for these data (e.g. AUROC on good images only) is None,
    with the reason in ``notes``. Metrics at a threshold are None unless the threshold is
    given; thresholds should come from the validation split (:func:`choose_threshold`).

    Args:
        image_labels: ``[N]`` binary image labels (True = anomalous).
        image_scores: ``[N]`` image scores.
        masks: one ``[H, W]`` bool mask per image (None for a good image), or None to skip
            pixel metrics.
        anomaly_maps: one ``[H, W]`` score map per image, or None to skip pixel metrics.
        defect_types: one label per image (e.g. ``"good"``, ``"crack"``) for per-type recall.
        image_threshold: threshold on image scores for F1, precision, recall and FPR.
        pixel_threshold: threshold on the maps for pixel F1 and defect-wise recall.
        fpr_limit: the FPR limit of AUPRO.
        min_fraction: see :func:`defect_recall`.

    Returns:
        A dict with ``image_auroc``, ``image_f1_max``, ``image_f1_max_threshold``,
        ``image_at_threshold`` ({precision, recall, f1, false_positive_rate}),
        ``pixel_auroc``, ``aupro``, ``pixel_f1_max``, ``pixel_f1_max_threshold``,
        ``pixel_at_threshold``, ``defect_recall`` (see :func:`defect_recall`), the thresholds,
        counts, ``notes`` and ``seconds`` (time taken).
    """
    start = time.perf_counter()
    notes: list[str] = []
    _check_min_fraction(min_fraction)
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit: expected a value in (0, 1], got {fpr_limit}")
    image_labels, image_scores = _image_level(
        image_labels, image_scores, "image_labels", "image_scores"
    )
    n_images = image_scores.size
    if n_images == 0:
        raise ValueError("image_scores: expected at least one image, got none")
    _check_defect_types(defect_types, n_images)

    images = _gather([(image_labels, image_scores)], "image_scores")
    image_f1 = _or_none(lambda: _f1_max(images), "image F1-max", notes)
    result: dict[str, Any] = {
        "n_images": n_images,
        "n_anomalous_images": int(images.positive.size),
        "image_auroc": _or_none(lambda: _auroc(images), "image AUROC", notes),
        "image_f1_max": image_f1.f1 if image_f1 else None,
        "image_f1_max_threshold": image_f1.threshold if image_f1 else None,
        "image_threshold": image_threshold,
        "image_at_threshold": None,
    }
    if image_threshold is not None:
        confusion = confusion_at(image_labels, image_scores, image_threshold)
        result["image_at_threshold"] = _at_threshold(confusion)

    if (masks is None) != (anomaly_maps is None):
        raise ValueError("masks and anomaly_maps: expected both or neither, got only one")
    if masks is not None:
        pairs = _mask_map_pairs(masks, anomaly_maps)
        if len(pairs) != n_images:
            raise ValueError(
                f"anomaly_maps has {len(pairs)} maps but image_scores has {n_images} scores; "
                "expected one map per image"
            )
        result.update(
            _pixel_metrics(pairs, defect_types, pixel_threshold, fpr_limit, min_fraction, notes)
        )

    result["notes"] = notes
    result["seconds"] = time.perf_counter() - start
    logger.debug("evaluate took %.2f s for %d images", result["seconds"], n_images)
    return result


def _pixel_metrics(
    pairs: Sequence[tuple[np.ndarray | None, np.ndarray]],
    defect_types: Sequence[str] | None,
    pixel_threshold: float | None,
    fpr_limit: float,
    min_fraction: float,
    notes: list[str],
) -> dict[str, Any]:
    regions = [_label_regions(label, score.shape) for label, score in pairs]
    pixels = _gather(pairs, "anomaly_maps", regions)
    pixel_f1 = _or_none(lambda: _f1_max(pixels), "pixel F1-max", notes)
    result: dict[str, Any] = {
        "n_pixels": int(pixels.positive.size + pixels.negative.size),
        "n_defect_pixels": int(pixels.positive.size),
        "n_defects": pixels.n_components,
        "pixel_auroc": _or_none(lambda: _auroc(pixels), "pixel AUROC", notes),
        "aupro": _or_none(lambda: _aupro(pixels, fpr_limit), "AUPRO", notes),
        "aupro_fpr_limit": fpr_limit,
        "pixel_f1_max": pixel_f1.f1 if pixel_f1 else None,
        "pixel_f1_max_threshold": pixel_f1.threshold if pixel_f1 else None,
        "pixel_threshold": pixel_threshold,
        "pixel_at_threshold": None,
        "defect_recall": None,
    }
    if pixel_threshold is not None:
        threshold = _check_threshold(pixel_threshold, "pixel_threshold")
        result["pixel_at_threshold"] = _at_threshold(_confusion_sorted(pixels, threshold))
        result["defect_recall"] = _defect_recall(
            pairs, regions, threshold, min_fraction, defect_types
        )
    return result


def _confusion_sorted(scores: _SortedScores, threshold: float) -> Confusion:
    n_pos, n_neg = scores.positive.size, scores.negative.size
    value = _cast_threshold(threshold, scores.negative.dtype)
    tp = n_pos - int(np.searchsorted(scores.positive, value, side="left"))
    fp = n_neg - int(np.searchsorted(scores.negative, value, side="left"))
    return Confusion(tp, fp, n_pos - tp, n_neg - fp)
