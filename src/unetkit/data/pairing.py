"""Finding the image/mask pairs of a data folder, splitting them, and checking them.

Folder layout (files are paired by stem; a mask may have another suffix than its image)::

    ROOT/images/a.png   ROOT/masks/a.png   ROOT/instances/a.png (optional)
    or ROOT/train/{images,masks,instances}/ and ROOT/val/{images,masks,instances}/

:func:`preflight` reads every pair once, so a bad file fails before training, not hours
into it; :func:`compute_stats` gives the normalisation statistics.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unetkit.config import DataConfig
from unetkit.data.io import (
    IMAGE_SUFFIXES,
    DataError,
    read_image,
    read_instances,
    read_mask,
)

LAYOUT = (
    "expected layout:\n"
    "  ROOT/images/NAME.png (or .tif, .jpg, .bmp, .npy)  the images\n"
    "  ROOT/masks/NAME.png                                 one mask per image, same file stem\n"
    "  ROOT/instances/NAME.png    optional instance labels (0 = background) for the weight map\n"
    "or ROOT/train/{images,masks,instances}/ and ROOT/val/{images,masks,instances}/ "
    "for a fixed train/validation split"
)


# --------------------------------------------------------------------------- items


@dataclass
class Item:
    """One image with its mask and optional instance labels: file paths read lazily, or
    arrays already in memory (the demo data). Arrays win when both are set.

    ``problem`` is a pairing problem found by :func:`find_items` (e.g. two masks with the
    same stem); :func:`preflight` reports it with the others.
    """

    name: str
    image_path: Path | None = None
    mask_path: Path | None = None
    instance_path: Path | None = None
    image: np.ndarray | None = field(default=None, repr=False)  # float32 (C, H, W) in [0, 1]
    mask: np.ndarray | None = field(default=None, repr=False)  # int64 (H, W)
    instances: np.ndarray | None = field(default=None, repr=False)  # int32 (H, W)
    problem: str | None = None

    @property
    def label(self) -> str:
        """How messages name this item: its image file, else its mask file, else its name."""
        return str(self.image_path or self.mask_path or self.name)

    def has_image(self) -> bool:
        return self.image is not None or self.image_path is not None

    def has_mask(self) -> bool:
        return self.mask is not None or self.mask_path is not None

    def load_image(self) -> np.ndarray:
        """float32 (C, H, W) in [0, 1]."""
        if self.image is not None:
            return np.asarray(self.image, dtype=np.float32)
        if self.image_path is None:
            raise DataError(f"{self.label}: no image")
        return read_image(self.image_path)

    def load_mask(self, cfg: DataConfig) -> np.ndarray:
        """int64 (H, W) class indices (or cfg.ignore_index)."""
        if self.mask is not None:
            return np.asarray(self.mask, dtype=np.int64)
        if self.mask_path is None:
            raise DataError(f"{self.label}: no mask")
        return read_mask(self.mask_path, cfg.num_classes, cfg.mask_encoding,
                         cfg.palette or None, cfg.ignore_index)

    def load_instances(self) -> np.ndarray | None:
        """int32 (H, W) instance labels, or None when there are none."""
        if self.instances is not None:
            return np.asarray(self.instances, dtype=np.int32)
        if self.instance_path is None:
            return None
        return read_instances(self.instance_path)


def _list_files(folder: Path) -> dict[str, list[Path]]:
    """Image-like files in ``folder`` grouped by stem (hidden files and other types skipped)."""
    by_stem: dict[str, list[Path]] = {}
    if not folder.is_dir():
        return by_stem
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith(".") \
                and path.suffix.lower() in IMAGE_SUFFIXES:
            by_stem.setdefault(path.stem, []).append(path)
    return by_stem


def pair_folder(folder: Path) -> list[Item]:
    """Pair folder/images, folder/masks and folder/instances by stem.

    Incomplete pairs are kept (image without mask, mask without image) so that
    :func:`preflight` can report all of them at once.
    """
    images = _list_files(folder / "images")
    masks = _list_files(folder / "masks")
    instances = _list_files(folder / "instances")
    if not images and not masks:
        raise DataError(f"{folder / 'images'}: no images found "
                        f"(file types {', '.join(IMAGE_SUFFIXES)}); {LAYOUT}")
    items = []
    for stem in sorted(set(images) | set(masks)):
        problems = []
        for kind, found in (("images", images), ("masks", masks), ("instance files", instances)):
            if len(found.get(stem, [])) > 1:
                names = ", ".join(p.name for p in found[stem])
                problems.append(f"{folder}: several {kind} share the stem {stem!r}: {names}")
        items.append(Item(
            name=stem,
            image_path=images.get(stem, [None])[0],
            mask_path=masks.get(stem, [None])[0],
            instance_path=instances.get(stem, [None])[0],
            problem="; ".join(problems) or None,
        ))
    for stem in sorted(set(instances) - set(images) - set(masks)):
        items.append(Item(name=stem, instance_path=instances[stem][0],
                          problem=f"{instances[stem][0]}: instance labels without an image"))
    return items


def split_items(items: Sequence[Item], val_fraction: float, seed: int,
                strata: Sequence[float] | None = None) -> tuple[list[Item], list[Item]]:
    """Seeded train/validation split; at least one item on each side.

    Items are sorted by name first, so the split does not depend on file-system order.
    Without ``strata`` the validation items are a random draw. With ``strata`` (one value
    per item, in the order given: e.g. its foreground fraction), they are drawn evenly
    along the items ranked by it, from a seeded random start: a small validation set then
    spans the data (near-empty slices and full ones alike) instead of whatever a random
    draw of 2-4 images happens to hold, so its Dice is less noisy.
    """
    order_by_name = sorted(range(len(items)), key=lambda i: items[i].name)
    items = [items[i] for i in order_by_name]
    n = len(items)
    if n < 2:
        raise DataError(f"need at least 2 images to split into training and validation, "
                        f"found {n}")
    n_val = min(n - 1, max(1, round(val_fraction * n)))
    rng = np.random.default_rng(seed)
    if strata is None:
        order = rng.permutation(n)
    else:
        ranked = np.argsort([strata[i] for i in order_by_name], kind="stable")
        step = n / n_val
        order = ranked[(rng.uniform(0, step) + step * np.arange(n_val)).astype(int)]
    val_set = set(order[:n_val].tolist())
    train = [it for i, it in enumerate(items) if i not in val_set]
    val = [it for i, it in enumerate(items) if i in val_set]
    return train, val


def fold_split(items: Sequence, folds: int, fold: int, seed: int) -> tuple[list, list]:
    """(training, validation): the items in a seeded random order, cut into ``folds``
    parts of equal size (within one); part ``fold`` validates. Every item validates in
    exactly one fold."""
    items = sorted(items, key=lambda it: it.name)
    if not 0 <= fold < folds or len(items) < folds:
        raise DataError(f"fold {fold} of {folds}: expected 0 <= fold < folds and at least "
                        f"{folds} images, found {len(items)}")
    order = np.random.default_rng(seed).permutation(len(items))
    held = set(order[fold::folds].tolist())
    return ([it for i, it in enumerate(items) if i not in held],
            [it for i, it in enumerate(items) if i in held])


def foreground_fractions(items: Sequence[Item], cfg: DataConfig) -> list[float]:
    """Each item's share of foreground pixels (classes 1..K-1; ignored pixels left out)."""
    fractions = []
    for item in items:
        mask = item.load_mask(cfg)
        counted = (mask >= 0) & (mask < cfg.num_classes)
        fractions.append(float((mask[counted] > 0).mean()) if counted.any() else 0.0)
    return fractions


