"""Loggers: epoch hooks (:data:`unetkit.training.EpochHook`) that send each epoch's
metrics somewhere else as well. metrics.csv stays the record; a logger only copies it.

TensorBoard (``--tensorboard``, ``train.tensorboard``): OUT/tensorboard gets one scalar
per metrics.csv column (the column name is the tag, the epoch the step; the learning rate
is ``lr``) and, at the epochs that draw predictions.png, the same figure as
``predictions``. It uses ``torch.utils.tensorboard``, which needs the optional
``tensorboard`` package (``pip install -e '.[tensorboard]'``); without it the setting
fails before anything is read, with one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Config, TrainConfig
from .report import predictions_figure

if TYPE_CHECKING:
    from .training import EpochHook, Run

TENSORBOARD_FOLDER = "tensorboard"
TENSORBOARD_MISSING = ("--tensorboard needs the tensorboard package: "
                       "pip install -e '.[tensorboard]'")


def summary_writer_class() -> type:
    """``torch.utils.tensorboard.SummaryWriter``; ImportError with the one-line fix when
    the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ImportError(TENSORBOARD_MISSING) from None
    return SummaryWriter


def check_loggers(train: TrainConfig) -> None:
    """Refuse a logger whose package is missing, before a run reads or writes anything."""
    if train.tensorboard:
        summary_writer_class()


def logger_hooks(config: Config) -> list[EpochHook]:
    """The epoch hooks the config's settings ask for."""
    if config.train.tensorboard:
        return [TensorBoardLogger(Path(config.train.out) / TENSORBOARD_FOLDER)]
    return []


class TensorBoardLogger:
    """An epoch hook writing the metrics row and the predictions figure to ``folder``.

    The writer opens at the first epoch it sees (on the main process, where hooks run);
    events of a previous run at that epoch or later are hidden (``purge_step``), as
    metrics.csv drops the rows after a resumed epoch. ``close()`` ends the event file.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._writer_class = summary_writer_class()
        self._writer: Any = None

    def __call__(self, run: Run, row: dict[str, float]) -> None:
        epoch = int(row["epoch"])
        if self._writer is None:
            self._writer = self._writer_class(log_dir=str(self.folder), purge_step=epoch)
        for key, value in row.items():
            if key != "epoch":
                self._writer.add_scalar(key, float(value), epoch)
        if run.previews:  # drawn this epoch (predictions.png too)
            title = f"epoch {epoch}: validation Dice {row['val_dice']:.3f}"
            self._writer.add_figure("predictions", predictions_figure(run.previews, title),
                                    epoch)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
