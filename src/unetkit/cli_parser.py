"""The ``unetkit`` command line's parser: every command, flag and help text.

:mod:`unetkit.cli` runs the commands; this module only says what they accept.
``tests/test_help.py`` walks every command and fails on an option without help.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from . import __version__
from .config import (
    SECTIONS,
    DataConfig,
    InferenceConfig,
    TrainConfig,
    choices_of,
    parse_duration,
)
from .flags import HelpFormatter, add_config_flags, argument_type, choices_help

Commands = dict[str, Callable[[argparse.Namespace], int]]

DESCRIPTION = ("U-Net and ResNet+U-Net segmentation in PyTorch: train on a folder of images "
               "and masks (or the built-in demo data), then predict, evaluate and export.")
EPILOG = ("`unetkit COMMAND --help` lists a command's flags. Documentation: README.md and "
          "docs/ in the repository.")


def build_parser(commands: Commands) -> argparse.ArgumentParser:
    """The parser of ``unetkit``; ``commands`` maps each command's name to its function."""
    parser = argparse.ArgumentParser(prog="unetkit", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"unetkit {__version__}",
                        help="print unetkit's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                title="commands")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also UNETKIT_DEBUG=1)")
    common.add_argument("--verbose", action="store_true",
                        help="also debug messages (the 'unetkit' logger at DEBUG)")

    def command(name: str, summary: str, description: str | None = None):
        p = sub.add_parser(name, parents=[common], help=summary,
                           description=description or summary + ".",
                           formatter_class=HelpFormatter)
        p.set_defaults(func=commands[name])
        return p

    _train(command("train", "train a model (on the built-in demo data without --data)",
                   "Train a segmentation model. Without --data it trains on the built-in "
                   "generated nuclei images. Settings come from the defaults, then --config "
                   f"FILE (YAML or JSON with sections {', '.join(SECTIONS)}), then the "
                   "flags. Without --epochs or --config the run is planned from the data, "
                   "this machine and the time (10 minutes unless --time says otherwise): "
                   "the settings marked 'a planned run chooses it' are then the plan's, "
                   "unless given."))
    _predict(command("predict", "segment images of any size with a checkpoint",
                     "Segment images (files or folders) tile by tile, at bounded memory. "
                     "Writes OUT/NAME.png masks (class indices; 0/255 for binary), optional "
                     "probability maps and overlays."))
    _evaluate(command("evaluate", "score a checkpoint on a folder of images and masks",
                      "Dice, IoU, precision and recall per class, per image and overall, "
                      "for DATA/images + DATA/masks; printed and written as CSV."))
    _export(command("export", "export a checkpoint to ONNX or TorchScript, verified",
                    "Export with dynamic batch, height and width (and depth for a 3D "
                    "checkpoint), then run the export at two other sizes and compare with "
                    "PyTorch. ONNX uses PyTorch's torch.export-based exporter, or the "
                    "TorchScript-based one where that fails (one warning line says why)."))
    _plan(command("plan", "measure a data set and show the plan `train --time` would use",
                  "Read every image, mask and instance file once and print the data "
                  "fingerprint (sizes, channels, intensity statistics, class frequencies, "
                  "object sizes, touching objects, warnings), also written as JSON; then "
                  "the plan `unetkit train --time` would train with on this machine."))
    command("info", "show the device, precision and allocator this machine will use")
    _demo_data(command("make-demo-data", "write the built-in demo data set to a folder",
                       "Write the built-in generated data (images, masks, instance labels "
                       "and a README.txt) to a folder, to try the commands on files."))
    return parser


def _train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML or JSON config file")
    p.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")
    p.add_argument("--plan", action=argparse.BooleanOptionalAction, default=None,
                   help="choose the settings from the data, the machine and the time "
                   "(unetkit.plan; printed and saved as plan.json). Default: on, unless "
                   "--config or --epochs fixes the run without --time, or --resume")
    add_config_flags(p)


def _checkpoint_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="CKPT", action="append",
                   help="run folder (its checkpoints/best), checkpoint folder such as "
                   "runs/demo/checkpoints/best, or a .safetensors file with config.json "
                   "beside it; repeated (--checkpoint A --checkpoint B), or a `train "
                   "--folds` folder: their ensemble (probabilities averaged)")


def _tiling(p: argparse.ArgumentParser) -> None:
    _checkpoint_flag(p)
    defaults = InferenceConfig()
    p.add_argument("--tile", type=int, metavar="PX", help="output tile side in pixels "
                   f"(default: {defaults.valid_tile} for a valid-padding U-Net, else "
                   f"{defaults.tile}; volumes: the training patch)")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, metavar="N",
                   help=f"tiles per forward pass (default: {defaults.batch_size})")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average over flips and 90-degree turns "
                   "(volumes: flips)")
    p.add_argument("--overlap", type=float, metavar="FRACTION", help="same-padding models: "
                   f"tile overlap fraction (default: {defaults.overlap})")
    p.add_argument("--precision", choices=choices_of(TrainConfig, "precision"), default="auto",
                   metavar="|".join(choices_of(TrainConfig, "precision")),
                   help=choices_help(TrainConfig, "precision", "autocast precision "
                                     "(default: auto)"))
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _objects(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-object-size", type=int, default=None, metavar="PX",
                   help="objects smaller than this are dropped (default: the size an "
                   "instance model chose on its validation images, else 16)")
    p.add_argument("--seed-threshold", type=float, default=None, metavar="P",
                   help="instance models: watershed seeds are interiors above this "
                   "probability (default: the value chosen on the model's validation "
                   "images at training, else 0.7)")


