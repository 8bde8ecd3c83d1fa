"""Connected-component clean-up of predicted label maps, one small function per rule.

Label maps are integer arrays of any number of dimensions ((H, W) images, (D, H, W)
volumes), 0 = background and 1..K-1 the foreground classes; numpy in, numpy out (a new
array; the input is not changed). Components are face-connected: 4-connected in 2D,
6-connected in 3D (``scipy.ndimage.label``'s default, as in :mod:`unetkit.instances`, and
nnU-Net's choice for the same clean-up), so two regions touching only at a corner are
two components. Removed pixels (voxels) become background, not a neighbouring class.

* :func:`remove_small_components`: every component smaller than ``min_size`` goes.
* :func:`keep_largest_component`: only the largest component of a class stays.
* :func:`postprocess_labels`: both, per class, as a :class:`PostprocessConfig` says (the
  ``postprocess`` section of a checkpoint's config.json): small components first, then
  the largest of what is left.

Both prediction paths (``unetkit predict`` on images and on volumes) call
:func:`postprocess_labels` on the whole stitched label map, so a component crossing a tile
border counts once.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage

from .config import PostprocessConfig
from .instances import _remove_small

__all__ = ["PostprocessConfig", "remove_small_components", "keep_largest_component",
           "postprocess_labels"]


def _check(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels: expected integer class indices, got dtype {labels.dtype}")
    return labels


def _classes(labels: np.ndarray, classes: Iterable[int] | None) -> list[int]:
    """The foreground classes to process: ``classes``, or every non-zero class present."""
    if classes is None:
        return [int(c) for c in np.unique(labels) if c != 0]
    return [int(c) for c in classes if c != 0]


def remove_small_components(labels: np.ndarray, min_size: int,
                            classes: Iterable[int] | None = None) -> np.ndarray:
    """``labels`` with every connected component of fewer than ``min_size`` pixels (voxels)
    of each class in ``classes`` (default: every foreground class) set to 0."""
    labels = _check(labels)
    out = labels.copy()
    if min_size <= 1:
        return out
    for c in _classes(labels, classes):
        components, count = ndimage.label(labels == c)
        if count:
            kept = _remove_small(components, min_size)  # small components' ids set to 0
            out[(components > 0) & (kept == 0)] = 0
    return out


def keep_largest_component(labels: np.ndarray,
                           classes: Iterable[int] | None = None) -> np.ndarray:
    """``labels`` with only the largest connected component of each class in ``classes``
    (default: every foreground class) kept, the others set to 0. Of equally large ones the
    first in C order (row by row; slice by slice in 3D) stays."""
    labels = _check(labels)
    out = labels.copy()
    for c in _classes(labels, classes):
        components, count = ndimage.label(labels == c)
        if count > 1:
            sizes = np.bincount(components.ravel())
            sizes[0] = 0
            out[(components > 0) & (components != sizes.argmax())] = 0
    return out


def postprocess_labels(labels: np.ndarray, config: PostprocessConfig | None,
                       num_classes: int) -> np.ndarray:
    """The clean-up ``config`` describes, for a model of ``num_classes`` classes
    (background included): small components removed (one ``min_component_size`` for every
    foreground class, or one per class 1..K-1), then the largest component kept for the
    classes ``keep_largest`` names (True: all). None, or a config that does nothing,
    returns ``labels`` itself."""
    labels = _check(labels)
    if config is None or not config.active:
        return labels
    foreground = range(1, num_classes)
    sizes = config.min_component_size
    if isinstance(sizes, tuple):
        if len(sizes) != len(foreground):
            raise ValueError(f"postprocess.min_component_size: {len(sizes)} value(s) for "
                             f"{len(foreground)} foreground class(es); give one value, or "
                             "one per class 1..K-1")
        per_class = dict(zip(foreground, sizes))
    else:
        per_class = dict.fromkeys(foreground, sizes)
    for size in sorted(set(per_class.values())):
        chosen = [c for c, s in per_class.items() if s == size]
        labels = remove_small_components(labels, size, chosen)
    largest = config.keep_largest
    if largest is True:
        largest = tuple(foreground)
    if largest:
        unknown = [c for c in largest if c not in foreground]
        if unknown:
            raise ValueError(f"postprocess.keep_largest: class(es) {unknown} are not "
                             f"foreground classes of this model (1..{num_classes - 1})")
        labels = keep_largest_component(labels, largest)
    return labels
