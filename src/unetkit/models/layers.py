"""Layer classes by number of spatial dimensions: where 2D versus 3D is decided.

Every network takes one ``dims`` / ``spatial_dims`` argument (2 or 3, default 2) and looks
its layers up here (``CONV[dims]``, MONAI-style) rather than existing as 2D and 3D copies:
the U-Net topology, size arithmetic and decoder are the same in 3D, only the layer classes
differ. 2D maps are (B, C, H, W), 3D volumes (B, C, D, H, W).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SPATIAL_DIMS = (2, 3)

CONV: dict[int, type[nn.Module]] = {2: nn.Conv2d, 3: nn.Conv3d}
CONV_TRANSPOSE: dict[int, type[nn.Module]] = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
MAX_POOL: dict[int, type[nn.Module]] = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
BATCH_NORM: dict[int, type[nn.Module]] = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
INSTANCE_NORM: dict[int, type[nn.Module]] = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
DROPOUT: dict[int, type[nn.Module]] = {2: nn.Dropout2d, 3: nn.Dropout3d}
ADAPTIVE_AVG_POOL: dict[int, type[nn.Module]] = {2: nn.AdaptiveAvgPool2d,
                                                 3: nn.AdaptiveAvgPool3d}
#: ``nn.Upsample`` mode of ``upsample="bilinear"``: linear along every spatial axis
LINEAR_MODE: dict[int, str] = {2: "bilinear", 3: "trilinear"}
#: the axis names of error messages, outermost first
AXIS_NAMES: dict[int, tuple[str, ...]] = {2: ("height", "width"), 3: ("depth", "height", "width")}

#: every convolution / normalisation class above, for ``isinstance`` checks (initialisation)
CONV_CLASSES = (*CONV.values(), *CONV_TRANSPOSE.values())
NORM_CLASSES = (*BATCH_NORM.values(), *INSTANCE_NORM.values(), nn.GroupNorm)


def check_dims(dims: int) -> int:
    """``dims`` itself, or a ValueError naming the supported numbers of spatial dims."""
    if dims not in SPATIAL_DIMS:
        raise ValueError(f"dims (spatial dimensions) must be one of {SPATIAL_DIMS}, got {dims!r}")
    return dims


def max_pool(x: torch.Tensor, kernel_size: tuple[int, ...]) -> torch.Tensor:
    """Max pooling with stride = ``kernel_size`` over the last ``len(kernel_size)`` dims,
    e.g. (1, 2, 2) on (B, C, D, H, W): the per-stage pooling of an anisotropic network."""
    pool = {2: F.max_pool2d, 3: F.max_pool3d}[check_dims(len(kernel_size))]
    return pool(x, kernel_size)
