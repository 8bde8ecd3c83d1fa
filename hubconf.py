"""torch.hub entry points, so unetkit's networks load with one call from a clone:

    model = torch.hub.load("path/to/unetkit", "unet", source="local",
                           in_channels=1, out_channels=2)
    model = torch.hub.load("path/to/unetkit", "from_checkpoint", source="local",
                           path="runs/demo")

``torch.hub.list(repo, source="local")`` lists them. Nothing is downloaded: a plain clone
works without ``pip install`` (the src/ tree is put on the path, as ``models/`` does for
the original design's snippets).
"""

import sys as _sys
from pathlib import Path as _Path

# What the entry points import (torch.hub checks these first and names any that is missing;
# tests/test_hub.py keeps the list complete).
dependencies = ["torch", "numpy", "safetensors", "tqdm"]

try:
    import unetkit as _unetkit  # noqa: F401
except ImportError:  # a plain clone without `pip install`: use the source tree
    _sys.path.insert(0, str(_Path(__file__).resolve().parent / "src"))


def unet(**kwargs):
    """The paper's U-Net, ``unetkit.UNet(**kwargs)`` (untrained).

    Keywords as :class:`unetkit.UNet`: ``in_channels`` (3), ``out_channels`` (1: one
    logit for binary segmentation; K for K classes), ``features`` (64), ``depth`` (4),
    ``padding`` ("valid", the paper's, or "same"), ``upsample``, ``norm``, ``dropout``,
    ``spatial_dims`` (2; 3 for volumes).

    Shapes: input (B, in_channels, H, W) float -> logits (B, out_channels, H', W'): with
    ``padding="same"`` H' = H for any H x W; with "valid" the output is the centre of the
    input (572 x 572 -> 388 x 388 at depth 4; ``model.output_size(H)`` gives H'). In 3D:
    (B, in_channels, D, H, W) -> (B, out_channels, D', H', W').
    """
    from unetkit.models import UNet

    return UNet(**kwargs)


def resnet_unet(**kwargs):
    """A U-Net decoder on a ResNet encoder, ``unetkit.ResNetUNet(**kwargs)``.

    Keywords as :class:`unetkit.ResNetUNet`: ``num_classes`` (1: one logit for binary
    segmentation; K for K classes), ``depth`` (34; 18, 50, 101, 152), ``in_channels`` (3;
    any count: pretrained weights' RGB stem is averaged and repeated per channel),
    ``pretrained`` (False; True reads torchvision's ImageNet file from torch.hub's
    checkpoint folder, or a path to that file), ``decoder_channels``, ``freeze_encoder``.

    Shapes: input (B, in_channels, H, W) float of any size -> logits
    (B, num_classes, H, W) (padded to a multiple of 32 inside, cropped back). Pretrained
    weights expect [0, 1] images normalised with ``unetkit.IMAGENET_MEAN``/``IMAGENET_STD``.
    """
    from unetkit.models import ResNetUNet

    return ResNetUNet(**kwargs)


def from_checkpoint(path, device="cpu"):
    """A trained unetkit model, in eval mode on ``device``.

    ``path``: a run folder (``runs/demo``: its ``checkpoints/best``), a checkpoint folder
    (model.safetensors + config.json), or a ``.safetensors`` file with its config.json
    beside it (see :func:`unetkit.load_checkpoint`, which also returns the Config).

    Shapes: input (B, model.in_channels, H, W) float, normalised as at training
    (``config.data.mean``/``std``, from ``unetkit.load_checkpoint``) -> logits
    (B, C, H', W'), C = 1 for a binary model (sigmoid) or the number of classes
    (softmax); H' = H except for a valid-padding U-Net. ``unetkit.predict`` does the
    normalisation and tiling for whole images.
    """
    from unetkit.checkpoint import load_checkpoint

    model, _ = load_checkpoint(path, device=device)
    return model
