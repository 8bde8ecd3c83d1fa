"""The built-in synthetic nuclei: determinism, consistency of the labels, file round trip."""

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

from unetkit.data.synthetic import make_demo_dataset, make_nuclei, write_demo_data


def touching_pairs(instances: np.ndarray) -> set[tuple[int, int]]:
    """Pairs of different objects that share an edge (4-neighbourhood)."""
    pairs = set()
    for a, b in (
        (instances[1:, :], instances[:-1, :]),
        (instances[:, 1:], instances[:, :-1]),
    ):
        touch = (a != b) & (a > 0) & (b > 0)
        pairs |= {(min(p, q), max(p, q)) for p, q in zip(a[touch].tolist(), b[touch].tolist())}
    return pairs


def test_same_seed_same_arrays_different_seed_different():
    first = make_nuclei(96, seed=5)
    again = make_nuclei(96, seed=5)
    other = make_nuclei(96, seed=6)
    for x, y in zip(first, again):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(first[0], other[0])
    assert not np.array_equal(first[2], other[2])


@pytest.mark.parametrize("size", [64, 100])
@pytest.mark.parametrize("multiclass", [False, True])
def test_shapes_dtypes_ranges_and_consistent_labels(size, multiclass):
    image, mask, instances = make_nuclei(size, seed=1, multiclass=multiclass)
    assert image.shape == (1, size, size) and image.dtype == np.float32
    assert mask.shape == (size, size) and mask.dtype == np.int64
    assert instances.shape == (size, size) and instances.dtype == np.int32
    assert image.min() >= 0.0 and image.max() <= 1.0 and image.max() > 0.5
    # Objects are numbered 1..N without gaps, and the mask covers exactly the objects.
    labels = np.unique(instances)
    np.testing.assert_array_equal(labels, np.arange(labels.size))
    assert labels.size >= 2
    np.testing.assert_array_equal(mask > 0, instances > 0)
    if multiclass:
        assert set(np.unique(mask)) <= {0, 1, 2, 3}
        # Every object has exactly one class.
        for label in labels[1:]:
            assert np.unique(mask[instances == label]).size == 1
    else:
        np.testing.assert_array_equal(mask, (instances > 0).astype(np.int64))


def test_256_image_is_crowded_with_touching_nuclei():
    for seed in range(3):
        image, mask, instances = make_nuclei(256, seed=seed)
        assert 10 <= instances.max() <= 40
        assert len(touching_pairs(instances)) >= 3
        # Nuclei are clearly brighter on average ...
        foreground, background = image[0][mask > 0], image[0][mask == 0]
        assert foreground.mean() > 3 * background.mean()
        # ... but no single threshold separates them perfectly (noise, dim nuclei, haze).
        best_dice = max(
            2 * np.sum((image[0] > t) & (mask > 0)) / (np.sum(image[0] > t) + np.sum(mask > 0))
            for t in np.linspace(0.02, 0.8, 40)
        )
        assert 0.7 < best_dice < 0.99


def test_nuclei_sizes_are_varied():
    for seed in range(3):
        _, _, instances = make_nuclei(256, seed=seed)
        areas = np.bincount(instances.ravel())[1:]
        # Radius ~6..18 px: pi r^2 from ~110 to ~1000 px, so both ends must show up.
        assert areas.min() < 250 and areas.max() > 600


def test_multiclass_has_all_classes_and_they_differ_in_shape():
    image, mask, instances = make_nuclei(256, seed=2, multiclass=True)
    assert set(np.unique(mask)) == {0, 1, 2, 3}
    areas = np.bincount(instances.ravel())[1:]
    object_class = np.zeros(instances.max() + 1, dtype=np.int64)
    object_class[instances.ravel()] = mask.ravel()
    object_class = object_class[1:]
    median_area = {c: np.median(areas[object_class == c]) for c in (1, 2, 3)}
    # Small round nuclei are the smallest; elongated and speckled cells are bigger.
    assert median_area[1] < median_area[2] and median_area[1] < median_area[3]
    # Speckled cells are the most textured: relative intensity spread inside each object
    # (lightly smoothed so shot noise, which is largest in bright objects, does not count).
    smooth = ndimage.gaussian_filter(image[0], 1.0)
    spread = {1: [], 2: [], 3: []}
    for label, cls in enumerate(object_class, start=1):
        core = ndimage.binary_erosion(instances == label, iterations=2)  # skip the dim rim
        if core.sum() >= 20:
            spread[int(cls)].append(smooth[core].std() / smooth[core].mean())
    median_spread = {c: np.median(v) for c, v in spread.items()}
    assert median_spread[3] > 1.3 * max(median_spread[1], median_spread[2])
    for seed in range(3, 6):  # every image has all classes, not just this one
        assert set(np.unique(make_nuclei(128, seed=seed, multiclass=True)[1])) == {0, 1, 2, 3}


def test_dataset_item_does_not_depend_on_count():
    short = make_demo_dataset(2, 48, seed=3)
    long = make_demo_dataset(4, 48, seed=3)
    for x, y in zip(short[1], long[1]):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(long[0][0], long[1][0])
    assert not np.array_equal(make_demo_dataset(1, 48, seed=4)[0][0], long[0][0])


@pytest.mark.parametrize("multiclass", [False, True])
def test_write_demo_data_round_trip(tmp_path, multiclass):
    root = write_demo_data(tmp_path / "demo", count=3, size=64, seed=9, multiclass=multiclass)
    assert root == tmp_path / "demo"
    readme = (root / "README.txt").read_text()
    assert "images/" in readme and "instances/" in readme
    assert ("bright_speckled_cell" in readme) == multiclass
    items = make_demo_dataset(3, 64, seed=9, multiclass=multiclass)
    for index, (image, mask, instances) in enumerate(items):
        stem = f"nuclei_{index:03d}"
        with Image.open(root / "images" / f"{stem}.png") as file:
            assert file.mode == "L"
            pixels = np.asarray(file)
        np.testing.assert_array_equal(pixels, np.round(image[0] * 255).astype(np.uint8))
        with Image.open(root / "masks" / f"{stem}.png") as file:
            assert file.mode == "L"
            stored_mask = np.asarray(file)
        expected_mask = mask if multiclass else mask * 255
        np.testing.assert_array_equal(stored_mask, expected_mask)
        stored_instances = tifffile.imread(root / "instances" / f"{stem}.tif")
        assert stored_instances.dtype == np.uint16
        np.testing.assert_array_equal(stored_instances, instances)
    assert len(list((root / "images").iterdir())) == 3


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="size must be an integer >= 8, got 4"):
        make_nuclei(4, seed=0)
    with pytest.raises(ValueError, match="seed must be a non-negative integer, got -1"):
        make_nuclei(64, seed=-1)
