"""Every setting a user can change, as one typed dataclass per concern.

The whole :class:`Config` is written as ``config.json`` beside every checkpoint, so a
checkpoint alone is enough to rebuild its model and to normalise new images the same way.
Command-line flags and YAML/JSON config files are both parsed into these classes
(``Config.from_dict`` / ``Config.to_dict``); nothing else passes settings around as dicts.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .coerce import from_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- ranges
# Each setting declares what it accepts beside its default (``setting(30, ge=1)``); the
# check runs whenever a section is built, so flags, config files and Python callers all
# meet the same rule, before any file is read or written.

# The sections of a training config (and of config.json / YAML files).
SECTIONS = ("model", "data", "augment", "loss", "optim", "train")
# Flags whose setting name alone would be unclear or collide (see :func:`flag_name`).
FLAG_NAMES = {("augment", "enabled"): "augment", ("loss", "name"): "loss",
              ("data", "root"): "data", ("train", "out"): "out"}


def flag_name(section: str, name: str) -> str:
    """The command-line flag of a setting, e.g. ``--epochs`` for train.epochs."""
    return "--" + FLAG_NAMES.get((section, name), name).replace("_", "-")


@dataclass(frozen=True)
class Accepts:
    """The values a number or text setting accepts: bounds and/or a list of choices."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple = ()

    def admits(self, value: Any) -> bool:
        if self.choices:
            return value in self.choices
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le)
                and (self.lt is None or value < self.lt))

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join("none" if c is None else str(c) for c in self.choices)
        parts = [f"{op} {bound:g}" for op, bound in
                 ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
                 if bound is not None]
        return " and ".join(parts)


def setting(default: Any, parse: Any = None, **accepts: Any) -> Any:
    """A dataclass field with its accepted values: ``ge``/``gt``/``le``/``lt`` bounds or
    ``choices`` (a mapping: each choice with its meaning in one line, the flag's help).
    None always passes for an optional setting; tuples are checked per item.
    ``parse`` turns a text value (a flag, a YAML string) into the field's type."""
    meanings = accepts.get("choices")
    if isinstance(meanings, dict):
        accepts["choices"] = tuple(meanings)
    metadata = {"accepts": Accepts(**accepts),
                "meanings": meanings if isinstance(meanings, dict) else {}}
    if parse is not None:
        metadata["parse"] = parse
    return field(default=default, metadata=metadata)


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | float) -> float:
    """Seconds in a duration such as ``90s``, ``10m``, ``1h``, ``1h30m`` or ``2.5m`` (a bare
    number is seconds). Raises ValueError for anything else."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    cleaned = str(text).strip().lower().replace(" ", "")
    parts = re.findall(r"(\d+(?:\.\d*)?)([smh]?)", cleaned)
    if not cleaned or "".join(n + u for n, u in parts) != cleaned or (
            len(parts) > 1 and not all(u for _, u in parts)):
        raise ValueError(f"{text!r} is not a duration such as 90s, 10m or 1h")
    return sum(float(n) * _DURATION_UNITS[u or "s"] for n, u in parts)


def format_duration(seconds: float) -> str:
    """``75`` -> ``1m 15s``; ``3600`` -> ``1h 0m``; ``42.5`` -> ``42s``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60}m"


def choices_of(cls: type, name: str) -> tuple:
    """The values setting ``name`` of dataclass ``cls`` accepts (its declared choices)."""
    return next(f for f in dataclasses.fields(cls) if f.name == name).metadata["accepts"].choices


class SettingError(ValueError):
    """A setting outside its accepted values; the message names flag, value and range."""


def setting_error(section: str, name: str, value: Any, expected: str) -> SettingError:
    shown = "none" if value is None else (" ".join(map(str, value))
                                          if isinstance(value, tuple) else value)
    where = f" ({section}.{name} in a config file)" if section in SECTIONS else ""
    return SettingError(f"{flag_name(section, name)} {shown}: expected {expected}{where}")


def check_section(section: str, obj: Any) -> None:
    """Raise :class:`SettingError` for the first field of ``obj`` outside its range."""
    for f in dataclasses.fields(obj):
        accepts = f.metadata.get("accepts")
        value = getattr(obj, f.name)
        if accepts is None or value is None:
            continue
        items = value if isinstance(value, tuple) else (value,)
        if not all(accepts.admits(item) for item in items):
            raise setting_error(section, f.name, value, accepts.describe())


class _Checked:
    """Mixin: a section checks its ranges whenever it is built (also by
    ``dataclasses.replace``)."""

    SECTION: typing.ClassVar[str] = ""

    def __post_init__(self) -> None:
        check_section(self.SECTION, self)


