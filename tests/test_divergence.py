"""A diverging run is stopped with one message, bad steps are skipped, broken weights are
never saved."""

import dataclasses
import math

import pytest
import torch
from safetensors.torch import load_file
from test_training import tiny_config
from torch import nn

from unetkit.checkpoint import CheckpointError, save_checkpoint
from unetkit.cli import main
from unetkit.config import Config
from unetkit.divergence import DivergenceError, DivergenceGuard, nonfinite_tensors
from unetkit.training import train


def test_guard_skips_non_finite_steps_and_stops_after_too_many_in_a_row():
    guard = DivergenceGuard(max_bad_steps=3, max_loss_factor=100, lr=1e-3)
    assert guard.allow_step(1.0, 2.0, epoch=1, step=1)
    assert not guard.allow_step(math.nan, 2.0, epoch=1, step=2)
    assert not guard.allow_step(1.0, math.inf, epoch=1, step=3)
    assert guard.allow_step(0.9, 2.0, epoch=1, step=4)  # a good step resets the count
    assert guard.skipped == 2
    assert not guard.allow_step(math.inf, 1.0, epoch=2, step=1)
    assert not guard.allow_step(math.inf, 1.0, epoch=2, step=2)
    with pytest.raises(DivergenceError, match=r"epoch 2, step 3: 3 steps in a row.*--lr "
                                              r"\(now 0.001\), e.g. 0.0001"):
        guard.allow_step(math.nan, 1.0, epoch=2, step=3)


def test_guard_stops_when_the_smoothed_loss_passes_the_factor():
    guard = DivergenceGuard(max_bad_steps=10, max_loss_factor=100, lr=1.0)
    guard.allow_step(2.0, 1.0, 1, 1)  # the starting value
    for step in range(2, 20):  # noise well under 100x does not stop it
        assert guard.allow_step(2.0 + 50 * (step % 2), 1.0, 1, step)
    # smoothed = 0.8 * s + 0.2 * loss: from ~20, one loss of 1e4 gives ~2016 > 200
    with pytest.raises(DivergenceError, match=r"epoch 3, step 7: the loss rose to 1e\+04, "
                                              r"over 100x its starting value 2"):
        guard.allow_step(1e4, 1.0, 3, 7)


def test_fp16_scaler_overflow_is_not_a_bad_step():
    guard = DivergenceGuard(max_bad_steps=1, max_loss_factor=100, lr=1.0, scaled_fp16=True)
    assert guard.allow_step(1.0, math.inf, 1, 1)  # the scaler skips it and lowers its scale


def test_checkpoint_with_a_non_finite_tensor_is_never_written(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    model[1].running_var.fill_(math.inf)  # BatchNorm statistics overflow, weights finite
    assert nonfinite_tensors(model) == ["1.running_var"]
    with pytest.raises(CheckpointError, match="1 tensor.*1.running_var"):
        save_checkpoint(tmp_path / "ckpt", model, Config())
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "ckpt.tmp").exists()
    guard = DivergenceGuard(10, 100, lr=0.5)
    with pytest.raises(DivergenceError, match="epoch 4: 1 tensor.*not saved.*--lr"):
        guard.check_weights(model, epoch=4)


def test_huge_learning_rate_stops_the_run_with_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--epochs", "3", "--lr", "1e6", "--demo-count", "10",
                 "--demo-size", "64", "--patch-size", "48", "--features", "4", "--depth", "2",
                 "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "training diverged at epoch" in err and "step" in err and "--lr (now 1e+06)" in err
    for name in ("last", "best"):  # whatever was saved before the stop is finite
        folder = out / "checkpoints" / name
        if folder.is_dir():
            weights = load_file(str(folder / "model.safetensors"))
            assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())


class NaNOnSecondCall(nn.Module):
    """Wraps a loss; its second call returns NaN (one bad batch)."""

    def __init__(self, loss):
        super().__init__()
        self.loss, self.calls, self.check_targets = loss, 0, True

    def forward(self, logits, target, weight):
        self.calls += 1
        value = self.loss(logits, target, weight)
        return value * math.nan if self.calls == 2 else value


def test_a_non_finite_step_is_skipped_and_counted(tmp_path, monkeypatch):
    import unetkit.training as training

    real = training.build_loss
    monkeypatch.setattr(training, "build_loss", lambda *a: NaNOnSecondCall(real(*a)))
    cfg = tiny_config(tmp_path / "run", epochs=1)
    cfg.train = dataclasses.replace(cfg.train, batch_size=2)  # 4 steps
    result = train(cfg, progress=False)
    row = result.history[0]
    assert row["skipped_steps"] == 1 and math.isfinite(row["train_loss"])
    weights = load_file(str(result.last / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())


class InfOnSecondBatch:
    """Wraps the augmenter; its second batch holds an inf pixel (a corrupt image)."""

    def __init__(self, augmenter):
        self.augmenter, self.calls, self.generator = augmenter, 0, augmenter.generator

    def __call__(self, batch):
        batch = self.augmenter(batch)
        self.calls += 1
        if self.calls == 2:
            batch["image"] = batch["image"].clone()
            batch["image"][0, 0, 0, 0] = math.inf
        return batch


def test_a_skipped_step_leaves_no_trace_in_batchnorm_statistics(tmp_path, monkeypatch):
    import unetkit.training as training

    real = training.Augmenter
    monkeypatch.setattr(training, "Augmenter", lambda *a, **k: InfOnSecondBatch(real(*a, **k)))
    cfg = tiny_config(tmp_path / "run", epochs=1)
    cfg.train = dataclasses.replace(cfg.train, batch_size=2)
    result = train(cfg, progress=False)  # without the restore: "running_var ... not finite"
    assert result.history[0]["skipped_steps"] == 1
    weights = load_file(str(result.last / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())


def test_ignore_index_may_not_be_an_instance_class(tmp_path):
    cfg = tiny_config(tmp_path / "run", epochs=1)
    cfg.data = dataclasses.replace(cfg.data, task="instances", ignore_index=2)
    with pytest.raises(ValueError, match=r"ignore_index=2 is a real class \(0..2\)"):
        train(cfg, progress=False)
