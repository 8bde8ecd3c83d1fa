"""Export a trained network to ONNX or TorchScript, and check the export.

Both formats take inputs (batch, in_channels, height, width) float32 ((batch, in_channels,
depth, height, width) for a 3D network) of any batch size and any spatial size the network
accepts (any size for same-size models, a valid size for a valid-padding UNet) and return
the raw LOGITS (batch, out_channels, ...): apply sigmoid (one channel) or softmax over the
channels yourself.

How sizes stay dynamic: both exporters record the network on one example input.
Same-size models pad their input internally to a multiple of ``2**depth`` per axis (UNet;
the product of an axis's pooling sizes when anisotropic) or 32 (ResNetUNet) behind a Python
``if``, which a recording freezes: recorded at 64x64 the padding would vanish from the
graph. So the exported module is the network wrapped in :class:`SizeAgnostic`, which always
pads (by edge replication, as the network does, with a pad width computed by shape
arithmetic that the recording keeps, possibly 0) and crops the output back; the network's
own check then never pads, at any size, and the result equals the network's own output.

ONNX uses PyTorch's current, ``torch.export``-based exporter (``dynamo=True``, which needs
``onnx``, ``onnxscript`` and, to verify, ``onnxruntime``: ``pip install -e '.[export]'``)
with dynamic batch, (depth,) height and width. It records the shapes symbolically and
refuses to export when the network fixes a size; then, and only then (also when
``onnxscript`` is missing), the export falls back to the TorchScript-based exporter
(``dynamo=False``, deprecated by PyTorch since 2.9) with one warning line on stderr naming
the reason. Measured with PyTorch 2.13: same-padding UNets (batch, group, instance or no
norm; 2D and 3D, isotropic or anisotropic), valid-padding UNets without normalisation
(2D and 3D; bilinear upsampling tried in 2D) and ResNetUNets export with the new exporter;
a valid-padding UNet with group normalisation falls back (torch.export fixes its input
size; the TorchScript trace keeps the shapes dynamic and the valid sizes then work).
Instance-norm UNets pad tiny inputs further, to twice the multiple per axis: the wrapper
does that too, so the torch.export-based ONNX and TorchScript take any size, but the
TorchScript-based ONNX translates that arithmetic wrongly and leaves it to the network
(frozen by the trace): there, inputs need at least twice the multiple per side.

torch.export's guards (the conditions its recording holds under) do not reach the ONNX
file, so a branch that a size decides can still be frozen silently; hence every export is
verified (``verify=True``) at TWO sizes other than the traced one, each
with batch 2, against PyTorch; the largest absolute difference is returned and an
:class:`ExportError` is raised above ``atol``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import re
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import load_checkpoint, unwrap
from .config import target_classes
from .errors import UserError, writing
from .log import get_logger
from .models import UNet
from .models.auxiliary import drop_auxiliary
from .models.blocks import per_axis
from .models.unet import nearest_valid_sizes, valid_output_size
from .outputs import logit_channels

log = get_logger(__name__)

__all__ = ["export_model", "SizeAgnostic", "ExportError", "FORMATS"]

FORMATS = ("onnx", "torchscript")
DEFAULT_OPSET = 18  # the torch.export-based exporter's own opset (lower ones are converted)
DEFAULT_SIZE = {2: 64, 3: 32}  # traced side (a valid side near it for valid padding)
AXES = {2: ("height", "width"), 3: ("depth", "height", "width")}
# Verification sizes of same-size models: the traced side plus these, per axis (2D: 64x64
# -> 50x70 and 73x41; 3D: 32^3 -> 21x38x18 and 37x13x41), none a multiple of 4, 8, 16, 32.
VERIFY_OFFSETS = {2: ((-14, 6), (9, -23)), 3: ((-11, 6, -14), (5, -19, 9))}


class ExportError(UserError, RuntimeError):
    """The exported model could not be written, or disagrees with PyTorch."""


class SizeAgnostic(nn.Module):
    """``net`` with its input padded (edge replication, on the far side of each axis) to a
    multiple of ``multiple`` (one value, or one per axis) by traceable shape arithmetic
    and its output cropped back to the input's size: the same result as ``net`` alone, but
    with no size-dependent Python branch left for a recording to freeze.
    (B, C, *S) -> (B, out_channels, *S) with ``dims`` spatial axes S.

    ``double_minimum``: pad each side to at least twice its multiple ``m`` too, as an
    instance-norm UNet does itself (its bottleneck needs 2 voxels per axis), with no
    comparison that a recording would freeze: ``torch.sym_max`` for ``torch.export`` (a
    symbolic Max), and for ``torch.jit.trace`` ``m * (1 // k)`` more for a padded side of
    ``k`` multiples, ``m`` only for k = 1. Both ONNX exporters of PyTorch 2.13 translate
    that integer division by a size wrongly, so the TorchScript-based ONNX export leaves
    the minimum to the network (frozen by the trace: it then needs sides >= 2 m).
    """

    def __init__(self, net: nn.Module, multiple: int | tuple[int, ...], dims: int = 2,
                 double_minimum: bool = False):
        super().__init__()
        self.net = net
        self.multiple = multiple
        self.dims = dims
        self.double_minimum = double_minimum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = x.shape[-self.dims:]
        pads = []
        for side, m in zip(sizes, per_axis(self.multiple, self.dims, "multiple")):
            pad = (m - side % m) % m
            if self.double_minimum and not torch.jit.is_tracing():  # eager, torch.export
                pad = torch.sym_max(side + pad, 2 * m) - side
            elif self.double_minimum and not torch.onnx.is_in_onnx_export():  # TorchScript
                pad = pad + m * (1 // ((side + pad) // m))
            pads.append(pad)
        # F.pad lists the last axis first: (0, pad_w, 0, pad_h[, 0, pad_d])
        x = F.pad(x, [p for pad in reversed(pads) for p in (0, pad)], mode="replicate")
        y = self.net(x)
        for dim, size in zip(range(-self.dims, 0), sizes):
            y = y.narrow(dim, 0, size)  # narrow: torch.export keeps the side symbolic
        return y


def _require(module: str):
    try:
        return __import__(module)
    except ImportError as err:
        raise ImportError(
            f"ONNX export needs the '{module}' package, which is not installed: "
            "pip install -e '.[export]' (installs onnx, onnxscript and onnxruntime)"
        ) from err


def _dims(net: nn.Module) -> int:
    return int(getattr(net, "spatial_dims", 2))


def _is_valid_unet(net: nn.Module) -> bool:
    return isinstance(net, UNet) and net.padding == "valid"


def _sizes(net: nn.Module, example_size) -> tuple[tuple[int, ...], list[tuple[int, ...]]]:
    """(traced size, [two verification sizes]), one side per spatial axis. Each
    verification size differs from the traced one along every axis and, for same-size
    models, is not a multiple of the internal padding multiple."""
    dims = _dims(net)
    traced = per_axis(DEFAULT_SIZE[dims] if example_size is None else example_size, dims,
                      "example_size")
    if _is_valid_unet(net):
        def above(axis: int, side: int, steps: int = 1) -> int:
            for _ in range(steps):  # the next valid side along this axis
                side = nearest_valid_sizes(side, net.depth, *net.axis_stages(axis))[1]
            return side

        trace = tuple(s if valid_output_size(s, net.depth, *net.axis_stages(a)) else above(a, s)
                      for a, s in enumerate(traced))
        first = tuple(above(a, s, 1 + a % 2) for a, s in enumerate(trace))
        second = tuple(above(a, s, 2 - a % 2) for a, s in enumerate(trace))
        return trace, [first, second]
    return traced, [tuple(max(1, s + o) for s, o in zip(traced, offsets))
                     for offsets in VERIFY_OFFSETS[dims]]


def _wrap(net: nn.Module) -> nn.Module:
    if _is_valid_unet(net):
        return net  # no internal padding: valid sizes only
    multiple = getattr(net, "size_multiples", None) or getattr(net, "size_multiple", None)
    if not multiple:
        return net
    instance_norm = isinstance(net, UNet) and net.norm == "instance"
    return SizeAgnostic(net, multiple, _dims(net), double_minimum=instance_norm)


def _add_onnx_metadata(path: Path, config, dims: int) -> None:
    """What a user outside unetkit needs to feed the model: how to scale and normalise
    the image, and what the output channels mean (ONNX metadata_props)."""
    import onnx

    model = onnx.load(str(path))
    data = config.data
    binary = logit_channels(target_classes(config.data)) == 1
    sides = "D, H, W" if dims == 3 else "H, W"
    meta = {
        "input": f"image (N, C, {sides}) float32 in [0, 1] by the file's bit depth, then "
                 "(x - mean) / std per channel",
        "mean": json.dumps(list(data.mean)), "std": json.dumps(list(data.std)),
        "output": f"logits (N, K, {sides}): sigmoid > 0.5 = foreground" if binary else
                  f"logits (N, K, {sides}): argmax over K = class index",
        "class_names": json.dumps(list(data.class_names)),
    }
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    with writing("ONNX model", path, cleanup=path):
        onnx.save(model, str(path))


@contextlib.contextmanager
def _quiet():
    """The exporters' expected chatter off: TracerWarnings about the size checks (the
    SizeAgnostic wrapper makes them true at every size), deprecation notices, and the
    torch.export-based exporter's log lines (e.g. "torchvision is not installed")."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo",
                                              "torch.fx.experimental.symbolic_shapes")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def _export_dynamo(module: nn.Module, example: torch.Tensor, axes: dict, opset: int):
    """The torch.export-based ONNX program (``torch.onnx.ONNXProgram``), not yet saved."""
    return torch.onnx.export(
        module, (example,), input_names=["image"], output_names=["logits"],
        dynamic_shapes=(axes,), opset_version=opset, dynamo=True, verbose=False,
        optimize=True,
    )


