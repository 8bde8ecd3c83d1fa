"""Sliding-window prediction of volumes: overlapping 3D tiles, batched, blended with a
Gaussian importance map (tile centres count more than their borders, where a network
sees less context), optional flip test-time augmentation.

Memory is the volume, the (K, D, H, W) output and a batch of tiles: nothing else grows
with the volume. Used by validation during 3D training and by ``unetkit predict`` on
NIfTI / TIFF-stack / .npy volumes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

SIGMA_SCALE = 0.125  # Gaussian sigma per tile side, as nnU-Net


def tile_starts(size: int, tile: int, overlap: float) -> list[int]:
    """First voxels of the tiles along one axis: evenly spaced, the last one ending at the
    border, neighbours sharing at least ``overlap`` of a tile."""
    if size <= tile:
        return [0]
    count = math.ceil((size - tile) / (tile * (1 - overlap))) + 1
    return [round(i * (size - tile) / (count - 1)) for i in range(count)]


def gaussian_importance(tile: Sequence[int], device: torch.device) -> torch.Tensor:
    """(d, h, w) float32 weights, 1 at the centre, falling off with sigma = tile/8; never
    0, so every voxel of a tile counts a little."""
    axes = [torch.exp(-0.5 * ((torch.arange(n, dtype=torch.float32) - (n - 1) / 2)
                              / max(n * SIGMA_SCALE, 1e-3)) ** 2) for n in tile]
    weight = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    weight = weight / weight.max()
    return weight.clamp_min(1e-3).to(device)


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


@torch.no_grad()
def sliding_window(model: nn.Module, volume: torch.Tensor, tile: Sequence[int],
                   overlap: float = 0.25, batch_size: int = 2, tta: bool = False,
                   progress: bool = False) -> torch.Tensor:
    """Logits of a whole (1, C, D, H, W) volume, (1, K, D, H, W) float32 on its device.

    ``tile`` (d, h, w) is the network's input; a volume smaller along an axis is padded
    (edge replication) to it and the output cropped back. The model runs in whatever mode
    and autocast context the caller set.
    """
    size = tuple(volume.shape[2:])
    tile = tuple(int(t) for t in tile)
    pad = [max(0, t - s) for t, s in zip(tile, size)]
    if any(pad):
        volume = F.pad(volume, (0, pad[2], 0, pad[1], 0, pad[0]), mode="replicate")
    full = tuple(volume.shape[2:])
    corners = list(itertools.product(*(tile_starts(s, t, overlap) for s, t in zip(full, tile))))
    weight = gaussian_importance(tile, volume.device)
    out = None
    norm = torch.zeros(full, device=volume.device)
    bar = tqdm(total=len(corners), desc="tiles", unit="tile", disable=not progress, leave=False)
    for first in range(0, len(corners), batch_size):
        chunk = corners[first:first + batch_size]
        windows = [tuple(slice(c, c + t) for c, t in zip(corner, tile)) for corner in chunk]
        tiles = torch.cat([volume[(slice(None), slice(None), *w)] for w in windows])
        logits = _forward(model, tiles, tta)
        if out is None:
            out = torch.zeros((logits.shape[1], *full), device=volume.device)
        for w, piece in zip(windows, logits):
            out[(slice(None), *w)] += piece * weight
            norm[w] += weight
        bar.update(len(chunk))
    bar.close()
    out = out / norm
    return out[None, :, :size[0], :size[1], :size[2]]


def as_numpy_volume(image: np.ndarray) -> torch.Tensor:
    """(C, D, H, W) numpy -> (1, C, D, H, W) float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
