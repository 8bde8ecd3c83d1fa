"""``--resume``: continue a saved run as it was, and say so when the command asks for
something else.

A run is its network, its classes and task, how its images are normalised, and its
optimizer and schedule (whose state is saved): a new value for any of these is refused
with one :class:`ResumeError` line naming the setting, the run's value and the new one,
before anything is read or written. Everything else says how the run goes on and may
change: epochs, time, learning rate, data root (the classes stay), patch size, batch
size, augmentation... Each change is applied and printed as one line, "continuing with
--data NEW (was OLD)".

Only what the user asked for counts: the settings given on the command line or in a
--config file (``unetkit.cli.explicit_settings``), or for a Python caller of
:func:`unetkit.training.train` the settings that differ from their defaults. A setting
left out keeps the run's value, so a flag left at its default never clashes with a run
that was trained with another value (by hand or by the plan).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointError, load_config, load_training_state
from .config import SECTIONS, Config, ModelConfig, flag_name, format_duration
from .errors import UserError
from .log import get_logger
from .prepare import prepare_config

log = get_logger(__name__)

# What a run is; the value names the part in the error. Every model setting is fixed too.
FIXED = {
    "data.num_classes": "the classes", "data.class_names": "the classes",
    "data.demo": "the classes (of the built-in data)", "data.task": "the task",
    "data.boundary_width": "the task (its boundary class)",
    "data.normalize": "the normalisation", "data.mean": "the normalisation",
    "data.std": "the normalisation", "data.intensity_range": "the normalisation",
    "data.spacing": "the network (planned for the voxel spacing)",
    "optim.optimizer": "the optimizer (its state is saved)",
    "optim.schedule": "the schedule (its state is saved)",
}
# Where this process runs: always this command's, given or not (as before --resume checked).
LOCAL = ("device", "out", "plot_every", "compile", "tensorboard")
# Set from the data or by the command itself, never asked for.
NOT_ASKED = {"model.in_channels", "model.out_channels", "model.spacing", "data.context",
             "train.resume", "train.overwrite"}
# Restored with the optimizer's state, so a new value is set again after loading it.
OPTIMIZER_SETTINGS = ("weight_decay", "momentum")  # (Adam's groups have no momentum)


class ResumeError(UserError, ValueError):
    """--resume asked to change what a run is (its network, classes, task...)."""


def flat(config: Config) -> dict[str, Any]:
    """{"section.name": value} of every training setting."""
    return {f"{section}.{f.name}": getattr(getattr(config, section), f.name)
            for section in SECTIONS for f in dataclasses.fields(getattr(config, section))}


def asked_settings(config: Config, explicit: Iterable[str] | None) -> dict[str, Any]:
    """{"section.name": value} of the settings asked for: those in ``explicit``, or (None)
    those that differ from their defaults."""
    values, defaults = flat(config), flat(Config())
    given = ({key for key, value in values.items() if value != defaults[key]}
             if explicit is None else set(explicit))
    return {key: value for key, value in values.items()  # in the order of config.py
            if key in given and key not in NOT_ASKED}


def fixed_part(key: str) -> str | None:
    """What a run is that setting ``key`` belongs to, or None when it may change."""
    return "the network" if key.startswith("model.") else FIXED.get(key)


def same(key: str, new: Any, old: Any) -> bool:
    if key == "data.root" and new is not None and old is not None:
        return Path(new).expanduser().resolve() == Path(old).expanduser().resolve()
    return new == old


def shown(value: Any, key: str = "") -> str:
    if value is None:
        return "none"
    if key == "train.time":
        return format_duration(value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return " ".join(map(str, value)) or "()"
    return str(value)


def flag(key: str) -> str:
    return flag_name(*key.split(".", 1))


def refusal(out: Path, setting: str, new: str, old: str, part: str) -> ResumeError:
    return ResumeError(f"--resume {out}: {setting} {new} but the run was trained with {old}; "
                       f"{part} cannot change on resume (start a new run: another --out, "
                       "or --overwrite)")


def check_fixed(saved: Config, asked: dict[str, Any], out: Path) -> None:
    """Raise ResumeError for the first setting asked for that would change what the run is."""
    old_values = flat(saved)
    for key, new in asked.items():
        part, old = fixed_part(key), old_values[key]
        if part is not None and not same(key, new, old):
            raise refusal(out, flag(key), shown(new), shown(old), part)


def continued_config(saved: Config, requested: Config, asked: dict[str, Any]
                     ) -> tuple[Config, list[str]]:
    """(the saved config with the settings asked for and this process's LOCAL ones,
    "continuing with ..." lines for the values that change)."""
    changes = {section: {} for section in SECTIONS}
    for key, value in asked.items():
        section, name = key.split(".", 1)
        changes[section][name] = value
    changes["train"].update({name: getattr(requested.train, name) for name in LOCAL},
                            resume=True)
    config = dataclasses.replace(saved, **{
        section: dataclasses.replace(getattr(saved, section), **values)
        for section, values in changes.items()})
    # Compared as they will train (a valid-padding U-Net rounds the patch, for one).
    before, after = flat(saved), flat(prepare_config(config))
    lines = [f"continuing with {flag(key)} {shown(after[key], key)} (was "
             f"{shown(before[key], key)})" for key in asked
             if key != "train.out" and not same(key, after[key], before[key])]
    return config, lines


def resume_run(requested: Config, explicit: Iterable[str] | None, progress: bool
               ) -> tuple[Config, dict]:
    """(the config the run continues with, its saved training state, with the lines that
    say what changes, for :func:`confirm`). Raises ResumeError for a change the run
    cannot take (nothing read but the checkpoint's config and state, nothing written),
    CheckpointError when there is no run to continue."""
    out = Path(requested.train.out)
    last_dir = out / "checkpoints" / "last"
    if not last_dir.is_dir():
        raise CheckpointError(f"--resume: no checkpoint to resume at {last_dir}")
    saved = load_config(last_dir)
    asked = asked_settings(requested, explicit)
    check_fixed(saved, asked, out)
    config, lines = continued_config(saved, requested, asked)
    state = load_training_state(last_dir)
    state["run_lr"] = saved.optim.lr  # the new lr scales the saved schedule (restore_optim)
    state["changes"] = lines  # printed once the data fits the network (confirm)
    used = float(state.get("budget_used", 0.0))
    total, epochs = config.train.time, config.train.epochs
    if progress and total is not None and used >= total:
        log.info(f"note: {last_dir} already used its {format_duration(total)}; "
                 "pass a larger --time to train on")
    elif progress and total is None and epochs <= state["epoch"]:
        log.info(f"note: {last_dir} already finished epoch {epochs}; "
                 "pass a larger --epochs to train on")
    return config, state


def confirm(config: Config, built: Config, state: dict, show: bool = True) -> None:
    """Once the data is read (``built``: ``config`` with the data's channels...): refuse
    data that does not fit the run's network, else print (``show``: on the main process)
    what changes, one line each."""
    check_network(config.model, built.model, config.data.root, Path(config.train.out))
    for line in state.get("changes", []) if show else []:
        log.info(line)


def check_network(run: ModelConfig, built: ModelConfig, root: str | None, out: Path) -> None:
    """The network the data builds (its channels, 2D or 3D, its spacing) must be the run's:
    a ResumeError naming --data and what differs, before anything is written."""
    data = f"--data {shown(root)}"
    if built.in_channels != run.in_channels:
        raise refusal(out, data, f"has images of {built.in_channels} channel(s)",
                      f"{run.in_channels} channel(s)", "the channels")
    kinds = {2: "images (2D)", 3: "volumes (3D)"}
    if built.spatial_dims != run.spatial_dims:
        raise refusal(out, data, f"holds {kinds[built.spatial_dims]}",
                      kinds[run.spatial_dims], "the network")
    for f in dataclasses.fields(run):
        new, old = getattr(built, f.name), getattr(run, f.name)
        if new != old:
            raise refusal(out, data, f"gives model.{f.name} {shown(new)}", shown(old),
                          "the network")


def restore_optim(optimizer: torch.optim.Optimizer, scheduler: Any, config: Config,
                  state: dict) -> None:
    """After loading the saved optimizer and schedule: the settings asked for on resume
    (the loaded state holds the run's). A new learning rate scales the schedule where it
    stands (its base and current value), so it goes on from there at the new level."""
    ratio = config.optim.lr / float(state.get("run_lr", config.optim.lr))
    for group in optimizer.param_groups:
        group["lr"] *= ratio
        if "initial_lr" in group:
            group["initial_lr"] *= ratio
        for key in OPTIMIZER_SETTINGS:
            if key in group:
                group[key] = getattr(config.optim, key)
    if hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs = [lr * ratio for lr in scheduler.base_lrs]
    if hasattr(scheduler, "_last_lr"):
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
