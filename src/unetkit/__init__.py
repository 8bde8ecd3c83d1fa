"""unetkit: U-Net and ResNet+U-Net semantic segmentation, from scratch in PyTorch.

    from unetkit import UNet, ResNetUNet, Config, train, predict, load_checkpoint

Names are imported on first use, so ``unetkit``'s launcher can set up the process
(allocator, OpenMP policy) before PyTorch loads.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "UNet": "unetkit.models",
    "ResNet": "unetkit.models",
    "ResNetUNet": "unetkit.models",
    "IMAGENET_MEAN": "unetkit.config",
    "IMAGENET_STD": "unetkit.config",
    "Config": "unetkit.config",
    "train": "unetkit.training",
    "predict": "unetkit.inference",
    "predict_files": "unetkit.inference",
    "evaluate_folder": "unetkit.evaluate",
    "export_model": "unetkit.export",
    "load_checkpoint": "unetkit.checkpoint",
    "save_checkpoint": "unetkit.checkpoint",
    "build_model": "unetkit.checkpoint",
    "load_weights": "unetkit.checkpoint",
}
__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'unetkit' has no attribute {name!r}")
