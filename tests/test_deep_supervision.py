"""Deep supervision (nnU-Net's): auxiliary heads and their shapes, the loss weights, the
nearest-downsampled targets, training with it, and loading/exporting without the heads."""

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from unetkit.checkpoint import (
    CheckpointError,
    build_model,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    unwrap,
)
from unetkit.config import Config, ModelConfig
from unetkit.export import export_model
from unetkit.inference import predict
from unetkit.losses import (
    CELoss,
    DeepSupervisionLoss,
    DiceCELoss,
    deep_supervision_weights,
    downsample_nearest,
)
from unetkit.models import ResNetUNet, UNet
from unetkit.models.auxiliary import AUXILIARY_PREFIX
from unetkit.training import train


def aux_keys(state):
    return sorted(k for k in state if k.startswith(AUXILIARY_PREFIX))


# -- the weights and the targets ---------------------------------------------------------
def test_weights_follow_nnunet():
    expected = [1, 1 / 2, 1 / 4, 1 / 8, 0]
    assert deep_supervision_weights(5) == pytest.approx([w / 1.875 for w in expected])
    assert deep_supervision_weights(4) == pytest.approx([1 / 1.75, 0.5 / 1.75, 0.25 / 1.75, 0])
    assert deep_supervision_weights(2) == [1.0, 0.0]
    assert deep_supervision_weights(1) == [1.0]  # nothing to supervise but the output
    assert sum(deep_supervision_weights(7)) == pytest.approx(1.0)


def test_targets_are_downsampled_by_nearest_neighbour_per_axis():
    t = torch.arange(5 * 6).view(1, 5, 6)  # rows 0..4, value = 6 * row + column
    assert downsample_nearest(t, (2, 2)).tolist() == [[[0, 2, 4], [12, 14, 16], [24, 26, 28]]]
    assert downsample_nearest(t, (1, 4)).tolist() == [[[0, 4], [6, 10], [12, 16], [18, 22],
                                                       [24, 28]]]
    volume = torch.arange(3 * 4 * 4).view(1, 3, 4, 4)  # anisotropic: z is not pooled
    down = downsample_nearest(volume, (1, 2, 2))
    assert down.shape == (1, 3, 2, 2) and down.dtype == volume.dtype
    assert down[0, 2].tolist() == [[32, 34], [40, 42]]


def test_loss_weighs_each_output_against_its_downsampled_target():
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 8, 8))
    weight = torch.rand(2, 8, 8)
    outs = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 2, 2)]
    base = CELoss()
    weights = deep_supervision_weights(4)[:3]  # [1, 1/2, 1/4] / 1.75
    loss = DeepSupervisionLoss(base, weights, [(1, 1), (2, 2), (4, 4)])
    expected = sum(w * base(o, target[:, ::s, ::s], weight[:, ::s, ::s])
                   for w, o, s in zip([1 / 1.75, 0.5 / 1.75, 0.25 / 1.75], outs, (1, 2, 4)))
    torch.testing.assert_close(loss(outs, target, weight), expected)
    # A single tensor (validation: the main output) is the base loss alone.
    torch.testing.assert_close(loss(outs[0], target, weight), base(outs[0], target, weight))
    # Weight 0: not computed (a wrong shape there would raise).
    zero = DeepSupervisionLoss(base, [1.0, 0.0], [(1, 1), (2, 2)])
    torch.testing.assert_close(zero([outs[0], torch.randn(2, 3, 5, 5)], target),
                               base(outs[0], target))


def test_valid_padding_targets_are_cropped_centrally_after_downsampling():
    """A level-1 output of 2x2 on a 10x10 input: the 5x5 downsampled target's centre."""
    target = torch.zeros(1, 10, 10, dtype=torch.long)
    target[0, 4, 4] = 1  # downsampled: (2, 2), inside the central crop [1:3, 1:3]
    target[0, 0, 0] = 2  # downsampled: (0, 0), cropped away
    logits = torch.full((1, 3, 2, 2), -10.0)
    logits[:, 0] = 10.0
    logits[0, :, 1, 1] = torch.tensor([-10.0, 10.0, -10.0])  # class 1 where it lands
    loss = DeepSupervisionLoss(CELoss(), [0.0, 1.0], [(1, 1), (2, 2)])
    assert loss([torch.zeros(1, 3, 6, 6), logits], target).item() < 1e-6


