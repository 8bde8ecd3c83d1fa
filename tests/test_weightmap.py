"""The paper's border weight map against hand-computed values and a brute-force reference."""

import math

import numpy as np
import pytest
from scipy import ndimage

from unetkit.data.weightmap import border_weight_map, class_balance_weights

W0, SIGMA = 10.0, 3.0


def two_squares(gap: int) -> tuple[np.ndarray, np.ndarray]:
    """40 x 60 image, two 10 x 10 squares in rows 10..19; the left one ends at column 14,
    the right one starts at column 14 + gap (so gap - 1 background columns between them)."""
    instances = np.zeros((40, 60), dtype=np.int32)
    instances[10:20, 5:15] = 1
    instances[10:20, 14 + gap : 24 + gap] = 2
    return instances, (instances > 0).astype(np.int64)


def test_two_squares_match_hand_computed_values():
    gap = 6  # facing edge pixels at columns 14 and 20
    instances, mask = two_squares(gap)
    weights = border_weight_map(instances, mask, num_classes=2, w0=W0, sigma=SIGMA)
    assert weights.dtype == np.float32 and weights.shape == (40, 60)

    # 2400 pixels, 200 object pixels: every class gets total weight 1200.
    wc_background, wc_object = 2400 / (2 * 2200), 2400 / (2 * 200)

    def border(d1: float, d2: float) -> float:
        return W0 * math.exp(-((d1 + d2) ** 2) / (2 * SIGMA**2))

    # Middle of the gap (column 17): d1 = d2 = gap / 2 = 3.
    assert weights[15, 17] == pytest.approx(wc_background + border(3, 3), rel=1e-6)
    assert border(3, 3) == pytest.approx(W0 * math.exp(-(gap**2) / (2 * SIGMA**2)))
    # One pixel off the middle: d1 = 2, d2 = 4, same sum, same weight.
    assert weights[15, 16] == pytest.approx(weights[15, 17], rel=1e-6)
    # Above the gap the distances are diagonal: sqrt(5^2 + 3^2) to both corners.
    diagonal = math.sqrt(34.0)
    assert weights[5, 17] == pytest.approx(wc_background + border(diagonal, diagonal), rel=1e-5)
    # Far away the border term has vanished (d1 + d2 > 60 px).
    assert weights[39, 59] == pytest.approx(wc_background, rel=1e-6)
    # Object pixels carry only their class weight: no border term inside objects.
    assert weights[15, 10] == pytest.approx(wc_object, rel=1e-6)
    assert weights[15, 14] == pytest.approx(wc_object, rel=1e-6)


def test_touching_objects_weigh_more_than_separated_ones():
    close = border_weight_map(*two_squares(2), num_classes=2, w0=W0, sigma=SIGMA)
    far = border_weight_map(*two_squares(12), num_classes=2, w0=W0, sigma=SIGMA)
    # Gap of one pixel: d1 = d2 = 1 at column 15.
    wc_background = 2400 / (2 * 2200)
    assert close[15, 15] == pytest.approx(wc_background + W0 * math.exp(-4 / 18), rel=1e-6)
    assert close[15, 15] > far[15, 20] > wc_background


def test_one_or_no_instance_has_no_border_term():
    instances = np.zeros((30, 30), dtype=np.int32)
    instances[5:15, 5:15] = 1
    mask = (instances > 0).astype(np.int64)
    weights = border_weight_map(instances, mask, num_classes=2, w0=W0, sigma=SIGMA)
    expected = np.where(mask > 0, 900 / (2 * 100), 900 / (2 * 800))
    np.testing.assert_allclose(weights, expected, rtol=1e-6)

    empty = np.zeros((30, 30), dtype=np.int32)
    weights = border_weight_map(empty, empty.astype(np.int64), num_classes=2)
    np.testing.assert_allclose(weights, 1.0)  # one class present: w_c = 900 / (1 * 900)


