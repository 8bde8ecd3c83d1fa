"""Deep supervision's network side (nnU-Net's, ``model.deep_supervision``): auxiliary 1x1
heads on the lower decoder stages, shared by :class:`~.unet.UNet` and
:class:`~.encoder_unet.EncoderUNet`. The loss side (weights, downsampled targets) is
:class:`unetkit.deep_supervision.DeepSupervisionLoss`.

Levels: a decoder of L stages ends at resolution levels L-1 (the coarsest, just above the
bottleneck) .. 0 (full resolution, the main ``head``); level k is 2^k times coarser (per
axis: the product of that axis's first k pooling sizes). nnU-Net gives level k the loss
weight 1/2^k, except the coarsest level L-1, whose weight is 0; a head there would never
be trained (and would leave DistributedDataParallel with unused parameters), so the
networks build heads on levels 1 .. L-2 only: ``aux_heads[k - 1]`` at level k. A depth-2
U-Net therefore has none.

The heads are training-only: ``model(x)`` never runs them, so eval, prediction and export
cost exactly what a network without them costs; ``model(x, auxiliary=True)`` returns
``[main, level 1, .., level L-2]``, full resolution first. Their weights are the only
state_dict keys deep supervision adds (``aux_heads.*``); :func:`match_auxiliary` lets a
checkpoint with them load into a network without them and the other way round, and
:func:`unetkit.checkpoint.load_checkpoint` always builds the network without heads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .layers import CONV

AUXILIARY_PREFIX = "aux_heads."  # the state_dict keys of the auxiliary heads


def supervised_levels(levels: int) -> range:
    """The decoder levels with an auxiliary head in a decoder of ``levels`` stages: 1 ..
    levels-2 (level 0 is the main head; the coarsest level's loss weight is 0)."""
    return range(1, max(1, levels - 1))


def auxiliary_heads(channels: Sequence[int], out_channels: int, dims: int) -> nn.ModuleList:
    """One 1x1 convolution (``dims``-D) per supervised level, ``channels[j]`` in: the
    decoder's width at level j + 1."""
    return nn.ModuleList(CONV[dims](c, out_channels, kernel_size=1) for c in channels)


def crop_auxiliary(outputs: Sequence[torch.Tensor], sizes: Sequence[int],
                   scales: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Auxiliary outputs of an internally padded input cropped back (far side) to the
    input's ``sizes`` divided by each output's per-axis ``scales``, rounded up: the cells
    that a nearest-neighbour downsampling of the target keeps."""
    # ``s`` itself at scale 1: a traced export keeps the main output's crop symbolic
    return [out[(..., *(slice(0, s if f == 1 else (s + f - 1) // f)
                        for s, f in zip(sizes, scale)))]
            for out, scale in zip(outputs, scales)]


def level_scales(pool_sizes: Sequence[Sequence[int]], levels: range) -> list[tuple[int, ...]]:
    """Per level in ``levels``, the per-axis downsampling factor: the product of each
    axis's first k pooling sizes."""
    scales = []
    for k in levels:
        factor = [1] * len(pool_sizes[0])
        for stage in pool_sizes[:k]:
            factor = [f * p for f, p in zip(factor, stage)]
        scales.append(tuple(factor))
    return scales


def match_auxiliary(weights: Mapping[str, torch.Tensor], model: nn.Module
                    ) -> dict[str, torch.Tensor]:
    """``weights`` (a state_dict) fitted to ``model``'s auxiliary heads only: head weights
    the model has no head for are dropped (a deep-supervision checkpoint loaded for
    inference), and heads the weights lack keep the model's own initial values (a
    checkpoint without heads fine-tuned with them). Every other key is left as it is, so a
    strict ``load_state_dict`` still refuses any real mismatch."""
    own = model.state_dict()
    fitted = {k: v for k, v in weights.items()
              if not k.startswith(AUXILIARY_PREFIX) or k in own}
    fitted.update({k: v for k, v in own.items()
                   if k.startswith(AUXILIARY_PREFIX) and k not in fitted})
    return fitted


def drop_auxiliary(model: nn.Module) -> nn.Module:
    """``model`` (in place) without auxiliary heads: the inference network."""
    if getattr(model, "aux_heads", None) is not None:
        model.aux_heads = None
    if hasattr(model, "deep_supervision"):
        model.deep_supervision = False
    return model
