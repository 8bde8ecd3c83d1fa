"""The CUDA checks in one go, prepared for a machine with a GPU; under 5 minutes on one.

    make gpu-check          (= .venv/bin/python benchmarks/gpu.py)

Runs the tests marked ``cuda``, a few training steps in fp32, bf16 and fp16 (loss
scaling), ``unetkit predict --tta`` on CUDA, an ONNX export checked on CUDA (onnxruntime's
CUDA provider when it has one; the row says when it has not) and, with 2 GPUs, a
2-process DDP run with nccl; then prints one markdown table, one row per check. Exit code
1 when a check failed. Without a CUDA device it prints one line and exits 0.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NO_CUDA = "no CUDA device: nothing to check"
SMP_TODO = ("TODO: segmentation_models.pytorch needs torchvision; install both in a "
            "separate venv and compare with benchmarks/run.py there")
TINY = ["--epochs", "1", "--steps-per-epoch", "4", "--demo-count", "8", "--demo-size",
        "64", "--patch-size", "64", "--features", "8", "--depth", "3", "--batch-size", "2"]


class Skip(Exception):
    """A check that does not apply on this machine (the reason is the row's detail)."""


def check(name: str, run: Callable[[], str]) -> tuple[str, str, str, str]:
    """One table row: (check, result, detail, seconds); a failure is one line, not a
    traceback, and never stops the other checks."""
    started = time.monotonic()
    try:
        result, detail = "ok", run()
    except Skip as why:
        result, detail = "skipped", str(why)
    except Exception as err:  # the row says what failed; the other checks still run
        lines = traceback.format_exception_only(type(err), err)
        result, detail = "FAIL", lines[-1].strip().replace("\n", " ")[:300]
    return name, result, detail, f"{time.monotonic() - started:.0f}"


def command(args: list[str], timeout: float) -> str:
    """Run a command from the repository root; its last output line, or the failure."""
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    lines = (done.stdout + done.stderr).strip().splitlines() or [""]
    if done.returncode != 0:
        raise RuntimeError(f"exit code {done.returncode}: {lines[-1]}")
    return lines[-1]


def cuda_tests() -> str:
    return command([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p",
                    "no:cacheprovider", "tests"], timeout=150)


def train_steps(folder: Path, precision: str) -> str:
    import math

    import torch

    from unetkit.config import Config, DataConfig, ModelConfig, TrainConfig
    from unetkit.training import train

    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise Skip("this GPU has no bf16")
    config = Config(model=ModelConfig(features=8, depth=3),
                    data=DataConfig(demo_count=8, demo_size=64, patch_size=64),
                    train=TrainConfig(epochs=2, steps_per_epoch=4, batch_size=4,
                                      device="cuda", precision=precision, num_preview=1,
                                      out=str(folder / f"train-{precision}")))
    result = train(config, progress=False)
    losses = [row["train_loss"] for row in result.history]
    if not all(math.isfinite(loss) for loss in losses):
        raise RuntimeError(f"non-finite training loss: {losses}")
    skipped = sum(row["skipped_steps"] for row in result.history)
    return (f"loss {losses[0]:.3f} -> {losses[-1]:.3f}, val Dice {result.best_dice:.3f}, "
            f"{skipped} step(s) skipped" + (", loss scaling" if precision == "fp16" else ""))


def predict_tta(folder: Path) -> str:
    from unetkit.data.synthetic import write_demo_data

    checkpoint = folder / "train-fp32" / "checkpoints" / "best"
    if not checkpoint.is_dir():
        raise Skip("no checkpoint: the fp32 training failed")
    data = write_demo_data(folder / "images", count=2, size=96, seed=1)
    out = folder / "masks"
    command([sys.executable, "-m", "unetkit", "predict", str(data / "images"), "--checkpoint",
             str(checkpoint), "--out", str(out), "--tta", "--device", "cuda", "--quiet"],
            timeout=120)
    written = sorted(out.glob("*.png"))
    if len(written) != 2:
        raise RuntimeError(f"expected 2 masks in {out}, found {len(written)}")
    return f"{len(written)} masks written with 8-fold TTA"


def onnx_on_cuda(folder: Path) -> str:
    import numpy as np
    import torch

    try:
        import onnxruntime as ort
    except ImportError:
        raise Skip("onnxruntime is not installed: pip install -e '.[export]'") from None
    from unetkit.checkpoint import load_checkpoint
    from unetkit.export import export_model

    checkpoint = folder / "train-fp32" / "checkpoints" / "best"
    if not checkpoint.is_dir():
        raise Skip("no checkpoint: the fp32 training failed")
    path = folder / "model.onnx"
    result = export_model(checkpoint, "onnx", path)  # verified against PyTorch on the CPU
    cpu = f"{result['exporter']} exporter, CPU difference {result['max_abs_diff']:.2g}"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return cpu + "; NOT run on CUDA: this onnxruntime has no CUDA provider"
    session = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"])
    if session.get_providers()[0] != "CUDAExecutionProvider":
        return cpu + "; NOT run on CUDA: onnxruntime fell back to the CPU (CUDA libraries?)"
    model, config = load_checkpoint(checkpoint, device="cuda", fold_batchnorm=True)
    x = torch.randn(2, config.model.in_channels, 96, 80)
    with torch.no_grad():
        expected = model(x.cuda()).float().cpu().numpy()
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    diff = float(np.abs(got - expected).max())
    if not diff <= 1e-2:  # TF32 convolutions on both sides: not bit-exact
        raise RuntimeError(f"ONNX on CUDA differs from PyTorch on CUDA by {diff:.3g}")
    return cpu + f"; on CUDAExecutionProvider: difference {diff:.2g} from PyTorch on CUDA"


def ddp(folder: Path) -> str:
    import torch

    if torch.cuda.device_count() < 2:
        raise Skip(f"{torch.cuda.device_count()} GPU: DDP needs 2")
    out = folder / "ddp"
    command([sys.executable, "-m", "torch.distributed.run", "--standalone",
             "--nproc_per_node=2", "-m", "unetkit", "train", *TINY, "--device", "cuda",
             "--out", str(out), "--quiet"], timeout=240)
    if not (out / "checkpoints" / "last" / "model.safetensors").is_file():
        raise RuntimeError(f"no checkpoint in {out}")
    return "2 ranks, nccl: trained and saved"


def table(rows: list[tuple[str, str, str, str]]) -> str:
    lines = ["| check | result | detail | s |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    with tempfile.TemporaryDirectory(prefix="unetkit-gpu-") as tmp:
        folder = Path(tmp)
        rows = [check("tests marked cuda", cuda_tests)]
        rows += [check(f"train, {p}", lambda p=p: train_steps(folder, p))
                 for p in ("fp32", "bf16", "fp16")]
        rows.append(check("predict --tta", lambda: predict_tta(folder)))
        rows.append(check("ONNX export on CUDA", lambda: onnx_on_cuda(folder)))
        rows.append(check("DDP, 2 processes, nccl", lambda: ddp(folder)))
    rows.append(("speed against smp", "not run", SMP_TODO, "0"))
    name = torch.cuda.get_device_name(0)
    print(f"unetkit GPU check: {torch.cuda.device_count()} x {name}, torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}\n")
    print(table(rows))
    return 1 if any(row[1] == "FAIL" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
