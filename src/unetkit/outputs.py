"""The output convention, written once: how many logits a model has for K classes, and
how its logits become probabilities and labels.

* K = 2 (binary, background included): ONE logit channel; sigmoid(logit) is the
  foreground probability, so the class probabilities are [1 - p, p] and the label is
  ``logit > 0``. One channel instead of two halves the head and is what BCE expects.
* K >= 3: K logit channels; softmax gives the probabilities and argmax the label.

Every part of unetkit (losses, metrics, training, prediction, evaluation, export) asks
this module rather than testing ``channels == 1`` itself.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_num_classes(num_classes: int) -> None:
    """Raise ValueError unless ``num_classes`` counts at least background + one class."""
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background too, so >= 2; got {num_classes}")


def logit_channels(num_classes: int) -> int:
    """Output channels of a model for K classes: 1 for K = 2, else K."""
    check_num_classes(num_classes)
    return 1 if num_classes == 2 else num_classes


def num_classes_of(channels: int) -> int:
    """K for a model with ``channels`` output channels (the inverse of logit_channels)."""
    return max(channels, 2)


def is_binary(logits: Tensor) -> bool:
    """True for one-logit (sigmoid) outputs, shape (B, 1, ...)."""
    return logits.shape[1] == 1


def probabilities(logits: Tensor) -> Tensor:
    """(B, C, ...) logits -> (B, K, ...) class probabilities, K = max(C, 2), computed in
    float32 (float64 stays float64) so bf16/fp16 autocast logits lose nothing more."""
    if logits.dtype != torch.float64:
        logits = logits.float()
    if is_binary(logits):
        p = torch.sigmoid(logits)
        return torch.cat([1.0 - p, p], dim=1)
    return torch.softmax(logits, dim=1)


def labels_of_probabilities(probabilities):
    """(K, ...) class probabilities (numpy or tensor, as :func:`probabilities` gives them
    for one image) -> (...) class indices: the most probable class."""
    return probabilities.argmax(0)


def labels(logits: Tensor) -> Tensor:
    """(B, C, ...) logits -> (B, ...) int64 class indices: logit > 0 when C == 1 (sigmoid
    > 0.5), argmax over C otherwise."""
    if logits.ndim < 2:
        raise ValueError(f"logits must have shape (B, C, ...), got shape {tuple(logits.shape)}")
    if is_binary(logits):
        return (logits[:, 0] > 0).long()
    return logits.argmax(dim=1)
