"""Self-configuring training: settings chosen from the data, the machine and the time.

nnU-Net configures itself from a data fingerprint; unetkit does the same and also plans
for the time the user has (``unetkit train --time 10m``). :func:`make_plan` reads the
fingerprint (:mod:`unetkit.fingerprint`), measures the machine and a few training steps
(:mod:`unetkit.calibration`), then applies the rules below in order. Each rule is a small
function that returns its value and the reason, which the plan table prints. A setting
the user gave explicitly is kept, and the plan says which of its choices were
overridden. The rules' constants were measured with ``benchmarks/plan.py``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

from .calibration import (
    Machine,
    OutOfMemory,
    estimate_step_bytes,
    measure_machine,
    time_step,
)
from .config import Config, flag_name, format_duration, target_classes, with_demo_classes
from .data.loaders import default_num_workers
from .fingerprint import fingerprint
from .models.registry import encoder_size_multiple
from .outputs import logit_channels

DEFAULT_TIME = 600.0  # s: what a bare `unetkit train` trains for (docs/training.md: 10 minutes)
MIN_PATCH, MAX_PATCH = 64, 512  # px
CONTEXT_DIAMETERS = 3  # patch side per object diameter: the object and 1x around it
BOTTOM_SIDE = 8  # px: poolings stop where the deepest map is this small
MAX_DEPTH = 5
PIXELS_PER_STEP = 8 * 128 * 128  # crops x side^2 per step: the demo's measured best
MIN_BATCH, MAX_BATCH = 2, 32
WIDTHS = (16, 32)  # U-Net first-level channels to calibrate, narrow first
UPDATES_FOR_WIDER = 1000  # the wider network only pays off with this many updates
MEMORY_SHARE = 0.5  # of the free memory a training step may take
VALIDATION_SHARE = 0.1  # of the training time that validation may take
MIN_VALIDATIONS, MAX_VALIDATIONS = 3, 20
FORWARD_SHARE = 0.35  # a forward pass's share of a training step, per pixel
SAVE_SECONDS = 1.0  # a checkpoint and the figures, first guess (then measured)
LIGHT_PASSES, FULL_PASSES = 10, 50  # passes over the training pixels: light / full aug
ALIGNED = 0.5  # layout score above which images are registered (same place in each)
SYMMETRIC = 0.8  # mirror score above which a flip shows nothing new
RANGE_SPREAD = 2.0  # images' intensity ranges differing more than this: z-score each
TOUCHING = 0.05  # share of touching objects above which the border weight map is used
LEARNING_RATE = 1e-3  # Adam from scratch with BatchNorm (the demo: 1e-4 needs 3x longer)
FINE_TUNE_LEARNING_RATE = 1e-4  # a pretrained encoder


@dataclass
class Decision:
    """One planned setting: the value used, why, and the plan's own value if the user's
    explicit one replaced it."""

    setting: str  # "section.name"
    value: Any
    reason: str
    planned: Any = None
    overridden: bool = False

    @property
    def flag(self) -> str:
        return flag_name(*self.setting.split("."))


@dataclass
class Plan:
    seconds: float  # the time budget
    machine: Machine
    fingerprint: dict
    decisions: list[Decision] = field(default_factory=list)
    calibration: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    planning_seconds: float = 0.0
    end_seconds: float | None = None  # estimated last validation + save

    @classmethod
    def from_dict(cls, raw: dict) -> Plan:
        """A plan read back from plan.json (e.g. to print it with :func:`format_plan`)."""
        return cls(raw["seconds"], Machine(**raw["machine"]), raw["fingerprint"],
                   [Decision(**{k: tuple(v) if isinstance(v, list) else v
                                for k, v in d.items()}) for d in raw["decisions"]],
                   raw["calibration"],
                   raw["notes"], raw["planning_seconds"], raw["end_seconds"])

    def to_dict(self) -> dict:
        return {"seconds": self.seconds, "planning_seconds": self.planning_seconds,
                "end_seconds": self.end_seconds, "machine": self.machine.to_dict(),
                "decisions": [dataclasses.asdict(d) for d in self.decisions],
                "calibration": self.calibration, "notes": self.notes,
                "fingerprint": self.fingerprint}


# --------------------------------------------------------------------------- the rules
def patch_rule(fp: dict, multiple: int) -> tuple[int, str]:
    """The training crop's side: the 95th-percentile object with context around it, a
    power of two, no larger than the typical image."""
    sizes = fp["sizes"]
    image_side = int(min(sizes["height"]["median"], sizes["width"]["median"]))
    fit = max(multiple, image_side // multiple * multiple)
    diameter = fp["objects"].get("diameter_px_p95")
    if diameter is None:
        side = min(MAX_PATCH, fit)
        return side, f"no objects measured: the typical image ({image_side} px)"
    want = CONTEXT_DIAMETERS * diameter
    side = max(MIN_PATCH, 2 ** math.ceil(math.log2(max(want, 1))))
    side = min(side, MAX_PATCH, fit)
    why = (f"{CONTEXT_DIAMETERS}x the large objects' diameter ({diameter:.0f} px), so each "
           f"is seen with context")
    if side == fit and fit < want:
        why += f"; capped by the typical image ({image_side} px)"
    return side, why


def depth_rule(patch: int) -> tuple[int, str]:
    """Poolings until the deepest map is BOTTOM_SIDE px: deeper sees nothing new."""
    depth = max(1, min(MAX_DEPTH, int(math.log2(patch / BOTTOM_SIDE))))
    return depth, f"poolings until the deepest map is {patch >> depth} px"


def batch_rule(patch: int, train_pixels: float) -> tuple[int, str]:
    """A fixed number of pixels per step, at most the whole training set's; at least 2
    crops (BatchNorm needs 2)."""
    per_step = min(PIXELS_PER_STEP, train_pixels)
    batch = max(MIN_BATCH, min(MAX_BATCH, round(per_step / patch**2)))
    if per_step < PIXELS_PER_STEP:
        return batch, "the whole training set in one step"
    return batch, f"about {PIXELS_PER_STEP // 1024}k pixels per step"


def training_pixels(fp: dict, val_fraction: float) -> float:
    """Pixels of the training images (the typical size times their number)."""
    sizes = fp["sizes"]
    return max(1.0, fp["images"] * (1 - val_fraction) * sizes["height"]["median"]
               * sizes["width"]["median"])


def memory_rule(patch: int, batch: int, free: int, estimate, multiple: int
                ) -> tuple[int, int, list[str]]:
    """Step down (batch first, then patch) until the estimated step takes at most
    MEMORY_SHARE of the free memory. ``estimate(patch, batch)`` gives bytes."""
    notes = []
    while estimate(patch, batch) > MEMORY_SHARE * free:
        need = estimate(patch, batch)
        if batch > MIN_BATCH:
            new_patch, new_batch = patch, max(MIN_BATCH, batch // 2)
        elif patch // 2 >= max(multiple, 16):
            new_patch, new_batch = patch // 2, batch
        else:
            notes.append(f"even patch {patch}, batch {batch} may not fit "
                         f"({need / 2**30:.1f} GiB estimated, {free / 2**30:.1f} GiB free)")
            break
        notes.append(f"stepped down to patch {new_patch}, batch {new_batch}: patch {patch}, "
                     f"batch {batch} needs about {need / 2**30:.1f} GiB, over "
                     f"{MEMORY_SHARE:.0%} of the {free / 2**30:.1f} GiB free")
        patch, batch = new_patch, new_batch
    return patch, batch, notes


def width_rule(step_seconds: dict[int, float], train_seconds: float) -> tuple[int, str]:
    """The widest calibrated network that still gets UPDATES_FOR_WIDER updates in the
    time; the narrowest otherwise (more updates beat more channels on a short budget)."""
    widths = sorted(step_seconds)
    for width in reversed(widths[1:]):
        updates = train_seconds / step_seconds[width]
        if updates >= UPDATES_FOR_WIDER:
            return width, f"{updates:.0f} updates fit in the time (>= {UPDATES_FOR_WIDER})"
    updates = train_seconds / step_seconds[widths[0]]
    return widths[0], f"{updates:.0f} updates fit: too few for a wider network " \
                      f"(< {UPDATES_FOR_WIDER})"


def cadence_rule(step_s: float, train_seconds: float, end_seconds: float
                 ) -> tuple[int, str]:
    """Steps between validations: validations take at most VALIDATION_SHARE of the time,
    between MIN_ and MAX_VALIDATIONS of them."""
    updates = max(1, int(train_seconds / step_s))
    count = int(VALIDATION_SHARE * train_seconds / max(end_seconds, 1e-3))
    count = max(MIN_VALIDATIONS, min(MAX_VALIDATIONS, count))
    steps = max(1, updates // count)
    return steps, (f"{count} validations of ~{end_seconds:.1f}s in ~{updates} steps "
                   f"(<= {VALIDATION_SHARE:.0%} of the time)")


def augmentation_rule(fp: dict, passes: float) -> tuple[dict[str, Any], str]:
    """Augmentation strength from the passes over the training pixels the time allows,
    with geometry the data never shows (turns and flips of registered scans) left out."""
    strength = min(1.0, max(0.0, (passes - LIGHT_PASSES) / (FULL_PASSES - LIGHT_PASSES)))
    settings = {"rotate_deg": round(15.0 * strength, 1),
                "scale": (round(1 - 0.15 * strength, 3), round(1 + 0.15 * strength, 3)),
                "elastic": strength >= 0.5,
                "brightness": round(0.1 * strength, 3), "contrast": round(0.15 * strength, 3),
                "gamma": round(0.2 * strength, 3), "noise_std": round(0.03 * strength, 3),
                "blur_prob": round(0.1 * strength, 3)}
    why = (f"strength {strength:.2f} for ~{passes:.0f} passes over the training pixels "
           f"(none below {LIGHT_PASSES}: too few to memorise; full from {FULL_PASSES})")
    layout = fp.get("layout", {})
    if layout.get("aligned", 0.0) >= ALIGNED:
        settings["rot90"] = False
        settings["rotate_deg"] = min(settings["rotate_deg"], 5.0)
        symmetric = min(layout["mirror_lr"], layout["mirror_ud"]) >= SYMMETRIC
        settings["flip"] = symmetric
        flips = ("kept (the layout is mirror-symmetric)" if symmetric
                 else "off (the layout is not mirror-symmetric)")
        why += (f"; registered images (layout {layout['aligned']:.2f}): no quarter turns, "
                f"rotation <= 5 deg, flips {flips}")
    return settings, why


def weight_map_rule(fp: dict) -> tuple[bool, str]:
    """The paper's border weight map, only where objects of one class touch (which only
    instance labels reveal); elsewhere it weights borders that separate nothing."""
    objects = fp["objects"]
    from_labels = objects.get("source", "").startswith("instance labels")
    touching = objects.get("touching", 0.0)
    if from_labels and touching >= TOUCHING:
        return True, f"{touching:.0%} of the labelled objects touch another"
    if not from_labels:
        return False, "no instance labels: no touching objects to separate"
    return False, f"only {touching:.0%} of the objects touch (< {TOUCHING:.0%})"


def normalize_rule(fp: dict) -> tuple[str, str]:
    """One mean/std for the whole set, unless the images' intensity ranges differ (8- and
    16-bit files, other exposures or stains): then each image is z-scored by its own
    statistics, as nnU-Net does for every modality but CT."""
    spread = fp.get("intensity", {}).get("range_spread", 1.0)
    if spread > RANGE_SPREAD:
        return "per_image", (f"intensity ranges differ {spread:.1f}x between images "
                             f"(> {RANGE_SPREAD:g}x): each image z-scored by its own statistics")
    return "dataset", f"intensity ranges alike ({spread:.1f}x): one mean/std for the set"


# --------------------------------------------------------------------------- planning
class _Planner:
    """Collects decisions; a setting the user gave explicitly wins over the plan's."""

    def __init__(self, config: Config, explicit: frozenset[str]):
        self.config, self.explicit = config, explicit
        self.decisions: dict[str, Decision] = {}  # a later decision replaces an earlier one

    def decide(self, setting: str, planned: Any, reason: str) -> Any:
        section, name = setting.split(".")
        if setting in self.explicit:
            given = getattr(getattr(self.config, section), name)
            self.decisions[setting] = Decision(setting, given, "given", planned, given != planned)
            return given
        self.decisions[setting] = Decision(setting, planned, reason)
        section_cfg = dataclasses.replace(getattr(self.config, section), **{name: planned})
        self.config = dataclasses.replace(self.config, **{section: section_cfg})
        return planned


