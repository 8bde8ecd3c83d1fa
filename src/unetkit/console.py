"""What a training run reports: its first lines (what trains where, the time budget, any
setting that was adjusted), one line per epoch, and where the results are at the end, as
INFO messages of the ``unetkit`` logger (:mod:`unetkit.log`). Progress bars stay in the
loop itself (tqdm)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from .config import Config, format_duration
from .log import get_logger
from .models.unet import valid_output_size
from .runtime import Runtime, precision_name

if TYPE_CHECKING:  # the loop imports this module, not the other way round
    from .training import Run

log = get_logger(__name__)


def announce(run: Run, requested: Config) -> None:
    """The run's first lines: what trains where, and any setting that was adjusted."""
    config = run.config
    log.info(f"unetkit: {config.model.arch} on {run.rt.device} ({_precision_name(run.rt)}), "
               f"{len(run.train_ds)} training / {len(run.val_ds)} validation images, "
               f"{len(run.loader)} steps per epoch, writing to {run.out}")
    if run.budget is not None:
        log.info(f"time budget {format_duration(run.budget.seconds)}: training until "
                   f"{format_duration(run.budget.training_deadline())} (the rest is for the "
                   f"last validation and save), {format_duration(run.budget.remaining())} "
                   "left now")
    if config.data.patch_size != requested.data.patch_size:
        side = valid_output_size(config.data.patch_size, config.model.depth)
        log.info(f"note: patch size {requested.data.patch_size} is not a valid input "
                   f"for this valid-padding U-Net; using {config.data.patch_size} (output "
                   f"{side}x{side}, margin {config.data.context} px)")


def report_epoch(run: Run, row: dict[str, float], improved: bool) -> None:
    skipped = f"  {row['skipped_steps']} step(s) skipped" if row["skipped_steps"] else ""
    of = f"  {format_duration(row['elapsed_s'])}" if run.budget else (
        f"/{run.config.train.epochs}")
    log.info(f"epoch {row['epoch']:3d}{of}  loss "
               f"{row['train_loss']:.4f}  val loss {row['val_loss']:.4f}  val Dice "
               f"{row['val_dice']:.4f}  IoU {row['val_iou']:.4f}  "
               f"{row['images_per_s']:.1f} img/s" + skipped + ("  *best*" if improved else ""))


def report_end(run: Run) -> None:
    best = "n/a" if math.isinf(run.best_dice) else f"{run.best_dice:.4f}"
    log.info(f"done: best validation Dice {best}\n"
               f"  checkpoint  {run.best_dir}\n  last        {run.last_dir}\n"
               f"  metrics     {run.out / 'metrics.csv'}\n  curves      "
               f"{run.out / 'curves.png'}\n  predictions {run.out / 'predictions.png'}")
    if run.budget is not None:
        log.info(f"  time        {run.budget.summary()}")


def _precision_name(rt: Runtime) -> str:
    name = precision_name(rt.dtype) + ("" if rt.dtype == torch.float32 else " autocast")
    return name + (", channels_last" if rt.channels_last else "")


