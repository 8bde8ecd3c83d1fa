"""One scorer for every method: held-out pixel Dice per class (pooled over the test
images), and for sets with objects AP@0.5, F1@0.5, AP@0.5:0.95, PQ, merged and split.

A method writes, per test image NAME, ``NAME.png`` (class indices; 0/255 for binary),
``NAME.nii.gz`` for volumes, and where it separates objects ``NAME_labels.tif``. A method
that writes no labels is scored on the connected components of its foreground (4-connected,
components under 16 px dropped, as ``unetkit predict --instances`` does for a semantic
model); where a method writes objects, their pixels are its foreground. Truth pixels of
value 255 in a test mask are left out (VOC's void band)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
import torch
from PIL import Image
from skimage.measure import label as connected_components
from skimage.morphology import remove_small_objects

from unetkit.metrics import confusion_matrix, scores
from unetkit.object_metrics import ap_at, f1_at, object_scores, pool_object_scores

IGNORE = 255
MIN_OBJECT_PX = 16


def _read(path: Path) -> np.ndarray:
    if path.name.endswith(".nii.gz"):
        import nibabel as nib
        return np.asarray(nib.load(path).dataobj)
    return tifffile.imread(path) if path.suffix == ".tif" else np.asarray(Image.open(path))


def _classes(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """A written mask as class indices: binary masks may be 0/255."""
    mask = mask.astype(np.int64)
    return (mask > 0).astype(np.int64) if num_classes == 2 and mask.max() == 255 else mask


def _objects(pred_dir: Path, name: str, mask: np.ndarray) -> np.ndarray:
    labels = pred_dir / f"{name}_labels.tif"
    if labels.exists():
        return tifffile.imread(labels)
    return remove_small_objects(connected_components(mask > 0, connectivity=1),
                                MIN_OBJECT_PX)


def score(set_dir: Path, pred_dir: Path, num_classes: int) -> dict:
    """Scores of the predictions in pred_dir against set_dir/test."""
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    per_image = []
    for truth_path in sorted((set_dir / "test" / "masks").iterdir()):
        name = truth_path.name.removesuffix(".nii.gz").removesuffix(".png")
        truth = _read(truth_path).astype(np.int64)
        found = [p for p in (pred_dir / f"{name}.png", pred_dir / f"{name}.nii.gz") if p.exists()]
        labels = pred_dir / f"{name}_labels.tif"
        if labels.exists():  # a method that separates objects: their pixels are foreground
            pred = (tifffile.imread(labels) > 0).astype(np.int64)
        elif found:
            pred = _classes(_read(found[0]), num_classes)
        else:
            raise FileNotFoundError(f"{pred_dir}: no prediction for {name}")
        if truth.max() == IGNORE and num_classes == 2:
            truth = np.where(truth == IGNORE, IGNORE, truth > 0)
        cm += confusion_matrix(torch.from_numpy(pred.reshape(truth.shape)),
                               torch.from_numpy(truth), num_classes, ignore_index=IGNORE)
        instances = set_dir / "test" / "instances" / f"{name}.tif"
        if instances.exists():
            per_image.append(object_scores(tifffile.imread(instances),
                                           _objects(pred_dir, name, pred)))
    result = {"dice": scores(cm)["dice"][1:], "mean_dice": scores(cm)["mean_dice"]}
    if per_image:
        pooled = pool_object_scores(per_image)
        result.update(ap50=ap_at(pooled), f1_50=f1_at(pooled),
                      ap50_95=float(np.nanmean(pooled["ap"])), pq=pooled["pq"],
                      merged=pooled["merged"], split=pooled["split"], objects=pooled["true"])
    return result