def make_plan(config: Config, explicit: frozenset[str] = frozenset(),
              seconds: float | None = None, started: float | None = None,
              fp: dict | None = None, machine_rt=None, timer=time_step,
              estimate=estimate_step_bytes) -> tuple[Config, Plan]:
    """(config with the plan applied, the plan) for training ``config`` in ``seconds``
    (default DEFAULT_TIME). ``explicit``: settings the user gave ("optim.lr", ...), kept
    as given. ``started``: time.monotonic() when the command started (planning counts
    against the budget). ``fp``, ``machine_rt``, ``timer`` and ``estimate`` replace the
    measurements (for tests)."""
    started = time.monotonic() if started is None else started
    seconds = DEFAULT_TIME if seconds is None else seconds
    data = with_demo_classes(config.data)
    machine, rt = measure_machine(config.train) if machine_rt is None else machine_rt
    fp = fingerprint(data, config.train.seed) if fp is None else fp
    config = dataclasses.replace(config, data=data)
    p = _Planner(config, explicit)
    plan = Plan(seconds, machine, fp)
    model = config.model
    multiple = encoder_size_multiple(model) if model.arch != "unet" else None
    patch = p.decide("data.patch_size", *patch_rule(fp, multiple or 16))
    if model.arch == "unet":
        p.decide("model.depth", *depth_rule(patch))
    train_pixels = training_pixels(fp, data.val_fraction)
    batch = p.decide("train.batch_size", *batch_rule(patch, train_pixels))
    model = dataclasses.replace(p.config.model, in_channels=fp["channels"][0],
                                out_channels=logit_channels(target_classes(data)))
    half = machine.precision != "fp32"
    widths = WIDTHS if model.arch == "unet" and "model.features" not in explicit else (
        model.features,)
    narrow = dataclasses.replace(model, features=widths[0])
    fit_patch, fit_batch, notes = memory_rule(
        patch, batch, machine.memory_bytes, lambda s, b: estimate(narrow, s, b, half),
        multiple or 2**model.depth)
    plan.notes += notes
    if (fit_patch, fit_batch) != (patch, batch):
        patch = p.decide("data.patch_size", fit_patch, "stepped down to fit memory")
        batch = p.decide("train.batch_size", fit_batch, "stepped down to fit memory")
        model = _follow_patch(p, model, patch)
    step_seconds, patch, batch = _calibrate(p, plan, model, widths, patch, batch, rt, timer,
                                            seconds, started, multiple)
    end_seconds = _validation_seconds(fp, data.val_fraction, step_seconds, patch, batch)
    plan.end_seconds = end_seconds
    train_seconds = max(1.0, seconds - (time.monotonic() - started) - 1.3 * end_seconds)
    if model.arch == "unet":
        features = p.decide("model.features", *width_rule(step_seconds, train_seconds))
    else:
        features = widths[0]
    step_s = step_seconds[features]
    p.decide("optim.lr", *((FINE_TUNE_LEARNING_RATE, "a pretrained encoder is fine-tuned")
                           if model.pretrained else
                           (LEARNING_RATE, "Adam from scratch with BatchNorm")))
    p.decide("optim.schedule", "cosine", "decays to 1% of the rate exactly when time is up")
    p.decide("train.steps_per_epoch", *cadence_rule(step_s, train_seconds, end_seconds))
    p.decide("data.num_workers", default_num_workers(machine.cores),
             f"{machine.cores} cores: " + ("the training step keeps them busy"
                                           if machine.cores <= 2 else "one core for training"))
    passes = train_seconds / step_s * batch * patch**2 / train_pixels
    augment, why = augmentation_rule(fp, passes)
    for name, value in augment.items():
        p.decide(f"augment.{name}", value, why)
    p.decide("data.weight_map", *weight_map_rule(fp))
    if not model.pretrained:  # a pretrained encoder keeps ImageNet's statistics
        p.decide("data.normalize", *normalize_rule(fp))
    p.decide("train.time", seconds, "the budget")
    if "train.epochs" in explicit:
        plan.notes.append(f"{flag_name('train', 'epochs')} is not used: the run trains for "
                          f"{format_duration(seconds)}")
    plan.decisions = list(p.decisions.values())
    plan.planning_seconds = time.monotonic() - started
    return p.config, plan


