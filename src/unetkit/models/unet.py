"""The U-Net of Ronneberger et al. (2015), with the paper's valid convolutions by default
and a same-padding variant that takes any image size."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import DoubleConv, center_crop, check_input, init_kaiming, pad_to_multiple

PADDINGS = ("valid", "same")
UPSAMPLES = ("transpose", "bilinear")


class Up(nn.Module):
    """Double the resolution and halve the channels: a 2x2 transposed convolution (the
    paper's "up-convolution"), or bilinear upsampling followed by a 1x1 convolution.

    Both keep the same size arithmetic (exactly x2), so valid-padding sizes do not depend
    on the choice.
    """

    def __init__(self, in_ch: int, out_ch: int, mode: str):
        super().__init__()
        if mode == "transpose":
            self.up = nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2)
        elif mode == "bilinear":
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(in_ch, out_ch, kernel_size=1),
            )
        else:
            raise ValueError(f"upsample must be one of {UPSAMPLES}, got {mode!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


class UNet(nn.Module):
    """U-Net: a contracting path of ``depth`` poolings and an expanding path with skips.

    Args:
        in_channels: image channels (1 grayscale, 3 RGB, ...).
        out_channels: output logits: 1 for binary segmentation (sigmoid), K for K classes.
        features: channels of the first level; level i has ``features * 2**i``.
        depth: number of 2x2 max-poolings (the paper: 4).
        padding: ``"valid"`` (the paper): unpadded 3x3 convolutions, so the output is
            smaller than the input, e.g. 572x572 -> 388x388 at depth 4, and only some input
            sizes are possible: every map before a pooling must have an even side. Use
            :meth:`output_size` and :meth:`valid_input_size`, or the tiled ``predict``
            which handles this for you. ``"same"``: padded convolutions; ANY H x W works
            and the output is H x W: the input is padded internally (edge replication) up
            to a multiple of ``2**depth`` and the output cropped back.
        upsample: ``"transpose"`` (the paper's 2x2 up-convolution) or ``"bilinear"``.
        norm: None (the paper), ``"batch"``, ``"instance"`` or ``"group"``.
        dropout: dropout probability at the end of the contracting path (the paper).

    Shapes: input (B, in_channels, H, W) float -> logits (B, out_channels, H', W'),
    with H' = H for same padding and H' = ``output_size(H)`` for valid padding.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 1,
        features: int = 64,
        depth: int = 4,
        padding: str = "valid",
        upsample: str = "transpose",
        norm: str | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.depth = depth
        self.padding = padding
        self.norm = norm
        conv_pad = 1 if padding == "same" else 0

        widths = [features * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        prev = in_channels
        for width in widths[:-1]:
            self.down.append(DoubleConv(prev, width, conv_pad, norm))
            prev = width
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(widths[-2], widths[-1], conv_pad, norm)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.ups = nn.ModuleList()
        self.up_convs = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.ups.append(Up(width * 2, width, upsample))
            self.up_convs.append(DoubleConv(width * 2, width, conv_pad, norm))
        self.head = nn.Conv2d(widths[0], out_channels, kernel_size=1)
        init_kaiming(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, "UNet")
        if self.padding == "same":
            # Instance norm cannot normalise a 1x1 bottleneck: give it at least 2x2.
            minimum = 2 ** (self.depth + 1) if self.norm == "instance" else 1
            x, (height, width) = pad_to_multiple(x, self.size_multiple, minimum)
        else:
            self._check_valid(x.shape[-2], x.shape[-1])
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.dropout(self.bottleneck(x))
        for up, conv, skip in zip(self.ups, self.up_convs, reversed(skips)):
            x = up(x)
            # Valid padding: the skip is larger than the upsampled map (the paper crops it).
            skip = center_crop(skip, x.shape[-2], x.shape[-1])
            x = conv(torch.cat([skip, x], dim=1))
        x = self.head(x)
        if self.padding == "same":
            x = x[..., :height, :width]
        return x

    # -- size arithmetic --------------------------------------------------------------
    @property
    def size_multiple(self) -> int:
        """Sides that need no internal padding (same padding): multiples of 2**depth."""
        return 2**self.depth

    def output_size(self, input_size: int) -> int | None:
        """Output side for an input side, or None when the network cannot take it.

        Same padding: the input size. Valid padding: each level loses 4 pixels to its two
        convolutions, each pooling halves (the side must then be even), each upsampling
        doubles.
        """
        if self.padding == "same":
            return input_size if input_size > 0 else None
        return valid_output_size(input_size, self.depth)

    def valid_input_size(self, size: int) -> int:
        """The smallest input side the network takes whose output side is >= ``size``."""
        if self.padding == "same":
            return max(1, size)
        candidate = 1
        while True:
            out = valid_output_size(candidate, self.depth)
            if out is not None and out >= size:
                return candidate
            candidate += 1

    def margin(self) -> int:
        """Pixels lost on each side (valid padding): (input - output) / 2; 0 for same."""
        return 0 if self.padding == "same" else valid_margin(self.depth)

    def _check_valid(self, height: int, width: int) -> None:
        for name, side in (("height", height), ("width", width)):
            if valid_output_size(int(side), self.depth) is None:
                below, above = nearest_valid_sizes(int(side), self.depth)
                near = f"{below} or {above}" if below else f"{above}"
                raise ValueError(
                    f"UNet(padding='valid', depth={self.depth}) cannot take input {name} "
                    f"{side}: every map before a 2x2 pooling must have an even side. "
                    f"Nearest valid sizes: {near}. Use padding='same' for any size, or "
                    f"unetkit.predict(...) to tile an image of any size."
                )


def valid_output_size(size: int, depth: int) -> int | None:
    """Output side of a valid-padding U-Net of ``depth`` for an input side, or None."""
    for _ in range(depth):
        size -= 4
        if size <= 0 or size % 2:
            return None
        size //= 2
    size -= 4  # bottleneck
    if size <= 0:
        return None
    for _ in range(depth):
        size = size * 2 - 4
    return size if size > 0 else None


def smallest_valid_input(depth: int) -> int:
    """The smallest input side a valid-padding U-Net of ``depth`` takes (188 for depth 4)."""
    return next(s for s in range(1, 2 ** (depth + 3) * 4) if valid_output_size(s, depth))


def valid_margin(depth: int) -> int:
    """Pixels a valid-padding U-Net of ``depth`` loses on each side: (input - output) / 2."""
    size = smallest_valid_input(depth)
    return (size - valid_output_size(size, depth)) // 2


def nearest_valid_sizes(size: int, depth: int) -> tuple[int | None, int]:
    below = next((s for s in range(size - 1, 0, -1) if valid_output_size(s, depth)), None)
    above = next(s for s in range(size + 1, size + 2 ** (depth + 1) * 2 + 200)
                 if valid_output_size(s, depth))
    return below, above