@dataclass
class ModelConfig(_Checked):
    """Which network to build. ``out_channels`` is derived from the number of classes:
    1 logit for a binary task (sigmoid), K logits for K >= 3 classes (softmax)."""

    SECTION: typing.ClassVar[str] = "model"
    # Checked against unetkit.models.ARCHITECTURES (which imports this module, so the
    # names cannot be listed here).
    arch: str = "unet"  # unet or resnet_unet (a U-Net decoder on --encoder)
    in_channels: int = setting(1, ge=1)
    out_channels: int = setting(1, ge=1)
    # 2 for images, 3 for volumes; volume data (NIfTI, 3D arrays, the volumes demo) set 3
    spatial_dims: int = setting(2, choices=(2, 3))
    # Stored in config.json, so a checkpoint rebuilds the same network. Anisotropic: per-stage
    # pooling and kernel sizes by nnU-Net's rule (unetkit.models.anisotropy; arch unet).
    spacing: tuple[float, ...] = setting((), gt=0)  # voxel size (z, y, x) to plan for; () isotropic
    # UNet
    features: int = setting(32, ge=1)  # channels of the first level; doubled at each level
    depth: int = setting(4, ge=1, le=8)  # number of 2x2 poolings (the paper: 4)
    padding: str = setting("same", choices={  # padding of the 3x3 convolutions
        "same": "zero-padded: the output has the input's size",
        "valid": "the paper's unpadded convolutions: the output is the input's centre"})
    upsample: str = setting("transpose", choices={  # how the expanding path upsamples
        "transpose": "a 2x2 transposed convolution (the paper's)",
        "bilinear": "bilinear interpolation, then a 1x1 convolution"})
    norm: str | None = setting("batch", choices={  # normalisation after each convolution
        None: "none (the paper's)", "batch": "BatchNorm",
        "instance": "InstanceNorm: each image on its own",
        "group": "GroupNorm: channel groups, independent of the batch size"})
    # the paper: 0.5
    dropout: float = setting(0.0, ge=0, lt=1)  # dropout at the end of the contracting path
    # nnU-Net's deep supervision (unetkit.deep_supervision): 1x1 heads on the decoder stages,
    # trained against nearest-downsampled masks, weights 1/2^k (the lowest stage 0), summed
    # to 1; training only: prediction and export use the main output, built without heads.
    # Off: on --demo multiclass --time 2m (CPU with avx512_bf16, no amx_bf16) the best
    # validation Dice was 0.859 without it and 0.816 with it (one run each).
    deep_supervision: bool = False  # also train auxiliary outputs of the lower decoder stages
    # ResNetUNet (arch resnet_unet). The encoder is checked against unetkit.models.ENCODERS.
    encoder: str | None = None  # resnet18 ... resnet152 or a registered name; none: --resnet-depth
    resnet_depth: int = setting(34, choices=(18, 34, 50, 101, 152))  # ResNet if --encoder is none
    pretrained: bool | str = False  # False, True (torchvision file in the hub cache) or a path
    freeze_encoder: bool = False  # ResNetUNet: fix encoder weights and BN statistics
    decoder_channels: tuple[int, ...] = setting((256, 128, 64, 32, 16), ge=1)  # ResNetUNet decoder


