"""Fold BatchNorm into the preceding convolution for inference.

In eval mode a BatchNorm2d is a fixed per-channel affine map,
``y = (x - mean) * gamma / sqrt(var + eps) + beta``, so when it directly follows a
convolution it can be absorbed into that convolution's weight and bias. The folded network
computes the same function with one layer fewer per pair. That matters because BatchNorm
does almost no arithmetic per byte: it reads and writes the whole activation map once more
(a memory-bound pass), which on a CPU costs a noticeable share of a U-Net's inference time.
"""

from __future__ import annotations

import copy
import re

import torch
from torch import nn

from .layers import BATCH_NORM, CONV

__all__ = ["fold_batchnorm", "fold_conv_bn"]

# Attribute pairs such as ``conv1``/``bn1`` (torchvision ResNet blocks and the ResNet stem):
# in these modules ``bnN`` is always applied directly to ``convN``'s output.
_CONV_NAME = re.compile(r"conv(\d*)")


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    dims = next((d for d, cls in CONV.items() if type(conv) is cls), None)  # 2D or 3D
    return (
        dims is not None
        and isinstance(bn, BATCH_NORM[dims])
        # Without running statistics BatchNorm uses the batch's own statistics even in
        # eval mode: not a fixed affine map, so it cannot be folded.
        and bn.track_running_stats
        and bn.running_mean is not None
        and conv.out_channels == bn.num_features
    )


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold ``bn`` (eval-mode statistics) into ``conv`` in place.

    weight (C_out, C_in / groups, kH, kW) becomes ``w * s`` with the per-output-channel
    scale ``s = gamma / sqrt(running_var + eps)``; bias (C_out,) becomes
    ``(b - running_mean) * s + beta`` (``b = 0`` when the convolution had no bias; a bias
    parameter is then created). Computed in float64 and stored in the weight's dtype.
    """
    weight = conv.weight.double()
    mean = bn.running_mean.double()
    var = bn.running_var.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(mean)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    new_weight = weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))
    new_bias = (bias - mean) * scale + beta
    conv.weight.copy_(new_weight.to(conv.weight.dtype))
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias.to(device=conv.weight.device, dtype=conv.weight.dtype))
    else:
        conv.bias.copy_(new_bias.to(conv.bias.dtype))


def _fold_children(module: nn.Module) -> int:
    """Fold the pairs directly inside ``module`` (not recursively); returns how many."""
    folded = 0
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        for first, second in zip(names, names[1:]):
            conv, bn = module._modules[first], module._modules[second]
            if _foldable(conv, bn):
                fold_conv_bn(conv, bn)
                module._modules[second] = nn.Identity()
                folded += 1
    for name, child in list(module._modules.items()):
        match = _CONV_NAME.fullmatch(name)
        if match is None:
            continue
        bn_name = f"bn{match.group(1)}"
        bn = module._modules.get(bn_name)
        if bn is not None and _foldable(child, bn):
            fold_conv_bn(child, bn)
            setattr(module, bn_name, nn.Identity())
            folded += 1
    return folded


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for inference with every foldable BatchNorm2d folded away
    (BatchNorm3d after a Conv3d likewise, in 3D networks).

    Folded: a BatchNorm2d that directly follows a Conv2d in an ``nn.Sequential`` (the
    U-Net's ``ConvNormReLU``, ResNet's ``downsample``), and ``bnN`` attributes paired with a
    ``convN`` attribute of the same module (ResNet ``BasicBlock`` / ``Bottleneck`` and the
    stem). Each folded BatchNorm is replaced by ``nn.Identity``; any other BatchNorm is
    kept. The copy is in eval mode and gives the same outputs as ``model.eval()`` up to
    float rounding; do not train it (there are no batch statistics left to learn).

    ``model`` itself is not changed (deep copy), and may be in train mode.
    """
    folded = copy.deepcopy(model)
    folded.eval()
    for module in list(folded.modules()):
        _fold_children(module)
    return folded
