"""Folder discovery, preflight checks, statistics and the training dataset/loader."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from unetkit.config import IMAGENET_MEAN, IMAGENET_STD, DataConfig
from unetkit.data.folder import (
    Item,
    SegmentationDataset,
    build_datasets,
    compute_stats,
    default_num_workers,
    find_items,
    make_loader,
    preflight,
)
from unetkit.data.io import DataError, read_image
from unetkit.data.weightmap import border_weight_map


def _write_pair(folder, stem, image, mask, image_suffix=".png", mask_suffix=".png"):
    """image uint8 (H, W) or (H, W, 3); mask {0, 1} (H, W) written as 0/255."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    if image_suffix == ".tif":
        tifffile.imwrite(folder / "images" / f"{stem}.tif", image)
    else:
        Image.fromarray(image).save(folder / "images" / f"{stem}{image_suffix}")
    Image.fromarray((np.asarray(mask) * 255).astype(np.uint8)).save(
        folder / "masks" / f"{stem}{mask_suffix}")


def _make_folder(root, count, size=(12, 16), seed=0):
    rng = np.random.default_rng(seed)
    for i in range(count):
        image = rng.integers(0, 256, size=size, dtype=np.uint8)
        mask = (rng.random(size) < 0.3).astype(np.uint8)
        _write_pair(root, f"img{i:02d}", image, mask)
    return root


def _cfg(root=None, **kw):
    return DataConfig(root=None if root is None else str(root), **kw)


# --------------------------------------------------------------------------- find_items


def test_random_split_is_seeded_disjoint_and_complete(tmp_path):
    _make_folder(tmp_path, 10)
    cfg = _cfg(tmp_path, val_fraction=0.3)
    train, val = find_items(tmp_path, cfg, seed=3)
    names_t, names_v = {it.name for it in train}, {it.name for it in val}
    assert not names_t & names_v
    assert names_t | names_v == {f"img{i:02d}" for i in range(10)}
    assert len(val) == 3
    again = find_items(tmp_path, cfg, seed=3)
    assert [it.name for it in again[1]] == [it.name for it in val]
    other_splits = {tuple(it.name for it in find_items(tmp_path, cfg, seed=s)[1])
                    for s in range(5)}
    assert len(other_splits) > 1  # the seed matters


def test_tiny_val_fraction_still_gives_one_val_image(tmp_path):
    _make_folder(tmp_path, 3)
    train, val = find_items(tmp_path, _cfg(tmp_path, val_fraction=0.0), seed=0)
    assert len(val) == 1 and len(train) == 2


def test_train_val_folders_are_used_as_given(tmp_path):
    _make_folder(tmp_path / "train", 3)
    _make_folder(tmp_path / "val", 2, seed=1)
    train, val = find_items(tmp_path, _cfg(tmp_path), seed=0)
    assert len(train) == 3 and len(val) == 2
    assert all(it.image_path.parent == tmp_path / "train" / "images" for it in train)
    assert all(it.mask_path.parent == tmp_path / "val" / "masks" for it in val)


def test_mask_may_have_another_suffix_and_instances_are_paired(tmp_path):
    image = np.zeros((8, 8), dtype=np.uint16)
    _write_pair(tmp_path, "a", image, np.zeros((8, 8)), image_suffix=".tif")
    _make_folder(tmp_path, 2)
    (tmp_path / "instances").mkdir()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "instances" / "a.png")
    train, val = find_items(tmp_path, _cfg(tmp_path), seed=0)
    item = next(it for it in train + val if it.name == "a")
    assert item.image_path.name == "a.tif" and item.mask_path.name == "a.png"
    assert item.instance_path.name == "a.png"
    preflight(train + val, _cfg(tmp_path))  # no problems


def test_empty_or_missing_folder_explains_the_layout(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match=r"(?s)images.*no images found.*ROOT/masks"):
        find_items(tmp_path, _cfg(tmp_path), seed=0)
    with pytest.raises(DataError, match=r"does not exist.*expected layout"):
        find_items(tmp_path / "nope", _cfg(tmp_path), seed=0)
    with pytest.raises(DataError, match=r"(?s)no 'images' folder.*ROOT/images"):
        find_items(tmp_path / "images", _cfg(tmp_path), seed=0)


# --------------------------------------------------------------------------- preflight


