"""Images read a band of rows at a time, for prediction on images larger than memory.

:func:`open_image` gives an :class:`ImageSource`: the image's (C, H, W) shape at once,
and ``read_rows(y0, y1)`` -> float32 (C, y1 - y0, W) in [0, 1], exactly what
:func:`unetkit.data.io.read_image` gives for those rows (same scaling, channel layout and
alpha dropping: the helpers of :mod:`unetkit.data.io` are reused, not rewritten). Never a
whole-image float copy:

* ``.npy``: ``numpy.load(mmap_mode="r")``; rows are read from disk when asked for.
* TIFF, uncompressed and contiguous: ``tifffile.memmap``.
* TIFF, compressed, one page in strips or tiles: only the strips/tiles holding the
  asked-for rows are decoded (tifffile's own decoder; the last ones are kept for the next,
  overlapping request).
* Anything else (PNG, JPEG, BMP, other TIFFs): decoded whole, kept in its stored dtype
  (a 16384 x 16384 8-bit image: 256 MiB, where float32 would be 1 GiB).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np

from .io import (
    TIFF_SUFFIXES,
    DataError,
    _as_chw,
    _check_array,
    _check_file,
    _chw_axes,
    _read_raw,
    _reading,
    _scale_to_unit,
    _tiff_drop_alpha,
    _warn_alpha,
)

__all__ = ["ImageSource", "open_image"]


class ImageSource:
    """An image file read by rows. ``shape``: (C, H, W); ``dtype``: as stored;
    ``how``: "memmap", "tiles" or "whole" (how the file is read). Close it (or use it as a
    context manager) to release the file."""

    def __init__(self, path: Path, native, axes: str, how: str, closer=None):
        self.path = path
        self._native = native  # rows of the stored array: native[y0:y1] (+ channel axes)
        self._axes = axes
        self._closer = closer
        self.how = how
        height, width = native.shape[:2] if axes != "chw" else native.shape[1:3]
        channels = 1 if axes == "hw" else (native.shape[2] if axes == "hwc" else native.shape[0])
        self.shape = (int(channels), int(height), int(width))
        self.dtype = native.dtype

    def read_native(self, y0: int, y1: int) -> np.ndarray:
        """Rows ``y0:y1`` as (C, h, W) in the stored dtype (a view where possible)."""
        y0, y1 = max(0, y0), min(self.shape[1], y1)
        with _reading(self.path, "image"):
            rows = self._native[:, y0:y1] if self._axes == "chw" else self._native[y0:y1]
            return _as_chw(np.asarray(rows), self._axes)

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        """Rows ``y0:y1`` as float32 (C, h, W) in [0, 1], like ``read_image(path)[:, y0:y1]``."""
        image = _scale_to_unit(self.read_native(y0, y1))
        if image.dtype.kind == "f" and not np.isfinite(image).all():
            raise DataError(f"{self.path}: image contains NaN or infinite values")
        return np.ascontiguousarray(image)

    def close(self) -> None:
        if self._closer is not None:
            self._closer()
            self._closer = None
        self._native = None

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_image(path: str | Path) -> ImageSource:
    """An :class:`ImageSource` for ``path``; DataError naming the file when it cannot be
    read (checked here where the format allows: header, shape, data type)."""
    path = Path(path)
    _check_file(path)
    suffix = path.suffix.lower()
    opened = None
    if suffix == ".npy":
        with _reading(path, "image"):
            opened = np.load(path, mmap_mode="r", allow_pickle=False), "memmap", None
    elif suffix in TIFF_SUFFIXES:
        opened = _open_tiff(path)
    if opened is None:  # decoded whole, in its stored dtype (and alpha dropped)
        arr, _ = _read_raw(path, "image")
        opened = arr, "whole", None
    native, how, closer = opened
    if isinstance(native, np.ndarray) and native.ndim > 3:
        native = np.squeeze(native)  # as _chw_axes sees it
    try:
        _check_array(native, path, "image")
        source = ImageSource(path, native, _chw_axes(native.shape, path, "image"), how, closer)
    except BaseException:
        if closer is not None:
            closer()
        raise
    return source


def _open_tiff(path: Path):
    """(rows, how, closer) for a TIFF readable without decoding all of it, else None."""
    import tifffile

    with _reading(path, "image"):
        tif = tifffile.TiffFile(path)
    try:
        page = tif.pages[0]
        if getattr(page, "is_memmappable", False):
            try:
                arr = tifffile.memmap(path, mode="r")  # the series, as asarray() gives it
            except ValueError:  # pages not contiguous: read another way
                pass
            else:
                tif.close()
                return _without_alpha(path, page, arr), "memmap", None
        if len(tif.series[0].pages) == 1 and _TiffRows.supports(page):
            rows = _TiffRows(tif, page)
            if rows.alpha:
                _warn_alpha(path)
            return rows, "tiles", tif.close
    except Exception:  # anything unusual: the whole-file reader decides, with its errors
        pass
    tif.close()
    return None


def _without_alpha(path: Path, page, arr):
    arr, alpha = _tiff_drop_alpha(page, arr)
    if alpha:
        _warn_alpha(path)
    return arr


class _TiffRows:
    """Row access to one compressed TIFF page stored in strips or tiles (one plane:
    ``planarconfig`` contig), decoding only the segments that hold the rows asked for.
    Indexing: ``rows[y0:y1]`` (H first, then W and samples, as the page stores them)."""

    CACHE_BYTES = 64 * 2**20  # decoded segment rows kept for overlapping requests

    @staticmethod
    def supports(page) -> bool:
        return (int(page.planarconfig) == 1 or int(page.samplesperpixel) == 1) and \
            int(getattr(page, "imagedepth", 1)) == 1 and len(page.shape) in (2, 3) and \
            int(page.compression) not in (6, 7, 34892, 33007)  # not JPEG (tables)

    def __init__(self, tif, page):
        self._fh, self._page, self._decode = tif.filehandle, page, page.decode
        self._stored = tuple(page.shape)  # (H, W) or (H, W, samples)
        self.dtype = np.dtype(page.dtype)
        self._seg_h = page.tilelength if page.is_tiled else page.rowsperstrip
        self._seg_w = page.tilewidth if page.is_tiled else self._stored[1]
        self._per_row = -(-self._stored[1] // self._seg_w)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        # Decode one segment now (an unsupported codec fails here, not half-way) and learn
        # the shape once any alpha channel is dropped.
        first, self.alpha = _tiff_drop_alpha(page, self._rows(0, 1))
        self.shape = (self._stored[0], *first.shape[1:])
        self.ndim = len(self.shape)

    def __getitem__(self, rows: slice) -> np.ndarray:
        return _tiff_drop_alpha(self._page, self._rows(rows.start, rows.stop))[0]

    def _rows(self, y0: int, y1: int) -> np.ndarray:
        y1 = min(y1, self._stored[0])
        first, last = y0 // self._seg_h, (y1 - 1) // self._seg_h
        parts = [self._segment_row(i) for i in range(first, last + 1)]
        band = parts[0] if len(parts) == 1 else np.concatenate(parts)
        band = band[y0 - first * self._seg_h : y1 - first * self._seg_h]
        return band[..., 0] if len(self._stored) == 2 else band

    def _segment_row(self, i: int) -> np.ndarray:
        """Rows ``[i * seg_h, (i + 1) * seg_h)`` (clipped) as (h, W, samples)."""
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        height, width = self._stored[0], self._stored[1]
        h = min(self._seg_h, height - i * self._seg_h)
        samples = self._stored[2] if len(self._stored) == 3 else 1
        out = np.zeros((h, width, samples), dtype=self.dtype)
        page = self._page
        for j in range(self._per_row):
            index = i * self._per_row + j
            offset, count = page.dataoffsets[index], page.databytecounts[index]
            if not count:
                continue  # an empty segment reads as zeros, as tifffile does
            with self._fh.lock:
                self._fh.seek(offset)
                data = self._fh.read(count)
            segment = self._decode(data, index)[0]  # (depth, h, w, samples)
            x0 = j * self._seg_w
            w = min(self._seg_w, width - x0)
            out[:, x0 : x0 + w] = segment[0, :h, :w].astype(self.dtype, copy=False)
        self._cache[i] = out
        while len(self._cache) > 1 and sum(a.nbytes for a in self._cache.values()) \
                > self.CACHE_BYTES:
            self._cache.popitem(last=False)
        return out
