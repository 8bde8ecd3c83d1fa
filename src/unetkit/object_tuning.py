"""The labelling's thresholds chosen on the validation images after training, as StarDist
optimises its probability and overlap thresholds: one network's interiors come out
confident, another's faint, so no fixed seed threshold suits every data set (on real
nuclei, benchmarks/realdata/).

Tried: every watershed seed threshold in SEED_THRESHOLDS with every smallest object size
in :func:`size_candidates`; kept: the pair with the best object AP@0.5 pooled over the
validation images (ties: the better AP averaged over IoU 0.5:0.95, then the defaults).
The choice goes into the run's checkpoints (``postprocess.seed_threshold`` and
``postprocess.min_object_size``), which ``predict --instances`` and ``evaluate`` use
unless ``--seed-threshold`` / ``--min-object-size`` are given.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .config import Config
from .instances import label_objects
from .object_metrics import object_scores, pool_object_scores

SEED_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
DEFAULT_SEED = 0.7  # the measured default (InferenceConfig's note) when nothing is tuned
DEFAULT_MIN_SIZE = 16  # px: specks below this are noise
SMALL_QUANTILE = 5  # percentile of the true object areas ...
SIZE_FRACTIONS = (0.25, 0.5)  # ... of which these fractions are tried as the smallest object


def size_candidates(truths: Sequence[np.ndarray]) -> list[int]:
    """Smallest-object sizes to try: the default and fractions of the 5th-percentile true
    object area (small true objects are rare, so smaller predicted ones are noise)."""
    areas = np.concatenate([np.bincount(t.ravel())[1:] for t in truths] or [np.zeros(0)])
    areas = areas[areas > 0]
    sizes = {DEFAULT_MIN_SIZE}
    if areas.size:
        small = float(np.percentile(areas, SMALL_QUANTILE))
        sizes |= {max(1, int(f * small)) for f in SIZE_FRACTIONS}
    return sorted(sizes)


def choose_labelling(probabilities: Sequence[np.ndarray], truths: Sequence[np.ndarray]
                     ) -> tuple[float, int, list[dict]]:
    """(seed threshold, smallest object px, one row per pair tried) for three-class
    probabilities (3, H, W) and their true label images (H, W)."""
    rows, sizes = [], size_candidates(truths)
    for seed in SEED_THRESHOLDS:
        for size in sizes:
            pooled = pool_object_scores([
                object_scores(t, label_objects(p, min_size=size, seed_threshold=seed))
                for p, t in zip(probabilities, truths)])
            rows.append({"seed_threshold": seed, "min_object_size": size,
                         "ap50": float(np.nan_to_num(pooled["ap"][0])),
                         "ap50_95": float(np.nanmean(pooled["ap"]) if pooled["true"] else 0)})
    best = max(rows, key=lambda r: (r["ap50"], r["ap50_95"],
                                    r["seed_threshold"] == DEFAULT_SEED,
                                    r["min_object_size"] == DEFAULT_MIN_SIZE))
    return best["seed_threshold"], best["min_object_size"], rows


def labelling_settings(config: Config, min_size: int | None = None,
                       seed_threshold: float | None = None) -> tuple[int, float]:
    """(smallest object px, seed threshold): the given values, else the checkpoint's
    tuned ones, else the defaults."""
    tuned = config.postprocess
    if min_size is None:
        min_size = tuned.min_object_size if tuned.min_object_size is not None else \
            DEFAULT_MIN_SIZE
    if seed_threshold is None:
        seed_threshold = tuned.seed_threshold if tuned.seed_threshold is not None else \
            DEFAULT_SEED
    return min_size, seed_threshold
