"""The training and validation dataset: crops, padding, weight maps and normalisation of
the paired items (:mod:`unetkit.data.pairing`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from unetkit.config import DataConfig
from unetkit.data.io import DataError
from unetkit.data.normalize import normalize_image
from unetkit.data.pairing import Item, hw_text
from unetkit.data.weightmap import border_weight_map
from unetkit.instances import instance_target


def _components(mask: np.ndarray, num_classes: int, ignore_index: int | None) -> np.ndarray:
    """Instance labels from connected components of each foreground class, int32 (H, W).

    Used when no instance labels exist. Touching objects of the same class merge into one
    component, so the weight map cannot emphasise the gap between them.
    """
    instances = np.zeros(mask.shape, dtype=np.int32)
    offset = 0
    for cls in range(1, num_classes):
        if cls == ignore_index:
            continue
        labels, count = ndimage.label(mask == cls)
        instances[labels > 0] = labels[labels > 0] + offset
        offset += count
    return instances


def _pad_to(size: int, *arrays: np.ndarray) -> list[np.ndarray]:
    """Mirror-pad the last two axes of every array up to at least size x size (centred)."""
    height, width = arrays[0].shape[-2:]
    pad_h, pad_w = max(0, size - height), max(0, size - width)
    if pad_h == 0 and pad_w == 0:
        return list(arrays)
    spatial = ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2))
    return [np.pad(a, ((0, 0),) * (a.ndim - 2) + spatial, mode="reflect") for a in arrays]


class EpochSamples(Dataset):
    """What the 2D and 3D datasets share: ``self.items``, and an epoch counter in shared
    memory (DataLoader workers, persistent ones included, see the value ``set_epoch``
    writes in the main process), so a sample's randomness can follow (seed, epoch, i)."""

    items: list

    def _start_epochs(self) -> None:
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # Without this, Python would iterate through __getitem__ until IndexError, which
        # the wrap-around indexing never raises.
        return (self[i] for i in range(len(self)))

    def set_epoch(self, epoch: int) -> None:
        """Call before each epoch's ``iter(loader)`` so every epoch gets new crops."""
        self._epoch[0] = int(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])


