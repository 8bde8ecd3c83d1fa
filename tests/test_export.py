"""ONNX and TorchScript export: parity with PyTorch at sizes other than the traced one,
2D and 3D, with the torch.export-based ONNX exporter and its TorchScript-based fallback."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest
import torch

import unetkit.export as export_module
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


def unet3d(norm="batch", spacing=(3, 1, 1)):
    torch.manual_seed(0)
    return UNet(1, 2, features=4, depth=2, padding="same", norm=norm, spatial_dims=3,
                spacing=spacing)


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
    # torch.export-based for every network here; one file, no external weights beside it
    assert result["exporter"] == ("dynamo" if fmt == "onnx" else "torchscript")
    assert result["fallback_reason"] is None
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    assert len(result["verify_sizes"]) == 2 and result["verify_size"] == result["verify_sizes"][0]
    for size in result["verify_sizes"]:
        assert all(v != t for v, t in zip(size, result["input_size"]))
    assert result["max_abs_diff"] <= 1e-4
    x = torch.randn(3, model.in_channels, *other_size)
    with torch.no_grad():
        expected = model(x)
    got = run_export(model, fmt, path, x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_verification_sizes_are_not_multiples_and_differ_per_axis():
    # 64 traced, 50x70 and 73x41 verified: none a multiple of 4, so the padding is tested.
    assert _sizes(same_unet(), None) == ((64, 64), [(50, 70), (73, 41)])
    assert _sizes(unet3d(), None) == ((32, 32, 32), [(21, 38, 18), (37, 13, 41)])
    assert _sizes(unet3d(), (8, 16, 24)) == ((8, 16, 24), [(1, 22, 10), (13, 1, 33)])
    # valid padding: the next valid sides (depth 2: every 4th), one or two steps up
    assert _sizes(valid_unet(), 60) == ((60, 60), [(64, 68), (68, 64)])
    with pytest.raises(ValueError, match="example_size needs 3 values"):
        _sizes(unet3d(), (32, 32))


def test_size_agnostic_wrapper_equals_the_network():
    model = resnet_unet().eval()
    x = torch.randn(2, 3, 45, 70)
    with torch.no_grad():
        torch.testing.assert_close(SizeAgnostic(model, 32)(x), model(x), rtol=0, atol=0)
    # instance norm: the network pads each side to at least twice its multiple itself
    model = unet3d(norm="instance").eval()
    wrapped = SizeAgnostic(model, model.size_multiples, 3, double_minimum=True)
    for shape in [(1, 3, 5), (2, 4, 9), (3, 8, 8), (5, 13, 2)]:
        x = torch.randn(1, 1, *shape)
        with torch.no_grad():
            torch.testing.assert_close(wrapped(x), model(x), rtol=0, atol=0)


def test_export_from_checkpoint_folder(tmp_path):
    config = Config(model=ModelConfig(in_channels=1, out_channels=1, features=4, depth=2))
    ckpt = save_checkpoint(tmp_path / "ckpt", build_model(config.model), config)
    result = export_model(ckpt, "onnx", tmp_path / "out" / "m.onnx", example_size=(32, 48))
    assert result["input_size"] == (32, 48)
    assert result["verify_sizes"] == [(18, 54), (41, 25)]
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
    with pytest.raises(ImportError, match=r"pip install -e '\.\[export\]'"):
        export_model(valid_unet(), "onnx", tmp_path / "m.onnx")


def test_exported_valid_unet_runs_at_the_paper_sizes_arithmetic(tmp_path):
    # Output side follows the valid-padding arithmetic at a size never traced.
    model = valid_unet().eval()
    export_model(model, "onnx", tmp_path / "v.onnx", verify=False)
    x = np.random.default_rng(0).random((1, 1, 124, 100)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "v.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {"image": x})[0]
    assert out.shape == (1, 1, model.output_size(124), model.output_size(100))


def test_3d_checkpoint_exports_with_dynamic_depth_height_width(tmp_path):
    onnx = pytest.importorskip("onnx")
    config = Config(model=ModelConfig(in_channels=1, out_channels=2, features=4, depth=2,
                                      spatial_dims=3, spacing=(3.0, 1.0, 1.0), norm="instance"))
    model = build_model(config.model)
    ckpt = save_checkpoint(tmp_path / "ckpt", model, config)
    result = export_model(ckpt, "onnx", tmp_path / "m.onnx", example_size=(12, 24, 20))
    assert result["exporter"] == "dynamo" and result["input_size"] == (12, 24, 20)
    assert result["verify_sizes"] == [(1, 30, 6), (17, 5, 29)] and result["max_abs_diff"] <= 1e-4
    saved = onnx.load(str(tmp_path / "m.onnx"))
    dims = [d.dim_param or d.dim_value for d in saved.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 1, "depth", "height", "width"]
    meta = {p.key: p.value for p in saved.metadata_props}
    assert meta["input"].startswith("image (N, C, D, H, W)")
    x = torch.randn(1, 1, 7, 19, 33)
    with torch.no_grad():
        expected = model.eval()(x)
    torch.testing.assert_close(run_export(model, "onnx", tmp_path / "m.onnx", x), expected,
                               atol=1e-4, rtol=1e-4)
    result = export_model(ckpt, "torchscript", tmp_path / "m.pt", example_size=16)
    assert result["input_size"] == (16, 16, 16) and result["max_abs_diff"] <= 1e-4
    for y in (x, torch.randn(2, 1, 1, 3, 5)):  # also below instance norm's 2x multiple
        with torch.no_grad():
            expected = model(y)
        torch.testing.assert_close(run_export(model, "torchscript", tmp_path / "m.pt", y),
                                   expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(run_export(model, "onnx", tmp_path / "m.onnx", y),
                                   expected, atol=1e-4, rtol=1e-4)


def test_onnx_falls_back_to_the_torchscript_exporter_with_one_warning_line(
        tmp_path, monkeypatch, caplog):
    def fails(*args, **kwargs):
        raise RuntimeError("Failed to export\n\nthe long explanation")

    monkeypatch.setattr(export_module, "_export_dynamo", fails)
    model = same_unet().eval()
    result = export_model(model, "onnx", tmp_path / "m.onnx")
    assert result["exporter"] == "legacy"
    assert result["fallback_reason"] == "RuntimeError: Failed to export"
    assert result["max_abs_diff"] <= 1e-4
    err = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(err) == 1 and err[0].startswith("warning: ") and "\n" not in err[0]
    assert "(RuntimeError: Failed to export)" in err[0] and "dynamo=False" in err[0]
    x = torch.randn(1, 2, 37, 29)
    with torch.no_grad():
        torch.testing.assert_close(run_export(model, "onnx", tmp_path / "m.onnx", x), model(x),
                                   atol=1e-4, rtol=1e-4)


def test_fallback_reason_is_the_innermost_cause_and_names_the_missing_package(
        tmp_path, monkeypatch):
    def missing(*args, **kwargs):
        try:
            raise ModuleNotFoundError("No module named 'onnxscript'")
        except ImportError as err:
            raise RuntimeError("\x1b[96mwrapped\x1b[0m") from err

    monkeypatch.setattr(export_module, "_export_dynamo", missing)
    result = export_model(valid_unet(), "onnx", tmp_path / "m.onnx", verify=False)
    assert result["exporter"] == "legacy" and (tmp_path / "m.onnx").is_file()
    assert result["fallback_reason"] == "ModuleNotFoundError: No module named 'onnxscript'"
    assert export_module._reason(RuntimeError("\x1b[96mconflicts:\x1b[0m\n- dim 2 fixed")) == (
        "RuntimeError: conflicts: - dim 2 fixed")
