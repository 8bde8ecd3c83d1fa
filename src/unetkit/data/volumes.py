"""Reading and writing volumes (3D images and masks) with their voxel spacing and orientation.

Numpy in, numpy out. Every reader returns a :class:`Volume` in one fixed layout:

- axes: images float32 (C, D, H, W), masks int64 (D, H, W); D, H, W are z, y, x. NIfTI
  data, which nibabel gives as (x, y, z[, c]), is transposed to (c, z, y, x);
- ``spacing``: (z, y, x) voxel sizes in mm, in the order of the array axes;
- ``affine``: 4x4 float64 voxel -> world (RAS+, as nibabel gives it). Like every NIfTI
  tool it takes voxel indices in file order (x, y, z) = (W, H, D), the array axes reversed.
  TIFF stacks and .npy files get ``diag(x, y, z spacing, 1)`` (the identity for .npy);
- intensities are the stored values as float32, NOT scaled to [0, 1] as the 2D reader
  does: CT Hounsfield units and MR intensities must survive, so normalisation (windows,
  z-scores) happens later on the raw values. Integer TIFF stacks are kept raw too.

File types by suffix: ``.nii`` / ``.nii.gz`` (nibabel, the optional ``medical`` extra),
``.tif`` / ``.tiff`` multi-page stacks (tifffile; (D, H, W), (D, C, H, W) or (D, H, W, C);
z spacing from ImageJ's ``spacing``, y/x from the XResolution/YResolution tags, else 1.0),
and ``.npy`` ((D, H, W) or (C, D, H, W), spacing 1.0). Problems raise :class:`DataError`
naming the file, like the 2D readers of :mod:`unetkit.data.io`. Predictions are written
on the grid of the volume they came from (``like=``); :func:`volume_pairs` finds the
cases of a folder, :func:`is_volume_folder` tells a 3D folder from a 2D one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unetkit.data.io import (
    MAX_CHANNELS,
    DataError,
    _format_values,
    _mask_error,
    _reading,
    is_plane,
)
from unetkit.errors import remove_quietly, writing

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".tif", ".tiff", ".npy")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
TIFF_SUFFIXES = (".tif", ".tiff")
# TIFF resolution / ImageJ units -> mm. An INCH resolution unit is a printer's dpi that many
# writers add by default (72, 96, 300), not a voxel size: it is ignored (spacing 1.0).
_UNIT_MM = {"mm": 1.0, "millimeter": 1.0, "cm": 10.0, "m": 1000.0, "micron": 1e-3,
            "um": 1e-3, "\u00b5m": 1e-3, "\\u00b5m": 1e-3, "nm": 1e-6}
LAYOUT = (
    "expected layout:\n"
    "  ROOT/images/NAME.nii.gz (or .nii, .tif, .npy)  the volumes (channels inside the file)\n"
    "  ROOT/masks/NAME.nii.gz                         one mask per volume, same stem\n"
    "or the nnU-Net layout: ROOT/imagesTr/CASE_0000.nii.gz (+ CASE_0001 ... one file per "
    "channel) and ROOT/labelsTr/CASE.nii.gz"
)


@dataclass
class Volume:
    """A volume and its geometry (see the module docstring for the conventions)."""

    array: np.ndarray = field(repr=False)  # image float32 (C, D, H, W); mask int64 (D, H, W)
    spacing: tuple[float, float, float]  # (z, y, x) in mm
    affine: np.ndarray = field(repr=False)  # 4x4 float64, voxel (x, y, z) -> world RAS+
    header: Any = field(default=None, repr=False)  # nibabel header, ImageJ metadata or None
    path: Path | None = None


def volume_suffix(path: str | Path) -> str | None:
    """The volume file type of ``path`` (".nii.gz", ".nii", ".tif", ...), or None."""
    name = Path(path).name.lower()
    return next((s for s in VOLUME_SUFFIXES if name.endswith(s)), None)


def volume_stem(path: str | Path) -> str:
    """The name without its volume suffix: ``a.nii.gz`` -> ``a``."""
    name = Path(path).name
    suffix = volume_suffix(name)
    return name[: -len(suffix)] if suffix else Path(name).stem


def _nibabel(path: Path, verb: str = "reading"):
    try:
        import nibabel
    except ImportError:
        raise ImportError(f"{verb} {path} needs nibabel: pip install -e '.[medical]'") from None
    return nibabel


def _grid_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """voxel (x, y, z) -> world for a plain grid of ``spacing`` (z, y, x)."""
    return np.diag([spacing[2], spacing[1], spacing[0], 1.0])


# --------------------------------------------------------------------------- axes


def _order(shape: tuple[int, ...], axes: str | None, channel_at: tuple[int, int],
           path: Path, what: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(size-1 axes to drop, transposition of the rest) that bring an array of ``shape``
    to (D, H, W) or (C, D, H, W). ``axes`` are tifffile's letters (C/S channels, Y, X,
    anything else depth); without them a 4-axis array has its channels at
    ``channel_at[0]`` when that side is <= MAX_CHANNELS, else at ``channel_at[1]``."""
    drop = tuple(i for i, s in enumerate(shape) if s == 1)
    kept = [s for s in shape if s != 1]
    letters = [a for a, s in zip(axes, shape) if s != 1] if axes else []
    channel = [i for i, a in enumerate(letters) if a in "CS"]
    if len(kept) == 4 and len(channel) == 1:
        return drop, (channel[0], *(i for i in range(4) if i != channel[0]))
    if len(kept) == 3 and not channel:
        return drop, (0, 1, 2)
    if len(kept) == 4 and not channel:
        for at in channel_at:
            if kept[at] <= MAX_CHANNELS:
                return drop, (at, *(i for i in range(4) if i != at))
    raise DataError(
        f"{path}: {what} has shape {tuple(shape)}"
        + (f" (axes {axes})" if axes else "")
        + f"; expected a volume (D, H, W), or with channels (up to {MAX_CHANNELS}) "
        + ("(D, C, H, W) or (D, H, W, C)" if channel_at[0] == 1 else "(C, D, H, W)")
    )


