"""Losses against values computed by hand with plain Python math on 2x2 examples."""

from __future__ import annotations

import math

import pytest
import torch

from unetkit.config import LossConfig
from unetkit.losses import (
    BCELoss,
    CELoss,
    DiceBCELoss,
    DiceCELoss,
    DiceLoss,
    FocalLoss,
    build_loss,
)

IGNORE = 255

# Binary example, 1x1x2x2: logits and targets row by row.
BIN_LOGITS = [2.0, -1.0, 0.5, -3.0]
BIN_TARGET = [1, 0, 0, 1]
WEIGHTS = [1.0, 2.0, 3.0, 0.5]

# Three-class example, 1x3x2x2: per pixel (row by row) the 3 class logits.
MC_LOGITS = [[2.0, 0.5, -1.0], [0.0, 1.0, 0.2], [-0.5, 0.3, 1.5], [1.0, 1.0, -2.0]]
MC_TARGET = [0, 1, 2, 2]


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def softmax(row: list[float]) -> list[float]:
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def hand_bce(x: float, t: int) -> float:
    p = sigmoid(x)
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


def hand_ce(row: list[float], t: int) -> float:
    return -math.log(softmax(row)[t])


def weighted_mean(values: list[float], weights: list[float]) -> float:
    return sum(v * w for v, w in zip(values, weights)) / sum(weights)


def bin_tensors(logits=BIN_LOGITS, target=BIN_TARGET):
    x = torch.tensor(logits, dtype=torch.float32).view(1, 1, 2, 2).requires_grad_()
    t = torch.tensor(target, dtype=torch.int64).view(1, 2, 2)
    return x, t


def mc_tensors(logits=MC_LOGITS, target=MC_TARGET):
    # (pixel, class) -> (1, class, 2, 2)
    x = torch.tensor(logits, dtype=torch.float32).t().reshape(1, 3, 2, 2).requires_grad_()
    t = torch.tensor(target, dtype=torch.int64).view(1, 2, 2)
    return x, t


def weight_tensor(weights=WEIGHTS):
    return torch.tensor(weights, dtype=torch.float32).view(1, 2, 2)


def test_mc_tensor_layout():
    # guards the helper itself: pixel 1 (row 0, col 1), class 2 is MC_LOGITS[1][2]
    x, _ = mc_tensors()
    assert x[0, 2, 0, 1].item() == pytest.approx(MC_LOGITS[1][2])


# ---------------------------------------------------------------- BCE / CE


def test_bce_unweighted_and_weighted():
    per_pixel = [hand_bce(x, t) for x, t in zip(BIN_LOGITS, BIN_TARGET)]
    x, t = bin_tensors()
    assert BCELoss()(x, t).item() == pytest.approx(sum(per_pixel) / 4, rel=1e-6)
    expected = weighted_mean(per_pixel, WEIGHTS)
    assert BCELoss()(x, t, weight_tensor()).item() == pytest.approx(expected, rel=1e-6)


def test_ce_unweighted_and_weighted():
    per_pixel = [hand_ce(row, t) for row, t in zip(MC_LOGITS, MC_TARGET)]
    x, t = mc_tensors()
    assert CELoss()(x, t).item() == pytest.approx(sum(per_pixel) / 4, rel=1e-6)
    expected = weighted_mean(per_pixel, WEIGHTS)
    assert CELoss()(x, t, weight_tensor()).item() == pytest.approx(expected, rel=1e-6)


def test_bce_ignore_pixel_excluded_and_logit_irrelevant():
    target = [1, IGNORE, 0, 1]
    expected = weighted_mean(
        [hand_bce(BIN_LOGITS[i], target[i]) for i in (0, 2, 3)], [WEIGHTS[i] for i in (0, 2, 3)]
    )
    loss = BCELoss(ignore_index=IGNORE)
    x, t = bin_tensors(target=target)
    assert loss(x, t, weight_tensor()).item() == pytest.approx(expected, rel=1e-6)
    x2, _ = bin_tensors(logits=[2.0, 40.0, 0.5, -3.0])
    assert loss(x2, t, weight_tensor()).item() == pytest.approx(expected, rel=1e-6)


