"""Image/mask folders (or the built-in demo data) as PyTorch datasets: the entry point.

:func:`build_datasets` is the one function the trainer needs: it finds and checks the
files (:mod:`unetkit.data.pairing`), computes the normalisation statistics and returns the
two datasets (:mod:`unetkit.data.dataset`); loaders come from :mod:`unetkit.data.loaders`.
The names of those modules are re-exported here, where they lived before the split.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from unetkit.config import DEMO_CLASSES, IMAGENET_MEAN, IMAGENET_STD, DataConfig, target_classes
from unetkit.data.dataset import SegmentationDataset
from unetkit.data.loaders import default_num_workers, make_loader
from unetkit.data.pairing import (
    LAYOUT,
    Item,
    compute_stats,
    find_items,
    pair_folder,
    preflight,
    split_for,
    split_items,
)
from unetkit.process import available_cores

__all__ = ["build_datasets", "dataset_items", "SegmentationDataset", "make_loader",
           "default_num_workers", "available_cores", "LAYOUT", "Item", "compute_stats",
           "find_items", "pair_folder", "preflight", "split_items"]


def _check_config(cfg: DataConfig) -> None:
    # Single-setting ranges (num_classes, patch_size, demo ...) are DataConfig's own;
    # this checks what depends on two settings.
    classes = max(cfg.num_classes, target_classes(cfg))  # the instance target has 3
    if cfg.ignore_index is not None and 0 <= cfg.ignore_index < classes:
        raise ValueError(f"ignore_index={cfg.ignore_index} is a real class (0.."
                         f"{classes - 1}); use a value outside, e.g. 255")


def _demo_items(cfg: DataConfig, seed: int) -> list[Item]:
    from unetkit.data import synthetic

    classes = DEMO_CLASSES[cfg.demo]
    if cfg.num_classes != classes:
        raise ValueError(f"the {cfg.demo} demo data has {classes} classes (background "
                         f"included) but num_classes={cfg.num_classes}; set num_classes={classes}")
    samples = synthetic.make_demo_dataset(cfg.demo_count, cfg.demo_size, seed,
                                          multiclass=cfg.demo == "multiclass")
    return [Item(name=f"demo_{i:03d}", image=image, mask=mask, instances=instances)
            for i, (image, mask, instances) in enumerate(samples)]


def dataset_items(cfg: DataConfig, seed: int) -> list[Item]:
    """Every item of the data set, unopened: the demo's (``cfg.root`` None, in memory, the
    same ones :func:`build_datasets` uses) or the folder's, training and validation both."""
    if cfg.root is None:
        return _demo_items(cfg, seed)
    root = Path(cfg.root).expanduser()
    if (root / "images").is_dir() and not (root / "train").is_dir():
        return pair_folder(root)  # not split: a single image is a data set here too
    train_items, val_items = find_items(root, cfg, seed)  # train/val layout, or its error
    return sorted(train_items + val_items, key=lambda it: it.name)


def _normalisation(cfg: DataConfig, train_items: Sequence[Item], channels: int
                   ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if cfg.normalize == "none":
        return (0.0,) * channels, (1.0,) * channels
    if cfg.normalize == "imagenet":
        if channels == 3:
            return IMAGENET_MEAN, IMAGENET_STD
        # Any other count: each channel as a grey picture, the mean of the colour channels
        # (as a pretrained stem's RGB kernels are averaged for it: models/pretrained.py).
        grey_mean, grey_std = float(np.mean(IMAGENET_MEAN)), float(np.mean(IMAGENET_STD))
        return (grey_mean,) * channels, (grey_std,) * channels
    if len(cfg.mean) == channels and len(cfg.std) == channels:
        # Already known (a resumed or fine-tuned model): keep what the model was trained with.
        return tuple(cfg.mean), tuple(cfg.std)
    return compute_stats(train_items)


def build_datasets(cfg: DataConfig, seed: int, pretrained: bool = False,
                   volumes: bool | None = None
                   ) -> tuple[SegmentationDataset, SegmentationDataset, DataConfig]:
    """(train dataset, validation dataset, cfg with mean/std filled in).

    cfg.root None means the built-in demo data (cfg.demo, cfg.demo_count, cfg.demo_size).
    Folder data is checked by :func:`preflight` first. normalize="auto" becomes "imagenet"
    when ``pretrained`` (an ImageNet-pretrained encoder expects ImageNet statistics), else
    "dataset"; the returned cfg holds the resolved mode. With "dataset", mean/std come from
    the training images unless cfg already holds values for the right number of channels;
    "imagenet" uses the ImageNet statistics (their average, per channel, for images that
    are not RGB). With ``pretrained``, "auto" is "imagenet" for 1- and 3-channel images
    only: other channels (RGB + near infrared, multispectral bands) are not ImageNet's
    colours, so they get their own per-channel statistics ("dataset").
    ``cfg`` itself is not changed. Volumes (``volumes``, or None: when the data are
    volumes) go to :func:`unetkit.data.volume_folder.build_volume_datasets`.
    """
    from unetkit.data.volume_folder import build_volume_datasets, is_volume_data

    if volumes or (volumes is None and is_volume_data(cfg)):
        return build_volume_datasets(cfg, seed)
    _check_config(cfg)
    if cfg.root is None:
        train_items, val_items = split_for(_demo_items(cfg, seed), cfg, seed)
        if not cfg.class_names:
            from unetkit.data import synthetic

            names = (synthetic.MULTICLASS_CLASS_NAMES if cfg.demo == "multiclass"
                     else synthetic.BINARY_CLASS_NAMES)
            cfg = dataclasses.replace(cfg, class_names=tuple(names))
    else:
        train_items, val_items = find_items(cfg.root, cfg, seed)
        preflight(train_items + val_items, cfg)
    channels = int(train_items[0].load_image().shape[0])
    if cfg.normalize == "auto":
        imagenet = pretrained and channels in (1, 3)
        cfg = dataclasses.replace(cfg, normalize="imagenet" if imagenet else "dataset")
    mean, std = _normalisation(cfg, train_items, channels)
    cfg = dataclasses.replace(cfg, mean=tuple(mean), std=tuple(std))
    return (SegmentationDataset(train_items, cfg, train=True, seed=seed),
            SegmentationDataset(val_items, cfg, train=False, seed=seed), cfg)
