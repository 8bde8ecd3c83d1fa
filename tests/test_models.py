"""Shapes, sizes, parameter counts, gradients and errors of the three networks."""

import pytest
import torch

from unetkit.models import ResNet, ResNetUNet, UNet


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# -- UNet ------------------------------------------------------------------------------
def test_unet_paper_shape_and_parameter_count():
    model = UNet(in_channels=3, out_channels=1, features=64)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 572, 572)).shape == (1, 1, 388, 388)
    # The canonical U-Net (1 input channel, 2 classes, valid padding) of the paper.
    assert n_params(UNet(1, 2, 64)) == 31_030_658


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("upsample", ["transpose", "bilinear"])
def test_unet_valid_sizes_follow_the_arithmetic(depth, upsample):
    model = UNet(2, 3, features=4, depth=depth, upsample=upsample)
    size = model.valid_input_size(20)
    expected = model.output_size(size)
    assert expected >= 20
    wider = size + 2**depth  # the next valid width
    with torch.no_grad():
        out = model(torch.randn(2, 2, size, wider))
    assert out.shape == (2, 3, expected, model.output_size(wider))
    assert model.margin() * 2 == size - expected


def test_unet_valid_output_size_by_hand():
    # depth 1: s -> s-4 -> /2 -> -4 -> *2 -> -4 ; 36 -> 32 -> 16 -> 12 -> 24 -> 20
    model = UNet(1, 1, features=4, depth=1)
    assert model.output_size(36) == 20
    assert model.output_size(35) is None  # 31 is odd before the pooling
    assert model.valid_input_size(20) == 36
    # 34 -> 30 -> 15 -> 11 -> 22 -> 18: too small for 19, so 36 is the answer
    assert model.output_size(34) == 18
    assert model.valid_input_size(19) == 36


def test_unet_valid_input_size_is_smallest_covering():
    model = UNet(1, 1, features=4, depth=3)
    for target in (1, 10, 57, 100):
        size = model.valid_input_size(target)
        assert model.output_size(size) >= target
        assert all(
            model.output_size(s) is None or model.output_size(s) < target for s in range(1, size)
        )


@pytest.mark.parametrize("height,width", [(37, 53), (250, 333), (1000, 17), (1, 1), (64, 64)])
@pytest.mark.parametrize("norm", [None, "batch", "instance", "group"])
def test_unet_same_padding_takes_any_size(height, width, norm):
    model = UNet(3, 2, features=8, depth=4, padding="same", norm=norm).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, height, width)).shape == (1, 2, height, width)


def test_unet_valid_error_names_nearest_sizes():
    model = UNet(3, 1, features=4)
    with pytest.raises(ValueError, match=r"height 570.*556 or 572"):
        model(torch.randn(1, 3, 570, 572))
    with pytest.raises(ValueError, match=r"width 573.*572 or 588"):
        model(torch.randn(1, 3, 572, 573))


def test_wrong_channel_count_is_a_clear_error():
    with pytest.raises(ValueError, match=r"3 input channel\(s\), got 1"):
        UNet(3, 1, features=4, padding="same")(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"3 input channel\(s\), got 4"):
        ResNetUNet(1, depth=18)(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match="4-D tensor"):
        UNet(3, 1, features=4, padding="same")(torch.randn(3, 32, 32))


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="padding"):
        UNet(padding="reflect")
    with pytest.raises(ValueError, match="upsample"):
        UNet(upsample="nearest")
    with pytest.raises(ValueError, match="norm"):
        UNet(norm="layer")
    with pytest.raises(ValueError, match="depth must be one of"):
        ResNet(depth=42)


@pytest.mark.parametrize(
    "model,size",
    [
        (UNet(1, 2, features=4, depth=2, norm="batch", dropout=0.5), 44),
        (UNet(1, 2, features=4, depth=2, padding="same", upsample="bilinear"), 30),
        (ResNetUNet(3, depth=18, decoder_channels=(16, 16, 8, 8, 4)), 40),
    ],
)
def test_every_parameter_receives_a_gradient(model, size):
    out = model(torch.randn(2, model.in_channels, size, size))
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_kaiming_initialisation_std():
    model = UNet(1, 1, features=64, depth=1)
    conv = model.down[0][1][0]  # second conv of the first level: fan_in = 64*9
    expected = (2 / (64 * 9)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert torch.all(conv.bias == 0)


def test_dropout_only_in_training():
    model = UNet(1, 1, features=4, depth=2, padding="same", dropout=0.9)
    x = torch.randn(1, 1, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))


