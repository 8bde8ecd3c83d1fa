"""Reading images, masks and instance labels from disk, and writing masks and images.

Every reader returns arrays in one fixed layout so the rest of the package never looks at
file formats: images are float32 (C, H, W) in [0, 1] with any number of channels (TIFF and
.npy; their channel axis by :data:`CHANNEL_RULE`), masks int64 (H, W) class indices,
instance labels int32 (H, W). Every problem with a file raises :class:`DataError` whose
message names the file, what was found and what was expected.

The rules (channel layout, scaling by dtype, alpha dropping, mask pixel encoding) are
written once here as small helpers; :mod:`unetkit.data.regions` (images read by rows)
and :mod:`unetkit.data.writers` (outputs written by rows) use the same helpers.
Local PNG/JPEG files larger than Pillow's decompression-bomb limit are read, with a note.
Longer than our usual 400 lines for that reason: the rules and their messages live here.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from unetkit.config import DataConfig, choices_of
from unetkit.log import get_logger

log = get_logger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".npy")
TIFF_SUFFIXES = (".tif", ".tiff")
MASK_ENCODINGS = choices_of(DataConfig, "mask_encoding")  # declared once, in config.py

# Channel counts that every reader recognises at once: a 3-D array with an end axis this
# small has its channels there (the last end first). The 2D image reader takes more (see
# CHANNEL_RULE); the volume reader (unetkit.data.volumes) keeps to this bound.
MAX_CHANNELS = 4
CHANNEL_RULE = (
    "a 3-axis image array has its channels at an end: the last axis when it has at most "
    f"{MAX_CHANNELS} entries, else the first when it has at most {MAX_CHANNELS}, else "
    "whichever end is smaller ((8, 512, 512) is (C, H, W), (512, 512, 8) is (H, W, C))"
)
# How many distinct values/colours an error message lists before it says "... and N more".
_MAX_SHOWN = 10

# Directories whose RGBA images we already warned about: one warning per folder, not per file.
_ALPHA_WARNED: set[str] = set()


class DataError(ValueError):
    """Any problem with the data on disk: unreadable file, bad mask values, missing pair..."""


# --------------------------------------------------------------------------- low level


def _check_file(path: Path) -> None:
    """The file exists and has a supported suffix."""
    if not path.is_file():
        raise DataError(f"{path}: file does not exist")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise DataError(
            f"{path}: unsupported file type {suffix!r}; expected one of {', '.join(IMAGE_SUFFIXES)}"
        )


@contextmanager
def _reading(path: Path, what: str) -> Iterator[None]:
    """Any failure inside the block (corrupt files raise many exception types) becomes one
    DataError naming the file."""
    try:
        yield
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"{path}: cannot read {what}: {type(err).__name__}: {err}") from err


def _check_array(arr, path: Path, what: str) -> None:
    """A numeric, non-empty array (a numpy array, memmap, or anything with dtype and shape)."""
    dtype = getattr(arr, "dtype", None)
    if dtype is None or not hasattr(arr, "shape") or np.dtype(dtype).kind not in "biuf":
        raise DataError(f"{path}: {what} has unsupported data type {dtype or '?'}")
    if math.prod(arr.shape) == 0:
        raise DataError(f"{path}: {what} is empty (shape {arr.shape})")


def _warn_alpha(path: Path) -> None:
    folder = str(path.parent)
    if folder not in _ALPHA_WARNED:
        _ALPHA_WARNED.add(folder)
        warnings.warn(
            f"{path}: dropping the alpha (transparency) channel of RGBA images in {folder} "
            "(only the colour channels are used; reported once per folder)",
            stacklevel=3,
        )


def _open_pil(path: Path) -> Image.Image:
    """``Image.open`` that also opens local images above Pillow's decompression-bomb limit
    (``Image.MAX_IMAGE_PIXELS``, ~89 Mpx; a 16384 x 16384 scan has 268), with a one-line
    note on stderr instead of Pillow's error: the user chose the file, it is not an upload."""
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # the check is done below, as a note
    try:
        img = Image.open(path)
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    pixels = img.width * img.height
    if limit and pixels > limit:
        log.warning(f"note: {path}: {img.width}x{img.height} image ({pixels / 1e6:.0f} Mpx) "
                    f"is above Pillow's decompression-bomb limit of {limit / 1e6:.0f} Mpx; "
                    "reading it anyway (a local file)")
    return img


