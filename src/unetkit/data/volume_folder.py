"""Volume data sets for training: the built-in 3D demo or a folder of volumes, split,
with the spacing, the patch and the normalisation decided from the training volumes.

The 3D counterpart of :func:`unetkit.data.folder.build_datasets`, which hands volumes
over to :func:`build_volume_datasets`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from unetkit.config import DataConfig
from unetkit.data.io import DataError
from unetkit.data.pairing import split_for
from unetkit.data.volume_dataset import VolumeDataset, VolumeItem, patch_shape

CT_MINIMUM = -500.0  # intensities this low are Hounsfield units: a CT scan (nnU-Net's CT rule)
CT_PERCENTILES = (0.5, 99.5)  # CT: clip to these percentiles of the training foreground
CT_SAMPLE = 100_000  # foreground voxels sampled per volume for the CT statistics


def is_volume_data(cfg: DataConfig) -> bool:
    """True for the 3D demo or a folder of volumes (NIfTI, nnU-Net layout, 3D arrays)."""
    if cfg.root is None:
        return cfg.demo == "volumes"
    from unetkit.data.volumes import is_volume_folder

    return is_volume_folder(Path(cfg.root).expanduser())


def volume_items(cfg: DataConfig) -> list[VolumeItem]:
    """Every volume of the data set, unopened (the demo's are generated on first use)."""
    if cfg.root is None:
        from unetkit.data.synthetic_volumes import DEMO_SPACING, make_demo_volumes

        volumes = make_demo_volumes(cfg.demo_count, seed=0)
        return [VolumeItem(f"demo_{i:03d}", (lambda v=v: v), DEMO_SPACING)
                for i, v in enumerate(volumes)]
    from unetkit.data.volumes import read_volume_header, volume_pairs

    items = []
    for pair in volume_pairs(Path(cfg.root).expanduser()):
        spacing = tuple(read_volume_header(pair.image_paths[0]).spacing)  # no data read

        def load(pair=pair) -> tuple[np.ndarray, np.ndarray]:
            return (pair.load_image().array,
                    pair.load_mask(cfg.num_classes, cfg.ignore_index).array)

        items.append(VolumeItem(pair.name, load, spacing, str(pair.image_paths[0])))
    if not items:
        raise DataError(f"{cfg.root}: no volumes found")
    return items


def preflight_volumes(items: list[VolumeItem]) -> None:
    """Read every volume and mask once (they stay cached for training) and report every
    problem together, as the 2D preflight does: bad mask values, shape mismatches,
    unreadable files."""
    problems = []
    for item in items:
        try:
            item.load()
        except (DataError, ValueError, OSError) as err:
            problems.append(str(err))
    if problems:
        raise DataError(f"{len(problems)} of {len(items)} volume(s) cannot be used:\n  "
                        + "\n  ".join(problems))


def _normalisation(cfg: DataConfig, train: list[VolumeItem]) -> DataConfig:
    """normalize "auto" as nnU-Net decides: "ct" (clip to the training foreground's
    percentiles, then its mean/std) for Hounsfield units, else "per_image" z-scores."""
    mode = cfg.normalize
    if mode == "auto":
        lowest = min(float(item.load()[0].min()) for item in train)
        mode = "ct" if lowest <= CT_MINIMUM else "per_image"
    if mode != "ct" or (cfg.intensity_range and cfg.mean):
        return dataclasses.replace(cfg, normalize=mode)
    rng = np.random.default_rng(0)
    samples = []
    for item in train:
        image, mask = item.load()
        values = image[:, mask > 0].ravel()
        if values.size:
            samples.append(rng.choice(values, min(CT_SAMPLE, values.size), replace=False))
    if not samples:
        raise DataError("normalize ct: the training volumes have no foreground voxels")
    voxels = np.concatenate(samples).astype(np.float64)
    low, high = np.percentile(voxels, CT_PERCENTILES)
    clipped = np.clip(voxels, low, high)
    return dataclasses.replace(cfg, normalize="ct", intensity_range=(float(low), float(high)),
                               mean=(float(clipped.mean()),),
                               std=(float(max(clipped.std(), 1e-8)),))


def build_volume_datasets(cfg: DataConfig, seed: int
                          ) -> tuple[VolumeDataset, VolumeDataset, DataConfig]:
    """(train dataset, validation dataset, cfg with spacing, normalisation and class names
    filled in). The spacing is the training volumes' median (z, y, x)."""
    if cfg.task != "semantic":
        raise DataError(f"task {cfg.task!r} is 2D only; volumes train the semantic task")
    items = volume_items(cfg)
    if cfg.root is not None:
        preflight_volumes(items)
    train, val = split_for(items, cfg, seed)
    spacing = cfg.spacing or tuple(float(s) for s in np.median(
        [item.spacing for item in train], axis=0))
    cfg = _normalisation(dataclasses.replace(cfg, spacing=spacing), train)
    if not cfg.class_names and cfg.root is None:
        cfg = dataclasses.replace(cfg, class_names=("background", "nucleus"))
    typical = np.median([item.load()[1].shape for item in train], axis=0)
    patch = patch_shape(cfg, spacing, tuple(int(s) for s in typical))
    # the patch is also the tile of validation and prediction: stored with the model
    cfg = dataclasses.replace(cfg, patch_depth=patch[0], patch_size=patch[1])
    return (VolumeDataset(train, cfg, True, patch, seed),
            VolumeDataset(val, cfg, False, patch, seed), cfg)
