"""ONNX and TorchScript export: parity with PyTorch at sizes other than the traced one."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from unetkit.checkpoint import CheckpointError, build_model, save_checkpoint
from unetkit.config import Config, ModelConfig
from unetkit.export import ExportError, SizeAgnostic, _sizes, export_model
from unetkit.models import ResNetUNet, UNet

ort = pytest.importorskip("onnxruntime")


def same_unet():
    torch.manual_seed(0)
    return UNet(2, 3, features=4, depth=2, padding="same", norm="batch")


def valid_unet():
    torch.manual_seed(0)
    return UNet(1, 1, features=4, depth=2, padding="valid")


def resnet_unet():
    torch.manual_seed(0)
    return ResNetUNet(2, depth=18, in_channels=3, decoder_channels=(16, 16, 8, 8, 8))


def run_export(model, fmt, path, x):
    """The exported file's output for ``x``, computed by its own runtime."""
    if fmt == "onnx":
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
    with torch.no_grad():
        return torch.jit.load(str(path))(x)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize(
    "make, other_size",
    # other_size: an extra size checked here, besides the one export_model verifies
    [(same_unet, (33, 97)), (valid_unet, (76, 92)), (resnet_unet, (41, 29))],
)
def test_export_matches_pytorch_at_other_sizes(tmp_path, fmt, make, other_size):
    model = make().eval()
    path = tmp_path / f"model.{fmt}"
    result = export_model(model, fmt, path)
    assert result["path"] == path and path.is_file()
    assert result["verify_size"] != result["input_size"]
    assert all(v != t for v, t in zip(result["verify_size"], result["input_size"]))
    assert result["max_abs_diff"] <= 1e-4
    x = torch.randn(3, model.in_channels, *other_size)
    with torch.no_grad():
        expected = model(x)
    got = run_export(model, fmt, path, x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_same_size_verification_size_is_not_a_multiple():
    # 64 traced, 50x70 verified: neither is a multiple of 4, so the padding path is tested.
    assert _sizes(same_unet(), None) == ((64, 64), (50, 70))


def test_size_agnostic_wrapper_equals_the_network():
    model = resnet_unet().eval()
    x = torch.randn(2, 3, 45, 70)
    with torch.no_grad():
        torch.testing.assert_close(SizeAgnostic(model, 32)(x), model(x), rtol=0, atol=0)


def test_export_from_checkpoint_folder(tmp_path):
    config = Config(model=ModelConfig(in_channels=1, out_channels=1, features=4, depth=2))
    ckpt = save_checkpoint(tmp_path / "ckpt", build_model(config.model), config)
    result = export_model(ckpt, "onnx", tmp_path / "out" / "m.onnx", example_size=(32, 48))
    assert result["input_size"] == (32, 48) and result["verify_size"] == (18, 54)
    assert result["max_abs_diff"] <= 1e-4


def test_difference_above_tolerance_raises(tmp_path):
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_model(valid_unet(), "torchscript", tmp_path / "m.pt", atol=-1.0)


def test_bad_format_missing_checkpoint_and_missing_onnx(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="format must be one of"):
        export_model(valid_unet(), "tflite", tmp_path / "m")
    with pytest.raises(CheckpointError, match="not found"):
        export_model(tmp_path / "nothing", "onnx", tmp_path / "m.onnx")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="incomplete.*config.json"):
        export_model(partial, "onnx", tmp_path / "m.onnx")
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'unetkit\[export\]'"):
        export_model(valid_unet(), "onnx", tmp_path / "m.onnx")


def test_exported_valid_unet_runs_at_the_paper_sizes_arithmetic(tmp_path):
    # Output side follows the valid-padding arithmetic at a size never traced.
    model = valid_unet().eval()
    export_model(model, "onnx", tmp_path / "v.onnx", verify=False)
    x = np.random.default_rng(0).random((1, 1, 124, 100)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "v.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {"image": x})[0]
    assert out.shape == (1, 1, model.output_size(124), model.output_size(100))
