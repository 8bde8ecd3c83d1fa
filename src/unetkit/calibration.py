"""What this machine can do, measured for the plan: the device, precision and free memory,
an estimate of a training step's memory, and a few timed training steps of a candidate
network at a candidate patch and batch size, in the precision training will use.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

import torch

from .config import AugmentConfig, ModelConfig, TrainConfig
from .data.transforms import Augmenter
from .models.registry import build_model
from .process import available_cores
from .runtime import Runtime, make_runtime, precision_name

# Backward keeps each layer's output and makes temporaries of about the same size again;
# measured on the demo U-Net (peak RSS of a bf16 training step over the sum of its layers'
# outputs at batch 8, patch 128) the factor is about 2.
BACKWARD_FACTOR = 2.0
PARAMETER_COPIES = 4  # weights, gradients and Adam's two moments


@dataclass(frozen=True)
class Machine:
    """Where training will run: device, autocast precision, free memory in bytes, cores."""

    device: str
    precision: str
    channels_last: bool
    memory_bytes: int
    cores: int

    def describe(self) -> str:
        kind = "GPU" if self.device.startswith("cuda") else "RAM"
        return (f"{self.device}, {self.precision}"
                f"{', channels_last' if self.channels_last else ''}, {self.cores} cores, "
                f"{self.memory_bytes / 2**30:.1f} GiB {kind} free")

    def to_dict(self) -> dict:
        return asdict(self)


class OutOfMemory(RuntimeError):
    """A calibration step did not fit in memory."""


def free_memory_bytes(device: torch.device) -> int:
    """Free GPU memory for a CUDA device, else the RAM the kernel says is available."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def measure_machine(train: TrainConfig) -> tuple[Machine, Runtime]:
    """The machine as training will use it (the same device/precision decisions)."""
    rt = make_runtime(train.device, train.precision, train.channels_last)
    machine = Machine(str(rt.device), precision_name(rt.dtype), rt.channels_last,
                      free_memory_bytes(rt.device), available_cores())
    return machine, rt


def estimate_step_bytes(model: ModelConfig, patch: int, batch: int, half: bool) -> int:
    """Memory of one training step in bytes: the layers' outputs (counted on the meta
    device, nothing allocated) times BACKWARD_FACTOR, plus the parameters' copies."""
    net = build_model(model, load_pretrained=False).to("meta")
    elements = [0]

    def count(_module, _inputs, output):
        if isinstance(output, torch.Tensor):
            elements[0] += output.numel()

    hooks = [m.register_forward_hook(count) for m in net.modules() if not list(m.children())]
    with torch.no_grad():
        net(torch.empty(batch, model.in_channels, patch, patch, device="meta"))
    for hook in hooks:
        hook.remove()
    parameters = sum(p.numel() for p in net.parameters())
    return int(elements[0] * (2 if half else 4) * BACKWARD_FACTOR
               + parameters * 4 * PARAMETER_COPIES)


def time_step(model: ModelConfig, patch: int, batch: int, rt: Runtime, steps: int = 2) -> float:
    """Seconds per training step (augmentation, forward, backward, Adam update) after one
    warm-up step, on random data. Raises OutOfMemory when the step does not fit."""
    net = build_model(model, load_pretrained=False).to(rt.device)
    if rt.channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    augmenter = Augmenter(AugmentConfig(), seed=0)
    shape = (batch, model.in_channels, patch, patch)
    batch_data = {"image": torch.randn(shape, device=rt.device),
                  "mask": torch.zeros((batch, patch, patch), dtype=torch.long, device=rt.device),
                  "weight": torch.ones((batch, patch, patch), device=rt.device)}
    try:
        for i in range(steps + 1):
            if i == 1:  # the first step allocates and picks kernels: not timed
                _synchronize(rt)
                start = time.perf_counter()
            image = augmenter(dict(batch_data))["image"]
            if rt.channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            with rt.autocast():
                loss = net(image).float().square().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        _synchronize(rt)
        return (time.perf_counter() - start) / steps
    except (torch.OutOfMemoryError, MemoryError) as err:
        raise OutOfMemory(str(err).splitlines()[0] if str(err) else "out of memory") from err
    except RuntimeError as err:  # CPU allocators report running out as a RuntimeError
        if "out of memory" in str(err).lower() or "not enough memory" in str(err).lower():
            raise OutOfMemory(str(err).splitlines()[0]) from err
        raise
    finally:
        del net, optimizer
        if rt.device.type == "cuda":
            torch.cuda.empty_cache()


def _synchronize(rt: Runtime) -> None:
    if rt.device.type == "cuda":
        torch.cuda.synchronize(rt.device)
