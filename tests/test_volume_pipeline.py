"""The 3D data pipeline: augmentation keeps image and mask aligned, patches and
foreground oversampling, nnU-Net's normalisations, tiled prediction equals whole."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from unetkit.config import AugmentConfig, DataConfig
from unetkit.data.normalize import normalize_image
from unetkit.data.synthetic_volumes import make_demo_volumes
from unetkit.data.transforms3d import Augmenter3D
from unetkit.data.volume_dataset import VolumeDataset, VolumeItem, patch_shape
from unetkit.data.volume_folder import build_volume_datasets
from unetkit.volume_inference import gaussian_importance, sliding_window, tile_starts

OFF = AugmentConfig(flip=False, rot90=False, rotate_deg=0, scale=(1.0, 1.0), translate=0,
                    elastic=False, brightness=0, contrast=0, gamma=0, noise_std=0,
                    blur_prob=0)


def test_no_augmentation_is_the_identity():
    x = torch.rand(2, 1, 6, 8, 10)
    mask = (x[:, 0] > 0.5).long()
    out = Augmenter3D(OFF, (3.0, 1.0, 1.0))({"image": x, "mask": mask})
    assert torch.allclose(out["image"], x, atol=1e-5) and torch.equal(out["mask"], mask)


def test_flips_and_quarter_turns_are_exact_permutations():
    x = torch.rand(4, 1, 4, 8, 8)
    out = Augmenter3D(dataclasses.replace(OFF, flip=True, rot90=True), (1.0, 1.0, 1.0),
                      seed=5)({"image": x, "mask": (x[:, 0] > 0.5).long()})
    for b in range(4):
        candidates = [torch.rot90(torch.flip(x[b], dims) if dims else x[b], k, dims=(-2, -1))
                      for dims in ((), (1,), (2,), (3,), (1, 2), (1, 3), (2, 3), (1, 2, 3))
                      for k in range(4)]
        assert any(torch.allclose(out["image"][b], c, atol=1e-5) for c in candidates)


def test_full_augmentation_keeps_image_and_mask_aligned():
    image = torch.zeros(2, 1, 12, 32, 32)
    image[:, :, 3:9, 8:24, 10:20] = 1.0
    mask = image[:, 0].long()
    photometric_off = dataclasses.replace(AugmentConfig(), brightness=0, contrast=0, gamma=0,
                                          noise_std=0, blur_prob=0)
    out = Augmenter3D(photometric_off, (3.0, 1.0, 1.0), seed=0)(
        {"image": image, "mask": mask, "weight": torch.ones(2, 12, 32, 32)})
    # the image (trilinear) and the mask (nearest) went through the same grid
    agree = ((out["image"][:, 0] > 0.5).long() == out["mask"]).float().mean()
    assert agree > 0.98 and out["mask"].sum() > 0.7 * mask.sum()
    assert set(out["mask"].unique().tolist()) <= {0, 1}


def test_patch_depth_follows_the_spacing():
    cfg = DataConfig(patch_size=64)
    assert patch_shape(cfg, (3.0, 1.0, 1.0)) == (20, 64, 64)  # 64 / 3 = 21.3 -> 20
    assert patch_shape(cfg, (1.0, 1.0, 1.0)) == (64, 64, 64)
    assert patch_shape(cfg, (10.0, 1.0, 1.0)) == (8, 64, 64)  # at least 8 slices
    assert patch_shape(dataclasses.replace(cfg, patch_depth=12), (3.0, 1.0, 1.0)) == (12, 64, 64)


def _item(name: str, mask: np.ndarray, image: np.ndarray | None = None) -> VolumeItem:
    image = mask[None].astype(np.float32) if image is None else image
    return VolumeItem(name, lambda: (image, mask), (2.0, 1.0, 1.0))


def test_training_patches_find_the_foreground():
    mask = np.zeros((16, 40, 40), np.int64)
    mask[2:4, 30:34, 5:9] = 1  # one small object in a corner
    cfg = DataConfig(normalize="none", foreground_oversample=1.0)
    ds = VolumeDataset([_item("a", mask)], cfg, True, (8, 16, 16), seed=0)
    for i in range(10):
        sample = ds[i]
        assert sample["image"].shape == (1, 8, 16, 16) and sample["mask"].shape == (8, 16, 16)
        assert sample["mask"].sum() > 0  # always centred on the object
    never = VolumeDataset([_item("a", mask)], dataclasses.replace(
        cfg, foreground_oversample=0.0), True, (8, 16, 16), seed=0)
    hits = sum(int(never[i]["mask"].sum() > 0) for i in range(20))
    assert hits < 15
    # a volume smaller than the patch is mirror-padded up to it
    small = VolumeDataset([_item("s", mask[:4, :10, :10])], cfg, True, (8, 16, 16))
    assert small[0]["image"].shape == (1, 8, 16, 16)
    whole = VolumeDataset([_item("a", mask)], cfg, False, (8, 16, 16))[0]
    assert whole["mask"].shape == (16, 40, 40)


def test_per_image_and_ct_normalisation():
    rng = np.random.default_rng(0)
    volume = rng.normal(50, 5, (2, 4, 6, 6)).astype(np.float32)
    out = normalize_image(volume, DataConfig(normalize="per_image"))
    assert np.allclose(out.mean(axis=(1, 2, 3)), 0, atol=1e-5)
    assert np.allclose(out.std(axis=(1, 2, 3)), 1, atol=1e-4)
    ct = DataConfig(normalize="ct", intensity_range=(-100.0, 300.0), mean=(100.0,), std=(50.0,))
    hu = np.array([[[[-1000.0, 0.0, 200.0, 3000.0]]]], np.float32)
    assert np.allclose(normalize_image(hu, ct), [[[[-4.0, -2.0, 2.0, 4.0]]]])


def test_ct_volumes_are_recognised_and_clipped_to_their_foreground():
    rng = np.random.default_rng(1)
    items = []
    for i in range(4):
        mask = np.zeros((4, 8, 8), np.int64)
        mask[1:3, 2:6, 2:6] = 1
        image = np.full((1, 4, 8, 8), -1000.0, np.float32)  # air
        image[0][mask > 0] = rng.normal(40, 10, int(mask.sum()))  # soft tissue
        items.append(_item(f"ct{i}", mask, image))
    from unetkit.data import volume_folder

    cfg = DataConfig(root="unused", val_fraction=0.25)
    original = volume_folder.volume_items
    volume_folder.volume_items = lambda c: items
    try:
        train, val, resolved = build_volume_datasets(cfg, seed=0)
    finally:
        volume_folder.volume_items = original
    assert resolved.normalize == "ct" and resolved.spacing == (2.0, 1.0, 1.0)
    low, high = resolved.intensity_range
    assert 0 < low < 40 < high < 80  # the tissue's range, not the air's
    assert len(train) == 3 and len(val) == 1


def test_tiles_cover_every_voxel_and_tiled_equals_whole():
    assert tile_starts(10, 16, 0.25) == [0]
    starts = tile_starts(100, 32, 0.25)
    assert starts[0] == 0 and starts[-1] == 68
    assert all(b - a <= 24 for a, b in zip(starts, starts[1:]))
    weight = gaussian_importance((8, 8, 8), torch.device("cpu"))
    assert weight.max() == 1 and weight.min() > 0
    torch.manual_seed(0)
    pointwise = nn.Conv3d(2, 3, kernel_size=1)  # sees one voxel: tiles cannot differ
    volume = torch.randn(1, 2, 13, 37, 29)
    with torch.no_grad():
        whole = pointwise(volume)
    tiled = sliding_window(pointwise, volume, (8, 16, 16), overlap=0.5, batch_size=3)
    assert tiled.shape == whole.shape and torch.allclose(tiled, whole, atol=1e-5)
    flipped = sliding_window(pointwise, volume, (8, 16, 16), tta=True)
    assert torch.allclose(flipped, whole, atol=1e-5)
    # a volume smaller than the tile is padded to it and cropped back
    small = torch.randn(1, 2, 3, 5, 7)
    assert torch.allclose(sliding_window(pointwise, small, (8, 16, 16)), pointwise(small),
                          atol=1e-5)


def test_demo_volumes_are_anisotropic_blobs():
    (image, mask), = make_demo_volumes(1, seed=0)
    assert image.shape == (1, 24, 96, 96) and mask.shape == (24, 96, 96)
    assert 0.03 < mask.mean() < 0.3 and image.min() >= 0 and image.max() <= 1
    # foreground is brighter than background
    assert image[0][mask > 0].mean() > image[0][mask == 0].mean() + 0.2
    again, = make_demo_volumes(1, seed=0)
    assert np.array_equal(again[1], mask)


@pytest.mark.parametrize("normalize", ["per_image"])
def test_demo_volume_datasets(normalize):
    train, val, cfg = build_volume_datasets(
        DataConfig(demo="volumes", demo_count=4, patch_size=32, normalize="auto"), seed=0)
    assert cfg.normalize == normalize and cfg.spacing == (3.0, 1.0, 1.0)
    assert train.patch == (12, 32, 32) and len(train) + len(val) == 4
    assert train[0]["image"].shape == (1, 12, 32, 32)


def test_valid_padding_tiles_mirror_the_volume_by_the_margin():
    from unetkit.models import UNet

    torch.manual_seed(0)
    net = UNet(1, 2, features=2, depth=1, padding="valid", spatial_dims=3).eval()
    # depth 1: 2 convolutions before and 2 after the pooling lose 2 + 2 * 2 + 2 = 8 voxels
    assert net.margins() == (8, 8, 8)
    tile = net.valid_input_at_least((40, 40, 40))
    out_tile = net.output_shape(tile)
    volume = torch.randn(1, 1, *out_tile)  # exactly one output tile: one forward
    mirrored = torch.nn.functional.pad(volume, (8,) * 6, mode="reflect")
    with torch.no_grad():
        expected = net(mirrored)
    got = sliding_window(net, volume, tile)
    assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-5)
    # larger volumes: every voxel predicted, the input grid kept
    assert sliding_window(net, torch.randn(1, 1, 23, 30, 17), tile).shape == (1, 2, 23, 30, 17)


def test_valid_context_mirrors_volumes_before_cropping():
    mask = np.zeros((6, 10, 10), np.int64)
    mask[2:4, 3:7, 3:7] = 1
    ds = VolumeDataset([_item("a", mask)], DataConfig(normalize="none"), True, (10, 14, 14))
    ds.context = (2, 2, 2)
    sample = ds[0]
    # a 10 x 14 x 14 input from a 6 x 10 x 10 volume mirrored by 2 voxels on every side
    assert sample["image"].shape == (1, 10, 14, 14) and sample["mask"].sum() == mask.sum()