@dataclass
class DataConfig(_Checked):
    """Where the images are and how to read them.

    ``root`` is None for the built-in demo data. Masks may be 0/1, 0/255, class indices
    0..K-1 or RGB colours listed in ``palette`` (colour -> class index).
    """

    SECTION: typing.ClassVar[str] = "data"
    root: str | None = None  # data folder (ROOT/images, ROOT/masks); none: the demo data
    demo: str = setting("binary", choices={  # the built-in data, used when --data is not given
        "binary": "touching nuclei: background and nucleus",
        "multiclass": "three kinds of cells: background and 3 classes",
        "volumes": "3D stacks of nuclei-like blobs, anisotropic voxels"})
    demo_size: int = setting(256, ge=16)  # side of each generated demo image, pixels
    demo_count: int = setting(64, ge=2)  # number of generated demo images
    num_classes: int = setting(2, ge=2)  # mask classes, including background
    task: str = setting("semantic", choices={  # what the network learns
        "semantic": "the mask's classes, one per pixel",
        "instances": "background / interior / boundary, to separate touching objects"})
    # 3 measured best on the demo's 15-25 px nuclei (benchmarks/results/instances.md)
    boundary_width: int = setting(3, ge=1)  # instances: thickness of the boundary class, px
    class_names: tuple[str, ...] = ()  # names for reports, background first
    mask_encoding: str = setting("auto", choices={  # how mask files are read
        "auto": "palette for RGB masks with --palette, else class indices (0/255 if binary)",
        "binary": "0/1 or 0/255: background and foreground",
        "index": "class indices 0..K-1 (plus --ignore-index)",
        "palette": "RGB colours, each listed in --palette"})
    palette: dict[str, int] = field(default_factory=dict)  # "r,g,b" -> class index
    ignore_index: int | None = setting(None, ge=0)  # mask value that no loss or metric counts
    val_fraction: float = setting(0.2, ge=0, lt=1)  # held out unless ROOT/train, ROOT/val exist
    # cross-validation (train --folds K sets both): validate on fold `fold` of `folds`
    folds: int = setting(1, ge=1)  # parts of the data for cross-validation; 1: --val-fraction
    fold: int = setting(0, ge=0)  # the held-out part, 0 .. folds-1
    patch_size: int = setting(256, ge=1)  # training crop, pixels (input side for valid padding)
    patch_depth: int | None = setting(None, ge=1)  # volumes: crop slices; none: from spacing
    context: int = setting(0, ge=0)  # mirrored border around each training crop, pixels
    foreground_oversample: float = setting(0.33, ge=0, le=1)  # P(crop centred on foreground)
    normalize: str = setting("auto", choices={  # how image intensities are normalised
        "auto": "imagenet for a pretrained encoder, else dataset; volumes: per_image or ct",
        "dataset": "z-score with the training images' per-channel mean and std",
        "imagenet": "z-score with ImageNet's mean and std (pretrained encoders)",
        "none": "the intensities as read",
        "per_image": "z-score of each image (volume) by its own statistics",
        "ct": "clip to the foreground's 0.5-99.5 percentiles, then dataset (CT scans)"})
    mean: tuple[float, ...] = ()  # filled in from the training images (or ImageNet's)
    std: tuple[float, ...] = setting((), gt=0)  # per channel; filled like mean
    intensity_range: tuple[float, ...] = ()  # ct: clip to (low, high), filled in from the data
    spacing: tuple[float, ...] = setting((), gt=0)  # volumes: voxel size (z, y, x); filled in
    weight_map: bool = True  # the paper's border weight map, when instance labels exist
    weight_map_w0: float = setting(10.0, ge=0)  # weight of the border term
    weight_map_sigma: float = setting(5.0, gt=0)  # width of the border term, pixels
    num_workers: int | None = setting(None, ge=0)  # loader processes; none: from the cores


# The classes an instance model predicts (``data.task == "instances"``).
INSTANCE_CLASSES = ("background", "interior", "boundary")


# Classes of the built-in data sets, background included.
DEMO_CLASSES = {"binary": 2, "multiclass": 4, "volumes": 2}


def with_demo_classes(data: DataConfig) -> DataConfig:
    """``data`` with the built-in multi-class data's 4 classes when it has no root and
    num_classes was left at its default."""
    if data.root is None and data.num_classes == 2 and DEMO_CLASSES[data.demo] != 2:
        return dataclasses.replace(data, num_classes=DEMO_CLASSES[data.demo])
    return data


def target_classes(data: DataConfig) -> int:
    """The number of classes the model learns: the mask's, or 3 for the instance task
    (its masks are read as binary foreground; the objects come from instance labels)."""
    return len(INSTANCE_CLASSES) if data.task == "instances" else data.num_classes


def class_names_of(data: DataConfig) -> list[str]:
    """Names of the classes the model learns: ``data.class_names`` when they name every
    class, else background/interior/boundary (instance task), background/foreground
    (binary) or class0, class1, ... (the mask values)."""
    names = [str(n) for n in data.class_names]
    if data.task == "instances":
        return list(INSTANCE_CLASSES)
    if len(names) == data.num_classes:
        return names
    if data.num_classes == 2:
        return ["background", "foreground"]
    return [f"class{i}" for i in range(data.num_classes)]


