"""train -> predict -> evaluate -> export through the command line, on tiny data."""

import csv

import numpy as np
import pytest
from PIL import Image

from unetkit.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = root / "data"
    assert main(["make-demo-data", str(data), "--count", "6", "--size", "64"]) == 0
    out = root / "run"
    assert main(["train", "--data", str(data), "--epochs", "1", "--features", "4",
                 "--depth", "2", "--patch-size", "32", "--batch-size", "2", "--out", str(out),
                 "--quiet"]) == 0
    return data, out / "checkpoints" / "best"


def test_predict_writes_masks_probabilities_overlays(trained, tmp_path, capsys):
    data, ckpt = trained
    (data / "images" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "pred"
    code = main(["predict", "--checkpoint", str(ckpt), str(data / "images"), "--out", str(out),
                 "--probabilities", "npy", "--overlay", "--tile", "32", "--quiet"])
    (data / "images" / "broken.png").unlink()
    captured = capsys.readouterr()
    assert code == 1 and "broken.png" in captured.err  # listed, the others still done
    masks = sorted(out.glob("nuclei_*[0-9].png"))
    assert len(masks) == 6
    mask = np.asarray(Image.open(masks[0]))
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
    prob = np.load(out / "nuclei_000_prob.npy")
    assert prob.shape == (2, 64, 64) and np.allclose(prob.sum(0), 1, atol=1e-5)
    assert ((prob[1] > 0.5) == (mask == 255)).all()
    assert (out / "nuclei_000_overlay.png").is_file()


def test_evaluate_writes_csv_and_table(trained, tmp_path, capsys):
    data, ckpt = trained
    path = tmp_path / "eval.csv"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--csv",
                 str(path), "--hausdorff", "--quiet"]) == 0
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 7 and rows[-1]["image"] == "overall"
    assert "dice" in capsys.readouterr().out.lower()


def test_evaluate_skips_an_image_without_mask_and_exits_1(trained, tmp_path, capsys):
    data, ckpt = trained
    extra = data / "images" / "no_mask.png"
    extra.write_bytes((data / "images" / "nuclei_000.png").read_bytes())
    try:
        code = main(["evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--csv",
                     str(tmp_path / "e.csv"), "--quiet"])
    finally:
        extra.unlink()
    captured = capsys.readouterr()
    assert code == 1 and "no_mask.png: no mask" in captured.err
    rows = list(csv.DictReader((tmp_path / "e.csv").open()))
    assert len(rows) == 7  # the 6 images with masks, then "overall"


@pytest.mark.parametrize("fmt,suffix", [("onnx", "onnx"), ("torchscript", "pt")])
def test_export_is_verified(trained, tmp_path, capsys, fmt, suffix):
    _, ckpt = trained
    out = tmp_path / f"model.{suffix}"
    assert main(["export", "--checkpoint", str(ckpt), "--format", fmt, "--out", str(out)]) == 0
    assert out.is_file() and "max abs difference" in capsys.readouterr().out


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    code = main(["predict", "--checkpoint", str(tmp_path / "nope"), str(tmp_path),
                 "--out", str(tmp_path / "o")])
    assert code == 2 and "checkpoint not found" in capsys.readouterr().err


def test_onnx_export_carries_normalisation_and_classes(trained, tmp_path):
    import json

    import onnx

    _, ckpt = trained
    out = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(out)]) == 0
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    from unetkit.checkpoint import load_config

    config = load_config(ckpt)
    assert json.loads(meta["mean"]) == pytest.approx(list(config.data.mean))
    assert json.loads(meta["class_names"]) == ["background", "foreground"]
    assert "sigmoid" in meta["output"]
