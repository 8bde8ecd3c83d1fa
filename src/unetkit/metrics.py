"""Segmentation metrics from a confusion matrix, plus the 95th-percentile Hausdorff distance.

The confusion matrix is (K, K) int64 with rows = true class and columns = predicted class,
K the number of classes including background (2 for a binary task). It is accumulated on
the tensors' device; the scores are computed once from it (in float64 on the CPU).

Absent-class rule: a class absent from both truth and prediction has Dice and IoU 0/0; it is
reported as NaN and left out of the means. Likewise precision is NaN for a class never
predicted and recall is NaN for a class with no true pixels. Means are over the foreground
classes only (class 0 excluded when K >= 2; for a binary task mean_dice is the foreground
Dice), ignoring NaNs; a mean over only-NaN values is NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist
from scipy import ndimage
from torch import Tensor

from .outputs import check_num_classes, labels, logit_channels

_CROP_HINT = (
    "With padding='valid' the network output is smaller than its input: crop the target "
    "to the output's size with center_crop first."
)


def confusion_matrix(
    pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = None
) -> Tensor:
    """(K, K) int64 counts on the inputs' device, rows = truth, columns = prediction.

    pred and target: integer class indices of the same shape, e.g. (B, H, W). Pixels whose
    target equals ``ignore_index`` are not counted. Values outside 0..K-1 (other than
    ignored targets) raise ValueError.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if pred.shape != target.shape:
        raise ValueError(
            f"pred shape {tuple(pred.shape)} does not match target shape "
            f"{tuple(target.shape)}. {_CROP_HINT}"
        )
    for name, tensor in (("pred", pred), ("target", target)):
        if tensor.is_floating_point() or tensor.is_complex():
            raise ValueError(
                f"{name} must hold integer class indices, got dtype {tensor.dtype} "
                "(turn logits into labels with logits_to_labels)"
            )
    k = num_classes
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long()
    # One bincount over (truth, prediction) pairs. Two spare bins after the K*K real ones:
    # bin K*K collects ignored pixels and bin K*K+1 out-of-range values. The bincount
    # output's length already costs a device sync, so testing it for bad values is free.
    pair = target * k + pred
    out_of_range = (target < 0) | (target >= k) | (pred < 0) | (pred >= k)
    pair = pair.masked_fill(out_of_range, k * k + 1)
    if ignore_index is not None:
        pair = pair.masked_fill(target == ignore_index, k * k)
    counts = torch.bincount(pair, minlength=k * k + 1)
    if counts.numel() > k * k + 1:
        keep = torch.ones_like(target, dtype=torch.bool)
        if ignore_index is not None:
            keep = target != ignore_index
        bad_t = target[keep & ((target < 0) | (target >= k))].unique()[:5].tolist()
        bad_p = pred[keep & ((pred < 0) | (pred >= k))].unique()[:5].tolist()
        raise ValueError(
            f"class indices outside 0..{k - 1} (num_classes={k}, ignore_index={ignore_index}): "
            f"target values {bad_t}, pred values {bad_p}"
        )
    return counts[: k * k].reshape(k, k)


# (B, C, H, W) logits -> (B, H, W) labels, by the output convention (unetkit.outputs).
logits_to_labels = labels


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """numerator / denominator, NaN where the denominator is 0 (the score is undefined)."""
    nan = torch.full_like(numerator, math.nan)
    return torch.where(denominator > 0, numerator / denominator.clamp_min(1), nan)


def scores(cm: Tensor) -> dict:
    """Scores from a (K, K) confusion matrix (rows = truth, columns = prediction).

    Returns per-class lists of K floats: "dice" (F1), "iou", "precision", "recall"; floats
    "pixel_accuracy" (correct / counted pixels) and "mean_dice", "mean_iou",
    "mean_precision", "mean_recall" over the foreground classes (1..K-1 when K >= 2).
    NaN marks an undefined score (absent-class rule in the module docstring); NaNs are left
    out of the means, and a mean with nothing left is NaN.
    """
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square (K, K), got shape {tuple(cm.shape)}")
    # float64 on the CPU: float32 loses whole pixels beyond 2**24 counts, and some
    # accelerators have no float64.
    cm = cm.detach().to(device="cpu", dtype=torch.float64)
    k = cm.shape[0]
    true_pos = cm.diagonal()
    true_count = cm.sum(dim=1)  # tp + fn
    pred_count = cm.sum(dim=0)  # tp + fp
    per_class = {
        "dice": _ratio(2 * true_pos, true_count + pred_count),
        "iou": _ratio(true_pos, true_count + pred_count - true_pos),
        "precision": _ratio(true_pos, pred_count),
        "recall": _ratio(true_pos, true_count),
    }
    foreground = slice(1, None) if k >= 2 else slice(None)
    result: dict = {name: values.tolist() for name, values in per_class.items()}
    result["pixel_accuracy"] = _ratio(true_pos.sum(), cm.sum()).item()
    for name, values in per_class.items():
        result[f"mean_{name}"] = torch.nanmean(values[foreground]).item()
    return result


