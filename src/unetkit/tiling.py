"""Tile plans, blending weights, and the band-of-rows streaming that tiled prediction is
built on (the network itself is :mod:`unetkit.inference`'s business: it hands
:func:`stream_bands` a ``forward`` function).

Two tiling schemes, chosen from the model:

* **Overlap-tile** (valid-padding :class:`~unetkit.models.UNet`, the paper's strategy). The
  network's output is smaller than its input by ``model.margin()`` pixels per side, so each
  output tile is predicted from an input tile that adds that margin of context on every
  side; outside the image the context is the image mirrored at its border (reflection,
  repeated for images smaller than the margin). Tiles start on the network's pooling grid
  (multiples of ``2**depth``), so the stitched result EQUALS the network applied to the
  whole mirrored image. An output tile side is ``2**depth * k + c`` for a constant ``c``,
  so consecutive tiles overlap by ``c`` pixels (4 for the paper's net); those pixels get
  the same value from both tiles and are simply written twice (the later tile's stays).
* **Sliding window** (same-size models: same-padding UNet, ResNetUNet, any module whose
  output is H x W). Tiles overlap by ``overlap`` of their side and are blended with a
  Gaussian weight (``sigma = sigma_scale * tile``) that trusts a tile's centre more than
  its edges, where a padded convolution sees zeros instead of image. Images smaller than
  a tile are extended by reflection and the result cropped.

No weight-sum image is kept: the blending weight is separable (row weight x column weight)
and the tiles form a grid, so the sum of the weights over all tiles is the product of two
1-D sums, computed in advance; each tile's weight is divided by it before accumulation.

**Bands.** Tiles are predicted in row-major order, so once the tiles of a tile row are
done, every row above the next tile row's first row is final: no later tile writes there.
:func:`stream_bands` therefore keeps accumulators only for the rows that tiles in flight
still write to (about one tile side, plus one more when a batch spans two tile rows) and
yields each finished band ``(y0, y1, probabilities)``, top to bottom; the image is read
one tile row's input rows at a time. Memory follows the tile side and the image width,
never the image height.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .config import InferenceConfig, choices_of
from .models import UNet
from .models.blocks import reflect_indices

__all__ = ["TilePlan", "plan_tiles", "stream_bands", "blend_weight_sum", "BLENDS",
           "DEFAULT_TILE", "DEFAULT_VALID_TILE"]

_DEFAULTS = InferenceConfig()  # every default a user can change lives in config.py
DEFAULT_TILE = _DEFAULTS.tile  # tile side for same-size models, pixels
DEFAULT_VALID_TILE = _DEFAULTS.valid_tile  # output tile side for valid-padding UNets
BLENDS = choices_of(InferenceConfig, "blend")  # declared once, in config.py


# --------------------------------------------------------------------------- tile plans


@dataclass(frozen=True)
class _Axis:
    """How one image axis (of length ``size``) is cut into tiles.

    Tile ``i`` reads input pixels ``[starts[i] - context, starts[i] - context + in_side)``
    (reflected where outside the image) and predicts output pixels
    ``[starts[i], starts[i] + out_side)``, of which those below ``size`` are kept.
    """

    size: int
    starts: tuple[int, ...]
    in_side: int
    out_side: int
    context: int  # input pixels before the first output pixel (valid-padding margin)

    def input_indices(self, i: int) -> np.ndarray:
        """The image pixels tile ``i`` reads, mirrored into the image."""
        return reflect_indices(self.starts[i] - self.context, self.in_side, self.size)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _plan_same(size: int, tile: int, overlap: float, multiple: int) -> _Axis:
    """Sliding-window plan for a same-size model: tiles of side ``tile`` (a multiple of
    ``multiple``; smaller when the image is smaller) spread evenly from the first to the
    last pixel with at least ``overlap * side`` pixels of overlap."""
    side = min(_round_up(tile, multiple), _round_up(size, multiple))
    return _Axis(size, even_starts(size, side, overlap), side, side, 0)


def even_starts(size: int, side: int, overlap: float) -> tuple[int, ...]:
    """First pixels of tiles of ``side`` along an axis of ``size``: from the first to the
    last pixel with at least ``overlap * side`` pixels shared by neighbours. Evenly
    spread positions make the overlaps equal instead of leaving a thin last tile."""
    if size <= side:
        return (0,)
    step = max(1, int(side * (1.0 - overlap)))
    count = math.ceil((size - side) / step) + 1
    return tuple(int(s) for s in np.round(np.linspace(0, size - side, count)).astype(int))


def _plan_valid(size: int, tile: int, net: UNet) -> _Axis:
    """Overlap-tile plan for a valid-padding UNet: output tiles of side >= ``tile`` (or
    just enough for a smaller image) starting on multiples of ``2**depth``."""
    grid = 2**net.depth
    wanted = max(min(tile, size), grid)  # a tile must advance by at least one grid cell
    in_side = net.valid_input_size(wanted)
    out_side = net.output_size(in_side)
    step = out_side // grid * grid
    count = 1 if size <= out_side else math.ceil((size - out_side) / step) + 1
    starts = tuple(i * step for i in range(count))
    return _Axis(size, starts, in_side, out_side, net.margin())


def axis_weight(side: int, blend: str, sigma_scale: float) -> np.ndarray:
    """(side,) float64 1-D blending weight, peak 1 at the centre."""
    if blend == "constant":
        return np.ones(side)
    centre = (side - 1) / 2.0
    sigma = sigma_scale * side
    weight = np.exp(-0.5 * ((np.arange(side) - centre) / sigma) ** 2)
    # Keep edge weights positive so a pixel covered only by a tile's edge is still defined.
    return np.maximum(weight, 1e-6)


def _normalised_axis_weights(axis: _Axis, blend: str, sigma_scale: float) -> list[np.ndarray]:
    """For each tile of ``axis``: (out_side,) weight divided by the sum over all tiles at
    each pixel, so that the per-pixel sum over tiles of (row weight x column weight) is 1."""
    weight = axis_weight(axis.out_side, blend, sigma_scale)
    total = np.zeros(max(axis.size, axis.starts[-1] + axis.out_side))
    for start in axis.starts:
        total[start : start + axis.out_side] += weight
    return [weight / total[start : start + axis.out_side] for start in axis.starts]


def check_blend(blend: str, overlap: float, sigma_scale: float) -> None:
    """SettingError unless the blending settings are in InferenceConfig's ranges (the
    ranges are declared there, once)."""
    InferenceConfig(blend=blend, overlap=overlap, sigma_scale=sigma_scale)


def is_valid_unet(net: nn.Module) -> bool:
    return isinstance(net, UNet) and net.padding == "valid"


def blend_weight_sum(
    height: int,
    width: int,
    tile: int = DEFAULT_TILE,
    overlap: float = 0.5,
    blend: str = "gaussian",
    sigma_scale: float = _DEFAULTS.sigma_scale,
    multiple: int = 1,
) -> np.ndarray:
    """(height, width) float64: the sum over all tiles of the normalised blending weights
    that :func:`~unetkit.inference.predict` uses for a same-size model; 1 everywhere when
    blending is correct.

    Built with the same tile plan and weights as ``predict`` (``multiple``: the size the
    model's input must be a multiple of, e.g. ``2**depth``), for testing and inspection.
    """
    check_blend(blend, overlap, sigma_scale)
    rows = _plan_same(height, tile, overlap, multiple)
    cols = _plan_same(width, tile, overlap, multiple)
    total = np.zeros((height, width))
    row_w = _normalised_axis_weights(rows, blend, sigma_scale)
    col_w = _normalised_axis_weights(cols, blend, sigma_scale)
    for y0, wy in zip(rows.starts, row_w):
        for x0, wx in zip(cols.starts, col_w):
            h, w = min(rows.out_side, height - y0), min(cols.out_side, width - x0)
            total[y0 : y0 + h, x0 : x0 + w] += np.outer(wy[:h], wx[:w])
    return total


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of one image go. ``row_weights``/``col_weights``: the normalised
    1-D blending weights of each tile row/column, or None when tiles are written, not
    blended (overlap-tile)."""

    rows: _Axis
    cols: _Axis
    row_weights: tuple[torch.Tensor, ...] | None = None
    col_weights: tuple[torch.Tensor, ...] | None = None

    @property
    def tiles(self) -> list[tuple[int, int]]:
        """(tile row, tile column) pairs in row-major order."""
        return [(r, c) for r in range(len(self.rows.starts))
                for c in range(len(self.cols.starts))]


def plan_tiles(net: nn.Module, height: int, width: int, tile: int, overlap: float,
               blend: str, sigma_scale: float) -> TilePlan:
    """The overlap-tile plan for a valid-padding UNet, else the sliding-window plan with
    tiles rounded to ``net.size_multiple`` and its blending weights."""
    InferenceConfig(tile=tile, blend=blend, overlap=overlap, sigma_scale=sigma_scale)
    if is_valid_unet(net):
        return TilePlan(_plan_valid(height, tile, net), _plan_valid(width, tile, net))
    multiple = getattr(net, "size_multiple", 1)  # input sides the model handles unpadded
    rows = _plan_same(height, tile, overlap, multiple)
    cols = _plan_same(width, tile, overlap, multiple)
    weights = [tuple(torch.from_numpy(w) for w in _normalised_axis_weights(a, blend, sigma_scale))
               for a in (rows, cols)]
    return TilePlan(rows, cols, *weights)


# --------------------------------------------------------------------------- streaming


def stream_bands(
    plan: TilePlan,
    image,
    forward: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | None = None,
    progress: bool = False,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Predict ``image`` tile by tile and yield its finished bands of rows, top to bottom:
    ``(y0, y1, probabilities (K, y1 - y0, W))`` of ``dtype`` on ``device``; together they
    cover every row once. A band stays valid after the next one is yielded.

    ``image``: (C, H, W) numpy array/memmap or tensor, or an object with ``shape`` and
    ``read_rows(y0, y1)`` -> (C, y1 - y0, W) (e.g. a file read by rows); the input rows
    of each tile row are read once. ``forward``: (B, C, in, in) batch of input tiles (a
    tensor on the image's device) -> (B, K, out, out) probabilities.
    """
    tiles = plan.tiles
    strips = _Strips(image, plan.rows)
    band = _RowBand(plan.cols.size, dtype, device or torch.device("cpu"))
    bar = tqdm(total=len(tiles), desc="tiles", unit="tile", disable=not progress,
               file=sys.stderr, leave=False)
    try:
        for first in range(0, len(tiles), batch_size):
            batch = tiles[first : first + batch_size]
            pieces = [strips.tile(r, plan.cols, c) for r, c in batch]
            stacked = (torch.stack(pieces) if isinstance(pieces[0], torch.Tensor)
                       else torch.from_numpy(np.stack(pieces)))  # a copy: memmaps are read-only
            for (r, c), probs in zip(batch, forward(stacked).to(device)):
                band.put(plan, r, c, probs)
            bar.update(len(batch))
            following = first + batch_size
            if following < len(tiles):  # rows above the next tile's row are finished
                strips.forget_before(tiles[following][0])
                finished = plan.rows.starts[tiles[following][0]]
            else:
                finished = plan.rows.size
            if finished > band.top:
                yield band.pop(finished)
    finally:
        bar.close()


class _Strips:
    """The input rows of the tile rows in flight, read once per tile row: a view of an
    array or tensor, or ``image.read_rows`` for a file read by rows."""

    def __init__(self, image, rows: _Axis):
        self.image, self.rows = image, rows
        self._held: dict[int, tuple] = {}  # tile row -> (strip, tile's rows in the strip)

    def tile(self, r: int, cols: _Axis, c: int):
        """The input tile (C, rows.in_side, cols.in_side) of tile (r, c)."""
        if r not in self._held:
            idx = self.rows.input_indices(r)
            lo, hi = int(idx.min()), int(idx.max()) + 1
            read = getattr(self.image, "read_rows", None)
            strip = read(lo, hi) if read is not None else self.image[:, lo:hi]
            self._held[r] = (strip, idx - lo)
        strip, ridx = self._held[r]
        return _take(strip, ridx, cols.input_indices(c))

    def forget_before(self, r: int) -> None:
        for done in [k for k in self._held if k < r]:
            del self._held[done]


def _take(strip, ridx: np.ndarray, cidx: np.ndarray):
    """``strip[:, ridx][:, :, cidx]``: a plain slice (no copy) where both index runs are
    contiguous, the common case inside the image; else mirrored pixels gathered."""
    rows, cols = _run(ridx), _run(cidx)
    if rows is not None and cols is not None:
        return strip[:, rows, cols]
    if isinstance(strip, torch.Tensor):
        ridx = torch.from_numpy(ridx).to(strip.device)
        cidx = torch.from_numpy(cidx).to(strip.device)
        return strip.index_select(1, ridx).index_select(2, cidx)
    # One broadcast index: reads only the tile's pixels (of a memmap, too), not whole rows.
    return strip[:, ridx[:, None], cidx[None, :]]


def _run(idx: np.ndarray) -> slice | None:
    """``slice`` equal to the index array ``idx`` when it counts up by one, else None."""
    start, stop = int(idx[0]), int(idx[0]) + len(idx)
    return slice(start, stop) if np.array_equal(idx, np.arange(start, stop)) else None


class _RowBand:
    """Accumulators (K, rows, W) for the image rows from ``top`` down to the lowest row a
    tile in flight writes to."""

    def __init__(self, width: int, dtype: torch.dtype, device: torch.device):
        self.width, self.dtype, self.device = width, dtype, device
        self.top = 0
        self.rows: torch.Tensor | None = None  # created by the first tile: K is known then

    def put(self, plan: TilePlan, r: int, c: int, probs: torch.Tensor) -> None:
        """Write (overlap-tile) or add with its blending weight (sliding window) tile
        (r, c)'s probabilities (K, out, out), cropped at the image border."""
        y0, x0 = plan.rows.starts[r], plan.cols.starts[c]
        h = min(plan.rows.out_side, plan.rows.size - y0)
        w = min(plan.cols.out_side, self.width - x0)
        self._cover(probs.shape[0], y0 + h)
        target = self.rows[:, y0 - self.top : y0 - self.top + h, x0 : x0 + w]
        with torch.no_grad():
            probs = probs[:, :h, :w]
            if plan.row_weights is None:
                target.copy_(probs)
            else:
                weight = torch.outer(plan.row_weights[r][:h], plan.col_weights[c][:w])
                target.add_(probs * weight.to(probs))

    def _cover(self, classes: int, bottom: int) -> None:
        """Grow the accumulators (zeros) down to row ``bottom``, keeping what they hold."""
        held = 0 if self.rows is None else self.rows.shape[1]
        if self.top + held >= bottom:
            return
        grown = torch.zeros((classes, bottom - self.top, self.width), dtype=self.dtype,
                            device=self.device)
        if held:
            grown[:, :held] = self.rows
        self.rows = grown

    def pop(self, bottom: int) -> tuple[int, int, torch.Tensor]:
        """Hand out rows ``top .. bottom`` (finished) and stop holding them."""
        y0, count = self.top, bottom - self.top
        band = self.rows[:, :count]
        self.rows, self.top = self.rows[:, count:], bottom
        return y0, bottom, band
