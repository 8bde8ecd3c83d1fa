"""Tests for unetkit.data.transforms: batched on-device augmentation."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from unetkit.config import AugmentConfig
from unetkit.data.transforms import (
    Augmenter,
    affine_matrices,
    elastic_displacement,
    gaussian_blur,
    photometric,
    random_affine_matrices,
    sampling_grid,
    warp,
)

NO_PHOTOMETRIC = dict(brightness=0.0, contrast=0.0, gamma=0.0, noise_std=0.0, blur_prob=0.0)
NO_GEOMETRY = dict(
    flip=False, rot90=False, rotate_deg=0.0, scale=(1.0, 1.0), translate=0.0, elastic=False
)


def config(**changes) -> AugmentConfig:
    return dataclasses.replace(AugmentConfig(), **changes)


def blob_batch(batch=4, height=64, width=64, seed=0) -> dict:
    """Piecewise-constant images of big disks (1 inside, 0 outside) and mask = image > 0.5."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.arange(height, dtype=torch.float32)[:, None]
    cols = torch.arange(width, dtype=torch.float32)[None, :]
    images = torch.zeros(batch, 1, height, width)
    for b in range(batch):
        for _ in range(3):
            cy, cx = torch.rand(2, generator=g) * torch.tensor([height, width])
            radius = 8 + 6 * float(torch.rand(1, generator=g))
            inside = (rows - cy) ** 2 + (cols - cx) ** 2 < radius**2
            images[b, 0][inside] = 1.0
    mask = (images[:, 0] > 0.5).long()
    weight = 1.0 + 4.0 * mask.float()
    return {"image": images, "mask": mask, "weight": weight}


def identity_params(batch: int) -> dict:
    return dict(
        hflip=torch.zeros(batch, dtype=torch.bool),
        vflip=torch.zeros(batch, dtype=torch.bool),
        rot90_k=torch.zeros(batch, dtype=torch.long),
        angle_deg=torch.zeros(batch),
        scale=torch.ones(batch),
        translate_px=torch.zeros(batch, 2),
    )


def warp_with(batch: dict, **changes) -> dict:
    b, _, h, w = batch["image"].shape
    params = identity_params(b)
    params.update(changes)
    theta = affine_matrices(h, w, **params)
    return warp(batch, sampling_grid(theta, h, w))


# (1) alignment of image and mask under everything at once ----------------------------


def test_warped_mask_agrees_with_thresholded_warped_image():
    batch = blob_batch()
    augment = Augmenter(config(**NO_PHOTOMETRIC), seed=1)
    out = augment(batch)
    from_image = (out["image"][:, 0] > 0.5).long()
    agreement = (from_image == out["mask"]).float().mean().item()
    assert agreement >= 0.99
    # The transform really moved things (else agreement would be trivial) ...
    assert (out["mask"] != batch["mask"]).float().mean().item() > 0.05
    # ... and a mask warped with another sample's transform would not agree.
    wrong = (from_image == out["mask"].roll(1, dims=0)).float().mean().item()
    assert wrong < 0.9
    # The weight map (1 outside, 5 inside) follows the same grid.
    from_weight = (out["weight"] > 3.0).long()
    assert (from_weight == out["mask"]).float().mean().item() >= 0.99


# (2) mask values ------------------------------------------------------------------------


def test_mask_keeps_its_integer_values_including_ignore():
    g = torch.Generator().manual_seed(3)
    coarse = torch.tensor([0, 1, 2, 255])[torch.randint(0, 4, (4, 8, 8), generator=g)]
    mask = coarse.repeat_interleave(8, dim=1).repeat_interleave(8, dim=2)  # (4, 64, 64)
    batch = {"image": torch.randn(4, 3, 64, 64, generator=g), "mask": mask}
    out = Augmenter(config(), seed=5)(batch)
    assert out["mask"].dtype == torch.int64
    assert out["mask"].shape == (4, 64, 64)
    assert set(out["mask"].unique().tolist()) <= {0, 1, 2, 255}
    assert 255 in out["mask"].unique().tolist()


# (3) identity ---------------------------------------------------------------------------


def test_identity_grid_reproduces_input():
    batch = blob_batch(height=48, width=64)
    batch["image"] = torch.randn(4, 2, 48, 64, generator=torch.Generator().manual_seed(0))
    out = warp_with(batch)
    torch.testing.assert_close(out["image"], batch["image"], atol=1e-4, rtol=0)
    torch.testing.assert_close(out["weight"], batch["weight"], atol=1e-4, rtol=0)
    assert torch.equal(out["mask"], batch["mask"])


