"""Intensity normalisation, one function for training and prediction alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from unetkit.config import IMAGENET_MEAN, IMAGENET_STD, DataConfig

# A z-score needs a spread; a constant channel keeps its values minus the mean.
MIN_STD = 1e-8


def normalize_image(image: np.ndarray, config: Any, path: str | Path = "image") -> np.ndarray:
    """A float (C, H, W) image or (C, D, H, W) volume normalised as the training data
    were: ``(image - mean) / std`` per channel (one value may serve every channel), unless
    ``normalize == "none"``. Volumes, as nnU-Net does: ``per_image`` z-scores each volume
    by its own statistics (MRI, microscopy: arbitrary units); ``ct`` clips to the
    training foreground's 0.5-99.5 percentiles (``intensity_range``, Hounsfield units mean
    the same in every scan) and then applies the dataset's mean/std. ``config`` is a
    :class:`DataConfig` or a whole Config (a checkpoint's); ``path`` names the image in
    errors. Returns float32 of the same shape."""
    data: DataConfig = getattr(config, "data", config)
    if data.normalize == "none":
        return image.astype(np.float32, copy=False)
    per_channel = (-1,) + (1,) * (image.ndim - 1)
    if data.normalize == "per_image":
        axes = tuple(range(1, image.ndim))
        mean_i = image.mean(axis=axes, dtype=np.float64).reshape(per_channel)
        std_i = image.std(axis=axes, dtype=np.float64).reshape(per_channel)
        return ((image - mean_i) / np.maximum(std_i, MIN_STD)).astype(np.float32)
    if data.normalize == "ct" and data.intensity_range:
        image = np.clip(image, data.intensity_range[0], data.intensity_range[1])
    mean, std = tuple(data.mean), tuple(data.std)
    if not mean and data.normalize == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    if not mean or not std:
        raise ValueError(
            f"{path}: the config has normalize={data.normalize!r} but no data.mean/data.std; "
            "expected the per-channel statistics saved at training")
    channels = image.shape[0]
    if len(mean) not in (1, channels) or len(std) not in (1, channels):
        raise ValueError(
            f"{path}: image has {channels} channel(s) but data.mean has {len(mean)} and "
            f"data.std {len(std)} values; expected 1 or {channels}")
    mean_a = np.asarray(mean, dtype=np.float32).reshape(per_channel)
    std_a = np.asarray(std, dtype=np.float32).reshape(per_channel)
    return ((image - mean_a) / std_a).astype(np.float32)
