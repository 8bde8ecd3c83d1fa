"""The plan's rules on fingerprints made up here (small and large images, many classes,
tiny objects, registered scans, little memory), and make_plan with measurements
replaced, so every number below is computed by hand."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from unetkit import plan as planning
from unetkit.calibration import Machine, OutOfMemory, estimate_step_bytes
from unetkit.config import AugmentConfig, Config, DataConfig, ModelConfig, TrainConfig
from unetkit.fingerprint import layout, layout_thumbnail
from unetkit.models.registry import build_model
from unetkit.plan import (
    Plan,
    augmentation_rule,
    batch_rule,
    cadence_rule,
    depth_rule,
    format_plan,
    make_plan,
    memory_rule,
    patch_rule,
    weight_map_rule,
    width_rule,
)
from unetkit.runtime import make_runtime

GiB = 2**30


def made_up(side: int = 256, images: int = 50, diameter: float | None = 20.0,
            classes: int = 2, aligned: float = 0.0, mirror: float = 1.0,
            source: str = "instance labels", touching: float = 0.3) -> dict:
    """A fingerprint with just the fields the rules read."""
    objects = {"source": source, "count": 0, "touching": 0.0}
    if diameter is not None:
        objects = {"source": source, "count": 100, "touching": touching,
                   "diameter_px_p95": diameter, "diameter_px_median": diameter / 2}
    size = {"min": side, "median": float(side), "max": side}
    return {"images": images, "sizes": {"height": size, "width": size}, "channels": [1],
            "classes": {"num_classes": classes,
                        "pixel_fraction": [1 / classes] * classes},
            "objects": objects,
            "layout": {"aligned": aligned, "mirror_lr": mirror, "mirror_ud": mirror}}


# ------------------------------------------------------------------------ single rules
def test_patch_covers_objects_with_context_and_fits_the_images():
    # 3 x 20 px = 60 -> the next power of two, 64
    assert patch_rule(made_up(diameter=20), 16)[0] == 64
    # 3 x 50 = 150 -> 256
    assert patch_rule(made_up(diameter=50), 16)[0] == 256
    # large images, large objects: capped at MAX_PATCH
    assert patch_rule(made_up(side=4096, diameter=400), 16)[0] == planning.MAX_PATCH
    # small images: no larger than the image (rounded down to the multiple)
    side, why = patch_rule(made_up(side=100, diameter=60), 16)
    assert side == 96 and "capped by the typical image (100 px)" in why
    # tiny objects: not below MIN_PATCH
    assert patch_rule(made_up(diameter=3), 16)[0] == planning.MIN_PATCH
    # no objects at all (e.g. empty masks): the typical image, capped
    assert patch_rule(made_up(side=300, diameter=None), 16)[0] == 288


def test_depth_stops_at_a_small_bottom_map():
    assert depth_rule(128)[0] == 4  # 128 / 2^4 = 8 px
    assert depth_rule(64)[0] == 3
    assert depth_rule(96)[0] == 3  # 96 / 8 = 12: log2 12 = 3.6 -> 3 (bottom 12 px)
    assert depth_rule(512)[0] == planning.MAX_DEPTH
    assert depth_rule(16)[0] == 1


def test_batch_keeps_pixels_per_step_and_never_exceeds_the_training_set():
    assert batch_rule(128, 1e9)[0] == 8
    assert batch_rule(256, 1e9)[0] == 2
    assert batch_rule(64, 1e9)[0] == 32
    assert batch_rule(512, 1e9)[0] == planning.MIN_BATCH
    # 5 training images of 64 x 64: a batch of 5 is the whole training set
    batch, why = batch_rule(64, 5 * 64 * 64)
    assert batch == 5 and "whole training set" in why


def test_memory_steps_down_batch_first_then_patch():
    def estimate(patch, batch):  # 1 GiB per 8 crops of 128 px
        return batch * patch**2 * GiB / (8 * 128**2)

    assert memory_rule(128, 8, 16 * GiB, estimate, 16) == (128, 8, [])
    patch, batch, notes = memory_rule(128, 8, 1 * GiB, estimate, 16)
    assert (patch, batch) == (128, 4)  # 0.5 GiB <= half of 1 GiB
    assert "stepped down to patch 128, batch 4" in notes[0]
    patch, batch, notes = memory_rule(256, 8, GiB // 4, estimate, 16)
    # 256/8: 4 GiB -> b4 2 GiB -> b2 1 GiB -> p128 b2 0.25 GiB -> p64 b2 0.0625 <= 0.125
    assert (patch, batch) == (64, 2) and len(notes) == 4


def test_wider_network_only_with_enough_updates():
    assert width_rule({16: 0.1, 32: 0.3}, 600)[0] == 32  # 2000 updates
    width, why = width_rule({16: 0.1, 32: 0.3}, 60)  # 200 updates of the wide one
    assert width == 16 and "too few" in why
    assert width_rule({16: 0.1}, 6000)[0] == 16  # only the narrow one was measured


def test_validation_cadence_bounds_the_validation_time():
    # 100 s of 0.1 s steps = 1000 steps; 10% of 100 s / 1 s = 10 validations
    assert cadence_rule(0.1, 100, 1.0)[0] == 100
    # validation dearer than 10% allows: still MIN_VALIDATIONS
    assert cadence_rule(0.1, 100, 50.0)[0] == 1000 // planning.MIN_VALIDATIONS
    # validation very cheap: at most MAX_VALIDATIONS
    assert cadence_rule(0.1, 100, 0.01)[0] == 1000 // planning.MAX_VALIDATIONS


def test_augmentation_scales_with_passes_and_full_strength_is_the_default():
    weak, why = augmentation_rule(made_up(), passes=5)
    assert weak["rotate_deg"] == 0 and weak["scale"] == (1.0, 1.0) and not weak["elastic"]
    assert weak["noise_std"] == 0 and "strength 0.00" in why
    full, _ = augmentation_rule(made_up(), passes=500)
    defaults = AugmentConfig()
    for name, value in full.items():
        assert getattr(defaults, name) == value, name
    half, _ = augmentation_rule(made_up(), passes=30)  # (30 - 10) / 40 = 0.5
    assert half["rotate_deg"] == 7.5 and half["elastic"]
    assert "rot90" not in full and "flip" not in full  # scattered objects: turns stay on


def test_registered_scans_lose_the_turns_and_flips_they_never_show():
    settings, why = augmentation_rule(made_up(aligned=0.9, mirror=0.1), passes=500)
    assert settings["rot90"] is False and settings["flip"] is False
    assert settings["rotate_deg"] == 5.0 and "registered" in why
    symmetric, _ = augmentation_rule(made_up(aligned=0.9, mirror=0.95), passes=500)
    assert symmetric["flip"] is True and symmetric["rot90"] is False


def test_weight_map_only_where_labelled_objects_touch():
    assert weight_map_rule(made_up(touching=0.3))[0] is True
    assert weight_map_rule(made_up(touching=0.01))[0] is False
    assert weight_map_rule(made_up(source="connected components of each foreground class",
                                   touching=0.5))[0] is False


def test_layout_tells_registered_from_scattered_masks():
    rng = np.random.default_rng(0)
    same, scattered = [], []
    for _ in range(10):
        mask = np.zeros((64, 64), np.uint8)
        mask[10:30, 5:25] = 1  # the same place (left half) in every image
        same.append(layout_thumbnail(mask))
        mask = np.zeros((64, 64), np.uint8)
        y, x = rng.integers(0, 48, 2)
        mask[y:y + 16, x:x + 16] = 1
        scattered.append(layout_thumbnail(mask))
    registered = layout(same, 2)
    assert registered["aligned"] == pytest.approx(1.0)
    assert registered["mirror_lr"] == 0.0  # left half mirrored lands on the right
    assert layout(scattered, 2)["aligned"] < 0.5


# ------------------------------------------------------------------------ make_plan
def cpu(memory: int = 16 * GiB) -> tuple[Machine, object]:
    return (Machine("cpu", "fp32", False, memory, 2),
            make_runtime("cpu", "fp32", False))


def fake_timer(calls: list, seconds: dict[int, float] | None = None, fits=None):
    """A step timer recording its calls: seconds per step by width, OutOfMemory where
    ``fits(patch, batch)`` is False."""
    def timer(model: ModelConfig, patch: int, batch: int, rt) -> float:
        calls.append((model.features, model.in_channels, model.out_channels, patch, batch))
        if fits is not None and not fits(patch, batch):
            raise OutOfMemory("out of memory (test)")
        return (seconds or {16: 0.01, 32: 0.03})[model.features]
    return timer


def no_memory_needed(model, patch, batch, half):
    return 0


def test_plan_for_a_small_data_set_on_a_fast_machine():
    calls = []
    config, plan = make_plan(Config(), seconds=120, fp=made_up(side=256, diameter=20),
                             machine_rt=cpu(), timer=fake_timer(calls),
                             estimate=no_memory_needed)
    assert config.data.patch_size == 64 and config.model.depth == 3
    assert config.train.batch_size == 32 and config.train.time == 120
    # 0.03 s steps: ~3500 updates of the wide network fit in ~105 s -> features 32
    assert [c[0] for c in calls] == [16, 32] and config.model.features == 32
    assert config.optim.lr == planning.LEARNING_RATE and config.data.weight_map
    assert config.data.num_workers == 0  # 2 cores
    table = format_plan(plan)
    # plan.json holds everything the table shows
    assert format_plan(Plan.from_dict(json.loads(json.dumps(plan.to_dict())))) == table
    assert "--patch-size" in table and "--features" in table and "overridden" not in table


def test_many_classes_reach_the_calibrated_network():
    calls = []
    data = DataConfig(root="unused", num_classes=7)
    make_plan(Config(data=data), seconds=60, fp=made_up(classes=7), machine_rt=cpu(),
              timer=fake_timer(calls, {16: 1.0, 32: 3.0}), estimate=no_memory_needed)
    # 7 classes -> 7 logits; 1 s steps leave no time for a wider one: measured once
    assert calls == [(16, 1, 7, 64, 32)]


def test_explicit_settings_win_and_are_reported():
    config = Config(optim=dataclasses.replace(Config().optim, lr=5e-4),
                    data=DataConfig(patch_size=96))
    explicit = frozenset({"optim.lr", "data.patch_size"})
    planned, plan = make_plan(config, explicit, seconds=60, fp=made_up(), machine_rt=cpu(),
                              timer=fake_timer([]), estimate=no_memory_needed)
    assert planned.optim.lr == 5e-4 and planned.data.patch_size == 96
    assert planned.model.depth == 3  # the plan's depth follows the given patch (96 / 8 = 12)
    over = {d.setting: d for d in plan.decisions if d.overridden}
    assert set(over) == {"optim.lr", "data.patch_size"}
    assert over["optim.lr"].planned == planning.LEARNING_RATE
    assert "overridden by your flags: --patch-size 96 (plan: 64), --lr 0.0005 (plan: 0.001)" \
        in format_plan(plan)


def test_little_memory_steps_down_and_says_so():
    def estimate(model, patch, batch, half):
        return batch * patch**2 * 1024  # 4 MiB per crop of 64 px
    config, plan = make_plan(Config(), seconds=60, fp=made_up(), machine_rt=cpu(32 * 2**20),
                             timer=fake_timer([]), estimate=estimate)
    # half of 32 MiB = 16 MiB: 32 crops (128 MiB) -> 16 -> 8 -> 4 crops (16 MiB)
    assert (config.data.patch_size, config.train.batch_size) == (64, 4)
    assert any("stepped down" in n for n in plan.notes)
    assert "note: stepped down" in format_plan(plan)


def test_calibration_that_never_fits_is_an_error():
    calls = []
    with pytest.raises(OutOfMemory):
        make_plan(Config(), seconds=60, fp=made_up(diameter=50), machine_rt=cpu(),
                  timer=fake_timer(calls, fits=lambda patch, batch: False),
                  estimate=no_memory_needed)
    # 256 -> 128 -> 64 -> 32 -> 16 (batch already 2; the depth follows), then it gives up
    assert [c[3] for c in calls] == [256, 128, 64, 32, 16]


def test_calibration_out_of_memory_halves_batch_then_patch():
    calls = []
    fits = lambda patch, batch: patch * patch * batch <= 128 * 128 * 2  # noqa: E731
    config, plan = make_plan(Config(), seconds=60, fp=made_up(diameter=50),
                             machine_rt=cpu(), timer=fake_timer(calls, fits=fits),
                             estimate=no_memory_needed)
    # patch 256 batch 2 (131k px) does not fit; batch is at its minimum, so the patch
    # halves: 128 x 128 x 2 fits, and the wider network is measured there too
    assert [(c[0], c[3], c[4]) for c in calls] == [(16, 256, 2), (16, 128, 2), (32, 128, 2)]
    assert (config.data.patch_size, config.train.batch_size) == (128, 2)
    assert config.model.depth == 4  # followed the patch: 128 / 2^4 = 8
    assert "calibration ran out of memory at patch 256, batch 2" in plan.notes[0]


def test_estimate_counts_layer_outputs():
    small = estimate_step_bytes(ModelConfig(features=8, depth=2), 32, 2, half=False)
    # doubling the batch doubles the activations (parameters stay)
    double = estimate_step_bytes(ModelConfig(features=8, depth=2), 32, 4, half=False)
    net = build_model(ModelConfig(features=8, depth=2), load_pretrained=False)
    fixed = sum(p.numel() for p in net.parameters()) * 4 * 4
    assert double - fixed == pytest.approx(2 * (small - fixed))
    assert estimate_step_bytes(ModelConfig(features=8, depth=2), 32, 2, half=True) < small


def test_machine_uses_the_training_decisions():
    from unetkit.calibration import measure_machine

    machine, rt = measure_machine(TrainConfig(device="cpu", precision="fp32"))
    assert machine.device == "cpu" and machine.precision == "fp32"
    assert machine.memory_bytes > 0 and machine.cores >= 1 and rt.dtype == torch.float32