def test_preflight_lists_every_problem_in_one_error(tmp_path):
    _make_folder(tmp_path, 2)  # img00, img01 are fine
    rng = np.random.default_rng(0)
    images, masks = tmp_path / "images", tmp_path / "masks"
    # 1. image without mask
    Image.fromarray(rng.integers(0, 256, (12, 16), dtype=np.uint8)).save(images / "lonely.png")
    # 2. mask without image
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(masks / "orphan.png")
    # 3. size mismatch
    _write_pair(tmp_path, "small", np.zeros((12, 16), np.uint8), np.zeros((10, 16)))
    # 4. bad mask values (anti-aliased 0/255 mask)
    _write_pair(tmp_path, "blurry", np.zeros((12, 16), np.uint8), np.zeros((12, 16)))
    Image.fromarray(np.array([[0, 7, 255] * 4] * 4, np.uint8)).resize((16, 12)).save(
        masks / "blurry.png")
    # 5. unreadable image
    _write_pair(tmp_path, "corrupt", np.zeros((12, 16), np.uint8), np.zeros((12, 16)))
    (images / "corrupt.png").write_bytes(b"this is not an image")
    # 6. different channel count
    _write_pair(tmp_path, "colour", np.zeros((12, 16, 3), np.uint8), np.zeros((12, 16)))

    cfg = _cfg(tmp_path)
    train, val = find_items(tmp_path, cfg, seed=0)
    with pytest.raises(DataError) as err:
        preflight(train + val, cfg)
    msg = str(err.value)
    lines = msg.splitlines()
    assert lines[0].startswith("6 problem(s)")
    assert len(lines) == 7
    expected = {
        "lonely.png": "no mask",
        "orphan.png": "mask without an image",
        "small.png": "12x16 but its mask",
        "blurry.png": "anti-aliased",
        "corrupt.png": "cannot read image",
        "colour.png": "3 channel(s) but ",
    }
    for name, what in expected.items():
        assert any(name in line and what in line for line in lines[1:]), (name, msg)


def test_preflight_checks_channels_against_the_model(tmp_path):
    _make_folder(tmp_path, 2)
    cfg = _cfg(tmp_path)
    train, val = find_items(tmp_path, cfg, seed=0)
    with pytest.raises(DataError, match="1 channel.*the model expects 3"):
        preflight(train + val, cfg, expected_channels=3)


def test_preflight_warns_about_a_class_that_never_occurs(tmp_path):
    for i in range(2):
        _write_pair(tmp_path, f"a{i}", np.zeros((6, 6), np.uint8), np.zeros((6, 6)))
    cfg = _cfg(tmp_path)
    with pytest.warns(UserWarning, match="class.*1 never occur"):
        preflight(find_items(tmp_path, cfg, 0)[0], cfg)


# --------------------------------------------------------------------------- statistics


