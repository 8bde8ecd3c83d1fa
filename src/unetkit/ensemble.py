"""Several trained models as one: the cross-validation folds, or any checkpoints of one
configuration. :class:`Ensemble` averages the members' class probabilities and returns
logits of that average, so everything that takes a model (tiled prediction, TTA,
evaluation, volumes) takes an ensemble unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .outputs import is_binary, probabilities

EPS = 1e-7  # probabilities are clamped away from 0 and 1 before their logarithm


def logits_of(mean_probabilities: Tensor, binary: bool) -> Tensor:
    """Logits whose probabilities (sigmoid for one logit, softmax otherwise) are
    ``mean_probabilities`` (B, K, ...): log-odds of the foreground for a binary model, log
    probabilities otherwise."""
    p = mean_probabilities.clamp(EPS, 1 - EPS)
    if binary:
        return torch.log(p[:, 1:2]) - torch.log(p[:, 0:1])
    return torch.log(p)


class Ensemble(nn.Module):
    """Models of one architecture and output convention, averaged in probability.

    Input and output shapes are the members': (B, C, H, W) or (B, C, D, H, W) images ->
    (B, K', ...) logits with K' = the members' output channels. Attributes the
    prediction code asks a model for (``padding``, ``margin()``, ``size_multiple``, ...)
    are the first member's: members share a configuration.
    """

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        if not models:
            raise ValueError("an ensemble needs at least one model")
        self.members = nn.ModuleList(models)

    def forward(self, x: Tensor) -> Tensor:
        total, binary = None, False
        for member in self.members:
            logits = member(x)
            binary = is_binary(logits)
            p = probabilities(logits)
            total = p if total is None else total + p
        return logits_of(total / len(self.members), binary).to(logits.dtype)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            members = self._modules.get("members")
            if members is None or len(members) == 0:
                raise
            return getattr(members[0], name)