# -- the networks ------------------------------------------------------------------------
def test_2d_auxiliary_outputs_and_keys():
    torch.manual_seed(0)
    plain = UNet(1, 3, features=4, depth=4, padding="same")
    torch.manual_seed(0)
    model = UNet(1, 3, features=4, depth=4, padding="same", deep_supervision=True)
    # Heads on levels 1 and 2; level 3 (weight 0) has none. Nothing else changes.
    assert aux_keys(model.state_dict()) == ["aux_heads.0.bias", "aux_heads.0.weight",
                                            "aux_heads.1.bias", "aux_heads.1.weight"]
    assert model.aux_heads[1].weight.shape == (3, 16, 1, 1)  # level 2: features * 4
    others = {k: v for k, v in model.state_dict().items() if not k.startswith("aux")}
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in others.items())
    assert model.output_scales == [(1, 1), (2, 2), (4, 4)]
    x = torch.randn(2, 1, 37, 50)
    outs = model(x, auxiliary=True)
    assert [tuple(o.shape) for o in outs] == [(2, 3, 37, 50), (2, 3, 19, 25), (2, 3, 10, 13)]
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain.eval()(x), rtol=0, atol=0)
    calls = []
    model.aux_heads[0].register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        model(x)
    assert not calls  # the heads cost nothing outside training


def test_valid_padding_and_3d_anisotropic_auxiliary_outputs():
    valid = UNet(1, 2, features=4, depth=3, padding="valid", deep_supervision=True)
    assert [tuple(o.shape) for o in valid(torch.randn(1, 1, 92, 92), auxiliary=True)] == [
        (1, 2, 4, 4), (1, 2, 4, 4)]
    model = UNet(1, 2, features=4, depth=3, padding="same", spatial_dims=3,
                 spacing=(3.0, 1.0, 1.0), deep_supervision=True)
    assert model.pool_sizes[0] == (1, 2, 2) and model.output_scales == [(1, 1, 1), (1, 2, 2)]
    assert isinstance(model.aux_heads[0], torch.nn.Conv3d)
    outs = model(torch.randn(1, 1, 9, 32, 30), auxiliary=True)
    assert [tuple(o.shape) for o in outs] == [(1, 2, 9, 32, 30), (1, 2, 9, 16, 15)]
    # valid padding in 3D: each output's target is the centre of the downsampled mask
    net = UNet(1, 2, features=4, depth=3, padding="valid", spatial_dims=3,
               spacing=(3.0, 1.0, 1.0), deep_supervision=True)
    shape = net.valid_input_at_least((12, 48, 48))
    outs = net(torch.randn(1, 1, *shape), auxiliary=True)
    assert outs[1].shape[2] > outs[0].shape[2] // 2  # z is not pooled at level 1
    loss = DeepSupervisionLoss.for_model(DiceCELoss(), net)
    value = loss(outs, torch.randint(0, 2, (1, *shape)), torch.ones(1, *shape))
    value.backward()
    assert net.aux_heads[0].weight.grad.abs().sum() > 0


def test_encoder_unet_heads_and_weights():
    model = ResNetUNet(2, depth=18, decoder_channels=(16, 16, 8, 8, 8), deep_supervision=True)
    outs = model(torch.randn(1, 3, 45, 70), auxiliary=True)
    assert [tuple(o.shape[2:]) for o in outs] == [(45, 70), (23, 35), (12, 18), (6, 9)]
    loss = DeepSupervisionLoss.for_model(CELoss(), model)  # 5 decoder levels
    assert loss.weights == pytest.approx([1 / 1.875, 0.5 / 1.875, 0.25 / 1.875, 0.125 / 1.875])
    assert model(torch.randn(1, 3, 45, 70)).shape == (1, 2, 45, 70)