def _pil_array(img: Image.Image) -> np.ndarray:
    """``np.array(img)`` of a loaded image, copied a band of rows at a time: numpy's
    conversion goes through ``img.tobytes()``, a third whole-image copy at once."""
    rows = max(1, 2**24 // max(1, img.width * 4))  # bands of about 16 MiB
    bands = (np.asarray(img.crop((0, y, img.width, min(img.height, y + rows))))
             for y in range(0, img.height, rows))
    first = next(bands, None)
    if first is None or first.shape[0] == img.height:
        return np.array(img) if first is None else np.array(first)
    out = np.empty((img.height, *first.shape[1:]), dtype=first.dtype)
    out[: len(first)] = first
    y = len(first)
    for band in bands:
        out[y : y + len(band)] = band
        y += len(band)
    return out


def _read_pil(path: Path, for_mask: bool) -> tuple[np.ndarray, bool, bool]:
    """Decode with Pillow. Returns (array (H,W) or (H,W,C), alpha_dropped, palette_indices).

    ``palette_indices`` is True when the file is a palette-mode ('P') PNG read as a mask:
    the array then holds the palette indices, which are the class indices.
    """
    with _open_pil(path) as img:
        img.load()  # decode now, inside the caller's error handling
        mode = img.mode
        fmt = img.format
        alpha = False
        if mode == "P" and for_mask:
            return _pil_array(img), False, True
        if mode in ("P", "PA"):
            # Images stored with a colour table: the colours, not the indices, are the data.
            img = img.convert("RGBA" if mode == "PA" or "transparency" in img.info else "RGB")
            mode = img.mode
        if mode in ("RGBA", "LA", "RGBa", "La"):
            alpha = True
            img = img.convert("RGB" if mode.startswith("RGB") else "L")
        elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
            img = img.convert("RGB")
        arr = _pil_array(img)
        if mode == "I" and fmt == "PNG" and arr.size and arr.min() >= 0 and arr.max() <= 65535:
            # Some Pillow versions hold 16-bit PNGs in 32-bit mode "I": keep the 16-bit range.
            arr = arr.astype(np.uint16)
        return arr, alpha, False


def _read_tiff(path: Path) -> tuple[np.ndarray, bool]:
    """Decode with tifffile. Returns (array as stored, alpha_dropped)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return _tiff_drop_alpha(tif.pages[0], tif.asarray())


def _tiff_drop_alpha(page, arr: np.ndarray) -> tuple[np.ndarray, bool]:
    """(array without an alpha channel, alpha_dropped) for the image data ``arr`` (or a
    band of its rows) of the TIFF page ``page``; a view, never a copy."""
    extra = tuple(int(e) for e in (getattr(page, "extrasamples", None) or ()))
    planar = int(getattr(page, "planarconfig", 1)) == 2
    # ExtraSamples 1 and 2 are associated / unassociated alpha: transparency, not data.
    if extra and extra[-1] in (1, 2) and arr.ndim == 3:
        if planar and arr.shape[0] <= MAX_CHANNELS:
            arr = arr[:-1]
        elif arr.shape[-1] <= MAX_CHANNELS:
            arr = arr[..., :-1]
        return arr, True
    return arr, False


def _read_raw(path: str | Path, what: str, for_mask: bool = False) -> tuple[np.ndarray, bool]:
    """Read any supported file as stored. Returns (array, palette_indices)."""
    path = Path(path)
    _check_file(path)
    suffix = path.suffix.lower()
    palette_indices = False
    alpha = False
    with _reading(path, what):
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif suffix in TIFF_SUFFIXES:
            arr, alpha = _read_tiff(path)
        else:
            arr, alpha, palette_indices = _read_pil(path, for_mask)
    if alpha:
        _warn_alpha(path)
    _check_array(arr, path, what)
    return arr, palette_indices


def _chw_axes(shape: tuple[int, ...], path: Path, what: str) -> str:
    """How an array of ``shape`` (squeezed when it has more than 3 axes) holds (C, H, W):
    "hw", "hwc" or "chw", by :data:`CHANNEL_RULE`."""
    if len(shape) > 3:
        shape = tuple(s for s in shape if s != 1)
    if len(shape) == 2:
        return "hw"
    if len(shape) == 3:
        first, last = shape[0], shape[-1]
        if last <= MAX_CHANNELS:
            # Also the choice when both ends are small (tiny image): Pillow's and most tools'
            # order is channels-last.
            return "hwc"
        if first <= MAX_CHANNELS:
            return "chw"
        # More channels (multispectral bands): fewer bands than pixels along a side.
        if last < first:
            return "hwc"
        if first < last:
            return "chw"
        raise DataError(f"{path}: {what} has shape {shape}: both ends have {first} entries, "
                        "so neither is clearly the channel axis; save it as (C, H, W) or "
                        "(H, W, C) with C the smaller end")
    raise DataError(
        f"{path}: {what} has shape {shape}; expected (H, W), (H, W, C) or (C, H, W)"
    )


def _as_chw(arr: np.ndarray, axes: str) -> np.ndarray:
    """A (C, H, W) view of ``arr`` laid out as ``axes`` (see :func:`_chw_axes`)."""
    arr = np.squeeze(arr) if arr.ndim > 3 else arr
    if axes == "hw":
        return arr[None]
    return np.moveaxis(arr, -1, 0) if axes == "hwc" else arr


def _to_chw(arr: np.ndarray, path: Path, what: str) -> np.ndarray:
    """(H,W), (H,W,C) or (C,H,W), channels by :data:`CHANNEL_RULE` -> (C,H,W) (a view)."""
    return _as_chw(arr, _chw_axes(arr.shape, path, what))


def _scale_to_unit(arr: np.ndarray) -> np.ndarray:
    """Scale by the dtype's range to float32 in [0, 1] (floats are kept as they are)."""
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if arr.dtype.kind == "f":
        return arr.astype(np.float32, copy=False)
    # uint8 -> /255, uint16 -> /65535, int32 etc. -> / the dtype's maximum.
    top = float(np.iinfo(arr.dtype).max)
    return (arr.astype(np.float64) / top).astype(np.float32)


def _format_values(values: np.ndarray) -> str:
    values = np.sort(values)
    shown = ", ".join(_fmt_number(v) for v in values[:_MAX_SHOWN])
    if len(values) > _MAX_SHOWN:
        shown += f", ... ({len(values)} distinct values in all, max {_fmt_number(values[-1])})"
    return "{" + shown + "}"


def _fmt_number(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else f"{value:g}"


# --------------------------------------------------------------------------- images


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as float32 (C, H, W) in [0, 1].

    Scaling follows the stored dtype: uint8 / 255, uint16 / 65535, other integers / their
    dtype's maximum, bool -> 0/1, floats unchanged. Grayscale gives C = 1; the alpha channel
    of RGBA images is dropped (with a warning); palette-mode images are converted to RGB.
    Pillow reads png/jpg/bmp (1-4 channels), tifffile reads tif/tiff (16-bit, multi-page,
    (H,W,C) or (C,H,W)), numpy reads .npy; TIFF and .npy may hold any number of channels
    (multispectral bands), found by :data:`CHANNEL_RULE`. Raises DataError naming the file
    when it cannot be read.
    """
    path = Path(path)
    arr, _ = _read_raw(path, "image")
    chw = _to_chw(arr, path, "image")
    image = _scale_to_unit(chw)
    if not np.isfinite(image).all():
        raise DataError(f"{path}: image contains NaN or infinite values")
    return np.ascontiguousarray(image)


def is_plane(path: str | Path) -> bool:
    """Whether an image file holds one 2-D plane: (H, W), or with at most MAX_CHANNELS
    channels at an end (a mask or label image of 2D data, never a volume's). From the
    header only for .npy and TIFF; PNG/JPEG/BMP always are. False when unreadable."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
        elif suffix in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                shape = tif.series[0].shape
        else:
            return suffix in IMAGE_SUFFIXES
    except Exception:  # noqa: BLE001 - unreadable: not known to be a plane
        return False
    shape = tuple(s for s in shape if s != 1)
    return len(shape) == 2 or (len(shape) == 3 and min(shape[0], shape[-1]) <= MAX_CHANNELS)


def _unit_to_uint8(arr: np.ndarray) -> np.ndarray:
    """[0, 1] floats (clipped) -> uint8 pixels 0..255, rounded."""
    return np.round(np.clip(np.asarray(arr, dtype=np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write float [0, 1] (C, H, W) with C in {1, 3, 4}, or (H, W), as an 8-bit PNG.

    Values outside [0, 1] are clipped. Parent folders are created.
    """
    path = Path(path)
    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim == 3:
        if arr.shape[0] not in (1, 3, 4):
            raise ValueError(f"{path}: cannot write {arr.shape[0]} channels as PNG (1, 3 or 4)")
        arr = arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)
    elif arr.ndim != 2:
        raise ValueError(f"{path}: expected image (C, H, W) or (H, W), got shape {arr.shape}")
    pixels = _unit_to_uint8(arr)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG")


# --------------------------------------------------------------------------- masks


def _parse_palette(palette: dict[str, int], num_classes: int, ignore_index: int | None,
                   path: Path) -> dict[int, int]:
    """{"r,g,b": class} -> {packed 0xRRGGBB colour: class}."""
    packed: dict[int, int] = {}
    for key, cls in palette.items():
        parts = str(key).replace(" ", "").split(",")
        try:
            rgb = [int(p) for p in parts]
        except ValueError:
            rgb = []
        if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
            raise DataError(f"{path}: palette key {key!r} is not a colour; expected 'r,g,b' "
                            "with each value 0..255, e.g. '255,0,0'")
        cls = int(cls)
        if not (0 <= cls < num_classes or cls == ignore_index):
            raise DataError(f"{path}: palette maps {key!r} to class {cls}; expected a class "
                            f"index 0..{num_classes - 1}" + _ignore_text(ignore_index))
        packed[(rgb[0] << 16) | (rgb[1] << 8) | rgb[2]] = cls
    return packed


def _map_colours(rgb: np.ndarray, palette: dict[str, int], num_classes: int,
                 ignore_index: int | None, path: Path) -> np.ndarray:
    """(H, W, 3) integer colours -> (H, W) int64 classes through the palette."""
    lookup = _parse_palette(palette, num_classes, ignore_index, path)
    rgb = rgb.astype(np.int64)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    colours, inverse = np.unique(packed, return_inverse=True)
    unknown = [int(c) for c in colours if int(c) not in lookup]
    if unknown:
        listed = ", ".join(f"'{c >> 16},{(c >> 8) & 255},{c & 255}'" for c in unknown[:_MAX_SHOWN])
        more = f" ... ({len(unknown)} in all)" if len(unknown) > _MAX_SHOWN else ""
        known = ", ".join(f"'{k}'" for k in palette)
        raise DataError(
            f"{path}: mask has colour(s) not in the palette: {listed}{more}; "
            f"the palette lists {known}. Add every colour to the palette (\"r,g,b\": class)"
        )
    classes = np.array([lookup[int(c)] for c in colours], dtype=np.int64)
    return classes[inverse.reshape(packed.shape)]


def _ignore_text(ignore_index: int | None) -> str:
    return "" if ignore_index is None else f" (plus {ignore_index} = ignore)"


def _mask_error(path: Path, values: np.ndarray, num_classes: int, encoding: str,
                ignore_index: int | None) -> DataError:
    """The message for the commonest failure: mask values that are not class indices."""
    expected = f"class indices 0..{num_classes - 1}{_ignore_text(ignore_index)}"
    if num_classes == 2 and encoding != "index":
        expected += ", or 0/255 for a binary mask"
    msg = (f"{path}: mask values {_format_values(values)} do not fit mask encoding "
           f"{encoding!r}; expected {expected}.")
    lo, hi = float(values.min()), float(values.max())
    whole = bool(np.all(values == np.round(values)))
    hints = []
    if num_classes == 2 and hi == 255 and len(values) > 2:
        hints.append("Values between 0 and 255 suggest a resized, anti-aliased or JPEG-"
                     "compressed mask: save masks losslessly (PNG/TIFF), resize with nearest "
                     "neighbour.")
    elif whole and lo >= 0 and num_classes <= hi < 255:
        hints.append(f"If these are class indices, set num_classes to {int(hi) + 1} "
                     "(background included).")
    if encoding == "index" and num_classes == 2 and set(values.tolist()) <= {0, 255}:
        hints.append("For 0/255 masks use mask encoding 'auto' or 'binary'.")
    if hi == 255 and num_classes > 2 and ignore_index is None:
        hints.append("If 255 marks pixels to leave out of the loss, set ignore_index to 255.")
    if lo < 0:
        hints.append("Class indices cannot be negative.")
    return DataError(" ".join([msg, *hints]))


def read_mask(path: str | Path, num_classes: int, encoding: str = "auto",
              palette: dict[str, int] | None = None,
              ignore_index: int | None = None) -> np.ndarray:
    """Read a mask file as int64 (H, W) class indices 0..num_classes-1 (or ignore_index).

    Encodings:
      - "binary": values {0, 1} or {0, 255} (255 -> class 1).
      - "index": class indices 0..K-1 (plus ignore_index).
      - "palette": an RGB mask; ``palette`` maps "r,g,b" to a class index and every colour in
        the mask must be listed. Without a palette, a palette-mode ('P') PNG gives its
        indices directly (with one, its colours are mapped).
      - "auto": palette when a palette is given and the mask is RGB; else a single-channel
        mask of class indices 0..K-1 (plus ignore_index), or, for K == 2, 0/255.
    An RGB mask whose three channels are equal is read as grayscale. When ignore_index is
    255, the value 255 always means "ignore" (never binary foreground). Anything else raises
    DataError naming the file, the values found and what was expected.
    """
    path = Path(path)
    if encoding not in MASK_ENCODINGS:
        raise ValueError(f"unknown mask encoding {encoding!r}; expected one of {MASK_ENCODINGS}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (background included), got {num_classes}")
    use_palette = bool(palette) and encoding in ("palette", "auto")
    # With a palette given, a palette-mode PNG is read as colours and mapped like RGB, since
    # its colour-table order need not match the class numbers; without one, its indices are
    # the classes.
    arr, palette_indices = _read_raw(path, "mask", for_mask=not use_palette)

    # Bring to (H, W) or (H, W, 3).
    if arr.ndim == 3:
        chw = _to_chw(arr, path, "mask")
        if chw.shape[0] == 1:
            arr = chw[0]
        elif chw.shape[0] in (3, 4):
            arr = np.moveaxis(chw[:3], 0, -1)  # a 4th channel here is alpha: ignored
        else:
            raise DataError(f"{path}: mask has {chw.shape[0]} channels; expected a "
                            "single-channel mask or an RGB colour mask")
    elif arr.ndim != 2:
        raise DataError(f"{path}: mask has shape {arr.shape}; expected (H, W) or (H, W, 3)")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or not np.all(arr == np.round(arr)):
            bad = np.unique(arr[~(np.isfinite(arr) & (arr == np.round(arr)))])
            raise DataError(f"{path}: mask has non-integer values {_format_values(bad)}; "
                            "expected whole-number class indices")

    if arr.ndim == 3:
        if use_palette:
            return _map_colours(arr, palette, num_classes, ignore_index, path)
        if np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
            arr = arr[..., 0]  # a grayscale mask saved as RGB
        else:
            colours = np.unique(arr.reshape(-1, 3), axis=0)
            listed = ", ".join(f"'{r},{g},{b}'" for r, g, b in colours[:_MAX_SHOWN].tolist())
            more = f" ... ({len(colours)} in all)" if len(colours) > _MAX_SHOWN else ""
            raise DataError(
                f"{path}: colour mask with colours {listed}{more} but no palette; expected a "
                "single-channel mask of class indices, or set palette (\"r,g,b\": class index)"
            )

    if encoding == "palette":
        if palette_indices:
            encoding = "index"  # the palette indices are the classes
        elif palette:
            rgb = np.repeat(arr[..., None], 3, axis=-1)  # gray value v is colour 'v,v,v'
            return _map_colours(rgb, palette, num_classes, ignore_index, path)
        else:
            raise DataError(f"{path}: mask encoding 'palette' needs a palette "
                            "(\"r,g,b\": class index) or a palette-mode PNG")

    values = np.unique(arr)
    allowed = set(range(num_classes))
    if ignore_index is not None:
        allowed.add(ignore_index)
    is_index = all(float(v) in allowed for v in values)
    zero_255 = ignore_index != 255 and bool(np.all(np.isin(values, (0, 255))))

    if encoding == "binary":
        if num_classes != 2:
            raise DataError(f"{path}: mask encoding 'binary' needs num_classes=2, "
                            f"got {num_classes}")
        if zero_255:
            return (arr == 255).astype(np.int64)
        if is_index:
            return arr.astype(np.int64)
    elif encoding == "index":
        if is_index:
            return arr.astype(np.int64)
    else:  # auto
        if is_index:
            return arr.astype(np.int64)
        if num_classes == 2 and zero_255:
            return (arr == 255).astype(np.int64)
    raise _mask_error(path, values, num_classes, encoding, ignore_index)


def read_instances(path: str | Path) -> np.ndarray:
    """Read an instance label image as int32 (H, W): 0 = background, 1..N objects.

    Colour-coded instance images (each object a distinct RGB colour, black background) are
    turned into labels 1..N in colour order.
    """
    path = Path(path)
    arr, _ = _read_raw(path, "instance labels", for_mask=True)
    if arr.ndim == 3:
        chw = _to_chw(arr, path, "instance labels")
        if chw.shape[0] == 1 or all(np.array_equal(chw[0], c) for c in chw[1:3]):
            arr = chw[0]
        else:
            rgb = chw[:3].astype(np.int64)
            packed = (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]
            colours, inverse = np.unique(packed, return_inverse=True)
            # Black keeps label 0; every other colour gets the next label.
            labels = np.cumsum(colours != 0) * (colours != 0)
            return labels[inverse.reshape(packed.shape)].astype(np.int32)
    if arr.ndim != 2:
        raise DataError(f"{path}: instance labels have shape {arr.shape}; expected (H, W)")
    if arr.dtype.kind == "f" and not np.all(arr == np.round(arr)):
        raise DataError(f"{path}: instance labels must be whole numbers (0 = background)")
    if arr.dtype.kind in "iuf" and arr.min() < 0:
        raise DataError(f"{path}: instance labels have negative value {_fmt_number(arr.min())};"
                        " expected 0 = background, 1..N objects")
    if arr.max() > np.iinfo(np.int32).max:
        raise DataError(f"{path}: instance label {_fmt_number(arr.max())} exceeds int32")
    return arr.astype(np.int32)


def write_mask(path: str | Path, mask: np.ndarray, num_classes: int) -> None:
    """Write (H, W) class indices as an 8-bit PNG.

    Binary masks (num_classes == 2) are written as 0/255 so a person can see them (read_mask
    turns them back into 0/1); otherwise the class indices are written as they are.
    """
    path = Path(path)
    pixels = mask_pixels(path, mask, num_classes)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG")


def mask_pixels(path: str | Path, mask: np.ndarray, num_classes: int) -> np.ndarray:
    """(H, W) class indices (or a band of rows of them) -> the uint8 pixels a mask file
    holds: 0/255 for a binary task (num_classes == 2), else the indices. ValueError
    naming ``path`` when they do not fit."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{path}: expected mask (H, W), got shape {mask.shape}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(f"{path}: mask values {int(mask.min())}..{int(mask.max())} do not fit "
                         "an 8-bit PNG (0..255)")
    if num_classes == 2:
        # For integers 0 <= values <= 1 is the same test as np.unique, without the sort.
        whole = mask.dtype.kind in "iu" and (not mask.size or mask.max() <= 1)
        values = np.unique(mask) if not whole else None
        if values is not None and not np.all(np.isin(values, (0, 1))):
            raise ValueError(f"{path}: binary mask has values {_format_values(values)}; "
                             "expected 0/1")
        return (mask == 1).astype(np.uint8) * np.uint8(255)
    return mask.astype(np.uint8)
