"""Reading a set and writing predictions, for the peers' scripts. Each peer runs in its own
virtual environment, so this uses numpy, Pillow and tifffile only (no unetkit)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image


def read(path: Path) -> np.ndarray:
    return tifffile.imread(path) if path.suffix == ".tif" else np.asarray(Image.open(path))


def load_part(root: Path, part: str, instances: bool = False):
    """[(name, image (H, W) or (H, W, C), mask (H, W), instances or None)] of SET/part."""
    items = []
    for image in sorted((root / part / "images").iterdir()):
        mask = read(root / part / "masks" / f"{image.stem}.png")
        inst = root / part / "instances" / f"{image.stem}.tif"
        items.append((image.stem, read(image), mask,
                      tifffile.imread(inst) if instances and inst.exists() else None))
    return items


def channels_first(image: np.ndarray) -> np.ndarray:
    """(C, H, W) float32 from (H, W) or (H, W, C)."""
    image = image.astype(np.float32)
    return image[None] if image.ndim == 2 else np.moveaxis(image, -1, 0)


def scale_per_image(image: np.ndarray) -> np.ndarray:
    """Each channel to [0, 1] by its own 1st and 99th percentiles: the usual recipe for
    microscopy of any bit depth, and harmless for photos."""
    low = np.percentile(image, 1, axis=(1, 2), keepdims=True)
    high = np.percentile(image, 99, axis=(1, 2), keepdims=True)
    return np.clip((image - low) / np.maximum(high - low, 1e-6), -1, 2).astype(np.float32)


def save_mask(out: Path, name: str, mask: np.ndarray) -> None:
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8)).save(out / f"{name}.png")


def save_labels(out: Path, name: str, labels: np.ndarray) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(out / f"{name}_labels.tif", labels.astype(np.uint32))


def report(out: Path, **times) -> None:
    """times.json beside the predictions: train and predict seconds, steps."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "times.json").write_text(json.dumps(times))


class Deadline:
    """Wall-clock budget in seconds from construction."""

    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()
