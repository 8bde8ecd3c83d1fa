"""3D from the command line: volumes train a 3D model with no extra flag, predictions
keep the input's affine, evaluate reports HD95 in millimetres."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from unetkit.checkpoint import load_config
from unetkit.cli import main

nib = pytest.importorskip("nibabel")

TINY = ["--features", "4", "--depth", "2", "--patch-size", "16", "--batch-size", "2",
        "--steps-per-epoch", "2", "--epochs", "2", "--precision", "fp32", "--quiet"]


def _write(path, array, affine):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), affine), path)


@pytest.fixture
def volume_folder(tmp_path):
    """4 NIfTI volumes (D, H, W) = (8, 20, 20) with spacing (z, y, x) = (2.5, 0.5, 0.5) mm
    and a translated affine; masks are bright boxes."""
    rng = np.random.default_rng(0)
    affine = np.array([[0.5, 0, 0, -10.0], [0, 0.5, 0, 4.0], [0, 0, 2.5, 7.0], [0, 0, 0, 1]])
    for i in range(4):
        mask = np.zeros((8, 20, 20), np.uint8)
        z, y, x = rng.integers(1, 4), rng.integers(2, 10), rng.integers(2, 10)
        mask[z:z + 4, y:y + 8, x:x + 8] = 1
        image = (mask * 0.8 + rng.normal(0.1, 0.05, mask.shape)).astype(np.float32)
        _write(tmp_path / "data" / "images" / f"case{i}.nii.gz", image, affine)
        _write(tmp_path / "data" / "masks" / f"case{i}.nii.gz", mask, affine)
    return tmp_path / "data", affine


def test_volumes_train_predict_and_evaluate_in_3d(volume_folder, tmp_path, capsys):
    data, affine = volume_folder
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), *TINY, "--out", str(out)]) == 0
    config = load_config(out / "checkpoints" / "best")
    assert config.model.spatial_dims == 3  # followed the data, no flag
    assert config.model.spacing == (2.5, 0.5, 0.5) == config.data.spacing
    assert config.data.normalize == "per_image"
    # the patch is no larger than the volumes: 16 in-plane, 8 slices (16 * 0.5 / 2.5 -> 8)
    assert (config.data.patch_depth, config.data.patch_size) == (8, 16)

    pred = tmp_path / "pred"
    assert main(["predict", str(data / "images"), "--checkpoint", str(out / "checkpoints" /
                 "best"), "--out", str(pred), "--quiet"]) == 0
    written = nib.load(pred / "case0.nii.gz")
    assert np.allclose(written.affine, affine) and written.shape == (20, 20, 8)
    assert set(np.unique(np.asarray(written.dataobj)).tolist()) <= {0, 1}

    table = tmp_path / "scores.csv"
    assert main(["evaluate", "--data", str(data), "--checkpoint", str(out / "checkpoints" /
                 "best"), "--csv", str(table), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "HD95" in printed and "4 volume(s)" in printed
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == 4 and "hd95_foreground" in rows[0]


def test_make_demo_data_volumes_writes_nifti_with_spacing(tmp_path, capsys):
    assert main(["make-demo-data", str(tmp_path / "v"), "--volumes", "--count", "2"]) == 0
    assert "wrote 2 demo volumes" in capsys.readouterr().out
    image = nib.load(tmp_path / "v" / "images" / "vol_000.nii.gz")
    assert image.shape == (96, 96, 24)
    assert tuple(float(z) for z in image.header.get_zooms()) == (1.0, 1.0, 3.0)
    assert (tmp_path / "v" / "masks" / "vol_001.nii.gz").is_file()


def test_valid_padding_trains_and_predicts_every_voxel(volume_folder, tmp_path):
    """The paper's overlap-tile in 3D: the patch is rounded up per axis to a size the
    valid network takes, volumes are mirrored by its margins, and prediction covers every
    voxel of the input grid."""
    data, affine = volume_folder
    out = tmp_path / "valid"
    assert main(["train", "--data", str(data), *TINY, "--padding", "valid",
                 "--patch-size", "20", "--out", str(out)]) == 0
    config = load_config(out / "checkpoints" / "best")
    assert config.model.padding == "valid" and config.model.spatial_dims == 3
    from unetkit.models.registry import build_model

    net = build_model(config.model, load_pretrained=False)
    patch = (config.data.patch_depth, config.data.patch_size, config.data.patch_size)
    assert net.output_shape(patch) is not None  # a size the network takes
    assert net.valid_input_at_least(patch) == patch
    pred = tmp_path / "pred"
    assert main(["predict", str(data / "images" / "case3.nii.gz"), "--checkpoint",
                 str(out / "checkpoints" / "last"), "--out", str(pred), "--quiet"]) == 0
    written = nib.load(pred / "case3.nii.gz")
    assert written.shape == (20, 20, 8) and np.allclose(written.affine, affine)


def test_bad_volumes_are_reported_together_before_training(volume_folder, tmp_path, capsys):
    data, affine = volume_folder
    bad = np.zeros((8, 20, 20), np.uint8)
    bad[0, 0, 0] = 7  # not a class of a binary task
    _write(data / "masks" / "case1.nii.gz", bad, affine)
    _write(data / "masks" / "case3.nii.gz", bad, affine)
    assert main(["train", "--data", str(data), *TINY, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    # the masks' values: every bad file named in one message, before anything is written
    assert "2 of 4 volume(s) cannot be used" in err
    assert "case1.nii.gz" in err and "case3.nii.gz" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()
    # shapes are compared from the headers, all pairs at once
    _write(data / "masks" / "case2.nii.gz", np.zeros((8, 20, 21), np.uint8), affine)
    assert main(["train", "--data", str(data), *TINY, "--out", str(tmp_path / "r")]) == 2
    assert "case2.nii.gz: mask is 8x20x21 but its image" in capsys.readouterr().err
