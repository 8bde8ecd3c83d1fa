"""Training targets derived from labels: the three-class target that separates touching
objects (``data.task == "instances"``).

Why three classes (background, interior, boundary) rather than foreground + a distance
map: it needs nothing but the Dice + cross-entropy training the package already has (a
distance map needs a regression head and loss), several DSB-2018 winners used it, and the
boundary class turns the one-pixel gap between touching nuclei, which a foreground mask
cannot express, into pixels the network must predict. Seeded watershed on the interior
then recovers the objects (:func:`unetkit.instances.label_objects`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2


def instance_target(instances: np.ndarray, boundary_width: int = 2) -> np.ndarray:
    """(H, W) int instance labels (0 = background, 1..N) -> (H, W) int64 classes:
    0 background, 1 interior, 2 boundary.

    Boundary: object pixels within ``boundary_width`` px (chessboard distance: a square
    neighbourhood, so diagonal contacts count too) of a pixel outside their object,
    background or another object. Vectorised: a pixel is boundary when the smallest or
    largest label in its neighbourhood differs from its own.
    """
    labels = np.asarray(instances)
    size = 2 * boundary_width + 1
    # Edge padding: an object cut by the image border has no boundary there (it goes on
    # outside the image; the network sees mirrored context at borders).
    padded = np.pad(labels, boundary_width, mode="edge")
    low = ndimage.minimum_filter(padded, size=size)[boundary_width:-boundary_width,
                                                      boundary_width:-boundary_width]
    high = ndimage.maximum_filter(padded, size=size)[boundary_width:-boundary_width,
                                                       boundary_width:-boundary_width]
    target = np.where(labels > 0, INTERIOR, BACKGROUND).astype(np.int64)
    target[(labels > 0) & ((low != labels) | (high != labels))] = BOUNDARY
    return target
