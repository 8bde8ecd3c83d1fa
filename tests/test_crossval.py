"""Cross-validation folds, their summary, and ensembles of their checkpoints."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from unetkit.checkpoint import CheckpointError, load_checkpoint, load_config
from unetkit.cli import main
from unetkit.data.pairing import fold_split
from unetkit.ensemble import Ensemble, logits_of
from unetkit.outputs import probabilities

TINY = ["--epochs", "1", "--demo-count", "9", "--demo-size", "48", "--patch-size", "32",
        "--features", "4", "--depth", "2", "--batch-size", "4", "--precision", "fp32",
        "--quiet"]


def test_every_item_validates_in_exactly_one_fold():
    items = [SimpleNamespace(name=f"im{i:02d}") for i in range(11)]
    seen = []
    for fold in range(4):
        train, val = fold_split(items, 4, fold, seed=3)
        assert len(train) + len(val) == 11 and len(val) in (2, 3)
        assert not {it.name for it in train} & {it.name for it in val}
        seen += [it.name for it in val]
    assert sorted(seen) == [it.name for it in items]
    assert fold_split(items, 4, 1, seed=3) == fold_split(list(reversed(items)), 4, 1, seed=3)
    with pytest.raises(ValueError, match="fold 4 of 4"):
        fold_split(items, 4, 4, seed=0)


class Constant(nn.Module):
    def __init__(self, logits: list[float]):
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits).view(1, -1, 1, 1))
        self.padding = "same"

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1, *x.shape[2:])


def test_ensemble_averages_probabilities():
    x = torch.zeros(2, 1, 3, 3)
    binary = Ensemble([Constant([0.0]), Constant([2.0])])  # p = 0.5 and 0.881
    p = probabilities(binary(x))[:, 1]
    assert torch.allclose(p, torch.full_like(p, (0.5 + torch.sigmoid(torch.tensor(2.0))) / 2))
    multi = Ensemble([Constant([1.0, 0.0, 0.0]), Constant([0.0, 0.0, 3.0])])
    expected = (torch.softmax(torch.tensor([1.0, 0, 0]), 0)
                + torch.softmax(torch.tensor([0.0, 0, 3.0]), 0)) / 2
    assert torch.allclose(probabilities(multi(x))[0, :, 1, 1], expected, atol=1e-6)
    assert multi.padding == "same"  # what predict asks a model for is the members'
    assert torch.allclose(probabilities(logits_of(expected.view(1, 3, 1, 1), False)),
                          expected.view(1, 3, 1, 1), atol=1e-6)


def test_train_folds_summary_and_ensemble(tmp_path, capsys):
    out = tmp_path / "cv"
    assert main(["train", "--folds", "3", *TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mean" in printed and f"summary: {out / 'folds.csv'}" in printed
    rows = list(csv.DictReader((out / "folds.csv").open()))
    assert [r["fold"] for r in rows] == ["0", "1", "2", "mean"]
    dice = [float(r["val_dice"]) for r in rows[:3]]
    assert float(rows[3]["val_dice"]) == pytest.approx(sum(dice) / 3)
    configs = [load_config(out / f"fold_{i}") for i in range(3)]
    assert [(c.data.folds, c.data.fold) for c in configs] == [(3, 0), (3, 1), (3, 2)]
    assert len({c.data.mean for c in configs}) == 1  # one normalisation: ensemble-able
    # the out-of-fold decision is stored in every fold's checkpoints and printed
    import json

    decided = json.loads((out / "postprocess.json").read_text())
    assert decided["images"] == 9 and "post-processing from 9 out-of-fold" in printed
    for c in configs:
        stored = load_config(out / f"fold_{c.data.fold}").postprocess
        assert stored.keep_largest in (False, tuple(decided["postprocess"]["keep_largest"]
                                                     or ()))
    model, config = load_checkpoint(out)
    assert isinstance(model, Ensemble) and len(model.members) == 3
    # a cross-validation folder predicts as the ensemble
    images = tmp_path / "new"
    assert main(["make-demo-data", str(images), "--count", "2", "--size", "48"]) == 0
    assert main(["predict", str(images / "images"), "--checkpoint", str(out), "--out",
                 str(tmp_path / "pred"), "--quiet"]) == 0
    assert len(list((tmp_path / "pred").glob("*.png"))) == 2


def test_ensemble_refuses_checkpoints_of_different_configs(tmp_path):
    for name, features in (("a", "4"), ("b", "8")):
        assert main(["train", *TINY[:-1], "--features", features, "--quiet",
                     "--out", str(tmp_path / name)]) == 0
    with pytest.raises(CheckpointError, match="model differs"):
        load_checkpoint([tmp_path / "a", tmp_path / "b"])
    # the same from the command line: one line, exit 2
    assert main(["evaluate", "--data", str(tmp_path), "--checkpoint", str(tmp_path / "a"),
                 "--checkpoint", str(tmp_path / "b")]) == 2


def test_one_fold_alone(tmp_path):
    out = tmp_path / "f1"
    assert main(["train", "--folds", "3", "--fold", "1", *TINY, "--out", str(out)]) == 0
    config = load_config(out)
    assert (config.data.folds, config.data.fold) == (3, 1)
    assert not (out / "fold_1").exists()  # one plain run of that fold


def test_postprocessing_is_kept_only_where_the_dice_does_not_drop():
    import numpy as np

    from unetkit.crossval_postprocess import class_dice, decide

    truth = np.zeros((20, 20), np.int64)
    truth[2:10, 2:10] = 1  # one large object of class 1 (64 px)
    truth[12:18, 12:18] = 2  # and one of class 2 (36 px)
    noisy = truth.copy()
    noisy[15, 3] = 1  # a 1-px false positive of class 1
    assert class_dice([noisy], [truth], 1) == pytest.approx(2 * 64 / (65 + 64))
    chosen, rows = decide([noisy], [truth], 3)
    speck = {r["class"]: r for r in rows}[1]
    # a 1-px speck: both clean-ups remove it and raise the Dice: both kept for class 1
    assert speck["keep_largest"] and speck["remove_small"] and speck["min_size"] == 32
    assert speck["dice_largest"] == speck["dice_small"] == 1.0 > speck["dice"]
    assert chosen.min_component_size[0] == 32 and 1 in chosen.keep_largest
    split = truth.copy()
    split[5, 2:10] = 0  # class 1 predicted in two parts: largest-only loses one
    chosen, rows = decide([split], [truth], 3)
    cut = {r["class"]: r for r in rows}[1]
    assert cut["dice_largest"] < cut["dice"] and not cut["keep_largest"]
    assert chosen.keep_largest in (False, (2,))  # class 2 was predicted right: no change
