"""Objects (instances) from label images and class probabilities: the three-class training
target, labelling by seeded watershed, the connected-components baseline, and per-object
measurements.

Label images are (H, W) integer arrays, 0 = background and every other value one object.
The three-class representation (background, interior, boundary) makes the thin line
between touching objects a class of its own, so the network has to predict the gap that a
plain foreground mask hides; several Data Science Bowl 2018 winners used it. We chose it
over foreground + a distance map because it trains with the Dice + cross-entropy losses
the package already has (a distance map needs a regression head and loss), and on the
demo it separates touching nuclei (benchmarks/instances.py). Everything here is numpy in,
numpy out.

Neighbourhoods are 8-connected (chessboard distance) for boundaries and 4-connected for
connected components: an interior pixel's whole (2w+1) x (2w+1) square lies inside its own
object, so the interiors of two different objects are never even diagonally adjacent and
4-connected components of the interior can never join two objects.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from .config import INSTANCE_CLASSES
from .errors import writing

__all__ = ["INSTANCE_CLASSES", "instance_target", "label_objects", "semantic_to_objects",
           "measure_objects", "write_objects_csv", "object_columns", "object_boundaries"]

# Columns of measure_objects / write_objects_csv, before one mean_intensity_c<i> per channel.
OBJECT_COLUMNS = (
    "label", "area_px", "centroid_y", "centroid_x", "bbox_min_row", "bbox_min_col",
    "bbox_max_row", "bbox_max_col", "equivalent_diameter_px",
)


def _checked_labels(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    """``labels`` as a 2-D int64 array after checking shape, dtype and sign."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (H, W) label image, got shape {labels.shape}")
    if labels.dtype.kind not in "biu":
        raise ValueError(f"{name}: expected integer labels, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise ValueError(f"{name}: labels must be >= 0 (0 = background), found {labels.min()}")
    return labels


def object_boundaries(labels: np.ndarray, width: int = 1) -> np.ndarray:
    """Object pixels within ``width`` px (chessboard distance, so diagonals count) of a pixel
    with another label, background included: bool (H, W).

    Vectorised: a pixel is on a boundary when the largest or the smallest label in its
    (2 width + 1)^2 square differs from its own. Pixels outside the image are not another
    label (mode "nearest"): an object cut by the image edge has no boundary there, because
    the edge of the field of view is not the edge of the object.
    """
    labels = _checked_labels(labels)
    if width < 0:
        raise ValueError(f"width: expected >= 0 pixels, got {width}")
    if width == 0:
        return np.zeros(labels.shape, dtype=bool)
    size = 2 * width + 1  # square filters are separable: cost does not grow with width^2
    high = ndimage.maximum_filter(labels, size=size, mode="nearest")
    low = ndimage.minimum_filter(labels, size=size, mode="nearest")
    return (labels > 0) & ((high != labels) | (low != labels))


def instance_target(instances: np.ndarray, boundary_width: int = 2) -> np.ndarray:
    """The three-class training target of a label image.

    Args:
        instances: integer (H, W) labels, 0 = background, 1..N (any positive values) objects.
        boundary_width: boundary thickness, pixels (>= 1), measured inwards from the
            object's edge.

    Returns:
        int64 (H, W): 0 background, 1 interior, 2 boundary (:data:`INSTANCE_CLASSES`). An
        object pixel is boundary when a pixel of another label (background or another
        object) lies within ``boundary_width`` px in chessboard distance, i.e. in the
        (2 w + 1)^2 square around it; touching objects therefore both get a boundary on
        their side of the contact. Chessboard rather than Euclidean because it guarantees
        that interiors of different objects are not 8-adjacent (see the module docstring)
        and because a square filter is separable, so the target costs two cheap filters per
        training image. The image edge is not a boundary (:func:`object_boundaries`).
    """
    if boundary_width < 1:
        raise ValueError(f"boundary_width: expected >= 1 pixel, got {boundary_width}")
    labels = _checked_labels(instances, "instances")
    target = (labels > 0).astype(np.int64)
    target[object_boundaries(labels, boundary_width)] = 2
    return target


def _fill_enclosed_holes(labels: np.ndarray) -> np.ndarray:
    """Background regions enclosed by exactly one object take that object's label.

    Vectorised instead of one binary_fill_holes per object: the holes of the whole
    foreground are labelled once, and the object labels found next to each hole
    (4-neighbours, from four shifted views) decide. A hole bordered by two or more objects
    (e.g. a gap inside a ring of touching cells) is left alone: it is not inside one object.
    """
    foreground = labels > 0
    holes, count = ndimage.label(ndimage.binary_fill_holes(foreground) & ~foreground)
    if count == 0:
        return labels
    pairs = []
    for a, b in ((holes[1:], labels[:-1]), (holes[:-1], labels[1:]),
                 (holes[:, 1:], labels[:, :-1]), (holes[:, :-1], labels[:, 1:])):
        touch = (a > 0) & (b > 0)
        pairs.append(np.stack([a[touch], b[touch]], axis=1))
    hole_id, neighbour = np.unique(np.concatenate(pairs), axis=0).T
    # After np.unique on pairs, a hole with a single neighbouring label appears once.
    single = np.bincount(hole_id, minlength=count + 1) == 1
    owner = np.zeros(count + 1, dtype=labels.dtype)
    owner[hole_id[single[hole_id]]] = neighbour[single[hole_id]]
    return np.where(holes > 0, owner[holes], labels)


def _remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Labels of objects with fewer than ``min_size`` pixels set to 0 (background)."""
    if min_size <= 1:
        return labels
    small = np.bincount(labels.ravel()) < min_size
    small[0] = False
    return np.where(small[labels], 0, labels)


def _sequential(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 1..N in order of their old values, int32."""
    # Imported here so `import unetkit.report` (which uses object_boundaries) stays cheap.
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(labels)[0].astype(np.int32)


def label_objects(
    probabilities: np.ndarray,
    min_size: int = 16,
    seed_threshold: float = 0.5,
    foreground_threshold: float = 0.5,
    fill_holes: bool = True,
) -> np.ndarray:
    """Objects from three-class probabilities by seeded watershed.

    Args:
        probabilities: float (3, H, W) softmax output, channels in :data:`INSTANCE_CLASSES`
            order (background, interior, boundary), summing to 1 per pixel.
        min_size: objects with fewer pixels are removed.
        seed_threshold: interior probability above which a pixel is part of a seed.
        foreground_threshold: interior + boundary probability above which a pixel belongs
            to some object.
        fill_holes: give background regions enclosed by one object to that object.

    Returns:
        int32 (H, W) labels, 0 = background, objects 1..N with no gaps.

    Steps, and why:

    1. Seeds: 4-connected components of ``interior > seed_threshold`` (inside the
       foreground). The network is trained to put a boundary band between touching objects,
       so their interiors come out as separate blobs: one seed per object.
    2. Foreground: ``interior + boundary > foreground_threshold``. The seeds are shrunk by
       the boundary band; the foreground says how far each object really extends.
    3. Seeded watershed (scikit-image, 4-connected) of the elevation ``1 - interior``
       restricted to the foreground: each seed grows outwards and two seeds meet where
       an interior is least likely, which is the line between touching objects whether the
       network called it boundary or background there.
    4. Foreground regions that no seed reaches (a faint or small object whose interior
       never passed the seed threshold) become objects of their own instead of being lost.
    5. Objects smaller than ``min_size`` px are removed: specks of noise, not nuclei.
    6. Holes enclosed by one object are filled (after step 5, so a removed speck inside a
       nucleus becomes part of it); nuclei have no holes, so a hole is a prediction error.
    7. Labels are renumbered 1..N, as the object metrics and the CSV expect.
    """
    from skimage.segmentation import watershed

    probabilities = np.asarray(probabilities, dtype=np.float32)
    if probabilities.ndim != 3 or probabilities.shape[0] != len(INSTANCE_CLASSES):
        raise ValueError(
            f"probabilities: expected (3, H, W) for classes {INSTANCE_CLASSES}, "
            f"got shape {probabilities.shape}"
        )
    interior, boundary = probabilities[1], probabilities[2]
    foreground = interior + boundary > foreground_threshold
    seeds, _ = ndimage.label((interior > seed_threshold) & foreground)
    labels = watershed(1.0 - interior, markers=seeds, mask=foreground, connectivity=1)
    labels = labels.astype(np.int64)
    unseeded, _ = ndimage.label(foreground & (labels == 0))
    labels = np.where(unseeded > 0, unseeded + labels.max(), labels)
    labels = _remove_small(labels, min_size)
    if fill_holes:
        labels = _fill_enclosed_holes(labels)
    return _sequential(labels)


def semantic_to_objects(
    mask: np.ndarray, foreground_classes: Sequence[int] | None = None, min_size: int = 16
) -> np.ndarray:
    """The baseline: objects as 4-connected components of a semantic model's foreground.

    Args:
        mask: integer (H, W) class indices, 0 = background.
        foreground_classes: the classes that form objects (e.g. (1, 2) for interior and
            boundary of a three-class map); None means every class other than 0. All of
            them count as one foreground, so touching objects merge into one component,
            whatever their classes: the failure the watershed of :func:`label_objects`
            exists to avoid.
        min_size: components with fewer pixels are removed.

    Returns:
        int32 (H, W) labels, 0 = background, objects 1..N with no gaps.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask: expected a 2-D (H, W) array, got shape {mask.shape}")
    if mask.dtype.kind not in "biu":
        raise ValueError(f"mask: expected integer class indices, got dtype {mask.dtype}")
    if foreground_classes is None:
        foreground = mask != 0
    else:
        foreground = np.isin(mask, np.asarray(list(foreground_classes)))
    labels, _ = ndimage.label(foreground)
    return _sequential(_remove_small(labels.astype(np.int64), min_size))


def _channels_first(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``image`` as float64 (C, H, W); a 2-D image is one channel."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[None]
    if image.ndim != 3 or image.shape[1:] != shape:
        raise ValueError(
            f"image: expected (C, H, W) with H, W = {shape}, got shape {image.shape}"
        )
    return image.astype(np.float64)


def measure_objects(labels: np.ndarray, image: np.ndarray) -> list[dict]:
    """Size, position and brightness of every object.

    Args:
        labels: integer (H, W) label image, 0 = background.
        image: (C, H, W) raw intensities, float in [0, 1] or the file's native values (a
            2-D image is one channel); the means are in the same units.

    Returns:
        one dict per object, sorted by label, with the :data:`OBJECT_COLUMNS` keys and
        ``mean_intensity_c0`` .. ``mean_intensity_c{C-1}``. Positions are in pixels with
        pixel (0, 0)'s centre at (0, 0), as scikit-image's regionprops: ``centroid_y`` /
        ``centroid_x`` the mean row / column, bbox rows and columns from min (inclusive)
        to max (exclusive); ``equivalent_diameter_px`` = sqrt(4 area / pi), the diameter
        of the disk with the object's area. Values are Python ints and floats.
    """
    labels = _checked_labels(labels)
    image = _channels_first(image, labels.shape)
    values, compact = np.unique(labels, return_inverse=True)
    compact = compact.reshape(labels.shape)
    if values[0] != 0:  # no background pixel: shift so compact id k is the k-th object
        compact = compact + 1
        values = np.concatenate([[0], values])
    count = len(values)

    # One bincount per quantity instead of a loop over objects; index 0 is background.
    def total(weights: np.ndarray | None = None) -> np.ndarray:
        w = None if weights is None else weights.ravel()
        return np.bincount(compact.ravel(), weights=w, minlength=count)[1:]

    rows, cols = np.indices(labels.shape)
    area = total()
    ids = np.arange(1, count)
    columns = {
        "label": values[1:],
        "area_px": area,
        "centroid_y": total(rows) / area,
        "centroid_x": total(cols) / area,
        "bbox_min_row": ndimage.minimum(rows, compact, ids),
        "bbox_min_col": ndimage.minimum(cols, compact, ids),
        "bbox_max_row": ndimage.maximum(rows, compact, ids) + 1,
        "bbox_max_col": ndimage.maximum(cols, compact, ids) + 1,
        "equivalent_diameter_px": np.sqrt(4.0 * area / math.pi),
    }
    for channel, plane in enumerate(image):
        columns[f"mean_intensity_c{channel}"] = total(plane) / area
    integer = {"label", "area_px", "bbox_min_row", "bbox_min_col", "bbox_max_row",
               "bbox_max_col"}
    return [
        {name: (int(col[i]) if name in integer else float(col[i]))
         for name, col in columns.items()}
        for i in range(count - 1)
    ]


def object_columns(channels: int) -> list[str]:
    """CSV column names for an image with ``channels`` channels."""
    return list(OBJECT_COLUMNS) + [f"mean_intensity_c{c}" for c in range(channels)]


def write_objects_csv(path: str | Path, rows: list[dict], channels: int) -> None:
    """Write :func:`measure_objects` rows as CSV, one line per object.

    ``channels`` (the image's C) fixes the header, so an image without objects still gets
    the same header as every other image and the tables can be concatenated. A failed
    write is one :class:`unetkit.errors.WriteError` line and leaves no partial file.
    """
    fields = object_columns(channels)
    for row in rows[:1]:
        if list(row) != fields:
            raise ValueError(
                f"rows have columns {list(row)}, expected {fields} for {channels} channel(s)"
            )
    path = Path(path)
    with writing("object table", path, cleanup=path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
