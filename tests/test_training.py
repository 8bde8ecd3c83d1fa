"""End-to-end training on tiny generated data: files written, loss falls, resume, CLI."""

import csv
import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unetkit.checkpoint import load_checkpoint, load_training_state
from unetkit.cli import build_parser, main
from unetkit.config import Config
from unetkit.training import forward_whole, prepare_config, train

ROOT = Path(__file__).resolve().parent.parent


def tiny_config(out, **train) -> Config:
    cfg = Config()
    cfg.data = dataclasses.replace(cfg.data, demo_count=10, demo_size=64, patch_size=48,
                                   val_fraction=0.2)
    cfg.model = dataclasses.replace(cfg.model, features=4, depth=2)
    cfg.optim = dataclasses.replace(cfg.optim, lr=3e-3, schedule="none")
    settings = dict(epochs=2, batch_size=4, out=str(out), plot_every=1) | train
    cfg.train = dataclasses.replace(cfg.train, **settings)
    return cfg


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_two_epochs_write_everything_and_learn(tmp_path):
    cfg = tiny_config(tmp_path / "run", epochs=4)
    result = train(cfg, progress=False)
    out = tmp_path / "run"
    for name in ("metrics.csv", "curves.png", "predictions.png", "config.json",
                 "checkpoints/best/model.safetensors", "checkpoints/best/config.json",
                 "checkpoints/last/state.pt", "checkpoints/last/metrics.json"):
        assert (out / name).is_file(), name
    rows = read_csv(out / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert {"val_dice", "val_iou", "lr", "images_per_s", "val_dice_nucleus"} <= set(rows[0])
    assert result.best_dice == pytest.approx(max(float(r["val_dice"]) for r in rows))
    model, saved = load_checkpoint(out / "checkpoints" / "best")
    # normalisation and classes travel with the checkpoint
    assert len(saved.data.mean) == 1 and saved.data.std[0] > 0
    assert saved.model.in_channels == 1 and saved.model.out_channels == 1
    assert saved.data.class_names[1] == "nucleus"
    assert sum(p.numel() for p in model.parameters()) > 0


def test_resume_continues_exactly_where_the_run_stopped(tmp_path):
    whole = train(tiny_config(tmp_path / "whole", epochs=3), progress=False)
    train(tiny_config(tmp_path / "split", epochs=2), progress=False)
    state = load_training_state(tmp_path / "split" / "checkpoints" / "last")
    assert state["epoch"] == 2 and state["optimizer"]["state"]  # Adam moments saved
    resumed = train(tiny_config(tmp_path / "split", epochs=3, resume=True), progress=False)
    a = load_file(str(whole.last / "model.safetensors"))
    b = load_file(str(resumed.last / "model.safetensors"))
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    rows = read_csv(tmp_path / "split" / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[-1]["val_dice"]) == pytest.approx(float(read_csv(
        tmp_path / "whole" / "metrics.csv")[-1]["val_dice"]), abs=1e-6)


def test_same_seed_same_metrics(tmp_path):
    a = train(tiny_config(tmp_path / "a", epochs=1), progress=False).history
    b = train(tiny_config(tmp_path / "b", epochs=1), progress=False).history
    keys = ("train_loss", "val_loss", "val_dice")
    assert [r[k] for r in a for k in keys] == [r[k] for r in b for k in keys]


def test_valid_padding_and_multiclass_train(tmp_path):
    cfg = tiny_config(tmp_path / "valid", epochs=1)
    cfg.model = dataclasses.replace(cfg.model, padding="valid", norm=None)
    cfg.data = dataclasses.replace(cfg.data, demo="multiclass", patch_size=50)
    prepared = prepare_config(cfg)
    assert prepared.data.num_classes == 4 and prepared.model.out_channels == 4
    assert prepared.data.patch_size == 52  # the next size a depth-2 valid U-Net takes
    assert prepared.data.context == 20  # the depth-2 valid U-Net's margin
    result = train(cfg, progress=False)
    assert len(result.history) == 1
    assert {"val_dice_small_round_nucleus", "val_dice_bright_speckled_cell"} <= set(
        result.history[0])


def test_valid_padding_crops_reach_the_image_border():
    """With the mirrored context, the output window of a crop can cover border pixels."""
    import numpy as np

    from unetkit.data.folder import Item, SegmentationDataset

    mask = np.zeros((64, 64), np.int64)
    mask[:3, :] = 1  # only the top border rows are foreground
    item = Item(name="x", image=np.random.default_rng(0).random((1, 64, 64), np.float32), mask=mask,
                instances=None)
    seen = {}
    for context in (0, 20):
        cfg = dataclasses.replace(Config().data, patch_size=52, context=context,
                                  normalize="none", weight_map=False,
                                  foreground_oversample=0.0)
        ds = SegmentationDataset([item], cfg, train=True, seed=0)
        hits = 0
        for i in range(60):
            out = ds[i]["mask"][20:32, 20:32]  # what a margin-20 network predicts
            hits += int(out.sum() > 0)
        seen[context] = hits
    # Without context a 52 px crop's centre (rows 20..31 at most) never reaches row 2.
    assert seen[0] == 0 and seen[20] > 0


def test_resume_with_more_epochs_stretches_the_schedule(tmp_path):
    cfg = tiny_config(tmp_path / "run", epochs=2)
    cfg.optim = dataclasses.replace(cfg.optim, schedule="cosine", warmup_epochs=0)
    train(cfg, progress=False)
    cfg.train = dataclasses.replace(cfg.train, epochs=4, resume=True)
    history = train(cfg, progress=False).history
    lrs = [row["lr"] for row in history]
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    # After the resume the learning rate follows the 4-epoch schedule (a saved cosine or
    # poly total would restart it, or keep it at its end): falling, to the floor.
    whole = train(dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, resume=False, out=str(tmp_path / "whole"))), progress=False).history
    assert lrs[2:] == pytest.approx([row["lr"] for row in whole][2:], rel=1e-9)
    assert lrs[2] > lrs[3] == pytest.approx(cfg.optim.lr * 0.01, rel=1e-6)


