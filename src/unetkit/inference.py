"""Prediction on images of any size: tiling, blending, test-time augmentation, and files.

Two tiling schemes, chosen from the model:

* **Overlap-tile** (valid-padding :class:`~unetkit.models.UNet`, the paper's strategy). The
  network's output is smaller than its input by ``model.margin()`` pixels per side, so each
  output tile is predicted from an input tile that adds that margin of context on every
  side; outside the image the context is the image mirrored at its border (reflection,
  repeated for images smaller than the margin). Tiles start on the network's pooling grid
  (multiples of ``2**depth``), so the stitched result EQUALS the network applied to the
  whole mirrored image. An output tile side is ``2**depth * k + c`` for a constant ``c``,
  so consecutive tiles overlap by ``c`` pixels (4 for the paper's net); those pixels get
  the same value from both tiles and are simply written twice.
* **Sliding window** (same-size models: same-padding UNet, ResNetUNet, any module whose
  output is H x W). Tiles overlap by ``overlap`` of their side and are blended with a
  Gaussian weight (``sigma = sigma_scale * tile``) that trusts a tile's centre more than
  its edges, where a padded convolution sees zeros instead of image. Images smaller than
  a tile are extended by reflection and the result cropped.

What is blended: class PROBABILITIES (softmax, or sigmoid for one output channel), not
logits. A weighted average of probabilities is again a probability distribution and stays
in [0, 1]; logits have no fixed scale, so one over-confident tile would dominate an
average of logits near the tile seams. TTA averages probabilities for the same reason.

Memory is bounded by the tile batch, not the image: tiles are cut from the image one
batch at a time (only the pixels of that batch are read, so a ``numpy.memmap`` image
works) and accumulated straight into the output, which may itself be a preallocated
``numpy.memmap`` (``out=``). No weight-sum image is kept: the blending weight is separable
(row weight x column weight) and the tiles form a grid, so the sum of the weights over all
tiles is the product of two 1-D sums, computed in advance; each tile's weight is divided
by it before accumulation, and the output is complete when the last tile is added.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint, unwrap
from .config import IMAGENET_MEAN, IMAGENET_STD, Config, InferenceConfig
from .data.io import IMAGE_SUFFIXES, DataError, overlay, read_image, write_image, write_mask
from .models import UNet
from .models.blocks import reflect_indices
from .runtime import select_device, select_precision

__all__ = [
    "predict",
    "predict_files",
    "blend_weight_sum",
    "normalize_image",
    "list_images",
    "DEFAULT_TILE",
    "DEFAULT_VALID_TILE",
]

_DEFAULTS = InferenceConfig()  # every default a user can change lives in config.py
DEFAULT_TILE = _DEFAULTS.tile  # tile side for same-size models, pixels
DEFAULT_VALID_TILE = _DEFAULTS.valid_tile  # output tile side for valid-padding UNets
BLENDS = ("gaussian", "constant")
PROBABILITY_FORMATS = ("tiff", "npy")



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


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _plan_same(size: int, tile: int, overlap: float, multiple: int) -> _Axis:
    """Sliding-window plan for a same-size model: tiles of side ``tile`` (a multiple of
    ``multiple``; smaller when the image is smaller) spread evenly from the first to the
    last pixel with at least ``overlap * side`` pixels of overlap."""
    side = min(_round_up(tile, multiple), _round_up(size, multiple))
    if size <= side:
        return _Axis(size, (0,), side, side, 0)
    step = max(1, int(side * (1.0 - overlap)))
    count = math.ceil((size - side) / step) + 1
    # Evenly spread positions make the overlaps equal instead of leaving a thin last tile.
    starts = np.round(np.linspace(0, size - side, count)).astype(int)
    return _Axis(size, tuple(int(s) for s in starts), side, side, 0)


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


def _axis_weight(side: int, blend: str, sigma_scale: float) -> np.ndarray:
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
    weight = _axis_weight(axis.out_side, blend, sigma_scale)
    total = np.zeros(max(axis.size, axis.starts[-1] + axis.out_side))
    for start in axis.starts:
        total[start : start + axis.out_side] += weight
    return [weight / total[start : start + axis.out_side] for start in axis.starts]


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
    that :func:`predict` uses for a same-size model; 1 everywhere when blending is correct.

    Built with the same tile plan and weights as ``predict`` (``multiple``: the size the
    model's input must be a multiple of, e.g. ``2**depth``), for testing and inspection.
    """
    _check_blend(blend, overlap, sigma_scale)
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


# --------------------------------------------------------------------------- helpers


