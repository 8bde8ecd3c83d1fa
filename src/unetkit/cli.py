"""The ``unetkit`` command line: train | predict | evaluate | export | plan | make-demo-data.

A thin layer: each command parses flags into the typed configs and calls a function a
Python user can call too. ``unetkit train`` gets one flag per setting in
:mod:`unetkit.config`, generated from the dataclasses so flags and settings never drift.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import re
import sys
import time
import typing
from pathlib import Path

from .config import (
    SECTIONS,
    Config,
    DataConfig,
    InferenceConfig,
    TrainConfig,
    choices_of,
    flag_name,
    parse_duration,
)
from .errors import UserError
from .process import _find_tcmalloc, allocator_name, relaunch_if_needed  # noqa: F401

# Set from the data (image channels, number of classes), not by the user.
DERIVED = {("model", "in_channels"), ("model", "out_channels"), ("model", "spacing"),
           ("data", "context")}
# Errors that are the user's to fix: printed as one line with exit code 2 (no traceback
# unless --debug or UNETKIT_DEBUG=1). DataError, SettingError and CheckpointError are
# ValueErrors; WriteError, DivergenceError and ExportError are UserErrors.
USER_ERRORS = (UserError, ValueError, FileNotFoundError, ImportError)


# -- flags from the config dataclasses ------------------------------------------------
def _flag(section: str, name: str) -> str:
    return flag_name(section, name)[2:]


def _parse_bool_or_path(text: str):
    low = text.lower()
    if low in ("true", "yes", "1"):
        return True
    if low in ("false", "no", "0", "none"):
        return False
    return text


def _optional(parse):
    def inner(text: str):
        return None if text.lower() == "none" else parse(text)

    inner.__name__ = getattr(parse, "__name__", "value")
    return inner


def _argument_type(parse, optional: bool):
    """``parse`` as an argparse type: its ValueError becomes argparse's one-line error."""
    def inner(text: str):
        if optional and text.lower() == "none":
            return None
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from err

    return inner


def _field_comments(cls: type) -> dict[str, str]:
    """The ``# comment`` beside each field in config.py: the flags' help texts, so the
    documentation lives in one place."""
    comments = {}
    for line in inspect.getsource(cls).splitlines():
        match = re.match(r"\s+(\w+): [^#]*#\s*(.+)$", line)
        if match:
            comments[match.group(1)] = match.group(2).strip()
    return comments


def _add_field(group, section: str, f: dataclasses.Field, hint, default, note: str) -> None:
    flag = "--" + _flag(section, f.name)
    dest = f"{section}.{f.name}"
    shown = "{}" if isinstance(default, dict) else repr(default)
    accepts = f.metadata.get("accepts")
    if accepts is not None:
        shown += f"; {accepts.describe()}"
    helptext = f"{note} (default: {shown})" if note else f"default: {shown}"
    helptext = helptext.replace("%", "%%")
    args = typing.get_args(hint)
    optional = type(None) in args
    inner = [a for a in args if a is not type(None)] if args else [hint]
    if typing.get_origin(hint) in (tuple, dict):
        inner = [hint]
    base = inner[0] if len(inner) == 1 else None
    parse = f.metadata.get("parse")
    if parse is not None:  # a text form of its own, e.g. a duration ("10m")
        group.add_argument(flag, dest=dest, type=_argument_type(parse, optional),
                           default=None, metavar=f.name.upper(), help=helptext)
    elif base is bool:
        group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction,
                           default=None, help=helptext)
    elif set(inner) == {bool, str}:
        group.add_argument(flag, dest=dest, type=_parse_bool_or_path, default=None,
                           metavar="true|false|PATH", help=helptext)
    elif typing.get_origin(base) is tuple:
        item = typing.get_args(base)[0]
        group.add_argument(flag, dest=dest, type=item, nargs="+", default=None, help=helptext,
                           metavar=item.__name__.upper())
    elif typing.get_origin(base) is dict or base is dict:
        group.add_argument(flag, dest=dest, type=json.loads, default=None, metavar="JSON",
                           help=helptext + ' (JSON, e.g. \'{"255,0,0": 1}\')')
    elif base in (int, float, str):
        parse = _optional(base) if optional else base
        group.add_argument(flag, dest=dest, type=parse, default=None,
                           metavar=base.__name__.upper(), help=helptext
                           + (" ('none' to unset)" if optional else ""))
    else:  # pragma: no cover - a new field type must be handled above
        raise TypeError(f"no flag type for {dest}: {hint}")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    defaults = Config()
    for section in SECTIONS:
        cls = type(getattr(defaults, section))
        hints = typing.get_type_hints(cls)
        notes = _field_comments(cls)
        group = parser.add_argument_group(f"{section} settings")
        for f in dataclasses.fields(cls):
            if (section, f.name) in DERIVED:
                continue
            _add_field(group, section, f, hints[f.name],
                       getattr(getattr(defaults, section), f.name), notes.get(f.name, ""))


