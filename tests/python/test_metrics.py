"""Tests of seqpatchcore.metrics against scikit-learn, brute-force references and hand counts."""

import json
from collections import deque

import numpy as np
import pytest
from sklearn.metrics import (
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)

from seqpatchcore import metrics

# ---------------------------------------------------------------------------------------------
# Independent references


def reference_regions(mask):
    """8-connected regions by breadth-first search: a list of [(y, x), ...] per region."""
    mask = np.asarray(mask, dtype=bool)
    seen = np.zeros_like(mask)
    regions = []
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        seen[start] = True
        queue = deque([start])
        pixels = []
        while queue:
            y, x = queue.popleft()
            pixels.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    inside = 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1]
                    if inside and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
        regions.append(pixels)
    return regions


def reference_aupro(masks, maps, fpr_limit):
    """The PRO curve threshold by threshold, integrated with the trapezoid rule."""
    regions = [(i, pixels) for i, mask in enumerate(masks) for pixels in reference_regions(mask)]
    n_good = sum(int((~m).sum()) for m in masks)
    thresholds = np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]

    points = [(0.0, 0.0)]
    for t in thresholds:
        false_alarms = sum(int(((mp >= t) & ~mk).sum()) for mk, mp in zip(masks, maps, strict=True))
        overlaps = [np.mean([maps[i][y, x] >= t for y, x in pixels]) for i, pixels in regions]
        points.append((false_alarms / n_good, float(np.mean(overlaps))))

    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:
            y_at_limit = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            area += (fpr_limit - x0) * (y0 + y_at_limit) / 2
            break
        area += (x1 - x0) * (y0 + y1) / 2
    return area / fpr_limit


def reference_defect_recall(masks, maps, threshold, min_fraction):
    found = total = 0
    for mask, score in zip(masks, maps, strict=True):
        for pixels in reference_regions(mask):
            hits = sum(score[y, x] >= threshold for y, x in pixels)
            total += 1
            found += hits / len(pixels) > min_fraction
    return found, total


def sklearn_f1_max(labels, scores):
    """Best F1 and the highest threshold attaining it, from precision_recall_curve."""
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    precision, recall = precision[:-1], recall[:-1]
    denominator = np.where(precision + recall > 0, precision + recall, 1.0)
    f1 = 2 * precision * recall / denominator
    best = f1.max()
    return best, thresholds[f1 >= best - 1e-12].max()


def random_maps(rng, sizes, ties=False):
    """Masks with a few blobs and maps that score the blobs higher, for the given (H, W)."""
    masks, maps = [], []
    for h, w in sizes:
        mask = rng.random((h, w)) < 0.15
        mask[: h // 3, : w // 3] = rng.random() < 0.5
        score = rng.random((h, w)) + 0.4 * mask
        if ties:
            score = np.round(score * 4) / 4
        masks.append(mask)
        maps.append(score.astype(np.float32))
    return masks, maps


# ---------------------------------------------------------------------------------------------
# AUROC


def test_auroc_hand_example():
    # Pairs (positive, negative): (0.35, 0.1) yes, (0.35, 0.4) no, (0.8, *) yes: 3 of 4.
    assert metrics.auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    # A tie counts half.
    assert metrics.auroc([0, 1], [0.5, 0.5]) == 0.5
    assert metrics.auroc([False, True, True], [1.0, 1.0, 2.0]) == 0.75


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("levels", [None, 20, 2])
def test_auroc_matches_sklearn(seed, levels):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 3000))
    labels = rng.random(n) < rng.uniform(0.05, 0.9)
    labels[:2] = [True, False]
    scores = rng.normal(size=n) + labels * rng.uniform(0, 2)
    if levels is not None:
        scores = np.floor(scores * levels / 8)  # heavy ties
    assert metrics.auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auroc_large_with_ties_matches_sklearn():
    rng = np.random.default_rng(7)
    labels = rng.random(1_000_000) < 0.03
    scores = np.round(rng.random(1_000_000) + 0.2 * labels, 3).astype(np.float32)
    assert metrics.auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auroc_of_differently_sized_maps_equals_flat():
    rng = np.random.default_rng(3)
    masks, maps = random_maps(rng, [(5, 7), (9, 4), (3, 3)])
    masks[2] = None  # a good image without a mask
    flat_labels = np.concatenate([np.zeros(9, bool) if m is None else m.ravel() for m in masks])
    flat_scores = np.concatenate([m.ravel() for m in maps])
    assert metrics.auroc(masks, maps) == pytest.approx(roc_auc_score(flat_labels, flat_scores))


