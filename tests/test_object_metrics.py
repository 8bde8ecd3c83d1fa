"""Object matching scores against hand-made label images with known answers and a
brute-force IoU count."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from unetkit.object_metrics import (
    THRESHOLDS,
    ap_at,
    f1_at,
    object_scores,
    pool_object_scores,
)

N = len(THRESHOLDS)


def blank(height: int = 10, width: int = 20) -> np.ndarray:
    return np.zeros((height, width), dtype=np.int32)


def two_squares() -> np.ndarray:
    """Two touching 4 x 4 objects, labels 1 and 2."""
    labels = blank()
    labels[2:6, 2:6] = 1
    labels[2:6, 6:10] = 2
    return labels


def test_thresholds_are_the_exact_decimals():
    assert THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def test_perfect_prediction_with_other_label_values():
    truth = two_squares()
    pred = np.where(truth == 1, 9, np.where(truth == 2, 4, 0))  # same objects, other ids
    s = object_scores(truth, pred)
    assert s["thresholds"] == list(THRESHOLDS)
    assert s["tp"] == [2] * N and s["fp"] == [0] * N and s["fn"] == [0] * N
    for name in ("precision", "recall", "f1", "ap"):
        assert s[name] == [1.0] * N
    assert s["pq"] == 1.0 and s["mean_matched_iou"] == 1.0 and s["matched_iou_sum"] == 2.0
    assert (s["true"], s["predicted"], s["merged"], s["split"]) == (2, 2, 0, 0)
    assert f1_at(s, 0.5) == 1.0 and ap_at(s, 0.95) == 1.0


def test_merge_two_true_objects_under_one_prediction():
    truth = two_squares()
    pred = (truth > 0).astype(np.int32)  # one object covering both: IoU 16 / 32 = 0.5
    s = object_scores(truth, pred)
    assert s["tp"] == [0] * N and s["fp"] == [1] * N and s["fn"] == [2] * N
    assert (s["true"], s["predicted"], s["merged"], s["split"]) == (2, 1, 2, 0)
    assert s["f1"][0] == 0.0 and s["ap"][0] == 0.0 and s["pq"] == 0.0
    assert math.isnan(s["mean_matched_iou"])


def test_merge_counts_every_true_object_in_the_shared_prediction():
    truth = blank()
    truth[1:3, 1:3], truth[1:3, 3:5], truth[1:3, 5:7] = 1, 2, 3
    truth[6:9, 10:14] = 4  # found on its own
    pred = blank()
    pred[1:3, 1:7] = 1
    pred[6:9, 10:14] = 2
    s = object_scores(truth, pred)
    assert s["merged"] == 3 and s["split"] == 0 and s["tp"][0] == 1


def test_half_inside_is_not_more_than_half():
    truth = two_squares()
    pred = blank()
    pred[2:6, 4:8] = 1  # exactly half of each true object: neither merged
    assert object_scores(truth, pred)["merged"] == 0


def test_split_one_true_object_into_two_halves():
    truth = blank()
    truth[2:6, 2:10] = 5
    pred = blank()
    pred[2:6, 2:6], pred[2:6, 6:10] = 1, 2  # each half has IoU 0.5 with the truth
    s = object_scores(truth, pred)
    assert s["tp"][0] == 0 and s["fn"][0] == 1 and s["fp"][0] == 2
    assert (s["true"], s["predicted"], s["merged"], s["split"]) == (1, 2, 0, 1)


def test_miss_is_a_false_negative():
    truth = two_squares()
    pred = np.where(truth == 1, 1, 0)
    s = object_scores(truth, pred)
    assert s["tp"] == [1] * N and s["fp"] == [0] * N and s["fn"] == [1] * N
    assert s["precision"][0] == 1.0 and s["recall"][0] == 0.5
    assert s["f1"][0] == pytest.approx(2 / 3) and s["ap"][0] == pytest.approx(0.5)
    assert s["pq"] == pytest.approx(1 / 1.5)


def test_extra_prediction_is_a_false_positive():
    truth = two_squares()
    pred = truth.copy()
    pred[7:9, 15:18] = 3
    s = object_scores(truth, pred)
    assert s["tp"] == [2] * N and s["fp"] == [1] * N and s["fn"] == [0] * N
    assert s["precision"][0] == pytest.approx(2 / 3) and s["recall"][0] == 1.0
    assert s["ap"][0] == pytest.approx(2 / 3) and s["f1"][0] == pytest.approx(0.8)


def test_partial_overlap_with_iou_0_6():
    truth, pred = blank(1, 10), blank(1, 10)
    truth[0, 0:8] = 1
    pred[0, 2:10] = 1  # intersection 6, union 10
    s = object_scores(truth, pred)
    assert s["tp"] == [1, 1] + [0] * (N - 2)  # IoU 0.6 > 0.5 and > 0.55, not > 0.6
    assert s["fp"] == [0, 0] + [1] * (N - 2) and s["fn"] == [0, 0] + [1] * (N - 2)
    assert s["ap"][:3] == [1.0, 1.0, 0.0]
    assert s["pq"] == pytest.approx(0.6) and s["mean_matched_iou"] == pytest.approx(0.6)
    assert f1_at(s, 0.6) == 0.0 and ap_at(s, 0.55) == 1.0


def test_empty_images_give_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = object_scores(blank(), blank())
        only_pred = object_scores(blank(), two_squares())
        only_truth = object_scores(two_squares(), blank())
        pooled = pool_object_scores([])
    for scores in (s, pooled):
        for name in ("precision", "recall", "f1", "ap"):
            assert all(math.isnan(v) for v in scores[name])
        assert math.isnan(scores["pq"]) and math.isnan(scores["mean_matched_iou"])
        assert scores["tp"] == [0] * N and scores["true"] == 0
    # Predictions but no truth: precision, F1, AP and PQ are 0, recall undefined.
    assert only_pred["precision"][0] == 0.0 and math.isnan(only_pred["recall"][0])
    assert only_pred["f1"][0] == 0.0 and only_pred["ap"][0] == 0.0 and only_pred["pq"] == 0.0
    assert math.isnan(only_truth["precision"][0]) and only_truth["recall"][0] == 0.0


def test_pooling_sums_counts_before_the_ratios():
    truth_a = two_squares()
    first = object_scores(truth_a, truth_a)  # 2 TP
    truth_b, pred_b = blank(2, 10), blank(2, 10)
    truth_b[0, 0:8], pred_b[0, 2:10] = 1, 1  # IoU 0.6
    pred_b[1, 0], pred_b[1, 5] = 2, 3  # two false positives
    second = object_scores(truth_b, pred_b)  # 1 TP, 2 FP
    pooled = pool_object_scores([first, second])
    for name in ("tp", "fp", "fn"):
        assert pooled[name] == [a + b for a, b in zip(first[name], second[name])]
    for name in ("true", "predicted", "merged", "split", "matched_iou_sum"):
        assert pooled[name] == pytest.approx(first[name] + second[name])
    # At 0.5: TP 3, FP 2, FN 0 -- not the mean of the per-image ratios (1 and 1/3).
    assert pooled["ap"][0] == pytest.approx(3 / 5)
    assert pooled["f1"][0] == pytest.approx(6 / 8)
    assert pooled["recall"][0] == 1.0 and pooled["precision"][0] == pytest.approx(3 / 5)
    assert pooled["pq"] == pytest.approx((2 + 0.6) / (3 + 2 / 2))
    assert pooled["mean_matched_iou"] == pytest.approx((2 + 0.6) / 3)
    # From 0.6 on, image b's match is gone: TP 2, FP 3, FN 1.
    assert pooled["ap"][2] == pytest.approx(2 / 6)


def brute_force_tp(truth: np.ndarray, pred: np.ndarray, threshold: float) -> int:
    """Pairs with IoU > threshold, every pair tried object by object."""
    count = 0
    for t in np.unique(truth[truth > 0]):
        for p in np.unique(pred[pred > 0]):
            a, b = truth == t, pred == p
            if (a & b).sum() / (a | b).sum() > threshold:
                count += 1
    return count


def test_matches_a_brute_force_count_on_demo_nuclei():
    from unetkit.data.synthetic import make_nuclei

    _, _, truth = make_nuclei(96, seed=4)
    pred = np.roll(truth, (1, 2), axis=(0, 1))  # shifted: partial overlaps of every size
    pred[pred == 3] = 0  # one missed object
    s = object_scores(truth, pred)
    for index, threshold in enumerate(THRESHOLDS):
        assert s["tp"][index] == brute_force_tp(truth, pred, threshold)
    assert s["true"] == len(np.unique(truth)) - 1
    assert s["predicted"] == len(np.unique(pred)) - 1


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        object_scores(blank(10, 20), blank(10, 21))
    with pytest.raises(ValueError, match="integer"):
        object_scores(blank().astype(float), blank())
    with pytest.raises(ValueError, match="threshold"):
        f1_at(object_scores(blank(), blank()), 0.52)
