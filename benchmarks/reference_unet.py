"""The benchmark's yardstick: a plain U-Net written the simplest textbook way.

Same padding, 64 features, BatchNorm, ConvTranspose upsampling, fp32, nothing tuned and
nothing imported from unetkit, so ``benchmarks/run.py`` can report every unetkit case as a
multiple of what a straightforward PyTorch U-Net achieves on the same machine.
Input (B, in_channels, H, W) float with H and W multiples of 16; output logits
(B, out_channels, H, W).
"""

import torch
from torch import nn


def double_conv(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
        nn.Conv2d(out_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
    )


class ReferenceUNet(nn.Module):
    def __init__(self, in_channels: int = 3, out_channels: int = 1, features: int = 64):
        super().__init__()
        f = features
        self.in_channels = in_channels
        self.enc1 = double_conv(in_channels, f)
        self.enc2 = double_conv(f, 2 * f)
        self.enc3 = double_conv(2 * f, 4 * f)
        self.enc4 = double_conv(4 * f, 8 * f)
        self.bottom = double_conv(8 * f, 16 * f)
        self.pool = nn.MaxPool2d(2)
        self.up4 = nn.ConvTranspose2d(16 * f, 8 * f, 2, stride=2)
        self.dec4 = double_conv(16 * f, 8 * f)
        self.up3 = nn.ConvTranspose2d(8 * f, 4 * f, 2, stride=2)
        self.dec3 = double_conv(8 * f, 4 * f)
        self.up2 = nn.ConvTranspose2d(4 * f, 2 * f, 2, stride=2)
        self.dec2 = double_conv(4 * f, 2 * f)
        self.up1 = nn.ConvTranspose2d(2 * f, f, 2, stride=2)
        self.dec1 = double_conv(2 * f, f)
        self.head = nn.Conv2d(f, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        e3 = self.enc3(self.pool(e2))
        e4 = self.enc4(self.pool(e3))
        b = self.bottom(self.pool(e4))
        d4 = self.dec4(torch.cat([e4, self.up4(b)], dim=1))
        d3 = self.dec3(torch.cat([e3, self.up3(d4)], dim=1))
        d2 = self.dec2(torch.cat([e2, self.up2(d3)], dim=1))
        d1 = self.dec1(torch.cat([e1, self.up1(d2)], dim=1))
        return self.head(d1)