def _calibrate(p: _Planner, plan: Plan, model, widths, patch: int, batch: int, rt, timer,
               seconds: float, started: float, multiple: int | None):
    """Time a few steps of each candidate width (narrow first; a wider one only if the
    time could afford it), stepping down on running out of memory."""
    step_seconds: dict[int, float] = {}
    for width in widths:
        candidate = dataclasses.replace(model, features=width)
        while True:
            try:
                step_seconds[width] = timer(candidate, patch, batch, rt)
                break
            except OutOfMemory as err:
                if width != widths[0]:
                    break  # the narrower one fits: keep it
                new_batch = max(MIN_BATCH, batch // 2)
                new_patch = patch if new_batch < batch else patch // 2
                if new_patch < max(multiple or 2**model.depth, 16):
                    raise
                plan.notes.append(f"calibration ran out of memory at patch {patch}, batch "
                                  f"{batch} ({err}); stepped down to patch {new_patch}, "
                                  f"batch {new_batch}")
                patch = p.decide("data.patch_size", new_patch, "stepped down: out of memory")
                batch = p.decide("train.batch_size", new_batch, "stepped down: out of memory")
                model = _follow_patch(p, model, patch)
                candidate = dataclasses.replace(model, features=width)
        if width in step_seconds:
            plan.calibration.append({"features": width, "patch": patch, "batch": batch,
                                     "seconds_per_step": round(step_seconds[width], 4)})
        # A wider network is worth measuring only if the narrow one leaves time for
        # UPDATES_FOR_WIDER updates at twice its step time.
        left = seconds - (time.monotonic() - started)
        if left / (2 * step_seconds[widths[0]]) < UPDATES_FOR_WIDER:
            break
    return step_seconds, patch, batch


def _follow_patch(p: _Planner, model, patch: int):
    """A U-Net's depth re-decided for a stepped-down patch."""
    if model.arch != "unet":
        return model
    return dataclasses.replace(model, depth=p.decide("model.depth", *depth_rule(patch)))


def _validation_seconds(fp: dict, val_fraction: float, step_seconds: dict[int, float],
                        patch: int, batch: int) -> float:
    """Estimated seconds of one validation pass plus a save, from the calibrated step."""
    sizes = fp["sizes"]
    val_pixels = (max(1, round(fp["images"] * val_fraction)) * sizes["height"]["median"]
                  * sizes["width"]["median"])
    per_pixel = max(step_seconds.values()) / (batch * patch**2) * FORWARD_SHARE
    return val_pixels * per_pixel + SAVE_SECONDS


def format_plan(plan: Plan) -> str:
    """The plan as a short table: setting, value, why; overridden choices last."""
    lines = [f"plan: {format_duration(plan.seconds)} on {plan.machine.describe()} "
             f"(planned in {plan.planning_seconds:.1f}s)"]
    for row in plan.calibration:
        lines.append(f"  measured   features {row['features']}, patch {row['patch']}, batch "
                     f"{row['batch']}: {row['seconds_per_step']:.3f} s/step")
    augment = [d for d in plan.decisions if d.setting.startswith("augment.")
               and not d.overridden]
    for d in plan.decisions:
        if d.overridden or d.setting == "train.time" or d in augment[1:]:
            continue
        if d is augment[0]:  # one row for the augmentation: its settings share a reason
            lines.append(f"  {'augmentation':<22} " + ", ".join(
                f"{a.setting.split('.')[1]} {_shown(a.value)}" for a in augment))
            lines.append(f"  {'':<22} {d.reason}")
            continue
        lines.append(f"  {d.flag:<22} {_shown(d.value):<12} {d.reason}")
    lines += [f"  note: {n}" for n in plan.notes]
    over = [d for d in plan.decisions if d.overridden]
    if over:
        lines.append("  overridden by your flags: " + ", ".join(
            f"{d.flag} {_shown(d.value)} (plan: {_shown(d.planned)})" for d in over))
    return "\n".join(lines)


def _shown(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)
