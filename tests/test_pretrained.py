"""ImageNet weights in torchvision's layout, and the original design's examples."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unetkit.models import ResNet, ResNetUNet
from unetkit.models.pretrained import TORCHVISION_FILES, adapt_first_conv, find_weights

ROOT = Path(__file__).resolve().parent.parent


def write_torchvision_file(folder: Path, depth: int, seed: int = 0) -> dict:
    """A torchvision-layout weight file (with its fc) from a random ResNet."""
    torch.manual_seed(seed)
    model = ResNet(depth)
    for m in model.modules():  # non-trivial BatchNorm statistics too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    state = model.state_dict()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / TORCHVISION_FILES[depth])
    return state


def test_pretrained_true_loads_from_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    state = write_torchvision_file(tmp_path / "hub" / "checkpoints", 18)
    model = ResNetUNet(1, pretrained=True, depth=18)
    own = model.encoder.state_dict()
    assert set(own) == {k for k in state if not k.startswith("fc.")}
    for key, value in own.items():
        assert torch.equal(value, state[key]), key


def test_files_without_batchnorm_counters_load(tmp_path):
    state = write_torchvision_file(tmp_path, 18)
    older = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(older, tmp_path / "old.pth")
    model = ResNetUNet(1, pretrained=tmp_path / "old.pth", depth=18)
    assert torch.equal(model.encoder.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])


def test_pretrained_path_and_same_outputs_as_the_classifier(tmp_path):
    state = write_torchvision_file(tmp_path, 34, seed=1)
    path = tmp_path / TORCHVISION_FILES[34]
    model = ResNetUNet(2, pretrained=str(path), depth=34).eval()
    reference = ResNet(34).eval()
    reference.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.encoder.features(x)[-1], reference.features(x)[-1])


def test_missing_file_names_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("UNETKIT_OFFLINE", "1")
    folder = tmp_path / "hub" / "checkpoints"
    with pytest.raises(FileNotFoundError) as info:
        ResNetUNet(1, pretrained=True, depth=50)
    assert "resnet50-0676ba61.pth" in str(info.value) and str(folder) in str(info.value)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        find_weights(18, tmp_path / "nowhere.pth")


def test_wrong_file_is_reported(tmp_path):
    write_torchvision_file(tmp_path, 18)
    with pytest.raises(ValueError, match="ResNet-34"):
        ResNetUNet(1, pretrained=tmp_path / TORCHVISION_FILES[18], depth=34)


def test_first_conv_adapted_for_other_channel_counts(tmp_path):
    state = write_torchvision_file(tmp_path, 18)
    model = ResNetUNet(1, pretrained=tmp_path / TORCHVISION_FILES[18], depth=18, in_channels=1)
    rgb = state["conv1.weight"]
    assert torch.allclose(model.encoder.conv1.weight, rgb.sum(dim=1, keepdim=True))
    # A grey picture given as 1 channel gives the same stem response as in RGB.
    grey = torch.randn(1, 1, 32, 32)
    one = torch.nn.functional.conv2d(grey, adapt_first_conv(rgb, 1), stride=2, padding=3)
    three = torch.nn.functional.conv2d(grey.repeat(1, 3, 1, 1), rgb, stride=2, padding=3)
    assert torch.allclose(one, three, atol=1e-4)
    four = adapt_first_conv(rgb, 4)
    assert four.shape == (64, 4, 7, 7)
    assert torch.allclose(four.sum(dim=1), rgb.sum(dim=1), atol=1e-5)


UNET_SNIPPET = """
import torch
from models.unet import UNet

# Create a U-Net model
# Parameters: in_channels (input channels), out_channels (output classes), features (base feature count)
model = UNet(in_channels=3, out_channels=1, features=64)

# Forward pass
x = torch.randn(1, 3, 572, 572)  # Batch, Channels, Height, Width
output = model(x)
print(output.shape)  # torch.Size([1, 1, 388, 388])
"""

RESNET_UNET_SNIPPET = """
import torch
from models.resnet_unet import ResNetUNet

# Create ResNet+U-Net hybrid model
# Parameters: num_classes, pretrained, depth (18, 34, 50, etc.)
model = ResNetUNet(num_classes=1, pretrained=True, depth=50)

# Forward pass
x = torch.randn(1, 3, 512, 512)
output = model(x)
print(output.shape)  # torch.Size([1, 1, 512, 512])
"""


def run_snippet(code: str, env: dict) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.slow
def test_original_design_snippets_run_verbatim_from_the_root(tmp_path):
    write_torchvision_file(tmp_path / "hub" / "checkpoints", 50)
    env = dict(os.environ, TORCH_HOME=str(tmp_path), UNETKIT_OFFLINE="1")
    assert run_snippet(UNET_SNIPPET, env) == "torch.Size([1, 1, 388, 388])"
    assert run_snippet(RESNET_UNET_SNIPPET, env) == "torch.Size([1, 1, 512, 512])"
