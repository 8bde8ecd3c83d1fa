"""Segmentation losses: BCE, cross-entropy, soft Dice, focal, and Dice+BCE / Dice+CE.

Conventions shared by every loss here:

* ``logits``: (B, C, H, W), any float dtype. They are cast to float32 inside, so the losses
  stay stable under bf16/fp16 autocast. C == 1 is a binary task (one logit, sigmoid);
  C == K >= 2 is a K-class task (softmax).
* ``target``: (B, H, W) integer class indices: 0/1 for binary, 0..K-1 otherwise, plus
  ``ignore_index`` where set.
* ``weight``: optional (B, H, W) float per-pixel weight, e.g. the U-Net paper's border
  weight map. None means weight 1 everywhere.
* Pixels whose target is ``ignore_index`` get weight 0, so they add nothing to the loss or
  to its gradient, whatever their logits are.

Reduction: the per-pixel losses (BCE, CE, focal) use the weighted mean over every pixel of
the batch, ``sum(w * l) / sum(w)``, where ``w`` is the weight map with ignored pixels set to
0 (the result is 0 when every pixel is ignored). Dice uses the same ``w`` on each pixel's
contribution to its sums (see :class:`DiceLoss`).

Each forward pass checks that the non-ignored targets are valid class indices. That check
costs one device-to-host sync per call.

:class:`DeepSupervisionLoss` wraps any of them for nnU-Net's deep supervision: one loss per
output of ``model(x, auxiliary=True)``, each against the target downsampled to it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unetkit.config import LossConfig, choices_of
from unetkit.deep_supervision import (  # noqa: F401  (re-exported: the losses live here)
    DeepSupervisionLoss,
    deep_supervision_weights,
    downsample_nearest,
)
from unetkit.outputs import is_binary, logit_channels

LOSS_NAMES = choices_of(LossConfig, "name")  # declared once, in config.py

_CROP_HINT = (
    "With padding='valid' the network output is smaller than its input: crop the target "
    "(and the weight map) to the output's size with center_crop before the loss."
)


def _prepare(
    logits: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int | None,
    check_targets: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Check the inputs and return (logits float32, target int64, w float32 (B, H, W)).

    Ignored pixels get target 0 (so every log-probability stays finite) and w = 0 (so they
    count for nothing).
    """
    if logits.ndim not in (4, 5):
        raise ValueError(
            f"logits must have shape (B, C, H, W) or (B, C, D, H, W), got shape "
            f"{tuple(logits.shape)}"
        )
    expected_shape = (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != expected_shape:
        raise ValueError(
            f"logits shape {tuple(logits.shape)} (B, C, H, W) does not match target shape "
            f"{tuple(target.shape)}: expected target shape {expected_shape} (B, H, W). "
            f"{_CROP_HINT}"
        )
    if target.is_floating_point() or target.is_complex():
        raise ValueError(
            f"target must hold integer class indices (int64), got dtype {target.dtype}"
        )
    if weight is not None and weight.shape != target.shape:
        raise ValueError(
            f"weight shape {tuple(weight.shape)} does not match target shape "
            f"{tuple(target.shape)}: expected (B, H, W). {_CROP_HINT}"
        )

    num_logits = logits.shape[1]
    num_classes = 2 if num_logits == 1 else num_logits
    target = target.long()
    if ignore_index is None:
        valid = torch.ones_like(target, dtype=torch.bool)
    else:
        valid = target != ignore_index
    bad = valid & ((target < 0) | (target >= num_classes)) if check_targets else None
    if bad is not None and bool(bad.any()):  # the one host sync: silently wrong losses are worse
        found = target[bad].unique()[:5].tolist()
        task = "a binary task (1 logit)" if num_logits == 1 else f"{num_classes} logits"
        raise ValueError(
            f"target holds value(s) {found}, expected class indices 0..{num_classes - 1} for "
            f"{task} (ignore_index={ignore_index}); map the mask values to class indices "
            "(e.g. 0/255 -> 0/1) or set data.ignore_index"
        )
    target = target.masked_fill(~valid, 0)
    w = valid.float()
    if weight is not None:
        w = w * weight.float()
    return logits.float(), target, w


def _weighted_mean(per_pixel: Tensor, w: Tensor) -> Tensor:
    """sum(w * l) / sum(w); 0 (still differentiable) when sum(w) == 0."""
    total = w.sum()
    return (per_pixel * w).sum() / total.clamp_min(torch.finfo(total.dtype).tiny)


def _bce_map(x: Tensor, t: Tensor) -> Tensor:
    """Per-pixel BCE-with-logits, (B, H, W), for x (B, 1, H, W) and t (B, H, W) in {0, 1}."""
    return F.binary_cross_entropy_with_logits(x[:, 0], t.to(x.dtype), reduction="none")


def _ce_map(x: Tensor, t: Tensor) -> Tensor:
    """Per-pixel cross-entropy, (B, H, W), for x (B, K, H, W) and t (B, H, W) in 0..K-1."""
    return F.cross_entropy(x, t, reduction="none")


def _log_p_true(x: Tensor, t: Tensor) -> Tensor:
    """log of the predicted probability of the true class, (B, H, W)."""
    if is_binary(x):
        return -_bce_map(x, t)
    return F.log_softmax(x, dim=1).gather(1, t.unsqueeze(1)).squeeze(1)


def _one_hot(t: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """(B, H, W) indices -> (B, K, H, W) one-hot (and (B, D, H, W) -> (B, K, D, H, W)), by
    comparison (no sync, unlike F.one_hot)."""
    classes = torch.arange(num_classes, device=t.device).view(1, num_classes,
                                                              *(1,) * (t.ndim - 1))
    return (t.unsqueeze(1) == classes).to(dtype)


def _require_logits(x: Tensor, binary: bool, loss_name: str) -> None:
    num_logits = x.shape[1]
    if binary and num_logits != 1:
        raise ValueError(
            f"{loss_name} is for binary tasks and expects 1 logit channel, got logits of shape "
            f"{tuple(x.shape)} ({num_logits} channels); use CELoss / DiceCELoss for multi-class"
        )
    if not binary and num_logits < 2:
        raise ValueError(
            f"{loss_name} expects K >= 2 logit channels (softmax), got logits of shape "
            f"{tuple(x.shape)}; use BCELoss / DiceBCELoss for a 1-logit binary task"
        )


def _soft_dice_loss(
    x: Tensor, t: Tensor, w: Tensor, include_background: bool, smooth: float
) -> Tensor:
    """1 - mean over classes of the batch-wide weighted soft Dice; see :class:`DiceLoss`."""
    if is_binary(x):
        prob = torch.sigmoid(x)  # (B, 1, H, W): foreground probability only
        truth = t.unsqueeze(1).to(x.dtype)
    else:
        prob = torch.softmax(x, dim=1)
        truth = _one_hot(t, x.shape[1], x.dtype)
        if not include_background:
            prob, truth = prob[:, 1:], truth[:, 1:]
    w = w.unsqueeze(1)
    # sum over batch and pixels (voxels): one Dice per class for the whole batch
    dims = (0, *range(2, x.ndim))
    intersection = (w * prob * truth).sum(dims)
    sizes = (w * prob).sum(dims) + (w * truth).sum(dims)
    dice = (2.0 * intersection + smooth) / (sizes + smooth)
    return 1.0 - dice.mean()


class _SegmentationLoss(nn.Module):
    """Shared input handling: subclasses implement ``_loss(x, t, w)`` on prepared tensors."""

    def __init__(self, ignore_index: int | None = None) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        #: check target values on every call (one host sync). The trainer turns it off
        #: after its first step: the data were already checked file by file before.
        self.check_targets = True

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        """logits (B, C, H, W) float, target (B, H, W) int64, weight (B, H, W) float or None
        -> scalar float32 loss."""
        x, t, w = _prepare(logits, target, weight, self.ignore_index, self.check_targets)
        return self._loss(x, t, w)

    def _loss(self, x: Tensor, t: Tensor, w: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}"


class BCELoss(_SegmentationLoss):
    """Binary cross-entropy on 1 logit channel (sigmoid), weighted mean over pixels:
    ``sum(w * bce) / sum(w)`` over the non-ignored pixels of the whole batch."""

    def _loss(self, x: Tensor, t: Tensor, w: Tensor) -> Tensor:
        _require_logits(x, binary=True, loss_name="BCELoss")
        return _weighted_mean(_bce_map(x, t), w)


class CELoss(_SegmentationLoss):
    """Cross-entropy on K >= 2 logit channels (softmax), weighted mean over pixels:
    ``sum(w * ce) / sum(w)`` over the non-ignored pixels of the whole batch."""

    def _loss(self, x: Tensor, t: Tensor, w: Tensor) -> Tensor:
        _require_logits(x, binary=False, loss_name="CELoss")
        return _weighted_mean(_ce_map(x, t), w)


class DiceLoss(_SegmentationLoss):
    """Soft Dice loss, ``1 - mean_c D_c`` with, per class c and over the WHOLE batch
    (sums run over batch, height and width together)::

        D_c = (2 * sum(w * p_c * g_c) + smooth) / (sum(w * p_c) + sum(w * g_c) + smooth)

    p_c is the predicted probability, g_c the one-hot truth, w the per-pixel weight (0 at
    ignored pixels, so the weight map also scales each pixel's share of the overlap).

    Binary (1 logit): a single D on the sigmoid foreground probability; ``include_background``
    does not apply. Multi-class: softmax, classes 1..K-1, plus class 0 when
    ``include_background``. ``smooth`` keeps D defined (= 1) for a class absent from both
    truth and prediction.
    """

    def __init__(
        self,
        include_background: bool = False,
        smooth: float = 1.0,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__(ignore_index)
        if smooth < 0:
            raise ValueError(f"DiceLoss smooth must be >= 0, got {smooth}")
        self.include_background = include_background
        self.smooth = smooth

    def _loss(self, x: Tensor, t: Tensor, w: Tensor) -> Tensor:
        return _soft_dice_loss(x, t, w, self.include_background, self.smooth)

    def extra_repr(self) -> str:
        return (
            f"include_background={self.include_background}, smooth={self.smooth}, "
            f"{super().extra_repr()}"
        )


class FocalLoss(_SegmentationLoss):
    """Focal loss ``-(1 - p_t)^gamma * log(p_t)`` (Lin et al. 2017, no alpha term), p_t the
    predicted probability of the true class: sigmoid for 1 logit, softmax for K >= 2.
    Weighted mean over pixels like :class:`BCELoss`; gamma = 0 gives BCE / CE exactly."""

    def __init__(self, gamma: float = 2.0, ignore_index: int | None = None) -> None:
        super().__init__(ignore_index)
        if gamma < 0:
            raise ValueError(f"FocalLoss gamma must be >= 0, got {gamma}")
        self.gamma = gamma

    def _loss(self, x: Tensor, t: Tensor, w: Tensor) -> Tensor:
        log_pt = _log_p_true(x, t)
        # 1 - p_t as -expm1(log p_t) stays accurate when p_t is close to 1; the clamp keeps
        # the gradient of (1 - p_t)^gamma finite for gamma < 1 when 1 - p_t underflows to 0.
        one_minus_pt = (-torch.expm1(log_pt)).clamp_min(torch.finfo(log_pt.dtype).tiny)
        return _weighted_mean(-(one_minus_pt**self.gamma) * log_pt, w)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, {super().extra_repr()}"


class DiceBCELoss(_SegmentationLoss):
    """``BCELoss + dice_weight * DiceLoss`` for a 1-logit binary task."""

    def __init__(
        self, dice_weight: float = 1.0, smooth: float = 1.0, ignore_index: int | None = None
    ) -> None:
        super().__init__(ignore_index)
        self.dice_weight = dice_weight
        self.smooth = smooth

    def _loss(self, x: Tensor, t: Tensor, w: Tensor) -> Tensor:
        _require_logits(x, binary=True, loss_name="DiceBCELoss")
        bce = _weighted_mean(_bce_map(x, t), w)
        # The weight map weights the cross-entropy only (the paper's use); Dice counts
        # every labelled pixel once: w > 0 is exactly the non-ignored pixels.
        labelled = (w > 0).to(w.dtype)
        return bce + self.dice_weight * _soft_dice_loss(x, t, labelled, False, self.smooth)

    def extra_repr(self) -> str:
        return f"dice_weight={self.dice_weight}, smooth={self.smooth}, {super().extra_repr()}"


class DiceCELoss(_SegmentationLoss):
    """``CELoss + dice_weight * DiceLoss`` for a K-logit (softmax) task."""

    def __init__(
        self,
        dice_weight: float = 1.0,
        include_background: bool = False,
        smooth: float = 1.0,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__(ignore_index)
        self.dice_weight = dice_weight
        self.include_background = include_background
        self.smooth = smooth

    def _loss(self, x: Tensor, t: Tensor, w: Tensor) -> Tensor:
        _require_logits(x, binary=False, loss_name="DiceCELoss")
        ce = _weighted_mean(_ce_map(x, t), w)
        labelled = (w > 0).to(w.dtype)  # as in DiceBCELoss: the weight map is for CE only
        dice = _soft_dice_loss(x, t, labelled, self.include_background, self.smooth)
        return ce + self.dice_weight * dice

    def extra_repr(self) -> str:
        return (
            f"dice_weight={self.dice_weight}, include_background={self.include_background}, "
            f"smooth={self.smooth}, {super().extra_repr()}"
        )


def build_loss(cfg: LossConfig, num_classes: int, ignore_index: int | None) -> nn.Module:
    """The loss named by ``cfg.name`` for ``num_classes`` classes (background included).

    num_classes == 2 means a 1-logit binary model (sigmoid), more means K logits (softmax);
    "auto" picks dice_bce for binary and dice_ce otherwise.
    """
    name = cfg.name
    if name not in LOSS_NAMES:
        raise ValueError(f"unknown loss.name {name!r}; known: {', '.join(LOSS_NAMES)}")
    binary = logit_channels(num_classes) == 1
    if name == "auto":
        name = "dice_bce" if binary else "dice_ce"
    if name in ("bce", "dice_bce") and not binary:
        raise ValueError(
            f"loss.name={name!r} needs a binary task (num_classes=2, 1 logit), got "
            f"num_classes={num_classes}; use 'ce', 'dice_ce' or 'auto'"
        )
    if name in ("ce", "dice_ce") and binary:
        raise ValueError(
            f"loss.name={name!r} needs K >= 3 classes (softmax over K logits), but "
            "num_classes=2 gives a 1-logit model; use 'bce', 'dice_bce' or 'auto'"
        )
    if name == "bce":
        return BCELoss(ignore_index=ignore_index)
    if name == "ce":
        return CELoss(ignore_index=ignore_index)
    if name == "dice":
        return DiceLoss(include_background=cfg.dice_include_background, ignore_index=ignore_index)
    if name == "focal":
        return FocalLoss(gamma=cfg.focal_gamma, ignore_index=ignore_index)
    if name == "dice_bce":
        return DiceBCELoss(dice_weight=cfg.dice_weight, ignore_index=ignore_index)
    return DiceCELoss(
        dice_weight=cfg.dice_weight,
        include_background=cfg.dice_include_background,
        ignore_index=ignore_index,
    )