def test_auroc_errors():
    with pytest.raises(metrics.UndefinedMetricError, match="one class only"):
        metrics.auroc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="one class only"):
        metrics.auroc(np.zeros(4, bool), np.arange(4.0))
    with pytest.raises(ValueError, match="NaN"):
        metrics.auroc([0, 1, 0], [0.1, np.nan, 0.3])
    with pytest.raises(ValueError, match=r"shape \(3,\).*shape \(4,\)"):
        metrics.auroc([0, 1, 0], [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match="binary labels"):
        metrics.auroc(np.array([0, 255, 0], np.uint8), [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="2 arrays but scores has 1"):
        metrics.auroc([np.zeros(2, bool), np.ones(2, bool)], [np.zeros(2)])
    with pytest.raises(TypeError, match="real-valued"):
        metrics.auroc([0, 1], np.array(["a", "b"]))


def test_auroc_accepts_infinite_scores():
    assert metrics.auroc([0, 1, 0, 1], [-np.inf, np.inf, 0.0, 1.0]) == 1.0


# ---------------------------------------------------------------------------------------------
# F1


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [False, True])
def test_f1_max_matches_sklearn(seed, ties):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(5, 2000))
    labels = rng.random(n) < rng.uniform(0.05, 0.6)
    labels[0] = True
    scores = rng.random(n) + labels * rng.uniform(0, 0.8)
    if ties:
        scores = np.round(scores * 5)
    expected_f1, expected_threshold = sklearn_f1_max(labels, scores)

    f1, threshold = metrics.f1_max(labels, scores)

    assert f1 == pytest.approx(expected_f1, abs=1e-12)
    assert threshold == expected_threshold
    assert f1_score(labels, scores >= threshold) == pytest.approx(f1, abs=1e-12)


def test_f1_max_hand_example():
    # At threshold 0.8: TP 1, FP 0, FN 1 -> 2/3; at 0.35: TP 2, FP 1 -> 0.8; at 0.1: 2*2/(4+2).
    f1, threshold = metrics.f1_max([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert (f1, threshold) == (pytest.approx(0.8), 0.35)
    # F1 ties between 0.9 (TP 1, FP 0: 2/3) and 0.7 (TP 2, FP 2: 2/3): the higher wins.
    assert metrics.f1_max([1, 0, 0, 1], [0.9, 0.8, 0.75, 0.7]) == (pytest.approx(2 / 3), 0.9)


def test_f1_max_without_anomalies_is_undefined():
    with pytest.raises(metrics.UndefinedMetricError, match="without anomalous"):
        metrics.f1_max([0, 0], [0.1, 0.2])


@pytest.mark.parametrize("seed", range(3))
def test_scores_at_threshold_match_sklearn(seed):
    rng = np.random.default_rng(200 + seed)
    labels = rng.random(500) < 0.3
    scores = np.round(rng.random(500), 2)
    threshold = float(np.quantile(scores, 0.6))
    predicted = scores >= threshold

    assert metrics.f1_at(labels, scores, threshold) == pytest.approx(f1_score(labels, predicted))
    assert metrics.precision_at(labels, scores, threshold) == pytest.approx(
        precision_score(labels, predicted)
    )
    assert metrics.recall_at(labels, scores, threshold) == pytest.approx(
        recall_score(labels, predicted)
    )
    confusion = metrics.confusion_at(labels, scores, threshold)
    assert confusion.false_positives == int((predicted & ~labels).sum())
    assert confusion.true_negatives == int((~predicted & ~labels).sum())


def test_threshold_between_float32_values_is_exact():
    # 0.1 rounds to a float32 above 0.1: a threshold just above that float32 value must not
    # flag a score equal to it, as rounding the threshold to nearest would.
    value = np.float32(0.1)
    threshold = float(np.nextafter(float(value), 1.0))
    scores = np.array([value, value, np.float32(0.5)], dtype=np.float32)
    labels = np.array([True, False, True])
    confusion = metrics.confusion_at(labels, scores, threshold)
    assert (confusion.true_positives, confusion.false_positives) == (1, 0)

    masks = [np.array([[True, False]]), np.array([[True, False]])]
    maps = [np.array([[value, value]], np.float32), np.array([[0.5, 0.0]], np.float32)]
    assert metrics.defect_recall(masks, maps, threshold)["found"] == 1
    result = metrics.evaluate([1, 1], [0.1, 0.5], masks, maps, pixel_threshold=threshold)
    assert result["pixel_at_threshold"]["recall"] == 0.5


def test_precision_without_alarms_is_zero_and_recall_needs_anomalies():
    assert metrics.precision_at([0, 1], [0.1, 0.2], 1.0) == 0.0
    with pytest.raises(ValueError, match="without anomalous"):
        metrics.recall_at([0, 0], [0.1, 0.2], 0.5)
    with pytest.raises(ValueError, match="threshold: expected a number, got NaN"):
        metrics.f1_at([0, 1], [0.1, 0.2], float("nan"))


# ---------------------------------------------------------------------------------------------
# AUPRO


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0])
def test_aupro_matches_brute_force(seed, ties, fpr_limit):
    rng = np.random.default_rng(300 + seed)
    masks, maps = random_maps(rng, [(6, 9), (8, 5), (4, 4)], ties=ties)
    masks[0][2, 2] = True  # at least one region
    expected = reference_aupro(masks, maps, fpr_limit)
    assert metrics.aupro(masks, maps, fpr_limit) == pytest.approx(expected, abs=1e-12)


