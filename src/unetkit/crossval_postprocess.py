"""Post-processing decided on held-out images. Instance models: the labelling's
thresholds chosen on the validation images after training (:func:`decide_labelling`,
rules in :mod:`unetkit.object_tuning`). Cross-validation, nnU-Net's rule: predict every fold's
held-out images with that fold's model (out-of-fold predictions), then for each
foreground class try each clean-up of :mod:`unetkit.postprocess` and keep it when the
class's Dice over all out-of-fold predictions does not get worse. The choice is stored in
every fold's checkpoint config (``postprocess`` section), so ``predict`` applies it.

The clean-ups tried per class c: keep only the largest component of c, and remove the
components of c smaller than half the 10th-percentile size of the true components of c
(true objects that small are rare, so predicted ones are more likely noise).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import object_tuning
from .checkpoint import load_checkpoint, update_postprocess
from .config import Config, PostprocessConfig, class_names_of, target_classes
from .data.normalize import normalize_image
from .errors import replacing
from .log import get_logger
from .outputs import labels_of_probabilities
from .postprocess import keep_largest_component, remove_small_components

log = get_logger(__name__)
SMALL_QUANTILE = 10  # percentile of the true component sizes ...
SMALL_FRACTION = 0.5  # ... of which a smaller predicted component is removed


def out_of_fold(out: Path, folds: int) -> tuple[list[np.ndarray], list[np.ndarray], Config]:
    """(predicted labels, true labels, fold 0's config) of every image, each predicted by
    the fold that held it out. 2D images and volumes alike."""
    from .data.folder import dataset_items
    from .data.pairing import split_for
    from .data.volume_folder import volume_items

    preds, truths, first, items = [], [], None, None
    for fold in range(folds):
        model, config = load_checkpoint(out / f"fold_{fold}" / "checkpoints" / "best")
        first = first or config
        volumes = config.model.spatial_dims == 3
        if items is None:  # the same data for every fold: read (or generated) once
            items = volume_items(config.data) if volumes else dataset_items(
                config.data, config.train.seed)
        _, held_out = split_for(items, config.data, config.train.seed)
        for item in held_out:
            truth, probs = _predict_item(model, config, item, volumes)
            preds.append(labels_of_probabilities(probs))
            truths.append(truth)
    return preds, truths, first


def _predict_item(model, config: Config, item, volumes: bool):
    if volumes:
        from .data.volumes import Volume
        from .volume_predict import predict_volume

        image, truth = item.load()
        volume = Volume(image, item.spacing, np.eye(4), path=item.path or item.name)
        return truth, predict_volume(model, config, volume)
    from .inference import predict

    image = normalize_image(item.load_image(), config, item.label)
    return item.load_mask(config.data), np.asarray(predict(model, image))


def decide_labelling(best: Path, checkpoints: Sequence[Path], val_dataset) -> dict:
    """Choose the thresholds for the ``best`` checkpoint on the validation dataset's
    images (whole images, as predict sees them; truth: their instance labels, else the
    masks' connected components) and store them in ``checkpoints``. Returns the choice."""
    from .inference import predict

    model, config = load_checkpoint(best, fold_batchnorm=True)
    probabilities, truths = [], []
    for item in val_dataset.items:
        image = item.load_image()
        probabilities.append(predict(model, normalize_image(image, config, item.label)))
        truths.append(val_dataset.instances_of(item))
    seed, size, rows = object_tuning.choose_labelling(probabilities, truths)
    update_postprocess(checkpoints, seed_threshold=seed, min_object_size=size)
    return {"seed_threshold": seed, "min_object_size": size, "tried": rows}


def class_dice(preds: list[np.ndarray], truths: list[np.ndarray], c: int) -> float:
    """Dice of class ``c`` pooled over all images (1.0 when c is absent everywhere)."""
    inter = sum(int(((p == c) & (t == c)).sum()) for p, t in zip(preds, truths))
    total = sum(int((p == c).sum()) + int((t == c).sum()) for p, t in zip(preds, truths))
    return 2 * inter / total if total else 1.0


def small_size(truths: list[np.ndarray], c: int) -> int:
    """The removal threshold tried for class ``c`` (see the module docstring)."""
    from scipy import ndimage

    sizes = []
    for t in truths:
        labels, count = ndimage.label(t == c)
        sizes += np.bincount(labels.ravel())[1:].tolist() if count else []
    return int(SMALL_FRACTION * np.percentile(sizes, SMALL_QUANTILE)) if sizes else 0


def decide(preds: list[np.ndarray], truths: list[np.ndarray], num_classes: int
           ) -> tuple[PostprocessConfig, list[dict]]:
    """The clean-up per class that does not lower its out-of-fold Dice, and the table of
    what was tried: [{class, dice, keep_largest, dice_largest, min_size, dice_small}]."""
    rows, largest, sizes = [], [], []
    for c in range(1, num_classes):
        base = class_dice(preds, truths, c)
        kept = [keep_largest_component(p, [c]) for p in preds]
        dice_largest = class_dice(kept, truths, c)
        threshold = small_size(truths, c)
        cleaned = [remove_small_components(p, threshold, [c]) for p in preds]
        dice_small = class_dice(cleaned, truths, c) if threshold > 1 else base
        use_largest, use_small = dice_largest >= base, threshold > 1 and dice_small >= base
        largest += [c] if use_largest else []
        sizes.append(threshold if use_small else 0)
        rows.append({"class": c, "dice": base, "keep_largest": use_largest,
                     "dice_largest": dice_largest, "min_size": threshold,
                     "remove_small": use_small, "dice_small": dice_small})
    config = PostprocessConfig(min_component_size=tuple(sizes) if any(sizes) else 0,
                               keep_largest=tuple(largest) if largest else False)
    return config, rows


def store(out: Path, folds: int, chosen: PostprocessConfig) -> None:
    """Write the chosen clean-up into every fold's best and last checkpoint config (an
    instance model's labelling thresholds there are kept)."""
    update_postprocess([out / f"fold_{fold}" / "checkpoints" / name
                        for fold in range(folds) for name in ("best", "last")],
                       min_component_size=chosen.min_component_size,
                       keep_largest=chosen.keep_largest)


def decide_postprocessing(out: str | Path, folds: int) -> dict:
    """Out-of-fold predictions, the decision, stored in the folds' checkpoints and in
    OUT/postprocess.json. Returns {"postprocess": the section as a dict, "classes": rows}."""
    out = Path(out)
    preds, truths, config = out_of_fold(out, folds)
    chosen, rows = decide(preds, truths, target_classes(config.data))
    store(out, folds, chosen)
    names = class_names_of(config.data)
    for row in rows:
        row["name"] = names[row["class"]]
    result = {"postprocess": dataclasses.asdict(chosen), "classes": rows,
              "images": len(preds)}
    with replacing("post-processing decision", out / "postprocess.json") as tmp:
        Path(tmp).write_text(json.dumps(result, indent=2) + "\n")
    return result


def format_decision(result: dict) -> str:
    lines = [f"post-processing from {result['images']} out-of-fold predictions "
             "(kept where the class's Dice does not drop):",
             f"  {'class':<22} {'Dice':>7} {'largest only':>13} {'no small':>17}"]
    for r in result["classes"]:
        small = f"{r['dice_small']:.4f} (<{r['min_size']})" if r["min_size"] > 1 else "-"
        lines.append(f"  {r['name']:<22} {r['dice']:>7.4f} "
                     f"{r['dice_largest']:>8.4f} {'yes' if r['keep_largest'] else 'no ':>4} "
                     f"{small:>13} {'yes' if r['remove_small'] else 'no'}")
    return "\n".join(lines)