def _predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    _tiling(p)
    p.add_argument("--probabilities", choices=("tiff", "npy"), metavar="tiff|npy",
                   help="also write class probabilities (float32, K x H x W)\n"
                   "tiff: NAME.tif, one tiled, compressed page per class\n"
                   "npy: NAME.npy, one (K, H, W) array")
    p.add_argument("--overlay", action="store_true", help="also write NAME_overlay.png")
    p.add_argument("--instances", action="store_true",
                   help="also write the objects: NAME_labels.tif (1..N), NAME_objects.csv "
                   "(area, centroid, box, diameter, mean intensity) and, with --overlay, "
                   "NAME_objects.png (outlines and count); separated by watershed for an "
                   "instance model (--task instances), connected components otherwise")
    _objects(p)
    p.add_argument("--min-component-size", type=int, metavar="N",
                   help="remove connected components smaller than N pixels (voxels) from "
                   "every foreground class; they become background (default: the "
                   "checkpoint's postprocess setting, else 0 = off)")
    p.add_argument("--keep-largest", action=argparse.BooleanOptionalAction, default=None,
                   help="keep only the largest connected component of each foreground "
                   "class (default: the checkpoint's postprocess setting, else off)")


def _evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="DIR", help="folder with images/, masks/")
    p.add_argument("--csv", metavar="FILE", help="per-image scores (default: "
                   "RUN/evaluation.csv when --checkpoint is RUN/checkpoints/NAME, else "
                   "evaluation.csv in the current folder)")
    p.add_argument("--hausdorff", action="store_true",
                   help="also the 95%% Hausdorff distance (pixels) per foreground class "
                   "(volumes: always, in millimetres)")
    p.add_argument("--instance-labels", metavar="DIR",
                   help="instance labels (0 = background, 1..N objects) by file stem, for "
                   "the object metrics (default: DATA/instances when it exists)")
    _objects(p)
    _tiling(p)


def _export(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="CKPT",
                   help="run folder (its checkpoints/best), checkpoint folder, or a "
                   ".safetensors file with config.json beside it")
    p.add_argument("--format", required=True, choices=("onnx", "torchscript"),
                   metavar="onnx|torchscript", help="the file format\n"
                   "onnx: for ONNX Runtime and other runtimes (needs the export extra: "
                   "pip install -e '.[export]')\n"
                   "torchscript: for torch.jit.load, in C++ or Python without unetkit")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="the file to write (e.g. model.onnx, model.pt)")
    p.add_argument("--size", type=int, nargs="+", metavar="N",
                   help="trace size: one side, H W, or D H W for a 3D checkpoint "
                   "(default: 64; 32 in 3D)")
    p.add_argument("--opset", type=int, metavar="N", help="ONNX opset (default: 18)")
    p.add_argument("--atol", type=float, default=1e-4, metavar="X",
                   help="largest allowed difference of the logits from PyTorch's "
                   "(default: 0.0001)")


def _plan(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="DIR",
                   help="folder with images/, masks/ (default: the built-in demo data)")
    p.add_argument("--out", metavar="FILE",
                   help="JSON file (default: DATA/fingerprint.json, runs/demo-fingerprint.json)")
    p.add_argument("--num-classes", type=int, default=2, metavar="K", help="mask classes, "
                   "background included (default: 2)")
    p.add_argument("--mask-encoding", default="auto",
                   choices=choices_of(DataConfig, "mask_encoding"),
                   metavar="|".join(choices_of(DataConfig, "mask_encoding")),
                   help=choices_help(DataConfig, "mask_encoding",
                                     "how mask files are read (default: auto)"))
    p.add_argument("--seed", type=int, default=0, help="seed of the intensity sample "
                   "(default: 0)")
    p.add_argument("--time", type=argument_type(parse_duration, False), metavar="TIME",
                   help="also print the plan `unetkit train --time TIME` would use here "
                   "(default: 10m; 0 for the fingerprint only)")


def _demo_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", metavar="DIR", help="the folder to write (created if "
                   "needed; files of the same names are replaced)")
    p.add_argument("--count", type=int, metavar="N",
                   help="images (default: 64) or volumes (default: 24)")
    p.add_argument("--size", type=int, default=256, metavar="PX",
                   help="side of each square image in pixels (default: 256)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the generator: the same seed writes the same files "
                   "(default: 0)")
    p.add_argument("--multiclass", action="store_true",
                   help="background + 3 object classes instead of binary nuclei")
    p.add_argument("--volumes", action="store_true",
                   help="3D: NIfTI volumes of nuclei-like blobs (24 x 96 x 96 voxels, "
                   "spacing 3 x 1 x 1) in images/ and masks/; --size is not used")
