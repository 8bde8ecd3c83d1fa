"""Score a checkpoint on a folder of images with ground-truth masks.

Per image and overall: Dice, IoU, precision and recall for every class, from confusion
matrices (:mod:`unetkit.metrics`). The overall scores come from the SUM of the per-image
confusion matrices (every pixel counts the same), not from averaging per-image scores,
so a small image with one stray pixel does not weigh as much as a large one. The optional
95% Hausdorff distance (pixels) is computed per image and foreground class; its overall
value is the mean over the images where it is defined (both masks non-empty).
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint
from .config import class_names_of, target_classes
from .data.folder import pair_folder
from .data.io import IMAGE_SUFFIXES, DataError, read_instances, read_mask
from .data.regions import open_image
from .errors import replacing, writing
from .inference import predict_probabilities
from .log import get_logger
from .metrics import confusion_matrix, hausdorff95, nanmean, scores
from .object_metrics import ap_at, f1_at, object_scores, pool_object_scores
from .object_outputs import objects_from_probabilities
from .outputs import labels_of_probabilities, num_classes_of
from .postprocess import postprocess_labels
from .runtime import select_device

log = get_logger(__name__)

__all__ = ["evaluate_folder", "format_table", "find_pairs", "scan_pairs", "METRICS"]

METRICS = ("dice", "iou", "precision", "recall")


def find_pairs(data_dir: str | Path) -> list[tuple[Path, Path]]:
    """(image, mask) pairs from DATA_DIR/images and DATA_DIR/masks (or DATA_DIR/val/...
    for the training layout with a fixed split), matched by file stem (the suffixes may
    differ, e.g. a .jpg image with a .png mask). Images without a mask, or whose name
    several files share, are left out: :func:`scan_pairs` lists them."""
    return [(image, mask) for image, mask, _ in scan_pairs(data_dir)[0]]


def scan_pairs(data_dir: str | Path
               ) -> tuple[list[tuple[Path, Path, Path | None]], list[tuple[Path, str]]]:
    """([(image, mask, instance labels or None)] to score, [(image, why it cannot be
    scored)]). Masks without an image are ignored. Raises DataError only when the folders
    are missing or hold no image."""
    data_dir = _scored_folder(data_dir)
    image_dir, mask_dir = data_dir / "images", data_dir / "masks"
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise DataError(f"{folder}: folder not found; expected {data_dir} to hold "
                            "images/ and masks/ with files of the same names")
    # The dataset's own pairing: DATA/instances, when present, gives the object metrics.
    items = [item for item in pair_folder(data_dir) if item.image_path is not None]
    if not items:
        raise DataError(f"{image_dir}: no image files (expected suffixes "
                        f"{', '.join(IMAGE_SUFFIXES)})")
    pairs, skipped = [], []
    for item in items:
        if item.problem:
            skipped.append((item.image_path, f"{item.problem}; expected one file per name"))
        elif item.mask_path is None:
            skipped.append((item.image_path, f"no mask (expected {mask_dir}/"
                                             f"{item.image_path.stem} with an image suffix)"))
        else:
            pairs.append((item.image_path, item.mask_path, item.instance_path))
    return pairs, skipped


def _scored_folder(data_dir: str | Path) -> Path:
    """DATA_DIR, or DATA_DIR/val for the training layout ROOT/{train,val}."""
    data_dir = Path(data_dir)
    if not (data_dir / "images").is_dir() and (data_dir / "val" / "images").is_dir():
        return data_dir / "val"
    return data_dir


def _row(name: str, result: dict, class_names: list[str], hd_names: list[str] | None) -> dict:
    """One CSV row: per-class scores, their foreground means and pixel accuracy."""
    row: dict = {"image": name}
    for metric in METRICS:
        for cls, value in zip(class_names, result[metric]):
            row[f"{metric}_{cls}"] = value
    for metric in METRICS:
        row[f"mean_{metric}"] = result[f"mean_{metric}"]
    row["pixel_accuracy"] = result["pixel_accuracy"]
    if hd_names is not None:
        for cls, value in zip(hd_names, result["hd95"]):
            row[f"hd95_{cls}"] = value
        row["mean_hd95"] = result["mean_hd95"]
    if "objects" in result:
        objects = result["objects"]
        row.update({"object_f1_0.5": f1_at(objects), "object_ap_0.5": ap_at(objects),
                    "object_ap_mean": nanmean(objects["ap"]), "object_pq": objects["pq"],
                    "true_objects": objects["true"], "predicted_objects": objects["predicted"],
                    "merged_objects": objects["merged"], "split_objects": objects["split"]})
    return row


def evaluate_folder(
    checkpoint: str | Path,
    data_dir: str | Path,
    out_csv: str | Path | None = None,
    hausdorff: bool = False,
    tile: int | None = None,
    overlap: float | None = None,
    batch_size: int = 4,
    tta: bool = False,
    autocast: bool | str | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    instance_labels: str | Path | None = None,
    min_object_size: int | None = None,
    seed_threshold: float | None = None,
) -> dict:
    """Predict every image of DATA_DIR/images and score it against DATA_DIR/masks.

    Masks are read with the checkpoint's settings (``data.num_classes``,
    ``data.mask_encoding``, ``data.palette``; pixels equal to ``data.ignore_index`` are not
    counted). An instance model's (``data.task == "instances"``) pixels are scored as
    foreground (interior or boundary) against background. ``hausdorff`` adds the 95%
    Hausdorff distance (pixels) of each foreground class. Where instance labels exist
    (DATA_DIR/instances, or the folder ``instance_labels``, by stem), the predicted
    objects (:mod:`unetkit.object_outputs`) are scored too (:mod:`unetkit.object_metrics`).
    Images scored for their pixels but without instance labels, when there are instance
    labels to look for, are listed as not scored for objects, with the reason.
    Writes ``out_csv`` when given: one row per image, then a row "overall".

    Returns {"class_names": [K names], "overall": scores, "per_image": [rows],
    "confusion_matrix": (K, K) list (rows = truth), "images": count, "failed": [(path,
    message)], "csv": path | None, "objects": pooled object scores or None,
    "objects_scored": images scored for objects, "objects_missing": [(path, why not)]
    (both None when there are no instance labels to look for)}; ``overall``
    and each row hold per-class lists under "dice", "iou", "precision", "recall" (and
    "hd95" over the foreground classes), plus their "mean_*" and "pixel_accuracy" (see
    :func:`unetkit.metrics.scores`; NaN = undefined), and "objects" where scored.
    """
    run_device = select_device(device or "auto")
    model, config = load_checkpoint(checkpoint, device=run_device, fold_batchnorm=True)
    pairs, failed = scan_pairs(data_dir)  # failed: listed and skipped, not fatal
    total_images = len(pairs) + len(failed)
    pairs = _with_instance_labels(pairs, instance_labels)
    num_classes = _pixel_classes(config, checkpoint)
    class_names = (["background", "foreground"] if config.data.task == "instances"
                   else class_names_of(config.data))
    hd_names = class_names[1:] if hausdorff else None
    predict_args = dict(tile=tile, overlap=overlap, batch_size=batch_size, tta=tta,
                        autocast=autocast, device=run_device)
    objects = dict(min_size=min_object_size, seed_threshold=seed_threshold)
    total, per_image = _score_pairs(model, config, pairs, num_classes, hausdorff,
                                    (objects, predict_args), progress, failed)
    csv_rows = [_row(result["image"], result, class_names, hd_names) for result in per_image]
    _report_failed(failed, total_images)
    if not per_image:
        raise DataError(f"{data_dir}: no image could be evaluated (see the list above)")
    missing = _without_objects(pairs, per_image, _instance_folder(data_dir, instance_labels))

    overall = _overall(total, per_image, hausdorff, num_classes)
    csv_rows.append(_row("overall", overall, class_names, hd_names))
    if out_csv is not None:
        out_csv = Path(out_csv)
        _write_csv(out_csv, csv_rows)
    return {
        "class_names": class_names,
        "overall": overall,
        "per_image": per_image,
        "confusion_matrix": total.tolist(),
        "images": len(per_image),
        "failed": failed,
        "csv": out_csv,
        "objects": overall.get("objects"),
        "objects_scored": None if missing is None else len(per_image) - len(missing),
        "objects_missing": missing,
    }


def _score_pairs(model, config, pairs: list, num_classes: int, hausdorff: bool,
                 settings: tuple[dict, dict], progress: bool, failed: list
                 ) -> tuple[torch.Tensor, list[dict]]:
    """(summed confusion matrix, per-image results) of ``pairs``; a pair that cannot be
    scored is added to ``failed`` and does not stop the others."""
    total = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    per_image: list[dict] = []
    for image_path, mask_path, truth_path in tqdm(pairs, desc="evaluate", unit="image",
                                                  disable=not progress, file=sys.stderr):
        try:
            result, cm = _score_one(model, config, image_path, mask_path, truth_path,
                                    num_classes, hausdorff, *settings)
        except (DataError, ValueError, OSError) as err:
            failed.append((image_path, str(err)))  # all listed at the end
            continue
        total += cm
        per_image.append(result)
    return total, per_image


def _pixel_classes(config, checkpoint) -> int:
    """Classes the pixel scores count: the mask's (an instance model's three classes are
    scored as its foreground). Raises DataError when the checkpoint contradicts itself."""
    data = config.data
    predicted = num_classes_of(config.model.out_channels)
    if target_classes(data) != predicted:
        raise DataError(f"checkpoint {checkpoint}: data.num_classes={data.num_classes} "
                        f"(task {data.task}) but the model predicts {predicted} classes "
                        f"(model.out_channels={config.model.out_channels})")
    return 2 if data.task == "instances" else data.num_classes


def _with_instance_labels(pairs: list, folder: str | Path | None) -> list:
    """``pairs`` with their instance labels taken from ``folder`` (by stem) when given."""
    if folder is None:
        return pairs
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--instance-labels {folder}: folder not found")
    by_stem = {p.stem: p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    return [(image, mask, by_stem.get(image.stem)) for image, mask, _ in pairs]


def _instance_folder(data_dir: str | Path, folder: str | Path | None) -> Path | None:
    """Where instance labels are looked for (--instance-labels, else DATA/instances), or
    None when there is no such folder: then no image is expected to have objects scored."""
    if folder is not None:
        return Path(folder)
    found = _scored_folder(data_dir) / "instances"
    return found if found.is_dir() else None


def _without_objects(pairs: list, per_image: list[dict], folder: Path | None
                     ) -> list[tuple[Path, str]] | None:
    """[(image, why its objects were not scored)] among the images scored for pixels,
    listed as a warning; None when there are no instance labels to look for."""
    if folder is None:
        return None
    scored = {result["image"] for result in per_image}
    missing = [(image, f"no instance labels (expected {folder}/{image.stem} with an image "
                       "suffix)") for image, _, truth in pairs
               if truth is None and image.stem in scored]
    if missing:
        log.warning(f"{len(missing)} of {len(per_image)} image(s) could not be scored for "
                    "objects:")
        for path, message in missing:
            log.warning(f"  {path}: {message}")
    return missing


def _report_failed(failed: list[tuple[Path, str]], total: int) -> None:
    if failed:
        log.warning(f"{len(failed)} of {total} image(s) could not be evaluated:")
        for path, message in failed:
            log.warning(f"  {path}: {message}")


def _overall(total: torch.Tensor, per_image: list[dict], hausdorff: bool,
             num_classes: int) -> dict:
    """Scores of the summed confusion matrix, the mean HD95 and the pooled object scores."""
    overall = scores(total)
    if hausdorff:
        overall["hd95"] = [nanmean([r["hd95"][i] for r in per_image])
                           for i in range(num_classes - 1)]
        overall["mean_hd95"] = nanmean(overall["hd95"])
    objects = [r["objects"] for r in per_image if "objects" in r]
    if objects:
        overall["objects"] = pool_object_scores(objects)
    return overall


def _write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(rows[-1])  # the overall row has every column (objects if any image has)
    with writing("evaluation table", path):
        path.parent.mkdir(parents=True, exist_ok=True)
    with replacing("evaluation table", path) as tmp:
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields, restval="")
            writer.writeheader()
            writer.writerows(rows)


def _score_one(model, config, image_path: Path, mask_path: Path, truth_path: Path | None,
               num_classes: int, hausdorff: bool, object_settings: dict,
               predict_args: dict) -> tuple[dict, torch.Tensor]:
    """Scores and confusion matrix of one image against its mask (and its objects against
    the instance labels at ``truth_path``)."""
    data = config.data
    mask = read_mask(mask_path, data.num_classes, data.mask_encoding,
                     dict(data.palette) or None, data.ignore_index)
    if data.task == "instances":  # an instance model is scored on its foreground
        mask = np.where(mask == data.ignore_index, mask, mask > 0).astype(np.int64)
    truth = read_instances(truth_path) if truth_path is not None else None
    with open_image(image_path) as source:
        height, width = source.shape[1:]
        for name, array in (("mask", mask), ("instance labels", truth)):
            if array is not None and array.shape != (height, width):
                raise DataError(f"{mask_path if name == 'mask' else truth_path}: {name} "
                                f"is {array.shape[0]}x{array.shape[1]} but image "
                                f"{image_path.name} is {height}x{width}; expected the same "
                                "height and width")
        probs = predict_probabilities(source, model, config, **predict_args)
    labels = labels_of_probabilities(probs)
    if data.task == "instances":
        labels = (labels > 0).astype(np.int64)  # interior or boundary: foreground
    else:  # scored as predict writes it: with the checkpoint's clean-up
        labels = postprocess_labels(labels, config.postprocess, num_classes)
    cm = confusion_matrix(torch.from_numpy(labels), torch.from_numpy(mask), num_classes,
                          data.ignore_index)
    result = scores(cm)
    if hausdorff:
        result["hd95"] = [hausdorff95(labels == c, mask == c) for c in range(1, num_classes)]
        result["mean_hd95"] = nanmean(result["hd95"])
    if truth is not None:
        predicted = objects_from_probabilities(probs, config, **object_settings)
        result["objects"] = object_scores(truth, predicted)
    result["image"] = image_path.stem
    return result, cm


def _fmt(value: float) -> str:
    return "   n/a" if value is None or math.isnan(value) else f"{value:6.4f}"


def format_table(summary: dict) -> str:
    """The overall scores of :func:`evaluate_folder` as a plain-text table: one line per
    class, then the foreground mean and the pixel accuracy."""
    overall = summary["overall"]
    names = summary["class_names"]
    has_hd = "hd95" in overall
    width = max(12, *(len(n) for n in names))
    header = f"{'class':<{width}}" + "".join(f"{m:>11}" for m in METRICS)
    if has_hd:
        header += f"{'hd95 (px)':>11}"
    lines = [f"{summary['images']} image(s)", header, "-" * len(header)]
    for index, name in enumerate(names):
        line = f"{name:<{width}}" + "".join(f"{_fmt(overall[m][index]):>11}" for m in METRICS)
        if has_hd:
            hd = overall["hd95"][index - 1] if index > 0 else None
            line += f"{_fmt(hd) if hd is not None else '':>11}"
        lines.append(line)
    lines.append("-" * len(header))
    mean = f"{'mean (fg)':<{width}}" + "".join(f"{_fmt(overall['mean_' + m]):>11}"
                                               for m in METRICS)
    if has_hd:
        mean += f"{_fmt(overall['mean_hd95']):>11}"
    lines.append(mean)
    lines.append(f"pixel accuracy {_fmt(overall['pixel_accuracy']).strip()}")
    if summary.get("objects_scored") is not None:
        lines.append(f"objects scored on {summary['objects_scored']} of {summary['images']} "
                     "image(s)" + (" (the others are listed above)"
                                   if summary["objects_missing"] else ""))
    objects = overall.get("objects")
    if objects:
        lines.append(f"objects: {objects['true']} true, {objects['predicted']} predicted, "
                     f"{objects['merged']} merged, {objects['split']} split; "
                     f"F1@0.5 {_fmt(f1_at(objects)).strip()}  AP@0.5 "
                     f"{_fmt(ap_at(objects)).strip()}  AP@0.5:0.95 "
                     f"{_fmt(nanmean(objects['ap'])).strip()}  PQ {_fmt(objects['pq']).strip()}")
    return "\n".join(lines)