def test_ce_ignore_pixel_excluded_and_logit_irrelevant():
    target = [0, 1, IGNORE, 2]
    expected = sum(hand_ce(MC_LOGITS[i], target[i]) for i in (0, 1, 3)) / 3
    loss = CELoss(ignore_index=IGNORE)
    x, t = mc_tensors(target=target)
    assert loss(x, t).item() == pytest.approx(expected, rel=1e-6)
    changed = [row[:] for row in MC_LOGITS]
    changed[2] = [30.0, -30.0, 7.0]
    x2, _ = mc_tensors(logits=changed, target=target)
    assert loss(x2, t).item() == pytest.approx(expected, rel=1e-6)


def test_all_pixels_ignored_gives_zero_not_nan():
    x, _ = bin_tensors()
    t = torch.full((1, 2, 2), IGNORE)
    loss = BCELoss(ignore_index=IGNORE)(x, t)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(x.grad == 0)


# ---------------------------------------------------------------- Dice


def hand_dice_loss(probs: list[list[float]], truth: list[list[int]], weights, smooth=1.0):
    """probs/truth: per class, per pixel. 1 - mean over classes of the weighted soft Dice."""
    dices = []
    for p_c, g_c in zip(probs, truth):
        inter = sum(w * p * g for w, p, g in zip(weights, p_c, g_c))
        sizes = sum(w * p for w, p in zip(weights, p_c)) + sum(w * g for w, g in zip(weights, g_c))
        dices.append((2 * inter + smooth) / (sizes + smooth))
    return 1 - sum(dices) / len(dices)


def test_dice_binary_by_hand():
    probs = [[sigmoid(v) for v in BIN_LOGITS]]
    truth = [BIN_TARGET]
    x, t = bin_tensors()
    expected = hand_dice_loss(probs, truth, [1, 1, 1, 1])
    assert DiceLoss()(x, t).item() == pytest.approx(expected, rel=1e-6)
    expected_w = hand_dice_loss(probs, truth, WEIGHTS)
    assert DiceLoss()(x, t, weight_tensor()).item() == pytest.approx(expected_w, rel=1e-6)
    # smooth enters both numerator and denominator
    expected_s = hand_dice_loss(probs, truth, [1, 1, 1, 1], smooth=0.1)
    assert DiceLoss(smooth=0.1)(x, t).item() == pytest.approx(expected_s, rel=1e-6)


@pytest.mark.parametrize("include_background", [False, True])
def test_dice_multiclass_by_hand(include_background):
    probs_by_pixel = [softmax(row) for row in MC_LOGITS]
    classes = [0, 1, 2] if include_background else [1, 2]
    probs = [[p[c] for p in probs_by_pixel] for c in classes]
    truth = [[int(t == c) for t in MC_TARGET] for c in classes]
    x, t = mc_tensors()
    loss = DiceLoss(include_background=include_background)
    assert loss(x, t).item() == pytest.approx(hand_dice_loss(probs, truth, [1] * 4), rel=1e-6)
    expected_w = hand_dice_loss(probs, truth, WEIGHTS)
    assert loss(x, t, weight_tensor()).item() == pytest.approx(expected_w, rel=1e-6)


def test_dice_is_batch_wide_not_per_image_mean():
    # image 0 has foreground, image 1 has none; one Dice over both images is not the mean
    # of two per-image Dice values
    x = torch.tensor([[[[1.0, -1.0]]], [[[0.5, -2.0]]]])  # (2, 1, 1, 2)
    t = torch.tensor([[[1, 0]], [[0, 0]]])
    p = [sigmoid(v) for v in (1.0, -1.0, 0.5, -2.0)]
    g = [1, 0, 0, 0]
    expected = hand_dice_loss([p], [g], [1] * 4)
    assert DiceLoss()(x, t).item() == pytest.approx(expected, rel=1e-6)


