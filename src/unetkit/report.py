"""What a person reads and looks at: metrics.csv, curves.png and predictions.png of a
training run, and the class-colour overlays that predictions are drawn with."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import replacing, writing

# A fixed, colour-blind-friendly class palette (Okabe-Ito), background transparent.
CLASS_COLOURS = np.array(
    [(0, 0, 0), (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66),
     (0, 114, 178), (213, 94, 0), (204, 121, 167)], dtype=np.float32) / 255.0


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.45,
            stretch: bool = True) -> np.ndarray:
    """Blend class colours over an image: image (C,H,W) float, labels (H,W) int -> RGB
    (H,W,3) float in [0,1]. Grey images (C != 3) are shown in grey; class 0 (background)
    is left uncoloured. ``stretch`` maps the 1st-99.5th percentile to [0,1] (for
    normalised images); otherwise the image is taken to be in [0,1] already."""
    image = np.asarray(image, dtype=np.float32)
    rgb = image[:3].transpose(1, 2, 0) if image.shape[0] == 3 else (
        np.repeat(image.mean(axis=0)[..., None], 3, axis=2))
    if stretch:
        low, high = np.percentile(rgb, (1, 99.5))
        rgb = (rgb - low) / max(high - low, 1e-6)
    rgb = np.clip(rgb, 0, 1)
    labels = np.asarray(labels)
    # class k >= 1 takes colour 1 + (k-1) mod 7: the background colour is never reused
    colours = CLASS_COLOURS[1 + (labels - 1) % (len(CLASS_COLOURS) - 1)]
    fg = (labels > 0)[..., None]
    return np.where(fg, (1 - alpha) * rgb + alpha * colours, rgb)


class MetricsLog:
    """metrics.csv with one row per epoch. On resume, rows after the resumed epoch are
    dropped (they belong to the interrupted run) and new rows are appended."""

    def __init__(self, path: str | Path, resume_from_epoch: int | None = None):
        self.path = Path(path)
        self.rows: list[dict[str, float]] = []
        if resume_from_epoch is not None and self.path.is_file():
            with self.path.open(newline="") as f:
                for row in csv.DictReader(f):
                    if int(row["epoch"]) <= resume_from_epoch:
                        self.rows.append({k: _num(v) for k, v in row.items()})
        self._write()

    def append(self, row: dict[str, float]) -> None:
        self.rows.append(dict(row))
        self._write()

    def _write(self) -> None:
        if not self.rows:
            return
        fields = list(self.rows[0])
        for row in self.rows[1:]:
            fields += [k for k in row if k not in fields]
        tmp = self.path.with_suffix(".tmp")
        with writing("metrics", self.path, cleanup=tmp):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with tmp.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=fields)
                writer.writeheader()
                writer.writerows(self.rows)
            tmp.replace(self.path)


def _num(text: str) -> float:
    try:
        return int(text) if text.lstrip("-").isdigit() else float(text)
    except ValueError:
        return math.nan


def _save_figure(fig, path: str | Path, what: str, dpi: int) -> None:
    """Save and close ``fig``; a failed write is one WriteError line, no partial file."""
    fig.tight_layout()
    try:
        with replacing(what, path) as tmp:
            fig.savefig(tmp, dpi=dpi, format=Path(path).suffix.lstrip(".") or "png")
    finally:
        _pyplot().close(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: works on machines without a screen
    import matplotlib.pyplot as plt

    return plt


def plot_curves(rows: Sequence[dict[str, float]], path: str | Path) -> Path:
    """curves.png: training/validation loss, validation Dice/IoU and learning rate per epoch."""
    plt = _pyplot()
    epochs = [r["epoch"] for r in rows]

    def series(key):
        return [r.get(key, math.nan) for r in rows]

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(epochs, series("train_loss"), label="train")
    axes[0].plot(epochs, series("val_loss"), label="validation")
    axes[0].set_title("loss")
    axes[0].legend()
    axes[1].plot(epochs, series("val_dice"), label="Dice")
    axes[1].plot(epochs, series("val_iou"), label="IoU")
    axes[1].set_ylim(0, 1)
    axes[1].set_title("validation (foreground mean)")
    axes[1].legend()
    axes[2].plot(epochs, series("lr"))
    axes[2].set_title("learning rate")
    axes[2].ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    _save_figure(fig, path, "training curves", dpi=100)
    return Path(path)


def plot_predictions(
    samples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    path: str | Path,
    title: str = "",
) -> Path:
    """predictions.png: for each (image (C,H,W), truth (H,W), prediction (H,W)) a row of
    image, truth overlaid, prediction overlaid."""
    _save_figure(predictions_figure(samples, title), path, "prediction figure", dpi=90)
    return Path(path)


def predictions_figure(samples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
                       title: str = ""):
    """The matplotlib figure of :func:`plot_predictions` (also what TensorBoard shows);
    the caller closes it."""
    plt = _pyplot()
    rows = max(1, len(samples))
    fig, axes = plt.subplots(rows, 3, figsize=(9, 3 * rows), squeeze=False)
    for row, (image, truth, pred) in enumerate(samples):
        axes[row, 0].imshow(overlay(image, np.zeros_like(truth)))
        axes[row, 1].imshow(overlay(image, truth))
        axes[row, 2].imshow(overlay(image, pred))
        for col, name in enumerate(("image", "truth", "prediction")):
            axes[row, col].set_title(name if row == 0 else "")
            axes[row, col].axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def outline_objects(image: np.ndarray, labels: np.ndarray, count_text: bool = True,
                    stretch: bool = False) -> np.ndarray:
    """Draw each object's outline over the image: image (C,H,W) float in [0,1], labels
    (H,W) int (0 = background) -> RGB (H,W,3) uint8.

    Grey images (C != 3) are shown in grey. The outline is the object's pixels that have an
    8-neighbour with another label (background or a touching object), so two touching
    objects show two adjacent lines; object k is drawn in colour 1 + (k-1) mod 7 of
    CLASS_COLOURS, so neighbours with consecutive labels differ. ``count_text`` writes
    "N objects" in the top-left corner, light text on a dark box so it reads on any image.
    ``stretch`` as in :func:`overlay` (for normalised images).
    """
    from PIL import Image, ImageDraw

    from .instances import object_boundaries

    rgb = overlay(image, np.zeros(np.shape(labels), dtype=np.int64), stretch=stretch)
    labels = np.asarray(labels)
    edge = object_boundaries(labels, 1)
    colours = CLASS_COLOURS[1 + (labels - 1) % (len(CLASS_COLOURS) - 1)]
    rgb = np.where(edge[..., None], colours, rgb)
    pixels = np.round(rgb * 255.0).astype(np.uint8)
    if not count_text:
        return pixels
    count = int(np.unique(labels[labels > 0]).size)
    text = f"{count} object" + ("" if count == 1 else "s")
    picture = Image.fromarray(pixels)
    draw = ImageDraw.Draw(picture)
    _, _, right, bottom = draw.textbbox((3, 2), text)
    draw.rectangle((0, 0, right + 2, bottom + 2), fill=(0, 0, 0))
    draw.text((3, 2), text, fill=(255, 255, 255))
    return np.asarray(picture, dtype=np.uint8).copy()


def plot_orthogonal(image: np.ndarray, truth: np.ndarray, pred: np.ndarray,
                    path: str | Path, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                    title: str = "") -> Path:
    """Three orthogonal slices (axial, coronal, sagittal) through the centre of the truth's
    foreground, the truth filled and the prediction's outline drawn on top. image (C, D,
    H, W), truth and pred (D, H, W); ``spacing`` (z, y, x) keeps the aspect physical."""
    plt = _pyplot()
    from .instances import object_boundaries

    z, y, x = (int(round(c)) for c in (np.argwhere(truth > 0).mean(axis=0) if truth.any()
                                       else np.array(truth.shape) / 2))
    views = (("axial (z)", (slice(None), z), spacing[1] / spacing[2]),
             ("coronal (y)", (slice(None), slice(None), y), spacing[0] / spacing[2]),
             ("sagittal (x)", (slice(None), slice(None), slice(None), x),
              spacing[0] / spacing[1]))
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    for ax, (name, index, aspect) in zip(axes, views):
        rgb = overlay(image[index], truth[index[1:]])
        edge = object_boundaries(pred[index[1:]].astype(np.int64), 1)
        rgb = np.where(edge[..., None], np.array([0.84, 0.0, 0.0]), rgb)
        ax.imshow(rgb, aspect=aspect, interpolation="nearest")
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(title or "truth filled, prediction outlined (red)")
    _save_figure(fig, path, "orthogonal slices", dpi=90)
    return Path(path)