def given_settings(args: argparse.Namespace) -> dict:
    """The settings the user gave: the --config file's, then the flags on top."""
    raw: dict = {}
    if getattr(args, "config", None):
        raw = read_config_file(args.config)
    for key, value in vars(args).items():
        if "." in key and value is not None:
            section, name = key.split(".", 1)
            raw.setdefault(section, {})[name] = value
    return raw


def config_from_args(args: argparse.Namespace) -> Config:
    """Defaults, then the --config file, then the flags given on the command line."""
    return Config.from_dict(given_settings(args))


def explicit_settings(args: argparse.Namespace) -> frozenset[str]:
    """"section.name" of every setting the user gave (a plan keeps these as given)."""
    return frozenset(f"{section}.{name}" for section, values in given_settings(args).items()
                     if isinstance(values, dict) for name in values)


def wants_plan(args: argparse.Namespace, explicit: frozenset[str]) -> bool:
    """--plan / --no-plan; by default a run is planned unless it resumes, or a config
    file or --epochs fixed its length without --time."""
    if getattr(args, "train.resume", None):
        return False  # the saved run's settings continue
    if args.plan is not None:
        return args.plan
    fixed_length = bool(args.config) or "train.epochs" in explicit
    return "train.time" in explicit or not fixed_length


def read_config_file(path: str) -> dict:
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"--config {path}: cannot read it ({err})") from err
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as err:
        raise ValueError(f"{path}: cannot parse config file: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of sections {SECTIONS}")
    return data


# -- commands -------------------------------------------------------------------------
def volume_data(config: Config) -> bool:
    """Volumes train with the settings given: the plan's rules are for images so far."""
    from .data.volume_folder import is_volume_data

    return config.model.spatial_dims == 3 or is_volume_data(config.data)


def cmd_train(args: argparse.Namespace) -> int:
    started = time.monotonic()  # a budget counts from here: planning is part of it
    from .training import prepare_config, train

    config = config_from_args(args)
    prepare_config(config)  # a bad setting is refused before any planning or reading
    explicit = explicit_settings(args)
    plan = None
    # --folds K without --fold: the K cross-validation runs, each given a K-th of the time
    folds = config.data.folds if "data.fold" not in explicit else 1
    if wants_plan(args, explicit) and not volume_data(config):
        from .plan import DEFAULT_TIME, format_plan, make_plan

        total = config.train.time or DEFAULT_TIME
        config, made = make_plan(config, explicit, total / folds, started)
        config = dataclasses.replace(config, train=dataclasses.replace(config.train,
                                                                         time=total))
        if not args.quiet:
            print(format_plan(made), flush=True)
        plan = made.to_dict()
    try:
        if folds > 1:
            from .crossval import format_folds, train_folds

            print(format_folds(train_folds(config, folds, not args.quiet, plan, explicit)))
        else:
            train(config, progress=not args.quiet, plan=plan, explicit=explicit)
    except KeyboardInterrupt:
        last = Path(config.train.out) / "checkpoints" / "last"
        print(f"\ninterrupted: the last finished epoch is saved in {last}; continue with "
              f"the same command and --resume", file=sys.stderr)
        return 130
    return 0


