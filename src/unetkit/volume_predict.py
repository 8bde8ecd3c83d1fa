"""``unetkit predict`` and ``unetkit evaluate`` for 3D checkpoints: volumes in (NIfTI,
TIFF stacks, .npy), sliding-window prediction (:mod:`unetkit.volume_inference`), label
volumes out with the input's affine and header, so they overlay it in ITK-SNAP or 3D
Slicer; scores per class with the 95% Hausdorff distance in the volume's units (mm for
NIfTI) from its spacing.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_checkpoint
from .config import Config, InferenceConfig, class_names_of
from .data.io import DataError
from .data.normalize import normalize_image
from .data.volume_dataset import patch_shape
from .data.volumes import (
    VOLUME_SUFFIXES,
    Volume,
    read_volume,
    volume_pairs,
    volume_stem,
    write_volume_labels,
    write_volume_probabilities,
)
from .errors import WriteError, remove_quietly, writing
from .log import get_logger
from .metrics import confusion_matrix, hausdorff95, nanmean, scores
from .outputs import labels_of_probabilities, num_classes_of, probabilities
from .postprocess import postprocess_labels
from .runtime import select_device, select_precision
from .volume_inference import as_numpy_volume, sliding_window

log = get_logger(__name__)
_DEFAULTS = InferenceConfig()


def is_volume_checkpoint(config: Config) -> bool:
    return getattr(config.model, "spatial_dims", 2) == 3


def predict_volume(model: torch.nn.Module, config: Config, volume: Volume,
                   overlap: float = _DEFAULTS.overlap, batch_size: int = 2, tta: bool = False,
                   precision: str = "auto", progress: bool = False) -> np.ndarray:
    """Class probabilities (K, D, H, W) float32 of one image volume, tiled by the
    training patch."""
    channels = config.model.in_channels
    if volume.array.shape[0] != channels:
        raise DataError(f"{volume.path}: volume has {volume.array.shape[0]} channel(s); the "
                        f"model was trained on {channels}")
    device = next(model.parameters()).device
    dtype = select_precision(device, precision)
    tile = patch_shape(config.data, config.data.spacing)
    image = as_numpy_volume(normalize_image(volume.array, config, volume.path)).to(device)
    autocast = (torch.autocast(device.type, dtype=dtype) if dtype != torch.float32
                else torch.autocast(device.type, enabled=False))
    with torch.inference_mode(), autocast:
        logits = sliding_window(model, image, tile, overlap, batch_size, tta, progress)
    return probabilities(logits)[0].cpu().numpy()


def list_volumes(inputs: Sequence[str | Path]) -> list[Path]:
    """Volume files among ``inputs`` (files, or folders searched one level deep)."""
    found = []
    for entry in map(Path, inputs):
        files = sorted(entry.iterdir()) if entry.is_dir() else [entry]
        found += [f for f in files if f.is_file() and f.name.lower().endswith(VOLUME_SUFFIXES)]
    if not found:
        raise DataError(f"no volume files ({', '.join(VOLUME_SUFFIXES)}) in "
                        f"{', '.join(map(str, inputs))}")
    return found


def predict_volume_files(checkpoint: str | Path, inputs: Sequence[str | Path],
                         out_dir: str | Path, overlap: float | None = None,
                         batch_size: int = 2, tta: bool = False, precision: str = "auto",
                         save_probabilities: bool = False, device: str | None = None,
                         progress: bool = True,
                         min_component_size: int | tuple[int, ...] | None = None,
                         keep_largest: bool | tuple[int, ...] | None = None) -> dict:
    """Write ``OUT/<stem>.<input suffix>`` label volumes (and ``<stem>_prob`` with
    ``save_probabilities``) for every volume in ``inputs``; a file that cannot be read or
    predicted is reported and skipped. A failed write (disk full, no permission) stops
    everything with one :class:`~unetkit.errors.WriteError` naming the file and the free
    space, as for images: the volume's files are removed, none is left half-written.
    Returns {"written": [...], "failed": [(path, message)], "out_dir"}.

    The labels are cleaned up as the checkpoint's ``postprocess`` settings say, with
    ``min_component_size`` (voxels) and ``keep_largest`` replacing them where not None
    (see :func:`unetkit.inference.predict_files` and :mod:`unetkit.postprocess`)."""
    model, config = load_checkpoint(checkpoint, select_device(device or "auto"))
    postprocess = config.postprocess.override(min_component_size, keep_largest)
    classes = num_classes_of(config.model.out_channels)
    out = Path(out_dir)
    written, failed = [], []
    files = list_volumes(inputs)
    for path in files:
        try:
            volume = read_volume(path)
            probs = predict_volume(model, config, volume, overlap or _DEFAULTS.overlap,
                                   batch_size, tta, precision, progress)
            with writing("output folder", out):
                out.mkdir(parents=True, exist_ok=True)
            labels = postprocess_labels(labels_of_probabilities(probs), postprocess, classes)
            written.append(write_outputs(out, path, volume, labels.astype(np.int64),
                                         probs if save_probabilities else None))
        except WriteError:
            _report(failed)  # the disk is likely full: the rest would fail too
            raise
        except (DataError, ValueError, OSError) as err:
            failed.append((path, f"{path}: {err}"))
    _report(failed)
    return {"written": written, "failed": failed, "out_dir": out}


def write_outputs(out: Path, path: Path, volume: Volume, labels: np.ndarray,
                  probs: np.ndarray | None) -> Path:
    """OUT/<stem>.<suffix> (and <stem>_prob.<suffix>) of input ``path``, together or not at
    all: a failed write removes what was written for this volume. Returns the labels."""
    stem = volume_stem(path)
    suffix = path.name[len(stem):]
    target = out / f"{stem}{suffix}"
    write_volume_labels(target, labels, volume)
    if probs is not None:
        try:
            write_volume_probabilities(out / f"{stem}_prob{suffix}", probs, volume)
        except BaseException:
            remove_quietly(target)  # just written: no labels without their probabilities
            raise
    return target


def _report(failed: list[tuple[Path, str]]) -> None:
    if failed:
        log.warning("\n".join(f"  {message}" for _, message in failed))


def evaluate_volumes(checkpoint: str | Path, data_dir: str | Path, out_csv: str | Path,
                     hausdorff: bool = True, overlap: float | None = None,
                     batch_size: int = 2, tta: bool = False, precision: str = "auto",
                     device: str | None = None, progress: bool = True) -> dict:
    """Dice and IoU per class, per volume and overall (one confusion matrix), and the 95%
    Hausdorff distance per foreground class in the volumes' units (their spacing), for
    DATA/images + DATA/masks or the nnU-Net layout. Writes one CSV row per volume."""
    model, config = load_checkpoint(checkpoint, select_device(device or "auto"))
    names = class_names_of(config.data)
    classes = len(names)
    total = torch.zeros(classes, classes, dtype=torch.int64)
    rows, failed, hd_all = [], [], {n: [] for n in names[1:]}
    for pair in volume_pairs(Path(data_dir)):
        try:
            volume = pair.load_image()
            truth = pair.load_mask(classes, config.data.ignore_index).array
            probs = predict_volume(model, config, volume, overlap or _DEFAULTS.overlap,
                                   batch_size, tta, precision, progress)
        except (DataError, ValueError, OSError) as err:
            failed.append((pair.name, str(err)))
            continue
        # scored as predict writes it: with the checkpoint's clean-up
        labels = torch.from_numpy(postprocess_labels(
            labels_of_probabilities(probs).astype(np.int64), config.postprocess, classes))
        cm = confusion_matrix(labels[None], torch.from_numpy(truth)[None], classes,
                              config.data.ignore_index)
        total += cm
        result = scores(cm)
        row = {"volume": pair.name, **{f"dice_{n}": d for n, d in zip(names, result["dice"])},
               **{f"iou_{n}": v for n, v in zip(names, result["iou"])}}
        if hausdorff:
            for c, name in enumerate(names[1:], start=1):
                hd = hausdorff95(labels.numpy() == c, truth == c, spacing=volume.spacing)
                row[f"hd95_{name}"] = hd
                hd_all[name].append(hd)
        rows.append(row)
    overall = scores(total)
    summary = {"volumes": len(rows), "failed": failed, "class_names": names,
               "dice": overall["dice"], "iou": overall["iou"],
               "mean_dice": overall["mean_dice"], "mean_iou": overall["mean_iou"],
               "hd95": {n: nanmean(v) for n, v in hd_all.items()} if hausdorff else {}}
    if rows:
        with writing("evaluation", Path(out_csv)):
            with open(out_csv, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
    return summary


def format_volume_table(summary: dict) -> str:
    lines = [f"{summary['volumes']} volume(s); mean foreground Dice "
             f"{summary['mean_dice']:.4f}, IoU {summary['mean_iou']:.4f}",
             f"{'class':<20} {'Dice':>7} {'IoU':>7}" + (f" {'HD95':>9}" if summary["hd95"]
                                                         else "")]
    for i, name in enumerate(summary["class_names"]):
        hd = summary["hd95"].get(name)
        lines.append(f"{name:<20} {summary['dice'][i]:>7.4f} {summary['iou'][i]:>7.4f}"
                     + (f" {hd:>9.2f}" if hd is not None else ""))
    return "\n".join(lines)
