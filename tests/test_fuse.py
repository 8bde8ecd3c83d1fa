"""BatchNorm folding: the formula by hand, equal outputs on our networks, no BN left."""

import pytest
import torch
from torch import nn

from unetkit.models import ResNetUNet, UNet
from unetkit.models.fuse import fold_batchnorm


def _randomise_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial gamma/beta, then a few train-mode forwards to fill the running stats
    (fresh ones are mean 0, var 1: folding them would hardly change a weight)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=gen))
                m.momentum = 0.5
        model.train()
        for _ in range(3):
            model(2.0 * torch.randn(2, model.in_channels, 64, 64, generator=gen) + 0.5)
    model.eval()


def _count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def test_single_pair_matches_the_formula_by_hand():
    conv = nn.Conv2d(1, 1, kernel_size=1, bias=False)
    bn = nn.BatchNorm2d(1, eps=1.0)
    with torch.no_grad():
        conv.weight.fill_(2.0)
        bn.running_mean.fill_(1.0)
        bn.running_var.fill_(3.0)  # sqrt(3 + eps) = 2
        bn.weight.fill_(4.0)
        bn.bias.fill_(0.5)
    folded = fold_batchnorm(nn.Sequential(conv, bn, nn.ReLU()))
    # w' = 2 * 4 / 2 = 4; b' = (0 - 1) * 4 / 2 + 0.5 = -1.5
    assert folded[0].weight.item() == pytest.approx(4.0)
    assert folded[0].bias.item() == pytest.approx(-1.5)
    assert isinstance(folded[1], nn.Identity)
    # and the layer computes 4 x - 1.5, then the ReLU
    x = torch.tensor([[[[0.0, 1.0, 2.0]]]])
    assert torch.allclose(folded(x), torch.tensor([[[[0.0, 2.5, 6.5]]]]))


def _randomise_batchnorm_seq(model: nn.Sequential) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
            elif isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.uniform_(-0.5, 0.5)
    model.eval()


def test_existing_bias_is_kept_and_batchnorm_without_conv_is_left():
    model = nn.Sequential(nn.Conv2d(2, 3, 3, bias=True), nn.BatchNorm2d(3), nn.ReLU(),
                          nn.BatchNorm2d(3))  # the last one follows a ReLU: not foldable
    _randomise_batchnorm_seq(model)
    folded = fold_batchnorm(model)
    assert isinstance(folded[1], nn.Identity)
    assert isinstance(folded[3], nn.BatchNorm2d)
    x = torch.randn(2, 2, 9, 9)
    assert torch.allclose(folded(x), model(x), atol=1e-5)


@pytest.mark.parametrize(
    "build",
    [
        lambda: UNet(3, 2, features=8, depth=3, padding="same", norm="batch"),
        lambda: UNet(1, 1, features=8, depth=2, padding="valid", norm="batch"),
        lambda: ResNetUNet(num_classes=1, depth=18),
        lambda: ResNetUNet(num_classes=3, depth=50, decoder_channels=(32, 16, 16, 8, 8)),
    ],
    ids=["unet-same", "unet-valid", "resnet18-unet", "resnet50-unet"],
)
def test_folding_keeps_outputs_and_removes_every_batchnorm(build):
    torch.manual_seed(0)
    model = build()
    _randomise_batchnorm(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n_bn = _count(model, nn.BatchNorm2d)
    assert n_bn > 0

    folded = fold_batchnorm(model)

    assert _count(folded, nn.BatchNorm2d) == 0
    assert _count(folded, nn.Identity) >= n_bn
    assert not folded.training
    size = 92 if getattr(model, "padding", "same") == "valid" else 64
    x = torch.randn(2, model.in_channels, size, size)
    with torch.no_grad():
        expected = model(x)
        got = folded(x)
    scale = expected.abs().max().item()
    assert scale > 0
    assert torch.allclose(got, expected, rtol=0, atol=1e-4 * scale)
    # The original is untouched: same modules, same numbers.
    assert _count(model, nn.BatchNorm2d) == n_bn
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_folding_changes_the_weights_it_folds():
    # Guard against a fold that silently does nothing (e.g. folds fresh statistics only).
    torch.manual_seed(0)
    model = ResNetUNet(num_classes=1, depth=18)
    _randomise_batchnorm(model)
    folded = fold_batchnorm(model)
    assert not torch.allclose(folded.encoder.conv1.weight, model.encoder.conv1.weight)
    assert folded.encoder.conv1.bias is not None
    block = folded.encoder.layer2[0]
    assert isinstance(block.bn1, nn.Identity) and isinstance(block.bn2, nn.Identity)
    assert isinstance(block.downsample[1], nn.Identity)


def test_original_training_mode_is_kept():
    model = UNet(1, 1, features=4, depth=1, padding="same", norm="batch").train()
    fold_batchnorm(model)
    assert model.training
    assert all(m.training for m in model.modules())


def test_batchnorm_without_running_stats_is_not_folded():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False))
    folded = fold_batchnorm(model)
    assert isinstance(folded[1], nn.BatchNorm2d)
