"""The networks in 3D (one code path with 2D), nnU-Net's anisotropic stages, and proof
that every 2D network is unchanged (keys, shapes and outputs recorded before 3D existed)."""

import hashlib
import io

import pytest
import torch

from unetkit.config import Config, ModelConfig, SettingError
from unetkit.models import (
    ENCODERS,
    EncoderUNet,
    ResNet,
    ResNetUNet,
    UNet,
    anisotropic_stages,
    build_encoder,
    build_model,
    fold_batchnorm,
)
from unetkit.models.blocks import center_crop, check_input, pad_to_multiple
from unetkit.models.encoders import EncoderEntry


def signature(model):
    """sha256 of the state_dict's "key:shape" lines (a renamed key changes it)."""
    lines = [f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items()]
    return len(lines), hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


# -- 2D stays exactly as it was -----------------------------------------------------------
# Recorded from the code before spatial_dims existed (commit 407c952).
UNET_KEYS = [
    "down.0.0.0.weight", "down.0.0.0.bias", "down.0.1.0.weight", "down.0.1.0.bias",
    "down.1.0.0.weight", "down.1.0.0.bias", "down.1.1.0.weight", "down.1.1.0.bias",
    "bottleneck.0.0.weight", "bottleneck.0.0.bias", "bottleneck.1.0.weight",
    "bottleneck.1.0.bias", "ups.0.up.weight", "ups.0.up.bias", "ups.1.up.weight",
    "ups.1.up.bias", "up_convs.0.0.0.weight", "up_convs.0.0.0.bias", "up_convs.0.1.0.weight",
    "up_convs.0.1.0.bias", "up_convs.1.0.0.weight", "up_convs.1.0.0.bias",
    "up_convs.1.1.0.weight", "up_convs.1.1.0.bias", "head.weight", "head.bias",
]


def test_2d_unet_keys_are_unchanged():
    assert list(UNet(1, 2, features=4, depth=2).state_dict()) == UNET_KEYS


@pytest.mark.parametrize("make,count,digest", [
    (lambda: UNet(1, 2, features=4, depth=2), 26, "4aa974d64646c3c7"),
    (lambda: UNet(2, 3, features=4, depth=3, padding="same", norm="batch",
                  upsample="bilinear"), 92, "7c2e60e25c5e6abb"),
    (lambda: ResNetUNet(2, depth=18, decoder_channels=(16, 16, 8, 8, 4)), 182,
     "f73c0b3bfbca55fe"),
    (lambda: ResNetUNet(1, depth=50, in_channels=1, decoder_channels=(16, 16, 8, 8, 4)), 380,
     "ad330af717cf1813"),
    (lambda: EncoderUNet(build_encoder("resnet34", 2), 3, (8, 8, 8, 8, 8)), 278,
     "2cd130215e7623cb"),
])
def test_2d_state_dict_keys_and_shapes_are_unchanged(make, count, digest):
    with torch.device("meta"):  # keys and shapes only: nothing is allocated
        assert signature(make()) == (count, digest)


@pytest.mark.parametrize("make,shape,expected", [
    (lambda: UNet(1, 2, features=4, depth=2), (1, 1, 44, 60),
     ((1, 2, 4, 20), -214.6535, 301.31456)),
    (lambda: UNet(2, 3, features=4, depth=3, padding="same", norm="batch",
                  upsample="bilinear"), (1, 2, 37, 53),
     ((1, 3, 37, 53), -1389.05225, 3415.03707)),
    (lambda: UNet(1, 1, features=4, depth=2, padding="same", norm="instance", dropout=0.5),
     (1, 1, 5, 9), ((1, 1, 5, 9), 21.24135, 21.97686)),
    (lambda: ResNetUNet(2, depth=18, decoder_channels=(16, 16, 8, 8, 4)), (1, 3, 65, 47),
     ((1, 2, 65, 47), -791.98908, 986.40615)),
])
def test_2d_outputs_are_unchanged(make, shape, expected):
    """Same seed, same parameters (initialisation order kept), same function."""
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).double()
    out_shape, total, abs_total = expected
    assert tuple(y.shape) == out_shape
    assert y.sum().item() == pytest.approx(total, rel=1e-4, abs=1e-3)
    assert y.abs().sum().item() == pytest.approx(abs_total, rel=1e-4)


def test_2d_checkpoint_loads_strictly_into_the_new_classes():
    old = UNet(1, 2, features=4, depth=2, norm="batch")
    new = UNet(1, 2, features=4, depth=2, norm="batch", spatial_dims=2, spacing=None)
    new.load_state_dict(old.state_dict(), strict=True)
    assert UNet(1, 2, features=4, depth=2).size_multiple == 4