def _apply(arr: np.ndarray, order: tuple[tuple[int, ...], tuple[int, ...]]) -> np.ndarray:
    arr = np.squeeze(arr, axis=order[0]) if order[0] else arr
    return np.transpose(arr, order[1])


def _nifti_order(shape: tuple[int, ...], path: Path, what: str):
    """(x, y, z), (x, y, z, c) or (x, y, z, 1, c) -> (z, y, x) or (c, z, y, x)."""
    drop = tuple(i for i in range(3, len(shape)) if shape[i] == 1 and len(shape) > 3)
    rest = len(shape) - len(drop)
    if len(shape) >= 3 and rest in (3, 4):
        return drop, (2, 1, 0) if rest == 3 else (3, 2, 1, 0)
    raise DataError(f"{path}: {what} has shape {tuple(shape)}; expected a NIfTI volume "
                    "(x, y, z) or (x, y, z, channels)")


# --------------------------------------------------------------------------- reading


def _tiff_spacing(tif) -> tuple[float, float, float]:
    """(z, y, x) in mm: ImageJ's ``spacing`` and the resolution tags (pixels per unit)."""
    ij, tags = tif.imagej_metadata or {}, tif.pages[0].tags
    unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 1
    scale = 10.0 if unit == 3 else _UNIT_MM.get(str(ij.get("unit", "")).strip().lower(), 1.0)
    sizes = []
    for name in ("YResolution", "XResolution"):
        value = tags[name].value if name in tags else None
        ok = isinstance(value, tuple) and len(value) == 2 and value[0] > 0 and unit != 2
        sizes.append(value[1] / value[0] * scale if ok else 1.0)
    z = float(ij["spacing"]) * scale if ij.get("spacing") else 1.0
    return (z, float(sizes[0]), float(sizes[1]))


