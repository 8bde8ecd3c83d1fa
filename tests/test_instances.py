"""Three-class targets, watershed labelling, the connected-components baseline, object
measurements and outlines, against hand-made images with known answers."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from unetkit.errors import WriteError
from unetkit.instances import (
    INSTANCE_CLASSES,
    instance_target,
    label_objects,
    measure_objects,
    semantic_to_objects,
    write_objects_csv,
)
from unetkit.report import CLASS_COLOURS, outline_objects

# ---------------------------------------------------------------- instance_target


def two_touching_squares() -> np.ndarray:
    """8 x 12: object 1 in rows 1..6, cols 1..5; object 2 in rows 1..6, cols 6..10."""
    labels = np.zeros((8, 12), dtype=np.int32)
    labels[1:7, 1:6] = 1
    labels[1:7, 6:11] = 2
    return labels


def test_classes_are_named_in_order():
    assert INSTANCE_CLASSES == ("background", "interior", "boundary")


def test_touching_squares_exact_class_map():
    expected = np.array([
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 0],
        [0, 2, 1, 1, 1, 2, 2, 1, 1, 1, 2, 0],
        [0, 2, 1, 1, 1, 2, 2, 1, 1, 1, 2, 0],
        [0, 2, 1, 1, 1, 2, 2, 1, 1, 1, 2, 0],
        [0, 2, 1, 1, 1, 2, 2, 1, 1, 1, 2, 0],
        [0, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ])
    target = instance_target(two_touching_squares(), boundary_width=1)
    assert target.dtype == np.int64
    np.testing.assert_array_equal(target, expected)


def test_wider_boundary_uses_the_chessboard_distance():
    labels = np.zeros((9, 9), dtype=np.int64)
    labels[1:8, 1:8] = 4  # a lone 7 x 7 object with label 4
    target = instance_target(labels, boundary_width=2)
    expected = np.zeros((9, 9), dtype=np.int64)
    expected[1:8, 1:8] = 2
    expected[3:6, 3:6] = 1  # 2 px ring, corners included: diagonals count
    np.testing.assert_array_equal(target, expected)


def test_image_edge_is_not_a_boundary_but_touching_objects_are():
    labels = np.zeros((6, 6), dtype=np.int64)
    labels[:, :3] = 1
    labels[:, 3:] = 2  # two objects filling the image, touching along one column line
    target = instance_target(labels, boundary_width=1)
    expected = np.ones((6, 6), dtype=np.int64)
    expected[:, 2:4] = 2
    np.testing.assert_array_equal(target, expected)


def test_instance_target_rejects_bad_input():
    with pytest.raises(ValueError, match="boundary_width"):
        instance_target(two_touching_squares(), boundary_width=0)
    with pytest.raises(ValueError, match="integer"):
        instance_target(two_touching_squares().astype(float))
    with pytest.raises(ValueError, match="2-D"):
        instance_target(two_touching_squares()[None])


# ---------------------------------------------------------------- label_objects


def touching_disks(height: int = 40, width: int = 70) -> np.ndarray:
    """Two overlapping disks (radius 10, centres 18 px apart), each pixel to the nearer
    centre: touching objects 1 and 2."""
    rows, cols = np.indices((height, width))
    dist_a = np.hypot(rows - 20, cols - 20)
    dist_b = np.hypot(rows - 20, cols - 38)
    labels = np.zeros((height, width), dtype=np.int32)
    labels[(dist_a <= 10) | (dist_b <= 10)] = 1
    labels[(labels > 0) & (dist_b < dist_a)] = 2
    return labels


def probabilities_of(classes: np.ndarray, confidence: float = 0.9) -> np.ndarray:
    """(3, H, W) probabilities: ``confidence`` on the given class, the rest shared."""
    other = (1.0 - confidence) / 2
    return np.stack([np.where(classes == c, confidence, other) for c in range(3)])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def best_iou(truth: np.ndarray, labels: np.ndarray, label: int) -> float:
    return max(iou(truth == label, labels == k) for k in range(1, labels.max() + 1))


def test_touching_disks_become_two_objects():
    truth = touching_disks()
    labels = label_objects(probabilities_of(instance_target(truth, boundary_width=2)))
    assert labels.dtype == np.int32
    assert labels.max() == 2 and set(np.unique(labels)) == {0, 1, 2}
    for label in (1, 2):
        assert best_iou(truth, labels, label) > 0.9
    # The baseline merges them: one connected foreground.
    assert semantic_to_objects((truth > 0).astype(np.int64)).max() == 1
    target = instance_target(truth, boundary_width=2)
    assert semantic_to_objects(target, foreground_classes=(1, 2)).max() == 1
    # Interior alone would separate them (the boundary band is the gap).
    assert semantic_to_objects(target, foreground_classes=(1,), min_size=1).max() == 2


def test_small_speck_is_removed_unless_min_size_allows_it():
    classes = instance_target(touching_disks(), boundary_width=2)
    classes[2:5, 60:63] = 1  # a 3 x 3 speck of interior, far from the disks
    probabilities = probabilities_of(classes)
    assert label_objects(probabilities, min_size=16).max() == 2
    kept = label_objects(probabilities, min_size=9)
    assert kept.max() == 3 and (kept[2:5, 60:63] > 0).all()


def test_hole_inside_one_object_is_filled():
    truth = touching_disks()
    classes = instance_target(truth, boundary_width=2)
    classes[19:22, 19:22] = 0  # a 3 x 3 hole in the middle of disk 1
    filled = label_objects(probabilities_of(classes))
    assert (filled[19:22, 19:22] == filled[20, 14]).all() and filled[20, 14] > 0
    unfilled = label_objects(probabilities_of(classes), fill_holes=False)
    assert (unfilled[19:22, 19:22] == 0).all()


def test_hole_between_two_objects_is_not_filled():
    labels = np.zeros((16, 16), dtype=np.int64)
    labels[2:14, 2:14] = 1
    labels[2:14, 8:14] = 2  # a square ring made of two halves ...
    labels[6:10, 6:10] = 0  # ... around a hole that touches both
    classes = instance_target(labels, boundary_width=1)
    out = label_objects(probabilities_of(classes), min_size=1)
    assert out.max() == 2
    assert (out[6:10, 6:10] == 0).all()


def test_foreground_without_seed_becomes_an_object():
    classes = instance_target(touching_disks(), boundary_width=2)
    classes[2:8, 55:61] = 2  # 6 x 6 of boundary only: foreground with no interior seed
    labels = label_objects(probabilities_of(classes))
    assert labels.max() == 3
    region = labels[2:8, 55:61]
    assert (region > 0).all() and np.unique(region).size == 1


def test_label_objects_rejects_wrong_channels():
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        label_objects(np.zeros((2, 8, 8)))


def test_semantic_to_objects_labels_sequentially_and_drops_small():
    mask = np.zeros((10, 10), dtype=np.uint8)
    mask[0:4, 0:4] = 1
    mask[6:10, 6:10] = 2
    mask[0, 9] = 1  # a single pixel
    out = semantic_to_objects(mask, min_size=2)
    assert out.dtype == np.int32
    assert out.max() == 2 and (out[0:4, 0:4] == 1).all() and (out[6:10, 6:10] == 2).all()
    assert out[0, 9] == 0
    only_class_2 = semantic_to_objects(mask, foreground_classes=[2])
    assert only_class_2.max() == 1 and only_class_2[0, 0] == 0


# ---------------------------------------------------------------- measurements and CSV


def two_objects_two_channels() -> tuple[np.ndarray, np.ndarray]:
    labels = np.zeros((8, 6), dtype=np.int32)
    labels[1:3, 2:5] = 3  # 2 x 3 rectangle
    labels[5, 0:2] = 7  # an L of 3 pixels: (5, 0), (5, 1), (6, 0)
    labels[6, 0] = 7
    image = np.zeros((2, 8, 6), dtype=np.float32)
    image[0] = 0.5
    image[0, 5, 0], image[0, 5, 1], image[0, 6, 0] = 0.1, 0.2, 0.6
    image[1] = 10.0 * np.arange(8)[:, None]  # channel 1 = 10 x row index
    return labels, image


def test_measure_objects_by_hand():
    labels, image = two_objects_two_channels()
    rows = measure_objects(labels, image)
    assert [row["label"] for row in rows] == [3, 7]
    rect, ell = rows
    assert rect["area_px"] == 6 and ell["area_px"] == 3
    assert rect["centroid_y"] == pytest.approx(1.5) and rect["centroid_x"] == pytest.approx(3.0)
    assert ell["centroid_y"] == pytest.approx(16 / 3) and ell["centroid_x"] == pytest.approx(1 / 3)
    assert [rect[k] for k in ("bbox_min_row", "bbox_min_col", "bbox_max_row", "bbox_max_col")] \
        == [1, 2, 3, 5]
    assert [ell[k] for k in ("bbox_min_row", "bbox_min_col", "bbox_max_row", "bbox_max_col")] \
        == [5, 0, 7, 2]
    assert rect["equivalent_diameter_px"] == pytest.approx(math.sqrt(4 * 6 / math.pi))
    assert ell["equivalent_diameter_px"] == pytest.approx(math.sqrt(4 * 3 / math.pi))
    assert rect["mean_intensity_c0"] == pytest.approx(0.5)
    assert ell["mean_intensity_c0"] == pytest.approx(0.3)
    assert rect["mean_intensity_c1"] == pytest.approx(15.0)
    assert ell["mean_intensity_c1"] == pytest.approx(160 / 3)
    assert isinstance(rect["area_px"], int) and isinstance(rect["centroid_y"], float)


def test_measure_objects_without_background_and_without_objects():
    rows = measure_objects(np.full((3, 4), 5), np.ones((3, 4)))  # 2-D image: one channel
    assert len(rows) == 1 and rows[0]["label"] == 5 and rows[0]["area_px"] == 12
    assert rows[0]["bbox_max_row"] == 3 and rows[0]["bbox_max_col"] == 4
    assert measure_objects(np.zeros((3, 4), dtype=np.int32), np.ones((2, 3, 4))) == []
    with pytest.raises(ValueError, match="image"):
        measure_objects(np.zeros((3, 4), dtype=np.int32), np.ones((2, 4, 3)))


def test_objects_csv_header_and_rows(tmp_path):
    labels, image = two_objects_two_channels()
    rows = measure_objects(labels, image)
    path = tmp_path / "out" / "objects.csv"
    write_objects_csv(path, rows, channels=2)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        read = list(reader)
    assert reader.fieldnames[:3] == ["label", "area_px", "centroid_y"]
    assert reader.fieldnames[-2:] == ["mean_intensity_c0", "mean_intensity_c1"]
    assert [int(r["label"]) for r in read] == [3, 7]
    assert float(read[1]["mean_intensity_c1"]) == pytest.approx(160 / 3)


def test_objects_csv_without_objects_is_header_only(tmp_path):
    path = tmp_path / "empty.csv"
    write_objects_csv(path, [], channels=3)
    lines = path.read_text().splitlines()
    assert len(lines) == 1 and lines[0].endswith("mean_intensity_c2")


def test_objects_csv_checks_channels_and_reports_failed_write(tmp_path):
    labels, image = two_objects_two_channels()
    rows = measure_objects(labels, image)
    with pytest.raises(ValueError, match="1 channel"):
        write_objects_csv(tmp_path / "x.csv", rows, channels=1)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(WriteError, match="object table"):
        write_objects_csv(blocker / "objects.csv", rows, channels=2)


# ---------------------------------------------------------------- outlines


def test_outline_objects_colours_edges_and_writes_the_count():
    labels = np.zeros((40, 80), dtype=np.int32)
    labels[20:30, 40:50] = 1
    labels[20:30, 50:60] = 2
    image = np.full((1, 40, 80), 0.5, dtype=np.float32)
    plain = outline_objects(image, labels, count_text=False)
    assert plain.shape == (40, 80, 3) and plain.dtype == np.uint8
    colour = np.round(CLASS_COLOURS * 255).astype(np.uint8)
    np.testing.assert_array_equal(plain[20, 45], colour[1])  # top edge of object 1
    np.testing.assert_array_equal(plain[25, 49], colour[1])  # object 1 side of the contact
    np.testing.assert_array_equal(plain[25, 50], colour[2])  # object 2 side
    np.testing.assert_array_equal(plain[25, 45], [128, 128, 128])  # interior stays grey
    np.testing.assert_array_equal(plain[5, 5], [128, 128, 128])
    counted = outline_objects(image, labels)
    corner = counted[:12, :60]
    # a dark box behind light (anti-aliased) text
    assert (corner == 0).all(axis=2).any() and (corner > 200).all(axis=2).any()
    np.testing.assert_array_equal(counted[20:], plain[20:])  # only the corner changed