def _export_legacy(module: nn.Module, example: torch.Tensor, out: Path, axes: dict,
                   opset: int) -> None:
    torch.onnx.export(
        module, (example,), str(out), input_names=["image"], output_names=["logits"],
        dynamic_axes={"image": axes, "logits": axes}, opset_version=opset, dynamo=False,
    )


def _reason(err: BaseException) -> str:
    """One line on why ``err`` happened: the first line of its innermost cause (with the
    line after it when the first ends in a colon), without colour codes."""
    while err.__cause__ is not None:
        err = err.__cause__
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(err).splitlines()]
    lines = [line for line in lines if line]
    text = lines[0] if lines else ""
    if text.endswith(":") and len(lines) > 1:
        text = f"{text} {lines[1]}"
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _export_onnx(module: nn.Module, example: torch.Tensor, out: Path, dims: int,
                 opset: int) -> tuple[str, str | None]:
    """Write ``out`` with the torch.export-based exporter, else (one warning line) the
    TorchScript-based one. Returns (exporter used: "dynamo" | "legacy", fallback reason)."""
    axes = {0: "batch", **{2 + i: name for i, name in enumerate(AXES[dims])}}
    reason = None
    try:
        program = _export_dynamo(module, example, axes, opset)
    except Exception as err:  # any failure of the new exporter: the old one may work
        reason = _reason(err)
        if isinstance(err, ImportError):
            reason += " (pip install -e '.[export]' installs onnxscript)"
        log.warning(f"warning: {out}: the torch.export-based ONNX exporter failed "
                    f"({reason}); exporting with the TorchScript-based one (dynamo=False) "
                    "instead")
    # A disk-full error inside the exporter becomes a WriteError (its cause).
    with writing("ONNX model", out, cleanup=out):
        try:
            if reason is None:
                program.save(str(out), external_data=False)  # one file (weights < 2 GB)
            else:
                _export_legacy(module, example, out, axes, opset)
        except Exception as err:
            raise ExportError(f"{out}: ONNX export failed: {err}") from err
    return ("dynamo", None) if reason is None else ("legacy", reason)