class MetricTracker:
    """Accumulates one confusion matrix over batches, on the inputs' device, without syncs
    beyond the one inside ``torch.bincount``.

    ``num_classes`` K includes background (2 for binary). Typical use per evaluation::

        tracker.reset(); for batch: tracker.update(logits, target)
        tracker.all_reduce()  # once, under torch.distributed
        metrics = tracker.compute()
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        check_num_classes(num_classes)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion: Tensor | None = None  # (K, K) int64, created on the first update

    def reset(self) -> None:
        self.confusion = None

    def update(self, logits_or_labels: Tensor, target: Tensor) -> None:
        """Add one batch: logits (B, C, H, W) float or labels (B, H, W) int, target (B, H, W)
        int64. C must be K, or 1 (sigmoid) / 2 for a binary task."""
        x = logits_or_labels.detach()
        target = target.detach()
        if x.ndim == target.ndim + 1:
            # A binary task may come as 1 logit (the convention) or 2 softmax channels.
            allowed = tuple({logit_channels(self.num_classes), self.num_classes})
            if x.shape[1] not in allowed:
                raise ValueError(
                    f"logits of shape {tuple(x.shape)} have {x.shape[1]} channels, expected "
                    f"{' or '.join(map(str, allowed))} for num_classes={self.num_classes}"
                )
            labels = logits_to_labels(x)
        elif x.ndim == target.ndim:
            labels = x
        else:
            raise ValueError(
                f"expected logits (B, C, H, W) or labels (B, H, W) for target shape "
                f"{tuple(target.shape)}, got shape {tuple(x.shape)}"
            )
        cm = confusion_matrix(labels, target, self.num_classes, self.ignore_index)
        if self.confusion is None:
            self.confusion = cm
        else:
            self.confusion += cm.to(self.confusion.device)

    def all_reduce(self) -> None:
        """Sum the matrix over all torch.distributed ranks (no-op when not initialised).

        Every rank must call it, once, after its last update (a second call double-counts).
        """
        if not (dist.is_available() and dist.is_initialized()):
            return
        if dist.get_backend() == "nccl":  # NCCL only moves CUDA tensors
            comm_device = torch.device("cuda", torch.cuda.current_device())
        elif self.confusion is not None:
            comm_device = self.confusion.device
        else:
            comm_device = torch.device("cpu")
        k = self.num_classes
        local = self.confusion
        if local is None:  # a rank that saw no batch must still take part in the collective
            local = torch.zeros(k, k, dtype=torch.int64, device=comm_device)
        home = local.device
        buffer = local.to(comm_device)
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
        self.confusion = buffer.to(home)

    def compute(self) -> dict:
        """:func:`scores` of the accumulated matrix (all NaN before any update)."""
        cm = self.confusion
        if cm is None:
            cm = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        return scores(cm)


def nanmean(values) -> float:
    """The mean of the defined (non-NaN) scores; NaN when none is defined."""
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with at least one 4-connected (face) neighbour outside the mask; pixels
    on the image border count as boundary."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hausdorff95(
    pred: np.ndarray, target: np.ndarray, spacing: Sequence[float] = (1.0, 1.0)
) -> float:
    """95th-percentile symmetric Hausdorff distance between the boundaries of two binary
    masks, in the units of ``spacing`` (pixel size per axis; pixels by default).

    For each boundary pixel of one mask, the Euclidean distance to the nearest boundary pixel
    of the other (scipy.ndimage.distance_transform_edt); the result is the larger of the two
    directed 95th percentiles. 0 for identical masks; NaN when either mask is empty (the
    distance is undefined).
    """
    pred = np.asarray(pred).astype(bool)
    target = np.asarray(target).astype(bool)
    if pred.shape != target.shape:
        raise ValueError(
            f"pred shape {pred.shape} does not match target shape {target.shape}"
        )
    if len(spacing) != pred.ndim:
        raise ValueError(
            f"spacing {tuple(spacing)} has {len(spacing)} values, expected one per axis of "
            f"the {pred.ndim}-D masks"
        )
    if not pred.any() or not target.any():
        return math.nan
    pred_edge = _boundary(pred)
    target_edge = _boundary(target)
    # distance_transform_edt measures the distance to the nearest zero, so invert the edges.
    to_target_edge = ndimage.distance_transform_edt(~target_edge, sampling=spacing)
    to_pred_edge = ndimage.distance_transform_edt(~pred_edge, sampling=spacing)
    pred_to_target = np.percentile(to_target_edge[pred_edge], 95)
    target_to_pred = np.percentile(to_pred_edge[target_edge], 95)
    return float(max(pred_to_target, target_to_pred))
