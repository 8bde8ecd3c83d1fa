"""The files of one predicted image when its labels are cleaned up (:mod:`.postprocess`).

A connected component can span the whole image, so the clean-up needs the whole label
map: :class:`PostprocessedWriter` writes the probabilities band by band as usual, keeps
the labels ((H, W) uint8, one byte per pixel, plus one int32 component map per class
while cleaning), and writes the mask and the overlay from the cleaned labels at the end.
Without clean-up, ``predict`` uses the plain
:class:`~unetkit.data.writers.PredictionWriter`, which holds only bands of rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import PostprocessConfig
from .data.io import _unit_to_uint8, mask_pixels
from .data.writers import PredictionWriter
from .outputs import labels_of_probabilities
from .postprocess import postprocess_labels
from .report import overlay

BAND = 256  # rows of mask / overlay written at a time


class PostprocessedWriter(PredictionWriter):
    """:class:`PredictionWriter` whose mask and overlay wait for the whole image and show
    its labels after :func:`~unetkit.postprocess.postprocess_labels`; ``source`` (an open
    image file) gives the overlay's image rows again at the end. ``labels`` holds the
    cleaned (H, W) labels after :meth:`close`."""

    def __init__(self, out_dir: Path, stem: str, size: tuple[int, int], num_classes: int,
                 probabilities: str | None, with_overlay: bool,
                 postprocess: PostprocessConfig, source):
        super().__init__(out_dir, stem, size, num_classes, probabilities, with_overlay)
        self.postprocess, self.source = postprocess, source
        self.labels = np.zeros(size, dtype=np.uint8 if num_classes <= 256 else np.int32)

    def write(self, y0: int, probs: np.ndarray, image: np.ndarray | None = None) -> None:
        """Rows ``y0 ..`` of the probabilities (K, h, W): written if asked for, their
        labels kept. ``image`` is not needed (read again for the overlay)."""
        labels = labels_of_probabilities(probs)
        self.labels[y0:y0 + labels.shape[0]] = labels
        if "probabilities" in self.writers:
            self._write("probabilities", y0, probs)

    def close(self) -> None:
        self.labels = postprocess_labels(self.labels, self.postprocess, self.num_classes)
        for y0 in range(0, self.labels.shape[0], BAND):
            rows = self.labels[y0:y0 + BAND]
            self._write("mask", y0, mask_pixels(self.mask_path, rows, self.num_classes))
            if "overlay" in self.writers:
                image = self.source.read_rows(y0, y0 + rows.shape[0])
                painted = overlay(image, rows, alpha=0.5, stretch=False)
                self._write("overlay", y0, _unit_to_uint8(painted))
        super().close()
