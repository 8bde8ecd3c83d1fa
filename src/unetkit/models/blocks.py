"""Small building blocks shared by the networks: the double convolution, normalisation
choice, centre crop and the pad-to-a-multiple helper that lets same-padding networks
take any H x W.

The layer classes come from :mod:`.layers` by number of spatial dimensions (``dims``,
default 2); see there for why."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig, choices_of
from .layers import BATCH_NORM, CONV, CONV_CLASSES, INSTANCE_NORM, NORM_CLASSES, check_dims

NORMS = choices_of(ModelConfig, "norm")  # declared once, in config.py


def make_norm(kind: str | None, channels: int, dims: int = 2) -> nn.Module:
    """The normalisation layer after each convolution: BatchNorm, InstanceNorm, GroupNorm
    or none (``nn.Identity``, the paper's choice), for ``dims`` spatial dimensions."""
    if kind is None or kind == "none":
        return nn.Identity()
    if kind == "batch":
        return BATCH_NORM[check_dims(dims)](channels)
    if kind == "instance":
        return INSTANCE_NORM[check_dims(dims)](channels, affine=True)
    if kind == "group":
        # 8 groups where the width allows it (32 is common for wide ImageNet nets; U-Net
        # levels start at 16-64 channels, where 8 keeps groups of at least 2 channels).
        groups = 8 if channels % 8 == 0 else 1
        return nn.GroupNorm(groups, channels)
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


class ConvNormReLU(nn.Sequential):
    """3x3 convolution -> normalisation -> ReLU.

    ``padding=0`` is the paper's unpadded ("valid") convolution: H x W -> (H-2) x (W-2).
    ``dims``: spatial dimensions (2: (B, C, H, W) maps; 3 is not used yet).
    """

    def __init__(self, in_ch: int, out_ch: int, padding: int, norm: str | None = None,
                 dims: int = 2):
        # With a normalisation layer the convolution's bias is redundant (the norm's shift
        # replaces it), so it is left out, as torchvision does.
        super().__init__(
            CONV[check_dims(dims)](in_ch, out_ch, 3, padding=padding,
                                   bias=norm in (None, "none")),
            make_norm(norm, out_ch, dims),
            nn.ReLU(inplace=True),
        )


class DoubleConv(nn.Sequential):
    """Two ``ConvNormReLU``: the unit of every U-Net level. Valid padding shrinks each side
    by 4 pixels; same padding keeps H x W."""

    def __init__(self, in_ch: int, out_ch: int, padding: int, norm: str | None = None,
                 dims: int = 2):
        super().__init__(
            ConvNormReLU(in_ch, out_ch, padding, norm, dims),
            ConvNormReLU(out_ch, out_ch, padding, norm, dims),
        )


def center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Crop the last two dimensions of ``x`` to ``height`` x ``width`` around the centre.

    Used for the paper's skip connections (the encoder map is larger than the upsampled
    decoder map) and to crop training targets to a valid-padding network's output.
    """
    top = (x.shape[-2] - height) // 2
    left = (x.shape[-1] - width) // 2
    return x[..., top : top + height, left : left + width]


def pad_to_multiple(
    x: torch.Tensor, multiple: int, minimum: int = 1, always: bool = False
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad (B, C, H, W) on the bottom/right so H and W become multiples of ``multiple``
    (and at least ``minimum``). ``always`` pads even by zero pixels, so that a traced
    export keeps the padding step for the sizes that do need it.

    Edge pixels are replicated rather than zero-filled so the padded band looks like
    image, not like a dark frame; replication also works when the padding is wider than
    the image (reflection does not). Returns the padded tensor and the original (H, W).
    """
    height, width = x.shape[-2], x.shape[-1]
    pad_h = max((multiple - height % multiple) % multiple, minimum - height)
    pad_w = max((multiple - width % multiple) % multiple, minimum - width)
    if always or pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    return x, (height, width)


def reflect_indices(start: int, length: int, size: int) -> np.ndarray:
    """Indices ``start .. start+length-1`` mirrored into ``0 .. size-1`` like numpy's
    ``np.pad(mode='reflect')`` (edge pixel not repeated), reflecting again as often as
    needed when the range reaches further than the image is long."""
    idx = np.arange(start, start + length)
    if size == 1:
        return np.zeros(length, dtype=np.int64)
    period = 2 * (size - 1)
    idx = np.mod(idx, period)
    return np.where(idx >= size, period - idx, idx)


def mirror_pad(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """Extend (..., H, W) by mirroring (numpy's 'reflect'), as the paper extends images for
    valid convolutions; any width, reflecting again where the padding exceeds the image."""
    rows = torch.from_numpy(reflect_indices(-top, x.shape[-2] + top + bottom, x.shape[-2]))
    cols = torch.from_numpy(reflect_indices(-left, x.shape[-1] + left + right, x.shape[-1]))
    return x.index_select(-2, rows.to(x.device)).index_select(-1, cols.to(x.device))


def init_kaiming(module: nn.Module) -> None:
    """He initialisation (std = sqrt(2 / fan_in)), the paper's choice for ReLU networks;
    normalisation layers start as the identity."""
    for m in module.modules():
        if isinstance(m, CONV_CLASSES):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, NORM_CLASSES):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def check_input(x: torch.Tensor, in_channels: int, name: str) -> None:
    """Raise a readable ValueError instead of a convolution stack trace."""
    if x.ndim != 4:
        raise ValueError(
            f"{name} expects a 4-D tensor (batch, {in_channels}, height, width), "
            f"got shape {tuple(x.shape)}"
        )
    if x.shape[1] != in_channels:
        raise ValueError(
            f"{name} was built for {in_channels} input channel(s), got {x.shape[1]} "
            f"(input shape {tuple(x.shape)})"
        )