def _check_blend(blend: str, overlap: float, sigma_scale: float) -> None:
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), a fraction of the tile side, got {overlap}")
    if sigma_scale <= 0:
        raise ValueError(f"sigma_scale must be > 0, got {sigma_scale}")


def _size_multiple(net: nn.Module) -> int:
    """Input sides the model handles without internal padding (tiles are rounded to it)."""
    return getattr(net, "size_multiple", 1)


def _is_valid_unet(net: nn.Module) -> bool:
    return isinstance(net, UNet) and net.padding == "valid"


def _model_device_dtype(model: nn.Module) -> tuple[torch.device | None, torch.dtype]:
    for tensor in model.parameters():
        return tensor.device, tensor.dtype
    for tensor in model.buffers():
        return tensor.device, tensor.dtype
    return None, torch.float32


def _autocast_dtype(autocast: bool | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for none. None (auto): what training picks for the
    device (:func:`unetkit.runtime.select_precision`): bf16 on CUDA with bf16 and on CPUs
    with native bf16, else fp32 (emulated bf16 on other CPUs is far slower)."""
    if autocast is None:
        dtype = select_precision(device, "auto")
        return None if dtype == torch.float32 else dtype
    return torch.bfloat16 if autocast else None


def _dihedral(square: bool) -> list[tuple[int, bool]]:
    """(quarter turns, flip) pairs: the 8 flips/rotations of a square, or the 4 that keep
    a non-square tile's shape (identity, horizontal flip, rotation by 180, and both)."""
    turns = (0, 1, 2, 3) if square else (0, 2)
    return [(k, flip) for flip in (False, True) for k in turns]


def _to_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) logits -> (B, K, h, w) probabilities, K = max(C, 2); float32 (or the
    model's float64)."""
    if logits.dtype != torch.float64:
        logits = logits.float()  # softmax of bf16/fp16 autocast logits in full precision
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1.0 - p, p], dim=1)
    return torch.softmax(logits, dim=1)


def _forward_probabilities(
    model: nn.Module,
    batch: torch.Tensor,
    tta: bool,
    amp_dtype: torch.dtype | None,
    same_size: bool,
) -> torch.Tensor:
    """Probabilities (B, K, h', w') for a batch of tiles, averaged over the dihedral
    transforms when ``tta`` (each transform applied to the batch and undone on the output)."""
    transforms = _dihedral(batch.shape[-2] == batch.shape[-1]) if tta else [(0, False)]
    device_type = batch.device.type
    amp = torch.autocast(device_type, dtype=amp_dtype) if amp_dtype else nullcontext()
    total = None
    for turns, flip in transforms:
        x = batch.flip(-1) if flip else batch
        x = torch.rot90(x, turns, dims=(-2, -1)) if turns else x
        with torch.inference_mode(), amp:
            logits = model(x)
        if same_size and logits.shape[-2:] != x.shape[-2:]:
            raise ValueError(
                f"model output size {tuple(logits.shape[-2:])} differs from its input size "
                f"{tuple(x.shape[-2:])}; tiled prediction supports same-size models and "
                "valid-padding unetkit UNets"
            )
        probs = _to_probabilities(logits)
        probs = torch.rot90(probs, -turns, dims=(-2, -1)) if turns else probs
        probs = probs.flip(-1) if flip else probs
        total = probs if total is None else total + probs
    return total / len(transforms)


def _gather(image, rows: _Axis, cols: _Axis, y0: int, x0: int):
    """The input tile for output tile (y0, x0): (C, rows.in_side, cols.in_side), cut from
    a numpy array or tensor, mirrored at the image border where needed."""
    top, left = y0 - rows.context, x0 - cols.context
    h, w = rows.in_side, cols.in_side
    inside = top >= 0 and left >= 0 and top + h <= rows.size and left + w <= cols.size
    if inside:  # the common case: a plain slice, no copy of the rest of the image
        return image[:, top : top + h, left : left + w]
    ridx = reflect_indices(top, h, rows.size)
    cidx = reflect_indices(left, w, cols.size)
    if isinstance(image, torch.Tensor):
        ridx = torch.from_numpy(ridx).to(image.device)
        cidx = torch.from_numpy(cidx).to(image.device)
        return image.index_select(1, ridx).index_select(2, cidx)
    # One broadcast index: reads only the tile's pixels (of a memmap, too), not whole rows.
    return image[:, ridx[:, None], cidx[None, :]]


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# --------------------------------------------------------------------------- predict