def test_aupro_hand_values():
    masks = [np.array([[1, 1, 0, 0], [0, 0, 0, 1]], bool)]
    # A perfect detector reaches PRO 1 at FPR 0.
    perfect = [masks[0].astype(np.float32)]
    assert metrics.aupro(masks, perfect) == pytest.approx(1.0)
    # Constant scores: one step from (0, 0) to (1, 1); the area up to 0.3 is 0.3^2 / 2.
    constant = [np.ones((2, 4), np.float32)]
    assert metrics.aupro(masks, constant) == pytest.approx(0.15)
    # Inverted detector: defects only found once every good pixel is flagged.
    assert metrics.aupro(masks, [1.0 - perfect[0]]) == 0.0


def test_aupro_regions_are_8_connected():
    # The diagonal is one region under 8-connectivity. The detector finds only its first
    # pixel (1/3 of the region) and the single pixel on the right (1 region).
    mask = np.zeros((4, 6), bool)
    mask[0, 0] = mask[1, 1] = mask[2, 2] = True
    mask[0, 5] = True
    score = np.zeros((4, 6), np.float32)
    score[0, 0] = score[0, 5] = 1.0
    # At threshold 1: FPR 0 and PRO (1/3 + 1) / 2; it stays so until FPR 1.
    expected = (1 / 3 + 1) / 2
    assert metrics.aupro([mask], [score], fpr_limit=0.3) == pytest.approx(
        (0.3 * expected + 0.3 * (0.3 / 1.0) * (1 - expected) / 2) / 0.3
    )
    assert metrics.aupro([mask], [score]) == pytest.approx(reference_aupro([mask], [score], 0.3))


def test_aupro_errors():
    with pytest.raises(metrics.UndefinedMetricError, match="without defect regions"):
        metrics.aupro([np.zeros((3, 3), bool)], [np.zeros((3, 3))])
    with pytest.raises(ValueError, match=r"masks\[1\] has shape \(3, 3\).*\(3, 4\)"):
        metrics.aupro(
            [np.ones((2, 2), bool), np.ones((3, 3), bool)], [np.zeros((2, 2)), np.zeros((3, 4))]
        )
    with pytest.raises(ValueError, match="fpr_limit"):
        metrics.aupro([np.eye(3, dtype=bool)], [np.zeros((3, 3))], fpr_limit=0.0)
    with pytest.raises(ValueError, match=r"anomaly_maps\[0\] contains NaN"):
        metrics.aupro([np.eye(3, dtype=bool)], [np.full((3, 3), np.nan)])
    with pytest.raises(ValueError, match="at least one"):
        metrics.aupro([], [])


# ---------------------------------------------------------------------------------------------
# Defect-wise recall


def hand_mask():
    """Three defects under 8-connectivity: a 2x2 block, a 3-pixel diagonal, a single pixel."""
    mask = np.zeros((6, 8), bool)
    mask[0:2, 0:2] = True
    mask[3, 3] = mask[4, 4] = mask[5, 5] = True
    mask[0, 7] = True
    return mask


def test_defect_recall_hand_made():
    mask = hand_mask()
    score = np.zeros(mask.shape, np.float32)
    score[0, 0] = 0.9  # one pixel of the block
    score[5, 5] = 0.5  # one pixel of the diagonal, below the threshold

    result = metrics.defect_recall([mask], [score], threshold=0.8)
    assert (result["found"], result["total"]) == (1, 3)
    assert result["recall"] == pytest.approx(1 / 3)
    assert result["per_type"] == {}

    # The diagonal is found at threshold 0.5; the single pixel never.
    assert metrics.defect_recall([mask], [score], threshold=0.5)["found"] == 2


