"""Objects from a prediction, as files: the label image, the per-object table and the
outlined overlay that ``unetkit predict --instances`` writes for each image.

An instance model (``data.task == "instances"``) gives background / interior / boundary
probabilities, labelled by seeded watershed; any other model's foreground is labelled by
connected components (the baseline, which merges touching objects). Labelling runs after
the whole image is stitched, so an object crossing a tile or band border comes out whole.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from .config import Config
from .errors import writing
from .instances import label_objects, measure_objects, semantic_to_objects, write_objects_csv
from .object_tuning import labelling_settings
from .outputs import labels_of_probabilities
from .report import outline_objects


def objects_from_probabilities(probabilities: np.ndarray, config: Config,
                               min_size: int | None = None,
                               seed_threshold: float | None = None) -> np.ndarray:
    """(K, H, W) class probabilities -> (H, W) int32 objects, 0 = background, 1..N. For a
    model that is not an instance model, (1, H, W) class labels may stand in for them.
    ``min_size`` and ``seed_threshold`` None: the checkpoint's tuned values, else the
    defaults (:func:`unetkit.object_tuning.labelling_settings`)."""
    min_size, seed_threshold = labelling_settings(config, min_size, seed_threshold)
    if config.data.task == "instances":
        return label_objects(np.asarray(probabilities, dtype=np.float32), min_size=min_size,
                             seed_threshold=seed_threshold)
    labels = (probabilities[0] if len(probabilities) == 1
              else labels_of_probabilities(probabilities))
    return semantic_to_objects(labels, min_size=min_size)


def write_object_files(out_dir: Path, stem: str, labels: np.ndarray, image: np.ndarray,
                       overlay: bool) -> list[Path]:
    """Write STEM_labels.tif (uint16, or uint32 above 65535 objects, zlib), STEM_objects.csv
    (one row per object: area, centroid, bounding box, equivalent diameter, mean intensity
    per channel of ``image`` (C, H, W) in [0, 1]) and, with ``overlay``, STEM_objects.png
    (outlines and the count). Returns the paths."""
    dtype = np.uint16 if labels.max(initial=0) < 2**16 else np.uint32
    label_path = out_dir / f"{stem}_labels.tif"
    with writing("object labels", label_path, cleanup=label_path):
        tifffile.imwrite(label_path, labels.astype(dtype), compression="zlib")
    table = out_dir / f"{stem}_objects.csv"
    write_objects_csv(table, measure_objects(labels, image), channels=image.shape[0])
    paths = [label_path, table]
    if overlay:
        picture = out_dir / f"{stem}_objects.png"
        with writing("object overlay", picture, cleanup=picture):
            Image.fromarray(outline_objects(image, labels)).save(picture)
        paths.append(picture)
    return paths
