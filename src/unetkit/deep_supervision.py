"""Deep supervision's loss side (nnU-Net's, ``model.deep_supervision``): nnU-Net's weights
per decoder level, the nearest-neighbour downsampled targets, and the wrapper that applies
any loss of :mod:`unetkit.losses` (which re-exports these) to every output of
``model(x, auxiliary=True)``. The network side is :mod:`unetkit.models.auxiliary`.

nnU-Net (``nnUNetTrainer._build_loss`` with ``DeepSupervisionWrapper``): the output at
resolution level k (0 = full resolution, k = 2^k times coarser) gets weight 1/2^k, the
coarsest decoder level 0, and the weights are normalised to sum 1; the segmentation is
downsampled to each output by nearest neighbour, here with the network's own per-axis
pooling sizes (anisotropic volumes included).
"""

from __future__ import annotations

from torch import Tensor, nn

from unetkit.models.blocks import center_crop


def deep_supervision_weights(levels: int) -> list[float]:
    """nnU-Net's loss weights for the outputs of a decoder of ``levels`` stages, full
    resolution first: 1/2^k for level k, 0 for the coarsest level, normalised to sum 1;
    e.g. 5 levels: [1, 1/2, 1/4, 1/8, 0] / 1.875. One level: [1.0]."""
    weights = [1.0 / 2**k for k in range(levels)]
    if levels > 1:
        weights[-1] = 0.0
    return [w / sum(weights) for w in weights]


def downsample_nearest(x: Tensor, factors: tuple[int, ...]) -> Tensor:
    """Nearest-neighbour downsampling of the last ``len(factors)`` axes by whole factors
    (one per axis: the network's pooling sizes multiplied): every ``f``-th element from the
    first, ceil(side / f) of them, as nnU-Net downsamples segmentations; labels stay
    labels."""
    return x[(..., *(slice(None, None, f) for f in factors))]


class DeepSupervisionLoss(nn.Module):
    """``sum_k weights[k] * base(outputs[k], target_k, weight_k)``: the target (and weight
    map) downsampled by nearest neighbour by ``scales[k]`` per axis, then cropped centrally
    to the output's size (a valid-padding network's outputs are the centre of its input,
    at every level, as training crops the main one). Outputs of weight 0 are not computed.

    Called with a single tensor (validation: the main output only, as prediction sees it)
    it is ``base`` on the centrally cropped target. Build it for a network with
    :meth:`for_model`.
    """

    def __init__(self, base: nn.Module, weights: list[float], scales: list[tuple[int, ...]]):
        super().__init__()
        if len(weights) != len(scales) or not any(weights):
            raise ValueError(f"one scale per weight, not all 0: {weights}, {scales}")
        self.base, self.weights, self.scales = base, list(weights), list(scales)

    @classmethod
    def for_model(cls, base: nn.Module, model: nn.Module) -> DeepSupervisionLoss:
        """The loss for ``model(x, auxiliary=True)``: nnU-Net's weights for the model's
        ``decoder_levels`` (:func:`deep_supervision_weights`), for the outputs it has (the
        coarsest level, of weight 0, has none: :mod:`unetkit.models.auxiliary`)."""
        scales = list(model.output_scales)
        weights = deep_supervision_weights(model.decoder_levels)
        if any(weights[len(scales):]):
            raise ValueError(f"{type(model).__name__} lacks outputs of non-zero weight")
        return cls(base, weights[:len(scales)], scales)

    @property
    def check_targets(self) -> bool:
        return self.base.check_targets

    @check_targets.setter
    def check_targets(self, value: bool) -> None:
        self.base.check_targets = value

    def forward(self, outputs: Tensor | list[Tensor], target: Tensor,
                weight: Tensor | None = None) -> Tensor:
        if isinstance(outputs, Tensor):
            outputs = [outputs]
        if len(outputs) > len(self.weights):
            raise ValueError(f"{len(outputs)} outputs for {len(self.weights)} weights")
        total = None
        for out, w, scale in zip(outputs, self.weights, self.scales):
            if w == 0:
                continue
            sizes = out.shape[2:]
            t = center_crop(downsample_nearest(target, scale), *sizes)
            m = None if weight is None else center_crop(downsample_nearest(weight, scale),
                                                          *sizes)
            term = self.base(out, t, m) * (w if len(outputs) > 1 else 1.0)
            total = term if total is None else total + term
        return total

    def extra_repr(self) -> str:
        return f"weights={[round(w, 4) for w in self.weights]}, scales={self.scales}"