# -- N-D helpers ---------------------------------------------------------------------------
def test_crop_pad_and_input_check_in_3d():
    x = torch.arange(5 * 6 * 7.0).reshape(1, 1, 5, 6, 7)
    assert torch.equal(center_crop(x, 3, 2, 5), x[..., 1:4, 2:4, 1:6])
    assert torch.equal(center_crop(x, 4, 3), x[..., 1:5, 2:5])  # the last two dims, as in 2D
    padded, sizes = pad_to_multiple(x, (4, 4, 8), dims=3)
    assert sizes == (5, 6, 7) and padded.shape == (1, 1, 8, 8, 8)
    assert torch.equal(padded[..., 7, 7, 7], x[..., 4, 5, 6])  # edges replicated
    padded, sizes = pad_to_multiple(torch.zeros(1, 1, 3, 5), 4)  # 2D call, unchanged
    assert sizes == (3, 5) and padded.shape == (1, 1, 4, 8)
    with pytest.raises(ValueError, match=r"5-D tensor \(batch, 2, depth, height, width\)"):
        check_input(torch.zeros(1, 2, 8, 8), 2, "UNet", dims=3)
    with pytest.raises(ValueError, match="5-D tensor"):
        UNet(1, 1, features=4, depth=1, padding="same", spatial_dims=3)(torch.zeros(1, 1, 8, 8))


# -- anisotropic stages (nnU-Net's rule), by hand -----------------------------------------
def test_anisotropic_stages_by_hand():
    # (3, 1, 1): z is 3x the finest -> not pooled, kernel 1; then (3, 2, 2): within 2x.
    assert anisotropic_stages((3.0, 1.0, 1.0), 3) == (
        ((1, 2, 2), (2, 2, 2), (2, 2, 2)),
        ((1, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3)),
    )
    # (10, 1, 1): z waits three stages ((10, 2, 2), (10, 4, 4), then 10 < 2 * 8).
    assert anisotropic_stages((10.0, 1.0, 1.0), 4) == (
        ((1, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2)),
        ((1, 3, 3), (1, 3, 3), (1, 3, 3), (3, 3, 3), (3, 3, 3)),
    )
    # exactly 2x is not "within 2x" (nnU-Net: ratio < 2), also when floats say 1.999...
    for spacing in ((2.0, 1.0, 1.0), (0.6, 0.3, 0.3)):
        assert anisotropic_stages(spacing, 2) == (((1, 2, 2), (2, 2, 2)),
                                                  ((1, 3, 3), (3, 3, 3), (3, 3, 3)))
    # any axis can be the coarse one; the bottleneck always convolves 3 along every axis
    assert anisotropic_stages((1.0, 1.0, 4.0), 3) == (
        ((2, 2, 1), (2, 2, 1), (2, 2, 2)),
        ((3, 3, 1), (3, 3, 1), (3, 3, 3), (3, 3, 3)),
    )
    assert anisotropic_stages((5.0, 1.0, 1.0), 1) == (((1, 2, 2),), ((1, 3, 3), (3, 3, 3)))


@pytest.mark.parametrize("spacing", [None, (), (0.5, 0.5, 0.5), (1.9, 1.0, 1.0)])
def test_isotropic_or_no_spacing_is_the_plain_unet(spacing):
    assert anisotropic_stages(spacing, 3) == (((2, 2, 2),) * 3, ((3, 3, 3),) * 4)


def test_anisotropic_stages_errors():
    with pytest.raises(ValueError, match="3 values"):
        anisotropic_stages((1.0, 1.0), 2)
    with pytest.raises(ValueError, match="positive"):
        anisotropic_stages((0.0, 1.0, 1.0), 2)


def test_anisotropic_unet_layers_follow_the_stages():
    model = UNet(1, 2, features=4, depth=2, spatial_dims=3, spacing=(3.0, 1.0, 1.0),
                 padding="same")
    assert model.down[0][0][0].weight.shape == (4, 1, 1, 3, 3)  # stage 0: (1, 3, 3)
    assert model.down[0][0][0].padding == (0, 1, 1)
    assert model.down[1][0][0].weight.shape == (8, 4, 3, 3, 3)
    assert model.up_convs[1][0][0].weight.shape == (4, 8, 1, 3, 3)  # decoder stage 0
    assert model.ups[0].up.stride == (2, 2, 2) and model.ups[1].up.stride == (1, 2, 2)
    assert model.size_multiples == (2, 4, 4) and model.size_multiple == 4


