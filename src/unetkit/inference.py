"""Prediction on images of any size: the network side of tiled prediction (device,
autocast, test-time augmentation, memory layout) and the prediction of image files.

How an image is cut into tiles, how overlapping tiles are blended, and how finished bands
of rows are streamed is :mod:`unetkit.tiling`: overlap-tile for a valid-padding UNet (the
result equals the network applied to the whole mirrored image), a Gaussian-weighted
sliding window for same-size models.

What is blended: class PROBABILITIES (softmax, or sigmoid for one output channel), not
logits. A weighted average of probabilities is again a probability distribution and stays
in [0, 1]; logits have no fixed scale, so one over-confident tile would dominate an
average of logits near the tile seams. TTA averages probabilities for the same reason.

Memory: one code path, :func:`predict_bands`, predicts tile row by tile row and yields
each band of rows as soon as no tile writes to it any more, so it holds float
accumulators for about one tile side of rows, whatever the image height. On top of it,
:func:`predict` writes the bands into a (K, H, W) result (or a caller's ``out=``, e.g. a
``numpy.memmap``), and :func:`predict_files` turns each band into mask rows (and
probability and overlay rows) written to disk as they finish, reading large images by
rows (:mod:`unetkit.data.regions`): its memory does not grow with the image, apart from
PNG/JPEG inputs, which are decoded whole in their own dtype (uint8: 1 byte per pixel).
Longer than our usual 400 lines because of the public functions' argument docs.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint, unwrap
from .config import Config, InferenceConfig, PostprocessConfig
from .data.io import IMAGE_SUFFIXES, DataError
from .data.normalize import MIN_STD, normalize_image
from .data.regions import ImageSource, open_image
from .data.writers import PredictionWriter
from .errors import WriteError, writing
from .log import get_logger
from .object_outputs import (
    objects_from_probabilities,
    write_object_files,
)
from .outputs import labels_of_probabilities, num_classes_of, probabilities
from .postprocess_outputs import PostprocessedWriter
from .runtime import select_device, select_precision
from .tiling import (
    BLENDS,
    DEFAULT_TILE,
    DEFAULT_VALID_TILE,
    blend_weight_sum,
    is_valid_unet,
    plan_tiles,
    stream_bands,
)

log = get_logger(__name__)

__all__ = [
    "predict",
    "predict_bands",
    "predict_files",
    "blend_weight_sum",
    "normalize_image",
    "list_images",
    "DEFAULT_TILE",
    "DEFAULT_VALID_TILE",
    "BLENDS",
]

_DEFAULTS = InferenceConfig()  # every default a user can change lives in config.py
PROBABILITY_FORMATS = ("tiff", "npy")


# --------------------------------------------------------------------------- the network


def _model_device_dtype(model: nn.Module) -> tuple[torch.device | None, torch.dtype]:
    for tensor in model.parameters():
        return tensor.device, tensor.dtype
    for tensor in model.buffers():
        return tensor.device, tensor.dtype
    return None, torch.float32


def _autocast_dtype(autocast: bool | str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for none, decided by
    :func:`unetkit.runtime.select_precision`: ``autocast`` None is "auto", a precision name
    (auto | fp32 | bf16 | fp16) is passed on, True means bf16 and False fp32."""
    name = {None: "auto", True: "bf16", False: "fp32"}.get(autocast, autocast)
    dtype = select_precision(device, name)
    return None if dtype == torch.float32 else dtype


def _dihedral(square: bool) -> list[tuple[int, bool]]:
    """(quarter turns, flip) pairs: the 8 flips/rotations of a square, or the 4 that keep
    a non-square tile's shape (identity, horizontal flip, rotation by 180, and both)."""
    turns = (0, 1, 2, 3) if square else (0, 2)
    return [(k, flip) for flip in (False, True) for k in turns]


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
        probs = probabilities(logits)
        probs = torch.rot90(probs, -turns, dims=(-2, -1)) if turns else probs
        probs = probs.flip(-1) if flip else probs
        total = probs if total is None else total + probs
    return total / len(transforms)