def test_compute_stats_matches_numpy_over_all_pixels():
    rng = np.random.default_rng(0)
    images = [rng.random((2, h, w)).astype(np.float32) * (i + 1) / 3
              for i, (h, w) in enumerate([(5, 7), (9, 4), (3, 3)])]
    items = [Item(name=str(i), image=im, mask=np.zeros(im.shape[1:], np.int64))
             for i, im in enumerate(images)]
    mean, std = compute_stats(items)
    pixels = np.concatenate([im.reshape(2, -1) for im in images], axis=1).astype(np.float64)
    np.testing.assert_allclose(mean, pixels.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(std, pixels.std(axis=1), rtol=1e-6)


def test_build_datasets_fills_mean_std_and_normalises(tmp_path):
    _make_folder(tmp_path, 5)
    cfg = _cfg(tmp_path, val_fraction=0.4, weight_map=False)
    train_ds, val_ds, new_cfg = build_datasets(cfg, seed=1)
    assert cfg.mean == () and cfg.std == ()  # the input is not changed
    train_pixels = np.concatenate([read_image(it.image_path).ravel() for it in train_ds.items])
    assert new_cfg.mean == pytest.approx((train_pixels.mean(),), rel=1e-5)
    assert new_cfg.std == pytest.approx((train_pixels.std(),), rel=1e-5)
    assert train_ds.cfg == new_cfg and val_ds.cfg == new_cfg
    sample = val_ds[0]  # validation: whole image, normalised
    raw = read_image(val_ds.items[0].image_path)
    expected = (raw - new_cfg.mean[0]) / new_cfg.std[0]
    np.testing.assert_allclose(sample["image"].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert sample["mask"].dtype == torch.int64 and sample["mask"].shape == (12, 16)
    assert sample["weight"].dtype == torch.float32 and torch.all(sample["weight"] == 1)


def test_imagenet_statistics_for_gray_images_average_the_three_channels(tmp_path):
    _make_folder(tmp_path, 3)
    _, _, new_cfg = build_datasets(_cfg(tmp_path, normalize="imagenet"), seed=0)
    assert new_cfg.mean == pytest.approx((np.mean(IMAGENET_MEAN),))
    assert new_cfg.std == pytest.approx((np.mean(IMAGENET_STD),))


def test_auto_normalisation_resolves_by_pretrained_encoder(tmp_path):
    _make_folder(tmp_path, 3)
    cfg = _cfg(tmp_path, normalize="auto")
    _, _, with_pretrained = build_datasets(cfg, seed=0, pretrained=True)
    assert with_pretrained.normalize == "imagenet"
    assert with_pretrained.mean == pytest.approx((np.mean(IMAGENET_MEAN),))
    _, _, from_scratch = build_datasets(cfg, seed=0)
    assert from_scratch.normalize == "dataset"
    assert from_scratch.mean != with_pretrained.mean


def test_build_datasets_runs_preflight(tmp_path):
    _make_folder(tmp_path, 3)
    (tmp_path / "images" / "extra.png").write_bytes(b"junk")
    with pytest.raises(DataError, match="extra.png"):
        build_datasets(_cfg(tmp_path), seed=0)


# --------------------------------------------------------------------------- dataset


def _arrays_item(name, image, mask, instances=None):
    return Item(name=name, image=image.astype(np.float32), mask=mask.astype(np.int64),
                instances=instances)


def _plain_cfg(**kw):
    base = dict(normalize="none", weight_map=False, patch_size=16, foreground_oversample=0.0)
    base.update(kw)
    return DataConfig(**base)


def test_training_crop_shape_and_mirror_padding():
    rng = np.random.default_rng(0)
    image = rng.random((3, 10, 12)).astype(np.float32)
    mask = (rng.random((10, 12)) < 0.5).astype(np.int64)
    ds = SegmentationDataset([_arrays_item("a", image, mask)], _plain_cfg(patch_size=16), True)
    sample = ds[0]
    assert sample["image"].shape == (3, 16, 16) and sample["mask"].shape == (16, 16)
    assert sample["weight"].shape == (16, 16)
    # The padded image is exactly 16 x 16, so the crop is all of it: compare with numpy.
    pad = ((0, 0), (3, 3), (2, 2))
    np.testing.assert_array_equal(sample["image"].numpy(), np.pad(image, pad, mode="reflect"))
    np.testing.assert_array_equal(sample["mask"].numpy(), np.pad(mask, pad[1:], mode="reflect"))


def test_crops_are_reproducible_and_change_with_the_epoch():
    rng = np.random.default_rng(0)
    item = _arrays_item("a", rng.random((1, 64, 64)), np.zeros((64, 64)))
    ds = SegmentationDataset([item], _plain_cfg(), True, seed=5)
    first = ds[0]["image"]
    assert torch.equal(first, ds[0]["image"])
    assert torch.equal(first, SegmentationDataset([item], _plain_cfg(), True, seed=5)[0]["image"])
    ds.set_epoch(1)
    assert not torch.equal(first, ds[0]["image"])
    assert not torch.equal(ds[0]["image"], ds[1]["image"])  # wrapped index: another crop
    val = SegmentationDataset([item], _plain_cfg(), False)
    assert val[0]["image"].shape == (1, 64, 64)  # validation: no crop


def test_foreground_oversampling_increases_foreground_fraction():
    mask = np.zeros((128, 128), np.int64)
    mask[100:108, 20:28] = 1  # 64 of 16384 pixels: 0.4 % foreground
    image = np.zeros((1, 128, 128), np.float32)
    fractions = {}
    for p in (0.0, 1.0):
        ds = SegmentationDataset([_arrays_item("a", image, mask)],
                                 _plain_cfg(foreground_oversample=p), True, seed=0)
        fractions[p] = np.mean([ds[i]["mask"].float().mean().item() for i in range(200)])
    # 16 x 16 crops centred on the 8 x 8 square hold at least 25 % foreground.
    assert fractions[1.0] >= 0.2
    assert fractions[0.0] < 0.05
    assert fractions[1.0] > 5 * fractions[0.0]


def test_border_weight_map_is_used_and_zero_at_ignore_pixels():
    mask = np.zeros((20, 20), np.int64)
    mask[2:8, 2:8] = 1
    mask[2:8, 10:16] = 1
    mask[15:18, 15:18] = 255
    instances = np.zeros((20, 20), np.int32)
    instances[2:8, 2:8] = 1
    instances[2:8, 10:16] = 2
    cfg = _plain_cfg(weight_map=True, ignore_index=255, weight_map_w0=10.0,
                     weight_map_sigma=3.0)
    ds = SegmentationDataset([_arrays_item("a", np.zeros((1, 20, 20)), mask, instances)],
                             cfg, train=False)
    weight = ds[0]["weight"].numpy()
    expected = border_weight_map(instances, mask, 2, 10.0, 3.0, ignore_index=255)
    np.testing.assert_allclose(weight, expected, rtol=1e-6)
    assert np.all(weight[15:18, 15:18] == 0)
    assert weight[4, 9] > weight[4, 19] > 0  # the gap between the objects weighs more
    assert 0 in ds._weights  # cached after the first use


def test_weight_map_without_instances_uses_connected_components():
    mask = np.zeros((20, 20), np.int64)
    mask[2:8, 2:8] = 1
    mask[2:8, 10:16] = 1
    cfg = _plain_cfg(weight_map=True)
    ds = SegmentationDataset([_arrays_item("a", np.zeros((1, 20, 20)), mask)], cfg, False)
    components = (mask > 0).astype(np.int32)
    components[:, 10:] *= 2  # the two squares as objects 1 and 2
    expected = border_weight_map(components, mask, 2, cfg.weight_map_w0, cfg.weight_map_sigma)
    np.testing.assert_allclose(ds[0]["weight"].numpy(), expected, rtol=1e-6)


def test_ignore_pixels_get_zero_weight_without_weight_map():
    mask = np.array([[0, 1], [255, 1]])
    ds = SegmentationDataset([_arrays_item("a", np.zeros((1, 2, 2)), mask)],
                             _plain_cfg(ignore_index=255), False)
    np.testing.assert_array_equal(ds[0]["weight"].numpy(), [[1, 1], [0, 1]])


def test_unnormalised_config_is_rejected():
    item = _arrays_item("a", np.zeros((1, 4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="mean/std"):
        SegmentationDataset([item], DataConfig(normalize="dataset"), True)


# --------------------------------------------------------------------------- demo data


def test_demo_data_build(tmp_path):
    cfg = DataConfig(demo_count=4, demo_size=32, patch_size=16, val_fraction=0.25)
    train_ds, val_ds, new_cfg = build_datasets(cfg, seed=0)
    assert len(train_ds) == 3 and len(val_ds) == 1
    assert len(new_cfg.mean) == 1 and new_cfg.std[0] > 0
    assert new_cfg.class_names == ("background", "nucleus")
    sample = train_ds[0]
    assert sample["image"].shape == (1, 16, 16)
    assert set(torch.unique(sample["mask"]).tolist()) <= {0, 1}
    with pytest.raises(ValueError, match="num_classes=4"):
        build_datasets(dataclasses.replace(cfg, demo="multiclass"), seed=0)


# --------------------------------------------------------------------------- loader


def test_default_worker_count():
    assert default_num_workers(1) == 0
    assert default_num_workers(2) == 0
    assert default_num_workers(3) == 2
    assert default_num_workers(16) == 4


def _loader_dataset(count, num_workers=0):
    rng = np.random.default_rng(0)
    items = [_arrays_item(str(i), rng.random((1, 24, 24)), np.zeros((24, 24)))
             for i in range(count)]
    return SegmentationDataset(items, _plain_cfg(num_workers=num_workers), True, seed=2)


def test_make_loader_batches_and_validation_batch_size_one():
    ds = _loader_dataset(5)
    loader = make_loader(ds, batch_size=2, train=True, seed=0, device="cpu")
    batches = list(loader)
    assert len(batches) == 2  # drop_last: 5 images -> 2 full batches
    assert batches[0]["image"].shape == (2, 1, 16, 16)
    assert not loader.pin_memory and loader.num_workers == 0
    small = make_loader(_loader_dataset(1), batch_size=2, train=True, seed=0, device="cpu")
    assert len(list(small)) == 1  # fewer images than a batch: keep the partial batch
    val = make_loader(ds, batch_size=8, train=False, seed=0, device="cpu")
    assert val.batch_size == 1 and len(list(val)) == 5


def test_worker_crops_equal_main_process_crops_across_epochs():
    """The epoch reaches persistent workers, and crops do not depend on the worker count."""
    results = {}
    for workers in (0, 1):
        ds = _loader_dataset(3, num_workers=workers)
        loader = make_loader(ds, batch_size=3, train=True, seed=0, device="cpu")
        assert loader.num_workers == workers
        per_epoch = []
        for epoch in range(2):
            ds.set_epoch(epoch)
            per_epoch.append(next(iter(loader))["image"])
        results[workers] = per_epoch
    for a, b in zip(results[0], results[1], strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(results[1][0], results[1][1])