# -- 3D UNet shapes and sizes --------------------------------------------------------------
@pytest.mark.parametrize("shape", [(16, 16, 16), (17, 21, 19), (5, 9, 3), (1, 1, 1)])
@pytest.mark.parametrize("spacing", [None, (3.0, 1.0, 1.0)])
@pytest.mark.parametrize("norm", [None, "instance"])
def test_3d_same_padding_takes_any_size(shape, spacing, norm):
    model = UNet(2, 3, features=4, depth=2, padding="same", norm=norm, spatial_dims=3,
                 spacing=spacing).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 2, *shape)).shape == (1, 3, *shape)


@pytest.mark.parametrize("spacing,upsample", [(None, "transpose"), ((3.0, 1.0, 1.0), "bilinear"),
                                              ((1.0, 1.0, 4.0), "transpose")])
def test_3d_valid_padding_follows_the_per_axis_arithmetic(spacing, upsample):
    model = UNet(1, 2, features=4, depth=2, spatial_dims=3, spacing=spacing,
                 upsample=upsample).eval()
    shape = model.valid_input_shape((6, 5, 7))
    out = model.output_shape(shape)
    assert all(o >= t for o, t in zip(out, (6, 5, 7)))
    assert tuple(s - 2 * m for s, m in zip(shape, model.margins())) == out
    with torch.no_grad():
        assert model(torch.randn(2, 1, *shape)).shape == (2, 2, *out)


def test_3d_valid_sizes_by_hand():
    # isotropic, depth 2: 48 -> 44 -> 22 -> 18 -> 9 -> 5 -> 10 - 4 = 6 -> 12 - 4 = 8
    iso = UNet(1, 1, features=4, depth=2, spatial_dims=3)
    assert iso.output_shape((48, 48, 44)) == (8, 8, 4)
    assert iso.output_size(48) == 8 and iso.margin() == 20 and iso.valid_input_size(5) == 48
    # spacing (3, 1, 1): z pools (1, 2) with kernels (1, 3, 3): 24 -> 24 -> 20 -> 10 -> 6
    # -> 12 - 4 = 8 -> 8 (x1, kernel 1 loses nothing); y, x as the isotropic network
    aniso = UNet(1, 1, features=4, depth=2, spatial_dims=3, spacing=(3.0, 1.0, 1.0))
    assert aniso.output_shape((24, 48, 48)) == (8, 8, 8)
    assert aniso.margins() == (8, 20, 20)
    assert aniso.valid_input_shape((8, 8, 8)) == (24, 48, 48)
    assert aniso.output_shape((25, 48, 48)) is None  # 25 -> 21: odd before the pooling
    with pytest.raises(ValueError, match="differ per axis.*output_shape"):
        aniso.output_size(24)
    with pytest.raises(ValueError, match="margins"):
        aniso.margin()


def test_3d_valid_errors_name_the_axis_and_nearest_sizes():
    model = UNet(1, 1, features=4, depth=2, spatial_dims=3)
    with pytest.raises(ValueError, match=r"depth 30 \(axis 0.*Nearest valid depths: 44\."):
        model(torch.zeros(1, 1, 30, 44, 44))
    aniso = UNet(1, 1, features=4, depth=2, spatial_dims=3, spacing=(3.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"depth 25 .*Nearest valid depths: 24 or 26"):
        aniso(torch.zeros(1, 1, 25, 48, 48))
    with pytest.raises(ValueError, match=r"width 47 \(axis 2.*44 or 48"):
        aniso(torch.zeros(1, 1, 24, 48, 47))


def test_every_3d_parameter_receives_a_gradient():
    model = UNet(1, 2, features=4, depth=2, padding="same", norm="batch", dropout=0.2,
                 spatial_dims=3, spacing=(3.0, 1.0, 1.0))
    model(torch.randn(2, 1, 6, 10, 9)).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_3d_batchnorm_folds():
    model = UNet(1, 2, features=4, depth=2, padding="same", norm="batch", spatial_dims=3)
    model.train()
    model(torch.randn(2, 1, 8, 8, 8))  # running statistics away from their start
    x = torch.randn(1, 1, 8, 12, 8)
    with torch.no_grad():
        torch.testing.assert_close(fold_batchnorm(model)(x), model.eval()(x),
                                   rtol=1e-4, atol=1e-5)


# -- 3D ResNet / ResNet-U-Net --------------------------------------------------------------
def test_3d_resnet_unet_any_size():
    model = ResNetUNet(2, depth=18, in_channels=1, decoder_channels=(8, 8, 8, 4, 4),
                       spatial_dims=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 17, 20, 33)).shape == (1, 2, 17, 20, 33)
    assert model.spatial_dims == 3 and model.size_multiple == 32