def _read(path: str | Path, what: str, data: bool = True) -> Volume:
    """The file's array in (C, D, H, W) as stored (masks check their channels later).
    ``data=False`` reads the header only: the array is then a stand-in of the right shape
    and dtype that holds no memory."""
    path = Path(path)
    suffix = volume_suffix(path)
    if not path.is_file():
        raise DataError(f"{path}: file does not exist")
    if suffix is None:
        raise DataError(f"{path}: unsupported file type; expected one of "
                        f"{', '.join(VOLUME_SUFFIXES)}")
    nib = _nibabel(path) if suffix in NIFTI_SUFFIXES else None

    def stand_in(shape, dtype):
        return np.broadcast_to(np.zeros((), dtype), tuple(shape))

    header = None
    with _reading(path, what):
        if nib is not None:
            img = nib.load(path)
            arr = np.asanyarray(img.dataobj) if data else stand_in(img.shape, img.get_data_dtype())
            arr = _apply(arr, _nifti_order(img.shape, path, what))
            zooms = [float(z) for z in img.header.get_zooms()[:3]]
            spacing = (zooms[2], zooms[1], zooms[0])
            affine, header = np.asarray(img.affine, dtype=np.float64), img.header
        elif suffix in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                order = _order(series.shape, series.axes, (1, 3), path, what)
                arr = series.asarray() if data else stand_in(series.shape, series.dtype)
                arr = _apply(arr, order)
                spacing, header = _tiff_spacing(tif), tif.imagej_metadata
            affine = _grid_affine(spacing)
        else:
            arr = np.load(path, mmap_mode=None if data else "r", allow_pickle=False)
            arr = _apply(arr, _order(arr.shape, None, (0, 3), path, what))
            spacing, affine = (1.0, 1.0, 1.0), np.eye(4)
    if arr.dtype.kind not in "biuf" or arr.size == 0:
        raise DataError(f"{path}: {what} has unsupported data type {arr.dtype} or is empty")
    arr = arr[None] if arr.ndim == 3 else arr
    return Volume(arr, spacing, affine, header, path)


def read_volume_header(path: str | Path) -> Volume:
    """The geometry of a volume without its data: ``array`` is a stand-in (no memory) of
    the image's (C, D, H, W) shape and stored dtype; spacing, affine and header as read."""
    return _read(path, "volume", data=False)


def read_volume(path: str | Path) -> Volume:
    """Read an image volume: ``array`` float32 (C, D, H, W), the stored values unscaled."""
    vol = _read(path, "volume")
    vol.array = np.ascontiguousarray(vol.array, dtype=np.float32)
    if not np.isfinite(vol.array).all():
        raise DataError(f"{vol.path}: volume contains NaN or infinite values")
    return vol


