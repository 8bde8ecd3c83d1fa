"""The U-Net of Ronneberger et al. (2015), with the paper's valid convolutions by default
and a same-padding variant that takes any image size; in 2D (images) or 3D (volumes, with
nnU-Net's per-axis pooling for anisotropic voxels, see :mod:`.anisotropy`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .anisotropy import anisotropic_stages
from .auxiliary import auxiliary_heads, crop_auxiliary, level_scales, supervised_levels
from .blocks import DoubleConv, center_crop, check_input, init_kaiming, pad_to_multiple
from .layers import (
    AXIS_NAMES,
    CONV,
    CONV_TRANSPOSE,
    DROPOUT,
    LINEAR_MODE,
    MAX_POOL,
    check_dims,
    max_pool,
)

PADDINGS = ("valid", "same")
UPSAMPLES = ("transpose", "bilinear")


class Up(nn.Module):
    """Multiply the resolution by ``scale`` (2, or one factor per axis) and halve the
    channels: a transposed convolution of kernel and stride ``scale`` (the paper's 2x2
    "up-convolution"), or (bi/tri)linear upsampling followed by a 1x1 convolution.

    Both keep the same size arithmetic (exactly x scale), so valid-padding sizes do not
    depend on the choice. (B, in_ch, *S) -> (B, out_ch, *(S * scale)), ``dims`` axes S.
    """

    def __init__(self, in_ch: int, out_ch: int, mode: str, dims: int = 2,
                 scale: int | tuple[int, ...] = 2):
        super().__init__()
        if mode == "transpose":
            self.up = CONV_TRANSPOSE[check_dims(dims)](in_ch, out_ch, kernel_size=scale,
                                                       stride=scale)
        elif mode == "bilinear":
            factor = scale if isinstance(scale, int) else tuple(float(s) for s in scale)
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=factor, mode=LINEAR_MODE[check_dims(dims)],
                            align_corners=False),
                CONV[dims](in_ch, out_ch, kernel_size=1),
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
        upsample: ``"transpose"`` (the paper's 2x2 up-convolution) or ``"bilinear"``
            (trilinear in 3D).
        norm: None (the paper), ``"batch"``, ``"instance"`` or ``"group"``.
        dropout: dropout probability at the end of the contracting path (the paper).
        spatial_dims: 2 for images, 3 for volumes (2x2x2 poolings, 3x3x3 convolutions).
        spacing: the voxel size per axis, outermost first ((z, y, x) in 3D); None or ()
            for isotropic voxels. Anisotropic spacing plans each stage's pooling and
            kernel sizes by nnU-Net's rule (:func:`~.anisotropy.anisotropic_stages`), e.g.
            (3, 1, 1) pools (1, 2, 2) with (1, 3, 3) kernels until z has caught up; the
            sizes are ``pool_sizes`` / ``kernel_sizes``, and the size arithmetic below is
            then per axis (:meth:`output_shape`, :meth:`valid_input_shape`,
            :meth:`margins`, ``size_multiples``).
        deep_supervision: also build nnU-Net's auxiliary 1x1 heads on the decoder levels
            1 .. depth-2 (see :mod:`.auxiliary`), for training with
            :class:`unetkit.deep_supervision.DeepSupervisionLoss`; ``model(x)`` never runs them.

    Shapes: input (B, in_channels, H, W) float -> logits (B, out_channels, H', W'),
    with H' = H for same padding and H' = ``output_size(H)`` for valid padding; in 3D
    (B, in_channels, D, H, W) -> (B, out_channels, D', H', W'), (D', H', W') =
    ``output_shape((D, H, W))``. ``model(x, auxiliary=True)``: the list
    ``[logits, level 1, .., level depth-2]`` of (B, out_channels, *S_k), full resolution
    first, level k ``output_scales[k]`` times coarser per axis (same padding: S_k is the
    input's shape divided by it, rounded up; valid padding: what the convolutions leave).
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
        *,
        spatial_dims: int = 2,
        spacing: Sequence[float] | None = None,
        deep_supervision: bool = False,
    ):
        super().__init__()
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        dims = check_dims(spatial_dims)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.depth = depth
        self.padding = padding
        self.norm = norm
        self.spatial_dims = dims
        self.spacing = tuple(float(s) for s in spacing) if spacing else None
        #: per stage and axis: ``depth`` pooling sizes, ``depth + 1`` kernel sizes
        #: (stages 0 .. depth-1, then the bottleneck); 2 and 3 everywhere unless anisotropic
        self.pool_sizes, self.kernel_sizes = anisotropic_stages(self.spacing, depth, dims)
        kernels = [k if len(set(k)) > 1 else k[0] for k in self.kernel_sizes]  # 3, or (1,3,3)

        def pad(kernel: int | tuple[int, ...]) -> int | tuple[int, ...]:
            if padding == "valid":
                return 0
            return kernel // 2 if isinstance(kernel, int) else tuple(k // 2 for k in kernel)

        widths = [features * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        prev = in_channels
        for width, kernel in zip(widths[:-1], kernels):
            self.down.append(DoubleConv(prev, width, pad(kernel), norm, dims, kernel))
            prev = width
        # the 2x2 (2x2x2) pooling; an anisotropic stage pools with its own size instead
        self.pool = MAX_POOL[dims](2)
        self.bottleneck = DoubleConv(widths[-2], widths[-1], pad(kernels[-1]), norm, dims,
                                     kernels[-1])
        self.dropout = DROPOUT[dims](dropout) if dropout > 0 else nn.Identity()
        self.ups = nn.ModuleList()
        self.up_convs = nn.ModuleList()
        for i in reversed(range(depth)):
            width, kernel = widths[i], kernels[i]
            scale = self.pool_sizes[i] if len(set(self.pool_sizes[i])) > 1 else 2
            self.ups.append(Up(width * 2, width, upsample, dims, scale))
            self.up_convs.append(DoubleConv(width * 2, width, pad(kernel), norm, dims, kernel))
        self.head = CONV[dims](widths[0], out_channels, kernel_size=1)
        init_kaiming(self)
        #: decoder stages (resolution levels 0 .. depth-1); the auxiliary heads are made
        #: last, so the rest is initialised alike with and without them
        self.decoder_levels = depth
        self.deep_supervision = deep_supervision
        levels = supervised_levels(depth) if deep_supervision else range(0)
        self.aux_heads = None
        if deep_supervision:
            self.aux_heads = auxiliary_heads([widths[k] for k in levels], out_channels, dims)
            init_kaiming(self.aux_heads)
        #: per output of ``model(x, auxiliary=True)``, its per-axis downsampling factor
        self.output_scales = level_scales(self.pool_sizes, range(0, 1 + len(levels)))

    def forward(self, x: torch.Tensor, auxiliary: bool = False
                ) -> torch.Tensor | list[torch.Tensor]:
        """Logits; with ``auxiliary=True`` (training with deep supervision) the list of the
        main logits and the auxiliary heads' outputs, full resolution first."""
        check_input(x, self.in_channels, "UNet", self.spatial_dims)
        if self.padding == "same":
            # Instance norm cannot normalise a 1x1 bottleneck: give it at least 2x2.
            multiples = self.size_multiples
            minimum = tuple(2 * m for m in multiples) if self.norm == "instance" else 1
            x, sizes = pad_to_multiple(x, multiples, minimum, dims=self.spatial_dims)
        else:
            self._check_valid(*x.shape[2:])
        skips = []
        for block, size in zip(self.down, self.pool_sizes):
            x = block(x)
            skips.append(x)
            x = self.pool(x) if min(size) == 2 else max_pool(x, size)
        x = self.dropout(self.bottleneck(x))
        heads = self.aux_heads if auxiliary and self.aux_heads is not None else ()
        coarse = []  # auxiliary outputs, coarsest first
        for level, up, conv, skip in zip(range(self.depth - 1, -1, -1), self.ups,
                                         self.up_convs, reversed(skips)):
            x = up(x)
            # Valid padding: the skip is larger than the upsampled map (the paper crops it).
            skip = center_crop(skip, *x.shape[2:])
            x = conv(torch.cat([skip, x], dim=1))
            if 1 <= level <= len(heads):
                coarse.append(heads[level - 1](x))
        x = self.head(x)
        outputs = [x, *reversed(coarse)]
        if self.padding == "same":
            outputs = crop_auxiliary(outputs, sizes, self.output_scales)
        return outputs if auxiliary else outputs[0]

    # -- size arithmetic --------------------------------------------------------------
    # The scalar methods (one side) hold for every axis of a 2D or isotropic 3D network;
    # the *_shape / *s methods take and return one value per axis (any network).
    def axis_stages(self, axis: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(pooling sizes, kernel sizes) along spatial ``axis`` (0: outermost)."""
        return (tuple(p[axis] for p in self.pool_sizes),
                tuple(k[axis] for k in self.kernel_sizes))

    @property
    def size_multiples(self) -> tuple[int, ...]:
        """Per axis, the sides that need no internal padding (same padding): multiples of
        the product of that axis's pooling sizes (2**depth unless anisotropic)."""
        multiples = []
        for axis in range(self.spatial_dims):
            product = 1
            for p in self.axis_stages(axis)[0]:
                product *= p
            multiples.append(product)
        return tuple(multiples)

    @property
    def size_multiple(self) -> int:
        """Sides that need no internal padding (same padding): multiples of 2**depth (of
        the largest of ``size_multiples`` in an anisotropic network)."""
        return max(self.size_multiples)

    def output_size(self, input_size: int) -> int | None:
        """Output side for an input side, or None when the network cannot take it.

        Same padding: the input size. Valid padding: each level loses 4 pixels to its two
        convolutions, each pooling halves (the side must then be even), each upsampling
        doubles.
        """
        if self.padding == "same":
            return input_size if input_size > 0 else None
        return valid_output_size(input_size, self.depth, *self._uniform_stages("output_size"))

    def output_shape(self, shape: Sequence[int]) -> tuple[int, ...] | None:
        """Output (D', H', W') (or (H', W')) for an input's spatial shape, or None when
        the network cannot take it along some axis."""
        sides = [self._axis_output(axis, int(s)) for axis, s in enumerate(self._shape(shape))]
        return None if None in sides else tuple(sides)

    def valid_input_size(self, size: int) -> int:
        """The smallest input side the network takes whose output side is >= ``size``."""
        if self.padding == "same":
            return max(1, size)
        return _valid_input(size, self.depth, *self._uniform_stages("valid_input_size"))

    def valid_input_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """Per axis, the smallest input side whose output side is >= ``shape``'s."""
        if self.padding == "same":
            return tuple(max(1, int(s)) for s in self._shape(shape))
        return tuple(_valid_input(int(s), self.depth, *self.axis_stages(axis))
                     for axis, s in enumerate(self._shape(shape)))

    def valid_input_at_least(self, shape: Sequence[int]) -> tuple[int, ...]:
        """Per axis, the smallest input side >= ``shape``'s that the network takes (the
        paper's tiles are valid sizes: a patch or tile is rounded up to one)."""
        sides = []
        for axis, side in enumerate(self._shape(shape)):
            side = max(1, int(side))
            while self._axis_output(axis, side) is None:
                side += 1
            sides.append(side)
        return tuple(sides)

    def margin(self) -> int:
        """Pixels lost on each side (valid padding): (input - output) / 2; 0 for same."""
        if self.padding == "same":
            return 0
        return valid_margin(self.depth, *self._uniform_stages("margin"))

    def margins(self) -> tuple[int, ...]:
        """Per axis, pixels (voxels) lost on each side: (input - output) / 2; 0s for same."""
        if self.padding == "same":
            return (0,) * self.spatial_dims
        return tuple(valid_margin(self.depth, *self.axis_stages(axis))
                     for axis in range(self.spatial_dims))

    def _axis_output(self, axis: int, side: int) -> int | None:
        if self.padding == "same":
            return side if side > 0 else None
        return valid_output_size(side, self.depth, *self.axis_stages(axis))

    def _shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        shape = tuple(shape)
        if len(shape) != self.spatial_dims:
            raise ValueError(f"expected {self.spatial_dims} sides (one per spatial axis), "
                             f"got {shape}")
        return shape

    def _uniform_stages(self, method: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The axes' common (pools, kernels); a ValueError when they differ per axis."""
        stages = {self.axis_stages(axis) for axis in range(self.spatial_dims)}
        if len(stages) > 1:
            per_axis = {"output_size": "output_shape", "valid_input_size": "valid_input_shape",
                        "margin": "margins"}[method]
            raise ValueError(f"UNet.{method}: the sizes differ per axis (spacing "
                             f"{self.spacing}); use {per_axis}(), one value per axis")
        return stages.pop()

    def _check_valid(self, *sides: int) -> None:
        dims = self.spatial_dims
        for axis, (name, side) in enumerate(zip(AXIS_NAMES[dims], sides)):
            pools, kernels = self.axis_stages(axis)
            if valid_output_size(int(side), self.depth, pools, kernels) is not None:
                continue
            below, above = nearest_valid_sizes(int(side), self.depth, pools, kernels)
            near = f"{below} or {above}" if below else f"{above}"
            if dims == 2:
                raise ValueError(
                    f"UNet(padding='valid', depth={self.depth}) cannot take input {name} "
                    f"{side}: every map before a 2x2 pooling must have an even side. "
                    f"Nearest valid sizes: {near}. Use padding='same' for any size, or "
                    f"unetkit.predict(...) to tile an image of any size."
                )
            raise ValueError(
                f"UNet(padding='valid', depth={self.depth}, spatial_dims={dims}) cannot "
                f"take input {name} {side} (axis {axis} of D x H x W "
                f"{' x '.join(str(int(s)) for s in sides)}): every map before a pooling "
                f"along it must have an even side. Nearest valid {name}s: {near}. Use "
                f"padding='same' for any size."
            )


# -- valid-padding arithmetic along one axis ---------------------------------------------
# ``pools`` (depth values, 1 or 2) and ``kernels`` (depth + 1 values, 1 or 3) are one
# axis's per-stage sizes (UNet.axis_stages); None: the plain U-Net's 2 and 3 everywhere.
def valid_output_size(size: int, depth: int, pools: Sequence[int] | None = None,
                      kernels: Sequence[int] | None = None) -> int | None:
    """Output side of a valid-padding U-Net of ``depth`` for an input side, or None."""
    pools = pools or (2,) * depth
    kernels = kernels or (3,) * (depth + 1)
    for pool, kernel in zip(pools, kernels):
        size -= 2 * (kernel - 1)  # two unpadded convolutions
        if size <= 0 or size % pool:
            return None
        size //= pool
    size -= 2 * (kernels[depth] - 1)  # bottleneck
    if size <= 0:
        return None
    for pool, kernel in zip(reversed(pools), reversed(kernels[:depth])):
        size = size * pool - 2 * (kernel - 1)
    return size if size > 0 else None


def _valid_input(size: int, depth: int, pools: Sequence[int] | None = None,
                 kernels: Sequence[int] | None = None) -> int:
    """The smallest input side whose output side is >= ``size``."""
    candidate = 1
    while True:
        out = valid_output_size(candidate, depth, pools, kernels)
        if out is not None and out >= size:
            return candidate
        candidate += 1


def smallest_valid_input(depth: int, pools: Sequence[int] | None = None,
                         kernels: Sequence[int] | None = None) -> int:
    """The smallest input side a valid-padding U-Net of ``depth`` takes (188 for depth 4)."""
    return next(s for s in range(1, 2 ** (depth + 3) * 4)
                if valid_output_size(s, depth, pools, kernels))


def valid_margin(depth: int, pools: Sequence[int] | None = None,
                 kernels: Sequence[int] | None = None) -> int:
    """Pixels a valid-padding U-Net of ``depth`` loses on each side: (input - output) / 2."""
    size = smallest_valid_input(depth, pools, kernels)
    return (size - valid_output_size(size, depth, pools, kernels)) // 2


def nearest_valid_sizes(size: int, depth: int, pools: Sequence[int] | None = None,
                        kernels: Sequence[int] | None = None) -> tuple[int | None, int]:
    """The valid input sides nearest ``size`` below (None if there is none) and above."""
    def valid(s: int) -> bool:
        return valid_output_size(s, depth, pools, kernels) is not None

    below = next((s for s in range(size - 1, 0, -1) if valid(s)), None)
    above = next(s for s in range(size + 1, size + 2 ** (depth + 1) * 2 + 200) if valid(s))
    return below, above