def test_dice_ignore_pixel_excluded():
    target = [0, IGNORE, 2, 2]
    keep = [0, 2, 3]
    probs_by_pixel = [softmax(MC_LOGITS[i]) for i in keep]
    probs = [[p[c] for p in probs_by_pixel] for c in (1, 2)]
    truth = [[int(target[i] == c) for i in keep] for c in (1, 2)]
    expected = hand_dice_loss(probs, truth, [1] * 3)
    loss = DiceLoss(ignore_index=IGNORE)
    x, t = mc_tensors(target=target)
    assert loss(x, t).item() == pytest.approx(expected, rel=1e-6)
    changed = [row[:] for row in MC_LOGITS]
    changed[1] = [-9.0, 9.0, 3.0]
    x2, _ = mc_tensors(logits=changed, target=target)
    assert loss(x2, t).item() == pytest.approx(expected, rel=1e-6)


def test_dice_perfect_prediction_is_near_zero():
    x, t = bin_tensors(logits=[20.0, -20.0, -20.0, 20.0])
    assert DiceLoss()(x, t).item() < 1e-6
    rows = [[20.0 if c == t_ else -20.0 for c in range(3)] for t_ in MC_TARGET]
    xm, tm = mc_tensors(logits=rows)
    assert DiceLoss(include_background=True)(xm, tm).item() < 1e-6
    # a totally wrong prediction: D = (0 + 1) / (2 predicted + 2 true + 1) = 1/5
    xw, _ = bin_tensors(logits=[-20.0, 20.0, 20.0, -20.0])
    assert DiceLoss()(xw, t).item() == pytest.approx(1 - 1 / 5, abs=1e-6)


# ---------------------------------------------------------------- focal and combined


def test_focal_gamma_zero_equals_bce_and_ce():
    x, t = bin_tensors(target=[1, IGNORE, 0, 1])
    w = weight_tensor()
    focal = FocalLoss(gamma=0.0, ignore_index=IGNORE)(x, t, w)
    assert focal.item() == pytest.approx(BCELoss(ignore_index=IGNORE)(x, t, w).item(), rel=1e-6)
    xm, tm = mc_tensors(target=[0, 1, IGNORE, 2])
    focal_m = FocalLoss(gamma=0.0, ignore_index=IGNORE)(xm, tm, w)
    ce = CELoss(ignore_index=IGNORE)(xm, tm, w)
    assert focal_m.item() == pytest.approx(ce.item(), rel=1e-6)


def test_focal_gamma_two_by_hand():
    def hand_focal(p_true: float) -> float:
        return -((1 - p_true) ** 2) * math.log(p_true)

    p_true = [sigmoid(x) if t == 1 else 1 - sigmoid(x) for x, t in zip(BIN_LOGITS, BIN_TARGET)]
    x, t = bin_tensors()
    expected = weighted_mean([hand_focal(p) for p in p_true], WEIGHTS)
    assert FocalLoss(gamma=2.0)(x, t, weight_tensor()).item() == pytest.approx(expected, rel=1e-5)

    p_true_m = [softmax(row)[t] for row, t in zip(MC_LOGITS, MC_TARGET)]
    xm, tm = mc_tensors()
    expected_m = sum(hand_focal(p) for p in p_true_m) / 4
    assert FocalLoss(gamma=2.0)(xm, tm).item() == pytest.approx(expected_m, rel=1e-5)


def test_combined_losses_are_weighted_sums():
    x, t = bin_tensors()
    w = weight_tensor()
    # The weight map weights the cross-entropy term only; Dice counts each pixel once.
    expected = BCELoss()(x, t, w) + 0.5 * DiceLoss()(x, t)
    assert DiceBCELoss(dice_weight=0.5)(x, t, w).item() == pytest.approx(expected.item(), rel=1e-6)
    assert DiceLoss()(x, t, w).item() != pytest.approx(DiceLoss()(x, t).item())
    xm, tm = mc_tensors()
    expected_m = CELoss()(xm, tm, w) + 2.0 * DiceLoss(include_background=True)(xm, tm)
    got = DiceCELoss(dice_weight=2.0, include_background=True)(xm, tm, w)
    assert got.item() == pytest.approx(expected_m.item(), rel=1e-6)


def test_target_check_can_be_turned_off():
    x, t = bin_tensors()
    loss = BCELoss()
    with pytest.raises(ValueError, match="target holds value"):
        loss(x, t * 255)
    loss.check_targets = False
    loss(x, t)  # no host sync, no check


