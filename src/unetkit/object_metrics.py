"""Object-level scores: how many objects were found, split, merged or missed.

Inputs are two (H, W) integer label images, truth and prediction, 0 = background and
every other value one object (objects do not overlap: one label per pixel).

Definitions (the ones docs/objects.md states):

* IoU of a true object T and a predicted object P: |T and P| / |T or P| in pixels. All
  overlapping pairs are scored at once from the contingency of (true label, predicted
  label) pixel pairs.
* Matching at threshold t: P matches T when IoU(T, P) > t (strictly greater, as in the
  Data Science Bowl 2018). For t >= 0.5 a match is unique, so no assignment algorithm is
  needed: IoU > 0.5 means |T and P| > |T or P| / 2 >= |T| / 2, and two disjoint predicted
  objects cannot both cover more than half of T (likewise for two true objects and one P).
* At each t in :data:`THRESHOLDS` (0.5, 0.55, ..., 0.95): TP = matched pairs, FP =
  predicted objects without a match, FN = true objects without a match; precision =
  TP / (TP + FP), recall = TP / (TP + FN), F1 = 2 TP / (2 TP + FP + FN) and
  AP = TP / (TP + FP + FN), the "average precision" of the DSB 2018 as StarDist and
  Cellpose report it (a misnomer: it is the critical success index, not the area under a
  precision-recall curve).
* Panoptic quality PQ = (sum of the matched IoUs at t = 0.5) / (TP + FP / 2 + FN / 2),
  i.e. F1 at 0.5 times the mean matched IoU at 0.5 (Kirillov et al. 2019).
* Merged: a true object T is merged when more than half of T's area lies inside one
  predicted object P and more than half of at least one other true object's area lies in
  the same P. The count is the number of such true objects (one prediction swallowing two
  nuclei counts 2).
* Split: a true object T is split when at least two predicted objects each have more than
  half of their own area inside T. The count is the number of such true objects.
  (More than half: each object is then assigned to at most one partner, as above.)

Undefined ratios (0 / 0, e.g. recall when there are no true objects, or everything on an
image with neither true nor predicted objects) are NaN, as for absent classes in
:mod:`unetkit.metrics`: such an image says nothing about the score, and NaN keeps it out
of a nanmean instead of pretending it was perfect (1) or wrong (0). StarDist reports 0 there.

Data sets are scored with :func:`pool_object_scores`: counts are summed over images and the
ratios computed once from the sums, so every object weighs the same wherever it lies (like
the summed confusion matrix of :mod:`unetkit.metrics`, and StarDist's matching_dataset),
and an image with few objects cannot swing the result.
"""

from __future__ import annotations

import math

import numpy as np

# 0.5, 0.55, ..., 0.95 as the exact decimals (0.5 + 0.05 * 2 would be 0.6000000000000001).
THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))

_COUNTS = ("true", "predicted", "merged", "split", "matched_iou_sum")


