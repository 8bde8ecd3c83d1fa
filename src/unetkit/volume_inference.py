"""Sliding-window prediction of volumes: overlapping 3D tiles, batched, blended with a
Gaussian importance map (tile centres count more than their borders, where a network
sees less context), optional flip test-time augmentation.

Memory is the volume, the (K, D, H, W) output and a batch of tiles: nothing else grows
with the volume. Used by validation during 3D training and by ``unetkit predict`` on
NIfTI / TIFF-stack / .npy volumes.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .tiling import axis_weight, even_starts

SIGMA_SCALE = 0.125  # Gaussian sigma per tile side, as the 2D tiling (and nnU-Net)


def tile_starts(size: int, tile: int, overlap: float) -> list[int]:
    """First voxels of the tiles along one axis: the 2D tiling's rule
    (:func:`unetkit.tiling.even_starts`)."""
    return list(even_starts(size, tile, overlap))


def gaussian_importance(tile: Sequence[int], device: torch.device) -> torch.Tensor:
    """(d, h, w) float32 weights, 1 at the centre, the product of the 2D tiling's per-axis
    Gaussians (:func:`unetkit.tiling.axis_weight`), never 0."""
    axes = [torch.from_numpy(axis_weight(n, "gaussian", SIGMA_SCALE)).float() for n in tile]
    weight = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return (weight / weight.max()).to(device)


def _forward(model: nn.Module, tiles: torch.Tensor, tta: bool) -> torch.Tensor:
    if not tta:
        return model(tiles).float()
    total = None
    flips = [dims for r in range(4) for dims in itertools.combinations((2, 3, 4), r)]
    for dims in flips:  # all 8 combinations of flipping z, y, x
        x = torch.flip(tiles, dims) if dims else tiles
        out = model(x).float()
        out = torch.flip(out, dims) if dims else out
        total = out if total is None else total + out
    return total / len(flips)


def _tile_shapes(model: nn.Module, tile: Sequence[int]
                 ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(input tile, output tile, margin per axis). A valid-padding U-Net loses ``margin``
    voxels on each side: its input tile is ``tile`` rounded up to a size it takes, as
    training rounded its patch, and the volume is mirrored by the margin (overlap-tile)."""
    tile = tuple(int(t) for t in tile)
    if getattr(model, "padding", "same") != "valid":
        return tile, tile, (0,) * len(tile)
    shape = model.valid_input_at_least(tile)
    return shape, model.output_shape(shape), model.margins()


def _mirror(volume: torch.Tensor, before: Sequence[int], after: Sequence[int]) -> torch.Tensor:
    """Extend (1, C, D, H, W) by mirroring (edge replication where a side is too short to
    mirror that far)."""
    pads = [p for b, a in zip(reversed(before), reversed(after)) for p in (b, a)]
    if not any(pads):
        return volume
    short = any(p >= s for b, a, s in zip(before, after, volume.shape[2:]) for p in (b, a))
    return F.pad(volume, pads, mode="replicate" if short else "reflect")


@torch.no_grad()
def sliding_window(model: nn.Module, volume: torch.Tensor, tile: Sequence[int],
                   overlap: float = 0.25, batch_size: int = 2, tta: bool = False,
                   progress: bool = False) -> torch.Tensor:
    """Logits of a whole (1, C, D, H, W) volume, (1, K, D, H, W) float32 on its device.

    ``tile`` (d, h, w) is the network's input (the training patch). A volume smaller than
    the output tile along an axis is extended to it and the output cropped back; for a
    valid-padding U-Net the volume is also mirrored by the network's margin so every
    voxel is predicted with context. The model runs in the mode and autocast context the
    caller set.
    """
    size = tuple(volume.shape[2:])
    in_tile, out_tile, margin = _tile_shapes(model, tile)
    full = tuple(max(s, t) for s, t in zip(size, out_tile))  # the output grid
    volume = _mirror(volume, margin, [m + f - s for m, f, s in zip(margin, full, size)])
    corners = list(itertools.product(*(tile_starts(f, t, overlap)
                                       for f, t in zip(full, out_tile))))
    weight = gaussian_importance(out_tile, volume.device)
    out = None
    norm = torch.zeros(full, device=volume.device)
    bar = tqdm(total=len(corners), desc="tiles", unit="tile", disable=not progress, leave=False)
    for first in range(0, len(corners), batch_size):
        chunk = corners[first:first + batch_size]
        # output window at c reads the input window at c in the mirrored volume
        tiles = torch.cat([volume[(slice(None), slice(None),
                                   *(slice(c, c + t) for c, t in zip(corner, in_tile)))]
                           for corner in chunk])
        logits = _forward(model, tiles, tta)
        if out is None:
            out = torch.zeros((logits.shape[1], *full), device=volume.device)
        for corner, piece in zip(chunk, logits):
            window = tuple(slice(c, c + t) for c, t in zip(corner, out_tile))
            out[(slice(None), *window)] += piece * weight
            norm[window] += weight
        bar.update(len(chunk))
    bar.close()
    out = out / norm
    return out[None, :, :size[0], :size[1], :size[2]]


def as_numpy_volume(image: np.ndarray) -> torch.Tensor:
    """(C, D, H, W) numpy -> (1, C, D, H, W) float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
