"""The instance task end to end: training target, predict --instances, object metrics."""

import csv
import dataclasses

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from test_training import tiny_config

from unetkit.checkpoint import load_checkpoint
from unetkit.cli import main
from unetkit.config import INSTANCE_CLASSES
from unetkit.data.folder import build_datasets
from unetkit.data.io import read_image, read_instances
from unetkit.data.normalize import normalize_image
from unetkit.data.synthetic import write_demo_data
from unetkit.evaluate import evaluate_folder, format_table
from unetkit.inference import predict
from unetkit.instances import instance_target, semantic_to_objects
from unetkit.object_metrics import object_scores, pool_object_scores
from unetkit.training import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(instance checkpoint, semantic checkpoint, demo folder with instances/)."""
    root = tmp_path_factory.mktemp("instances")
    checkpoints = []
    for task in ("instances", "semantic"):
        cfg = tiny_config(root / task, epochs=2)
        cfg.data = dataclasses.replace(cfg.data, task=task)
        checkpoints.append(train(cfg, progress=False).best)
    return *checkpoints, write_demo_data(root / "data", count=3, size=64, seed=5)


def test_instance_task_learns_the_three_class_target(trained, tmp_path):
    model, config = load_checkpoint(trained[0])
    assert config.data.task == "instances" and config.model.out_channels == 3
    assert list(config.data.class_names) == list(INSTANCE_CLASSES)
    data = dataclasses.replace(config.data, num_workers=0)
    _, val, _ = build_datasets(data, config.train.seed)
    item = val.items[0]
    expected = instance_target(item.instances, config.data.boundary_width)
    assert torch.equal(val[0]["mask"], torch.from_numpy(expected))
    assert set(val[0]["mask"].unique().tolist()) == {0, 1, 2}


def test_predict_instances_writes_labels_table_and_overlay(trained, tmp_path):
    ckpt, _, data = trained
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(ckpt), str(data / "images"), "--out",
                 str(out), "--instances", "--overlay", "--min-object-size", "4",
                 "--quiet"]) == 0
    labels = tifffile.imread(out / "nuclei_000_labels.tif")
    assert labels.shape == (64, 64) and labels.dtype == np.uint16
    rows = list(csv.DictReader((out / "nuclei_000_objects.csv").open()))
    assert [int(r["label"]) for r in rows] == list(range(1, labels.max() + 1))
    areas = np.bincount(labels.ravel())[1:]
    assert [int(r["area_px"]) for r in rows] == areas.tolist() and (areas >= 4).all()
    image = read_image(data / "images" / "nuclei_000.png")
    first = labels == 1
    assert float(rows[0]["mean_intensity_c0"]) == pytest.approx(image[0][first].mean())
    overlay = np.asarray(Image.open(out / "nuclei_000_objects.png"))
    assert overlay.shape == (64, 64, 3)


def test_semantic_checkpoint_objects_are_connected_components(trained, tmp_path):
    # 16 px tiles on a 64 px image: objects cross tile borders and must come out whole,
    # as the connected components of the stitched mask.
    _, ckpt, data = trained
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(ckpt), str(data / "images"), "--out",
                 str(out), "--instances", "--quiet", "--precision", "fp32",
                 "--tile", "16"]) == 0
    model, config = load_checkpoint(ckpt, fold_batchnorm=True)
    image = normalize_image(read_image(data / "images" / "nuclei_001.png"), config)
    mask = predict(model, image, tile=16, autocast=False).argmax(0)
    expected = semantic_to_objects(mask, min_size=16)
    assert np.array_equal(tifffile.imread(out / "nuclei_001_labels.tif"), expected)


def test_evaluate_scores_objects_where_instance_labels_exist(trained, tmp_path):
    _, ckpt, data = trained
    summary = evaluate_folder(ckpt, data, out_csv=tmp_path / "e.csv", autocast=False,
                              progress=False)
    model, config = load_checkpoint(ckpt, fold_batchnorm=True)
    per_image = []
    for name in ("nuclei_000", "nuclei_001", "nuclei_002"):
        image = normalize_image(read_image(data / "images" / f"{name}.png"), config)
        objects = semantic_to_objects(predict(model, image, autocast=False).argmax(0))
        per_image.append(object_scores(read_instances(data / "instances" / f"{name}.tif"),
                                       objects))
    expected = pool_object_scores(per_image)
    assert summary["objects"]["tp"] == expected["tp"]
    assert summary["objects"]["merged"] == expected["merged"]
    rows = list(csv.DictReader((tmp_path / "e.csv").open()))
    assert float(rows[-1]["object_f1_0.5"]) == pytest.approx(expected["f1"][0], nan_ok=True)
    assert "objects:" in format_table(summary) and "F1@0.5" in format_table(summary)
    # --instance-labels points elsewhere; without labels there are no object scores
    empty = tmp_path / "none"
    empty.mkdir()
    assert evaluate_folder(ckpt, data, instance_labels=empty, progress=False)["objects"] is None