ALL_BINARY = [BCELoss, DiceLoss, FocalLoss, DiceBCELoss]
ALL_MULTICLASS = [CELoss, DiceLoss, FocalLoss, DiceCELoss]


@pytest.mark.parametrize("loss_cls", ALL_BINARY)
def test_binary_gradients_flow_and_skip_ignored_pixel(loss_cls):
    x, t = bin_tensors(target=[1, IGNORE, 0, 1])
    loss = loss_cls(ignore_index=IGNORE)(x, t, weight_tensor())
    loss.backward()
    grad = x.grad.view(-1)
    assert torch.isfinite(grad).all()
    assert grad[1] == 0  # the ignored pixel
    assert (grad[[0, 2, 3]] != 0).all()


@pytest.mark.parametrize("loss_cls", ALL_MULTICLASS)
def test_multiclass_gradients_flow_and_skip_ignored_pixel(loss_cls):
    x, t = mc_tensors(target=[0, 1, IGNORE, 2])
    loss = loss_cls(ignore_index=IGNORE)(x, t)
    loss.backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad[0, :, 1, 0] == 0).all()  # pixel 2 = row 1, col 0
    assert x.grad.abs().sum() > 0


def test_bf16_logits_are_computed_in_float32():
    x, t = mc_tensors()
    x16 = x.detach().bfloat16()
    for loss in (CELoss(), DiceCELoss(), FocalLoss()):
        value = loss(x16, t)
        assert value.dtype == torch.float32
        assert value.item() == pytest.approx(loss(x16.float(), t).item(), rel=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = DiceCELoss()(x16, t)
    assert value.dtype == torch.float32


# ---------------------------------------------------------------- errors and build_loss


def test_shape_mismatch_names_both_shapes_and_hints_crop():
    x = torch.zeros(1, 1, 388, 388)
    t = torch.zeros(1, 572, 572, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"\(1, 1, 388, 388\).*\(1, 572, 572\).*center_crop"):
        DiceBCELoss()(x, t)
    with pytest.raises(ValueError, match="weight shape"):
        BCELoss()(x, torch.zeros(1, 388, 388, dtype=torch.int64), torch.ones(1, 572, 572))


def test_bad_target_values_and_dtype_raise():
    x, _ = bin_tensors()
    with pytest.raises(ValueError, match=r"\[255\].*0\.\.1"):
        BCELoss()(x, torch.tensor([[[0, 255], [1, 0]]]))
    with pytest.raises(ValueError, match="float32"):
        BCELoss()(x, torch.zeros(1, 2, 2))
    xm, _ = mc_tensors()
    with pytest.raises(ValueError, match="1 logit"):
        BCELoss()(xm, torch.zeros(1, 2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="K >= 2"):
        CELoss()(x, torch.zeros(1, 2, 2, dtype=torch.int64))


def test_build_loss_auto_and_names():
    assert isinstance(build_loss(LossConfig(), 2, None), DiceBCELoss)
    assert isinstance(build_loss(LossConfig(), 4, None), DiceCELoss)
    cfg = LossConfig(name="focal", focal_gamma=0.5)
    focal = build_loss(cfg, 3, IGNORE)
    assert isinstance(focal, FocalLoss) and focal.gamma == 0.5 and focal.ignore_index == IGNORE
    cfg = LossConfig(name="dice_ce", dice_include_background=True, dice_weight=3.0)
    combined = build_loss(cfg, 3, None)
    assert combined.include_background and combined.dice_weight == 3.0
    expected_types = {"bce": BCELoss, "dice": DiceLoss, "dice_bce": DiceBCELoss}
    for name, cls in expected_types.items():
        assert type(build_loss(LossConfig(name=name), 2, None)) is cls
    assert type(build_loss(LossConfig(name="ce"), 3, None)) is CELoss


def test_build_loss_rejects_unknown_and_mismatched_names():
    with pytest.raises(ValueError, match="lovasz.*dice_bce"):
        build_loss(LossConfig(name="lovasz"), 2, None)
    with pytest.raises(ValueError, match="num_classes=3"):
        build_loss(LossConfig(name="bce"), 3, None)
    with pytest.raises(ValueError, match="num_classes=2"):
        build_loss(LossConfig(name="dice_ce"), 2, None)