def predict(
    model: nn.Module,
    image: torch.Tensor | np.ndarray,
    tile: int | None = None,
    overlap: float | None = None,
    batch_size: int = _DEFAULTS.batch_size,
    tta: bool = False,
    autocast: bool | None = None,
    blend: str = "gaussian",
    sigma_scale: float = _DEFAULTS.sigma_scale,
    out: torch.Tensor | np.ndarray | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    channels_last: bool | None = None,
) -> torch.Tensor | np.ndarray:
    """Class probabilities for an image of any size, predicted tile by tile.

    Args:
        model: a unetkit UNet (valid or same padding), ResNetUNet, or any module mapping
            (B, C, h, w) to logits (B, C_out, h, w). Run in eval mode under
            ``torch.inference_mode``; its train/eval mode is restored afterwards.
        image: (C, H, W) (or (H, W) for one channel) float array or tensor, already
            normalised like the training images. A ``numpy.memmap`` is read tile by tile.
        tile: output tile side in pixels. Same-size models: default 512, rounded up to a
            multiple of what the model needs (``2**depth`` for UNet, 32 for ResNetUNet).
            Valid-padding UNet: default 388; the smallest valid tile whose output is at
            least ``tile`` is used, its input adds ``model.margin()`` on every side.
            Never larger than needed for the image.
        overlap: fraction of the tile side shared by neighbouring tiles (same-size models
            only; ignored for valid padding, whose tiles abut). Default 0.25 (0.5 puts
            every pixel nearer some tile's centre, at 2.2x the computation).
        batch_size: tiles per forward pass; with the tile side it sets the memory used.
        tta: average over the 8 flips/90-degree rotations of each tile (only the 4 flips
            and the 180-degree rotation for a non-square tile), each undone on the output.
        autocast: True for bf16 autocast, False for fp32; None: bf16 where the hardware
            computes it natively (CUDA, CPUs with AVX-512 BF16 / AMX), else fp32.
        blend: "gaussian" (weights ``exp(-d^2 / (2 sigma^2))``, ``sigma = sigma_scale *
            tile``) or "constant" (plain average over overlapping tiles).
        out: optional preallocated float array/tensor (K, H, W) to write into, e.g. a
            ``numpy.memmap`` for an output larger than memory; it is returned.
        device: where the network runs; default the model's device. The model is moved
            there if needed.
        progress: show a tqdm bar over tile batches.
        channels_last: run in channels_last memory layout (None: yes on CPU and CUDA,
            where oneDNN / cuDNN have their fastest kernels for it). The model's
            parameters are converted for the run and back afterwards.

    Returns:
        (K, H, W) float32 probabilities, K = max(out_channels, 2): softmax over K classes,
        or for one output channel (binary, sigmoid p) the stack [1 - p, p], so that
        ``argmax(0)`` gives class indices in both cases. A numpy array for a numpy input,
        a tensor on the image's device for a tensor input (or ``out`` when given).
    """
    net = unwrap(model)
    is_numpy = not isinstance(image, torch.Tensor)
    if is_numpy:
        image = np.asarray(image) if not isinstance(image, np.ndarray) else image
    if image.ndim == 2:
        image = image[None]
    if image.ndim != 3:
        raise ValueError(f"predict expects an image (C, H, W) or (H, W), got shape "
                         f"{tuple(image.shape)}")
    channels, height, width = (int(s) for s in image.shape)
    expected = getattr(net, "in_channels", None)
    if isinstance(expected, int) and channels != expected:
        raise ValueError(f"image has {channels} channel(s), the model expects {expected} "
                         f"(image shape {tuple(image.shape)})")
    if height < 1 or width < 1:
        raise ValueError(f"image is empty (shape {tuple(image.shape)})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    valid = _is_valid_unet(net)
    if overlap is None:
        # A quarter (MONAI's default) rather than nnU-Net's half: half overlap computes
        # every pixel 4 times, a quarter 1.8 times, and Gaussian weights already keep
        # tile borders out of the result.
        overlap = _DEFAULTS.overlap
    _check_blend(blend, overlap, sigma_scale)
    if tile is None:
        tile = DEFAULT_VALID_TILE if valid else DEFAULT_TILE
    if tile < 1:
        raise ValueError(f"tile must be >= 1 pixel, got {tile}")
    if valid:
        rows, cols = _plan_valid(height, tile, net), _plan_valid(width, tile, net)
    else:
        multiple = _size_multiple(net)
        rows = _plan_same(height, tile, overlap, multiple)
        cols = _plan_same(width, tile, overlap, multiple)
        row_w = [torch.from_numpy(w) for w in _normalised_axis_weights(rows, blend, sigma_scale)]
        col_w = [torch.from_numpy(w) for w in _normalised_axis_weights(cols, blend, sigma_scale)]

    model_device, model_dtype = _model_device_dtype(model)
    if device is not None:
        run_device = torch.device(device)
        if model_device is not None and model_device != run_device:
            model.to(run_device)
    elif model_device is not None:
        run_device = model_device
    else:
        run_device = image.device if not is_numpy else torch.device("cpu")
    if not model_dtype.is_floating_point:
        model_dtype = torch.float32
    amp_dtype = _autocast_dtype(autocast, run_device)
    if channels_last is None:
        channels_last = run_device.type in ("cpu", "cuda")
    # Where the output lives: beside the image, or wherever the caller's ``out`` tensor is.
    home = torch.device("cpu") if is_numpy else image.device
    if isinstance(out, torch.Tensor):
        home = out.device

    tiles = [(r, c) for r in range(len(rows.starts)) for c in range(len(cols.starts))]
    bar = tqdm(total=len(tiles), desc="tiles", unit="tile", disable=not progress,
               file=sys.stderr, leave=False)
    acc: torch.Tensor | None = None
    result = out
    was_training = model.training
    model.eval()
    if channels_last:
        # Measured 1.2-1.3x faster inference on every model here, CPU fp32 included
        # (benchmarks/results); the parameters keep their values, only their layout.
        model.to(memory_format=torch.channels_last)
    try:
        for batch in _batches(tiles, batch_size):
            pieces = [_gather(image, rows, cols, rows.starts[r], cols.starts[c])
                      for r, c in batch]
            # np.stack copies into a new writable array (a read-only memmap cannot be shared).
            x = torch.from_numpy(np.stack(pieces)) if is_numpy else torch.stack(pieces)
            x = x.to(device=run_device, dtype=model_dtype)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            probs = _forward_probabilities(model, x, tta, amp_dtype, same_size=not valid)
            probs = probs.to(home)
            if acc is None:
                acc, result = _make_output(out, probs.shape[1], height, width, home, is_numpy,
                                           zero=not valid)
            with torch.no_grad():
                for (r, c), p in zip(batch, probs):
                    y0, x0 = rows.starts[r], cols.starts[c]
                    h = min(rows.out_side, height - y0)
                    w = min(cols.out_side, width - x0)
                    p = p[:, :h, :w]
                    if valid:
                        acc[:, y0 : y0 + h, x0 : x0 + w] = p
                    else:
                        weight = torch.outer(row_w[r][:h], col_w[c][:w]).to(p)
                        acc[:, y0 : y0 + h, x0 : x0 + w] += p * weight
            bar.update(len(batch))
    finally:
        bar.close()
        model.train(was_training)
        if channels_last:  # hand the caller's model back in its usual layout
            model.to(memory_format=torch.contiguous_format)
    return result


def _make_output(out, classes: int, height: int, width: int, home: torch.device,
                 is_numpy: bool, zero: bool):
    """(accumulator tensor, object to return). ``out`` (numpy array/memmap or tensor) is
    written in place through a tensor view of it."""
    shape = (classes, height, width)
    if out is None:
        acc = torch.zeros(shape, dtype=torch.float32, device=home)
        return acc, (acc.numpy() if is_numpy else acc)
    if tuple(out.shape) != shape:
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {shape} "
                         "(classes, height, width)")
    if isinstance(out, torch.Tensor):
        acc = out
    else:
        if not (isinstance(out, np.ndarray) and out.dtype.kind == "f"):
            raise ValueError(f"out must be a float numpy array or tensor, got "
                             f"{type(out).__name__} of dtype {getattr(out, 'dtype', '?')}")
        acc = torch.from_numpy(out)  # shares memory, also with a numpy.memmap
    if not acc.is_floating_point():
        raise ValueError(f"out must be a float array, got dtype {acc.dtype}")
    if zero:
        acc.zero_()
    return acc, out


