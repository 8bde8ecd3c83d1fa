"""Checkpoint folders: round trip, folding for inference, atomic writes, clear errors."""

import pytest
import torch
from torch import nn

from unetkit.checkpoint import (
    CheckpointError,
    build_model,
    load_checkpoint,
    load_config,
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


def test_load_checkpoint_takes_a_run_folder_a_checkpoint_folder_or_a_weight_file(tmp_path):
    cfg = small_config()
    model = trained_bn_model(cfg)
    best = tmp_path / "run" / "checkpoints" / "best"
    save_checkpoint(best, model, cfg)
    save_checkpoint(tmp_path / "run" / "checkpoints" / "last", build_model(cfg.model), cfg)
    cfg.save(tmp_path / "run" / "config.json")  # as train() writes it
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        expected = model(x)
        for where in (tmp_path / "run", best, best / "model.safetensors"):
            loaded, saved = load_checkpoint(where)
            assert saved == cfg and torch.allclose(loaded(x), expected), where
            assert load_config(where) == cfg
    # a weight file renamed: its config.json beside it is what counts
    (best / "model.safetensors").rename(best / "weights.safetensors")
    loaded, _ = load_checkpoint(best / "weights.safetensors")
    with torch.no_grad():
        assert torch.allclose(loaded(x), expected)


@pytest.mark.parametrize("case, message", [
    ("missing", "checkpoint not found: .*missing .*expected a run folder"),
    ("other.txt", "not a checkpoint: .*other.txt .*expected a run folder"),
    ("empty", "not a checkpoint: .*empty has no model.safetensors"),
    ("unfinished", "run folder .*unfinished has no checkpoints/best"),
    ("alone.safetensors", "alone.safetensors: no config.json beside it"),
])
def test_anything_else_is_a_one_line_error_naming_the_path(tmp_path, case, message):
    (tmp_path / "other.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    (tmp_path / "unfinished" / "checkpoints").mkdir(parents=True)
    small_config().save(tmp_path / "unfinished" / "config.json")
    cfg = small_config()
    save_checkpoint(tmp_path / "c", build_model(cfg.model), cfg)
    (tmp_path / "c" / "model.safetensors").rename(tmp_path / "alone.safetensors")
    with pytest.raises(CheckpointError, match=message) as err:
        load_checkpoint(tmp_path / case)
    assert "\n" not in str(err.value) and str(tmp_path / case) in str(err.value)