def _checked(labels: np.ndarray, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype.kind not in "biu":
        raise ValueError(f"{name}: expected integer labels, got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"{name}: labels must be >= 0 (0 = background), found {labels.min()}")
    return labels.ravel()


def _compact(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels renumbered 0 (background) and 1..N in order, and N."""
    values, compact = np.unique(labels, return_inverse=True)
    if values.size and values[0] != 0:  # no background pixel
        compact = compact + 1
        return compact, len(values)
    return compact, max(len(values) - 1, 0)


def _pairs(truth: np.ndarray, pred: np.ndarray):
    """Overlapping (true, predicted) object pairs: compact ids, intersection, both areas.

    One np.unique over combined codes t * (P + 1) + p: memory grows with the number of
    pixels, not with (number of true objects) x (number of predicted objects).
    """
    t_ids, n_true = _compact(truth)
    p_ids, n_pred = _compact(pred)
    t_area = np.bincount(t_ids, minlength=n_true + 1)
    p_area = np.bincount(p_ids, minlength=n_pred + 1)
    codes, inter = np.unique(t_ids.astype(np.int64) * (n_pred + 1) + p_ids, return_counts=True)
    t_pair, p_pair = np.divmod(codes, n_pred + 1)
    both = (t_pair > 0) & (p_pair > 0)  # drop pairs with background
    t_pair, p_pair, inter = t_pair[both], p_pair[both], inter[both]
    return t_pair, p_pair, inter, t_area, p_area, n_true, n_pred


def _counts(truth: np.ndarray, pred: np.ndarray) -> dict:
    """Raw counts of one image: tp (per threshold), true, predicted, merged, split and the
    sum of the matched IoUs at 0.5."""
    t_pair, p_pair, inter, t_area, p_area, n_true, n_pred = _pairs(truth, pred)
    iou = inter / (t_area[t_pair] + p_area[p_pair] - inter)
    tp = np.array([(iou > t).sum() for t in THRESHOLDS], dtype=np.int64)
    # Merged: true objects that have more than half of their area in a shared prediction.
    most_of_true = 2 * inter > t_area[t_pair]
    merged_pred = np.bincount(p_pair[most_of_true], minlength=n_pred + 1) >= 2
    merged = int(merged_pred[p_pair[most_of_true]].sum())
    # Split: true objects holding more than half of each of two or more predictions.
    most_of_pred = 2 * inter > p_area[p_pair]
    split = int((np.bincount(t_pair[most_of_pred], minlength=n_true + 1) >= 2).sum())
    return {
        "tp": tp,
        "true": n_true,
        "predicted": n_pred,
        "merged": merged,
        "split": split,
        "matched_iou_sum": float(iou[iou > THRESHOLDS[0]].sum()),
    }


def _ratio(numerator, denominator):
    """numerator / denominator element-wise, NaN where the denominator is 0 (no warning)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.full(np.broadcast(numerator, denominator).shape, math.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _scores(counts: dict) -> dict:
    """The result dict of :func:`object_scores` from raw counts (one image or pooled)."""
    tp = np.asarray(counts["tp"], dtype=np.int64)
    fp = counts["predicted"] - tp
    fn = counts["true"] - tp
    iou_sum = counts["matched_iou_sum"]
    return {
        "thresholds": list(THRESHOLDS),
        "tp": tp.tolist(),
        "fp": fp.tolist(),
        "fn": fn.tolist(),
        "precision": _ratio(tp, tp + fp).tolist(),
        "recall": _ratio(tp, tp + fn).tolist(),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn).tolist(),
        "ap": _ratio(tp, tp + fp + fn).tolist(),
        "pq": float(_ratio(iou_sum, tp[0] + (fp[0] + fn[0]) / 2)),
        "mean_matched_iou": float(_ratio(iou_sum, tp[0])),
        **{name: counts[name] for name in _COUNTS},
    }


def object_scores(truth: np.ndarray, pred: np.ndarray) -> dict:
    """Object scores of one image (definitions in the module docstring).

    Args:
        truth, pred: integer label images of the same shape, 0 = background.

    Returns:
        {"thresholds": [0.5, ..., 0.95], and per threshold the lists "tp", "fp", "fn"
        (ints), "precision", "recall", "f1", "ap" (floats, NaN for 0/0); "pq" and
        "mean_matched_iou" at t = 0.5 (floats); the ints "true", "predicted", "merged",
        "split"; and "matched_iou_sum" (float, for pooling)}. Index i of a list belongs to
        thresholds[i]: ``scores["f1"][0]`` is F1 at 0.5 (or use :func:`f1_at`).
    """
    truth_flat, pred_flat = _checked(truth, "truth"), _checked(pred, "pred")
    if np.shape(truth) != np.shape(pred):
        raise ValueError(
            f"truth shape {np.shape(truth)} does not match prediction shape {np.shape(pred)}"
        )
    return _scores(_counts(truth_flat, pred_flat))


def pool_object_scores(per_image: list[dict]) -> dict:
    """Scores of a data set from the :func:`object_scores` of its images.

    TP, FP, FN, the object counts and the matched-IoU sum are summed over images, then the
    ratios are computed once from the sums (every object counts the same; see the module
    docstring). An empty list gives zero counts and NaN ratios.
    """
    totals: dict = {"tp": np.zeros(len(THRESHOLDS), dtype=np.int64), "matched_iou_sum": 0.0}
    totals.update({name: 0 for name in ("true", "predicted", "merged", "split")})
    for index, scores in enumerate(per_image):
        if list(scores["thresholds"]) != list(THRESHOLDS):
            raise ValueError(f"image {index}: scores at thresholds {scores['thresholds']}, "
                             f"expected {list(THRESHOLDS)}")
        totals["tp"] += np.asarray(scores["tp"], dtype=np.int64)
        for name in _COUNTS:
            totals[name] += scores[name]
    return _scores(totals)


def _at(scores: dict, name: str, threshold: float) -> float:
    for index, value in enumerate(scores["thresholds"]):
        if math.isclose(value, threshold, abs_tol=1e-9):
            return scores[name][index]
    raise ValueError(f"no {name} at threshold {threshold}: thresholds are {scores['thresholds']}")


def f1_at(scores: dict, threshold: float = 0.5) -> float:
    """F1 at ``threshold`` (one of :data:`THRESHOLDS`) from object_scores or pooled scores."""
    return _at(scores, "f1", threshold)


def ap_at(scores: dict, threshold: float = 0.5) -> float:
    """AP = TP / (TP + FP + FN) at ``threshold`` (one of :data:`THRESHOLDS`)."""
    return _at(scores, "ap", threshold)
