"""Augmentation of volume batches on their device: the 2D pipeline's design in 3D.

Flips, quarter turns in-plane, rotations, scaling, translation and the elastic deformation
are composed into one 5-D sampling grid and applied with one ``grid_sample`` (image and
weight trilinear, mask nearest; :func:`~unetkit.data.transforms.warp` works for both), then
the photometric changes of :func:`~unetkit.data.transforms.photometric`.

Geometry is built in physical units (voxel index x spacing), so a rotation of an
anisotropic volume turns space, not the voxel grid. Where the slices are much thicker
than the pixels (``max spacing > ANISOTROPIC x min spacing``), rotations stay in-plane
(about z): nnU-Net's rule, since out-of-plane turns would need detail the coarse axis
does not have.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ..config import AugmentConfig
from .transforms import photometric, warp

ANISOTROPIC = 3.0  # spacing ratio from which rotations stay in-plane (nnU-Net's value)


def _uniform(low: float, high: float, n: int, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def _rotation(axis: int, angle: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) rotations by ``angle`` (radians) about ``axis`` (0 z, 1 y, 2 x) of (z, y, x)
    coordinates."""
    n = angle.shape[0]
    c, s = torch.cos(angle), torch.sin(angle)
    m = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
    i, j = [a for a in range(3) if a != axis]
    m[:, i, i], m[:, i, j], m[:, j, i], m[:, j, j] = c, -s, s, c
    return m


def random_affine_3d(n: int, shape: tuple[int, int, int], spacing: tuple[float, ...],
                     cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """(B, 3, 4) output -> input sampling matrices in ``grid_sample``'s normalised
    (x, y, z) coordinates for volumes of ``shape`` (D, H, W) with voxel ``spacing``.

    Per sample: flips of each axis (p 1/2, ``cfg.flip``), quarter turns in-plane
    (``cfg.rot90``, square slices only), rotations U(+-rotate_deg) about z (and about y and
    x unless the voxels are anisotropic), an isotropic zoom U(cfg.scale) and a shift of up
    to ``cfg.translate`` of each side.
    """
    spacing = tuple(spacing) if spacing else (1.0, 1.0, 1.0)
    extent = torch.tensor([s * p for s, p in zip(shape, spacing)], dtype=torch.float64)
    flips = torch.where(torch.rand(n, 3, generator=generator) < 0.5, -1.0, 1.0).double()
    quarter = torch.randint(0, 4, (n,), generator=generator).double() * (math.pi / 2)
    angles = torch.deg2rad(_uniform(-cfg.rotate_deg, cfg.rotate_deg, 3 * n, generator)
                           ).view(3, n)
    zoom = _uniform(cfg.scale[0], cfg.scale[1], n, generator)
    shift = _uniform(-cfg.translate, cfg.translate, 3 * n, generator).view(n, 3) * extent
    if not cfg.flip:
        flips = torch.ones_like(flips)
    if not cfg.rot90 or shape[1] * spacing[1] != shape[2] * spacing[2]:
        quarter = torch.zeros_like(quarter)
    forward = _rotation(0, angles[0] + quarter)
    if max(spacing) <= ANISOTROPIC * min(spacing):
        forward = _rotation(1, angles[1]) @ _rotation(2, angles[2]) @ forward
    forward = forward * zoom.view(n, 1, 1) @ torch.diag_embed(flips)
    # output -> input: the inverse, in physical units centred on the volume ...
    inverse = torch.linalg.inv(forward)
    offset = -(inverse @ shift.unsqueeze(-1)).squeeze(-1)
    # ... then in normalised units (-1..1 over each axis' extent), axes reversed to (x, y, z)
    to_unit = torch.diag(2.0 / extent)
    from_unit = torch.diag(extent / 2.0)
    linear = to_unit @ inverse @ from_unit
    translation = offset * 2.0 / extent
    order = [2, 1, 0]
    theta = torch.cat([linear[:, order][:, :, order], translation[:, order, None]], dim=2)
    return theta.to(torch.float32)


def elastic_displacement_3d(n: int, shape: tuple[int, int, int], spacing: tuple[float, ...],
                            grid_points: int, sigma: float, generator: torch.Generator,
                            device: torch.device | str) -> torch.Tensor:
    """The elastic deformation in 3D: displacements ~ N(0, ``sigma``) in units of the finest
    voxel side at a coarse ``grid_points``^3 grid, trilinearly upsampled. Returns float32
    (B, D, H, W, 3), (x, y, z) in normalised units, ready to add to a sampling grid."""
    spacing = tuple(spacing) if spacing else (1.0, 1.0, 1.0)
    coarse = torch.randn(n, 3, grid_points, grid_points, grid_points, generator=generator)
    dense = F.interpolate((coarse * sigma).to(device), size=shape, mode="trilinear",
                          align_corners=True)
    finest = min(spacing)
    # channel c displaces axis (x, y, z)[c]: voxels of that axis are spacing/finest wide
    voxels = torch.tensor([finest / spacing[2], finest / spacing[1], finest / spacing[0]],
                          device=dense.device)
    to_unit = torch.tensor([2.0 / shape[2], 2.0 / shape[1], 2.0 / shape[0]],
                           device=dense.device)
    return dense.permute(0, 2, 3, 4, 1) * voxels * to_unit


class Augmenter3D:
    """Random geometric + photometric augmentation of (B, C, D, H, W) volume batches; the
    3D counterpart of :class:`~unetkit.data.transforms.Augmenter` (same settings, same
    call: ``batch = augment({"image": x, "mask": y, "weight": w})``)."""

    def __init__(self, cfg: AugmentConfig, spacing: tuple[float, ...] = (), seed: int = 0):
        self.cfg = cfg
        self.spacing = tuple(spacing) or (1.0, 1.0, 1.0)
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(seed)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        cfg = self.cfg
        if not cfg.enabled:
            return batch
        image = batch["image"]
        if image.ndim != 5 or batch["mask"].shape != image.shape[:1] + image.shape[2:]:
            raise ValueError(f"augment: expected image (B, C, D, H, W) and mask (B, D, H, W),"
                             f" got {tuple(image.shape)} and {tuple(batch['mask'].shape)}")
        n, shape = image.shape[0], tuple(image.shape[2:])
        theta = random_affine_3d(n, shape, self.spacing, cfg, self.generator)
        grid = F.affine_grid(theta.to(image.device), [n, 1, *shape], align_corners=False)
        if cfg.elastic and cfg.elastic_sigma > 0:
            grid = grid + elastic_displacement_3d(n, shape, self.spacing, cfg.elastic_grid,
                                                  cfg.elastic_sigma, self.generator,
                                                  image.device)
        out = warp(batch, grid)
        out["image"] = photometric(out["image"], cfg, self.generator)
        return out
