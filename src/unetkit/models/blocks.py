"""Small building blocks shared by the networks: the double convolution, normalisation
choice, centre crop and the pad-to-a-multiple helper that lets same-padding networks
take any H x W (or D x H x W).

The layer classes come from :mod:`.layers` by number of spatial dimensions (``dims``,
default 2); see there for why."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig, choices_of
from .layers import (
    AXIS_NAMES,
    BATCH_NORM,
    CONV,
    CONV_CLASSES,
    INSTANCE_NORM,
    NORM_CLASSES,
    check_dims,
)

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


Size = int | tuple[int, ...]  # one value for every spatial axis, or one per axis


class ConvNormReLU(nn.Sequential):
    """Convolution (3x3, or ``kernel_size``) -> normalisation -> ReLU.

    ``padding=0`` is the paper's unpadded ("valid") convolution: H x W -> (H-2) x (W-2);
    ``padding=kernel_size // 2`` keeps the size. ``kernel_size`` and ``padding`` take one
    value per axis as well, e.g. (1, 3, 3) and (0, 1, 1) for an anisotropic volume's
    in-plane convolution. ``dims``: spatial dimensions, 2: (B, C, H, W) -> (B, C', H', W'),
    3: (B, C, D, H, W) -> (B, C', D', H', W').
    """

    def __init__(self, in_ch: int, out_ch: int, padding: Size, norm: str | None = None,
                 dims: int = 2, kernel_size: Size = 3):
        # With a normalisation layer the convolution's bias is redundant (the norm's shift
        # replaces it), so it is left out, as torchvision does.
        super().__init__(
            CONV[check_dims(dims)](in_ch, out_ch, kernel_size, padding=padding,
                                   bias=norm in (None, "none")),
            make_norm(norm, out_ch, dims),
            nn.ReLU(inplace=True),
        )


class DoubleConv(nn.Sequential):
    """Two ``ConvNormReLU``: the unit of every U-Net level. Valid padding shrinks each side
    by 4 pixels (by 2 * (k - 1) along an axis of kernel size k); same padding keeps the
    size."""

    def __init__(self, in_ch: int, out_ch: int, padding: Size, norm: str | None = None,
                 dims: int = 2, kernel_size: Size = 3):
        super().__init__(
            ConvNormReLU(in_ch, out_ch, padding, norm, dims, kernel_size),
            ConvNormReLU(out_ch, out_ch, padding, norm, dims, kernel_size),
        )


def center_crop(x: torch.Tensor, *sizes: int) -> torch.Tensor:
    """Crop the last ``len(sizes)`` dimensions of ``x`` to ``sizes`` around the centre:
    ``center_crop(x, height, width)`` for (..., H, W), ``center_crop(x, d, h, w)`` for
    (..., D, H, W).

    Used for the paper's skip connections (the encoder map is larger than the upsampled
    decoder map) and to crop training targets to a valid-padding network's output. Each
    size must be at most ``x``'s. ``narrow`` rather than slicing: the same view, but
    ``torch.export`` keeps a narrowed side symbolic, where a slice's side becomes a
    data-dependent value that instance normalisation cannot check (unetkit.export).
    """
    for dim, size in zip(range(-len(sizes), 0), sizes):
        x = x.narrow(dim, (x.shape[dim] - size) // 2, size)
    return x


def pad_to_multiple(
    x: torch.Tensor, multiple: Size, minimum: Size = 1, always: bool = False, dims: int = 2
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Pad the last ``dims`` dimensions on the far side (bottom/right, and back in 3D) so
    each becomes a multiple of ``multiple`` (and at least ``minimum``); both take one value
    for every axis or one per axis (a tuple of ``dims`` values). ``always`` pads even by
    zero pixels, so that a traced export keeps the padding step for the sizes that do need
    it.

    Edge pixels are replicated rather than zero-filled so the padded band looks like
    image, not like a dark frame; replication also works when the padding is wider than
    the image (reflection does not). Returns the padded tensor and the original sizes:
    (H, W) of (B, C, H, W) for ``dims=2``, (D, H, W) of (B, C, D, H, W) for ``dims=3``.
    """
    multiples = per_axis(multiple, dims, "multiple")
    minimums = per_axis(minimum, dims, "minimum")
    sizes = tuple(x.shape[-dims:])
    pads = [max((m - s % m) % m, low - s) for s, m, low in zip(sizes, multiples, minimums)]
    if always or any(pads):
        # F.pad lists the last dimension first: (0, pad_w, 0, pad_h[, 0, pad_d])
        x = F.pad(x, [p for pad in reversed(pads) for p in (0, pad)], mode="replicate")
    return x, sizes


def per_axis(value: Size, dims: int, name: str = "size") -> tuple[int, ...]:
    """``value`` for each of ``dims`` axes: an int repeated, or a tuple of ``dims`` values."""
    if isinstance(value, (int, np.integer)):
        return (int(value),) * dims
    values = tuple(int(v) for v in value)
    if len(values) != dims:
        raise ValueError(f"{name} needs {dims} values (one per axis), got {value!r}")
    return values


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


def check_input(x: torch.Tensor, in_channels: int, name: str, dims: int = 2) -> None:
    """Raise a readable ValueError instead of a convolution stack trace: ``x`` must be
    (B, in_channels, H, W) for ``dims=2``, (B, in_channels, D, H, W) for ``dims=3``."""
    if x.ndim != dims + 2:
        axes = ", ".join(AXIS_NAMES[check_dims(dims)])
        raise ValueError(
            f"{name} expects a {dims + 2}-D tensor (batch, {in_channels}, {axes}), "
            f"got shape {tuple(x.shape)}"
        )
    if x.shape[1] != in_channels:
        raise ValueError(
            f"{name} was built for {in_channels} input channel(s), got {x.shape[1]} "
            f"(input shape {tuple(x.shape)})"
        )
