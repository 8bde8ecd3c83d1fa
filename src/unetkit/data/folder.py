"""Image/mask folders (or the built-in demo data) as a PyTorch dataset.

Folder layout (files are paired by stem; a mask may have another suffix than its image)::

    ROOT/images/a.png   ROOT/masks/a.png   ROOT/instances/a.png (optional)
    or ROOT/train/{images,masks,instances}/ and ROOT/val/{images,masks,instances}/

:func:`build_datasets` is the one entry point the trainer needs: it finds and checks the
files (:func:`preflight` reads every pair once, so a bad file fails before training, not
hours into it), computes the normalisation statistics and returns the two datasets.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import DataLoader, Dataset

from unetkit.config import IMAGENET_MEAN, IMAGENET_STD, DataConfig
from unetkit.data.io import (
    IMAGE_SUFFIXES,
    DataError,
    read_image,
    read_instances,
    read_mask,
)
from unetkit.data.weightmap import border_weight_map

LAYOUT = (
    "expected layout:\n"
    "  ROOT/images/NAME.png (or .tif, .jpg, .bmp, .npy)  the images\n"
    "  ROOT/masks/NAME.png                                 one mask per image, same file stem\n"
    "  ROOT/instances/NAME.png    optional instance labels (0 = background) for the weight map\n"
    "or ROOT/train/{images,masks,instances}/ and ROOT/val/{images,masks,instances}/ "
    "for a fixed train/validation split"
)
NORMALIZE_MODES = ("auto", "dataset", "imagenet", "none")


# --------------------------------------------------------------------------- items


@dataclass
class Item:
    """One image with its mask and optional instance labels: file paths read lazily, or
    arrays already in memory (the demo data). Arrays win when both are set.

    ``problem`` is a pairing problem found by :func:`find_items` (e.g. two masks with the
    same stem); :func:`preflight` reports it with the others.
    """

    name: str
    image_path: Path | None = None
    mask_path: Path | None = None
    instance_path: Path | None = None
    image: np.ndarray | None = field(default=None, repr=False)  # float32 (C, H, W) in [0, 1]
    mask: np.ndarray | None = field(default=None, repr=False)  # int64 (H, W)
    instances: np.ndarray | None = field(default=None, repr=False)  # int32 (H, W)
    problem: str | None = None

    @property
    def label(self) -> str:
        """How messages name this item: its image file, else its mask file, else its name."""
        return str(self.image_path or self.mask_path or self.name)

    def has_image(self) -> bool:
        return self.image is not None or self.image_path is not None

    def has_mask(self) -> bool:
        return self.mask is not None or self.mask_path is not None

    def load_image(self) -> np.ndarray:
        """float32 (C, H, W) in [0, 1]."""
        if self.image is not None:
            return np.asarray(self.image, dtype=np.float32)
        if self.image_path is None:
            raise DataError(f"{self.label}: no image")
        return read_image(self.image_path)

    def load_mask(self, cfg: DataConfig) -> np.ndarray:
        """int64 (H, W) class indices (or cfg.ignore_index)."""
        if self.mask is not None:
            return np.asarray(self.mask, dtype=np.int64)
        if self.mask_path is None:
            raise DataError(f"{self.label}: no mask")
        return read_mask(self.mask_path, cfg.num_classes, cfg.mask_encoding,
                         cfg.palette or None, cfg.ignore_index)

    def load_instances(self) -> np.ndarray | None:
        """int32 (H, W) instance labels, or None when there are none."""
        if self.instances is not None:
            return np.asarray(self.instances, dtype=np.int32)
        if self.instance_path is None:
            return None
        return read_instances(self.instance_path)


def _list_files(folder: Path) -> dict[str, list[Path]]:
    """Image-like files in ``folder`` grouped by stem (hidden files and other types skipped)."""
    by_stem: dict[str, list[Path]] = {}
    if not folder.is_dir():
        return by_stem
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith(".") \
                and path.suffix.lower() in IMAGE_SUFFIXES:
            by_stem.setdefault(path.stem, []).append(path)
    return by_stem


def pair_folder(folder: Path) -> list[Item]:
    """Pair folder/images, folder/masks and folder/instances by stem.

    Incomplete pairs are kept (image without mask, mask without image) so that
    :func:`preflight` can report all of them at once.
    """
    images = _list_files(folder / "images")
    masks = _list_files(folder / "masks")
    instances = _list_files(folder / "instances")
    if not images and not masks:
        raise DataError(f"{folder / 'images'}: no images found "
                        f"(file types {', '.join(IMAGE_SUFFIXES)}); {LAYOUT}")
    items = []
    for stem in sorted(set(images) | set(masks)):
        problems = []
        for kind, found in (("images", images), ("masks", masks), ("instance files", instances)):
            if len(found.get(stem, [])) > 1:
                names = ", ".join(p.name for p in found[stem])
                problems.append(f"{folder}: several {kind} share the stem {stem!r}: {names}")
        items.append(Item(
            name=stem,
            image_path=images.get(stem, [None])[0],
            mask_path=masks.get(stem, [None])[0],
            instance_path=instances.get(stem, [None])[0],
            problem="; ".join(problems) or None,
        ))
    for stem in sorted(set(instances) - set(images) - set(masks)):
        items.append(Item(name=stem, instance_path=instances[stem][0],
                          problem=f"{instances[stem][0]}: instance labels without an image"))
    return items


def split_items(items: Sequence[Item], val_fraction: float, seed: int
                ) -> tuple[list[Item], list[Item]]:
    """Seeded random train/validation split; at least one item on each side.

    Items are sorted by name first, so the split does not depend on file-system order.
    """
    items = sorted(items, key=lambda it: it.name)
    n = len(items)
    if n < 2:
        raise DataError(f"need at least 2 images to split into training and validation, "
                        f"found {n}")
    n_val = min(n - 1, max(1, round(val_fraction * n)))
    order = np.random.default_rng(seed).permutation(n)
    val_set = set(order[:n_val].tolist())
    train = [it for i, it in enumerate(items) if i not in val_set]
    val = [it for i, it in enumerate(items) if i in val_set]
    return train, val


def find_items(root: str | Path, cfg: DataConfig, seed: int) -> tuple[list[Item], list[Item]]:
    """Find (train, val) items under ``root``.

    Uses ROOT/train and ROOT/val when they exist, else ROOT/{images,masks} split at random
    with ``cfg.val_fraction`` (seeded). Files are not opened here; see :func:`preflight`.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; {LAYOUT}")
    train_dir, val_dir = root / "train", root / "val"
    if train_dir.is_dir() or val_dir.is_dir():
        missing = [d for d in (train_dir, val_dir) if not (d / "images").is_dir()]
        if missing:
            raise DataError(f"{root}: found a train/val layout but {missing[0] / 'images'} "
                            f"does not exist; {LAYOUT}")
        return pair_folder(train_dir), pair_folder(val_dir)
    if not (root / "images").is_dir():
        raise DataError(f"{root}: no 'images' folder; {LAYOUT}")
    return split_items(pair_folder(root), cfg.val_fraction, seed)


