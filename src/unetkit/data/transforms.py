"""Batched, on-device data augmentation for segmentation batches.

(Longer than our usual 400 lines: the geometric grid, the elastic field and the
photometric changes are one pipeline that is read, and tested, together.)

A batch is a dict with

* ``"image"``  float (B, C, H, W), already normalised,
* ``"mask"``   int64 (B, H, W), class indices (may hold an ignore index such as 255),
* ``"weight"`` float (B, H, W), optional per-pixel loss weights.

Every other key is passed through untouched. All tensors stay on the batch's device.

Geometry. Flips, 90-degree rotations, a free rotation, isotropic scaling, translation and
the U-Net paper's elastic deformation are composed into ONE sampling grid (B, H, W, 2) and
applied with ONE ``F.grid_sample`` per tensor. One resampling instead of a chain keeps the
image sharp (every interpolation low-pass filters it once more) and is faster (one pass over
the pixels instead of six).

Coordinate conventions (used throughout, ``align_corners=False``):

* pixel-centred coordinates: ``x`` = column - (W - 1) / 2 (right), ``y`` = row - (H - 1) / 2
  (down), in pixels;
* normalised coordinates (``F.affine_grid`` / ``F.grid_sample``): ``x_n = x * 2 / W``,
  ``y_n = y * 2 / H``, so a pixel is 2 / W wide and 2 / H tall;
* a positive angle (and ``rot90_k`` > 0) turns the picture counter-clockwise as displayed
  (row 0 at the top): ``rot90_k = k`` reproduces ``torch.rot90(image, k, dims=(-2, -1))``.

Randomness. Every random parameter is drawn from one seeded CPU ``torch.Generator`` and then
moved to the batch's device, so CPU and CUDA runs make the same random choices and a resumed
run (``Augmenter.state_dict``) continues the same stream. The only per-pixel random field,
the additive noise, is drawn on the device by a generator seeded from that CPU stream:
reproducible on each device without copying a full-size tensor from the CPU every batch,
but not bit-identical between CPU and CUDA.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from unetkit.config import AugmentConfig

__all__ = [
    "Augmenter",
    "affine_matrices",
    "elastic_displacement",
    "gaussian_blur",
    "photometric",
    "random_affine_matrices",
    "sampling_grid",
    "warp",
]

# cos and sin of k * 90 degrees, exact, so that rot90 is an exact permutation of pixels.
_COS90 = torch.tensor([1.0, 0.0, -1.0, 0.0], dtype=torch.float64)
_SIN90 = torch.tensor([0.0, 1.0, 0.0, -1.0], dtype=torch.float64)


def _uniform(low: float, high: float, n: int, generator: torch.Generator) -> torch.Tensor:
    """(n,) float64 uniform in [low, high], drawn on the CPU."""
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def affine_matrices(
    height: int,
    width: int,
    *,
    hflip: torch.Tensor,
    vflip: torch.Tensor,
    rot90_k: torch.Tensor,
    angle_deg: torch.Tensor,
    scale: torch.Tensor,
    translate_px: torch.Tensor,
) -> torch.Tensor:
    """Compose per-sample geometric parameters into ``F.affine_grid`` matrices.

    Args (one entry per sample, B samples):
        hflip, vflip: bool (B,), mirror left-right / top-bottom.
        rot90_k: int (B,), number of counter-clockwise quarter turns (k mod 4).
        angle_deg: float (B,), counter-clockwise rotation, degrees.
        scale: float (B,), zoom factor (> 1 enlarges the content).
        translate_px: float (B, 2), shift of the content (x right, y down), pixels.

    The forward transform (input picture -> output picture) is, applied in this order:
    flip, quarter turns, rotation, scaling, translation, all about the image centre and in
    pixel units, so a rotation of a non-square image stays a rigid rotation in pixels.

    Returns:
        float32 (B, 2, 3) on the CPU: the INVERSE map (output -> input) in normalised
        coordinates, which is what ``F.affine_grid`` expects.
    """
    batch = angle_deg.shape[0]
    hflip = hflip.to(torch.bool).cpu()
    vflip = vflip.to(torch.bool).cpu()
    k = rot90_k.to(torch.long).cpu() % 4
    angle = torch.deg2rad(angle_deg.to(torch.float64).cpu())
    scale = scale.to(torch.float64).cpu()
    translate_px = translate_px.to(torch.float64).cpu()

    def eye() -> torch.Tensor:
        return torch.eye(3, dtype=torch.float64).repeat(batch, 1, 1)

    flip = eye()
    flip[:, 0, 0] = torch.where(hflip, -1.0, 1.0)
    flip[:, 1, 1] = torch.where(vflip, -1.0, 1.0)

    def turn(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # Counter-clockwise as displayed; y points down, hence the sign pattern.
        m = eye()
        m[:, 0, 0], m[:, 0, 1] = cos, sin
        m[:, 1, 0], m[:, 1, 1] = -sin, cos
        return m

    quarter = turn(_COS90[k], _SIN90[k])
    rotation = turn(torch.cos(angle), torch.sin(angle))
    zoom = eye()
    zoom[:, 0, 0] = scale
    zoom[:, 1, 1] = scale
    shift = eye()
    shift[:, :2, 2] = translate_px

    forward = shift @ zoom @ rotation @ quarter @ flip  # pixel-centred, input -> output
    inverse = torch.linalg.inv(forward)  # output -> input, as grid_sample samples
    # Change of units: pixel-centred = to_pixels @ normalised. Conjugating (rather than
    # rotating normalised coordinates directly) is what keeps non-square images undistorted.
    to_pixels = torch.diag(torch.tensor([width / 2.0, height / 2.0, 1.0], dtype=torch.float64))
    to_normalised = torch.linalg.inv(to_pixels)
    theta = to_normalised @ inverse @ to_pixels
    return theta[:, :2, :].to(torch.float32)


def random_affine_matrices(
    batch_size: int,
    height: int,
    width: int,
    cfg: AugmentConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """Draw one random affine transform per sample.

    Flips with probability 1/2 each (``cfg.flip``); a uniform number of quarter turns
    (``cfg.rot90``, only when ``height == width``: a quarter turn of a non-square image
    cannot keep its shape, so non-square batches get none); angle uniform in
    ``+-cfg.rotate_deg``; scale uniform in ``cfg.scale``; shift uniform in
    ``+-cfg.translate * side`` per axis. All parameters are always drawn, in a fixed order,
    so the random stream does not depend on which options are switched on.

    Returns:
        float32 (B, 2, 3) on the CPU, output -> input in normalised coordinates
        (see :func:`affine_matrices`).
    """
    n = batch_size
    hflip = torch.rand(n, generator=generator) < 0.5
    vflip = torch.rand(n, generator=generator) < 0.5
    k = torch.randint(0, 4, (n,), generator=generator)
    angle = _uniform(-cfg.rotate_deg, cfg.rotate_deg, n, generator)
    scale = _uniform(cfg.scale[0], cfg.scale[1], n, generator)
    shift = torch.stack(
        [
            _uniform(-cfg.translate * width, cfg.translate * width, n, generator),
            _uniform(-cfg.translate * height, cfg.translate * height, n, generator),
        ],
        dim=1,
    )
    if not cfg.flip:
        hflip = torch.zeros_like(hflip)
        vflip = torch.zeros_like(vflip)
    if not cfg.rot90 or height != width:
        k = torch.zeros_like(k)
    return affine_matrices(
        height,
        width,
        hflip=hflip,
        vflip=vflip,
        rot90_k=k,
        angle_deg=angle,
        scale=scale,
        translate_px=shift,
    )


def elastic_displacement(
    batch_size: int,
    height: int,
    width: int,
    grid_points: int,
    sigma_px: float,
    generator: torch.Generator,
    device: torch.device | str,
) -> torch.Tensor:
    """The U-Net paper's smooth random deformation field.

    Random displacements ~ N(0, ``sigma_px``) pixels (independently in x and y) at a coarse
    ``grid_points`` x ``grid_points`` grid spanning the image (corner points on the corner
    pixels), upsampled bicubically to every pixel. Drawn on the CPU, interpolated on
    ``device``.

    Returns:
        float32 (B, H, W, 2) on ``device``, (x, y) displacements in normalised units
        (pixels * 2 / W for x, pixels * 2 / H for y), ready to add to a sampling grid.
    """
    if grid_points < 2:
        raise ValueError(
            f"elastic_displacement: grid_points = {grid_points}; expected >= 2 "
            "(the coarse grid needs a point at each border)"
        )
    coarse = torch.randn(
        batch_size, 2, grid_points, grid_points, generator=generator, dtype=torch.float32
    )
    coarse = (coarse * sigma_px).to(device)
    # align_corners=True puts the outer coarse points exactly on the border pixels, so the
    # field is defined over the whole image and needs no extrapolation.
    dense = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)
    to_normalised = torch.tensor([2.0 / width, 2.0 / height], device=dense.device)
    return dense.permute(0, 2, 3, 1) * to_normalised


def sampling_grid(
    theta: torch.Tensor,
    height: int,
    width: int,
    displacement: torch.Tensor | None = None,
) -> torch.Tensor:
    """Compose affine matrices and an optional displacement field into one sampling grid.

    Args:
        theta: float (B, 2, 3), output -> input in normalised coordinates; its device is the
            grid's device.
        height, width: output size, pixels.
        displacement: float (B, H, W, 2) in normalised units, added to the affine sampling
            positions (a shift of where each output pixel reads the input), or None.

    Returns:
        float32 (B, H, W, 2) normalised (x, y) input positions for ``F.grid_sample`` with
        ``align_corners=False``.
    """
    batch = theta.shape[0]
    grid = F.affine_grid(
        theta.to(torch.float32), [batch, 1, height, width], align_corners=False
    )
    if displacement is not None:
        grid = grid + displacement.to(device=grid.device, dtype=grid.dtype)
    return grid


def warp(batch: dict[str, Any], grid: torch.Tensor) -> dict[str, Any]:
    """Resample ``image``, ``mask`` and (if present) ``weight`` with one sampling grid.

    Bilinear for the image and the weight map; nearest for the mask, so it keeps exactly
    its integer values (class indices and the ignore index; no averaging of labels).
    Mirror padding at the borders, as the paper extends images by mirroring. Returns a new
    dict; other keys are passed through.
    """
    out = dict(batch)
    image = batch["image"]
    out["image"] = F.grid_sample(
        image,
        grid.to(image.dtype),
        mode="bilinear",
        padding_mode="reflection",
        align_corners=False,
    )
    # Labels go through float32: integers up to 2**24 are exact, and nearest never mixes them.
    mask = batch["mask"]
    sampled = F.grid_sample(
        mask[:, None].to(torch.float32),
        grid.to(torch.float32),
        mode="nearest",
        padding_mode="reflection",
        align_corners=False,
    )
    out["mask"] = sampled[:, 0].round().to(mask.dtype)
    weight = batch.get("weight")
    if weight is not None:
        out["weight"] = F.grid_sample(
            weight[:, None],
            grid.to(weight.dtype),
            mode="bilinear",
            padding_mode="reflection",
            align_corners=False,
        )[:, 0]
    return out


def gaussian_blur(image: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each sample with its own Gaussian, separably and depthwise, on the image's device.

    Args:
        image: float (B, C, H, W).
        sigma: float (B,), standard deviation of the kernel, pixels (> 0).

    Returns:
        float (B, C, H, W), same dtype and device; borders mirrored.
    """
    batch, channels, height, width = image.shape
    sigma = sigma.to(device=image.device, dtype=torch.float32)
    # +-3 sigma holds 99.7 % of the kernel; mirror padding needs radius < side.
    radius = min(math.ceil(3.0 * float(sigma.max())), height - 1, width - 1)
    if radius < 1:
        return image
    offsets = torch.arange(-radius, radius + 1, device=image.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma[:, None]) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (B, K), each sums to 1
    kernel = kernel.repeat_interleave(channels, dim=0).to(image.dtype)  # (B*C, K)
    size = 2 * radius + 1
    # Fold the batch into the channels so one grouped conv gives every sample its own kernel.
    x = image.reshape(1, batch * channels, height, width)
    x = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    x = F.conv2d(x, kernel.view(-1, 1, 1, size), groups=batch * channels)
    x = F.pad(x, (0, 0, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(-1, 1, size, 1), groups=batch * channels)
    return x.reshape(batch, channels, height, width)


def photometric(
    image: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """Random intensity changes, per sample, on the image only.

    In this order: brightness (add b ~ U(+-cfg.brightness)), contrast (scale the deviation
    from the sample's mean by c ~ U(1 +- cfg.contrast)), gamma (g ~ U(1 +- cfg.gamma)),
    Gaussian blur (with probability cfg.blur_prob, sigma ~ U(cfg.blur_sigma) pixels), then
    Gaussian noise (std cfg.noise_std). Noise comes after blur so its std is the one
    configured (blurring noise would shrink and correlate it).

    Gamma is defined for intensities in [0, 1], but a normalised image has negative values
    (a power of a negative number is undefined). So each sample is min-max rescaled to
    [0, 1], raised to g, and mapped back to its own [min, max]: the curve bends mid-tones
    while the value range the network was normalised for is kept.

    Args:
        image: float (B, C, H, W) on any device, or (B, C, D, H, W) volumes.
        cfg: magnitudes; a zero magnitude leaves that change out.
        generator: seeded CPU generator; every parameter is drawn from it, in a fixed order.

    Returns:
        float (B, C, H, W), same dtype and device.
    """
    batch = image.shape[0]
    device, dtype = image.device, image.dtype
    # Draw everything first, always in the same order, so the stream is config-independent.
    brightness = _uniform(-cfg.brightness, cfg.brightness, batch, generator)
    contrast = _uniform(1.0 - cfg.contrast, 1.0 + cfg.contrast, batch, generator)
    gamma = _uniform(1.0 - cfg.gamma, 1.0 + cfg.gamma, batch, generator)
    blur_on = torch.rand(batch, generator=generator, dtype=torch.float64) < cfg.blur_prob
    blur_sigma = _uniform(cfg.blur_sigma[0], cfg.blur_sigma[1], batch, generator)
    noise_seed = int(torch.randint(0, 2**62, (1,), generator=generator))

    def per_sample(values: torch.Tensor) -> torch.Tensor:
        return values.to(device=device, dtype=dtype).view(batch, *(1,) * (image.ndim - 1))

    every = tuple(range(1, image.ndim))  # all but the batch: (C, H, W) or (C, D, H, W)
    out = image
    if cfg.brightness > 0:
        out = out + per_sample(brightness)
    if cfg.contrast > 0:
        mean = out.mean(dim=every, keepdim=True)
        out = (out - mean) * per_sample(contrast) + mean
    if cfg.gamma > 0:
        low = out.amin(dim=every, keepdim=True)
        span = out.amax(dim=every, keepdim=True) - low
        # clamp: a constant sample has span 0 and stays constant (0 ** g = 0 for g > 0).
        unit = ((out - low) / span.clamp_min(1e-12)).clamp(0.0, 1.0)
        out = unit ** per_sample(gamma) * span + low
    if cfg.blur_prob > 0 and bool(blur_on.any()):
        chosen = torch.nonzero(blur_on).flatten().to(device)
        picked = out[chosen]
        # Volumes are blurred in-plane, slice by slice (their z is often coarser).
        flat = picked.flatten(1, 2) if picked.ndim == 5 else picked
        blurred = gaussian_blur(flat, blur_sigma[blur_on].to(torch.float32)).view_as(picked)
        out = out.index_copy(0, chosen, blurred)
    if cfg.noise_std > 0:
        device_generator = torch.Generator(device=device)
        device_generator.manual_seed(noise_seed)
        noise = torch.randn(
            out.shape, generator=device_generator, device=device, dtype=torch.float32
        )
        out = out + (cfg.noise_std * noise).to(dtype)
    return out


def _check_batch(batch: dict[str, Any]) -> None:
    image, mask = batch.get("image"), batch.get("mask")
    if not isinstance(image, torch.Tensor) or image.dim() != 4:
        found = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"augment: batch['image'] is {found}; expected a (B, C, H, W) tensor")
    if not image.is_floating_point():
        raise ValueError(f"augment: batch['image'] has dtype {image.dtype}; expected float")
    b, _, h, w = image.shape
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (b, h, w):
        found = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"augment: batch['mask'] is {found}; expected shape {(b, h, w)}")
    weight = batch.get("weight")
    if weight is not None and tuple(weight.shape) != (b, h, w):
        raise ValueError(
            f"augment: batch['weight'] has shape {tuple(weight.shape)}; expected {(b, h, w)}"
        )