def read_volume_mask(path: str | Path, num_classes: int,
                     ignore_index: int | None = None) -> Volume:
    """Read a mask volume: ``array`` int64 (D, H, W) class indices 0..num_classes-1 (or
    ignore_index). As for 2D masks, a binary task (num_classes 2) also takes 0/255 (255 ->
    1) unless ignore_index is 255; anything else raises DataError in one line."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (background included), got {num_classes}")
    vol = _read(path, "mask")
    arr = vol.array
    if arr.shape[0] != 1:
        raise DataError(f"{path}: mask has {arr.shape[0]} channels; expected one (D, H, W) "
                        "volume of class indices")
    arr = arr[0].astype(np.uint8) if arr.dtype == np.bool_ else arr[0]
    if arr.dtype.kind == "f":
        whole = np.isfinite(arr) & (arr == np.round(arr))
        if not whole.all():
            raise DataError(f"{path}: mask has non-integer values "
                            f"{_format_values(np.unique(arr[~whole]))}; expected whole-number "
                            "class indices")
    lo, hi = float(arr.min()), float(arr.max())
    if not (lo >= 0 and hi < num_classes):  # the quick test first: unique() sorts everything
        values = np.unique(arr)
        allowed = list(range(num_classes)) + ([ignore_index] if ignore_index is not None else [])
        if num_classes == 2 and ignore_index != 255 and np.isin(values, (0, 255)).all():
            arr = (arr == 255).astype(np.int64)
        elif not np.isin(values, allowed).all():
            err = _mask_error(Path(path), values, num_classes, "auto", ignore_index)
            # Volumes have no mask-encoding setting to name (the 2D message names one).
            raise DataError(str(err).replace(" do not fit mask encoding 'auto'", ""))
    vol.array = np.ascontiguousarray(arr, dtype=np.int64)
    return vol


# --------------------------------------------------------------------------- writing


def _spatial(arr: np.ndarray, like: Volume, path: Path, what: str, ndim: int) -> None:
    if arr.ndim != ndim or arr.shape[-3:] != like.array.shape[-3:]:
        raise ValueError(f"{path}: {what} of shape {arr.shape} do not fit the volume "
                         f"{like.path or ''} of size {like.array.shape[-3:]} (D, H, W)")


def _atomic(path: Path, what: str, write: Callable[[Path], None]) -> None:
    """``write`` a temporary sibling with the same suffix (nibabel picks the format and
    compression by it), renamed over ``path`` at the end; a failure is one WriteError."""
    suffix = volume_suffix(path)
    if suffix is None:
        raise ValueError(f"{path}: unsupported file type; expected one of "
                         f"{', '.join(VOLUME_SUFFIXES)}")
    tmp = path.with_name(path.name[: -len(suffix)] + ".partial" + suffix)
    try:
        with writing(what, path, cleanup=tmp):
            path.parent.mkdir(parents=True, exist_ok=True)
            write(tmp)
            os.replace(tmp, path)
    finally:
        remove_quietly(tmp)  # also after a failure that was not an OS error


def _nifti_image(nib, data_xyz: np.ndarray, like: Volume):
    """A NIfTI image of ``data`` on the grid of ``like``: its affine and a copy of its
    header (NIfTI-1 or -2), the data type set to the data's, scaling and display window
    reset."""
    header = like.header.copy() if isinstance(like.header, nib.Nifti1Header) else None
    cls = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    img = cls(data_xyz, like.affine, header=header)
    if header is None:
        img.header.set_zooms((*like.spacing[::-1], *img.header.get_zooms()[3:]))
        img.header.set_xyzt_units("mm")
    img.header.set_data_dtype(data_xyz.dtype)
    img.header.set_slope_inter(None, None)
    img.header["cal_min"] = img.header["cal_max"] = 0
    return img


def write_volume_labels(path: str | Path, labels: np.ndarray, like: Volume) -> None:
    """Write (D, H, W) integer labels on the grid of ``like`` so they overlay it in
    ITK-SNAP / 3D Slicer: NIfTI with its affine and header (uint8, or int16 when the values
    need it), an ImageJ TIFF stack with its spacing (uint8/uint16), or plain .npy."""
    path, labels = Path(path), np.asarray(labels)
    _spatial(labels, like, path, "labels", 3)
    if labels.dtype.kind not in "biu" and not np.array_equal(labels, np.round(labels)):
        raise ValueError(f"{path}: labels must be whole numbers, got {labels.dtype}")
    lo, hi = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    suffix = volume_suffix(path)
    if lo >= 0 and hi <= 255:
        dtype = np.uint8
    elif suffix in TIFF_SUFFIXES and lo >= 0 and hi <= 65535:
        dtype = np.uint16
    elif suffix not in TIFF_SUFFIXES and lo >= -32768 and hi <= 32767:
        dtype = np.int16
    else:
        raise ValueError(f"{path}: label values {lo}..{hi} do not fit the file's integer type")
    _write(path, "labels", labels.astype(dtype), like)


def write_volume_probabilities(path: str | Path, probs: np.ndarray, like: Volume) -> None:
    """Write float32 (K, D, H, W) class probabilities on the grid of ``like``: a 4D NIfTI
    (x, y, z, K) with its affine and header, an ImageJ TIFF (Z, C, Y, X), or .npy."""
    path = Path(path)
    data = np.asarray(probs, dtype=np.float32)
    _spatial(data, like, path, "probabilities", 4)
    _write(path, "probabilities", data, like)


def _write(path: Path, what: str, data: np.ndarray, like: Volume) -> None:
    """(D, H, W) or (K, D, H, W) ``data`` to ``path`` by its suffix."""
    suffix = volume_suffix(path)
    if suffix in NIFTI_SUFFIXES:
        nib = _nibabel(path, "writing")
        img = _nifti_image(nib, np.transpose(data, tuple(range(data.ndim))[::-1]), like)
        _atomic(path, what, lambda tmp: nib.save(img, tmp))
    elif suffix in TIFF_SUFFIXES:
        import tifffile

        z, y, x = like.spacing
        stack = data if data.ndim == 3 else np.moveaxis(data, 0, 1)  # (Z, C, Y, X)
        _atomic(path, what, lambda tmp: tifffile.imwrite(
            tmp, stack, imagej=True, resolution=(1.0 / x, 1.0 / y),
            metadata={"spacing": z, "unit": "mm", "axes": "ZYX" if data.ndim == 3 else "ZCYX"}))
    else:
        _atomic(path, what, lambda tmp: np.save(tmp, data, allow_pickle=False))


# --------------------------------------------------------------------------- pairing


@dataclass
class VolumePair:
    """One case: its image files (one per channel, stacked in order; one file when the
    channels are inside it) and its mask."""

    name: str
    image_paths: list[Path]
    mask_path: Path | None

    def load_image(self) -> Volume:
        """float32 (C, D, H, W), the channel files stacked; geometry of the first."""
        vols = [read_volume(p) for p in self.image_paths]
        if len(vols) > 1:
            vols[0].array = np.concatenate([v.array for v in vols])
        return vols[0]

    def load_mask(self, num_classes: int, ignore_index: int | None = None) -> Volume:
        if self.mask_path is None:
            raise DataError(f"{self.image_paths[0]}: no mask")
        return read_volume_mask(self.mask_path, num_classes, ignore_index)


def _volume_files(folder: Path, problems: list[str]) -> dict[str, Path]:
    """Volume files in ``folder`` by stem; several files with one stem are a problem."""
    found: dict[str, list[Path]] = {}
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            if p.is_file() and not p.name.startswith(".") and volume_suffix(p):
                found.setdefault(volume_stem(p), []).append(p)
    problems += [f"{folder}: several volumes share the stem {stem!r}: "
                 + ", ".join(p.name for p in ps) for stem, ps in found.items() if len(ps) > 1]
    return {stem: ps[0] for stem, ps in found.items()}


def volume_pairs(root: str | Path) -> list[VolumePair]:
    """The cases of a volume folder, sorted by name; ``ROOT/images`` + ``ROOT/masks`` by
    stem, or nnU-Net's ``ROOT/imagesTr/CASE_XXXX`` + ``ROOT/labelsTr/CASE`` (``imagesTs``
    is not for training). Missing masks or channel files, and images whose mask (or other
    channels) differ in size or geometry, are reported together in one DataError."""
    root = Path(root).expanduser()
    problems: list[str] = []
    if (root / "imagesTr").is_dir():
        images_dir, mask_dir = root / "imagesTr", root / "labelsTr"
        cases: dict[str, dict[int, Path]] = {}
        for stem, path in _volume_files(images_dir, problems).items():
            match = re.fullmatch(r"(.+)_(\d{4})", stem)
            if match is None:
                problems.append(f"{path}: name does not end in a channel number "
                                "_0000, _0001, ...; expected CASE_0000 and so on")
                continue
            cases.setdefault(match[1], {})[int(match[2])] = path
        channels = sorted({c for chans in cases.values() for c in chans})
        pairs = []
        for case, chans in sorted(cases.items()):
            ext = volume_suffix(next(iter(chans.values())))
            problems += [f"{images_dir / f'{case}_{c:04d}{ext}'}: channel file missing "
                         f"(other cases have channels {', '.join(f'{c:04d}' for c in channels)})"
                         for c in channels if c not in chans]
            pairs.append(VolumePair(case, [chans[c] for c in sorted(chans)], None))
    elif (root / "images").is_dir():
        mask_dir = root / "masks"
        pairs = [VolumePair(stem, [path], None)
                 for stem, path in _volume_files(root / "images", problems).items()]
    else:
        raise DataError(f"{root}: no 'images' or 'imagesTr' folder; {LAYOUT}")
    if not pairs and not problems:
        raise DataError(f"{root}: no volumes found ({', '.join(VOLUME_SUFFIXES)}); {LAYOUT}")
    masks = _volume_files(mask_dir, problems)
    names = {p.name for p in pairs}
    problems += [f"{path}: mask without an image" for s, path in masks.items() if s not in names]
    for pair in pairs:
        pair.mask_path = masks.get(pair.name)
        if pair.mask_path is None:
            problems.append(f"{pair.image_paths[0]}: no mask (expected {mask_dir / pair.name}"
                            f"{volume_suffix(pair.image_paths[0])})")
        problems += _geometry_problems(pair)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise DataError(f"{len(problems)} problem(s) in the data; fix them and run again:\n"
                        f"{lines}")
    return sorted(pairs, key=lambda pair: pair.name)


def _geometry_problems(pair: VolumePair) -> list[str]:
    """Sizes (and, for NIfTI, affines) of the channel files and the mask, which must match
    the first channel's. Reads headers only."""
    problems, ref = [], None
    for path in [*pair.image_paths, *([pair.mask_path] if pair.mask_path else [])]:
        try:
            head = read_volume_header(path)
        except DataError as err:
            problems.append(str(err))
            continue
        nifti = volume_suffix(path) in NIFTI_SUFFIXES
        size, affine = head.array.shape[1:], head.affine if nifti else None
        if ref is None:
            ref = (path, size, affine)
            continue
        kind = "mask" if path == pair.mask_path else "channel file"
        if size != ref[1]:
            problems.append(f"{path}: {kind} is {'x'.join(map(str, size))} but its image "
                            f"{ref[0].name} is {'x'.join(map(str, ref[1]))} (depth x height "
                            "x width); they must match")
        elif affine is not None and ref[2] is not None \
                and not np.allclose(affine, ref[2], rtol=1e-4, atol=1e-3):
            problems.append(f"{path}: {kind} has another position or spacing (affine) than "
                            f"its image {ref[0].name}; resample it onto the image's grid")
    return problems


