"""The ``unetkit`` command line: train, predict, evaluate, export, plan, info, make-demo-data.

A thin layer: each command parses flags (:mod:`unetkit.cli_parser`) into the typed
configs and calls a function a Python user can call too. ``unetkit train`` gets one flag
per setting in :mod:`unetkit.config`, generated from the dataclasses
(:mod:`unetkit.flags`) so flags and settings never drift.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from .config import SECTIONS, Config, DataConfig, InferenceConfig  # noqa: F401  (SECTIONS)
from .errors import UserError
from .flags import DERIVED, _flag, config_from_args, explicit_settings  # noqa: F401
from .process import (  # noqa: F401  (_find_tcmalloc: also imported from here)
    _find_tcmalloc,
    allocator_name,
    relaunch_if_needed,
    tcmalloc_note,
)

# Errors that are the user's to fix: printed as one line with exit code 2 (no traceback
# unless --debug or UNETKIT_DEBUG=1). DataError, SettingError and CheckpointError are
# ValueErrors; WriteError, DivergenceError and ExportError are UserErrors.
USER_ERRORS = (UserError, ValueError, FileNotFoundError, ImportError)
# The commands whose speed the allocator changes: the launcher says when tcmalloc is missing.
SLOW_WITHOUT_TCMALLOC = ("train", "predict", "evaluate")


# -- commands -------------------------------------------------------------------------
def wants_plan(args: argparse.Namespace, explicit: frozenset[str]) -> bool:
    """--plan / --no-plan; by default a run is planned unless it resumes, or a config
    file or --epochs fixed its length without --time."""
    if getattr(args, "train.resume", None):
        return False  # the saved run's settings continue
    if args.plan is not None:
        return args.plan
    fixed_length = bool(args.config) or "train.epochs" in explicit
    return "train.time" in explicit or not fixed_length


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
    if result["max_abs_diff"] is None:  # export_model logs the verified difference
        print(f"exported {result['format']} to {result['path']} (not verified)")
    return 0


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
    """The parser of every command (:mod:`unetkit.cli_parser`), each bound to its cmd_*."""
    from .cli_parser import build_parser as build

    return build({"train": cmd_train, "predict": cmd_predict, "evaluate": cmd_evaluate,
                  "export": cmd_export, "plan": cmd_plan, "info": cmd_info,
                  "make-demo-data": cmd_make_demo_data})


def main(argv: list[str] | None = None, relaunch: bool | None = None) -> int:
    """Run a command; ``argv`` None means the program's own arguments. ``relaunch``
    (default: when run as a program) allows the one re-exec with tcmalloc."""
    if relaunch is None:
        relaunch = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    if relaunch:
        relaunch_if_needed(argv)
    args = build_parser().parse_args(argv)
    from .log import LOGGER, console

    debug = args.debug or bool(os.environ.get("UNETKIT_DEBUG"))
    with console(quiet=getattr(args, "quiet", False), verbose=args.verbose):
        note = tcmalloc_note() if relaunch and args.command in SLOW_WITHOUT_TCMALLOC else None
        if note:
            LOGGER.info(note)
        return _run(args, debug)


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