def _check_image(net: nn.Module, image) -> tuple[object, bool]:
    """(image as (C, H, W), is it read on the CPU side: numpy array or rows source)."""
    on_cpu = not isinstance(image, torch.Tensor)
    if on_cpu and not hasattr(image, "read_rows") and not isinstance(image, np.ndarray):
        image = np.asarray(image)
    if len(image.shape) == 2:
        image = image[None]
    if len(image.shape) != 3:
        raise ValueError(f"predict expects an image (C, H, W) or (H, W), got shape "
                         f"{tuple(image.shape)}")
    channels, height, width = (int(s) for s in image.shape)
    expected = getattr(net, "in_channels", None)
    if isinstance(expected, int) and channels != expected:
        raise ValueError(f"image has {channels} channel(s), the model expects {expected} "
                         f"(image shape {tuple(image.shape)})")
    if height < 1 or width < 1:
        raise ValueError(f"image is empty (shape {tuple(image.shape)})")
    return image, on_cpu


def _place_model(model: nn.Module, device, image_device: torch.device):
    """(device the network runs on, the dtype its inputs get); the model is moved to
    ``device`` when one is given."""
    model_device, model_dtype = _model_device_dtype(model)
    if device is not None:
        run_device = torch.device(device)
        if model_device is not None and model_device != run_device:
            model.to(run_device)
    else:
        run_device = model_device if model_device is not None else image_device
    return run_device, model_dtype if model_dtype.is_floating_point else torch.float32


@contextmanager
def _inference_layout(model: nn.Module, channels_last: bool) -> Iterator[None]:
    """Eval mode (and channels_last when asked) for the block; the caller's mode and
    memory layout come back afterwards."""
    was_training = model.training
    model.eval()
    if channels_last:
        # Measured 1.2-1.3x faster inference on every model here, CPU fp32 included
        # (benchmarks/results); the parameters keep their values, only their layout.
        model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        model.train(was_training)
        if channels_last:  # hand the caller's model back in its usual layout
            model.to(memory_format=torch.contiguous_format)