# -- checkpoints, training, export -------------------------------------------------------
def small_config(**model) -> Config:
    return Config(model=ModelConfig(**({"features": 4, "depth": 3, "out_channels": 3}
                                       | model)))


def test_checkpoints_load_in_both_directions(tmp_path):
    with_heads = small_config(deep_supervision=True)
    torch.manual_seed(0)
    trained = build_model(with_heads.model).eval()
    save_checkpoint(tmp_path / "ds", trained, with_heads)
    assert aux_keys(load_file(str(tmp_path / "ds" / "model.safetensors")))
    model, config = load_checkpoint(tmp_path / "ds")  # inference: no heads
    assert config.model.deep_supervision and model.aux_heads is None
    assert not aux_keys(model.state_dict())
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained(x))
    # a checkpoint without heads, fine-tuned with them: the heads keep their initial values
    plain = small_config()
    save_checkpoint(tmp_path / "plain", build_model(plain.model), plain)
    fresh = build_model(with_heads.model)
    heads = {k: v.clone() for k, v in fresh.state_dict().items() if k.startswith("aux")}
    load_weights(fresh, tmp_path / "plain")
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in heads.items())
    saved = load_file(str(tmp_path / "plain" / "model.safetensors"))
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in saved.items())
    # anything else is still refused
    with pytest.raises(CheckpointError, match="do not match"):
        load_weights(build_model(small_config(features=8).model), tmp_path / "ds")


def tiny_config(out, size=64, **model) -> Config:
    cfg = Config()
    cfg.data = dataclasses.replace(cfg.data, demo="multiclass", demo_count=8, demo_size=size,
                                   patch_size=32, val_fraction=0.25)
    cfg.model = dataclasses.replace(cfg.model, features=4, depth=3, deep_supervision=True,
                                    **model)
    cfg.optim = dataclasses.replace(cfg.optim, lr=3e-3, schedule="none")
    cfg.train = dataclasses.replace(cfg.train, epochs=2, batch_size=4, out=str(out),
                                    plot_every=2, num_preview=1)
    return cfg


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_training_with_deep_supervision_predicts_and_exports(tmp_path, padding):
    # valid padding: depth 3 (the first with a head) takes 92 px at the least
    cfg = tiny_config(tmp_path / "run", padding=padding, size=64 if padding == "same" else 96,
                      norm="batch" if padding == "same" else None)
    if padding == "valid":
        cfg.data = dataclasses.replace(cfg.data, patch_size=92)
    heads = []

    def record(run, row):
        assert isinstance(run.criterion, DeepSupervisionLoss)
        heads.append(unwrap(run.model).aux_heads[0].weight.detach().clone())

    result = train(cfg, progress=False, hooks=[record])
    assert len(result.history) == 2
    assert not torch.equal(heads[0], heads[1])  # the heads are trained
    assert aux_keys(load_file(str(result.last / "model.safetensors")))
    model, config = load_checkpoint(tmp_path / "run")
    assert config.model.deep_supervision and not aux_keys(model.state_dict())
    probs = predict(model, torch.randn(1, 40, 36))
    assert probs.shape == (4, 40, 36)
    out = export_model(result.best, "torchscript", tmp_path / "m.pt")
    assert out["max_abs_diff"] <= 1e-4
    assert not aux_keys(torch.jit.load(str(tmp_path / "m.pt")).state_dict())


def test_export_of_a_module_leaves_the_heads_out(tmp_path):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = UNet(1, 2, features=4, depth=3, padding="same", deep_supervision=True).eval()
    result = export_model(model, "onnx", tmp_path / "m.onnx")
    assert result["max_abs_diff"] <= 1e-4
    assert model.aux_heads is not None  # the caller's model keeps them
    traced = export_model(model, "torchscript", tmp_path / "m.pt")
    assert traced["max_abs_diff"] <= 1e-4
    assert not aux_keys(torch.jit.load(str(tmp_path / "m.pt")).state_dict())