def test_zero_magnitudes_give_identity():
    cfg = config(
        flip=False,
        rot90=False,
        rotate_deg=0.0,
        scale=(1.0, 1.0),
        translate=0.0,
        elastic=True,
        elastic_sigma=0.0,
        **NO_PHOTOMETRIC,
    )
    theta = random_affine_matrices(4, 48, 64, cfg, torch.Generator().manual_seed(0))
    torch.testing.assert_close(theta, torch.eye(2, 3).expand(4, 2, 3), atol=1e-7, rtol=0)
    batch = blob_batch(height=48, width=64)
    out = Augmenter(cfg)(batch)
    torch.testing.assert_close(out["image"], batch["image"], atol=1e-4, rtol=0)
    assert torch.equal(out["mask"], batch["mask"])


def test_disabled_returns_batch_unchanged():
    batch = blob_batch()
    assert Augmenter(config(enabled=False))(batch) is batch


# (4) flips, quarter turns, rotation on non-square images ------------------------------


def non_square_batch() -> dict:
    g = torch.Generator().manual_seed(7)
    return {
        "image": torch.randn(2, 3, 40, 56, generator=g),
        "mask": torch.randint(0, 5, (2, 40, 56), generator=g),
        "weight": torch.rand(2, 40, 56, generator=g),
    }


def test_horizontal_flip_equals_torch_flip_on_non_square():
    batch = non_square_batch()
    out = warp_with(batch, hflip=torch.ones(2, dtype=torch.bool))
    torch.testing.assert_close(out["image"], batch["image"].flip(-1), atol=1e-4, rtol=0)
    torch.testing.assert_close(out["weight"], batch["weight"].flip(-1), atol=1e-4, rtol=0)
    assert torch.equal(out["mask"], batch["mask"].flip(-1))


def test_vertical_flip_equals_torch_flip_on_non_square():
    batch = non_square_batch()
    out = warp_with(batch, vflip=torch.ones(2, dtype=torch.bool))
    torch.testing.assert_close(out["image"], batch["image"].flip(-2), atol=1e-4, rtol=0)
    assert torch.equal(out["mask"], batch["mask"].flip(-2))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_rot90_equals_torch_rot90(k):
    g = torch.Generator().manual_seed(k)
    batch = {"image": torch.randn(2, 3, 32, 32, generator=g),
             "mask": torch.randint(0, 5, (2, 32, 32), generator=g)}
    out = warp_with(batch, rot90_k=torch.full((2,), k))
    expected = torch.rot90(batch["image"], k, dims=(-2, -1))
    torch.testing.assert_close(out["image"], expected, atol=1e-4, rtol=0)
    assert torch.equal(out["mask"], torch.rot90(batch["mask"], k, dims=(-2, -1)))


def test_rotation_by_90_degrees_matches_rot90_direction():
    batch = {"image": torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(0)),
             "mask": torch.zeros(1, 32, 32, dtype=torch.long)}
    out = warp_with(batch, angle_deg=torch.tensor([90.0]))
    expected = torch.rot90(batch["image"], 1, dims=(-2, -1))
    torch.testing.assert_close(out["image"], expected, atol=1e-4, rtol=0)


def test_rot90_is_not_applied_to_non_square_images():
    cfg = config(**{**NO_GEOMETRY, "rot90": True})
    theta = random_affine_matrices(16, 40, 56, cfg, torch.Generator().manual_seed(0))
    torch.testing.assert_close(theta, torch.eye(2, 3).expand(16, 2, 3), atol=1e-7, rtol=0)
    theta = random_affine_matrices(16, 48, 48, cfg, torch.Generator().manual_seed(0))
    turned = (theta[:, :, :2] - torch.eye(2)).abs().amax(dim=(1, 2)) > 0.5
    assert turned.any()
    # Quarter turns are exact permutations: entries 0 or +-1.
    assert torch.equal(theta[:, :, :2].abs().round(), theta[:, :, :2].abs())


