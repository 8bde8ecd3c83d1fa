"""Every setting a user can change, as one typed dataclass per concern.

The whole :class:`Config` is written as ``config.json`` beside every checkpoint, so a
checkpoint alone is enough to rebuild its model and to normalise new images the same way.
Command-line flags and YAML/JSON config files are both parsed into these classes
(``Config.from_dict`` / ``Config.to_dict``); nothing else passes settings around as dicts.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelConfig:
    """Which network to build. ``out_channels`` is derived from the number of classes:
    1 logit for a binary task (sigmoid), K logits for K >= 3 classes (softmax)."""

    arch: str = "unet"  # "unet" | "resnet_unet"
    in_channels: int = 1
    out_channels: int = 1
    # UNet
    features: int = 32  # channels of the first level; doubled at each level
    depth: int = 4  # number of 2x2 poolings (the paper: 4)
    padding: str = "same"  # "same" | "valid" (the paper's)
    upsample: str = "transpose"  # "transpose" | "bilinear"
    norm: str | None = "batch"  # None | "batch" | "instance" | "group"
    dropout: float = 0.0  # dropout at the end of the contracting path (the paper: 0.5)
    # ResNetUNet
    resnet_depth: int = 34  # ResNetUNet encoder: 18, 34, 50, 101 or 152
    pretrained: bool | str = False  # False, True (torchvision file in the hub cache) or a path
    freeze_encoder: bool = False  # ResNetUNet: fix encoder weights and BN statistics
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)  # ResNetUNet decoder


@dataclass
class DataConfig:
    """Where the images are and how to read them.

    ``root`` is None for the built-in demo data. Masks may be 0/1, 0/255, class indices
    0..K-1 or RGB colours listed in ``palette`` (colour -> class index).
    """

    root: str | None = None  # data folder (ROOT/images, ROOT/masks); none: the demo data
    demo: str = "binary"  # built-in data when root is None: "binary" | "multiclass"
    demo_size: int = 256  # side of each generated demo image, pixels
    demo_count: int = 64  # number of generated demo images
    num_classes: int = 2  # including background
    class_names: tuple[str, ...] = ()  # names for reports, background first
    mask_encoding: str = "auto"  # "auto" | "binary" | "index" | "palette"
    palette: dict[str, int] = field(default_factory=dict)  # "r,g,b" -> class index
    ignore_index: int | None = None  # mask value that no loss or metric counts
    val_fraction: float = 0.2  # used when ROOT/train and ROOT/val do not exist
    patch_size: int = 256  # training crop, pixels (input side for valid padding)
    context: int = 0  # mirrored border around each training crop, pixels (auto: valid U-Net)
    foreground_oversample: float = 0.33  # probability that a crop is centred on foreground
    # "auto": ImageNet's statistics for a pretrained encoder, else the training images'
    normalize: str = "auto"  # "auto" | "dataset" | "imagenet" | "none"
    mean: tuple[float, ...] = ()  # filled in from the training images (or ImageNet's)
    std: tuple[float, ...] = ()  # per channel; filled like mean
    weight_map: bool = True  # the paper's border weight map, when instance labels exist
    weight_map_w0: float = 10.0  # weight of the border term
    weight_map_sigma: float = 5.0  # pixels
    num_workers: int | None = None  # None: chosen from the core count


def class_names_of(data: DataConfig) -> list[str]:
    """``data.class_names`` when they name every class, else background/foreground
    (binary) or class0, class1, ... (the mask values)."""
    names = [str(n) for n in data.class_names]
    if len(names) == data.num_classes:
        return names
    if data.num_classes == 2:
        return ["background", "foreground"]
    return [f"class{i}" for i in range(data.num_classes)]


@dataclass
class AugmentConfig:
    """Random changes applied to each training batch, on the training device.

    Geometric changes are composed into one sampling grid and applied in one resampling.
    """

    enabled: bool = True  # any augmentation at all
    flip: bool = True  # random horizontal and vertical flips
    rot90: bool = True  # random 90-degree rotations (square crops)
    rotate_deg: float = 15.0  # uniform in [-rotate_deg, rotate_deg]
    scale: tuple[float, float] = (0.85, 1.15)  # zoom range
    translate: float = 0.05  # fraction of the side
    elastic: bool = True  # the paper's elastic deformation
    elastic_grid: int = 3  # coarse displacement grid, points per side
    elastic_sigma: float = 10.0  # standard deviation of the displacements, pixels
    brightness: float = 0.1  # additive, in units of the normalised image's std
    contrast: float = 0.15  # multiplicative, +- fraction
    gamma: float = 0.2  # gamma in [1 - gamma, 1 + gamma]
    noise_std: float = 0.03
    blur_prob: float = 0.1
    blur_sigma: tuple[float, float] = (0.5, 1.5)  # pixels


@dataclass
class LossConfig:
    """``name`` in: bce, ce, dice, dice_bce, dice_ce, focal, auto (dice_bce for binary,
    dice_ce for multi-class)."""

    name: str = "auto"
    dice_include_background: bool = False  # multi-class Dice loss counts class 0 too
    focal_gamma: float = 2.0  # focal loss focusing exponent
    dice_weight: float = 1.0  # weight of the Dice term in the combined losses


@dataclass
class OptimConfig:
    optimizer: str = "adam"  # "adam" | "adamw" | "sgd"
    lr: float = 1e-4  # learning rate
    weight_decay: float = 0.0  # L2 penalty (decoupled for adamw)
    momentum: float = 0.99  # SGD (the paper's)
    schedule: str = "cosine"  # "cosine" | "poly" | "plateau" | "step" | "none"
    warmup_epochs: int = 1  # cosine: linear warm-up length
    poly_power: float = 0.9  # poly: lr * (1 - step/total) ** power
    step_size: int = 30  # step: epochs between lr drops
    step_gamma: float = 0.1  # step: lr factor at each drop
    grad_clip: float | None = 1.0  # max gradient norm; none to disable


@dataclass
class TrainConfig:
    epochs: int = 30  # total epochs (with --resume: the new total)
    batch_size: int = 4  # training crops per step (per process under torchrun)
    steps_per_epoch: int | None = None  # None: one pass over the training images
    seed: int = 0  # the same seed on the same machine gives the same metrics
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:1" ...
    precision: str = "auto"  # "auto" | "fp32" | "bf16" | "fp16"
    channels_last: bool | None = None  # None: chosen for the device
    compile: bool = False  # torch.compile the model
    sync_batchnorm: bool = False  # under torchrun: BatchNorm statistics over all ranks
    out: str = "runs/unetkit"  # run folder: checkpoints, metrics.csv, figures
    resume: bool = False  # continue from OUT/checkpoints/last
    overwrite: bool = False  # start afresh in an OUT that already holds a run
    plot_every: int = 5  # epochs between figure updates
    num_preview: int = 4  # validation images drawn in predictions.png


@dataclass
class InferenceConfig:
    """Defaults of tiled prediction (``predict``, ``unetkit predict`` / ``evaluate``)."""

    tile: int = 512  # output tile side for same-size models, pixels
    valid_tile: int = 388  # output tile side of a valid-padding U-Net (the paper: 572 -> 388)
    overlap: float = 0.25  # fraction of the tile shared by neighbours (same-size models)
    blend: str = "gaussian"  # "gaussian" | "constant"
    sigma_scale: float = 0.125  # Gaussian sigma as a fraction of the tile side
    batch_size: int = 4  # tiles per forward pass: with the tile, it bounds the memory


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Config:
        """Build from nested dicts (a parsed config.json or YAML file); unknown keys raise."""
        return _from_dict(cls, raw, "config")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Config:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: cannot read config: {err}") from err
        return cls.from_dict(raw)


def _from_dict(cls: type, raw: dict[str, Any], where: str) -> Any:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {unknown}; known: {sorted(names)}")
    kwargs = {}
    for name, value in raw.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    """Check a JSON/YAML value against the declared type and convert it: lists -> tuples,
    nested dataclasses, numbers written as text ("3e-4": YAML 1.1 reads that as a string).
    A value of the wrong type raises ValueError naming the setting, the value and the type.
    """
    if dataclasses.is_dataclass(hint):
        return _from_dict(hint, value, where)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(hint)):
            return None
        errors = []
        for arg in args:  # the first type that takes the value (bool before str)
            try:
                return _coerce(arg, value, where)
            except ValueError as err:
                errors.append(err)
        raise errors[-1]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        item = typing.get_args(hint)[0]
        return tuple(_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{where}: expected true or false, got {value!r}")
    if hint in (int, float):
        number = value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = None
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            kind = "a whole number" if hint is int else "a number"
            raise ValueError(f"{where}: expected {kind}, got {value!r}")
        if hint is int:
            if float(number) != int(number):
                raise ValueError(f"{where}: expected a whole number, got {value!r}")
            return int(number)
        return float(number)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected text, got {value!r}")
        return value
    return value
