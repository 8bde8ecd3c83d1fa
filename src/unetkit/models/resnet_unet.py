"""ResNetUNet: a ResNet encoder (optionally ImageNet-pretrained) with a U-Net decoder."""

from __future__ import annotations

import os

from ..config import IMAGENET_MEAN, IMAGENET_STD
from .encoder_unet import DecoderBlock, EncoderUNet
from .resnet import ResNet

__all__ = ["ResNetUNet", "DecoderBlock", "IMAGENET_MEAN", "IMAGENET_STD"]


class ResNetUNet(EncoderUNet):
    """U-Net whose contracting path is a ResNet: an :class:`EncoderUNet` on
    ``ResNet(depth, in_channels)``, built the way the original design calls it.

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
        spatial_dims: 2 for images; 3 for volumes (a 3D ResNet with isotropic strides, see
            :class:`ResNet`; ``pretrained`` must then be False: no ImageNet weights exist
            for 3D).
        deep_supervision: auxiliary heads for training, see :class:`EncoderUNet`.

    Input (B, in_channels, H, W) of ANY size; output logits (B, num_classes, H, W). The
    encoder halves the resolution five times, so the input is padded internally (edge
    replication) to a multiple of 32 and the output cropped back. In 3D:
    (B, in_channels, D, H, W) -> (B, num_classes, D, H, W), likewise.
    """

    def __init__(
        self,
        num_classes: int = 1,
        pretrained: bool | str | os.PathLike = False,
        depth: int = 34,
        in_channels: int = 3,
        decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16),
        freeze_encoder: bool = False,
        *,
        spatial_dims: int = 2,
        deep_supervision: bool = False,
    ):
        if len(decoder_channels) != 5:
            raise ValueError(f"decoder_channels needs 5 values, got {decoder_channels}")
        encoder = ResNet(depth, in_channels=in_channels, num_classes=None,
                         spatial_dims=spatial_dims)
        if pretrained:
            encoder.load_pretrained(pretrained)
        super().__init__(encoder, num_classes, decoder_channels, freeze_encoder,
                         deep_supervision)
