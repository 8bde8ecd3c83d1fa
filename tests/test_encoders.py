"""The encoder seam: an encoder defined only here trains end to end after one registry
line; registry look-ups name what they know; ResNet is an Encoder; ResNetUNet's weights
keep the key layout that saved checkpoints use."""

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from unetkit.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from unetkit.cli import main
from unetkit.config import IMAGENET_MEAN, IMAGENET_STD, Config, ModelConfig, SettingError
from unetkit.models import (
    Encoder,
    EncoderUNet,
    PretrainedEncoder,
    ResNet,
    ResNetUNet,
    build_encoder,
    build_model,
    pretrained_normalization,
    register_encoder,
)
from unetkit.models.layers import check_dims
from unetkit.training import build_data, prepare_config, train


class TinyEncoder(nn.Module):
    """Three stride-2 conv stages: (B, C, H, W) -> maps at H/2, H/4, H/8 with 8, 16, 16
    channels. Nothing from unetkit is needed to write one."""

    size_multiple = 8

    def __init__(self, in_channels: int, widths: tuple[int, ...] = (8, 16, 16)):
        super().__init__()
        self.in_channels = in_channels
        self.feature_channels = tuple(widths)
        stages, prev = [], in_channels
        for width in widths:
            stages.append(nn.Sequential(nn.Conv2d(prev, width, 3, stride=2, padding=1),
                                        nn.BatchNorm2d(width), nn.ReLU(inplace=True)))
            prev = width
        self.stages = nn.ModuleList(stages)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps


class PretrainedTinyEncoder(TinyEncoder):
    """TinyEncoder whose weights come from a file and expect their own statistics."""

    pretrained_normalization = ((0.5,), (0.25,))

    def load_pretrained(self, source) -> None:
        self.load_state_dict(torch.load(source, weights_only=True))


register_encoder("tiny_cnn", TinyEncoder)
register_encoder("tiny_cnn_pretrained", PretrainedTinyEncoder)


def tiny_config(out, **model) -> Config:
    cfg = Config()
    cfg.model = dataclasses.replace(cfg.model, **({"arch": "resnet_unet", "encoder": "tiny_cnn",
                                                   "decoder_channels": (16, 8, 8)} | model))
    cfg.data = dataclasses.replace(cfg.data, demo_count=10, demo_size=64, patch_size=48)
    cfg.optim = dataclasses.replace(cfg.optim, lr=3e-3, schedule="none")
    cfg.train = dataclasses.replace(cfg.train, epochs=1, batch_size=4, out=str(out))
    return cfg


def test_registered_encoder_trains_end_to_end(tmp_path):
    result = train(tiny_config(tmp_path / "run"), progress=False)
    model, config = load_checkpoint(result.best)
    assert isinstance(model, EncoderUNet) and isinstance(model.encoder, TinyEncoder)
    assert config.model.encoder == "tiny_cnn" and config.data.normalize == "dataset"
    assert json.loads((result.best / "config.json").read_text())["model"]["encoder"] == "tiny_cnn"
    with torch.no_grad():  # any H x W: padded to a multiple of 8 inside, cropped back
        assert model(torch.randn(2, 1, 37, 53)).shape == (2, 1, 37, 53)
    assert len(result.history) == 1 and math.isfinite(result.history[0]["train_loss"])


def test_pretrained_encoder_brings_its_own_statistics(tmp_path):
    weights = tmp_path / "tiny.pt"
    torch.save(PretrainedTinyEncoder(1).state_dict(), weights)
    cfg = tiny_config(tmp_path / "run", encoder="tiny_cnn_pretrained", pretrained=str(weights))
    assert pretrained_normalization(cfg.model) == ((0.5,), (0.25,))
    model = build_model(prepare_config(cfg).model)
    file = torch.load(weights, weights_only=True)
    assert all(torch.equal(v, file[k]) for k, v in model.encoder.state_dict().items())
    data = build_data(prepare_config(cfg))[2].data
    assert (data.mean, data.std) == ((0.5,), (0.25,))
    # ResNet's ImageNet weights keep the ImageNet rule; no pretrained weights, no statistics.
    resnet = ModelConfig(arch="resnet_unet", pretrained=True)
    assert pretrained_normalization(resnet) == (IMAGENET_MEAN, IMAGENET_STD)
    assert pretrained_normalization(dataclasses.replace(resnet, pretrained=False)) is None
    assert pretrained_normalization(ModelConfig(arch="unet", pretrained=True)) is None