def check_tiling_flags(args: argparse.Namespace) -> None:
    """The tiling flags of predict/evaluate meet the ranges of InferenceConfig (SettingError
    before any file is read)."""
    names = ("tile", "overlap", "batch_size", "min_object_size", "seed_threshold")
    given = {name: getattr(args, name, None) for name in names}
    given = {name: value for name, value in given.items() if value is not None}
    InferenceConfig(**given)


def cmd_predict(args: argparse.Namespace) -> int:
    from .inference import predict_files

    check_tiling_flags(args)
    if _volume_checkpoint(args.checkpoint):
        return _predict_volumes(args)
    args.checkpoint = _one_or_many(args.checkpoint)
    result = predict_files(
        args.checkpoint, args.inputs, args.out, tile=args.tile, overlap=args.overlap,
        batch_size=args.batch_size, tta=args.tta, autocast=args.precision,
        save_probabilities=args.probabilities,
        save_overlay=args.overlay, device=args.device, progress=not args.quiet,
        instances=args.instances, min_object_size=args.min_object_size,
        seed_threshold=args.seed_threshold, **_postprocess_flags(args))
    print(f"wrote {len(result['written'])} mask(s) to {result['out_dir']}"
          + (f"; {len(result['failed'])} file(s) failed (listed above)"
             if result["failed"] else ""))
    return 1 if result["failed"] else 0


def _postprocess_flags(args: argparse.Namespace) -> dict:
    """--min-component-size / --[no-]keep-largest as given (None: the checkpoint's),
    checked against PostprocessConfig's ranges before any file is read."""
    from .config import PostprocessConfig

    given = {"min_component_size": args.min_component_size, "keep_largest": args.keep_largest}
    PostprocessConfig(**{k: v for k, v in given.items() if v is not None})
    return given


def _volume_checkpoint(checkpoints: list[str]) -> bool:
    from .checkpoint import fold_checkpoints, load_config

    first = (fold_checkpoints(checkpoints[0]) or checkpoints)[0]
    return load_config(first).model.spatial_dims == 3


def _one_or_many(checkpoints: list[str]) -> str | list[str]:
    """One checkpoint path as itself (a folds folder included), several as a list."""
    return checkpoints[0] if len(checkpoints) == 1 else checkpoints


def _predict_volumes(args: argparse.Namespace) -> int:
    args.checkpoint = _one_or_many(args.checkpoint)
    from .volume_predict import predict_volume_files

    result = predict_volume_files(
        args.checkpoint, args.inputs, args.out, overlap=args.overlap,
        batch_size=args.batch_size, tta=args.tta, precision=args.precision,
        save_probabilities=bool(args.probabilities), device=args.device,
        progress=not args.quiet, **_postprocess_flags(args))
    print(f"wrote {len(result['written'])} label volume(s) to {result['out_dir']}"
          + (f"; {len(result['failed'])} file(s) failed (listed above)"
             if result["failed"] else ""))
    return 1 if result["failed"] else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_folder, format_table

    check_tiling_flags(args)
    csv_path = args.csv or str(_default_evaluation_csv(Path(args.checkpoint[0])))
    volumes = _volume_checkpoint(args.checkpoint)
    args.checkpoint = _one_or_many(args.checkpoint)
    if volumes:
        from .volume_predict import evaluate_volumes, format_volume_table

        summary = evaluate_volumes(args.checkpoint, args.data, csv_path, hausdorff=True,
                                   overlap=args.overlap, batch_size=args.batch_size,
                                   tta=args.tta, precision=args.precision,
                                   device=args.device, progress=not args.quiet)
        print(format_volume_table(summary))
        print(f"per-volume scores: {csv_path}")
        return 1 if summary["failed"] else 0
    summary = evaluate_folder(
        args.checkpoint, args.data, out_csv=csv_path, hausdorff=args.hausdorff,
        tile=args.tile, overlap=args.overlap, batch_size=args.batch_size, tta=args.tta,
        autocast=args.precision, device=args.device, progress=not args.quiet,
        instance_labels=args.instance_labels, min_object_size=args.min_object_size,
        seed_threshold=args.seed_threshold)
    print(format_table(summary))
    print(f"per-image scores: {csv_path}")
    return 1 if summary["failed"] or summary["objects_missing"] else 0


