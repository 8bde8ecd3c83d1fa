"""Checkpoint folders: round trip, folding for inference, atomic writes, clear errors."""

import pytest
import torch
from torch import nn

from unetkit.checkpoint import (
    CheckpointError,
    build_model,
    load_checkpoint,
    load_training_state,
    save_checkpoint,
)
from unetkit.config import Config, ModelConfig


def small_config(**model) -> Config:
    cfg = Config()
    cfg.model = ModelConfig(**({"features": 4, "depth": 2} | model))
    return cfg


def trained_bn_model(cfg):
    model = build_model(cfg.model)
    model.train()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        for _ in range(3):
            model(torch.randn(2, 1, 32, 32) * 3 + 1)
    return model.eval()


def test_round_trip_and_folded_loading(tmp_path):
    cfg = small_config()
    model = trained_bn_model(cfg)
    save_checkpoint(tmp_path / "best", model, cfg, {"dice": float("nan")}, {"epoch": 3})
    loaded, saved = load_checkpoint(tmp_path / "best")
    folded, _ = load_checkpoint(tmp_path / "best", fold_batchnorm=True)
    assert saved == cfg and load_training_state(tmp_path / "best") == {"epoch": 3}
    assert any(isinstance(m, nn.BatchNorm2d) for m in loaded.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(1, 1, 40, 24)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x))
        assert torch.allclose(model(x), folded(x), atol=1e-4)


def test_saving_again_replaces_atomically(tmp_path):
    cfg = small_config()
    save_checkpoint(tmp_path / "last", build_model(cfg.model), cfg)
    save_checkpoint(tmp_path / "last", build_model(cfg.model), cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]  # no .tmp/.old left


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing")
    cfg = small_config()
    save_checkpoint(tmp_path / "a", build_model(cfg.model), cfg)
    with pytest.raises(CheckpointError, match="missing state.pt"):
        load_training_state(tmp_path / "a")
    (tmp_path / "a" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="incomplete: missing model.safetensors"):
        load_checkpoint(tmp_path / "a")
    other = small_config(features=8)
    save_checkpoint(tmp_path / "b", build_model(other.model), other)
    cfg.save(tmp_path / "b" / "config.json")  # weights of another model
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(tmp_path / "b")
    with pytest.raises(ValueError, match="arch"):
        build_model(ModelConfig(arch="segformer"))