# --------------------------------------------------------------------------- checks


def preflight(items: Sequence[Item], cfg: DataConfig,
              expected_channels: int | None = None) -> None:
    """Read every image/mask pair once and raise ONE DataError listing every problem.

    Checked: image without mask, mask without image, unreadable files, mask values that fit
    no encoding, image/mask/instance size mismatches, and channel counts that differ from
    ``expected_channels`` (the model's input channels, when given) or from the majority.
    Warns when a class never occurs in any mask.
    """
    if not items:
        raise DataError(f"no images found; {LAYOUT}")
    problems: list[str] = []
    channels: dict[str, int] = {}
    class_pixels = np.zeros(cfg.num_classes, dtype=np.int64)
    for item in items:
        if item.problem:
            problems.append(item.problem)
        if not item.has_image():
            if item.mask_path is not None:
                where = item.mask_path.parent.parent / "images"
                problems.append(f"{item.mask_path}: mask without an image (expected "
                                f"{where / item.name}.<{'|'.join(s[1:] for s in IMAGE_SUFFIXES)}>)")
            continue
        if not item.has_mask():
            where = item.image_path.parent.parent / "masks" if item.image_path else "masks"
            problems.append(f"{item.label}: no mask (expected {where}/{item.name}.png, "
                            "or another image suffix, with the same stem)")
        image = mask = instances = None
        try:
            image = item.load_image()
            channels[item.label] = image.shape[0]
        except DataError as err:
            problems.append(str(err))
        if item.has_mask():
            try:
                mask = item.load_mask(cfg)
            except DataError as err:
                problems.append(str(err))
        try:
            instances = item.load_instances()
        except DataError as err:
            problems.append(str(err))
        if image is not None and mask is not None and image.shape[1:] != mask.shape:
            problems.append(
                f"{item.label}: image is {_hw(image.shape[1:])} but its mask "
                f"{item.mask_path or ''} is {_hw(mask.shape)} (height x width); they must match"
            )
        if instances is not None and mask is not None and instances.shape != mask.shape:
            problems.append(
                f"{item.instance_path or item.label}: instance labels are "
                f"{_hw(instances.shape)} but the mask is {_hw(mask.shape)}; they must match"
            )
        if mask is not None:
            valid = mask[(mask >= 0) & (mask < cfg.num_classes)]
            class_pixels += np.bincount(valid.ravel(), minlength=cfg.num_classes)

    if channels:
        if expected_channels is not None:
            reference, why = expected_channels, "the model expects"
        else:
            reference = Counter(channels.values()).most_common(1)[0][0]
            why = "most images have"
        for label, count in channels.items():
            if count != reference:
                problems.append(f"{label}: image has {count} channel(s); {why} {reference}")

    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise DataError(f"{len(problems)} problem(s) in the data; fix them and run again:\n"
                        f"{lines}")
    absent = [str(c) for c in range(1, cfg.num_classes) if class_pixels[c] == 0]
    if absent:
        warnings.warn(f"class(es) {', '.join(absent)} never occur in any mask "
                      f"(num_classes={cfg.num_classes}); check num_classes and the masks",
                      stacklevel=2)


