"""Checkpoints: a folder holding everything needed to use or resume a model.

    CKPT/
      model.safetensors   the weights (safetensors: loading runs no pickled code)
      config.json         the full Config: model, classes, normalisation, training settings
      metrics.json        epoch and validation scores when it was written
      state.pt            optimizer, scheduler, loss scaler, epoch and best Dice for
                          --resume (random streams are not saved: they restart from the
                          seed, the rank and the epoch); read with
                          torch.load(weights_only=True): tensors and plain containers
                          only, never arbitrary pickled objects

A checkpoint is written into a temporary folder and renamed into place, so a crash while
saving never destroys the previous checkpoint.

:func:`load_checkpoint` (and :func:`load_config`) also take a run folder (``RUN/``: its
``checkpoints/best``) or a single ``.safetensors`` file with the ``config.json`` beside it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .config import Config, SettingError
from .divergence import nonfinite_tensors
from .errors import replacing, writing
from .models import build_model  # re-exported: callers import it from here
from .models.auxiliary import match_auxiliary
from .models.fuse import fold_batchnorm as fold_conv_batchnorm

WEIGHTS, CONFIG, METRICS, STATE = "model.safetensors", "config.json", "metrics.json", "state.pt"
PLAN = "plan.json"  # the self-configured plan the run trained with, when it had one


class CheckpointError(ValueError):
    """A checkpoint folder that is missing, incomplete or does not match its model."""


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DistributedDataParallel / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def save_checkpoint(
    folder: str | Path,
    model: nn.Module,
    config: Config,
    metrics: dict[str, Any] | None = None,
    state: dict[str, Any] | None = None,
    plan: dict[str, Any] | None = None,
) -> Path:
    """Write ``folder`` atomically (temporary sibling, then rename); ``plan`` is written
    as plan.json beside the weights.

    Refuses (CheckpointError) weights with a NaN or inf, so a saved checkpoint is always
    usable. A failed write (disk full...) raises WriteError and leaves the previous
    checkpoint as it was, with no temporary folder behind.
    """
    folder = Path(folder)
    bad = nonfinite_tensors(unwrap(model))
    if bad:
        raise CheckpointError(f"{folder}: not saved: {len(bad)} tensor(s) hold NaN or inf "
                              f"({', '.join(bad[:3])})")
    tmp = folder.with_name(folder.name + ".tmp")
    with writing("checkpoint", folder, cleanup=tmp):
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        weights = {k: v.detach().cpu().contiguous()
                   for k, v in unwrap(model).state_dict().items()}
        save_file(weights, str(tmp / WEIGHTS))
        config.save(tmp / CONFIG)
        (tmp / METRICS).write_text(json.dumps(_jsonable(metrics or {}), indent=2) + "\n")
        if state is not None:
            torch.save(state, tmp / STATE)
        if plan is not None:
            (tmp / PLAN).write_text(json.dumps(_jsonable(plan), indent=2) + "\n")
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def load_config(path: str | Path) -> Config:
    """The Config saved with a checkpoint; ``path`` as for :func:`load_checkpoint`."""
    _, config_path = checkpoint_files(path)
    return _read_config(config_path)


def _read_config(config_path: Path) -> Config:
    try:
        return Config.load(config_path)
    except ValueError as err:
        raise CheckpointError(str(err)) from err


def load_checkpoint(
    folder: str | Path | Sequence[str | Path], device: str | torch.device = "cpu",
    fold_batchnorm: bool = False
) -> tuple[nn.Module, Config]:
    """The model (in eval mode, on ``device``) and the Config saved in ``folder``.

    ``folder`` is a checkpoint folder (``RUN/checkpoints/best``: model.safetensors and
    config.json), a run folder (``RUN/``: its ``checkpoints/best`` is loaded), or a
    ``.safetensors`` weight file with the ``config.json`` it was saved with beside it.
    Anything else raises a one-line CheckpointError naming the path. Several of these, or
    a cross-validation folder (``train --folds``: OUT/fold_*), load as one
    :class:`~unetkit.ensemble.Ensemble` that averages the models' probabilities; their
    configs must agree (the first one's is returned).

    ``fold_batchnorm=True`` folds each BatchNorm into the convolution before it: the same
    outputs with fewer passes over memory, for prediction and export (not for training).

    The model is the inference network: a checkpoint trained with deep supervision
    (``model.deep_supervision``) loads without its auxiliary heads, whose weights are
    left out; the returned Config still says how it was trained.
    """
    paths = ([folder] if isinstance(folder, (str, Path)) else list(folder))
    if len(paths) == 1:
        paths = fold_checkpoints(paths[0]) or paths
    if len(paths) > 1:
        return _load_ensemble(paths, device, fold_batchnorm)
    weights_path, config_path = checkpoint_files(paths[0])
    config = _read_config(config_path)
    try:
        model = build_model(dataclasses.replace(config.model, deep_supervision=False),
                            load_pretrained=False)
    except SettingError as err:  # e.g. an encoder registered by code not imported here
        raise CheckpointError(f"{config_path}: {err}") from err
    load_weights(model, weights_path, config_path)
    if fold_batchnorm:
        model = fold_conv_batchnorm(model)
    return model.to(device).eval(), config


def load_weights(model: nn.Module, path: str | Path, config_path: Path | None = None
                 ) -> nn.Module:
    """``model`` (in place) with the weights of checkpoint ``path`` (any form
    :func:`load_checkpoint` takes), strictly but for the auxiliary heads of deep
    supervision: those the model lacks are left out, those the checkpoint lacks keep
    their initial values. E.g. fine-tune a checkpoint trained without heads with them::

        model = build_model(dataclasses.replace(config.model, deep_supervision=True))
        load_weights(model, "runs/mine")
    """
    weights_path, found_config = checkpoint_files(path)
    try:
        weights = load_file(str(weights_path))
    except Exception as err:
        raise CheckpointError(f"{weights_path}: cannot read weights: {err}") from err
    try:
        model.load_state_dict(match_auxiliary(weights, model), strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{weights_path}: weights do not match the model in "
                              f"{config_path or found_config}: {err}") from err
    return model


# What load_checkpoint takes, for its errors.
EXPECTED = (f"expected a run folder (RUN/), a checkpoint folder with {WEIGHTS} and {CONFIG} "
            f"(RUN/checkpoints/best), or a .safetensors file with {CONFIG} beside it")


def fold_checkpoints(path: str | Path) -> list[Path]:
    """The best checkpoints of a cross-validation folder's folds (OUT/fold_N), in fold
    order; [] for anything else."""
    path = Path(path).expanduser()
    folds = sorted(path.glob("fold_*/checkpoints/best"),
                   key=lambda p: int(p.parent.parent.name.split("_")[1]))
    return folds if path.is_dir() and not (path / WEIGHTS).exists() else []


# What members of an ensemble must share: the network and how images are prepared for it.
_SHARED = ("model", "data.num_classes", "data.task", "data.normalize", "data.mean",
           "data.std", "data.intensity_range", "data.patch_size", "data.patch_depth")


def _load_ensemble(paths, device, fold_batchnorm: bool) -> tuple[nn.Module, Config]:
    from .ensemble import Ensemble

    models, configs = zip(*(load_checkpoint(p, device, fold_batchnorm) for p in paths))
    first = configs[0].to_dict()
    for path, config in zip(paths[1:], configs[1:]):
        other = config.to_dict()
        for key in _SHARED:
            section, _, name = key.partition(".")
            a, b = first[section], other[section]
            if name:
                a, b = a[name], b[name]
            if a != b:
                raise CheckpointError(f"{path}: {key} differs from {paths[0]}'s; an "
                                      "ensemble needs checkpoints of one configuration")
    return Ensemble(list(models)).eval(), configs[0]


def checkpoint_files(path: str | Path) -> tuple[Path, Path]:
    """(weights file, config.json) of a checkpoint folder, a run folder (its
    ``checkpoints/best``) or a ``.safetensors`` file (config.json beside it); a one-line
    CheckpointError naming ``path`` and what was expected for anything else."""
    path = Path(path).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".safetensors":
            raise CheckpointError(f"not a checkpoint: {path} ({EXPECTED})")
        config_path = path.parent / CONFIG
        if not config_path.is_file():
            raise CheckpointError(f"{path}: no {CONFIG} beside it (expected {config_path}, "
                                  "the config the weights were saved with)")
        return path, config_path
    if not path.is_dir():
        raise CheckpointError(f"checkpoint not found: {path} ({EXPECTED})")
    runs = path / "checkpoints"
    # A run folder holds a config.json too, but never the weights.
    if not (path / WEIGHTS).exists() and runs.is_dir():  # a run folder: its best checkpoint
        if not (runs / "best").is_dir():
            raise CheckpointError(f"run folder {path} has no checkpoints/best (the run has not "
                                  f"finished an epoch); {EXPECTED}")
        path = runs / "best"
    elif not (path / WEIGHTS).exists() and not (path / CONFIG).exists():
        raise CheckpointError(f"not a checkpoint: {path} has no {WEIGHTS} or {CONFIG} and no "
                              f"checkpoints/ folder ({EXPECTED})")
    folder = _check_folder(path, need_state=False)
    return folder / WEIGHTS, folder / CONFIG


def load_training_state(folder: str | Path) -> dict[str, Any]:
    """The optimizer, scheduler, loss-scaler, epoch and best-Dice state saved for
    ``--resume`` (random streams restart from the seed, the rank and the epoch)."""
    folder = _check_folder(folder, need_state=True)
    try:
        return torch.load(folder / STATE, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{folder / STATE}: cannot read training state: {err}") from err


def _check_folder(folder: str | Path, need_state: bool) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(
            f"checkpoint folder not found: {folder} (expected a folder with {WEIGHTS} "
            f"and {CONFIG}, such as RUN/checkpoints/best)")
    needed = [WEIGHTS, CONFIG] + ([STATE] if need_state else [])
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {folder} is incomplete: missing {', '.join(missing)}")
    return folder


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _jsonable(value.tolist())
    if isinstance(value, float) and value != value:  # NaN is not valid JSON
        return None
    return value


def update_postprocess(folders: Sequence[str | Path], **fields: Any) -> None:
    """Set ``fields`` of the ``postprocess`` section in each checkpoint folder's config.json
    (folders without one are skipped), keeping its other fields: the clean-up chosen by
    cross-validation and an instance model's labelling thresholds live side by side."""
    for folder in folders:
        path = Path(folder) / CONFIG
        if path.is_file():
            config = Config.load(path)
            chosen = dataclasses.replace(config.postprocess, **fields)
            with replacing("checkpoint config", path) as tmp:
                dataclasses.replace(config, postprocess=chosen).save(tmp)