def _default_evaluation_csv(checkpoint: Path) -> Path:
    """RUN/evaluation.csv for RUN/checkpoints/NAME (not inside the checkpoint folder, which
    the next save replaces); else evaluation.csv here."""
    if checkpoint.resolve().parent.name == "checkpoints":
        return checkpoint.resolve().parent.parent / "evaluation.csv"
    return Path("evaluation.csv")


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_model

    size = tuple(args.size) if args.size else None
    result = export_model(args.checkpoint, args.format, args.out,
                          example_size=size if size is None or len(size) > 1 else size[0],
                          opset=args.opset, atol=args.atol)
    if result["max_abs_diff"] is None:  # export_model prints the verified difference
        print(f"exported {result['format']} to {result['path']} (not verified)")
    return 0


def _add_tiling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="CKPT", action="append",
                   help="run folder (its checkpoints/best), checkpoint folder such as "
                   "runs/demo/checkpoints/best, or a .safetensors file with config.json "
                   "beside it; repeated (--checkpoint A --checkpoint B), or a `train "
                   "--folds` folder: their ensemble (probabilities averaged)")
    p.add_argument("--tile", type=int, help="output tile side in pixels (default: 388 for "
                   "a valid-padding U-Net, else 512)")
    p.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass")
    p.add_argument("--tta", action="store_true",
                   help="average over flips and 90-degree rotations")
    p.add_argument("--overlap", type=float,
                   help="same-padding models: tile overlap fraction (default 0.25)")
    p.add_argument("--precision", choices=choices_of(TrainConfig, "precision"), default="auto",
                   help="auto: $UNETKIT_PRECISION if set, else bf16 (fp16 on CUDA without "
                   "bf16) only where the hardware computes it natively")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_object_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-object-size", type=int, default=None, metavar="PX",
                   help="objects smaller than this are dropped (default: the size an "
                   "instance model chose on its validation images, else 16)")
    p.add_argument("--seed-threshold", type=float, default=None, metavar="P",
                   help="instance models: watershed seeds are interiors above this "
                   "probability (default: the value chosen on the model's validation "
                   "images at training, else 0.7)")