def test_ignored_pixels_get_zero_and_are_not_counted():
    instances, mask = two_squares(6)
    mask[30:40, :] = 255  # ten rows (600 pixels, all background) are unlabelled
    weights = border_weight_map(instances, mask, 2, w0=W0, sigma=SIGMA, ignore_index=255)
    assert np.all(weights[30:40] == 0.0)
    # Class weights from the 1800 labelled pixels: 1600 background, 200 object.
    assert weights[0, 59] == pytest.approx(1800 / (2 * 1600), rel=1e-6)
    assert weights[15, 10] == pytest.approx(1800 / (2 * 200), rel=1e-6)
    assert weights[15, 17] == pytest.approx(1800 / (2 * 1600) + W0 * math.exp(-2.0), rel=1e-6)


def test_class_balance_weights_by_hand():
    mask = np.array([[0, 0, 0], [0, 1, 2]])
    # 6 pixels, 3 classes present with counts 4, 1, 1; class 3 absent.
    expected = [6 / (3 * 4), 6 / (3 * 1), 6 / (3 * 1), 0.0]
    weights = class_balance_weights(mask, num_classes=4)
    assert weights.dtype == np.float32
    np.testing.assert_allclose(weights, expected, rtol=1e-6)
    # Each present class has the same total weight, and the mean over pixels is 1.
    per_pixel = weights[mask]
    totals = [per_pixel[mask == c].sum() for c in range(3)]
    np.testing.assert_allclose(totals, [2.0, 2.0, 2.0], rtol=1e-6)

    with_ignore = np.array([[0, 0, 255], [1, 1, 255]])
    np.testing.assert_allclose(
        class_balance_weights(with_ignore, num_classes=2, ignore_index=255), [1.0, 1.0]
    )
    all_ignored = np.full((2, 2), 255)
    np.testing.assert_array_equal(class_balance_weights(all_ignored, 2, ignore_index=255), [0, 0])


def brute_force_weight_map(instances, mask, num_classes, w0, sigma):
    """Independent reference: one full-image distance transform per object, no cropping."""
    counts = np.bincount(mask.ravel(), minlength=num_classes)
    present = counts > 0
    class_weights = np.zeros(num_classes)
    class_weights[present] = mask.size / (present.sum() * counts[present])
    labels = [label for label in np.unique(instances) if label != 0]
    distances = np.sort(
        np.stack([ndimage.distance_transform_edt(instances != lab) for lab in labels]), axis=0
    )
    border = w0 * np.exp(-((distances[0] + distances[1]) ** 2) / (2 * sigma**2))
    return class_weights[mask] + np.where((mask == 0) & (instances == 0), border, 0.0)


def test_matches_brute_force_on_crowded_random_objects():
    rng = np.random.default_rng(3)
    instances = np.zeros((96, 96), dtype=np.int32)
    yy, xx = np.mgrid[:96, :96]
    for label in range(1, 16):  # overlapping discs: many touching pairs and narrow gaps
        cy, cx, r = rng.uniform(0, 96), rng.uniform(0, 96), rng.uniform(4, 10)
        instances[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = label
    mask = np.where(instances > 0, 1 + instances % 2, 0)  # two object classes
    weights = border_weight_map(instances, mask, num_classes=3, w0=W0, sigma=4.0)
    reference = brute_force_weight_map(instances, mask, 3, W0, 4.0)
    # Cropping drops terms beyond 4 sigma, each at most w0 * exp(-8).
    np.testing.assert_allclose(weights, reference, atol=W0 * math.exp(-8) + 1e-5)
    assert weights.max() > reference.min() + W0 / 2  # the border term really is present


def test_label_values_need_not_be_consecutive():
    instances, mask = two_squares(4)
    relabelled = np.where(instances == 1, 70000, np.where(instances == 2, 7, 0))
    np.testing.assert_array_equal(
        border_weight_map(relabelled, mask, 2, w0=W0, sigma=SIGMA),
        border_weight_map(instances, mask, 2, w0=W0, sigma=SIGMA),
    )


def test_bad_input_names_the_problem():
    instances, mask = two_squares(4)
    bad = mask.copy()
    bad[0, 0] = 5
    with pytest.raises(ValueError, match=r"mask: found class value\(s\) \[5\], expected 0..1"):
        border_weight_map(instances, bad, num_classes=2)
    with pytest.raises(ValueError, match="shape"):
        border_weight_map(instances[:10], mask, num_classes=2)
    with pytest.raises(ValueError, match="integer"):
        class_balance_weights(mask.astype(float), num_classes=2)