@dataclass
class AugmentConfig(_Checked):
    """Random changes applied to each training batch, on the training device.

    Geometric changes are composed into one sampling grid and applied in one resampling.
    """

    SECTION: typing.ClassVar[str] = "augment"
    enabled: bool = True  # any augmentation at all
    flip: bool = True  # random horizontal and vertical flips
    rot90: bool = True  # random 90-degree rotations (square crops)
    rotate_deg: float = setting(15.0, ge=0, le=180)  # uniform in [-rotate_deg, rotate_deg]
    scale: tuple[float, float] = setting((0.85, 1.15), gt=0)  # zoom range
    translate: float = setting(0.05, ge=0, lt=1)  # fraction of the side
    elastic: bool = True  # the paper's elastic deformation
    elastic_grid: int = setting(3, ge=2)  # coarse displacement grid, points per side
    elastic_sigma: float = setting(10.0, ge=0)  # displacement standard deviation, pixels
    brightness: float = setting(0.1, ge=0)  # additive, in units of the normalised image's std
    contrast: float = setting(0.15, ge=0, lt=1)  # multiplicative, +- fraction
    gamma: float = setting(0.2, ge=0, lt=1)  # gamma in [1 - gamma, 1 + gamma]
    noise_std: float = setting(0.03, ge=0)  # Gaussian noise, in units of the image's std
    blur_prob: float = setting(0.1, ge=0, le=1)  # probability of a Gaussian blur
    blur_sigma: tuple[float, float] = setting((0.5, 1.5), gt=0)  # blur's sigma range, pixels

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("scale", "blur_sigma"):
            low_high = getattr(self, name)
            if len(low_high) != 2 or low_high[0] > low_high[1]:
                raise setting_error(self.SECTION, name, low_high, "two numbers, low <= high")


@dataclass
class LossConfig(_Checked):
    """``name`` in: bce, ce, dice, dice_bce, dice_ce, focal, auto (dice_bce for binary,
    dice_ce for multi-class)."""

    SECTION: typing.ClassVar[str] = "loss"
    name: str = setting("auto", choices={  # the training loss
        "auto": "dice_bce for binary masks, dice_ce for several classes",
        "bce": "binary cross-entropy", "ce": "cross-entropy", "dice": "soft Dice",
        "dice_bce": "Dice + binary cross-entropy", "dice_ce": "Dice + cross-entropy",
        "focal": "focal loss (--focal-gamma)"})
    dice_include_background: bool = False  # multi-class Dice loss counts class 0 too
    focal_gamma: float = setting(2.0, ge=0)  # focal loss focusing exponent
    dice_weight: float = setting(1.0, ge=0)  # weight of the Dice term in the combined losses


@dataclass
class OptimConfig(_Checked):
    SECTION: typing.ClassVar[str] = "optim"
    optimizer: str = setting("adam", choices={  # the optimiser
        "adam": "Adam", "adamw": "AdamW: Adam with decoupled weight decay",
        "sgd": "SGD with Nesterov momentum (the paper's)"})
    lr: float = setting(1e-4, gt=0)  # learning rate
    weight_decay: float = setting(0.0, ge=0)  # L2 penalty (decoupled for adamw)
    momentum: float = setting(0.99, ge=0, lt=1)  # SGD (the paper's)
    schedule: str = setting("cosine", choices={  # how the learning rate changes
        "cosine": "linear warm-up, then cosine decay to the end of the run",
        "poly": "lr * (1 - step/total) ** --poly-power (nnU-Net's)",
        "plateau": "halved when validation Dice has not improved for 5 epochs",
        "step": "multiplied by --step-gamma every --step-size epochs", "none": "constant"})
    warmup_epochs: int = setting(1, ge=0)  # cosine: linear warm-up length
    poly_power: float = setting(0.9, gt=0)  # poly: lr * (1 - step/total) ** power
    step_size: int = setting(30, ge=1)  # step: epochs between lr drops
    step_gamma: float = setting(0.1, gt=0, le=1)  # step: lr factor at each drop
    grad_clip: float | None = setting(1.0, gt=0)  # max gradient norm; none to disable


@dataclass
class TrainConfig(_Checked):
    SECTION: typing.ClassVar[str] = "train"
    epochs: int = setting(30, ge=1)  # a fixed run's length (with --resume: the new total)
    # train for this long (90s, 10m, 1h30m), planned, the schedule ending with the time;
    # none: 10m for a bare `train`, or --epochs when --epochs or --config fixes the run
    time: float | None = setting(None, parse=parse_duration, gt=0)
    batch_size: int = setting(4, ge=1)  # training crops per step (per process under torchrun)
    steps_per_epoch: int | None = setting(None, ge=1)  # none: one pass over the training set
    seed: int = setting(0, ge=0)  # the same seed on the same machine: the same metrics
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:1" ...
    precision: str = setting("auto", choices={  # autocast precision
        "auto": "$UNETKIT_PRECISION if set, else bf16 where the hardware computes it natively",
        "fp32": "no autocast", "bf16": "bfloat16 autocast",
        "fp16": "float16 autocast with loss scaling (CUDA only)"})
    channels_last: bool | None = None  # memory layout; none: chosen for the device
    compile: bool = False  # torch.compile the model
    sync_batchnorm: bool = False  # under torchrun: BatchNorm statistics over all ranks
    out: str = "runs/unetkit"  # run folder: checkpoints, metrics.csv, figures
    resume: bool = False  # continue from OUT/checkpoints/last
    overwrite: bool = False  # start afresh in an OUT that already holds a run
    plot_every: int = setting(5, ge=1)  # epochs between figure updates
    num_preview: int = setting(4, ge=0)  # validation images drawn in predictions.png
    # metrics.csv's columns and predictions.png, per epoch (unetkit.loggers)
    tensorboard: bool = False  # log to OUT/tensorboard too; pip install -e '.[tensorboard]'
    max_bad_steps: int = setting(10, ge=1)  # stop after this many non-finite steps in a row
    max_loss_factor: float = setting(100.0, gt=1)  # stop when the loss passes this x its start