def test_forward_whole_covers_every_pixel_for_valid_padding():
    from unetkit.models import UNet

    model = UNet(1, 2, features=4, depth=2).eval()
    with torch.no_grad():
        assert forward_whole(model, torch.randn(1, 1, 37, 50)).shape == (1, 2, 37, 50)
        assert forward_whole(model, torch.randn(1, 1, 3, 5)).shape == (1, 2, 3, 5)


def test_cli_trains_on_a_folder_and_reports_bad_data(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["make-demo-data", str(data), "--count", "8", "--size", "48"]) == 0
    assert len(list((data / "masks").glob("*.png"))) == 8
    out = tmp_path / "run"
    code = main(["train", "--data", str(data), "--epochs", "1", "--features", "4",
                 "--depth", "2", "--patch-size", "32", "--batch-size", "2", "--out", str(out),
                 "--no-elastic", "--quiet"])
    assert code == 0 and (out / "checkpoints" / "best" / "model.safetensors").is_file()
    # A mask with values that fit no encoding: a clear error, the checkpoint kept.
    import numpy as np
    from PIL import Image

    Image.fromarray(np.full((48, 48), 7, np.uint8)).save(data / "masks" / "nuclei_000.png")
    before = (out / "checkpoints" / "best" / "model.safetensors").read_bytes()
    # Training into a folder that holds a run needs --resume or --overwrite.
    code = main(["train", "--data", str(data), "--epochs", "1", "--out", str(out), "--quiet"])
    assert code == 2 and "already holds a training run" in capsys.readouterr().err
    code = main(["train", "--data", str(data), "--epochs", "1", "--out", str(out), "--quiet",
                 "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2 and "nuclei_000.png" in err and "7" in err
    assert (out / "checkpoints" / "best" / "model.safetensors").read_bytes() == before


def test_config_file_and_flags(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("model:\n  features: 8\n  norm: null\noptim:\n  lr: 0.01\n")
    args = build_parser().parse_args(["train", "--config", str(path), "--lr", "0.5",
                                      "--scale", "0.9", "1.1", "--no-elastic"])
    from unetkit.cli import config_from_args

    cfg = config_from_args(args)
    assert cfg.model.features == 8 and cfg.model.norm is None
    assert cfg.optim.lr == 0.5  # the flag wins over the file
    assert cfg.augment.scale == (0.9, 1.1) and cfg.augment.elastic is False
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": {"featurez": 3}}')
    with pytest.raises(ValueError, match="featurez"):
        config_from_args(build_parser().parse_args(["train", "--config", str(bad)]))
    # YAML 1.1 reads 3e-4 as text: it is still a number; a wrong type is named.
    path.write_text("optim:\n  lr: 3e-4\nmodel:\n  features: eight\n")
    with pytest.raises(ValueError, match="model.features: expected a whole number, got 'eight'"):
        config_from_args(build_parser().parse_args(["train", "--config", str(path)]))
    path.write_text("optim:\n  lr: 3e-4\n")
    assert config_from_args(build_parser().parse_args(
        ["train", "--config", str(path)])).optim.lr == pytest.approx(3e-4)


@pytest.mark.slow
def test_train_py_and_unetkit_help_list_every_option():
    import typing

    from unetkit.cli import DERIVED, SECTIONS, _flag

    expected = set()
    for section in SECTIONS:
        cls = type(getattr(Config(), section))
        for f in dataclasses.fields(cls):
            if (section, f.name) not in DERIVED:
                expected.add("--" + _flag(section, f.name))
    assert typing  # noqa
    for cmd in ([sys.executable, "train.py", "--help"],
                [sys.executable, "-m", "unetkit", "train", "--help"]):
        text = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120).stdout
        missing = [flag for flag in expected if flag not in text]
        assert not missing, (cmd, missing)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_learns_and_resumes_exactly_in_fp32_and_bf16(tmp_path, precision):
    # One of the tests that run in both precisions on every machine, whatever "auto" means
    # here (bf16 is emulated, so slow, on CPUs without AVX-512 BF16: kept tiny).
    whole = train(tiny_config(tmp_path / "whole", epochs=3, precision=precision),
                  progress=False)
    rows = whole.history
    assert all(math.isfinite(r["train_loss"]) for r in rows)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    train(tiny_config(tmp_path / "split", epochs=2, precision=precision), progress=False)
    resumed = train(tiny_config(tmp_path / "split", epochs=3, precision=precision,
                                resume=True), progress=False)
    a = load_file(str(whole.last / "model.safetensors"))
    b = load_file(str(resumed.last / "model.safetensors"))
    assert all(torch.allclose(a[key], b[key], atol=1e-6) for key in a)


def test_epoch_hooks_are_called_with_each_metrics_row(tmp_path):
    seen = []
    result = train(tiny_config(tmp_path / "run", epochs=2), progress=False,
                   hooks=[lambda run, row: seen.append((run.out, row["epoch"], row["val_dice"]))])
    out = tmp_path / "run"
    assert [(folder, epoch) for folder, epoch, _ in seen] == [(out, 1), (out, 2)]
    assert [dice for *_, dice in seen] == [row["val_dice"] for row in result.history]


def test_best_epoch_rule():
    from types import SimpleNamespace

    from unetkit.training import update_best

    run = SimpleNamespace(per_step=True, best_dice=-math.inf)
    # An undefined Dice (no foreground anywhere) still gives the run a best checkpoint.
    assert update_best(run, math.nan) and run.best_dice == -math.inf
    assert update_best(run, 0.5) and run.best_dice == 0.5
    assert not update_best(run, 0.4) and not update_best(run, math.nan)
    assert update_best(run, 0.6) and run.best_dice == 0.6
