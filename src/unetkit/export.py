"""Export a trained network to ONNX or TorchScript, and check the export.

Both formats take inputs (batch, in_channels, height, width) float32 of any batch size
and any height/width the network accepts (any size for same-size models, a valid size for
a valid-padding UNet) and return the raw LOGITS (batch, out_channels, h, w): apply sigmoid
(one channel) or softmax over the channels yourself.

How sizes stay dynamic: both exports record the network by tracing one example input.
Same-size models pad their input internally to a multiple of ``2**depth`` (UNet) or 32
(ResNetUNet) behind a Python ``if``, which a trace freezes: traced at 64x64 the padding
would vanish from the graph. So the exported module is the network wrapped in
:class:`SizeAgnostic`, which always pads (by edge replication, as the network does, with
a pad width computed by shape arithmetic that the trace records, possibly 0) and crops
the output back; the network's own check then never pads, at any size, and the result
equals the network's own output. ONNX uses PyTorch's TorchScript-based exporter
(``dynamo=False``) with dynamic batch/height/width axes: it needs only ``onnx`` and
``onnxruntime`` (``pip install unetkit[export]``). (PyTorch marks it deprecated since 2.9;
the newer torch.export-based exporter needs the extra ``onnxscript`` package and, in
PyTorch 2.13, fixed the input size of valid-padding UNets instead of keeping it dynamic.)
An instance-norm UNet pads tiny inputs further (to ``2**(depth+1)``); exported, it needs
inputs of at least that side.

Every export is verified (``verify=True``) on an input of ANOTHER size than the traced
one, with batch 2, against PyTorch; the largest absolute difference is returned and an
:class:`ExportError` is raised above ``atol``.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_checkpoint, unwrap
from .config import target_classes
from .errors import UserError, writing
from .models import UNet
from .models.auxiliary import drop_auxiliary
from .models.blocks import pad_to_multiple
from .models.unet import nearest_valid_sizes
from .outputs import logit_channels

__all__ = ["export_model", "SizeAgnostic", "ExportError", "FORMATS"]

FORMATS = ("onnx", "torchscript")
DEFAULT_OPSET = 17
DEFAULT_SIZE = 64  # traced input side (a valid size near it for valid-padding UNets)


class ExportError(UserError, RuntimeError):
    """The exported model could not be written, or disagrees with PyTorch."""


class SizeAgnostic(nn.Module):
    """``net`` with its input padded (edge replication, bottom/right) to a multiple of
    ``multiple`` by traceable shape arithmetic and its output cropped back to the input's
    H x W: the same result as ``net`` alone, but with no size-dependent Python branch left
    for a trace to freeze. (B, C, H, W) -> (B, out_channels, H, W)."""

    def __init__(self, net: nn.Module, multiple: int):
        super().__init__()
        self.net = net
        self.multiple = multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, (height, width) = pad_to_multiple(x, self.multiple, always=True)
        return self.net(x)[..., :height, :width]


def _require(module: str):
    try:
        return __import__(module)
    except ImportError as err:
        raise ImportError(
            f"ONNX export needs the '{module}' package, which is not installed: "
            "pip install 'unetkit[export]' (installs onnx and onnxruntime)"
        ) from err


def _sizes(net: nn.Module, example_size) -> tuple[tuple[int, int], tuple[int, int]]:
    """(traced (H, W), verification (H, W)): the verification size differs in both sides
    and, for same-size models, is not a multiple of the internal padding multiple."""
    if example_size is None:
        example_size = DEFAULT_SIZE
    if isinstance(example_size, int):
        example_size = (example_size, example_size)
    height, width = (int(s) for s in example_size)
    if isinstance(net, UNet) and net.padding == "valid":
        trace = tuple(_valid_at_least(net, s) for s in (height, width))

        def next_valid(size: int) -> int:
            return net.valid_input_size(net.output_size(size) + 1)

        verify = (next_valid(trace[0]), next_valid(next_valid(trace[1])))
        return trace, verify
    # 14 fewer rows, 6 more columns: 64x64 -> 50x70, neither a multiple of 4, 8, 16 or 32.
    return (height, width), (max(1, height - 14), width + 6)


def _valid_at_least(net: UNet, size: int) -> int:
    """The smallest valid input side >= ``size``."""
    return size if net.output_size(size) else nearest_valid_sizes(size, net.depth)[1]


def _wrap(net: nn.Module) -> nn.Module:
    if isinstance(net, UNet) and net.padding == "valid":
        return net  # no internal padding: valid sizes only
    multiple = getattr(net, "size_multiple", None)
    return SizeAgnostic(net, multiple) if multiple else net


def _add_onnx_metadata(path: Path, config) -> None:
    """What a user outside unetkit needs to feed the model: how to scale and normalise
    the image, and what the output channels mean (ONNX metadata_props)."""
    import onnx

    model = onnx.load(str(path))
    data = config.data
    binary = logit_channels(target_classes(config.data)) == 1
    meta = {
        "input": "image (N, C, H, W) float32 in [0, 1] by the file's bit depth, then "
                 "(x - mean) / std per channel",
        "mean": json.dumps(list(data.mean)), "std": json.dumps(list(data.std)),
        "output": "logits (N, K, H, W): sigmoid > 0.5 = foreground" if binary else
                  "logits (N, K, H, W): argmax over K = class index",
        "class_names": json.dumps(list(data.class_names)),
    }
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    with writing("ONNX model", path, cleanup=path):
        onnx.save(model, str(path))


def export_model(
    checkpoint_or_model: str | Path | nn.Module,
    fmt: str,
    out: str | Path,
    example_size: int | tuple[int, int] | None = None,
    opset: int | None = None,
    verify: bool = True,
    atol: float = 1e-4,
) -> dict:
    """Export a checkpoint folder or a model to ``out`` as "onnx" or "torchscript".

    Args:
        checkpoint_or_model: a checkpoint folder (see :mod:`unetkit.checkpoint`) or a
            module (a copy is exported, on the CPU, in eval mode, without auxiliary
            heads of deep supervision: only the main output is exported).
        fmt: "onnx" (dynamic batch, height, width) or "torchscript" (``torch.jit.trace``;
            load with ``torch.jit.load``).
        example_size: traced input side or (H, W), pixels; default 64 (for a
            valid-padding UNet the smallest valid size at least that).
        opset: ONNX opset version, default 17.
        verify: run the export at another size (and batch 2) and compare with PyTorch.
        atol: largest allowed absolute difference of the logits.

    Returns {"path", "format", "input_size" (traced H, W), "verify_size" (H, W) or None,
    "max_abs_diff" (float or None)}. Raises ExportError when the difference exceeds atol.
    """
    if fmt not in FORMATS:
        raise ValueError(f"export format must be one of {FORMATS}, got {fmt!r}")
    config = None
    if isinstance(checkpoint_or_model, nn.Module):
        # deep supervision's auxiliary heads are for training: never exported
        net = drop_auxiliary(copy.deepcopy(unwrap(checkpoint_or_model))).cpu().float().eval()
    else:
        net, config = load_checkpoint(checkpoint_or_model, device="cpu", fold_batchnorm=True)
    in_channels = getattr(net, "in_channels", None)
    if not isinstance(in_channels, int):
        raise ValueError(f"cannot tell the input channels of {type(net).__name__}; expected "
                         "a unetkit UNet or ResNetUNet (with an in_channels attribute)")
    trace_size, verify_size = _sizes(net, example_size)
    module = _wrap(net).eval()
    example = torch.randn(1, in_channels, *trace_size)
    out = Path(out)
    with writing("export folder", out.parent):
        out.parent.mkdir(parents=True, exist_ok=True)

    with warnings.catch_warnings():
        # The trace warns about the network's size checks turning into constants; the
        # SizeAgnostic wrapper makes those constants true at every size.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        if fmt == "onnx":
            _require("onnx")
            axes = {0: "batch", 2: "height", 3: "width"}
            # A disk-full error inside the exporter becomes a WriteError (its cause).
            with writing("ONNX model", out, cleanup=out):
                try:
                    torch.onnx.export(
                        module, (example,), str(out), input_names=["image"],
                        output_names=["logits"], dynamic_axes={"image": axes, "logits": axes},
                        opset_version=opset or DEFAULT_OPSET, dynamo=False,
                    )
                except Exception as err:
                    raise ExportError(f"{out}: ONNX export failed: {err}") from err
            if config is not None:
                _add_onnx_metadata(out, config)
        else:
            with torch.no_grad():
                # check_trace=False: the verification below runs another size anyway.
                traced = torch.jit.trace(module, example, check_trace=False)
            with writing("TorchScript model", out, cleanup=out):
                traced.save(str(out))

    result = {"path": out, "format": fmt, "input_size": trace_size,
              "verify_size": None, "max_abs_diff": None}
    if not verify:
        return result
    x = torch.randn(2, in_channels, *verify_size)
    with torch.no_grad():
        expected = net(x)
    if fmt == "onnx":
        ort = _require("onnxruntime")
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
    else:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)  # TorchScript's
            got = torch.jit.load(str(out), map_location="cpu")(x)
    if got.shape != expected.shape:
        raise ExportError(f"{out}: exported model gives shape {tuple(got.shape)} for input "
                          f"{tuple(x.shape)}, PyTorch gives {tuple(expected.shape)}")
    diff = (got - expected).abs().max().item()
    result.update(verify_size=verify_size, max_abs_diff=diff)
    print(f"{out}: {fmt} export verified at {verify_size[0]}x{verify_size[1]} (traced at "
          f"{trace_size[0]}x{trace_size[1]}): max abs difference {diff:.3g}")
    if not diff <= atol:  # also catches NaN
        raise ExportError(f"{out}: exported model differs from PyTorch by {diff:.3g} at "
                          f"input size {verify_size}, more than atol={atol}")
    return result