class Augmenter:
    """Random geometric + photometric augmentation of whole batches on their device.

    Each sample gets its own random transform. Geometry (flips, quarter turns, rotation,
    scale, translation, elastic deformation) is applied to image, mask and weight with one
    shared sampling grid, so they stay aligned; photometric changes touch the image only.

    Example::

        augment = Augmenter(cfg.augment, seed=cfg.train.seed)
        batch = augment({"image": x.to(dev), "mask": y.to(dev)})
    """

    def __init__(self, cfg: AugmentConfig, seed: int = 0) -> None:
        self.cfg = cfg
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(seed)

    def _geometric_enabled(self) -> bool:
        cfg = self.cfg
        return (
            cfg.flip
            or cfg.rot90
            or cfg.rotate_deg > 0
            or tuple(cfg.scale) != (1.0, 1.0)
            or cfg.translate > 0
            or (cfg.elastic and cfg.elastic_sigma > 0)
        )

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Augment ``batch`` (see the module docstring); returns a new dict."""
        if not self.cfg.enabled:
            return batch
        _check_batch(batch)
        cfg = self.cfg
        image = batch["image"]
        size, _, height, width = image.shape
        out = dict(batch)
        # Skipping an identity warp saves time and keeps the pixels exact.
        if self._geometric_enabled():
            theta = random_affine_matrices(size, height, width, cfg, self.generator)
            displacement = None
            if cfg.elastic and cfg.elastic_sigma > 0:
                displacement = elastic_displacement(
                    size,
                    height,
                    width,
                    cfg.elastic_grid,
                    cfg.elastic_sigma,
                    self.generator,
                    image.device,
                )
            grid = sampling_grid(theta.to(image.device), height, width, displacement)
            out = warp(out, grid)
        out["image"] = photometric(out["image"], cfg, self.generator)
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The random stream's position, for checkpoints."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Continue the random stream saved by :meth:`state_dict`."""
        if "generator" not in state:
            raise ValueError(
                f"Augmenter.load_state_dict: keys {sorted(state)}; expected 'generator'"
            )
        self.generator.set_state(state["generator"])
