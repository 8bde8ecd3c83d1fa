"""Cross-validation: ``unetkit train --folds K`` trains K runs, run i validating on the
i-th of K parts of the data, each in OUT/fold_i, summarises the folds' best validation
scores (OUT/folds.csv and a printed table), and decides the post-processing from the
out-of-fold predictions (:mod:`unetkit.crossval_postprocess`).

The folds share one normalisation (statistics of all training images, as nnU-Net
computes them), so their checkpoints form an ensemble: ``unetkit predict --checkpoint
OUT`` averages the K models' probabilities (:mod:`unetkit.ensemble`).
"""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

from .config import Config, format_duration
from .errors import writing
from .log import get_logger

log = get_logger(__name__)


def shared_statistics(config: Config) -> Config:
    """``config`` with the per-channel mean/std of ALL its images filled in (for the
    "dataset" normalisation), so every fold normalises alike; unchanged otherwise."""
    data = config.data
    if data.normalize not in ("auto", "dataset") or data.mean or config.model.pretrained:
        return config
    from .data.folder import dataset_items
    from .data.pairing import compute_stats
    from .data.volume_folder import is_volume_data

    if config.model.spatial_dims == 3 or is_volume_data(data):
        return config  # volumes normalise per volume (or from the CT foreground)
    mean, std = compute_stats(dataset_items(data, config.train.seed))
    return dataclasses.replace(config, data=dataclasses.replace(
        data, normalize="dataset", mean=tuple(mean), std=tuple(std)))


def fold_config(config: Config, folds: int, fold: int) -> Config:
    """The run of fold ``fold``: its split and its folder OUT/fold_<fold>."""
    out = Path(config.train.out) / f"fold_{fold}"
    train = dataclasses.replace(config.train, out=str(out))
    if config.train.resume and not (out / "checkpoints" / "last").is_dir():
        train = dataclasses.replace(train, resume=False)  # not started before: start it
    return dataclasses.replace(config, train=train, data=dataclasses.replace(
        config.data, folds=folds, fold=fold))


def train_folds(config: Config, folds: int, progress: bool = True,
                plan: dict | None = None, explicit: frozenset[str] | None = None) -> dict:
    """Train the ``folds`` runs and write OUT/folds.csv. With ``train.time`` each fold gets
    an equal share of the time; ``explicit`` as for :func:`unetkit.training.train`.
    Returns {"rows": per-fold rows, "mean": mean row, "csv"}."""
    from .training import train

    if folds < 2:
        raise ValueError(f"--folds {folds}: expected >= 2 (one fold is a plain run)")
    config = shared_statistics(config)
    if config.train.time is not None:
        config = dataclasses.replace(config, train=dataclasses.replace(
            config.train, time=config.train.time / folds))
    rows = []
    for fold in range(folds):
        if progress:
            log.info(f"--- fold {fold + 1} of {folds}")
        result = train(fold_config(config, folds, fold), progress=progress, plan=plan,
                       explicit=explicit)
        rows.append(fold_row(fold, result.history))
    summary = {"rows": rows, "mean": mean_row(rows),
               "csv": Path(config.train.out) / "folds.csv"}
    write_folds_csv(summary)
    if config.data.task == "semantic":  # the instance task's objects come from watershed
        from .crossval_postprocess import decide_postprocessing

        summary["postprocess"] = decide_postprocessing(config.train.out, folds)
    return summary


def fold_row(fold: int, history: list[dict]) -> dict:
    """A fold's best epoch (by validation Dice): its scores."""
    scored = [r for r in history if not math.isnan(r.get("val_dice", math.nan))]
    best = max(scored or history, key=lambda r: r.get("val_dice", -1.0))
    keep = {k: v for k, v in best.items() if k == "epoch" or k.startswith("val_")}
    return {"fold": fold, **keep, "elapsed_s": history[-1].get("elapsed_s", math.nan)}


def mean_row(rows: list[dict]) -> dict:
    keys = [k for k in rows[0] if k not in ("fold", "epoch")]
    return {"fold": "mean", **{k: sum(r[k] for r in rows) / len(rows) for k in keys}}


def write_folds_csv(summary: dict) -> None:
    rows = summary["rows"] + [summary["mean"]]
    with writing("the cross-validation summary", summary["csv"]):
        with open(summary["csv"], "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(summary["rows"][0]))
            writer.writeheader()
            writer.writerows(rows)


def format_folds(summary: dict) -> str:
    """The per-fold table: best epoch, validation Dice and IoU, time; then the mean."""
    lines = [f"{'fold':>5} {'epoch':>6} {'val Dice':>9} {'val IoU':>8} {'time':>8}"]
    for r in summary["rows"] + [summary["mean"]]:
        epoch = "" if r["fold"] == "mean" else f"{int(r['epoch'])}"
        lines.append(f"{r['fold']!s:>5} {epoch:>6} {r['val_dice']:>9.4f} {r['val_iou']:>8.4f} "
                     f"{format_duration(r['elapsed_s']):>8}")
    lines.append(f"summary: {summary['csv']}")
    if "postprocess" in summary:
        from .crossval_postprocess import format_decision

        lines.append(format_decision(summary["postprocess"]))
    return "\n".join(lines)