# -- ResNet ----------------------------------------------------------------------------
def torchvision_spec(depth):
    """torchvision's resnet state_dict keys and shapes, written out from its layout."""
    blocks = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
              152: (3, 8, 36, 3)}[depth]
    bottleneck = depth >= 50
    exp = 4 if bottleneck else 1
    spec = {}

    def bn(prefix, ch):
        for k in ("weight", "bias", "running_mean", "running_var"):
            spec[f"{prefix}.{k}"] = (ch,)
        spec[f"{prefix}.num_batches_tracked"] = ()

    spec["conv1.weight"] = (64, 3, 7, 7)
    bn("bn1", 64)
    in_ch = 64
    for stage, (width, count) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
        for i in range(count):
            p = f"layer{stage}.{i}"
            if bottleneck:
                spec[f"{p}.conv1.weight"] = (width, in_ch, 1, 1)
                bn(f"{p}.bn1", width)
                spec[f"{p}.conv2.weight"] = (width, width, 3, 3)
                bn(f"{p}.bn2", width)
                spec[f"{p}.conv3.weight"] = (width * 4, width, 1, 1)
                bn(f"{p}.bn3", width * 4)
            else:
                spec[f"{p}.conv1.weight"] = (width, in_ch, 3, 3)
                bn(f"{p}.bn1", width)
                spec[f"{p}.conv2.weight"] = (width, width, 3, 3)
                bn(f"{p}.bn2", width)
            if i == 0 and (stage > 1 or bottleneck):
                spec[f"{p}.downsample.0.weight"] = (width * exp, in_ch, 1, 1)
                bn(f"{p}.downsample.1", width * exp)
            in_ch = width * exp
    spec["fc.weight"] = (1000, 512 * exp)
    spec["fc.bias"] = (1000,)
    return spec


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_resnet_matches_torchvision_layout(depth):
    state = ResNet(depth).state_dict()
    spec = torchvision_spec(depth)
    assert list(state) == list(spec)
    assert {k: tuple(v.shape) for k, v in state.items()} == spec


@pytest.mark.parametrize("depth,count", [(18, 11_689_512), (34, 21_797_672), (50, 25_557_032)])
def test_resnet_parameter_counts_match_torchvision(depth, count):
    assert n_params(ResNet(depth)) == count


def test_resnet_features_strides_round_up():
    model = ResNet(18, num_classes=None).eval()
    with torch.no_grad():
        feats = model.features(torch.randn(1, 3, 65, 100))
    assert [tuple(f.shape[1:]) for f in feats] == [
        (64, 33, 50), (64, 17, 25), (128, 9, 13), (256, 5, 7), (512, 3, 4)]
    assert model.feature_channels == (64, 64, 128, 256, 512)
    assert not hasattr(model, "fc")


# -- ResNetUNet ------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_resnet_unet_any_size(depth):
    model = ResNetUNet(2, depth=depth, decoder_channels=(32, 16, 16, 8, 8)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 65, 47)).shape == (1, 2, 65, 47)


def test_resnet_unet_spec_size():
    model = ResNetUNet(num_classes=1, depth=18).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 512, 512)).shape == (1, 1, 512, 512)
        assert model(torch.randn(1, 3, 250, 333)).shape == (1, 1, 250, 333)
    assert isinstance(model.encoder, ResNet)


def test_freeze_encoder_keeps_batchnorm_statistics():
    model = ResNetUNet(1, depth=18, freeze_encoder=True, decoder_channels=(16, 16, 8, 8, 4))
    model.train()
    assert not model.encoder.training and model.decoder.training
    before = model.encoder.bn1.running_mean.clone()
    out = model(torch.randn(2, 3, 64, 64) * 5 + 3)
    out.mean().backward()
    assert torch.equal(model.encoder.bn1.running_mean, before)
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.head.parameters())


def test_mirror_pad_matches_numpy_reflect_even_beyond_the_image():
    import numpy as np

    from unetkit.models.blocks import mirror_pad

    x = torch.arange(15.0).reshape(1, 1, 3, 5)
    got = mirror_pad(x, 2, 1, 4, 3).numpy()
    assert np.array_equal(got, np.pad(x.numpy(), ((0, 0), (0, 0), (2, 1), (4, 3)), "reflect"))
    wide = mirror_pad(x, 7, 0, 0, 0)  # wider than the image: reflected again
    assert np.array_equal(wide.numpy(), np.pad(x.numpy(), ((0, 0), (0, 0), (7, 0), (0, 0)),
                                               "reflect"))
