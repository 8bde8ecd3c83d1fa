"""Catching a training run that diverges, before it wastes hours or saves broken weights.

Three checks, each cheap next to a training step:

* A step whose loss or gradient norm is not finite is SKIPPED (no optimizer update, and
  the BatchNorm statistics its forward pass changed are put back) and counted;
  ``max_bad_steps`` of them in a row stop the run. (Under fp16 loss scaling an infinite
  gradient is the scaler's normal signal to lower its scale, so there only a non-finite
  loss counts.)
* The loss, smoothed over steps, passing ``max_loss_factor`` times its starting value
  stops the run: a learning rate far too high shows up this way long before NaN does.
* Before every checkpoint, the parameters AND buffers (BatchNorm running statistics can
  overflow while the weights stay finite) are checked: a checkpoint with a non-finite
  tensor is never written.

Each stop raises :class:`DivergenceError`, one line naming the epoch and step and
suggesting a lower learning rate.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .errors import UserError

# Weight of the newest step in the smoothed loss: a single spike of 10x the limit trips it,
# ordinary step-to-step noise does not.
SMOOTHING = 0.2


class DivergenceError(UserError):
    """Training diverged; the message says where and what to try."""


def nonfinite_tensors(model: nn.Module) -> list[str]:
    """Names of the floating-point parameters and buffers of ``model`` holding NaN or inf."""
    return [name for name, tensor in model.state_dict().items()
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]


class DivergenceGuard:
    """Decides, step by step, whether an update may be applied, and stops a diverging run.

    ``lr`` is only quoted in the advice of the error message.
    """

    def __init__(self, max_bad_steps: int, max_loss_factor: float, lr: float,
                 scaled_fp16: bool = False):
        self.max_bad_steps = max_bad_steps
        self.max_loss_factor = max_loss_factor
        self.lr = lr
        self.scaled_fp16 = scaled_fp16
        self.skipped = 0  # non-finite steps skipped over the whole run
        self.bad_in_a_row = 0
        self.start: float | None = None  # the first finite loss
        self.smoothed: float | None = None

    def allow_step(self, loss: float, grad_norm: float, epoch: int, step: int) -> bool:
        """True: apply this update. False: skip it (counted). Raises DivergenceError."""
        grads_ok = math.isfinite(grad_norm) or self.scaled_fp16
        if not (math.isfinite(loss) and grads_ok):
            self.skipped += 1
            self.bad_in_a_row += 1
            if self.bad_in_a_row >= self.max_bad_steps:
                raise self._error(epoch, step, f"{self.bad_in_a_row} steps in a row had a "
                                  f"non-finite loss or gradient (loss {loss:.3g})")
            return False
        self.bad_in_a_row = 0
        if self.start is None:
            self.start = self.smoothed = max(loss, 1e-8)
            return True
        self.smoothed = (1 - SMOOTHING) * self.smoothed + SMOOTHING * loss
        if self.smoothed > self.max_loss_factor * self.start:
            raise self._error(epoch, step, f"the loss rose to {loss:.3g}, over "
                              f"{self.max_loss_factor:g}x its starting value {self.start:.3g}")
        return True

    def check_weights(self, model: nn.Module, epoch: int) -> None:
        """Raise DivergenceError when a parameter or buffer is not finite (before a save)."""
        bad = nonfinite_tensors(model)
        if bad:
            raise self.weights_error(epoch, bad)

    def weights_error(self, epoch: int, bad: list[str]) -> DivergenceError:
        """The error for the non-finite tensors named in ``bad``."""
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        return self._error(epoch, None, f"{len(bad)} tensor(s) of the model are not "
                           f"finite ({shown}), so this epoch was not saved")

    def _error(self, epoch: int, step: int | None, what: str) -> DivergenceError:
        where = f"epoch {epoch}" + (f", step {step}" if step is not None else "")
        return DivergenceError(f"training diverged at {where}: {what}; checkpoints of "
                               f"finished epochs are kept. Start again with a lower --lr "
                               f"(now {self.lr:g}), e.g. {self.lr / 10:g}, and --overwrite "
                               "(--resume keeps the saved settings)")