def _run_export(fmt: str, out: Path, x: torch.Tensor) -> torch.Tensor:
    """The exported file's output for ``x``, computed by its own runtime."""
    if fmt == "onnx":
        ort = _require("onnxruntime")
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # TorchScript's
        return torch.jit.load(str(out), map_location="cpu")(x)


def _size_text(size: tuple[int, ...]) -> str:
    return "x".join(map(str, size))


def export_model(
    checkpoint_or_model: str | Path | nn.Module,
    fmt: str,
    out: str | Path,
    example_size: int | tuple[int, ...] | None = None,
    opset: int | None = None,
    verify: bool = True,
    atol: float = 1e-4,
) -> dict:
    """Export a checkpoint folder or a model to ``out`` as "onnx" or "torchscript".

    Args:
        checkpoint_or_model: a checkpoint folder (see :mod:`unetkit.checkpoint`) or a
            module (a copy is exported, on the CPU, in eval mode, without auxiliary
            heads of deep supervision: only the main output is exported); 2D or 3D.
        fmt: "onnx" (dynamic batch, (depth,) height, width; torch.export-based, falling
            back to the TorchScript-based exporter where that fails, see the module
            docstring) or "torchscript" (``torch.jit.trace``; load with ``torch.jit.load``).
        example_size: traced side, or one side per spatial axis ((H, W); (D, H, W) in
            3D); default 64 (2D) or 32 (3D), for a valid-padding UNet the smallest valid
            size at least that.
        opset: ONNX opset version, default 18.
        verify: run the export at two other sizes (batch 2) and compare with PyTorch.
        atol: largest allowed absolute difference of the logits.

    Returns {"path", "format", "exporter" ("dynamo" or "legacy" for ONNX, "torchscript"),
    "fallback_reason" (why ONNX fell back, else None), "input_size" (traced size),
    "verify_sizes" (the two sizes, or None), "verify_size" (the first), "max_abs_diff"
    (float or None)}. Raises ExportError when the difference exceeds atol.
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
    dims = _dims(net)
    trace_size, verify_sizes = _sizes(net, example_size)
    module = _wrap(net).eval()
    example = torch.randn(1, in_channels, *trace_size)
    out = Path(out)
    with writing("export folder", out.parent):
        out.parent.mkdir(parents=True, exist_ok=True)

    result = {"path": out, "format": fmt, "exporter": "torchscript", "fallback_reason": None,
              "input_size": trace_size, "verify_sizes": None, "verify_size": None,
              "max_abs_diff": None}
    with _quiet():
        if fmt == "onnx":
            _require("onnx")
            exporter, reason = _export_onnx(module, example, out, dims, opset or DEFAULT_OPSET)
            result.update(exporter=exporter, fallback_reason=reason)
            if config is not None:
                _add_onnx_metadata(out, config, dims)
        else:
            with torch.no_grad():
                # check_trace=False: the verification below runs other sizes anyway.
                traced = torch.jit.trace(module, example, check_trace=False)
            with writing("TorchScript model", out, cleanup=out):
                traced.save(str(out))
    if not verify:
        return result

    diff = 0.0
    for size in verify_sizes:
        x = torch.randn(2, in_channels, *size)
        with torch.no_grad():
            expected = net(x)
        got = _run_export(fmt, out, x)
        if got.shape != expected.shape:
            raise ExportError(f"{out}: exported model gives shape {tuple(got.shape)} for "
                              f"input {tuple(x.shape)}, PyTorch gives {tuple(expected.shape)}")
        size_diff = (got - expected).abs().max().item()
        if not size_diff <= atol:  # also catches NaN
            raise ExportError(f"{out}: exported model differs from PyTorch by {size_diff:.3g} "
                              f"at input size {size}, more than atol={atol}")
        diff = max(diff, size_diff)
    result.update(verify_sizes=verify_sizes, verify_size=verify_sizes[0], max_abs_diff=diff)
    log.info(f"{out}: {fmt} export ({result['exporter']}) verified at "
             f"{' and '.join(map(_size_text, verify_sizes))}, batch 2 (traced at "
             f"{_size_text(trace_size)}): max abs difference {diff:.3g}")
    return result