def predict_bands(
    model: nn.Module,
    image,
    tile: int | None = None,
    overlap: float | None = None,
    batch_size: int = _DEFAULTS.batch_size,
    tta: bool = False,
    autocast: bool | str | None = None,
    blend: str = "gaussian",
    sigma_scale: float = _DEFAULTS.sigma_scale,
    device: str | torch.device | None = None,
    progress: bool = False,
    channels_last: bool | None = None,
    dtype: torch.dtype = torch.float32,
    out_device: str | torch.device | None = None,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Class probabilities of an image of any size, as finished bands of rows, top to
    bottom: ``(y0, y1, probs)`` with ``probs`` a (K, y1 - y0, W) tensor of ``dtype`` on
    ``out_device`` (default: the CPU for a numpy image, else the image's device). The
    bands together cover the image once; each stays valid after the next is yielded.

    Only the rows that tiles in flight still write to are held (see
    :mod:`unetkit.tiling`), so memory does not grow with the image height. ``image``
    may also be any object with ``shape`` (C, H, W) and ``read_rows(y0, y1)`` -> normalised
    float (C, y1 - y0, W), read one tile row's input rows at a time. The other arguments
    are :func:`predict`'s. The model is in eval mode (and channels_last) until the
    generator finishes or is closed.
    """
    net = unwrap(model)
    image, on_cpu = _check_image(net, image)
    InferenceConfig(batch_size=batch_size)  # its declared range (SettingError)
    valid = is_valid_unet(net)
    if overlap is None:
        # A quarter (MONAI's default) rather than nnU-Net's half: half overlap computes
        # every pixel 4 times, a quarter 1.8 times, and Gaussian weights already keep
        # tile borders out of the result.
        overlap = _DEFAULTS.overlap
    if tile is None:
        tile = DEFAULT_VALID_TILE if valid else DEFAULT_TILE
    plan = plan_tiles(net, image.shape[1], image.shape[2], tile, overlap, blend, sigma_scale)
    home = torch.device("cpu") if on_cpu else image.device
    run_device, model_dtype = _place_model(model, device, home)
    amp_dtype = _autocast_dtype(autocast, run_device)
    if channels_last is None:
        channels_last = run_device.type in ("cpu", "cuda")

    def forward(tiles: torch.Tensor) -> torch.Tensor:
        x = tiles.to(device=run_device, dtype=model_dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return _forward_probabilities(model, x, tta, amp_dtype, same_size=not valid)

    with _inference_layout(model, channels_last):
        yield from stream_bands(plan, image, forward, batch_size, dtype,
                                torch.device(out_device) if out_device else home, progress)


def predict(
    model: nn.Module,
    image: torch.Tensor | np.ndarray,
    tile: int | None = None,
    overlap: float | None = None,
    batch_size: int = _DEFAULTS.batch_size,
    tta: bool = False,
    autocast: bool | str | None = None,
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
        autocast: a precision name (auto | fp32 | bf16 | fp16), True for bf16, False for
            fp32; None means "auto": $UNETKIT_PRECISION if set, else bf16 where the
            hardware computes it natively (CUDA, CPUs with AVX-512 BF16 / AMX), else fp32
            (:func:`unetkit.runtime.select_precision`).
        blend: "gaussian" (weights ``exp(-d^2 / (2 sigma^2))``, ``sigma = sigma_scale *
            tile``) or "constant" (plain average over overlapping tiles).
        out: optional preallocated float array/tensor (K, H, W) to write into, e.g. a
            ``numpy.memmap`` for an output larger than memory; it is returned.
        device: where the network runs; default the model's device. The model is moved
            there if needed.
        progress: show a tqdm bar over tiles.
        channels_last: run in channels_last memory layout (None: yes on CPU and CUDA,
            where oneDNN / cuDNN have their fastest kernels for it). The model's
            parameters are converted for the run and back afterwards.

    Returns:
        (K, H, W) float32 probabilities, K = max(out_channels, 2): softmax over K classes,
        or for one output channel (binary, sigmoid p) the stack [1 - p, p], so that
        ``argmax(0)`` gives class indices in both cases. A numpy array for a numpy input,
        a tensor on the image's device for a tensor input (or ``out`` when given).

    Built on :func:`predict_bands`: the finished bands of rows are copied into the result.
    """
    is_numpy = not isinstance(image, torch.Tensor)
    home = torch.device("cpu") if is_numpy else image.device
    if isinstance(out, torch.Tensor):
        home = out.device  # the output lives wherever the caller's ``out`` tensor is
    acc = result = None
    for y0, y1, band in predict_bands(
            model, image, tile=tile, overlap=overlap, batch_size=batch_size, tta=tta,
            autocast=autocast, blend=blend, sigma_scale=sigma_scale, device=device,
            progress=progress, channels_last=channels_last, dtype=_float_dtype(out),
            out_device=home):
        if acc is None:
            height, width = (int(s) for s in np.shape(image)[-2:])
            acc, result = _make_output(out, band.shape[0], height, width, home, is_numpy)
        with torch.no_grad():
            acc[:, y0:y1] = band
    return result


def _float_dtype(out) -> torch.dtype:
    """The torch dtype of ``out`` when it is a float array/tensor, else float32."""
    if isinstance(out, torch.Tensor) and out.is_floating_point():
        return out.dtype
    if isinstance(out, np.ndarray) and out.dtype.kind == "f":
        return torch.from_numpy(np.empty(0, dtype=out.dtype)).dtype
    return torch.float32


def _make_output(out, classes: int, height: int, width: int, home: torch.device,
                 is_numpy: bool):
    """(tensor written into, object to return). ``out`` (numpy array/memmap or tensor) is
    written in place through a tensor view of it."""
    shape = (classes, height, width)
    if out is None:
        acc = torch.empty(shape, dtype=torch.float32, device=home)  # every row is written
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
    return acc, out


# --------------------------------------------------------------------------- files


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


class _NormalisedRows:
    """An image file read by rows, normalised like the checkpoint's training images. A
    model trained on per-image z-scores gets the whole image's statistics, gathered in
    one pass of STATISTICS_ROWS rows at a time before the first band (memory stays
    bounded; a band's own statistics would differ from band to band)."""

    def __init__(self, source: ImageSource, config: Config):
        self.source, self.config, self.shape = source, config, source.shape
        if config.data.normalize == "per_image":
            mean, std = image_statistics(source)
            data = dataclasses.replace(config.data, normalize="dataset", mean=mean, std=std)
            self.config = dataclasses.replace(config, data=data)

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        return normalize_image(self.source.read_rows(y0, y1), self.config, self.source.path)


STATISTICS_ROWS = 1024


def image_statistics(source: ImageSource) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) of a whole image file, read STATISTICS_ROWS rows at a time
    (sums in float64), as :func:`unetkit.data.normalize.normalize_image` computes them."""
    channels, height, _ = source.shape
    total = np.zeros(channels)
    squares = np.zeros(channels)
    for y0 in range(0, height, STATISTICS_ROWS):
        rows = source.read_rows(y0, y0 + STATISTICS_ROWS).reshape(channels, -1)
        total += rows.sum(axis=1, dtype=np.float64)
        squares += np.square(rows, dtype=np.float64).sum(axis=1)
    count = height * source.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return tuple(mean.tolist()), tuple(np.maximum(std, MIN_STD).tolist())


def file_bands(source: ImageSource, model: nn.Module, config: Config,
               **predict_args) -> Iterator[tuple[int, int, torch.Tensor]]:
    """The one path from an image file to probabilities, for predict and evaluate: the
    channels checked against the checkpoint, rows read and normalised as the training
    images were, then :func:`predict_bands` (its arguments in ``predict_args``)."""
    in_channels = config.model.in_channels
    if source.shape[0] != in_channels:
        raise DataError(f"{source.path}: image has {source.shape[0]} channel(s), expected "
                        f"{in_channels} (the checkpoint's model.in_channels)")
    yield from predict_bands(model, _NormalisedRows(source, config), **predict_args)


def predict_probabilities(source: ImageSource, model: nn.Module, config: Config,
                          dtype: type = np.float32, **predict_args) -> np.ndarray:
    """(K, H, W) class probabilities of an opened image file (see :func:`file_bands`),
    as ``dtype``: float32 keeps the argmax exact; float16 halves the memory and is enough
    for labelling objects."""
    height, width = source.shape[1:]
    whole = None
    for y0, y1, probs in file_bands(source, model, config, **predict_args):
        if whole is None:
            whole = np.empty((probs.shape[0], height, width), dtype=dtype)
        whole[:, y0:y1] = probs.numpy()
    return whole


def _predict_file(path: Path, model: nn.Module, config: Config, out_dir: Path,
                  probabilities: str | None, with_overlay: bool, predict_args: dict,
                  instances: dict | None = None,
                  postprocess: PostprocessConfig | None = None) -> Path:
    """Predict one image file, writing its outputs as the rows are finished; with
    ``instances`` (objects_from_probabilities' settings) also its objects, labelled after
    stitching; with an active ``postprocess`` the mask (and overlay, and a semantic
    model's objects) show the cleaned labels (:mod:`unetkit.postprocess_outputs`)."""
    with open_image(path) as source:
        num_classes = num_classes_of(config.model.out_channels)
        cleaned = postprocess is not None and postprocess.active
        if cleaned:
            outputs = PostprocessedWriter(out_dir, path.stem, source.shape[1:], num_classes,
                                          probabilities, with_overlay, postprocess, source)
        else:
            outputs = PredictionWriter(out_dir, path.stem, source.shape[1:], num_classes,
                                       probabilities, with_overlay)
        # Objects need the whole image: an instance model's probabilities (float16, 2 bytes
        # per class and pixel), another model's labels (the mask's own argmax; the
        # cleaned-up writer keeps them anyway).
        whole = None
        task = config.data.task == "instances"
        if instances is not None and (task or not cleaned):
            whole = np.empty((num_classes if task else 1, *source.shape[1:]),
                             dtype=np.float16 if task else np.int32)
        try:
            for y0, y1, probs in file_bands(source, model, config, **predict_args):
                raw = source.read_rows(y0, y1) if with_overlay else None
                outputs.write(y0, probs.numpy(), raw)
                if whole is not None:
                    band = probs.numpy()
                    whole[:, y0:y1] = band if len(whole) > 1 else labels_of_probabilities(band)
            outputs.close()
        except BaseException:
            outputs.abort()
            raise
        if instances is not None and whole is None:  # a semantic model's cleaned labels
            whole = outputs.labels[None]
        if whole is not None:
            labels = objects_from_probabilities(whole, config, **instances)
            write_object_files(out_dir, path.stem, labels,
                               source.read_rows(0, source.shape[1]), with_overlay)
    return outputs.mask_path


def predict_files(
    checkpoint: str | Path,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    tile: int | None = None,
    overlap: float | None = None,
    batch_size: int = _DEFAULTS.batch_size,
    tta: bool = False,
    autocast: bool | str | None = None,
    save_probabilities: str | None = None,
    save_overlay: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    instances: bool = False,
    min_object_size: int | None = None,
    seed_threshold: float | None = None,
    min_component_size: int | tuple[int, ...] | None = None,
    keep_largest: bool | tuple[int, ...] | None = None,
) -> dict:
    """Predict every image in ``inputs`` (files and/or folders) with a checkpoint.

    For each image ``<stem>`` writes to ``out_dir``:
      - ``<stem>.png``: the mask, class indices (0/255 for a binary task);
      - ``<stem>_prob.tif`` or ``<stem>_prob.npy`` with ``save_probabilities="tiff"|"npy"``:
        float32 (K, H, W) class probabilities (K >= 2; binary: background, foreground).
        The TIFF has one page per class, tiled 256 x 256 and deflate-compressed, so
        ``tifffile.imread`` gives (K, H, W); it is written through a temporary raw file
        of K x H x W x 4 bytes beside it. The .npy is written in place, row band by band;
      - ``<stem>_overlay.png`` with ``save_overlay``: the image with classes coloured;
      - with ``instances``: ``<stem>_labels.tif`` (objects 1..N, 16/32-bit),
        ``<stem>_objects.csv`` (one row per object) and, with ``save_overlay``,
        ``<stem>_objects.png`` (outlines and count); objects smaller than
        ``min_object_size`` px are dropped, an instance model's watershed seeds are its
        interiors above ``seed_threshold`` (None: the checkpoint's tuned values, else 16
        and 0.7; :mod:`unetkit.object_tuning`).
    Images are normalised with the checkpoint's ``data.mean``/``data.std`` (unless its
    ``data.normalize`` is "none") and must have ``model.in_channels`` channels.

    Clean-up (:mod:`unetkit.postprocess`): the checkpoint's ``postprocess`` settings, with
    ``min_component_size`` (connected components of a foreground class smaller than this,
    px, become background; per class as a tuple) and ``keep_largest`` (True, False or class
    indices: only the largest component of each stays) replacing them where not None. The
    mask, the overlay and a semantic model's objects show the cleaned labels; the
    probabilities stay as predicted. Cleaning holds the whole label image (1 byte per
    pixel, plus 4 per pixel while a class is labelled).

    Memory does not grow with the image: images are read by rows where the file allows
    (``.npy``, TIFF; PNG/JPEG are decoded whole in their own dtype), and the outputs are
    written band by band as the tiles finish their rows (see :func:`predict_bands`).
    Files are written under a temporary name and renamed when complete.

    A file that cannot be read or predicted does not stop the others: the failures are
    printed at the end and returned. A failed write (disk full, no permission) stops
    everything with one :class:`~unetkit.errors.WriteError` naming the file and the free
    space; its partial files are removed. Raises ``DataError`` when no image was found or
    EVERY image failed (so a script sees a non-zero exit when nothing was produced).

    Returns {"written": [mask paths], "failed": [(path, message)], "out_dir": Path}.
    """
    if save_probabilities not in (None, *PROBABILITY_FORMATS):
        raise ValueError(f"save_probabilities must be None or one of {PROBABILITY_FORMATS}, "
                         f"got {save_probabilities!r}")
    run_device = select_device(device or "auto")
    model, config = load_checkpoint(checkpoint, device=run_device, fold_batchnorm=True)
    postprocess = config.postprocess.override(min_component_size, keep_largest)
    files = list_images(inputs)
    if not files:
        raise DataError(f"no image files found in {', '.join(str(i) for i in inputs)} "
                        f"(expected files ending in one of {', '.join(IMAGE_SUFFIXES)})")
    out_dir = Path(out_dir)
    with writing("the output folder", out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
    predict_args = dict(tile=tile, overlap=overlap, batch_size=batch_size, tta=tta,
                        autocast=autocast, device=run_device, progress=progress)

    written: list[Path] = []
    failed: list[tuple[Path, str]] = []
    used_stems: dict[str, Path] = {}
    for path in tqdm(files, desc="predict", unit="image", disable=not progress,
                     file=sys.stderr):
        try:
            if path.stem in used_stems:
                raise DataError(f"{path}: output name {path.stem}.png is already used by "
                                f"{used_stems[path.stem]}; expected distinct file names")
            written.append(_predict_file(path, model, config, out_dir, save_probabilities,
                                         save_overlay, predict_args,
                                         dict(min_size=min_object_size,
                                              seed_threshold=seed_threshold)
                                         if instances else None, postprocess))
            used_stems[path.stem] = path
        except WriteError:
            _report(failed, len(files))  # the disk is likely full: the rest would fail too
            raise
        except (DataError, ValueError, OSError, RuntimeError) as err:
            message = str(err)
            if str(path) not in message:
                message = f"{path}: {message}"
            failed.append((path, message))

    _report(failed, len(files))
    if not written:
        raise DataError(f"all {len(files)} image(s) failed; first error: {failed[0][1]}")
    return {"written": written, "failed": failed, "out_dir": out_dir}


def _report(failed: list[tuple[Path, str]], total: int) -> None:
    if failed:
        log.warning("\n".join([f"{len(failed)} of {total} image(s) failed:",
                               *(f"  {message}" for _, message in failed)]))