# --------------------------------------------------------------------------- files


def normalize_image(image: np.ndarray, config: Config, path: str | Path = "image") -> np.ndarray:
    """Normalise a [0, 1] float32 (C, H, W) image the way the checkpoint's training images
    were: ``(image - mean) / std`` per channel, unless ``config.data.normalize == "none"``."""
    data = config.data
    if data.normalize == "none":
        return image.astype(np.float32, copy=False)
    mean, std = tuple(data.mean), tuple(data.std)
    if not mean and data.normalize == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    if not mean or not std:
        raise ValueError(
            f"{path}: the checkpoint's config has normalize={data.normalize!r} but no "
            "data.mean/data.std; expected the per-channel statistics saved at training"
        )
    channels = image.shape[0]
    if len(mean) not in (1, channels) or len(std) not in (1, channels):
        raise ValueError(
            f"{path}: image has {channels} channel(s) but the checkpoint's data.mean has "
            f"{len(mean)} and data.std {len(std)} values; expected 1 or {channels}"
        )
    mean_a = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
    std_a = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
    return ((image - mean_a) / std_a).astype(np.float32)


def list_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Files named in ``inputs``, with folders replaced by their image files (suffix in
    ``IMAGE_SUFFIXES``, sorted, not recursive). Missing paths are kept so the caller can
    report them."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir()
                                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            files.append(path)
    return files