class SegmentationDataset(EpochSamples):
    """Items as training samples.

    ``self[i]`` is a dict:
      - "image": float32 tensor (C, h, w), normalised with cfg.mean / cfg.std
        (unless cfg.normalize == "none");
      - "mask": int64 tensor (h, w), class indices (or cfg.ignore_index);
      - "weight": float32 tensor (h, w), per-pixel loss weight: the U-Net border weight map
        (cfg.weight_map), else ones; 0 at ignore_index pixels;
      - "index": int, the item's position in ``items``.
    Training samples are random cfg.patch_size crops (mirror-padded when the image is
    smaller), centred on a foreground pixel with probability cfg.foreground_oversample;
    validation samples are whole images. The randomness of sample i comes from
    (seed, epoch, i) only: reproducible, different every epoch (see :meth:`set_epoch`) and
    independent of DataLoader workers. Indices >= len(self) wrap around to item
    i % len(self) with a different crop, so a sampler may draw more samples per epoch than
    there are images.
    """

    def __init__(self, items: Sequence[Item], cfg: DataConfig, train: bool, seed: int = 0):
        self.items = list(items)
        if not self.items:
            raise DataError(f"no {'training' if train else 'validation'} images")
        if cfg.normalize != "none" and (not cfg.mean or len(cfg.mean) != len(cfg.std)):
            raise ValueError("DataConfig.mean/std are not set (build_datasets fills them); "
                             "set them, or normalize='none'")
        self.cfg = cfg
        self.train = train
        self.seed = seed
        self.spatial_dims = 2
        self._start_epochs()
        # Weight maps are costly (a distance transform per object), so each is computed once
        # per process: with DataLoader workers every worker fills its own cache.
        self._weights: dict[int, np.ndarray] = {}
        self._targets: dict[int, np.ndarray] = {}  # instance task: three-class targets

    @property
    def num_channels(self) -> int:
        """Channels of the images (read from the first item)."""
        return int(self.items[0].load_image().shape[0])

    def rng(self, index: int) -> np.random.Generator:
        """The random generator of sample ``index`` in the current epoch."""
        return np.random.default_rng([self.seed % 2**63, self.epoch, index % 2**63])

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        item_index = index % len(self.items)
        item = self.items[item_index]
        image = item.load_image()
        mask = item.load_mask(self.cfg)
        if image.shape[1:] != mask.shape:
            raise DataError(f"{item.label}: image is {hw_text(image.shape[1:])} but the mask is "
                            f"{hw_text(mask.shape)}")
        weight = self._weight_map(item_index, item, mask)
        if self.cfg.task == "instances":
            mask = self._instance_target(item_index, item, mask)
        if self.train:
            image, mask, weight = self._random_crop(self.rng(index), image, mask, weight)
        image = normalize_image(image, self.cfg, item.label)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
            "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64)),
            # A copy: the cached map must not be changed through the returned tensor.
            "weight": torch.from_numpy(np.array(weight, dtype=np.float32, copy=True)),
            "index": item_index,
        }

    def _weight_map(self, item_index: int, item: Item, mask: np.ndarray) -> np.ndarray:
        """float32 (H, W) for the whole image (cropped with it, so crops keep the true
        distances to objects outside the crop)."""
        cfg = self.cfg
        cached = self._weights.get(item_index)
        if cached is not None:
            return cached
        if cfg.weight_map:
            weight = border_weight_map(self._instances(item, mask), mask, cfg.num_classes,
                                       cfg.weight_map_w0, cfg.weight_map_sigma,
                                       cfg.ignore_index)
            weight = np.asarray(weight, dtype=np.float32)
        else:
            weight = np.ones(mask.shape, dtype=np.float32)
        if cfg.ignore_index is not None:
            weight = np.where(mask == cfg.ignore_index, np.float32(0), weight)
        if cfg.weight_map:  # ones are cheaper to rebuild than to keep
            self._weights[item_index] = weight
        return weight

    def instances_of(self, item: Item) -> np.ndarray:
        """The item's true objects (H, W): its instance labels, or the mask's connected
        components without them."""
        return self._instances(item, item.load_mask(self.cfg))

    def _instances(self, item: Item, mask: np.ndarray) -> np.ndarray:
        """The item's instance labels, or the mask's connected components without them."""
        instances = item.load_instances()
        if instances is None:
            return _components(mask, self.cfg.num_classes, self.cfg.ignore_index)
        if instances.shape != mask.shape:
            raise DataError(f"{item.instance_path or item.label}: instance labels are "
                            f"{hw_text(instances.shape)} but the mask is {hw_text(mask.shape)}")
        return instances

    def _instance_target(self, item_index: int, item: Item, mask: np.ndarray) -> np.ndarray:
        """The three-class target (background, interior, boundary) of the whole image,
        computed once per image like the weight map; ignored pixels stay ignored."""
        cached = self._targets.get(item_index)
        if cached is None:
            cached = instance_target(self._instances(item, mask), self.cfg.boundary_width)
            if self.cfg.ignore_index is not None:
                cached[mask == self.cfg.ignore_index] = self.cfg.ignore_index
            self._targets[item_index] = cached
        return cached

    def _random_crop(self, rng: np.random.Generator, image: np.ndarray, mask: np.ndarray,
                     weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        size, context = self.cfg.patch_size, self.cfg.context
        # Valid padding: the network sees `context` pixels around the output it predicts.
        # Mirroring the image by that much first (the paper's overlap-tile extension) lets
        # the output window reach every pixel, borders included, not only the centre.
        pad = ((context, context), (context, context))
        fg_mask = mask
        if context:
            image = np.pad(image, ((0, 0), *pad), mode="reflect")
            mask, weight = np.pad(mask, pad, mode="reflect"), np.pad(weight, pad, mode="reflect")
        image, mask, weight = _pad_to(size, image, mask, weight)
        height, width = mask.shape
        centre = None
        if rng.random() < self.cfg.foreground_oversample:
            centre = self._foreground_pixel(rng, fg_mask)
            if centre is not None:
                centre = (centre[0] + context + (height - fg_mask.shape[0] - 2 * context) // 2,
                          centre[1] + context + (width - fg_mask.shape[1] - 2 * context) // 2)
        if centre is None:
            top = int(rng.integers(0, height - size + 1))
            left = int(rng.integers(0, width - size + 1))
        else:
            top = min(max(centre[0] - size // 2, 0), height - size)
            left = min(max(centre[1] - size // 2, 0), width - size)
        window = (slice(top, top + size), slice(left, left + size))
        return image[(slice(None), *window)], mask[window], weight[window]

    def _foreground_pixel(self, rng: np.random.Generator, mask: np.ndarray
                          ) -> tuple[int, int] | None:
        return random_foreground(rng, mask, self.cfg.ignore_index)


def random_foreground(rng: np.random.Generator, mask: np.ndarray,
                      ignore_index: int | None) -> tuple[int, ...] | None:
    """The index of a random pixel (voxel) of a random foreground class present in the
    mask (each class equally likely, so rare classes are seen as often as common ones);
    None if there is none. The images' and the volumes' foreground oversampling."""
    classes = [c for c in np.unique(mask).tolist() if c != 0 and c != ignore_index]
    if not classes:
        return None
    cls = classes[int(rng.integers(len(classes)))]
    flat = np.flatnonzero(mask == cls)
    return tuple(int(i) for i in np.unravel_index(flat[int(rng.integers(flat.size))],
                                                  mask.shape))
