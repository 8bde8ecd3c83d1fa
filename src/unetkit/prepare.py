"""A run's settings resolved once, before anything is read or built: the demo's classes,
the network's output channels, a patch the network can take. Training, resuming and the
CLI all call :func:`prepare_config`, so each of these decisions is made in one place."""

from __future__ import annotations

import dataclasses

from .config import Config, ModelConfig, setting_error, target_classes, with_demo_classes
from .data.volume_folder import is_volume_data
from .loggers import check_loggers
from .models.registry import check_model, encoder_name, encoder_size_multiple
from .models.unet import (
    nearest_valid_sizes,
    smallest_valid_input,
    valid_margin,
    valid_output_size,
)
from .outputs import logit_channels


def prepare_config(config: Config) -> Config:
    """Resolve the settings that follow from others, before anything is built: the number
    of demo classes, the model's output channels, a valid patch for valid padding.
    Raises SettingError for a patch smaller than the model can take, ImportError for a
    logger whose package is missing (--tensorboard)."""
    data, model = config.data, config.model
    check_model(model)  # an unknown --arch / --encoder (the registries in unetkit.models)
    check_loggers(config.train)
    data = with_demo_classes(data)
    model = dataclasses.replace(model, out_channels=logit_channels(target_classes(data)))
    if model.padding == "valid" and (model.spatial_dims == 3 or is_volume_data(data)):
        # volumes: the patch is rounded per axis once the spacing is known (build_data)
        return dataclasses.replace(config, data=data, model=model)
    smallest, why = _smallest_patch(model)
    if data.patch_size < smallest:
        raise setting_error("data", "patch_size", data.patch_size, f">= {smallest} ({why})")
    if model.arch == "unet" and model.padding == "valid":
        if valid_output_size(data.patch_size, model.depth) is None:
            below, above = nearest_valid_sizes(data.patch_size, model.depth)
            # Round up: the paper's tiles are valid sizes; a near size changes little.
            data = dataclasses.replace(data, patch_size=above)
        data = dataclasses.replace(data, context=valid_margin(model.depth))
    else:
        data = dataclasses.replace(data, context=0)
    return dataclasses.replace(config, data=data, model=model)


def _smallest_patch(model: ModelConfig) -> tuple[int, str]:
    """The smallest training patch side the model can learn from, and why."""
    multiple = encoder_size_multiple(model)
    if multiple is not None:
        return multiple, f"the {encoder_name(model)} encoder downsamples {multiple}x"
    if model.padding == "valid":
        return (smallest_valid_input(model.depth),
                f"the smallest input with a positive output at depth {model.depth}")
    return 2**model.depth, f"{model.depth} poolings need a side of at least 2^{model.depth}"
