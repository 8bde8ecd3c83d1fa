"""Intensity normalisation, one function for training and prediction alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from unetkit.config import IMAGENET_MEAN, IMAGENET_STD, DataConfig


def normalize_image(image: np.ndarray, config: Any, path: str | Path = "image") -> np.ndarray:
    """A [0, 1] float (C, H, W) image normalised as the training images were:
    ``(image - mean) / std`` per channel (one value may serve every channel), unless
    ``normalize == "none"``. ``config`` is a :class:`DataConfig` or a whole Config (a
    checkpoint's); ``path`` names the image in errors. Returns float32 (C, H, W)."""
    data: DataConfig = getattr(config, "data", config)
    if data.normalize == "none":
        return image.astype(np.float32, copy=False)
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
    mean_a = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
    std_a = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
    return ((image - mean_a) / std_a).astype(np.float32)
