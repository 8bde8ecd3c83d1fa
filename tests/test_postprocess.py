"""Connected-component clean-up: the rules on hand-made 2D and 3D label maps, the
settings in a checkpoint's config.json, and predict (2D files, 3D volumes, the CLI)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage

from unetkit.checkpoint import build_model, load_config, save_checkpoint
from unetkit.cli import main
from unetkit.config import Config, DataConfig, ModelConfig, PostprocessConfig, SettingError
from unetkit.data.io import read_mask
from unetkit.data.synthetic import write_demo_data
from unetkit.inference import predict_files
from unetkit.postprocess import (
    keep_largest_component,
    postprocess_labels,
    remove_small_components,
)

# class 1: A (3 px, top left), B (1 px), C (4 px, bottom right); class 2: D (3 px), E (1 px)
LABELS_2D = np.array([
    [1, 1, 0, 0, 2, 2],
    [1, 0, 0, 0, 2, 0],
    [0, 0, 1, 0, 0, 0],
    [2, 0, 0, 0, 1, 1],
    [0, 0, 0, 0, 1, 1],
], dtype=np.uint8)


def test_remove_small_components_2d():
    expected = np.array([
        [1, 1, 0, 0, 2, 2],
        [1, 0, 0, 0, 2, 0],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 1],
        [0, 0, 0, 0, 1, 1],
    ])
    before = LABELS_2D.copy()
    out = remove_small_components(LABELS_2D, 2)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.uint8 and (LABELS_2D == before).all()  # input untouched
    only_c = np.zeros_like(LABELS_2D)
    only_c[3:, 4:] = 1
    np.testing.assert_array_equal(remove_small_components(LABELS_2D, 4), only_c)
    # one class only: class 2's single pixel E stays
    expected[3, 0] = 2
    np.testing.assert_array_equal(remove_small_components(LABELS_2D, 2, classes=[1]), expected)
    for off in (0, 1):
        np.testing.assert_array_equal(remove_small_components(LABELS_2D, off), LABELS_2D)


def test_keep_largest_component_2d():
    expected = np.array([
        [0, 0, 0, 0, 2, 2],
        [0, 0, 0, 0, 2, 0],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 1],
        [0, 0, 0, 0, 1, 1],
    ])
    np.testing.assert_array_equal(keep_largest_component(LABELS_2D), expected)
    only_class_2 = LABELS_2D.copy()
    only_class_2[3, 0] = 0  # E goes, class 1 stays whole
    np.testing.assert_array_equal(keep_largest_component(LABELS_2D, classes=[2]),
                                  only_class_2)


def test_diagonal_neighbours_are_separate_components_and_ties_keep_the_first():
    diagonal = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(remove_small_components(diagonal, 2), np.zeros((3, 3)))
    np.testing.assert_array_equal(keep_largest_component(diagonal),
                                  [[1, 0, 0], [0, 0, 0], [0, 0, 0]])


def volume_3d() -> np.ndarray:
    """(3, 3, 3): class 1 a 3-voxel column through the slices (face-connected) and a
    single voxel touching it only at an edge; class 2 a pair of voxels and a single one
    two slices away."""
    v = np.zeros((3, 3, 3), dtype=np.int64)
    v[:, 0, 0] = 1  # column through all three slices: one component of 3
    v[1, 1, 1] = 1  # shares only an edge with (1, 0, 0): a component of its own
    v[2, 2, 1:] = 2  # a component of 2
    v[0, 2, 2] = 2  # slice 0: apart from slice 2
    return v


def test_rules_in_3d():
    v = volume_3d()
    expected = np.zeros_like(v)
    expected[:, 0, 0] = 1
    expected[2, 2, 1:] = 2
    np.testing.assert_array_equal(remove_small_components(v, 2), expected)
    np.testing.assert_array_equal(keep_largest_component(v), expected)
    column = np.zeros_like(v)
    column[:, 0, 0] = 1
    np.testing.assert_array_equal(remove_small_components(v, 3), column)


def test_postprocess_labels_per_class_and_errors():
    config = PostprocessConfig(min_component_size=(4, 1), keep_largest=(2,))
    expected = np.zeros_like(LABELS_2D)
    expected[3:, 4:] = 1  # class 1: only C has 4 px
    expected[:2, 4:] = LABELS_2D[:2, 4:]  # class 2: nothing small removed, D the largest
    np.testing.assert_array_equal(postprocess_labels(LABELS_2D, config, 3), expected)
    # small components first, then the largest of what is left
    both = PostprocessConfig(min_component_size=2, keep_largest=True)
    np.testing.assert_array_equal(postprocess_labels(LABELS_2D, both, 3),
                                  keep_largest_component(LABELS_2D))
    assert postprocess_labels(LABELS_2D, PostprocessConfig(), 3) is LABELS_2D
    assert postprocess_labels(LABELS_2D, None, 3) is LABELS_2D
    with pytest.raises(ValueError, match="2 value.*for 1 foreground class"):
        postprocess_labels(LABELS_2D, PostprocessConfig(min_component_size=(2, 3)), 2)
    with pytest.raises(ValueError, match=r"class\(es\) \[3\].*1\.\.2"):
        postprocess_labels(LABELS_2D, PostprocessConfig(keep_largest=(3,)), 3)
    with pytest.raises(ValueError, match="integer class indices"):
        remove_small_components(LABELS_2D.astype(float), 2)


def test_settings_ranges_override_and_old_config_json(tmp_path):
    with pytest.raises(SettingError, match="--min-component-size -1: expected >= 0"):
        PostprocessConfig(min_component_size=-1)
    with pytest.raises(SettingError, match="--keep-largest 0"):
        PostprocessConfig(keep_largest=(0,))
    stored = PostprocessConfig(min_component_size=(5, 9), keep_largest=(2,))
    assert stored.override(keep_largest=False) == PostprocessConfig((5, 9), False)
    assert stored.override() == stored and not PostprocessConfig().active
    # saved in config.json and read back; a config.json without the section still loads
    path = tmp_path / "config.json"
    Config(postprocess=stored).save(path)
    assert json.loads(path.read_text())["postprocess"] == {
        "min_component_size": [5, 9], "keep_largest": [2], "seed_threshold": None,
        "min_object_size": None}
    assert Config.load(path).postprocess == stored
    raw = json.loads(path.read_text())
    del raw["postprocess"]
    path.write_text(json.dumps(raw))
    assert Config.load(path).postprocess == PostprocessConfig()


# --------------------------------------------------------------------------- predict


def checkpoint(folder, postprocess: PostprocessConfig | None = None):
    config = Config(
        model=ModelConfig(in_channels=1, out_channels=1, features=4, depth=2, norm=None),
        data=DataConfig(num_classes=2, normalize="dataset", mean=(0.4,), std=(0.2,)),
        postprocess=postprocess or PostprocessConfig(),
    )
    torch.manual_seed(0)
    return save_checkpoint(folder, build_model(config.model), config)


@pytest.fixture()
def predicted(tmp_path):
    """Demo images, a checkpoint without clean-up and its plain masks (class indices)."""
    data = write_demo_data(tmp_path / "data", count=2, size=48, seed=0)
    ckpt = checkpoint(tmp_path / "ckpt")
    plain = predict_files(ckpt, [data / "images"], tmp_path / "plain", tile=16,
                          progress=False)["written"]
    masks = {p.name: read_mask(p, 2) for p in plain}
    # the untrained model's foreground is many specks and a few larger pieces
    assert all(ndimage.label(m)[1] > 5 for m in masks.values())
    return data, ckpt, masks


def written(result) -> dict:
    return {p.name: read_mask(p, 2) for p in result["written"]}


def test_predict_files_flags_clean_the_written_masks(predicted, tmp_path):
    data, ckpt, masks = predicted
    result = predict_files(ckpt, [data / "images"], tmp_path / "small", tile=16,
                           progress=False, min_component_size=4, save_overlay=True,
                           save_probabilities="npy")
    for name, mask in written(result).items():
        assert (mask != masks[name]).any()
        np.testing.assert_array_equal(mask, remove_small_components(masks[name], 4))
        probs = np.load(tmp_path / "small" / name.replace(".png", "_prob.npy"))
        np.testing.assert_array_equal(probs.argmax(0), masks[name])  # probabilities as is
        assert (tmp_path / "small" / name.replace(".png", "_overlay.png")).is_file()
    result = predict_files(ckpt, [data / "images"], tmp_path / "largest", tile=16,
                           progress=False, keep_largest=True, instances=True,
                           min_object_size=0)
    for name, mask in written(result).items():
        assert ndimage.label(mask)[1] == 1
        np.testing.assert_array_equal(mask, keep_largest_component(masks[name]))
        # a semantic model's objects come from the cleaned mask: the one component
        objects = tifffile.imread(tmp_path / "largest" / name.replace(".png", "_labels.tif"))
        np.testing.assert_array_equal(objects, mask.astype(objects.dtype))


def test_a_checkpoint_carrying_postprocessing_applies_it_unless_overridden(predicted,
                                                                          tmp_path):
    data, _, masks = predicted
    ckpt = checkpoint(tmp_path / "ckpt_pp", PostprocessConfig(keep_largest=True))
    assert load_config(ckpt).postprocess.keep_largest is True
    result = predict_files(ckpt, [data / "images"], tmp_path / "stored", tile=16,
                           progress=False)
    for name, mask in written(result).items():
        np.testing.assert_array_equal(mask, keep_largest_component(masks[name]))
    result = predict_files(ckpt, [data / "images"], tmp_path / "off", tile=16,
                           progress=False, keep_largest=False)
    assert {n: m.tolist() for n, m in written(result).items()} == {
        n: m.tolist() for n, m in masks.items()}
    # the CLI: --min-component-size on top of the stored keep-largest; --no-keep-largest
    out = tmp_path / "cli"
    assert main(["predict", "--checkpoint", str(ckpt), str(data / "images"), "--out",
                 str(out), "--tile", "16", "--quiet", "--min-component-size", "2",
                 "--no-keep-largest"]) == 0
    for name, mask in masks.items():
        np.testing.assert_array_equal(read_mask(out / name, 2),
                                      remove_small_components(mask, 2))
    assert main(["predict", "--checkpoint", str(ckpt), str(data / "images"), "--out",
                 str(out), "--min-component-size", "-3"]) == 2


def test_predict_volume_files_cleans_the_label_volume(tmp_path):
    from unetkit.volume_predict import predict_volume_files

    config = Config(
        model=ModelConfig(in_channels=1, out_channels=1, features=4, depth=2, norm=None,
                          spatial_dims=3),
        data=DataConfig(num_classes=2, normalize="none", patch_size=16, patch_depth=8),
    )
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "ckpt", build_model(config.model), config)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "vol.npy", rng.random((1, 10, 20, 20)).astype(np.float32))
    plain = predict_volume_files(ckpt, [tmp_path / "vol.npy"], tmp_path / "plain",
                                 progress=False)["written"][0]
    labels = np.load(plain)
    assert ndimage.label(labels)[1] > 1
    cleaned = predict_volume_files(ckpt, [tmp_path / "vol.npy"], tmp_path / "clean",
                                   progress=False, keep_largest=True)["written"][0]
    np.testing.assert_array_equal(np.load(cleaned), keep_largest_component(labels))


def test_evaluate_scores_what_predict_writes_with_the_stored_cleanup(predicted, tmp_path):
    """A checkpoint carrying post-processing (e.g. from train --folds) is evaluated with it:
    the scores describe the masks predict writes."""
    from unetkit.evaluate import evaluate_folder
    from unetkit.metrics import confusion_matrix, scores

    data, _, masks = predicted
    ckpt = checkpoint(tmp_path / "ckpt_eval", PostprocessConfig(keep_largest=True))
    summary = evaluate_folder(ckpt, data, out_csv=tmp_path / "e.csv", tile=16,
                              progress=False)
    total = torch.zeros(2, 2, dtype=torch.int64)
    for name, mask in masks.items():
        truth = read_mask(data / "masks" / name, 2)
        cleaned = keep_largest_component(mask)
        total += confusion_matrix(torch.from_numpy(cleaned[None]),
                                  torch.from_numpy(truth[None]), 2)
    assert summary["overall"]["mean_dice"] == pytest.approx(scores(total)["mean_dice"])