def test_defect_recall_min_fraction():
    mask = hand_mask()
    score = np.zeros(mask.shape)
    score[0, 0] = 1.0  # 1 of 4 block pixels
    score[3, 3] = score[4, 4] = 1.0  # 2 of 3 diagonal pixels
    found = [
        metrics.defect_recall([mask], [score], 1.0, min_fraction=f)["found"]
        for f in (0.0, 0.25, 0.5, 0.66, 2 / 3)
    ]
    # More than 25% is not met by 1/4; more than 2/3 is not met by 2/3.
    assert found == [2, 1, 1, 1, 0]
    with pytest.raises(ValueError, match="min_fraction"):
        metrics.defect_recall([mask], [score], 1.0, min_fraction=1.0)


def test_defect_recall_per_type_and_empty_mask():
    block = np.zeros((4, 4), bool)
    block[1:3, 1:3] = True
    two_spots = np.zeros((5, 3), bool)
    two_spots[0, 0] = two_spots[4, 2] = True
    masks = [block, two_spots, np.zeros((3, 3), bool), None]
    maps = [block * 1.0, np.zeros((5, 3)), np.ones((3, 3)), np.ones((2, 2))]
    maps[1][4, 2] = 1.0
    types = ["crack", "blowhole", "uneven", "good"]

    result = metrics.defect_recall(masks, maps, 0.5, defect_types=types)

    # The empty "uneven" mask contributes no defect; good images none either.
    assert (result["found"], result["total"]) == (2, 3)
    assert result["per_type"] == {
        "blowhole": {"found": 1, "total": 2, "recall": 0.5},
        "crack": {"found": 1, "total": 1, "recall": 1.0},
    }
    with pytest.raises(ValueError, match="defect_types has 2 entries but there are 4 images"):
        metrics.defect_recall(masks, maps, 0.5, defect_types=types[:2])


@pytest.mark.parametrize("seed", range(4))
def test_defect_recall_matches_brute_force(seed):
    rng = np.random.default_rng(400 + seed)
    masks, maps = random_maps(rng, [(7, 9), (5, 5), (9, 4)])
    for min_fraction in (0.0, 0.3, 0.6):
        result = metrics.defect_recall(masks, maps, 0.9, min_fraction=min_fraction)
        expected = reference_defect_recall(masks, maps, 0.9, min_fraction)
        assert (result["found"], result["total"]) == expected


def test_defect_recall_without_defects_has_no_recall():
    result = metrics.defect_recall([np.zeros((2, 2), bool)], [np.ones((2, 2))], 0.5)
    assert result == {"found": 0, "total": 0, "recall": None, "per_type": {}}


# ---------------------------------------------------------------------------------------------
# Thresholds and impurities


def test_choose_threshold_with_anomalies_is_f1_optimal():
    rng = np.random.default_rng(5)
    labels = rng.random(300) < 0.2
    scores = rng.random(300) + labels
    choice = metrics.choose_threshold(labels, scores)
    assert choice.rule is metrics.ThresholdRule.F1_MAX
    assert choice.value == sklearn_f1_max(labels, scores)[1]


def test_choose_threshold_without_anomalies_uses_good_quantile():
    rng = np.random.default_rng(6)
    scores = rng.permutation(np.arange(1000.0))
    choice = metrics.choose_threshold(np.zeros(1000, bool), scores, quantile=0.99)
    assert choice.rule == "good_quantile"
    assert choice.value == np.quantile(scores, 0.99, method="higher")
    # About 1% of the good samples raise an alarm.
    assert (scores >= choice.value).sum() == 10
    with pytest.raises(ValueError, match="quantile"):
        metrics.choose_threshold([0, 0], [1.0, 2.0], quantile=1.5)


def test_impurity_false_alarms_hand_made():
    stain = np.zeros((4, 5), bool)
    stain[0, 0] = True  # region 1
    stain[2:4, 3:5] = True  # region 2
    impurity_masks = [stain, stain, None, stain]
    maps = [np.zeros((4, 5)) for _ in range(4)]
    maps[0][3, 4] = 1.0  # flags region 2 of image 0
    maps[3][:] = 1.0  # image 3 is defective: ignored
    image_scores = np.array([0.7, 0.2, 0.9, 1.0])
    labels = np.array([0, 0, 0, 1])

    result = metrics.impurity_false_alarms(
        impurity_masks, maps, image_scores, labels, pixel_threshold=0.5, image_threshold=0.6
    )

    assert result == {
        "regions": 4,
        "regions_flagged": 1,
        "region_flag_rate": 0.25,
        "images_with_impurities": 2,
        "images_with_impurities_flagged": 1,
        "false_positive_rate_with_impurities": 0.5,
        "images_without_impurities": 1,
        "images_without_impurities_flagged": 1,
        "false_positive_rate_without_impurities": 1.0,
    }
    with pytest.raises(ValueError, match="image_scores has 3 scores but anomaly_maps has 4"):
        metrics.impurity_false_alarms(impurity_masks, maps, image_scores[:3], labels[:3], 0.5, 0.6)


