"""Built-in demo data: generated fluorescence-microscopy-like images of cell nuclei.

Nothing is downloaded. Every image is a pure function of its seed, so the demo data set is
the same on every machine. The images imitate a nuclear stain (DAPI/Hoechst) seen through a
wide-field microscope:

* nuclei are ellipses with random orientation and a smooth, randomly wobbling outline,
  varied size, brightness and chromatin texture, slightly dimmer at the rim (thinner there);
* many nuclei touch and some overlap; where they overlap the later-drawn one is on top and
  owns the pixels (instance label = topmost), which is exactly the situation the U-Net
  paper's border weight map (:mod:`unetkit.data.weightmap`) is designed for;
* a few out-of-focus nuclei (wide, dim, blurred blobs) that are NOT labelled, so a plain
  intensity threshold is not enough;
* uneven illumination (a smooth low-frequency field), a background offset, Gaussian blur for
  the optical point-spread function, Poisson shot noise and Gaussian read noise.

``multiclass=True`` draws three kinds of object that differ in shape, size and texture:
1 = small round nuclei, 2 = large elongated cells, 3 = bright speckled cells.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

BINARY_CLASS_NAMES = ("background", "nucleus")
MULTICLASS_CLASS_NAMES = (
    "background",
    "small_round_nucleus",
    "large_elongated_cell",
    "bright_speckled_cell",
)

# Object counts are specified for a 256 x 256 image and scale with the image area.
_REFERENCE_AREA = 256 * 256
_MIN_COUNT, _MAX_COUNT = 10, 40
# Probability that a new nucleus is placed against an existing one instead of anywhere.
_TOUCH_PROBABILITY = 0.6
# Centre distance as a fraction of the summed radii (along the line joining the centres):
# < 1 overlaps, 1 just touches. Touching placements draw from [_MIN_OVERLAP, 1.0]; no pair may
# come closer than _MIN_OVERLAP, so no nucleus is hidden or cut in two by another.
_MIN_OVERLAP = 0.8
_WOBBLE_HARMONICS = np.arange(2, 6)  # outline perturbation: cos(k * theta), k = 2..5


@dataclass
class _Nucleus:
    """One object before rendering. Lengths in pixels, angle in radians."""

    class_id: int
    semi_major: float
    semi_minor: float
    angle: float
    wobble_amp: np.ndarray  # (len(_WOBBLE_HARMONICS),) relative radius perturbation
    wobble_phase: np.ndarray
    brightness: float  # peak intensity before illumination, arbitrary units (~0.3..1)
    texture: float  # relative amplitude of the smooth chromatin texture
    speckle: float  # absolute amplitude of bright speckles (0: none)
    rim_level: float  # intensity at the rim relative to the centre
    cy: float = 0.0
    cx: float = 0.0

    def radius_towards(self, direction: float) -> float:
        """Distance from the centre to the (un-wobbled) ellipse outline along ``direction``."""
        rel = direction - self.angle
        a, b = self.semi_major, self.semi_minor
        return a * b / math.hypot(b * math.cos(rel), a * math.sin(rel))

    def reach(self) -> float:
        """An upper bound of the distance from the centre to any outline pixel."""
        return self.semi_major * (1.0 + float(self.wobble_amp.sum())) + 1.0


def _sample_shape(rng: np.random.Generator, class_id: int, multiclass: bool) -> _Nucleus:
    """Draw size, shape and appearance of one object of ``class_id`` (position not set)."""
    if not multiclass:
        # Varied nuclei: radius ~6..18 px, mild to moderate elongation, dim to bright.
        radius = rng.uniform(6.0, 18.0)
        aspect = rng.uniform(0.55, 1.0)
        brightness = rng.uniform(0.3, 1.0)
        texture = rng.uniform(0.05, 0.25)
        speckle = rng.uniform(0.05, 0.25) if rng.random() < 0.2 else 0.0
        rim_level = rng.uniform(0.45, 0.8)
        wobble = 1.0
    elif class_id == 1:  # small, round, smooth, medium brightness
        radius = rng.uniform(5.5, 8.0)
        aspect = rng.uniform(0.85, 1.0)
        brightness = rng.uniform(0.55, 0.85)
        texture, speckle, rim_level, wobble = 0.08, 0.0, 0.6, 0.5
    elif class_id == 2:  # large, strongly elongated, dimmer and flat
        radius = rng.uniform(11.0, 15.0)
        aspect = rng.uniform(0.3, 0.45)
        brightness = rng.uniform(0.35, 0.55)
        texture, speckle, rim_level, wobble = 0.1, 0.0, 0.75, 1.0
    else:  # 3: medium-large, roundish, bright speckles on a dimmer body
        radius = rng.uniform(9.0, 13.0)
        aspect = rng.uniform(0.75, 1.0)
        brightness = rng.uniform(0.35, 0.55)
        texture, rim_level, wobble = 0.1, 0.6, 0.8
        speckle = rng.uniform(0.5, 0.8)
    # Semi-axes with geometric mean ``radius`` so the area does not depend on the aspect.
    semi_major = radius / math.sqrt(aspect)
    semi_minor = radius * math.sqrt(aspect)
    # Amplitudes fall off with the harmonic so the outline stays smooth (sum <= 0.15 * wobble).
    wobble_amp = wobble * rng.uniform(0.0, 0.12, len(_WOBBLE_HARMONICS)) / _WOBBLE_HARMONICS
    wobble_phase = rng.uniform(0.0, 2 * np.pi, len(_WOBBLE_HARMONICS))
    return _Nucleus(
        class_id=class_id,
        semi_major=semi_major,
        semi_minor=semi_minor,
        angle=rng.uniform(0.0, np.pi),
        wobble_amp=wobble_amp,
        wobble_phase=wobble_phase,
        brightness=brightness,
        texture=texture,
        speckle=speckle,
        rim_level=rim_level,
    )


def _too_close(new: _Nucleus, placed: list[_Nucleus]) -> bool:
    """True if ``new`` overlaps any placed nucleus by more than _MIN_OVERLAP allows."""
    for old in placed:
        dy, dx = new.cy - old.cy, new.cx - old.cx
        direction = math.atan2(dy, dx)  # from old towards new
        limit = old.radius_towards(direction) + new.radius_towards(direction + math.pi)
        if math.hypot(dy, dx) < _MIN_OVERLAP * limit:
            return True
    return False


def _place_nuclei(rng: np.random.Generator, size: int, multiclass: bool) -> list[_Nucleus]:
    """Choose the objects and their positions; list order is drawing order (last on top)."""
    area_factor = size * size / _REFERENCE_AREA
    low = max(1, round(_MIN_COUNT * area_factor))
    high = max(low, round(_MAX_COUNT * area_factor))
    target = int(rng.integers(low, high + 1))
    if multiclass:
        # At least one object of every class, the rest at random, in random drawing order.
        target = max(target, 3)
        classes = np.concatenate([[1, 2, 3], rng.integers(1, 4, target - 3)])
        rng.shuffle(classes)
    else:
        classes = np.ones(target, dtype=np.int64)

    placed: list[_Nucleus] = []
    attempts = 0
    while len(placed) < target and attempts < 50 * target:
        attempts += 1
        new = _sample_shape(rng, int(classes[len(placed)]), multiclass)
        if placed and rng.random() < _TOUCH_PROBABILITY:
            # Put it against a random existing nucleus, touching or slightly overlapping.
            anchor = placed[int(rng.integers(len(placed)))]
            direction = rng.uniform(0.0, 2 * np.pi)
            contact = anchor.radius_towards(direction) + new.radius_towards(direction + np.pi)
            distance = contact * rng.uniform(_MIN_OVERLAP + 0.02, 1.0)
            new.cy = anchor.cy + distance * math.sin(direction)
            new.cx = anchor.cx + distance * math.cos(direction)
            if not (0.0 <= new.cy < size and 0.0 <= new.cx < size):
                continue
        else:
            new.cy, new.cx = (float(v) for v in rng.uniform(0.0, size, 2))
        if not _too_close(new, placed):
            placed.append(new)
    return placed


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """White noise blurred by ``sigma`` pixels and rescaled to zero mean, unit std (H, W)."""
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
    return (field - field.mean()) / max(float(field.std()), 1e-12)


def _coarse_field(rng: np.random.Generator, size: int, grid: int, low: float, high: float):
    """Smooth random field (H, W): a ``grid`` x ``grid`` array of uniform values in
    [low, high] interpolated with cubic splines to ``size`` x ``size``.

    Only the lowest spatial frequencies, like the vignetting and uneven lamp alignment of a
    real microscope. Spline interpolation is separable, so the field is ``R @ coarse @ R.T``
    with R (size, grid) the interpolation weights: far cheaper than resampling 2-D. The
    products are written as broadcast sums, not ``@``: such tiny matrix products in a
    multi-threaded BLAS are slower than this when the cores are busy (e.g. data workers).
    """
    coarse = rng.uniform(low, high, (grid, grid))
    coords = np.linspace(0.0, grid - 1.0, size)
    basis = np.eye(grid)
    weights = np.stack(
        [ndimage.map_coordinates(basis[j], [coords], order=3, mode="nearest") for j in range(grid)],
        axis=1,
    )
    rows = (weights[:, :, None] * coarse[None, :, :]).sum(axis=1)  # (size, grid)
    return (rows[:, None, :] * weights[None, :, :]).sum(axis=2)


def _render(
    rng: np.random.Generator, size: int, nuclei: list[_Nucleus]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw the objects in order. Returns (signal float64, class map int64, instances int32)."""
    signal = np.zeros((size, size))
    classes = np.zeros((size, size), dtype=np.int64)
    instances = np.zeros((size, size), dtype=np.int32)
    # Shared texture fields: each object reads the part under it, so one pair of image-sized
    # filters replaces one filter per object.
    chromatin = _smooth_noise(rng, size, 1.2)
    # Bright speckles: sparse points blurred to ~2 px spots, scaled so an isolated spot peaks
    # at 1 (a Gaussian of std s has peak 1 / (2 pi s^2)); clusters are capped at 1.5.
    spot_sigma = 0.7
    spots = ndimage.gaussian_filter((rng.random((size, size)) < 0.03).astype(float), spot_sigma)
    spots = np.minimum(spots * (2 * np.pi * spot_sigma**2), 1.5)
    harmonics = _WOBBLE_HARMONICS[:, None, None]
    for label, nucleus in enumerate(nuclei, start=1):
        reach = nucleus.reach()
        y0, y1 = max(0, int(nucleus.cy - reach)), min(size, int(nucleus.cy + reach) + 2)
        x0, x1 = max(0, int(nucleus.cx - reach)), min(size, int(nucleus.cx + reach) + 2)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(float)
        yy -= nucleus.cy
        xx -= nucleus.cx
        cos_a, sin_a = math.cos(nucleus.angle), math.sin(nucleus.angle)
        # Coordinates in the ellipse's own frame, scaled so the outline is the unit circle.
        u = (xx * cos_a + yy * sin_a) / nucleus.semi_major
        v = (-xx * sin_a + yy * cos_a) / nucleus.semi_minor
        theta = np.arctan2(v, u)
        outline = 1.0 + np.sum(
            nucleus.wobble_amp[:, None, None]
            * np.cos(harmonics * theta + nucleus.wobble_phase[:, None, None]),
            axis=0,
        )
        t = np.hypot(u, v) / outline  # 0 at the centre, 1 on the wobbly outline
        inside = t < 1.0
        # A nucleus is roughly a flattened sphere: the projected thickness, hence the stain,
        # falls towards the rim (sqrt(1 - t^2)), but not to zero.
        thickness = np.sqrt(np.clip(1.0 - t * t, 0.0, 1.0))
        profile = nucleus.rim_level + (1.0 - nucleus.rim_level) * thickness
        value = nucleus.brightness * profile * (1.0 + nucleus.texture * chromatin[y0:y1, x0:x1])
        value += nucleus.speckle * spots[y0:y1, x0:x1]
        # Later objects overwrite earlier ones: the topmost owns overlapping pixels.
        signal[y0:y1, x0:x1][inside] = np.clip(value[inside], 0.0, None)
        classes[y0:y1, x0:x1][inside] = nucleus.class_id
        instances[y0:y1, x0:x1][inside] = label
    return signal, classes, instances