def split_for(items: Sequence, cfg: DataConfig, seed: int) -> tuple[list, list]:
    """The training/validation split a config asks for: its cross-validation fold, or
    ``val_fraction`` of the images stratified by their foreground fraction."""
    if cfg.folds > 1:
        return fold_split(items, cfg.folds, cfg.fold, seed)
    strata = None
    if all(isinstance(it, Item) and it.has_mask() for it in items):  # volumes: random
        try:
            strata = foreground_fractions(items, cfg)
        except DataError:  # an unreadable mask: preflight reports it with the others
            strata = None
    return split_items(items, cfg.val_fraction, seed, strata)


def find_items(root: str | Path, cfg: DataConfig, seed: int) -> tuple[list[Item], list[Item]]:
    """Find (train, val) items under ``root``.

    Uses ROOT/train and ROOT/val when they exist, else ROOT/{images,masks} split at random
    with ``cfg.val_fraction`` (seeded). Files are not opened here; see :func:`preflight`.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; {LAYOUT}")
    train_dir, val_dir = root / "train", root / "val"
    if train_dir.is_dir() or val_dir.is_dir():
        missing = [d for d in (train_dir, val_dir) if not (d / "images").is_dir()]
        if missing:
            raise DataError(f"{root}: found a train/val layout but {missing[0] / 'images'} "
                            f"does not exist; {LAYOUT}")
        if cfg.folds > 1:  # cross-validation pools the given split
            return split_for(pair_folder(train_dir) + pair_folder(val_dir), cfg, seed)
        return pair_folder(train_dir), pair_folder(val_dir)
    if not (root / "images").is_dir():
        raise DataError(f"{root}: no 'images' folder; {LAYOUT}")
    return split_for(pair_folder(root), cfg, seed)


# --------------------------------------------------------------------------- checks


def preflight(items: Sequence[Item], cfg: DataConfig,
              expected_channels: int | None = None) -> None:
    """Read every image/mask pair once and raise ONE DataError listing every problem.

    Checked: image without mask, mask without image, unreadable files, mask values that fit
    no encoding, image/mask/instance size mismatches, and channel counts that differ from
    ``expected_channels`` (the model's input channels, when given) or from the majority.
    Warns when a class never occurs in any mask.
    """
    if not items:
        raise DataError(f"no images found; {LAYOUT}")
    problems: list[str] = []
    channels: dict[str, int] = {}
    class_pixels = np.zeros(cfg.num_classes, dtype=np.int64)
    for item in items:
        if item.problem:
            problems.append(item.problem)
        if not item.has_image():
            if item.mask_path is not None:
                where = item.mask_path.parent.parent / "images"
                problems.append(f"{item.mask_path}: mask without an image (expected "
                                f"{where / item.name}.<{'|'.join(s[1:] for s in IMAGE_SUFFIXES)}>)")
            continue
        if not item.has_mask():
            where = item.image_path.parent.parent / "masks" if item.image_path else "masks"
            problems.append(f"{item.label}: no mask (expected {where}/{item.name}.png, "
                            "or another image suffix, with the same stem)")
        image = mask = instances = None
        try:
            image = item.load_image()
            channels[item.label] = image.shape[0]
        except DataError as err:
            problems.append(str(err))
        if item.has_mask():
            try:
                mask = item.load_mask(cfg)
            except DataError as err:
                problems.append(str(err))
        try:
            instances = item.load_instances()
        except DataError as err:
            problems.append(str(err))
        if image is not None and mask is not None and image.shape[1:] != mask.shape:
            problems.append(
                f"{item.label}: image is {hw_text(image.shape[1:])} but its mask "
                f"{item.mask_path or ''} is {hw_text(mask.shape)} (height x width); they must match"
            )
        if instances is not None and mask is not None and instances.shape != mask.shape:
            problems.append(
                f"{item.instance_path or item.label}: instance labels are "
                f"{hw_text(instances.shape)} but the mask is {hw_text(mask.shape)}; they must match"
            )
        if mask is not None:
            valid = mask[(mask >= 0) & (mask < cfg.num_classes)]
            class_pixels += np.bincount(valid.ravel(), minlength=cfg.num_classes)

    problems += channel_problems(channels, expected_channels)

    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise DataError(f"{len(problems)} problem(s) in the data; fix them and run again:\n"
                        f"{lines}")
    absent = [str(c) for c in range(1, cfg.num_classes) if class_pixels[c] == 0]
    if absent:
        warnings.warn(f"class(es) {', '.join(absent)} never occur in any mask "
                      f"(num_classes={cfg.num_classes}); check num_classes and the masks",
                      stacklevel=2)


def channel_problems(channels: dict[str, int], expected: int | None = None) -> list[str]:
    """One line per image whose channel count differs from ``expected`` (the model's) or,
    without it, from the most common count; the line names an image that has that."""
    if not channels:
        return []
    if expected is not None:
        return [f"{label}: image has {count} channel(s); the model expects {expected}"
                for label, count in channels.items() if count != expected]
    counts = Counter(channels.values())
    reference, share = counts.most_common(1)[0]
    example = next(label for label, count in channels.items() if count == reference)
    return [f"{label}: image has {count} channel(s) but {example} has {reference} (as "
            f"{share} of {len(channels)} images); every image needs the same channels"
            for label, count in channels.items() if count != reference]


def hw_text(shape: tuple[int, ...]) -> str:
    """"H x W" text of an array shape's last two sides, for messages."""
    return f"{shape[0]}x{shape[1]}"


def compute_stats(items: Sequence[Item]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of the images, in [0, 1] units.

    Streams one image at a time (Chan et al.'s pairwise update of mean and squared
    deviations, in float64), so the data set never has to fit in memory.
    """
    count = 0
    mean = m2 = first = None
    for item in items:
        pixels = item.load_image().astype(np.float64)
        flat = pixels.reshape(pixels.shape[0], -1)
        if mean is None:
            mean = np.zeros(flat.shape[0])
            m2 = np.zeros(flat.shape[0])
            first = item.label
        elif flat.shape[0] != mean.shape[0]:
            raise DataError(f"{item.label}: image has {flat.shape[0]} channel(s) but {first} "
                            f"has {mean.shape[0]}; every image needs the same channels")
        n_b = flat.shape[1]
        mean_b = flat.mean(axis=1)
        m2_b = ((flat - mean_b[:, None]) ** 2).sum(axis=1)
        total = count + n_b
        delta = mean_b - mean
        mean = mean + delta * (n_b / total)
        m2 = m2 + m2_b + delta**2 * (count * n_b / total)
        count = total
    if mean is None:
        raise DataError("cannot compute image statistics: no images")
    std = np.sqrt(m2 / count)
    # A constant channel has std 0; dividing by 1 instead keeps it finite (and still 0-mean).
    std = np.where(std < 1e-8, 1.0, std)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