def test_lookup_errors_name_the_known_names(tmp_path, capsys):
    with pytest.raises(SettingError, match=r"^--arch segformer: expected one of unet, "
                                           r"resnet_unet \(model.arch in a config file\)$"):
        build_model(ModelConfig(arch="segformer"))
    with pytest.raises(SettingError, match=r"--encoder vit: expected one of resnet18, "
                                           r"resnet34, resnet50, resnet101, resnet152, tiny_cnn"):
        build_model(ModelConfig(arch="resnet_unet", encoder="vit"))
    with pytest.raises(ValueError, match="unknown encoder 'vit': expected one of resnet18"):
        build_encoder("vit", 3)
    with pytest.raises(SettingError, match="--pretrained True: expected false: encoder "
                                           "tiny_cnn has no pretrained weights"):
        build_model(ModelConfig(arch="resnet_unet", encoder="tiny_cnn", pretrained=True))
    with pytest.raises(SettingError, match="--decoder-channels 8 8: expected 3 values"):
        build_model(ModelConfig(arch="resnet_unet", encoder="tiny_cnn", decoder_channels=(8, 8)))
    for flags, message in ((["--arch", "segformer"], "--arch segformer: expected one of"),
                           (["--arch", "resnet_unet", "--encoder", "vit"], "--encoder vit")):
        out = tmp_path / "run"
        assert main(["train", *flags, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
        assert not out.exists()  # refused before anything is read or written


def test_resnet_is_an_encoder_and_other_modules_are_refused():
    resnet = ResNet(18, num_classes=None)
    assert isinstance(resnet, Encoder) and isinstance(resnet, PretrainedEncoder)
    assert isinstance(TinyEncoder(1), Encoder) and not isinstance(TinyEncoder(1), PretrainedEncoder)
    with torch.no_grad():
        maps = resnet.features(torch.randn(1, 3, 64, 96))
    assert [m.shape[1:] for m in maps] == [(c, 64 // 2**i, 96 // 2**i) for i, c in
                                           enumerate(resnet.feature_channels, start=1)]
    assert resnet.size_multiple == 2 ** len(resnet.feature_channels)
    with pytest.raises(TypeError, match="Conv2d is not an encoder"):
        EncoderUNet(nn.Conv2d(3, 8, 3))
    with pytest.raises(ValueError, match="dims"):
        check_dims(4)  # 2D today; 3D layers are declared in models/layers.py


def old_resnet_unet_keys(depth: int) -> list[str]:
    """The state_dict keys of the original ResNetUNet (before the encoder seam), written out
    from its module structure: ResNet encoder, five DecoderBlocks (DoubleConv of two
    Conv2d(bias=False) + BatchNorm2d + ReLU), a 1x1 head."""
    keys = ["encoder." + k for k in ResNet(depth, num_classes=None).state_dict()]
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    for stage in range(5):
        for conv in range(2):
            keys.append(f"decoder.{stage}.conv.{conv}.0.weight")
            keys += [f"decoder.{stage}.conv.{conv}.1.{name}" for name in bn]
    return keys + ["head.weight", "head.bias"]


@pytest.mark.parametrize("depth", [18, 50])
def test_resnet_unet_keeps_the_saved_key_layout(depth):
    decoder = (16, 16, 8, 8, 4)
    built = build_model(ModelConfig(arch="resnet_unet", resnet_depth=depth, in_channels=3,
                                    out_channels=2, decoder_channels=decoder))
    direct = ResNetUNet(2, depth=depth, decoder_channels=decoder)
    assert list(built.state_dict()) == list(direct.state_dict()) == old_resnet_unet_keys(depth)
    assert built.decoder[0].conv[0][0].weight.shape == (16, direct.encoder.feature_channels[-1]
                                                        + direct.encoder.feature_channels[-2],
                                                        3, 3)
    built.load_state_dict(direct.state_dict(), strict=True)


def test_checkpoint_config_without_encoder_builds_the_same_model(tmp_path):
    cfg = Config()
    cfg.model = ModelConfig(arch="resnet_unet", resnet_depth=18, in_channels=3,
                            decoder_channels=(16, 16, 8, 8, 4))
    torch.manual_seed(0)
    model = ResNetUNet(1, depth=18, in_channels=3, decoder_channels=(16, 16, 8, 8, 4)).eval()
    folder = save_checkpoint(tmp_path / "ckpt", model, cfg)
    raw = json.loads((folder / "config.json").read_text())
    del raw["model"]["encoder"]  # as written before encoders had names
    (folder / "config.json").write_text(json.dumps(raw))
    loaded, config = load_checkpoint(folder)
    assert config.model.encoder is None and loaded.encoder.depth == 18
    x = torch.randn(1, 3, 40, 50)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    raw["model"]["encoder"] = "gone"  # registered by code that is not imported
    (folder / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="config.json: --encoder gone: expected one of"):
        load_checkpoint(folder)