# ---------------------------------------------------------------------------------------------
# evaluate


def small_split(seed):
    rng = np.random.default_rng(seed)
    sizes = [(6, 8), (9, 5), (7, 7), (5, 10), (8, 6), (4, 4)]
    masks, maps = random_maps(rng, sizes)
    masks[0][:] = False  # good
    masks[1][:] = False  # good
    masks[2][:] = False  # defective with an empty mask, like 4 "uneven" tiles
    masks[3][1, 1] = True
    labels = np.array([0, 0, 1, 1, 1, 1])
    scores = np.array([m.max() for m in maps])
    types = ["good", "good", "uneven", "crack", "crack", "blowhole"]
    return labels, scores, masks, maps, types


def test_evaluate_agrees_with_the_single_metrics():
    labels, scores, masks, maps, types = small_split(11)
    flat_masks = np.concatenate([m.ravel() for m in masks])
    flat_maps = np.concatenate([m.ravel() for m in maps])

    result = metrics.evaluate(
        labels, scores, masks, maps, types, image_threshold=1.2, pixel_threshold=1.0
    )

    json.dumps(result, allow_nan=False)
    assert result["image_auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert result["pixel_auroc"] == pytest.approx(roc_auc_score(flat_masks, flat_maps))
    assert result["aupro"] == pytest.approx(reference_aupro(masks, maps, 0.3))
    assert result["image_f1_max"] == pytest.approx(sklearn_f1_max(labels, scores)[0])
    f1, threshold = sklearn_f1_max(flat_masks, flat_maps)
    assert result["pixel_f1_max"] == pytest.approx(f1)
    assert result["pixel_f1_max_threshold"] == threshold
    assert result["image_at_threshold"]["f1"] == pytest.approx(f1_score(labels, scores >= 1.2))
    assert result["pixel_at_threshold"]["f1"] == pytest.approx(
        f1_score(flat_masks, flat_maps >= 1.0)
    )
    found, total = reference_defect_recall(masks, maps, 1.0, 0.0)
    assert (result["defect_recall"]["found"], result["defect_recall"]["total"]) == (found, total)
    assert "uneven" not in result["defect_recall"]["per_type"]
    assert result["n_pixels"] == flat_maps.size
    assert result["n_defect_pixels"] == int(flat_masks.sum())
    assert result["notes"] == []


def test_evaluate_on_good_images_only_reports_undefined_metrics():
    maps = [np.random.default_rng(1).random((4, 4)) for _ in range(3)]
    result = metrics.evaluate(
        np.zeros(3, bool),
        [0.1, 0.2, 0.3],
        [None] * 3,
        maps,
        image_threshold=0.15,
        pixel_threshold=0.5,
    )
    json.dumps(result, allow_nan=False)
    assert result["image_auroc"] is None and result["pixel_auroc"] is None
    assert result["aupro"] is None and result["image_f1_max"] is None
    assert any("image AUROC" in note for note in result["notes"])
    assert result["image_at_threshold"]["false_positive_rate"] == pytest.approx(2 / 3)
    assert result["image_at_threshold"]["recall"] is None
    assert result["defect_recall"]["total"] == 0


def test_evaluate_errors():
    labels, scores, masks, maps, types = small_split(12)
    maps[4] = maps[4][:, :-1]
    with pytest.raises(ValueError, match=r"masks\[4\] has shape \(8, 6\).*\(8, 5\)"):
        metrics.evaluate(labels, scores, masks, maps)
    with pytest.raises(ValueError, match="4 maps but image_scores has 6"):
        metrics.evaluate(labels, scores, masks[:4], maps[:4])
    with pytest.raises(ValueError, match="image_labels and image_scores"):
        metrics.evaluate(labels[:5], scores)
    with pytest.raises(ValueError, match="at least one image"):
        metrics.evaluate([], [])
    with pytest.raises(ValueError, match="both or neither"):
        metrics.evaluate(labels, scores, masks=masks)
    nan_maps = [m.copy() for m in small_split(12)[3]]
    nan_maps[2][0, 0] = np.nan
    with pytest.raises(ValueError, match=r"anomaly_maps\[2\] contains NaN"):
        metrics.evaluate(labels, scores, masks, nan_maps)
    with pytest.raises(ValueError, match="image_scores contains NaN"):
        metrics.evaluate(labels, np.r_[scores[:-1], np.nan])


