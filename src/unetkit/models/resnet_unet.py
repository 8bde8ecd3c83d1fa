"""ResNetUNet: a ResNet encoder (optionally ImageNet-pretrained) with a U-Net decoder."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from ..config import IMAGENET_MEAN, IMAGENET_STD
from .blocks import DoubleConv, check_input, init_kaiming, pad_to_multiple
from .pretrained import find_weights, load_resnet_weights
from .resnet import ResNet

__all__ = ["ResNetUNet", "IMAGENET_MEAN", "IMAGENET_STD"]


class DecoderBlock(nn.Module):
    """Upsample x2 (nearest), concatenate the skip (if any), two 3x3 conv + BN + ReLU."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int):
        super().__init__()
        self.conv = DoubleConv(in_ch + skip_ch, out_ch, padding=1, norm="batch")

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv(x)


class ResNetUNet(nn.Module):
    """U-Net whose contracting path is a ResNet.

    Args:
        num_classes: output logits (1 for binary segmentation).
        pretrained: False; True for torchvision's ImageNet file for ``depth`` from
            torch.hub's checkpoint folder (downloaded there only if missing and the
            network allows; otherwise an error names the file and folder); or a path to
            such a file. Pretrained weights expect images scaled to [0, 1] and normalised
            with ``IMAGENET_MEAN`` / ``IMAGENET_STD`` (RGB). With ``in_channels != 3`` the
            stem's RGB kernels are averaged and repeated for each channel (scaled by
            3 / in_channels) instead of being dropped.
        depth: ResNet depth, 18, 34, 50, 101 or 152.
        in_channels: image channels.
        decoder_channels: output channels of the five decoder stages, deepest first.
        freeze_encoder: do not train the encoder; its BatchNorm statistics also stay fixed
            (the encoder stays in eval mode even in ``model.train()``).

    Input (B, in_channels, H, W) of ANY size; output logits (B, num_classes, H, W). The
    encoder halves the resolution five times, so the input is padded internally (edge
    replication) to a multiple of 32 and the output cropped back.
    """

    def __init__(
        self,
        num_classes: int = 1,
        pretrained: bool | str | os.PathLike = False,
        depth: int = 34,
        in_channels: int = 3,
        decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16),
        freeze_encoder: bool = False,
    ):
        super().__init__()
        if len(decoder_channels) != 5:
            raise ValueError(f"decoder_channels needs 5 values, got {decoder_channels}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.encoder = ResNet(depth, in_channels=in_channels, num_classes=None)
        skips = list(reversed(self.encoder.feature_channels[:-1])) + [0]  # 1/16 .. 1/2, none
        blocks, prev = [], self.encoder.feature_channels[-1]
        for skip_ch, out_ch in zip(skips, decoder_channels):
            blocks.append(DecoderBlock(prev, skip_ch, out_ch))
            prev = out_ch
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(prev, num_classes, kernel_size=1)
        init_kaiming(self.decoder)
        init_kaiming(self.head)
        if pretrained:
            load_resnet_weights(self.encoder, find_weights(depth, pretrained))
        self.freeze_encoder = freeze_encoder
        if freeze_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    #: sides that need no internal padding: the encoder halves the resolution 5 times
    size_multiple = 32

    def train(self, mode: bool = True) -> ResNetUNet:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()  # keep the frozen BatchNorm statistics fixed
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, "ResNetUNet")
        x, (height, width) = pad_to_multiple(x, self.size_multiple)
        feats = self.encoder.features(x)
        x = feats[-1]
        skips = list(reversed(feats[:-1])) + [None]
        for block, skip in zip(self.decoder, skips):
            x = block(x, skip)
        return self.head(x)[..., :height, :width]