@dataclass
class InferenceConfig(_Checked):
    """Defaults of tiled prediction (``predict``, ``unetkit predict`` / ``evaluate``)."""

    SECTION: typing.ClassVar[str] = "inference"
    tile: int = setting(512, ge=1)  # output tile side for same-size models, pixels
    # the paper: 572 -> 388
    valid_tile: int = setting(388, ge=1)  # output tile side of a valid-padding U-Net
    overlap: float = setting(0.25, ge=0, lt=1)  # tile fraction shared by neighbours (same-size)
    blend: str = setting("gaussian", choices={  # how overlapping tiles are averaged
        "gaussian": "weights fall off towards the tile's edge", "constant": "plain mean"})
    sigma_scale: float = setting(0.125, gt=0)  # Gaussian sigma as a fraction of the tile side
    batch_size: int = setting(4, ge=1)  # tiles per forward pass: with the tile, bounds memory
    # objects: smaller labelled specks are dropped, px; none: the checkpoint's (chosen on
    # its validation images, unetkit.object_tuning), else 16
    min_object_size: int | None = setting(None, ge=0)
    # Instance models: watershed seeds are interiors above this probability; none: the
    # checkpoint's (chosen on its validation images), else 0.7, measured on the demo
    # (benchmarks/instances.py): it separates touching nuclei that 0.5 merges.
    seed_threshold: float | None = setting(None, gt=0, lt=1)


@dataclass
class PostprocessConfig(_Checked):
    """Connected-component clean-up of predicted labels (:mod:`unetkit.postprocess`).

    Saved in config.json, so a checkpoint carries the clean-up that suits it (e.g. chosen
    per class by cross-validation) and ``predict`` applies it; the predict flags
    ``--min-component-size`` / ``--[no-]keep-largest`` override it. Config files written
    before this section existed load with these defaults: no clean-up."""

    SECTION: typing.ClassVar[str] = "postprocess"
    # px (voxels): smaller components of a foreground class become background; 0 off; one
    # value for every foreground class, or one per foreground class (class 1 first)
    min_component_size: int | tuple[int, ...] = setting(0, ge=0)
    # only the largest component of each foreground class stays: true, false, or the
    # class indices (1..K-1) to do it for
    keep_largest: bool | tuple[int, ...] = False
    # instance models: the watershed's seed threshold and the smallest object (px), chosen
    # on the validation images at the end of training (unetkit.object_tuning); none: 0.7, 16
    seed_threshold: float | None = setting(None, gt=0, lt=1)
    min_object_size: int | None = setting(None, ge=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.keep_largest, tuple) and any(
                isinstance(c, bool) or c < 1 for c in self.keep_largest):
            raise setting_error(self.SECTION, "keep_largest", self.keep_largest,
                                "true, false or foreground class indices (>= 1)")

    @property
    def active(self) -> bool:
        """Whether any rule changes a label map."""
        sizes = self.min_component_size
        sizes = sizes if isinstance(sizes, tuple) else (sizes,)
        return any(s > 1 for s in sizes) or bool(self.keep_largest)

    def override(self, min_component_size: int | tuple[int, ...] | None = None,
                 keep_largest: bool | tuple[int, ...] | None = None) -> PostprocessConfig:
        """A copy with the settings given (not None) replaced: flags over a checkpoint's."""
        changes = {name: value for name, value in (("min_component_size", min_component_size),
                                                   ("keep_largest", keep_largest))
                   if value is not None}
        return dataclasses.replace(self, **changes)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # Not a training section (no train flags): how predict cleans up this model's labels.
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Config:
        """Build from nested dicts (a parsed config.json or YAML file); unknown keys raise."""
        return from_dict(cls, raw, "config")

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