def _hw(shape: tuple[int, ...]) -> str:
    return f"{shape[0]}x{shape[1]}"


def compute_stats(items: Sequence[Item]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of the images, in [0, 1] units.

    Streams one image at a time (Chan et al.'s pairwise update of mean and squared
    deviations, in float64), so the data set never has to fit in memory.
    """
    count = 0
    mean = m2 = None
    for item in items:
        pixels = item.load_image().astype(np.float64)
        flat = pixels.reshape(pixels.shape[0], -1)
        if mean is None:
            mean = np.zeros(flat.shape[0])
            m2 = np.zeros(flat.shape[0])
        elif flat.shape[0] != mean.shape[0]:
            raise DataError(f"{item.label}: image has {flat.shape[0]} channel(s); earlier "
                            f"images have {mean.shape[0]}")
        n_b = flat.shape[1]
        mean_b = flat.mean(axis=1)
        m2_b = ((flat - mean_b[:, None]) ** 2).sum(axis=1)
        total = count + n_b
        delta = mean_b - mean
        mean = mean + delta * (n_b / total)
        m2 = m2 + m2_b + delta**2 * (count * n_b / total)
        count = total
    if mean is None:
        raise DataError("cannot compute image statistics: no images")
    std = np.sqrt(m2 / count)
    # A constant channel has std 0; dividing by 1 instead keeps it finite (and still 0-mean).
    std = np.where(std < 1e-8, 1.0, std)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


# --------------------------------------------------------------------------- dataset


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


class SegmentationDataset(Dataset):
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
        if cfg.normalize not in NORMALIZE_MODES:
            raise ValueError(f"normalize={cfg.normalize!r}; expected one of {NORMALIZE_MODES}")
        if cfg.normalize != "none" and (not cfg.mean or len(cfg.mean) != len(cfg.std)):
            raise ValueError("DataConfig.mean/std are not set (build_datasets fills them); "
                             "set them, or normalize='none'")
        self.cfg = cfg
        self.train = train
        self.seed = seed
        # In shared memory so DataLoader worker processes, persistent ones included, see the
        # value set_epoch writes in the main process.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        # Weight maps are costly (a distance transform per object), so each is computed once
        # per process: with DataLoader workers every worker fills its own cache.
        self._weights: dict[int, np.ndarray] = {}
        self._mean = np.asarray(cfg.mean, dtype=np.float32).reshape(-1, 1, 1)
        self._std = np.asarray(cfg.std, dtype=np.float32).reshape(-1, 1, 1)

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
            raise DataError(f"{item.label}: image is {_hw(image.shape[1:])} but the mask is "
                            f"{_hw(mask.shape)}")
        weight = self._weight_map(item_index, item, mask)
        if self.train:
            image, mask, weight = self._random_crop(self.rng(index), image, mask, weight)
        if self.cfg.normalize != "none":
            if self._mean.shape[0] != image.shape[0]:
                raise DataError(f"{item.label}: image has {image.shape[0]} channel(s) but "
                                f"mean/std have {self._mean.shape[0]}")
            image = (image - self._mean) / self._std
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
            instances = item.load_instances()
            if instances is None:
                instances = _components(mask, cfg.num_classes, cfg.ignore_index)
            elif instances.shape != mask.shape:
                raise DataError(f"{item.instance_path or item.label}: instance labels are "
                                f"{_hw(instances.shape)} but the mask is {_hw(mask.shape)}")
            weight = border_weight_map(instances, mask, cfg.num_classes, cfg.weight_map_w0,
                                       cfg.weight_map_sigma, cfg.ignore_index)
            weight = np.asarray(weight, dtype=np.float32)
        else:
            weight = np.ones(mask.shape, dtype=np.float32)
        if cfg.ignore_index is not None:
            weight = np.where(mask == cfg.ignore_index, np.float32(0), weight)
        if cfg.weight_map:  # ones are cheaper to rebuild than to keep
            self._weights[item_index] = weight
        return weight

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
        """A random pixel of a random foreground class present in the mask (each class
        equally likely, so rare classes are seen as often as common ones); None if none."""
        classes = [c for c in np.unique(mask).tolist()
                   if c != 0 and c != self.cfg.ignore_index]
        if not classes:
            return None
        cls = classes[int(rng.integers(len(classes)))]
        flat = np.flatnonzero(mask == cls)
        y, x = np.unravel_index(flat[int(rng.integers(flat.size))], mask.shape)
        return int(y), int(x)


# --------------------------------------------------------------------------- building


def _check_config(cfg: DataConfig) -> None:
    # num_classes >= 2 is DataConfig's own range (config.py).
    if cfg.normalize not in NORMALIZE_MODES:
        raise ValueError(f"normalize={cfg.normalize!r}; expected one of {NORMALIZE_MODES}")
    if cfg.ignore_index is not None and 0 <= cfg.ignore_index < cfg.num_classes:
        raise ValueError(f"ignore_index={cfg.ignore_index} is a real class (0.."
                         f"{cfg.num_classes - 1}); use a value outside, e.g. 255")
    if cfg.patch_size < 1:
        raise ValueError(f"patch_size={cfg.patch_size}; expected a positive number of pixels")


def _demo_items(cfg: DataConfig, seed: int) -> list[Item]:
    from unetkit.data import synthetic

    if cfg.demo not in ("binary", "multiclass"):
        raise ValueError(f"demo={cfg.demo!r}; expected 'binary' or 'multiclass'")
    classes = 4 if cfg.demo == "multiclass" else 2
    if cfg.num_classes != classes:
        raise ValueError(f"the {cfg.demo} demo data has {classes} classes (background "
                         f"included) but num_classes={cfg.num_classes}; set num_classes={classes}")
    samples = synthetic.make_demo_dataset(cfg.demo_count, cfg.demo_size, seed,
                                          multiclass=cfg.demo == "multiclass")
    return [Item(name=f"demo_{i:03d}", image=image, mask=mask, instances=instances)
            for i, (image, mask, instances) in enumerate(samples)]


def _normalisation(cfg: DataConfig, train_items: Sequence[Item], channels: int
                   ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if cfg.normalize == "none":
        return (0.0,) * channels, (1.0,) * channels
    if cfg.normalize == "imagenet":
        if channels == 3:
            return IMAGENET_MEAN, IMAGENET_STD
        if channels == 1:  # a gray image is the mean of the colour channels
            return (float(np.mean(IMAGENET_MEAN)),), (float(np.mean(IMAGENET_STD)),)
        raise DataError(f"normalize='imagenet' needs 1- or 3-channel images, "
                        f"these have {channels}")
    if len(cfg.mean) == channels and len(cfg.std) == channels:
        # Already known (a resumed or fine-tuned model): keep what the model was trained with.
        return tuple(cfg.mean), tuple(cfg.std)
    return compute_stats(train_items)


def build_datasets(cfg: DataConfig, seed: int, pretrained: bool = False
                   ) -> tuple[SegmentationDataset, SegmentationDataset, DataConfig]:
    """(train dataset, validation dataset, cfg with mean/std filled in).

    cfg.root None means the built-in demo data (cfg.demo, cfg.demo_count, cfg.demo_size).
    Folder data is checked by :func:`preflight` first. normalize="auto" becomes "imagenet"
    when ``pretrained`` (an ImageNet-pretrained encoder expects ImageNet statistics), else
    "dataset"; the returned cfg holds the resolved mode. With "dataset", mean/std come from
    the training images unless cfg already holds values for the right number of channels;
    "imagenet" uses the ImageNet statistics (their average for 1-channel images).
    ``cfg`` itself is not changed.
    """
    _check_config(cfg)
    if cfg.normalize == "auto":
        cfg = dataclasses.replace(cfg, normalize="imagenet" if pretrained else "dataset")
    if cfg.root is None:
        train_items, val_items = split_items(_demo_items(cfg, seed), cfg.val_fraction, seed)
        if not cfg.class_names:
            from unetkit.data import synthetic

            names = (synthetic.MULTICLASS_CLASS_NAMES if cfg.demo == "multiclass"
                     else synthetic.BINARY_CLASS_NAMES)
            cfg = dataclasses.replace(cfg, class_names=tuple(names))
    else:
        train_items, val_items = find_items(cfg.root, cfg, seed)
        preflight(train_items + val_items, cfg)
    channels = int(train_items[0].load_image().shape[0])
    mean, std = _normalisation(cfg, train_items, channels)
    cfg = dataclasses.replace(cfg, mean=tuple(mean), std=tuple(std))
    return (SegmentationDataset(train_items, cfg, train=True, seed=seed),
            SegmentationDataset(val_items, cfg, train=False, seed=seed), cfg)


# --------------------------------------------------------------------------- loading


def available_cores() -> int:
    """CPU cores this process may use (honours taskset/cgroup affinity when visible)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_num_workers(cores: int | None = None) -> int:
    """min(4, cores - 1) loader workers, and none on <= 2 cores: there the training step
    already keeps both cores busy, and worker processes would only compete with it."""
    cores = available_cores() if cores is None else cores
    return 0 if cores <= 2 else min(4, cores - 1)


def _worker_init(worker_id: int) -> None:
    # Workers only read files and crop with numpy; one torch thread each avoids
    # oversubscribing the cores the training step uses.
    torch.set_num_threads(1)


def make_loader(dataset: Dataset, batch_size: int, train: bool, seed: int,
                device: torch.device | str, sampler: Any = None,
                num_workers: int | None = None) -> DataLoader:
    """A DataLoader for training (shuffled batches of crops) or validation (batch size 1:
    whole images differ in size).

    Workers: ``num_workers``, else the dataset's cfg.num_workers when set (a ``Subset``
    has no cfg: pass the number), else :func:`default_num_workers`. Shuffling uses a
    generator seeded with ``seed``; memory is pinned only for CUDA; the last incomplete
    training batch is dropped when there is at least one full batch (BatchNorm dislikes
    tiny batches).
    """
    configured = num_workers
    if configured is None:
        configured = getattr(getattr(dataset, "cfg", None), "num_workers", None)
    workers = default_num_workers() if configured is None else int(configured)
    generator = torch.Generator()
    generator.manual_seed(seed)
    if not train:
        batch_size = 1
    try:
        samples = len(sampler) if sampler is not None else len(dataset)
    except TypeError:  # a sampler without a length
        samples = batch_size
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.device(device).type == "cuda",
        drop_last=train and samples >= batch_size,
        generator=generator,
        worker_init_fn=_worker_init if workers > 0 else None,
    )