def is_volume_folder(root: str | Path) -> bool:
    """Whether a data folder holds volumes, so training can pick 3D by itself.

    True for the nnU-Net layout (``imagesTr``) and for any NIfTI file in ``images`` (or
    ``train/images``). For .tif/.tiff/.npy the first file's header decides (size-1 axes
    dropped): a volume has 4 axes (channels and D, H, W), or ImageJ metadata with several
    slices, or 3 axes whose two ends are both larger than MAX_CHANNELS (4), unless the
    first image's mask is a plane (:func:`unetkit.data.io.is_plane`): then it is a 2D
    image with many channels (multispectral bands), which the 2D reader takes as (C, H, W)
    or (H, W, C). Three axes with an end of at most 4 are what the 2D reader takes as
    (H, W, C) or (C, H, W), so a 2D image folder always stays 2D, and a stack of up to 4
    slices without ImageJ metadata counts as one 2D multi-channel image.
    """
    root = Path(root).expanduser()
    if (root / "imagesTr").is_dir():
        return True
    folder = root / "images" if (root / "images").is_dir() else root / "train" / "images"
    files = list(_volume_files(folder, []).values())
    if any(volume_suffix(p) in NIFTI_SUFFIXES for p in files):
        return True
    if not files:
        return False
    try:
        head = read_volume_header(files[0])
    except DataError:
        return False  # no volume layout, e.g. (H, W, 3): the 2D reader decides
    channels, depth, _, width = head.array.shape
    slices = head.header.get("slices", 1) if isinstance(head.header, dict) else 1
    if channels > 1 or slices > 1:
        return True
    return min(depth, width) > MAX_CHANNELS and not _has_plane_mask(files[0])


def _has_plane_mask(image: Path) -> bool:
    """Whether the mask of ``image`` (same stem in the sibling ``masks`` folder) is a 2-D
    plane: the image is then a 2D image with many channels, not a volume."""
    masks = image.parent.parent / "masks"
    stem = volume_stem(image)
    found = sorted(p for p in masks.iterdir() if p.is_file() and p.stem == stem) \
        if masks.is_dir() else []
    return bool(found) and is_plane(found[0])
