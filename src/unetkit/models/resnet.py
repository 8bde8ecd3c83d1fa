"""ResNet 18/34/50/101/152 (He et al. 2015), written from scratch with torchvision's
module names, so torchvision's ImageNet weight files load with ``strict=True``.

Bottleneck blocks put the stride on the 3x3 convolution ("ResNet V1.5"), as torchvision.
``spatial_dims=3`` builds the same network of 3x3x3 convolutions for volumes (same module
names; there are no ImageNet weights for it).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ..config import IMAGENET_MEAN, IMAGENET_STD
from .blocks import check_input
from .layers import ADAPTIVE_AVG_POOL, BATCH_NORM, CONV, MAX_POOL, check_dims
from .pretrained import find_weights, load_resnet_weights


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, dims: int = 2) -> nn.Module:
    return CONV[dims](in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1, dims: int = 2) -> nn.Module:
    return CONV[dims](in_ch, out_ch, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 (3x3x3 for ``dims=3``) convolutions and a shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int = 1, downsample=None,
                 dims: int = 2):
        super().__init__()
        self.conv1 = conv3x3(in_ch, width, stride, dims)
        self.bn1 = BATCH_NORM[dims](width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(width, width, dims=dims)
        self.bn2 = BATCH_NORM[dims](width)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) and a shortcut (ResNet-50/101/152); 1x1x1 and
    3x3x3 for ``dims=3``."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1, downsample=None,
                 dims: int = 2):
        super().__init__()
        self.conv1 = conv1x1(in_ch, width, dims=dims)
        self.bn1 = BATCH_NORM[dims](width)
        self.conv2 = conv3x3(width, width, stride, dims)
        self.bn2 = BATCH_NORM[dims](width)
        self.conv3 = conv1x1(width, width * self.expansion, dims=dims)
        self.bn3 = BATCH_NORM[dims](width * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


LAYOUTS: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


class ResNet(nn.Module):
    """ResNet classifier, also an :class:`~unetkit.models.encoders.Encoder` (the
    ``resnet18`` ... ``resnet152`` encoders of ResNetUNet).

    Args:
        depth: 18, 34, 50, 101 or 152.
        in_channels: image channels.
        num_classes: classifier outputs; None builds no ``avgpool``/``fc`` (encoder only).
        spatial_dims: 2 for images; 3 for volumes (B, in_channels, D, H, W): the same
            network with 3x3x3 (7x7x7 stem) convolutions and isotropic stride-2 steps along
            every axis, whatever the voxel spacing (the U-Net's anisotropic planning is not
            applied to the encoder), and no ImageNet weights.

    Input (B, in_channels, H, W) of any size >= 1: every stride-2 step rounds up, so
    stage i has ceil(H / 2**i) rows (likewise D in 3D). ``forward`` returns logits
    (B, num_classes); :meth:`features` returns the five stage outputs used as U-Net skips.
    """

    #: sides a U-Net decoder needs: five stride-2 steps
    size_multiple = 32
    #: torchvision's ImageNet weights expect ImageNet statistics (RGB, images in [0, 1])
    pretrained_normalization = (IMAGENET_MEAN, IMAGENET_STD)

    def __init__(self, depth: int = 50, in_channels: int = 3, num_classes: int | None = 1000,
                 *, spatial_dims: int = 2):
        super().__init__()
        if depth not in LAYOUTS:
            raise ValueError(f"ResNet depth must be one of {sorted(LAYOUTS)}, got {depth}")
        block, counts = LAYOUTS[depth]
        dims = check_dims(spatial_dims)
        self.depth = depth
        self.in_channels = in_channels
        self.spatial_dims = dims
        self._in_ch = 64
        self.conv1 = CONV[dims](in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = BATCH_NORM[dims](64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = MAX_POOL[dims](kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, counts[0])
        self.layer2 = self._make_layer(block, 128, counts[1], stride=2)
        self.layer3 = self._make_layer(block, 256, counts[2], stride=2)
        self.layer4 = self._make_layer(block, 512, counts[3], stride=2)
        #: channels of the five feature maps returned by ``features`` (strides 2..32)
        self.feature_channels = (64,) + tuple(w * block.expansion for w in (64, 128, 256, 512))
        if num_classes is not None:
            self.avgpool = ADAPTIVE_AVG_POOL[dims]((1,) * dims)
            self.fc = nn.Linear(512 * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, CONV[dims]):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, BATCH_NORM[dims]):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block, width: int, count: int, stride: int = 1) -> nn.Sequential:
        dims = self.spatial_dims
        downsample = None
        if stride != 1 or self._in_ch != width * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self._in_ch, width * block.expansion, stride, dims),
                BATCH_NORM[dims](width * block.expansion),
            )
        layers = [block(self._in_ch, width, stride, downsample, dims)]
        self._in_ch = width * block.expansion
        layers += [block(self._in_ch, width, dims=dims) for _ in range(1, count)]
        return nn.Sequential(*layers)

    def load_pretrained(self, source: bool | str | os.PathLike) -> None:
        """Load torchvision's ImageNet file for this depth (``True``: from torch.hub's
        checkpoint folder) or a file in its layout; ``fc.*`` is ignored and the stem is
        adapted to ``in_channels``. 2D only: there are no ImageNet weights for 3D."""
        if self.spatial_dims != 2:
            raise ValueError(f"no ImageNet weights exist for a {self.spatial_dims}D ResNet: "
                             "build it with pretrained=False")
        load_resnet_weights(self, find_weights(self.depth, source))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Five maps at strides 2, 4, 8, 16, 32 with ``feature_channels`` channels:
        (B, in_channels, H, W) -> (B, C_i, ceil(H / 2**(i+1)), ceil(W / 2**(i+1))), and
        likewise (B, C, D, H, W) in 3D."""
        check_input(x, self.in_channels, f"ResNet-{self.depth}", self.spatial_dims)
        stem = self.relu(self.bn1(self.conv1(x)))
        x1 = self.layer1(self.maxpool(stem))
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        return [stem, x1, x2, x3, x4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "fc"):
            raise RuntimeError("this ResNet was built without a classifier; use features()")
        x = self.features(x)[-1]
        return self.fc(torch.flatten(self.avgpool(x), 1))