def grid_in_pixels(grid: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Normalised (align_corners=False) grid -> (column, row) input positions in pixels."""
    x = (grid[..., 0] + 1) * width / 2 - 0.5
    y = (grid[..., 1] + 1) * height / 2 - 0.5
    return torch.stack([x, y], dim=-1)


def test_rotation_is_rigid_in_pixels_on_non_square_images():
    height, width, angle = 40, 72, 30.0
    params = identity_params(1)
    params["angle_deg"] = torch.tensor([angle])
    theta = affine_matrices(height, width, **params)
    pixels = grid_in_pixels(sampling_grid(theta, height, width), height, width)[0]
    # One step right / down in the output is one pixel in the input, turned by the angle.
    step_right = pixels[:, 1:] - pixels[:, :-1]
    step_down = pixels[1:] - pixels[:-1]
    a = math.radians(angle)
    # Output->input: stepping right in the output steps right-and-down (y down) in the
    # input, as for rot90 where output[i, j] = input[j, W - 1 - i].
    right = torch.tensor([math.cos(a), math.sin(a)])
    down = torch.tensor([-math.sin(a), math.cos(a)])
    torch.testing.assert_close(step_right, right.expand_as(step_right), atol=1e-4, rtol=0)
    torch.testing.assert_close(step_down, down.expand_as(step_down), atol=1e-4, rtol=0)
    # The centre stays put.
    centre = pixels.mean(dim=(0, 1))
    torch.testing.assert_close(centre, torch.tensor([(width - 1) / 2, (height - 1) / 2]),
                               atol=1e-3, rtol=0)


def test_translation_shifts_content_by_whole_pixels():
    batch = non_square_batch()
    out = warp_with(batch, translate_px=torch.tensor([[3.0, -2.0], [0.0, 5.0]]))
    # Sample 0: content moves 3 right and 2 up -> out[r, c] = in[r + 2, c - 3].
    torch.testing.assert_close(out["image"][0, :, :-2, 3:], batch["image"][0, :, 2:, :-3],
                               atol=1e-4, rtol=0)
    assert torch.equal(out["mask"][1, 5:], batch["mask"][1, :-5])


def test_scale_zooms_about_the_centre():
    height, width = 32, 48
    cols = torch.arange(width, dtype=torch.float32).expand(1, 1, height, width)
    batch = {"image": cols.clone(), "mask": torch.zeros(1, height, width, dtype=torch.long)}
    out = warp_with(batch, scale=torch.tensor([2.0]))
    centre = (width - 1) / 2
    expected = centre + (torch.arange(width, dtype=torch.float32) - centre) / 2
    # A linear ramp is reproduced exactly by bilinear sampling.
    torch.testing.assert_close(out["image"][0, 0], expected.expand(height, width),
                               atol=1e-4, rtol=0)


# (5) reproducibility ----------------------------------------------------------------------


def test_same_seed_same_output_different_seed_different():
    batch = blob_batch()
    a = Augmenter(config(), seed=11)(batch)
    b = Augmenter(config(), seed=11)(batch)
    c = Augmenter(config(), seed=12)(batch)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert not torch.allclose(a["image"], c["image"])


def test_samples_in_a_batch_get_different_transforms():
    single = blob_batch(batch=1)
    batch = {k: v.expand(4, *v.shape[1:]).clone() for k, v in single.items()}
    out = Augmenter(config(**NO_PHOTOMETRIC), seed=0)(batch)
    for i in range(1, 4):
        assert not torch.equal(out["mask"][0], out["mask"][i])


def test_state_dict_round_trip_reproduces_next_batch():
    batch = blob_batch()
    augment = Augmenter(config(), seed=3)
    augment(batch)
    state = augment.state_dict()
    expected = augment(batch)

    resumed = Augmenter(config(), seed=999)
    resumed.load_state_dict(state)
    again = resumed(batch)
    assert torch.equal(again["image"], expected["image"])
    assert torch.equal(again["mask"], expected["mask"])
    assert torch.equal(again["weight"], expected["weight"])


# (6) elastic deformation ----------------------------------------------------------------


def test_elastic_displacement_has_requested_std_and_is_smooth():
    size, points, sigma = 65, 5, 4.0  # coarse points fall on pixels 0, 16, 32, 48, 64
    field = elastic_displacement(
        64, size, size, points, sigma, torch.Generator().manual_seed(0), "cpu"
    )
    assert field.shape == (64, size, size, 2) and field.dtype == torch.float32
    pixels = field * torch.tensor([size / 2, size / 2])  # normalised -> pixels
    nodes = pixels[:, ::16, ::16]
    assert nodes.shape[1:3] == (points, points)
    assert abs(nodes.std().item() - sigma) < 0.1 * sigma  # 3200 samples: ~1.3 % error
    # Smooth: neighbouring pixels move almost together. Independent noise would differ by
    # ~1.13 sigma on average; a smooth ramp between nodes 16 px apart by ~1.13 sigma / 16.
    step = pixels[:, 1:] - pixels[:, :-1]
    assert step.abs().mean().item() < 0.1 * sigma
    assert step.abs().max().item() < 0.6 * sigma
    bend = step[:, 1:] - step[:, :-1]  # second difference: the slope changes slowly too
    assert bend.abs().mean().item() < 0.02 * sigma
    assert pixels.std(dim=(1, 2)).mean().item() > 0.3 * sigma


def test_elastic_displacement_units_on_non_square_images():
    # With one shared random draw, the pixel fields of two image shapes agree at the corners.
    a = elastic_displacement(2, 30, 50, 3, 5.0, torch.Generator().manual_seed(1), "cpu")
    b = elastic_displacement(2, 50, 30, 3, 5.0, torch.Generator().manual_seed(1), "cpu")
    a_px = a * torch.tensor([50 / 2, 30 / 2])
    b_px = b * torch.tensor([30 / 2, 50 / 2])
    torch.testing.assert_close(a_px[:, 0, 0], b_px[:, 0, 0], atol=1e-4, rtol=0)
    torch.testing.assert_close(a_px[:, -1, -1], b_px[:, -1, -1], atol=1e-4, rtol=0)


# (7) photometric --------------------------------------------------------------------------


def test_photometric_changes_image_not_mask():
    batch = blob_batch()
    out = Augmenter(config(**NO_GEOMETRY, blur_prob=1.0), seed=0)(batch)
    assert torch.equal(out["mask"], batch["mask"])
    assert torch.equal(out["weight"], batch["weight"])
    assert (out["image"] - batch["image"]).abs().mean().item() > 0.01
    assert out["image"].dtype == torch.float32 and out["image"].shape == (4, 1, 64, 64)


def test_brightness_adds_one_constant_per_sample():
    image = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    cfg = config(**{**NO_PHOTOMETRIC, "brightness": 0.2})
    out = photometric(image, cfg, torch.Generator().manual_seed(1))
    shift = out - image
    per_sample = shift.flatten(1)
    torch.testing.assert_close(per_sample, per_sample[:, :1].expand_as(per_sample),
                               atol=1e-6, rtol=0)
    assert per_sample[:, 0].abs().max().item() <= 0.2
    assert per_sample[:, 0].unique().numel() == 6


def test_contrast_scales_around_the_sample_mean():
    image = torch.randn(6, 2, 16, 16, generator=torch.Generator().manual_seed(0)) + 3.0
    cfg = config(**{**NO_PHOTOMETRIC, "contrast": 0.3})
    out = photometric(image, cfg, torch.Generator().manual_seed(1))
    mean = image.mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(out.mean(dim=(1, 2, 3), keepdim=True), mean, atol=1e-4, rtol=0)
    factor = ((out - mean).flatten(1) / (image - mean).flatten(1)).median(dim=1).values
    assert ((factor >= 0.7 - 1e-4) & (factor <= 1.3 + 1e-4)).all()
    torch.testing.assert_close(out - mean, (image - mean) * factor.view(6, 1, 1, 1),
                               atol=1e-4, rtol=0)


def test_gamma_keeps_range_and_order():
    image = torch.randn(6, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    cfg = config(**{**NO_PHOTOMETRIC, "gamma": 0.5})
    out = photometric(image, cfg, torch.Generator().manual_seed(1))
    flat_in, flat_out = image.flatten(1), out.flatten(1)
    torch.testing.assert_close(flat_out.amin(1), flat_in.amin(1), atol=1e-4, rtol=0)
    torch.testing.assert_close(flat_out.amax(1), flat_in.amax(1), atol=1e-4, rtol=0)
    # A monotone curve keeps the order of pixel values.
    assert torch.equal(flat_in.argsort(1), flat_out.argsort(1))
    # Hand-computed: u_out = u_in ** g on the rescaled values, one g per sample.
    low, span = flat_in.amin(1, keepdim=True), flat_in.amax(1, keepdim=True) - flat_in.amin(
        1, keepdim=True
    )
    u_in, u_out = (flat_in - low) / span, (flat_out - low) / span
    gammas = []
    for sample in range(6):
        inner = (u_in[sample] > 0.2) & (u_in[sample] < 0.8)
        g = u_out[sample][inner].log() / u_in[sample][inner].log()
        assert (g.max() - g.min()).item() < 1e-3  # one exponent for the whole sample
        gammas.append(g.mean().item())
    assert all(0.5 - 1e-3 <= g <= 1.5 + 1e-3 for g in gammas)
    assert max(abs(g - 1) for g in gammas) > 0.05


def test_noise_has_requested_std():
    image = torch.zeros(4, 1, 64, 64)
    cfg = config(**{**NO_PHOTOMETRIC, "noise_std": 0.5})
    out = photometric(image, cfg, torch.Generator().manual_seed(0))
    assert abs(out.std().item() - 0.5) < 0.02
    assert abs(out.mean().item()) < 0.02


def test_gaussian_blur_of_a_point_has_requested_sigma():
    image = torch.zeros(2, 1, 33, 33)
    image[:, :, 16, 16] = 1.0
    sigma = torch.tensor([1.0, 2.0])
    out = gaussian_blur(image, sigma)
    torch.testing.assert_close(out.sum(dim=(1, 2, 3)), torch.ones(2), atol=1e-4, rtol=0)
    offsets = (torch.arange(33.0) - 16) ** 2
    variance_x = (out[:, 0].sum(dim=1) * offsets).sum(dim=1)
    variance_y = (out[:, 0].sum(dim=2) * offsets).sum(dim=1)
    torch.testing.assert_close(variance_x, sigma**2, atol=0.02, rtol=0.02)
    torch.testing.assert_close(variance_y, sigma**2, atol=0.02, rtol=0.02)


def test_blur_probability_zero_and_one():
    image = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    never = photometric(image, config(**{**NO_PHOTOMETRIC, "blur_prob": 0.0}),
                        torch.Generator().manual_seed(0))
    always = photometric(image, config(**{**NO_PHOTOMETRIC, "blur_prob": 1.0}),
                         torch.Generator().manual_seed(0))
    assert torch.equal(never, image)
    # Blurring lowers the variance of white noise in every sample.
    assert (always.flatten(1).var(1) < 0.6 * image.flatten(1).var(1)).all()


# errors -----------------------------------------------------------------------------------


def test_bad_settings_and_batches_are_reported():
    with pytest.raises(ValueError, match=r"--gamma 1\.5: expected >= 0 and < 1 \(augment\.gamma"):
        Augmenter(config(gamma=1.5))
    with pytest.raises(ValueError, match=r"augment\.scale"):
        Augmenter(config(scale=(1.2, 0.8)))
    augment = Augmenter(config())
    with pytest.raises(ValueError, match=r"batch\['mask'\] is \(4, 32, 32\); expected shape"):
        augment({"image": torch.zeros(4, 1, 64, 64), "mask": torch.zeros(4, 32, 32).long()})
    with pytest.raises(ValueError, match=r"batch\['image'\] is \(64, 64\)"):
        augment({"image": torch.zeros(64, 64), "mask": torch.zeros(64, 64).long()})


# (8) CUDA -----------------------------------------------------------------------------------


@pytest.mark.cuda
def test_cuda_matches_cpu_random_choices():
    batch = blob_batch()
    cfg = config(noise_std=0.0, blur_prob=1.0)
    cpu = Augmenter(cfg, seed=4)(batch)
    on_gpu = Augmenter(cfg, seed=4)({k: v.cuda() for k, v in batch.items()})
    for key in ("image", "mask", "weight"):
        assert on_gpu[key].device.type == "cuda"
        assert on_gpu[key].dtype == batch[key].dtype
    torch.testing.assert_close(on_gpu["image"].cpu(), cpu["image"], atol=1e-3, rtol=0)
    torch.testing.assert_close(on_gpu["weight"].cpu(), cpu["weight"], atol=1e-3, rtol=0)
    # Nearest sampling may flip a pixel exactly on a rounding tie; nothing more.
    assert (on_gpu["mask"].cpu() == cpu["mask"]).float().mean().item() > 0.999
    noisy = Augmenter(config(), seed=4)({k: v.cuda() for k, v in batch.items()})
    assert noisy["image"].device.type == "cuda"


def test_grid_sample_reference_for_sampling_grid():
    # sampling_grid adds the displacement to exactly what F.affine_grid gives.
    theta = torch.tensor([[[0.9, 0.1, 0.05], [-0.1, 0.9, 0.0]]])
    displacement = torch.full((1, 8, 12, 2), 0.01)
    grid = sampling_grid(theta, 8, 12, displacement)
    reference = F.affine_grid(theta, [1, 1, 8, 12], align_corners=False) + 0.01
    torch.testing.assert_close(grid, reference)
