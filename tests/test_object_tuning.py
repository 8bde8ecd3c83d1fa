"""The labelling thresholds chosen on validation images (unetkit.object_tuning): the
grid's choice on probabilities built by hand, the order in which settings win, and the
choice stored in a trained instance model's checkpoints and used by predict."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from unetkit.checkpoint import load_checkpoint
from unetkit.config import Config, PostprocessConfig
from unetkit.object_tuning import (
    DEFAULT_MIN_SIZE,
    DEFAULT_SEED,
    choose_labelling,
    labelling_settings,
    size_candidates,
)


def two_touching_squares(core: float, bridge: float, speck: bool = False):
    """Truth: two 20 x 20 squares side by side (labels 1, 2). Probabilities (3, H, W):
    interior ``core`` inside each square, ``bridge`` on the 2 columns where they touch,
    boundary around; optionally a 30 px speck of foreground that is no object."""
    truth = np.zeros((40, 60), np.int32)
    truth[10:30, 10:30], truth[10:30, 30:50] = 1, 2
    interior = np.where(truth > 0, core, 0.0)
    interior[10:30, 29:31] = bridge
    boundary = np.where(truth > 0, 0.0, 0.0)
    edge = (truth > 0) & (interior == 0)
    boundary[edge] = 1.0
    if speck:
        interior[0:5, 0:6] = 0.95
    background = 1.0 - interior - boundary
    return np.stack([background, interior, boundary]).astype(np.float32), truth


def test_the_seed_threshold_that_separates_the_objects_is_chosen():
    # interiors 0.85 joined by a 0.75 bridge: seeds at 0.5-0.7 merge the two squares,
    # 0.9 finds no seed at all (one unseeded region: merged); only 0.8 separates them
    probs, truth = two_touching_squares(core=0.85, bridge=0.75)
    seed, size, rows = choose_labelling([probs], [truth])
    assert seed == 0.8
    by_seed = {r["seed_threshold"]: r["ap50"] for r in rows if r["min_object_size"] == size}
    assert by_seed[0.8] == 1.0 and by_seed[0.7] == 0.0 and by_seed[0.9] == 0.0


def test_a_smallest_size_that_drops_the_specks_is_chosen():
    probs, truth = two_touching_squares(core=0.95, bridge=0.3, speck=True)
    # true areas 400 and 400: candidates 16, a quarter and half of the 5th percentile
    assert size_candidates([truth]) == [DEFAULT_MIN_SIZE, 100, 200]
    seed, size, rows = choose_labelling([probs], [truth])
    assert size == 100  # the 30 px speck is gone; 16 keeps it as a false object
    kept = [r for r in rows if r["seed_threshold"] == seed]
    assert {r["min_object_size"]: r["ap50"] for r in kept} == {
        16: pytest.approx(2 / 3), 100: 1.0, 200: 1.0}
    assert seed == DEFAULT_SEED  # every seed separates: ties keep the default


def test_given_values_win_over_tuned_ones_which_win_over_the_defaults():
    plain = Config()
    tuned = dataclasses.replace(plain, postprocess=PostprocessConfig(
        seed_threshold=0.6, min_object_size=40))
    assert labelling_settings(plain) == (DEFAULT_MIN_SIZE, DEFAULT_SEED)
    assert labelling_settings(tuned) == (40, 0.6)
    assert labelling_settings(tuned, min_size=5, seed_threshold=0.9) == (5, 0.9)


def test_training_an_instance_model_stores_the_choice_in_both_checkpoints(tmp_path):
    from test_training import tiny_config

    from unetkit.training import train

    cfg = tiny_config(tmp_path / "run", epochs=1)
    cfg.data = dataclasses.replace(cfg.data, task="instances")
    result = train(cfg, progress=False)
    for folder in (result.best, result.last):
        post = load_checkpoint(folder)[1].postprocess
        assert post.seed_threshold in (0.5, 0.6, 0.7, 0.8, 0.9)
        assert post.min_object_size is not None and post.min_object_size >= 1
    semantic = tiny_config(tmp_path / "sem", epochs=1)
    assert load_checkpoint(train(semantic, progress=False).best)[1].postprocess == \
        PostprocessConfig()


def test_the_cross_validation_clean_up_keeps_the_tuned_thresholds(tmp_path):
    """Both choices live in one postprocess section: storing one keeps the other."""
    from unetkit.checkpoint import CONFIG, update_postprocess
    from unetkit.crossval_postprocess import store

    folder = tmp_path / "fold_0" / "checkpoints" / "best"
    folder.mkdir(parents=True)
    Config().save(folder / CONFIG)
    update_postprocess([folder], seed_threshold=0.8, min_object_size=40)
    store(tmp_path, 1, PostprocessConfig(min_component_size=9, keep_largest=True))
    assert Config.load(folder / CONFIG).postprocess == PostprocessConfig(
        min_component_size=9, keep_largest=True, seed_threshold=0.8, min_object_size=40)