def cmd_make_demo_data(args: argparse.Namespace) -> int:
    from .data.synthetic import write_demo_data

    if args.volumes:
        from .data.synthetic_volumes import write_demo_volumes

        count = args.count or 24
        path = write_demo_volumes(args.directory, count=count, seed=args.seed)
        print(f"wrote {count} demo volumes (NIfTI) with masks to {path}")
        return 0
    args.count = args.count or 64
    path = write_demo_data(args.directory, count=args.count, size=args.size, seed=args.seed,
                           multiclass=args.multiclass)
    print(f"wrote {args.count} demo images with masks and instance labels to {path}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """Measure the data once: print the fingerprint table and write it as JSON; then the
    plan `unetkit train --time` would train with on this machine."""
    from .config import with_demo_classes
    from .errors import writing
    from .fingerprint import default_out, fingerprint, format_fingerprint
    from .plan import DEFAULT_TIME, format_plan, make_plan

    data = with_demo_classes(DataConfig(root=args.data, num_classes=args.num_classes,
                                        mask_encoding=args.mask_encoding))
    fp = fingerprint(data, seed=args.seed)
    print(format_fingerprint(fp))
    out = Path(args.out) if args.out else default_out(data)
    with writing("the fingerprint", out):
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(fp, indent=2) + "\n")
    print(f"wrote {out}")
    if args.time != 0:
        explicit = frozenset({"data.num_classes", "data.mask_encoding"})
        _, plan = make_plan(Config(data=data), explicit, args.time or DEFAULT_TIME, fp=fp)
        print(format_plan(plan))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """What this machine will run with: the settings `train` and `predict` pick."""
    import torch

    from . import __version__
    from .runtime import make_runtime

    rt = make_runtime()
    print(f"unetkit {__version__}, torch {torch.__version__}")
    print(f"device: {rt.device}  autocast: {str(rt.dtype).replace('torch.', '')}  "
          f"channels_last: {rt.channels_last}")
    print(f"threads: {torch.get_num_threads()}  "
          f"OMP_WAIT_POLICY: {os.environ.get('OMP_WAIT_POLICY', 'default')}")
    print(f"allocator: {allocator_name()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unetkit", description="U-Net and ResNet-U-Net segmentation: train, predict, "
        "evaluate, export.")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also UNETKIT_DEBUG=1)")
    common.add_argument("--verbose", action="store_true",
                        help="also debug messages (the 'unetkit' logger at DEBUG)")

    p = sub.add_parser("train", parents=[common],
                       help="train a model (on the built-in demo data without --data)",
                       description="Train a segmentation model. Without --data it trains on "
                       "the built-in generated nuclei images. Settings come from the "
                       "defaults, then --config FILE (YAML or JSON with sections "
                       f"{', '.join(SECTIONS)}), then the flags.")
    p.add_argument("--config", metavar="FILE", help="YAML or JSON config file")
    p.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")
    p.add_argument("--plan", action=argparse.BooleanOptionalAction, default=None,
                   help="choose the settings from the data, the machine and the time "
                   "(unetkit.plan; printed and saved as plan.json). Default: on, unless "
                   "--config or --epochs fixes the run without --time, or --resume")
    add_config_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", parents=[common],
                       help="segment images of any size with a checkpoint",
                       description="Segment images (files or folders) tile by tile, at "
                       "bounded memory. Writes OUT/NAME.png masks (class indices; 0/255 "
                       "for binary), optional probability maps and overlays.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    _add_tiling_flags(p)
    p.add_argument("--probabilities", choices=("tiff", "npy"),
                   help="also write class probabilities (float32, K x H x W)")
    p.add_argument("--overlay", action="store_true", help="also write NAME_overlay.png")
    p.add_argument("--instances", action="store_true",
                   help="also write the objects: NAME_labels.tif (1..N), NAME_objects.csv "
                   "(area, centroid, box, diameter, mean intensity) and, with --overlay, "
                   "NAME_objects.png (outlines and count); separated by watershed for an "
                   "instance model (--task instances), connected components otherwise")
    _add_object_flags(p)
    p.add_argument("--min-component-size", type=int, metavar="N",
                   help="remove connected components smaller than N pixels (voxels) from "
                   "every foreground class; they become background (default: the "
                   "checkpoint's postprocess setting, else 0 = off)")
    p.add_argument("--keep-largest", action=argparse.BooleanOptionalAction, default=None,
                   help="keep only the largest connected component of each foreground "
                   "class (default: the checkpoint's postprocess setting, else off)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", parents=[common],
                       help="score a checkpoint on a folder of images and masks",
                       description="Dice, IoU, precision and recall per class, per image and "
                       "overall, for DATA/images + DATA/masks; printed and written as CSV.")
    p.add_argument("--data", required=True, metavar="DIR", help="folder with images/, masks/")
    p.add_argument("--csv", metavar="FILE", help="default: CKPT/evaluation.csv")
    p.add_argument("--hausdorff", action="store_true",
                   help="also the 95%% Hausdorff distance (pixels) per foreground class")
    p.add_argument("--instance-labels", metavar="DIR",
                   help="instance labels (0 = background, 1..N objects) by file stem, for "
                   "the object metrics (default: DATA/instances when it exists)")
    _add_object_flags(p)
    _add_tiling_flags(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", parents=[common],
                       help="export a checkpoint to ONNX or TorchScript, verified",
                       description="Export with dynamic batch, height and width (and "
                       "depth for a 3D checkpoint), then run the export at two other sizes "
                       "and compare with PyTorch. ONNX uses PyTorch's torch.export-based "
                       "exporter, or the TorchScript-based one where that fails (one "
                       "warning line says why).")
    p.add_argument("--checkpoint", required=True, metavar="CKPT")
    p.add_argument("--format", required=True, choices=("onnx", "torchscript"))
    p.add_argument("--out", required=True, metavar="FILE")
    p.add_argument("--size", type=int, nargs="+", metavar="N",
                   help="trace size: one side, H W, or D H W for a 3D checkpoint "
                   "(default 64; 32 in 3D)")
    p.add_argument("--opset", type=int, help="ONNX opset (default 18)")
    p.add_argument("--atol", type=float, default=1e-4,
                   help="largest allowed difference from PyTorch")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("plan", parents=[common],
                       help="measure a data set: sizes, intensities, classes, objects",
                       description="Read every image, mask and instance file once and "
                       "print the data fingerprint (sizes, channels, intensity statistics, "
                       "class frequencies, object sizes, touching objects, warnings); "
                       "also written as JSON.")
    p.add_argument("--data", metavar="DIR",
                   help="folder with images/, masks/ (default: the built-in demo data)")
    p.add_argument("--out", metavar="FILE",
                   help="JSON file (default: DATA/fingerprint.json, runs/demo-fingerprint.json)")
    p.add_argument("--num-classes", type=int, default=2, help="mask classes, background "
                   "included (default 2)")
    p.add_argument("--mask-encoding", default="auto",
                   choices=choices_of(DataConfig, "mask_encoding"), help="default auto")
    p.add_argument("--seed", type=int, default=0, help="seed of the intensity sample")
    p.add_argument("--time", type=_argument_type(parse_duration, False), metavar="TIME",
                   help="also print the plan `unetkit train --time TIME` would use here "
                   "(default 10m; 0 for the fingerprint only)")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("info", parents=[common],
                       help="show the device, precision and allocator in use")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("make-demo-data", parents=[common],
                       help="write the built-in demo data set to a folder")
    p.add_argument("directory")
    p.add_argument("--count", type=int, help="images (default 64) or volumes (default 24)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--multiclass", action="store_true",
                   help="background + 3 object classes instead of binary nuclei")
    p.add_argument("--volumes", action="store_true",
                   help="3D: NIfTI volumes of nuclei-like blobs (24 x 96 x 96 voxels, "
                   "spacing 3 x 1 x 1) in images/ and masks/; --size is not used")
    p.set_defaults(func=cmd_make_demo_data)
    return parser


def main(argv: list[str] | None = None, relaunch: bool | None = None) -> int:
    """Run a command; ``argv`` None means the program's own arguments. ``relaunch``
    (default: when run as a program) allows the one re-exec with tcmalloc."""
    if relaunch is None:
        relaunch = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    if relaunch:
        relaunch_if_needed(argv)
    args = build_parser().parse_args(argv)
    from .log import LOGGER, set_verbosity

    level = LOGGER.level  # restored afterwards: main() may run inside a Python process
    set_verbosity(quiet=getattr(args, "quiet", False), verbose=args.verbose)
    debug = args.debug or bool(os.environ.get("UNETKIT_DEBUG"))
    try:
        return _run(args, debug)
    finally:
        LOGGER.setLevel(level)


def _run(args: argparse.Namespace, debug: bool) -> int:
    try:
        return args.func(args)
    except USER_ERRORS as err:
        # The user's problem (a setting, a file, a full disk, a diverging run): the message
        # is the whole story, exit code 2. Anything else is a bug and keeps its traceback.
        if debug:
            raise
        print(f"unetkit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        # Running out of memory is the user's to fix too (a smaller batch or tile).
        if debug or "out of memory" not in str(err).lower():
            raise
        print(f"unetkit {args.command}: error: out of memory ({str(err).splitlines()[0]}); "
              "try a smaller --batch-size, --patch-size or --tile", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
