"""EncoderUNet: a U-Net decoder on any :class:`~unetkit.models.encoders.Encoder`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .auxiliary import auxiliary_heads, crop_auxiliary, supervised_levels
from .blocks import DoubleConv, check_input, init_kaiming, pad_to_multiple
from .encoders import Encoder
from .layers import CONV, check_dims

__all__ = ["EncoderUNet", "DecoderBlock"]


class DecoderBlock(nn.Module):
    """Upsample x2 (nearest), concatenate the skip (if any), two 3x3 conv + BN + ReLU.

    (B, in_ch, h, w) and skip (B, skip_ch, 2h, 2w) -> (B, out_ch, 2h, 2w); with ``dims=3``
    (B, in_ch, d, h, w) -> (B, out_ch, 2d, 2h, 2w) through 3x3x3 convolutions.
    """

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, dims: int = 2):
        super().__init__()
        self.conv = DoubleConv(in_ch + skip_ch, out_ch, padding=1, norm="batch", dims=dims)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv(x)


class EncoderUNet(nn.Module):
    """U-Net whose contracting path is ``encoder`` (see :class:`Encoder`).

    Args:
        encoder: its n feature maps (strides 2 .. 2**n) are the skips; the deepest one
            starts the decoder. Kept as ``self.encoder`` (weights ``encoder.*``).
        num_classes: output logits (1 for binary segmentation).
        decoder_channels: output channels of the n decoder stages, deepest first; stage i
            upsamples x2 and concatenates the encoder map of the same stride (the last
            stage, back at full resolution, has no skip).
        freeze_encoder: do not train the encoder; its BatchNorm statistics also stay fixed
            (the encoder stays in eval mode even in ``model.train()``).
        deep_supervision: also build nnU-Net's auxiliary 1x1 heads on the decoder stages
            of strides 2 .. 2**(n-2) (levels 1 .. n-2, see :mod:`.auxiliary`);
            ``model(x)`` never runs them, ``model(x, auxiliary=True)`` returns
            ``[logits, stride 2, ..]``, each cropped to the input's size / its stride
            (rounded up).

    Input (B, in_channels, H, W) of ANY size; output logits (B, num_classes, H, W): the
    input is padded internally (edge replication) to a multiple of the encoder's
    ``size_multiple`` and the output cropped back. An encoder with ``spatial_dims = 3``
    (e.g. ``ResNet(spatial_dims=3)``) makes the whole network 3D: (B, in_channels, D, H, W)
    -> (B, num_classes, D, H, W), the decoder upsampling x2 along every axis.
    """

    def __init__(self, encoder: nn.Module, num_classes: int = 1,
                 decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16),
                 freeze_encoder: bool = False, deep_supervision: bool = False):
        super().__init__()
        if not isinstance(encoder, Encoder):
            raise TypeError(f"{type(encoder).__name__} is not an encoder: it needs "
                            "in_channels, feature_channels, size_multiple and features()")
        stages = len(encoder.feature_channels)
        if len(decoder_channels) != stages:
            raise ValueError(f"decoder_channels needs {stages} values, got {decoder_channels}")
        self.in_channels = encoder.in_channels
        self.num_classes = num_classes
        #: 2 or 3: the encoder's (an encoder without ``spatial_dims`` is 2D)
        self.spatial_dims = dims = check_dims(getattr(encoder, "spatial_dims", 2))
        #: sides that need no internal padding
        self.size_multiple = int(encoder.size_multiple)
        self.encoder = encoder
        channels = tuple(encoder.feature_channels)
        skips = list(reversed(channels[:-1])) + [0]  # strides 2**(n-1) .. 2, then none
        blocks, prev = [], channels[-1]
        for skip_ch, out_ch in zip(skips, decoder_channels):
            blocks.append(DecoderBlock(prev, skip_ch, out_ch, dims))
            prev = out_ch
        self.decoder = nn.ModuleList(blocks)
        self.head = CONV[dims](prev, num_classes, kernel_size=1)
        init_kaiming(self.decoder)
        init_kaiming(self.head)
        self.decoder_levels = len(blocks)  # block i ends at level len(blocks) - 1 - i
        self.deep_supervision = deep_supervision
        levels = supervised_levels(len(blocks)) if deep_supervision else range(0)
        self.aux_heads = None
        if deep_supervision:
            self.aux_heads = auxiliary_heads([decoder_channels[len(blocks) - 1 - k]
                                              for k in levels], num_classes, dims)
            init_kaiming(self.aux_heads)
        #: per output of ``model(x, auxiliary=True)``, its per-axis downsampling factor
        self.output_scales = [(2**k,) * dims for k in range(1 + len(levels))]
        self.freeze_encoder = freeze_encoder
        if freeze_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> EncoderUNet:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()  # keep the frozen BatchNorm statistics fixed
        return self

    def forward(self, x: torch.Tensor, auxiliary: bool = False
                ) -> torch.Tensor | list[torch.Tensor]:
        """Logits; with ``auxiliary=True`` the list of the main logits and the auxiliary
        heads' outputs, full resolution first."""
        check_input(x, self.in_channels, type(self).__name__, self.spatial_dims)
        x, sizes = pad_to_multiple(x, self.size_multiple, dims=self.spatial_dims)
        feats = self.encoder.features(x)
        x = feats[-1]
        skips = list(reversed(feats[:-1])) + [None]
        heads = self.aux_heads if auxiliary and self.aux_heads is not None else ()
        coarse = []  # auxiliary outputs, coarsest first
        for level, block, skip in zip(range(len(self.decoder) - 1, -1, -1), self.decoder,
                                      skips):
            x = block(x, skip)
            if 1 <= level <= len(heads):
                coarse.append(heads[level - 1](x))
        if not auxiliary:
            return self.head(x)[(..., *(slice(0, s) for s in sizes))]
        return crop_auxiliary([self.head(x), *reversed(coarse)], sizes, self.output_scales)