def predict_files(
    checkpoint: str | Path,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    tile: int | None = None,
    overlap: float | None = None,
    batch_size: int = _DEFAULTS.batch_size,
    tta: bool = False,
    autocast: bool | None = None,
    save_probabilities: str | None = None,
    save_overlay: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict:
    """Predict every image in ``inputs`` (files and/or folders) with a checkpoint.

    For each image ``<stem>`` writes to ``out_dir``:
      - ``<stem>.png``: the mask, class indices (0/255 for a binary task);
      - ``<stem>_prob.tif`` or ``<stem>_prob.npy`` with ``save_probabilities="tiff"|"npy"``:
        float32 (K, H, W) class probabilities (K >= 2; binary: background, foreground);
      - ``<stem>_overlay.png`` with ``save_overlay``: the image with classes coloured.
    Images are normalised with the checkpoint's ``data.mean``/``data.std`` (unless its
    ``data.normalize`` is "none") and must have ``model.in_channels`` channels.

    A file that cannot be read or predicted does not stop the others: the failures are
    printed at the end and returned. Raises ``DataError`` only when no image was found or
    EVERY image failed (so a script sees a non-zero exit when nothing was produced).

    Returns {"written": [mask paths], "failed": [(path, message)], "out_dir": Path}.
    """
    if save_probabilities not in (None, *PROBABILITY_FORMATS):
        raise ValueError(f"save_probabilities must be None or one of {PROBABILITY_FORMATS}, "
                         f"got {save_probabilities!r}")
    run_device = select_device(device or "auto")
    model, config = load_checkpoint(checkpoint, device=run_device, fold_batchnorm=True)
    files = list_images(inputs)
    if not files:
        raise DataError(f"no image files found in {', '.join(str(i) for i in inputs)} "
                        f"(expected files ending in one of {', '.join(IMAGE_SUFFIXES)})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    in_channels = config.model.in_channels
    num_classes = max(config.model.out_channels, 2)

    written: list[Path] = []
    failed: list[tuple[Path, str]] = []
    used_stems: dict[str, Path] = {}
    for path in tqdm(files, desc="predict", unit="image", disable=not progress,
                     file=sys.stderr):
        try:
            if path.stem in used_stems:
                raise DataError(f"{path}: output name {path.stem}.png is already used by "
                                f"{used_stems[path.stem]}; expected distinct file names")
            raw = read_image(path)
            if raw.shape[0] != in_channels:
                raise DataError(f"{path}: image has {raw.shape[0]} channel(s), expected "
                                f"{in_channels} (the checkpoint's model.in_channels)")
            image = normalize_image(raw, config, path)
            probs = predict(model, image, tile=tile, overlap=overlap, batch_size=batch_size,
                            tta=tta, autocast=autocast, device=run_device)
            labels = probs.argmax(axis=0)
            used_stems[path.stem] = path
            mask_path = out_dir / f"{path.stem}.png"
            write_mask(mask_path, labels, num_classes)
            if save_probabilities == "tiff":
                import tifffile

                tifffile.imwrite(out_dir / f"{path.stem}_prob.tif", probs,
                                 photometric="minisblack")
            elif save_probabilities == "npy":
                np.save(out_dir / f"{path.stem}_prob.npy", probs)
            if save_overlay:
                painted = overlay(raw, labels, alpha=0.5, stretch=False)  # (H, W, 3)
                write_image(out_dir / f"{path.stem}_overlay.png", painted.transpose(2, 0, 1))
            written.append(mask_path)
        except (DataError, ValueError, OSError, RuntimeError) as err:
            message = str(err)
            if str(path) not in message:
                message = f"{path}: {message}"
            failed.append((path, message))

    if failed:
        print(f"{len(failed)} of {len(files)} image(s) failed:", file=sys.stderr)
        for _, message in failed:
            print(f"  {message}", file=sys.stderr)
    if not written:
        raise DataError(f"all {len(files)} image(s) failed; first error: {failed[0][1]}")
    return {"written": written, "failed": failed, "out_dir": out_dir}
