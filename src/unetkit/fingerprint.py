"""The data fingerprint: what a data set looks like, measured once, before any training.

The first step of self-configuring training (nnU-Net's "dataset fingerprint"): image
sizes, channels and stored dtype, intensity statistics, class frequencies, object sizes and
how often objects touch, and plain-language warnings for anything unusual. Every file is
read once. :func:`fingerprint` returns a JSON-serialisable dict, :func:`format_fingerprint`
a short table for people.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from unetkit.config import DataConfig
from unetkit.data.folder import dataset_items
from unetkit.data.io import DataError
from unetkit.data.pairing import Item, hw_text
from unetkit.instances import semantic_to_objects

SAMPLE_PIXELS = 1_000_000  # intensity sample: at most this many pixels per channel in all
TINY_DIAMETER = 8.0  # px: a median object narrower than this is hard to segment or split
RARE_CLASS = 0.01  # a foreground class below this pixel fraction is extreme imbalance
FEW_IMAGES = 10  # fewer images than this hardly make a training and a validation set
LAYOUT_GRID = 32  # masks are compared for layout on this many points per side
_PIL_DTYPES = {"1": "bool", "L": "uint8", "P": "uint8", "LA": "uint8", "RGB": "uint8",
               "RGBA": "uint8", "CMYK": "uint8", "I;16": "uint16", "I;16B": "uint16",
               "I": "int32", "F": "float32"}


def stored_dtype(item: Item) -> str:
    """The dtype the image is stored in, from the file header (nothing decoded)."""
    path = item.image_path
    if item.image is not None or path is None:
        return f"{np.asarray(item.image).dtype} (in memory)"
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return str(np.load(path, mmap_mode="r").dtype)
    if suffix in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            return str(tif.pages[0].dtype)
    from PIL import Image

    with Image.open(path) as img:
        return _PIL_DTYPES.get(img.mode, img.mode)


def mask_encoding(item: Item, data: DataConfig) -> str:
    """The mask encoding as read: the configured one, or for "auto" what the first mask
    file holds (palette-mode or colour PNG, 0/255 binary, or class indices)."""
    if data.mask_encoding != "auto":
        return data.mask_encoding
    path = item.mask_path
    if path is None or path.suffix.lower() not in (".png", ".bmp", ".jpg", ".jpeg"):
        return "index"
    from PIL import Image

    with Image.open(path) as img:
        if img.mode == "P" or (data.palette and img.mode in ("RGB", "RGBA")):
            return "palette"
        values = np.unique(np.asarray(img))
    if data.num_classes == 2 and data.ignore_index != 255 and values.max(initial=0) == 255:
        return "binary"
    return "index"


def touching_labels(labels: np.ndarray, classes: np.ndarray) -> set[int]:
    """Labels of (H, W) ``labels`` that are 8-neighbours of another nonzero label whose
    pixel has the same class in (H, W) ``classes``."""
    found: set[int] = set()
    h, w = labels.shape
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a = labels[:h - dy, max(0, -dx):w - max(0, dx)]
        b = labels[dy:, max(0, dx):w - max(0, -dx)]
        ca = classes[:h - dy, max(0, -dx):w - max(0, dx)]
        cb = classes[dy:, max(0, dx):w - max(0, -dx)]
        hit = (a != b) & (a > 0) & (b > 0) & (ca == cb)
        found.update(np.unique(a[hit]).tolist())
        found.update(np.unique(b[hit]).tolist())
    return found


def objects_of(mask: np.ndarray, instances: np.ndarray | None,
               num_classes: int) -> tuple[np.ndarray, int]:
    """(object areas in px, number of them touching another object of their class) for one
    (H, W) mask: from the instance labels when given, else each foreground class's
    connected components (4-connected, min_size 0)."""
    if instances is not None:
        labels = [instances]
    else:
        labels = [semantic_to_objects(mask, (c,), min_size=0) for c in range(1, num_classes)]
    areas, touching = [], 0
    for lab in labels:
        counts = np.bincount(lab.ravel())[1:]
        areas.append(counts[counts > 0])
        touching += len(touching_labels(lab, mask))
    return np.concatenate(areas) if areas else np.zeros(0, np.int64), touching


def layout_thumbnail(mask: np.ndarray) -> np.ndarray:
    """(LAYOUT_GRID, LAYOUT_GRID) nearest-neighbour sample of an (H, W) mask."""
    h, w = mask.shape
    rows = (np.arange(LAYOUT_GRID) + 0.5) * h / LAYOUT_GRID
    cols = (np.arange(LAYOUT_GRID) + 0.5) * w / LAYOUT_GRID
    return mask[rows.astype(int)][:, cols.astype(int)]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2 * (a & b).sum() / total) if total else 1.0


def layout(thumbnails: Sequence[np.ndarray], num_classes: int) -> dict:
    """Whether the classes sit at the same place in every image, as in registered scans.

    ``aligned``: mean Dice of each image's class masks with the consensus (pixels where
    most images have that class), averaged over foreground classes weighted by their
    pixels: near 1 for registered scans, near 0 for objects scattered anywhere.
    ``mirror_lr`` / ``mirror_ud``: the lowest Dice, over classes, of the consensus with
    its left-right / up-down mirror image (1: a flip shows nothing the data does not).
    """
    stack = np.stack(thumbnails)
    scores, weights, lr, ud = [], [], [], []
    for c in range(1, num_classes):
        member = stack == c
        if not member.any():
            continue
        consensus = member.mean(axis=0) > 0.5
        scores.append(np.mean([_dice(m, consensus) for m in member]))
        weights.append(member.sum())
        lr.append(_dice(consensus, consensus[:, ::-1]))
        ud.append(_dice(consensus, consensus[::-1]))
    if not scores:
        return {"aligned": 0.0, "mirror_lr": 1.0, "mirror_ud": 1.0}
    # A flip is only harmless if it moves no class: the worst class decides.
    return {"aligned": float(np.average(scores, weights=weights)),
            "mirror_lr": float(min(lr)), "mirror_ud": float(min(ud))}


def _size_stats(heights: list[int], widths: list[int]) -> dict:
    def stats(values: list[int]) -> dict:
        return {"min": int(np.min(values)), "median": float(np.median(values)),
                "max": int(np.max(values))}

    return {"height": stats(heights), "width": stats(widths)}


def range_spread(samples: Sequence[np.ndarray]) -> float:
    """How much the images' intensity ranges differ: the widest image's 1-99% range over
    the narrowest's, the largest such ratio over the channels (1.0: alike). 8- and 16-bit
    files in one set, or exposures that differ, give large values."""
    ranges = np.stack([np.percentile(s, 99, axis=1) - np.percentile(s, 1, axis=1)
                       for s in samples])  # (images, C)
    ranges = np.maximum(ranges, 1e-6)
    return float((ranges.max(axis=0) / ranges.min(axis=0)).max())


def _intensity(samples: list[np.ndarray], lows: np.ndarray, highs: np.ndarray) -> dict:
    """Per-channel statistics of the pixel sample ((C, n) arrays), [0, 1] units."""
    pixels = np.concatenate(samples, axis=1).astype(np.float64)
    return {"mean": pixels.mean(axis=1).tolist(), "std": pixels.std(axis=1).tolist(),
            "p0_5": np.percentile(pixels, 0.5, axis=1).tolist(),
            "p99_5": np.percentile(pixels, 99.5, axis=1).tolist(),
            "min": lows.tolist(), "max": highs.tolist(), "sampled_pixels": pixels.shape[1],
            "range_spread": range_spread(samples)}


def _objects(areas: np.ndarray, touching: int, source: str) -> dict:
    count = int(areas.size)
    if count == 0:
        return {"source": source, "count": 0, "touching": 0.0}
    return {"source": source, "count": count,
            "area_px": {"min": int(areas.min()), "median": float(np.median(areas)),
                        "p95": float(np.percentile(areas, 95)), "max": int(areas.max())},
            "diameter_px_median": float(np.median(2 * np.sqrt(areas / np.pi))),
            "diameter_px_p95": float(np.percentile(2 * np.sqrt(areas / np.pi), 95)),
            "touching": touching / count}


def _read_all(items: Sequence[Item], data: DataConfig, seed: int) -> dict:
    """Read every item once; the raw measurements the fingerprint is made of."""
    rng = np.random.default_rng(seed)
    per_image = max(1, SAMPLE_PIXELS // len(items))
    acc = {"heights": [], "widths": [], "channels": [], "samples": [], "areas": [],
           "touching": 0, "instances": 0, "lows": None, "highs": None, "thumbnails": [],
           "class_pixels": np.zeros(data.num_classes, np.int64)}
    for item in items:
        image, mask, inst = item.load_image(), item.load_mask(data), item.load_instances()
        if image.shape[1:] != mask.shape:
            raise DataError(f"{item.label}: image is {hw_text(image.shape[1:])} but its mask "
                            f"is {hw_text(mask.shape)}; they must match")
        c, h, w = image.shape
        acc["heights"].append(h)
        acc["widths"].append(w)
        acc["channels"].append(c)
        if c == acc["channels"][0]:  # images with other channel counts: a warning, no stats
            flat = image.reshape(c, -1)
            pick = rng.choice(h * w, size=min(per_image, h * w), replace=False)
            acc["samples"].append(flat[:, pick])
            lows, highs = flat.min(axis=1), flat.max(axis=1)
            if acc["lows"] is not None:
                lows, highs = np.minimum(acc["lows"], lows), np.maximum(acc["highs"], highs)
            acc["lows"], acc["highs"] = lows, highs
        valid = mask[(mask >= 0) & (mask < data.num_classes)]
        acc["class_pixels"] += np.bincount(valid, minlength=data.num_classes)
        acc["thumbnails"].append(layout_thumbnail(mask))
        areas, touching = objects_of(mask, inst, data.num_classes)
        acc["areas"].append(areas)
        acc["touching"] += touching
        acc["instances"] += inst is not None
    return acc


def fingerprint(data: DataConfig, seed: int = 0) -> dict:
    """The data set's fingerprint (JSON-serialisable; sizes in px, intensities in [0, 1]).

    ``data.root`` None means the built-in demo data. Raises DataError for a missing folder
    or unreadable files.
    """
    items = dataset_items(data, seed)
    if not items:
        raise DataError(f"{data.root}: no images found")
    acc = _read_all(items, data, seed)
    fractions = acc["class_pixels"] / max(1, int(acc["class_pixels"].sum()))
    source = ("instance labels" if acc["instances"] == len(items) else
              "connected components of each foreground class" if not acc["instances"]
              else "instance labels where present, else connected components")
    fp = {
        "data": str(data.root) if data.root is not None else f"demo ({data.demo})",
        "images": len(items),
        "sizes": _size_stats(acc["heights"], acc["widths"]),
        "channels": sorted(set(acc["channels"])),
        "dtype": sorted({stored_dtype(it) for it in items}),
        "intensity": _intensity(acc["samples"], acc["lows"], acc["highs"]),
        "classes": {"num_classes": data.num_classes,
                    "mask_encoding": mask_encoding(items[0], data),
                    "pixel_fraction": [float(f) for f in fractions]},
        "objects": _objects(np.concatenate(acc["areas"]), acc["touching"], source),
        "layout": layout(acc["thumbnails"], data.num_classes),
    }
    fp["warnings"] = warnings_for(fp, DataConfig().patch_size)
    return fp


def warnings_for(fp: dict, patch_size: int) -> list[str]:
    """Plain-language notes on anything unusual in a fingerprint."""
    notes = []
    diameter = fp["objects"].get("diameter_px_median")
    # Objects a few pixels wide vanish after the first poolings and are easily merged.
    if diameter is not None and diameter < TINY_DIAMETER:
        notes.append(f"tiny objects: median diameter {diameter:.1f} px (< {TINY_DIAMETER:g}); "
                     "consider upsampling the images")
    # A class this rare barely moves an unweighted loss; Dice or class weights help.
    for cls, frac in enumerate(fp["classes"]["pixel_fraction"][1:], start=1):
        if frac < RARE_CLASS:
            notes.append(f"extreme imbalance: class {cls} is {100 * frac:.2f}% of the pixels "
                         f"(< {100 * RARE_CLASS:g}%)")
    # Smaller images are padded to the training crop: wasted work, or pick a smaller patch.
    sizes = fp["sizes"]
    if min(sizes["height"]["min"], sizes["width"]["min"]) < patch_size:
        notes.append(f"some images are smaller than the default patch ({patch_size} px): "
                     f"smallest {sizes['height']['min']}x{sizes['width']['min']}")
    # Too few images for a meaningful validation split or to learn much variation.
    if fp["images"] < FEW_IMAGES:
        notes.append(f"only {fp['images']} images (< {FEW_IMAGES}); expect noisy validation")
    # A model takes a fixed number of channels (preflight rejects this for folders).
    if len(fp["channels"]) > 1:
        notes.append(f"images differ in channels: {fp['channels']}")
    # A constant channel carries no information and has zero variance to normalise by.
    intensity = fp["intensity"]
    for ch, (lo, hi) in enumerate(zip(intensity["min"], intensity["max"])):
        if lo == hi:
            notes.append(f"channel {ch} is constant ({lo:.3g}) in every image")
    return notes


def format_fingerprint(fp: dict) -> str:
    """A short human-readable table of a fingerprint."""
    s, it, cl, ob = fp["sizes"], fp["intensity"], fp["classes"], fp["objects"]

    def nums(values: Sequence[float]) -> str:
        return ", ".join(f"{v:.3f}" for v in values)

    lines = [
        f"data         {fp['data']}",
        f"images       {fp['images']}   channels {fp['channels']}   dtype {', '.join(fp['dtype'])}",
        f"height px    min {s['height']['min']}  median {s['height']['median']:g}  "
        f"max {s['height']['max']}",
        f"width px     min {s['width']['min']}  median {s['width']['median']:g}  "
        f"max {s['width']['max']}",
        f"intensity    mean {nums(it['mean'])}  std {nums(it['std'])}",
        f"             0.5% {nums(it['p0_5'])}  99.5% {nums(it['p99_5'])}"
        f"  ranges differ {it.get('range_spread', 1.0):.1f}x between images",
        f"classes      {cl['num_classes']} ({cl['mask_encoding']})  pixel fraction "
        f"{nums(cl['pixel_fraction'])}",
        f"objects      {ob['count']} from {ob['source']}",
    ]
    if ob["count"]:
        a = ob["area_px"]
        lines.append(f"area px      min {a['min']}  median {a['median']:g}  p95 {a['p95']:.0f}  "
                     f"max {a['max']}   diameter median {ob['diameter_px_median']:.1f} px")
        lines.append(f"touching     {100 * ob['touching']:.1f}% of objects touch another "
                     "of their class")
    lay = fp["layout"]
    lines.append(f"layout       aligned {lay['aligned']:.2f} (1: the same place in every image)"
                 f"  mirror left-right {lay['mirror_lr']:.2f}  up-down {lay['mirror_ud']:.2f}")
    lines += [f"warning      {w}" for w in fp["warnings"]] or ["warnings     none"]
    return "\n".join(lines)


def default_out(data: DataConfig) -> Path:
    """Where `unetkit plan` writes the JSON: DATA/fingerprint.json, or runs/ for the demo."""
    if data.root is None:
        return Path("runs") / "demo-fingerprint.json"
    return Path(data.root).expanduser() / "fingerprint.json"
