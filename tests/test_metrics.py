"""Confusion matrix, scores, MetricTracker and hausdorff95 against hand counts and
independent (brute-force) computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from unetkit.metrics import (
    MetricTracker,
    confusion_matrix,
    hausdorff95,
    logits_to_labels,
    scores,
)

IGNORE = 255


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.int64)


def assert_list_close(got, expected):
    """Element-wise approx, with NaN only matching NaN."""
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        if math.isnan(e):
            assert math.isnan(g), (got, expected)
        else:
            assert g == pytest.approx(e), (got, expected)


# ---------------------------------------------------------------- confusion matrix + scores


def test_binary_confusion_matrix_and_scores_by_hand():
    pred = t([[1, 1, 0], [0, 1, 1]])
    target = t([[1, 0, 0], [1, 1, 0]])
    # (truth, pred) pairs: (1,1) (0,1) (0,0) (1,0) (1,1) (0,1)
    cm = confusion_matrix(pred, target, 2)
    assert cm.dtype == torch.int64
    assert cm.tolist() == [[1, 2], [1, 2]]
    s = scores(cm)
    # class 0: tp 1, fp 1, fn 2; class 1: tp 2, fp 2, fn 1
    assert_list_close(s["dice"], [2 / 5, 4 / 7])
    assert_list_close(s["iou"], [1 / 4, 2 / 5])
    assert_list_close(s["precision"], [1 / 2, 2 / 4])
    assert_list_close(s["recall"], [1 / 3, 2 / 3])
    assert s["pixel_accuracy"] == pytest.approx(3 / 6)
    # binary: the means are the foreground class's scores, background excluded
    assert s["mean_dice"] == pytest.approx(4 / 7)
    assert s["mean_iou"] == pytest.approx(2 / 5)
    assert s["mean_precision"] == pytest.approx(1 / 2)
    assert s["mean_recall"] == pytest.approx(2 / 3)


def test_three_class_with_ignore_by_hand():
    target = t([[0, 1, 2, IGNORE], [2, 2, 1, 0]])
    pred = t([[0, 2, 2, 1], [2, 0, 1, 1]])
    # counted (truth, pred): (0,0) (1,2) (2,2) (2,2) (2,0) (1,1) (0,1); the ignored pixel's
    # prediction (1) is not counted
    cm = confusion_matrix(pred, target, 3, ignore_index=IGNORE)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 1], [1, 0, 2]]
    s = scores(cm)
    assert_list_close(s["dice"], [1 / 2, 1 / 2, 2 / 3])
    assert_list_close(s["iou"], [1 / 3, 1 / 3, 1 / 2])
    assert_list_close(s["precision"], [1 / 2, 1 / 2, 2 / 3])
    assert_list_close(s["recall"], [1 / 2, 1 / 2, 2 / 3])
    assert s["pixel_accuracy"] == pytest.approx(4 / 7)
    assert s["mean_dice"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert s["mean_iou"] == pytest.approx((1 / 3 + 1 / 2) / 2)


def test_confusion_matrix_matches_numpy_count_on_random_data():
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (3, 17, 13), generator=gen)
    target[0, :2] = IGNORE
    pred = torch.randint(0, 4, (3, 17, 13), generator=gen)
    expected = np.zeros((4, 4), dtype=np.int64)
    keep = target.numpy() != IGNORE
    np.add.at(expected, (target.numpy()[keep], pred.numpy()[keep]), 1)
    cm = confusion_matrix(pred, target, 4, ignore_index=IGNORE)
    np.testing.assert_array_equal(cm.numpy(), expected)


def test_out_of_range_values_and_shape_mismatch_raise():
    with pytest.raises(ValueError, match=r"target values \[255\]"):
        confusion_matrix(t([[0, 1]]), t([[0, 255]]), 2)  # 255 without ignore_index
    with pytest.raises(ValueError, match=r"pred values \[3\]"):
        confusion_matrix(t([[0, 3]]), t([[0, 1]]), 3)
    with pytest.raises(ValueError, match=r"pred values \[-1\]"):
        confusion_matrix(t([[0, -1]]), t([[0, 1]]), 3)
    with pytest.raises(ValueError, match=r"\(1, 388, 388\).*\(1, 572, 572\).*center_crop"):
        confusion_matrix(torch.zeros(1, 388, 388, dtype=torch.int64),
                         torch.zeros(1, 572, 572, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match="logits_to_labels"):
        confusion_matrix(torch.zeros(1, 2), t([[0, 1]]), 2)


def test_absent_class_is_nan_and_left_out_of_means():
    # class 2 is in neither truth nor prediction
    s = scores(confusion_matrix(t([[0, 1], [0, 0]]), t([[0, 1], [1, 0]]), 3))
    assert_list_close(s["dice"], [4 / 5, 2 / 3, math.nan])
    assert_list_close(s["iou"], [2 / 3, 1 / 2, math.nan])
    assert_list_close(s["precision"], [2 / 3, 1.0, math.nan])
    assert_list_close(s["recall"], [1.0, 1 / 2, math.nan])
    assert s["mean_dice"] == pytest.approx(2 / 3)  # class 1 only, not (2/3 + 0) / 2
    assert s["mean_iou"] == pytest.approx(1 / 2)


def test_precision_nan_when_never_predicted_recall_nan_when_never_true():
    # class 2 is true once but never predicted: precision NaN, recall 0, Dice 0
    s = scores(confusion_matrix(t([[0, 0], [1, 0]]), t([[0, 2], [1, 0]]), 3))
    assert_list_close(s["precision"], [2 / 3, 1.0, math.nan])
    assert_list_close(s["recall"], [1.0, 1.0, 0.0])
    assert_list_close(s["dice"], [4 / 5, 1.0, 0.0])
    assert s["mean_precision"] == pytest.approx(1.0)
    assert s["mean_dice"] == pytest.approx(0.5)
    # class 2 is predicted once but never true: recall NaN, precision 0
    s = scores(confusion_matrix(t([[0, 2], [1, 0]]), t([[0, 0], [1, 0]]), 3))
    assert_list_close(s["recall"], [2 / 3, 1.0, math.nan])
    assert_list_close(s["precision"], [1.0, 1.0, 0.0])


def test_every_foreground_class_absent_gives_nan_means():
    s = scores(confusion_matrix(t([[0, 0]]), t([[0, 0]]), 2))
    assert_list_close(s["dice"], [1.0, math.nan])
    assert s["pixel_accuracy"] == 1.0
    for name in ("mean_dice", "mean_iou", "mean_precision", "mean_recall"):
        assert math.isnan(s[name])


def test_empty_matrix_scores_are_nan():
    s = scores(torch.zeros(3, 3, dtype=torch.int64))
    assert math.isnan(s["pixel_accuracy"]) and math.isnan(s["mean_dice"])


def test_logits_to_labels():
    binary = torch.tensor([[-1.0, 0.0], [0.1, 3.0]]).view(1, 1, 2, 2)
    # logit 0 is probability exactly 0.5: not foreground (sigmoid > 0.5 is strict)
    assert logits_to_labels(binary).tolist() == [[[0, 0], [1, 1]]]
    multi = torch.tensor([[[1.0, 0.0]], [[2.0, -1.0]], [[0.0, 5.0]]]).view(1, 3, 1, 2)
    labels = logits_to_labels(multi)
    assert labels.dtype == torch.int64 and labels.tolist() == [[[1, 2]]]


# ---------------------------------------------------------------- MetricTracker


def test_tracker_two_batches_equals_one_matrix_over_concatenation():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 3, 8, 9, generator=gen)
    target = torch.randint(0, 3, (5, 8, 9), generator=gen)
    target[1, 0] = IGNORE
    tracker = MetricTracker(3, ignore_index=IGNORE)
    tracker.update(logits[:2], target[:2])
    tracker.update(logits[2:].argmax(1), target[2:])  # labels work as well as logits
    expected = confusion_matrix(logits.argmax(1), target, 3, ignore_index=IGNORE)
    assert torch.equal(tracker.confusion, expected)
    assert tracker.compute() == scores(expected)


def test_tracker_binary_logits_reset_and_channel_check():
    tracker = MetricTracker(2)
    logits = torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]]])
    tracker.update(logits, t([[[1, 1], [0, 0]]]))
    assert tracker.confusion.tolist() == [[1, 1], [1, 1]]
    tracker.reset()
    assert tracker.confusion is None
    assert math.isnan(tracker.compute()["mean_dice"])
    with pytest.raises(ValueError, match="3 channels"):
        tracker.update(torch.zeros(1, 3, 2, 2), t([[[0, 1], [0, 0]]]))


def test_all_reduce_is_a_no_op_without_distributed():
    assert not dist.is_initialized()
    tracker = MetricTracker(2)
    tracker.update(t([[1, 0]]), t([[1, 1]]))
    tracker.all_reduce()
    assert tracker.confusion.tolist() == [[0, 0], [1, 1]]


def _all_reduce_worker(rank: int, init_file: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        tracker = MetricTracker(2)
        if rank == 0:  # rank 1 sees no batch and must still join the collective
            tracker.update(t([[1, 0, 1]]), t([[1, 1, 0]]))
        tracker.all_reduce()
        results[rank] = tracker.confusion.tolist()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_all_reduce_sums_over_two_ranks(tmp_path):
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_all_reduce_worker, args=(str(tmp_path / "store"), results), nprocs=2)
        assert results[0] == results[1] == [[0, 1], [1, 1]]


# ---------------------------------------------------------------- hausdorff95


def square(top: int, left: int, side: int = 12, shape=(40, 40)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def brute_force_hd95(a: np.ndarray, b: np.ndarray, spacing=(1.0, 1.0)) -> float:
    """Independent reference: boundary = mask pixels with a 4-neighbour outside the mask
    (image border counts as outside), all pairwise distances, max of directed 95th pct."""

    def boundary_points(mask):
        padded = np.pad(mask, 1, constant_values=False)
        inner = (
            padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        )
        return np.argwhere(mask & ~inner) * np.asarray(spacing)

    pa, pb = boundary_points(a), boundary_points(b)
    dist_matrix = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return max(
        np.percentile(dist_matrix.min(axis=1), 95), np.percentile(dist_matrix.min(axis=0), 95)
    )


@pytest.mark.parametrize("k", [1, 3])
def test_hausdorff95_squares_offset_by_k(k):
    assert hausdorff95(square(10, 10), square(10, 10 + k)) == pytest.approx(k)
    assert hausdorff95(square(10, 10), square(10 + k, 10)) == pytest.approx(k)


def test_hausdorff95_identical_empty_and_spacing():
    assert hausdorff95(square(5, 5), square(5, 5)) == 0.0
    assert math.isnan(hausdorff95(square(5, 5), np.zeros((40, 40), bool)))
    assert math.isnan(hausdorff95(np.zeros((40, 40), bool), np.zeros((40, 40), bool)))
    # a 3-row shift with rows 2.0 units tall is 6 units
    got = hausdorff95(square(10, 10), square(13, 10), spacing=(2.0, 0.5))
    assert got == pytest.approx(6.0)


def test_hausdorff95_matches_brute_force_on_irregular_shapes():
    yy, xx = np.mgrid[:40, :48]
    disk = (yy - 18) ** 2 + (xx - 20) ** 2 <= 11**2
    blob = ((yy - 22) ** 2 / 81 + (xx - 26) ** 2 / 196 <= 1) | square(0, 0, 6, (40, 48))
    for spacing in ((1.0, 1.0), (0.7, 1.3)):
        expected = brute_force_hd95(disk, blob, spacing)
        assert hausdorff95(disk, blob, spacing) == pytest.approx(expected)
    assert expected > 3  # the shapes really differ


def test_hausdorff95_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        hausdorff95(np.ones((4, 4)), np.ones((4, 5)))
    with pytest.raises(ValueError, match="spacing"):
        hausdorff95(np.ones((4, 4)), np.ones((4, 4)), spacing=(1.0, 1.0, 1.0))