def _add_out_of_focus(rng: np.random.Generator, size: int, signal: np.ndarray) -> None:
    """Add unlabelled, wide, dim Gaussian blobs (nuclei in another focal plane) to ``signal``.

    Their peak (0.1..0.2) overlaps the range of dim in-focus nuclei under dark illumination,
    so only their blurred shape, not their intensity, says they are not objects.
    """
    area_factor = size * size / _REFERENCE_AREA
    count = int(rng.integers(0, max(1, round(4 * area_factor)) + 1))
    for _ in range(count):
        cy, cx = rng.uniform(0.0, size, 2)
        sigma = rng.uniform(5.0, 8.0)
        peak = rng.uniform(0.1, 0.2)
        # Drawn only within 3 sigma of the centre, where the Gaussian is > 1 % of its peak.
        y0, y1 = max(0, int(cy - 3 * sigma)), min(size, int(cy + 3 * sigma) + 1)
        x0, x1 = max(0, int(cx - 3 * sigma)), min(size, int(cx + 3 * sigma) + 1)
        yy, xx = np.ogrid[y0:y1, x0:x1]
        signal[y0:y1, x0:x1] += peak * np.exp(
            -((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma * sigma)
        )


def make_nuclei(
    size: int, seed: int, multiclass: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic fluorescence image of nuclei, its class mask and its instance labels.

    Args:
        size: side of the square image, pixels (H = W = size).
        seed: non-negative integer; the same seed always gives the same arrays.
        multiclass: False: mask 0 = background, 1 = nucleus. True: mask 0 = background,
            1 = small round nucleus, 2 = large elongated cell, 3 = bright speckled cell.

    Returns:
        image: float32 (1, H, W) in [0, 1].
        mask: int64 (H, W) class indices; for binary data ``mask == (instances > 0)``.
        instances: int32 (H, W), 0 = background, 1..N = objects (topmost where they overlap).
    """
    if not isinstance(size, (int, np.integer)) or size < 8:
        raise ValueError(f"make_nuclei: size must be an integer >= 8, got {size!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"make_nuclei: seed must be a non-negative integer, got {seed!r}")
    size = int(size)
    rng = np.random.default_rng(int(seed))
    nuclei = _place_nuclei(rng, size, multiclass)
    signal, mask, instances = _render(rng, size, nuclei)

    # Objects hidden completely under later ones leave gaps in the label numbers: renumber
    # the survivors 1..N in drawing order.
    present = np.unique(instances)
    lookup = np.zeros(len(nuclei) + 1, dtype=np.int32)
    lookup[present] = np.arange(len(present), dtype=np.int32)
    instances = lookup[instances]

    _add_out_of_focus(rng, size, signal)
    signal += rng.uniform(0.04, 0.1)  # background offset (autofluorescence, camera bias)
    signal += _coarse_field(rng, size, 8, -0.02, 0.02)  # faint uneven background haze
    # Uneven illumination, gains 0.55..1.15 (clipped so no corner goes almost black).
    signal *= np.clip(_coarse_field(rng, size, 4, 0.55, 1.15), 0.4, None)
    signal = ndimage.gaussian_filter(np.clip(signal, 0.0, None), rng.uniform(0.7, 1.4))
    # Shot noise: the signal is converted to photon counts at a random exposure.
    photons_at_one = rng.uniform(40.0, 150.0)
    signal = rng.poisson(signal * photons_at_one) / photons_at_one
    signal += rng.normal(0.0, rng.uniform(0.005, 0.02), signal.shape)  # camera read noise
    # Display scaling as a microscopist would: the 99.9th percentile maps to 1.
    top = max(float(np.percentile(signal, 99.9)), 1e-6)
    image = np.clip(signal / top, 0.0, 1.0).astype(np.float32)[None]
    return image, mask, instances


def _item_seed(seed: int, index: int) -> int:
    """Seed of item ``index``: depends only on (seed, index), not on how many items exist."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def make_demo_dataset(
    count: int, size: int, seed: int, multiclass: bool = False
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``count`` items of :func:`make_nuclei`; item i is the same whatever ``count`` is."""
    if not isinstance(count, (int, np.integer)) or count < 0:
        raise ValueError(f"make_demo_dataset: count must be a non-negative integer, got {count!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"make_demo_dataset: seed must be a non-negative integer, got {seed!r}")
    return [make_nuclei(size, _item_seed(seed, i), multiclass) for i in range(count)]


def _readme_text(count: int, size: int, seed: int, multiclass: bool, stems: list[str]) -> str:
    names = MULTICLASS_CLASS_NAMES if multiclass else BINARY_CLASS_NAMES
    classes = ", ".join(f"{i} = {name}" for i, name in enumerate(names))
    if multiclass:
        mask_text = f"class index per pixel, 8-bit: {classes}"
    else:
        mask_text = "binary, 8-bit: 0 = background, 255 = nucleus"
    stem_text = f"{stems[0]} .. {stems[-1]}" if stems else "none"
    return (
        "unetkit built-in demo data: synthetic fluorescence-microscopy images of nuclei.\n"
        f"Generated by unetkit.data.synthetic.write_demo_data(count={count}, size={size}, "
        f"seed={seed}, multiclass={multiclass}).\n\n"
        "Layout (files share their stem):\n"
        f"  images/<stem>.png     {size}x{size} 8-bit grayscale image\n"
        f"  masks/<stem>.png      {mask_text}\n"
        "  instances/<stem>.tif  16-bit object labels: 0 = background, 1..N = one object each\n"
        "                        (where objects overlap the label is the one on top)\n\n"
        f"Stems: {stem_text} ({count} files)\n"
        f"Classes: {classes}\n"
    )


def write_demo_data(
    directory: str | Path,
    count: int = 64,
    size: int = 256,
    seed: int = 0,
    multiclass: bool = False,
) -> Path:
    """Generate the demo set and write it in the folder format; returns ``directory``.

    Writes DIR/images/nuclei_000.png (8-bit), DIR/masks/nuclei_000.png (0/255 for binary
    data, class indices 0..3 for multiclass), DIR/instances/nuclei_000.tif (uint16 labels)
    and DIR/README.txt. Existing files with the same names are overwritten.
    """
    # Imported here so importing this module (e.g. to generate arrays in memory) stays cheap.
    import tifffile
    from PIL import Image

    from ..errors import writing

    directory = Path(directory)
    items = make_demo_dataset(count, size, seed, multiclass)
    with writing("demo data", directory):
        for sub in ("images", "masks", "instances"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        digits = max(3, len(str(max(count - 1, 0))))
        stems = [f"nuclei_{i:0{digits}d}" for i in range(count)]
        for stem, (image, mask, instances) in zip(stems, items):
            pixels = np.round(image[0] * 255.0).astype(np.uint8)
            Image.fromarray(pixels).save(directory / "images" / f"{stem}.png")
            mask_pixels = mask.astype(np.uint8) if multiclass else (mask > 0).astype(np.uint8) * 255
            Image.fromarray(mask_pixels).save(directory / "masks" / f"{stem}.png")
            if instances.max() > np.iinfo(np.uint16).max:
                raise ValueError(
                    f"{directory / 'instances' / stem}.tif: {int(instances.max())} objects, "
                    "expected at most 65535 for a 16-bit label image"
                )
            tifffile.imwrite(directory / "instances" / f"{stem}.tif", instances.astype(np.uint16))
        (directory / "README.txt").write_text(_readme_text(count, size, seed, multiclass, stems))
    return directory
