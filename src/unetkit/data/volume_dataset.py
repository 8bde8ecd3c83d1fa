"""Volumes as training samples: random 3D patches with foreground oversampling, or whole
volumes for validation, normalised as nnU-Net does (see :mod:`.normalize`).

The 2D :class:`~unetkit.data.dataset.SegmentationDataset`'s contract, one dimension up:
``self[i]`` is {"image": float32 (C, d, h, w), "mask": int64 (d, h, w), "weight": float32
ones (d, h, w) (0 at the ignore index), "index": int}. Border weight maps and the
instance task are 2D only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from unetkit.config import DataConfig
from unetkit.data.dataset import EpochSamples, random_foreground
from unetkit.data.io import DataError
from unetkit.data.normalize import normalize_image

Loader = Callable[[], tuple[np.ndarray, np.ndarray]]


@dataclass
class VolumeItem:
    """One volume: ``load()`` gives (image float32 (C, D, H, W), mask int (D, H, W));
    ``spacing`` is (z, y, x). Loaded once and kept (volumes of a training set are read on
    every epoch; their total size bounds memory)."""

    name: str
    load_arrays: Loader
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    path: str | None = None
    _cache: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        if self._cache is None:
            image, mask = self.load_arrays()
            if image.shape[1:] != mask.shape:
                raise DataError(f"{self.path or self.name}: image is "
                                f"{'x'.join(map(str, image.shape[1:]))} but its mask is "
                                f"{'x'.join(map(str, mask.shape))}; they must match")
            self._cache = (image, mask)
        return self._cache


def patch_shape(cfg: DataConfig, spacing: Sequence[float],
                shape: Sequence[int] | None = None) -> tuple[int, int, int]:
    """(d, h, w) of a training patch: ``patch_size`` in-plane and ``patch_depth`` slices, or
    as many slices as cover the same physical extent (at least 8, a multiple of 4). With
    the typical volume ``shape``, no side is larger than the volume's (a multiple of 4)."""
    z, y = (spacing[0], spacing[1]) if spacing else (1.0, 1.0)
    depth = cfg.patch_depth or max(8, int(round(cfg.patch_size * y / z / 4)) * 4)
    patch = (depth, cfg.patch_size, cfg.patch_size)
    if shape is not None and cfg.patch_depth is None:
        patch = tuple(min(p, max(4, s // 4 * 4)) for p, s in zip(patch, shape))
    return patch


class VolumeDataset(EpochSamples):
    """Training samples are random ``patch`` crops (mirror-padded where the volume is
    smaller), centred on a foreground voxel with probability cfg.foreground_oversample;
    validation samples are whole volumes. Sample randomness comes from (seed, epoch, i)
    only; indices >= len(self) wrap around with another crop (see the 2D dataset)."""

    def __init__(self, items: Sequence[VolumeItem], cfg: DataConfig, train: bool,
                 patch: tuple[int, int, int], seed: int = 0):
        self.items = list(items)
        if not self.items:
            raise DataError(f"no {'training' if train else 'validation'} volumes")
        self.cfg, self.train, self.patch, self.seed = cfg, train, tuple(patch), seed
        self.spatial_dims = 3
        # Valid padding: voxels the network loses on each side, per axis. Volumes are
        # mirrored by that much before cropping, so the output window reaches every voxel.
        self.context: tuple[int, ...] = (0, 0, 0)
        self._start_epochs()

    @property
    def num_channels(self) -> int:
        return int(self.items[0].load()[0].shape[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        item_index = index % len(self.items)
        image, mask = self.items[item_index].load()
        if self.train:
            rng = np.random.default_rng([self.seed % 2**63, self.epoch, index])
            image, mask = self._random_crop(rng, image, mask)
        image = normalize_image(image, self.cfg, self.items[item_index].name)
        weight = np.ones(mask.shape, np.float32)
        if self.cfg.ignore_index is not None:
            weight[mask == self.cfg.ignore_index] = 0
        return {"image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
                "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64)),
                "weight": torch.from_numpy(weight), "index": item_index}

    def _random_crop(self, rng: np.random.Generator, image: np.ndarray, mask: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
        if any(self.context):
            around = [(c, c) for c in self.context]
            image = np.pad(image, [(0, 0), *around], mode="symmetric")
            mask = np.pad(mask, around, mode="symmetric")
        pads = [(max(0, p - s) // 2, max(0, p - s) - max(0, p - s) // 2)
                for p, s in zip(self.patch, mask.shape)]
        if any(sum(p) for p in pads):
            image = np.pad(image, [(0, 0), *pads], mode="reflect")
            mask = np.pad(mask, pads, mode="reflect")
        corner = None
        if rng.random() < self.cfg.foreground_oversample:
            voxel = random_foreground(rng, mask, self.cfg.ignore_index)
            if voxel is not None:
                corner = [min(max(v - p // 2, 0), s - p)
                          for v, p, s in zip(voxel, self.patch, mask.shape)]
        if corner is None:
            corner = [int(rng.integers(0, s - p + 1)) for p, s in zip(self.patch, mask.shape)]
        window = tuple(slice(c, c + p) for c, p in zip(corner, self.patch))
        return image[(slice(None), *window)], mask[window]
