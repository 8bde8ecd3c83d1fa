"""Layer classes by number of spatial dimensions: where 2D versus 3D is decided.

Networks will take one ``dims`` argument (2 or 3) and look their layers up here
(``CONV[dims]``, MONAI-style) rather than exist as 2D and 3D copies: the U-Net topology,
size arithmetic and decoder are the same in 3D, only the layer classes differ. Today only
``blocks.py`` takes ``dims`` (default 2); the ResNet encoder stays 2D (its weights are).
"""

from __future__ import annotations

from torch import nn

SPATIAL_DIMS = (2, 3)

CONV: dict[int, type[nn.Module]] = {2: nn.Conv2d, 3: nn.Conv3d}
CONV_TRANSPOSE: dict[int, type[nn.Module]] = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
MAX_POOL: dict[int, type[nn.Module]] = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
BATCH_NORM: dict[int, type[nn.Module]] = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
INSTANCE_NORM: dict[int, type[nn.Module]] = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
DROPOUT: dict[int, type[nn.Module]] = {2: nn.Dropout2d, 3: nn.Dropout3d}

#: every convolution / normalisation class above, for ``isinstance`` checks (initialisation)
CONV_CLASSES = (*CONV.values(), *CONV_TRANSPOSE.values())
NORM_CLASSES = (*BATCH_NORM.values(), *INSTANCE_NORM.values(), nn.GroupNorm)


def check_dims(dims: int) -> int:
    """``dims`` itself, or a ValueError naming the supported numbers of spatial dims."""
    if dims not in SPATIAL_DIMS:
        raise ValueError(f"dims (spatial dimensions) must be one of {SPATIAL_DIMS}, got {dims!r}")
    return dims
