"""A training run's time budget (``--time 10m``): when training must stop so that the
final validation and checkpoint still end inside the budget, how far through its time
the run is (the learning-rate schedule follows that), and where the time went.

The clock covers the whole command: planning, start-up, training steps, validation and
saving. A resumed run carries the seconds it had already used, so the budget is the
total and the remaining time is what the resumed run gets. No torch here.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .config import format_duration

PARTS = ("planning", "start-up", "training", "validation", "saving")
# Before the first validation is measured, the end (last validation + save) is assumed
# to cost this fraction of the budget; afterwards the slowest measured end, plus a margin
# because the last save also draws the figures and the machine may be busier.
FIRST_END_FRACTION = 0.08
END_MARGIN = 1.3
STEP_SMOOTHING = 0.2  # weight of the newest step in the running step time


class Budget:
    """Wall-clock bookkeeping of a budgeted run.

    ``seconds``: the whole budget; ``used``: seconds already spent (by planning, or by the
    run being resumed: ``used_by`` names it in the summary); ``end_cost``: the final
    validation + save in seconds, a first guess (default FIRST_END_FRACTION of the
    budget) or, with ``measured``, a measurement (a resumed run's).
    """

    def __init__(self, seconds: float, used: float = 0.0, end_cost: float | None = None,
                 measured: bool = False, used_by: str = "planning",
                 clock: Callable[[], float] = time.monotonic):
        self.seconds = float(seconds)
        self._clock = clock
        self._start = clock() - used
        # what was spent before this run began (planning, or the run being resumed) first
        self.parts = {used_by: used, **{p: 0.0 for p in PARTS if p != used_by}}
        self._end_cost = FIRST_END_FRACTION * seconds if end_cost is None else end_cost
        self._measured_end = measured and end_cost is not None
        self._step = 0.0  # smoothed seconds per training step

    def elapsed(self) -> float:
        return self._clock() - self._start

    def remaining(self) -> float:
        return self.seconds - self.elapsed()

    def training_deadline(self) -> float:
        """Elapsed seconds at which the last training step must have finished."""
        return max(0.0, self.seconds - END_MARGIN * self._end_cost)

    def fraction(self) -> float:
        """How far through its training time the run is, 0..1 (the schedule's clock)."""
        deadline = self.training_deadline()
        return 1.0 if deadline <= 0 else min(1.0, max(0.0, self.elapsed() / deadline))

    def training_over(self) -> bool:
        """True when one more training step would run past the training deadline."""
        return self.elapsed() + self._step >= self.training_deadline()

    def record_step(self, seconds: float) -> None:
        self._step = seconds if self._step == 0 else (
            (1 - STEP_SMOOTHING) * self._step + STEP_SMOOTHING * seconds)

    def record_end(self, seconds: float) -> None:
        """One validation + save took ``seconds``: the estimate of the final one."""
        self._end_cost = seconds if not self._measured_end else max(self._end_cost, seconds)
        self._measured_end = True

    @property
    def end_cost(self) -> float:
        """Seconds the final validation and save are expected to take."""
        return self._end_cost

    def add(self, part: str, seconds: float) -> None:
        self.parts[part] += seconds

    def summary(self) -> str:
        """``2m 01s of 2m 00s (101%): planning 5s, training 1m 40s, ...``"""
        used = self.elapsed()
        shares = ", ".join(f"{part} {format_duration(s)}" for part, s in self.parts.items()
                           if s >= 0.5)
        return (f"{format_duration(used)} of {format_duration(self.seconds)} "
                f"({100 * used / self.seconds:.0f}%): {shares}")