def test_3d_resnet_keeps_torchvision_names_and_strides():
    with torch.device("meta"):
        flat, vol = ResNet(50).state_dict(), ResNet(50, spatial_dims=3).state_dict()
    assert list(flat) == list(vol)
    assert vol["conv1.weight"].shape == (64, 3, 7, 7, 7)
    model = ResNet(18, in_channels=1, num_classes=None, spatial_dims=3).eval()
    with torch.no_grad():
        feats = model.features(torch.randn(1, 1, 9, 16, 5))
    assert [tuple(f.shape[2:]) for f in feats] == [
        (5, 8, 3), (3, 4, 2), (2, 2, 1), (1, 1, 1), (1, 1, 1)]


def test_pretrained_weights_do_not_exist_in_3d():
    with pytest.raises(SettingError, match=r"^--pretrained True: expected false: no ImageNet "
                                           r"weights exist for 3D"):
        build_model(ModelConfig(arch="resnet_unet", spatial_dims=3, pretrained=True))
    with pytest.raises(ValueError, match="no ImageNet weights exist for a 3D ResNet"):
        ResNet(18, spatial_dims=3).load_pretrained(True)


def test_3d_config_errors(monkeypatch):
    with pytest.raises(SettingError, match=r"--spatial-dims 4: expected one of 2, 3"):
        ModelConfig(spatial_dims=4)
    with pytest.raises(SettingError, match=r"--spacing 3.0 -1.0 1.0: expected > 0"):
        ModelConfig(spacing=(3.0, -1.0, 1.0))
    with pytest.raises(SettingError, match=r"--spacing 1.0 2.0: expected 3 values"):
        build_model(ModelConfig(spatial_dims=3, spacing=(1.0, 2.0)))
    with pytest.raises(SettingError, match=r"--spacing 3.0 1.0 1.0: expected none or isotropic"):
        build_model(ModelConfig(arch="resnet_unet", spatial_dims=3, spacing=(3.0, 1.0, 1.0)))

    class Flat(torch.nn.Module):  # an encoder that knows nothing of 3D
        def __init__(self, in_channels):
            super().__init__()

    monkeypatch.setitem(ENCODERS, "flat", EncoderEntry(Flat))
    with pytest.raises(SettingError, match=r"--spatial-dims 3: expected 2: encoder flat"):
        build_model(ModelConfig(arch="resnet_unet", encoder="flat", spatial_dims=3))


# -- config, build_model, state dict -------------------------------------------------------
def test_build_model_from_a_3d_config_and_its_config_json(tmp_path):
    config = Config(model=ModelConfig(spatial_dims=3, spacing=(3.0, 1.0, 1.0), features=4,
                                      depth=2, norm="instance"))
    config.save(tmp_path / "config.json")
    loaded = Config.load(tmp_path / "config.json")
    assert loaded.model.spacing == (3.0, 1.0, 1.0) and loaded.model.spatial_dims == 3
    model = build_model(loaded.model)
    assert isinstance(model, UNet) and model.spatial_dims == 3
    assert model.pool_sizes == ((1, 2, 2), (2, 2, 2))
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 1, 7, 9, 10)).shape == (1, 1, 7, 9, 10)
    # a config.json written before 3D existed: the 2D defaults
    raw = Config().to_dict()
    del raw["model"]["spatial_dims"], raw["model"]["spacing"]
    old = Config.from_dict(raw).model
    assert (old.spatial_dims, old.spacing) == (2, ())
    assert build_model(old).spatial_dims == 2


def test_3d_state_dict_round_trip():
    cfg = ModelConfig(spatial_dims=3, spacing=(3.0, 1.0, 1.0), features=4, depth=2)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1)
    again = build_model(cfg).eval()
    again.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    x = torch.randn(1, 1, 6, 12, 12)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    with pytest.raises(RuntimeError, match="size mismatch"):  # the 2D network's shapes differ
        build_model(ModelConfig(features=4, depth=2)).load_state_dict(model.state_dict())


def test_tiny_3d_unet_overfits_one_volume():
    torch.manual_seed(0)
    grid = torch.stack(torch.meshgrid(*[torch.arange(12.0)] * 3, indexing="ij"))
    target = ((grid - 5.5).square().sum(0) < 16).float()[None, None]  # a ball
    image = target * 2 - 1 + 0.3 * torch.randn_like(target)
    model = UNet(1, 1, features=4, depth=2, padding="same", norm="batch", spatial_dims=3,
                 spacing=(2.5, 1.0, 1.0))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(25):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(image), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
