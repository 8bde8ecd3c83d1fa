"""Where and how fast to run: device, precision, memory layout, distributed setup (the
process itself, its allocator and threads, is set up by :mod:`unetkit.process`).

The defaults pick the fastest settings that are still correct for the device: bf16
autocast and channels_last on a CPU with native bf16 (AVX-512 BF16 / AMX), bf16 (or fp16
with loss scaling) on CUDA, plain fp32 otherwise. ``UNETKIT_PRECISION`` overrides "auto"
for a whole process (:func:`select_precision`).
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Runtime:
    """The resolved execution settings of one process."""

    device: torch.device
    dtype: torch.dtype  # autocast dtype; torch.float32 means no autocast
    channels_last: bool
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and draws progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self):
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)


def select_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"--device {name}: expected auto, cpu, cuda or cuda:N ({err})") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device


def cpu_has_fast_bf16() -> bool:
    """True when the CPU computes bf16 natively (oneDNN reports AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Sets "auto" for a whole process (a test suite, a batch job): auto | fp32 | bf16 | fp16.
PRECISION_ENV = "UNETKIT_PRECISION"
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def select_precision(device: torch.device, name: str = "auto") -> torch.dtype:
    """The autocast dtype: THE one place where precision is decided.

    ``name`` is the user's choice (auto | fp32 | bf16 | fp16). "auto" first defers to the
    ``UNETKIT_PRECISION`` environment variable, then to the hardware: bf16 on CUDA with
    bf16 (else fp16), bf16 on a CPU that computes it natively (AVX-512 BF16 / AMX), fp32
    on other CPUs, where bf16 is emulated and some 100x slower than fp32.
    """
    if name == "auto":
        name = os.environ.get(PRECISION_ENV, "auto").strip().lower() or "auto"
        source = f"{PRECISION_ENV}={name}"
    else:
        source = f"precision {name!r}"
    if name not in PRECISIONS:
        raise ValueError(f"{source}: precision must be one of {', '.join(PRECISIONS)}")
    if name == "fp16" and device.type == "cpu":
        raise ValueError(f"{source}: fp16 needs CUDA; on the CPU use bf16 or fp32")
    if name != "auto":
        return _DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if device.type == "cpu" and cpu_has_fast_bf16() else torch.float32


def precision_name(dtype: torch.dtype) -> str:
    """fp32 | bf16 | fp16 for an autocast dtype."""
    return {v: k for k, v in _DTYPES.items()}[dtype]


def select_channels_last(device: torch.device, dtype: torch.dtype, flag: bool | None) -> bool:
    """channels_last lets oneDNN / cuDNN use their fastest convolution kernels; it pays off
    with reduced precision, and costs layout conversions in plain fp32 on the CPU."""
    if flag is not None:
        return flag
    return device.type == "cuda" or dtype != torch.float32


def init_distributed(device: str = "auto") -> tuple[int, int, int]:
    """Join the process group when started by torchrun; returns (rank, world, local rank).

    gloo on the CPU, nccl on CUDA (following ``device``): PyTorch's own engine, nothing
    home-made.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        backend = "nccl" if cuda else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return rank, world, local_rank


def make_runtime(device: str = "auto", precision: str = "auto",
                 channels_last: bool | None = None) -> Runtime:
    rank, world, local_rank = init_distributed(device)
    dev = select_device(device, local_rank)
    dtype = select_precision(dev, precision)
    return Runtime(dev, dtype, select_channels_last(dev, dtype, channels_last),
                   rank, world, local_rank)
