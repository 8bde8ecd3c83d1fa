"""evaluate_folder: CSV rows against scores computed directly with numpy."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image

from unetkit.checkpoint import CheckpointError, build_model, load_checkpoint, save_checkpoint
from unetkit.config import Config, DataConfig, ModelConfig
from unetkit.data.io import DataError
from unetkit.data.synthetic import write_demo_data
from unetkit.evaluate import evaluate_folder, find_pairs, format_table
from unetkit.inference import predict
from unetkit.metrics import hausdorff95


def make_checkpoint(folder, num_classes=2, seed=0):
    config = Config(
        model=ModelConfig(in_channels=1, out_channels=1 if num_classes == 2 else num_classes,
                          features=4, depth=2, norm=None),
        data=DataConfig(num_classes=num_classes, normalize="dataset", mean=(0.3,), std=(0.2,),
                        class_names=("background", "nucleus") if num_classes == 2 else ()),
    )
    torch.manual_seed(seed)
    return save_checkpoint(folder, build_model(config.model), config)


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def predicted_labels(ckpt, image_path):
    model, _ = load_checkpoint(ckpt)
    raw = np.asarray(Image.open(image_path), dtype=np.float32) / 255
    return predict(model, ((raw - 0.3) / 0.2)[None]).argmax(0)


def by_hand(pred, truth, cls):
    """tp, fp, fn of one class, counted directly."""
    p, t = pred == cls, truth == cls
    return np.sum(p & t), np.sum(p & ~t), np.sum(~p & t)


def ratio(a, b):
    return a / b if b else math.nan


def assert_close(text, value):
    if math.isnan(value):
        assert text == "nan"
    else:
        assert float(text) == pytest.approx(value, abs=1e-9)


def test_binary_csv_matches_scores_computed_by_hand(tmp_path):
    data = write_demo_data(tmp_path / "data", count=3, size=32, seed=1)
    ckpt = make_checkpoint(tmp_path / "ckpt")
    summary = evaluate_folder(ckpt, data, out_csv=tmp_path / "scores.csv", hausdorff=True,
                              progress=False)
    rows = read_csv(tmp_path / "scores.csv")
    assert [r["image"] for r in rows] == ["nuclei_000", "nuclei_001", "nuclei_002", "overall"]
    totals = np.zeros(3)
    hd = []
    for row in rows[:3]:
        pred = predicted_labels(ckpt, data / "images" / f"{row['image']}.png")
        truth = (np.asarray(Image.open(data / "masks" / f"{row['image']}.png")) == 255)
        truth = truth.astype(np.int64)
        assert 0 < pred.sum() < pred.size  # the test model predicts both classes
        tp, fp, fn = by_hand(pred, truth, 1)
        totals += (tp, fp, fn)
        assert_close(row["dice_nucleus"], ratio(2 * tp, 2 * tp + fp + fn))
        assert_close(row["iou_nucleus"], ratio(tp, tp + fp + fn))
        assert_close(row["precision_nucleus"], ratio(tp, tp + fp))
        assert_close(row["recall_nucleus"], ratio(tp, tp + fn))
        assert_close(row["mean_dice"], ratio(2 * tp, 2 * tp + fp + fn))  # foreground only
        assert_close(row["pixel_accuracy"], np.mean(pred == truth))
        hd.append(hausdorff95(pred == 1, truth == 1))
        assert_close(row["hd95_nucleus"], hd[-1])
    tp, fp, fn = totals
    overall = rows[3]
    # Overall = from the summed confusion matrix, not the mean of the per-image Dice.
    assert_close(overall["dice_nucleus"], 2 * tp / (2 * tp + fp + fn))
    assert_close(overall["recall_nucleus"], tp / (tp + fn))
    assert_close(overall["mean_hd95"], np.nanmean(hd))
    assert summary["overall"]["dice"][1] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert summary["images"] == 3 and len(summary["per_image"]) == 3
    assert np.sum(summary["confusion_matrix"]) == 3 * 32 * 32

    table = format_table(summary)
    assert "nucleus" in table and "hd95" in table and "3 image(s)" in table
    assert f"{2 * tp / (2 * tp + fp + fn):6.4f}" in table


def test_multiclass_columns_and_overall_row(tmp_path):
    data = write_demo_data(tmp_path / "data", count=2, size=32, seed=0, multiclass=True)
    ckpt = make_checkpoint(tmp_path / "ckpt", num_classes=4)
    summary = evaluate_folder(ckpt, data, out_csv=tmp_path / "s.csv", progress=False)
    rows = read_csv(tmp_path / "s.csv")
    assert "dice_class3" in rows[0] and "hd95_class1" not in rows[0]
    cm = np.zeros((4, 4), dtype=np.int64)
    for row in rows[:2]:
        pred = predicted_labels(ckpt, data / "images" / f"{row['image']}.png")
        truth = np.asarray(Image.open(data / "masks" / f"{row['image']}.png")).astype(int)
        np.add.at(cm, (truth.ravel(), pred.ravel()), 1)
    assert summary["confusion_matrix"] == cm.tolist()
    for cls in range(4):
        tp = cm[cls, cls]
        assert_close(rows[2][f"iou_class{cls}"],
                     ratio(tp, cm[cls].sum() + cm[:, cls].sum() - tp))
    assert "class3" in format_table(summary)


def test_missing_mask_and_size_mismatch_name_the_files(tmp_path):
    data = write_demo_data(tmp_path / "data", count=2, size=16, seed=0)
    ckpt = make_checkpoint(tmp_path / "ckpt")
    (data / "masks" / "nuclei_001.png").unlink()
    # An image without a mask is listed and skipped; the others are scored (as predict).
    summary = evaluate_folder(ckpt, data, progress=False)
    assert summary["images"] == 1 and [p.name for p, _ in summary["failed"]] == [
        "nuclei_001.png"]
    assert "no mask" in summary["failed"][0][1]
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(data / "masks" / "nuclei_001.png")
    # A bad pair is listed and the others are still scored.
    summary = evaluate_folder(ckpt, data, progress=False)
    assert summary["images"] == 1 and len(summary["failed"]) == 1
    path, message = summary["failed"][0]
    assert path.name == "nuclei_001.png" and "mask is 8x8 but image" in message
    (data / "images" / "nuclei_000.png").write_bytes(b"broken")
    with pytest.raises(DataError, match="no image could be evaluated"):
        evaluate_folder(ckpt, data, progress=False)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    data = write_demo_data(tmp_path / "data", count=1, size=16, seed=0)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        evaluate_folder(tmp_path / "nope", data, progress=False)


def test_training_layout_with_a_val_folder_scores_val(tmp_path):
    root = tmp_path / "data"
    write_demo_data(root / "val", count=2, size=16, seed=0)
    pairs = find_pairs(root)
    assert [p[0].parent for p in pairs] == [root / "val" / "images"] * 2


def test_images_without_instance_labels_are_listed_not_skipped_in_silence(tmp_path, capsys):
    from unetkit.cli import main
    from unetkit.data.io import read_instances

    data = write_demo_data(tmp_path / "data", count=3, size=32, seed=1)
    ckpt = make_checkpoint(tmp_path / "ckpt")
    (data / "instances" / "nuclei_001.tif").unlink()
    summary = evaluate_folder(ckpt, data, progress=False)
    # every image is scored for its pixels; one of them not for its objects, and why
    assert summary["images"] == 3 and summary["failed"] == []
    assert summary["objects_scored"] == 2
    assert [(p.name, why) for p, why in summary["objects_missing"]] == [
        ("nuclei_001.png", f"no instance labels (expected {data / 'instances'}/nuclei_001 "
                           "with an image suffix)")]
    true = sum(len(np.unique(read_instances(data / "instances" / f"nuclei_00{i}.tif"))) - 1
               for i in (0, 2))
    assert summary["objects"]["true"] == true  # pooled over the two with labels
    assert "objects scored on 2 of 3 image(s)" in format_table(summary)
    # the command: listed with the reason, exit code 1 as for a missing mask
    code = main(["evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--csv",
                 str(tmp_path / "e.csv"), "--quiet"])
    captured = capsys.readouterr()
    assert code == 1 and "objects scored on 2 of 3 image(s)" in captured.out
    assert "1 of 3 image(s) could not be scored for objects" in captured.err
    assert "nuclei_001.png: no instance labels" in captured.err
    # no instance labels anywhere: nothing to score objects on, nothing to list
    for path in (data / "instances").iterdir():
        path.unlink()
    (data / "instances").rmdir()
    summary = evaluate_folder(ckpt, data, progress=False)
    assert summary["objects_missing"] is None and "objects scored" not in format_table(summary)
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--csv",
                 str(tmp_path / "e.csv"), "--quiet"]) == 0
