"""Speed and memory of unetkit on THIS machine, in one command.

    .venv/bin/python benchmarks/run.py             # full run (~14 min, estimated, on 2 AVX2 cores)
    .venv/bin/python benchmarks/run.py --quick     # smoke run: tiny sizes, ~2 min, numbers
                                                   #   NOT representative
    .venv/bin/python benchmarks/run.py --only resnet34,data   # a subset (name substrings)
    .venv/bin/python benchmarks/run.py --case train:resnet34-unet:fp32:tcmalloc  # one case

Writes OUT/results.md (tables) and OUT/results.json (every number), OUT defaulting to
benchmarks/results, and each case's console output to OUT/logs/.

Every case runs in a FRESH child process (``run.py --case NAME``): the resident-memory
high-water mark (``ru_maxrss``) is per process, so only a fresh process reports the peak of
one case, and the allocator (glibc malloc or tcmalloc via LD_PRELOAD) must be chosen before
the process starts. Children get OMP_WAIT_POLICY=PASSIVE unless it is already set, as the
``unetkit`` launcher does.

Cases (batch 4, 3 x 256 x 256 in the full run):

* ``train`` = forward + loss (unetkit's Dice+BCE with a weight map) + backward + gradient
  clipping + Adam step, as in unetkit's training loop; ``infer`` = forward under
  ``torch.inference_mode``. Models: UNet(64, same, BatchNorm); UNet(64, valid) with input
  side ``valid_input_size(256)`` = 444, output 260 (images/s counts images, "out Mpx/s"
  the output pixels); ResNetUNet-18/34/50. Each in fp32, fp32 + channels_last, bf16
  autocast, bf16 autocast + channels_last; inference also with BatchNorm folded
  (``unetkit.models.fuse.fold_batchnorm``) for two models.
* bf16 without native hardware support (AVX2 CPUs) is emulated and ~50-100x slower than
  fp32: such a case is skipped unrun when the bf16 rate measured in this run (best of the
  matmul and the convolution in the case's memory layout) predicts more than 20 s for one
  iteration, and stopped (child killed) when its first iteration does take more than
  20 s; bf16 + channels_last is skipped when plain bf16 was.
* ``ceiling``: a large matmul and a 3x3 convolution forward + backward (64 -> 64 channels)
  in fp32 and bf16, the machine's attainable rate; each case's GFLOP/s is also given as a
  fraction of the best ceiling of its precision.
* ``reference``: a textbook U-Net (benchmarks/reference_unet.py, no unetkit code) in fp32;
  every case's images/s is divided by the reference's for the same task.
* allocator: the fp32 training of UNet(64, same) and ResNetUNet-34 also with glibc malloc.
* ``tiled``: ``unetkit.inference.predict`` on a 4096 x 4096 RGB image with UNet(32, same,
  BatchNorm folded, as ``unetkit predict`` loads checkpoints): tile 512, overlap 0.125,
  batch 4, fp32, about 2-3 minutes here (predict's default overlap 0.25 would need 121
  tiles instead of 81, 1.5x the time).
* ``data``: the demo data pipeline (build_datasets + make_loader + Augmenter, patch 256,
  batch 4) against the training step of the default model (ModelConfig defaults: UNet(32,
  same, BatchNorm), 1 channel, precision and layout as ``unetkit train`` picks them).

Timing: one warm-up iteration (more until 1 s of warm-up), then N iterations timed with
``time.perf_counter``, N chosen so they take about 5 s (at least 1). FLOPs are counted
once per case with ``torch.utils.flop_counter.FlopCounterMode`` on the meta device
(convolutions and matmuls only, 2 FLOPs per multiply-add; BatchNorm, activations, the
loss and the optimizer are not counted).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import functools
import json
import math
import os
import platform
import queue
import resource
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# Benchmark the checkout's code (and find reference_unet.py beside this file).
sys.path[:0] = [str(REPO / "src"), str(HERE)]

BF16_CAP_S = 20.0  # seconds a first bf16 iteration may take before the case is stopped
START_MARK = "@@first-iteration-start"
DONE_MARK = "@@first-iteration-done"
TCMALLOC, GLIBC = "tcmalloc", "glibc"
MODEL_KEYS = ("unet64-same", "unet64-valid", "resnet18-unet", "resnet34-unet", "resnet50-unet")
FOLD_MODELS = ("unet64-same", "resnet34-unet")  # inference also with BatchNorm folded
ALLOCATOR_MODELS = ("unet64-same", "resnet34-unet")  # training also with glibc malloc
VARIANTS = ("fp32", "fp32+cl", "bf16", "bf16+cl")


@dataclass(frozen=True)
class Sizes:
    """Problem sizes and time targets of a run (full or quick)."""

    batch: int
    side: int  # input side of the same-size models, pixels
    unet_features: int  # width of the "unet64" models (64 in the full run)
    default_features: int  # width of the default training model (ModelConfig: 32)
    target_s: float  # seconds of timed iterations per case
    warmup_s: float  # minimum seconds of warm-up iterations
    max_iters: int
    ceiling_s: float  # seconds per ceiling measurement
    matmul_max: int  # largest matmul side
    conv_side_max: int  # largest side of the ceiling convolution
    tiled_side: int
    tiled_features: int
    tiled_tile: int
    tiled_overlap: float
    data_count: int  # demo images generated
    data_size: int  # demo image side
    timeout_s: float  # per child process


FULL = Sizes(batch=4, side=256, unet_features=64, default_features=32, target_s=5.0,
             warmup_s=1.0, max_iters=100, ceiling_s=1.5, matmul_max=2048, conv_side_max=256,
             tiled_side=4096, tiled_features=32, tiled_tile=512, tiled_overlap=0.125,
             data_count=64, data_size=256, timeout_s=1800.0)
QUICK = Sizes(batch=2, side=64, unet_features=8, default_features=8, target_s=0.2,
              warmup_s=0.0, max_iters=3, ceiling_s=0.1, matmul_max=512, conv_side_max=64,
              tiled_side=512, tiled_features=8, tiled_tile=256, tiled_overlap=0.125,
              data_count=8, data_size=64, timeout_s=300.0)


# ----------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    """One measurement. ``variant``: fp32 | fp32+cl | bf16 | bf16+cl | fp32+fold (train and
    infer); a label for the other tasks."""

    task: str  # train | infer | ceiling | tiled | data
    model: str
    variant: str = "fp32"
    allocator: str = TCMALLOC

    @property
    def name(self) -> str:
        return f"{self.task}:{self.model}:{self.variant}:{self.allocator}"

    @classmethod
    def parse(cls, name: str) -> Case:
        parts = name.split(":")
        if len(parts) != 4 or parts[3] not in (TCMALLOC, GLIBC):
            raise SystemExit(f"--case {name!r}: expected TASK:MODEL:VARIANT:ALLOCATOR, e.g. "
                             f"train:resnet34-unet:fp32:tcmalloc (allocator tcmalloc|glibc)")
        return cls(*parts)

    @property
    def precision(self) -> str:
        return self.variant.split("+")[0] if self.task in ("train", "infer") else "fp32"

    @property
    def channels_last(self) -> bool:
        return "+cl" in self.variant

    @property
    def fold(self) -> bool:
        return "+fold" in self.variant


def default_variant(device) -> str:
    """Precision and layout ``unetkit train`` picks on this device."""
    import torch

    from unetkit.runtime import select_channels_last, select_precision

    dtype = select_precision(device, "auto")
    name = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    return name + ("+cl" if select_channels_last(device, dtype, None) else "")


def plan(device, quick: bool) -> list[Case]:
    """Every case of a run, in running order (the ceiling first: bf16 skips use it)."""
    cases = [Case("ceiling", "matmul+conv3x3", "fp32+bf16"),
             Case("train", "reference"), Case("infer", "reference")]
    for model in MODEL_KEYS:
        # The quick run keeps every kind of case but not every model x variant: each child
        # costs 3-5 s of start-up (importing torch; Adam's first step) whatever its size.
        if quick and model not in ("unet64-same", "unet64-valid", "resnet34-unet"):
            continue
        for task in ("train", "infer"):
            wide = not quick or model == "unet64-same"
            variants = VARIANTS if wide else ("fp32",)
            if task == "infer" and model in FOLD_MODELS and (wide or not quick):
                variants = (*variants, "fp32+fold")
            cases += [Case(task, model, v) for v in variants]
    cases += [Case("train", m, "fp32", GLIBC) for m in ALLOCATOR_MODELS]
    cases += [Case("train", "default", default_variant(device)),
              Case("data", "demo", "augment"),
              Case("tiled", "unet-same", "fp32")]
    return cases


def model_label(key: str, sizes: Sizes) -> str:
    f = sizes.unet_features
    return {
        "unet64-same": f"UNet({f}, same, BN)",
        "unet64-valid": f"UNet({f}, valid, BN)",
        "resnet18-unet": "ResNetUNet-18",
        "resnet34-unet": "ResNetUNet-34",
        "resnet50-unet": "ResNetUNet-50",
        "reference": f"reference U-Net({f}) (textbook)",
        "default": f"default: UNet({sizes.default_features}, same, BN), 1 ch",
    }.get(key, key)


def variant_label(variant: str) -> str:
    names = {"fp32": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}
    parts = variant.split("+")
    text = names.get(parts[0], parts[0])
    if "cl" in parts:
        text += " + channels_last"
    if "fold" in parts:
        text += ", BN folded"
    return text


def build_model(key: str, sizes: Sizes):
    from unetkit.models import ResNetUNet, UNet

    f = sizes.unet_features
    if key == "unet64-same":
        return UNet(3, 1, f, padding="same", norm="batch")
    if key == "unet64-valid":
        return UNet(3, 1, f, padding="valid", norm="batch")
    if key.startswith("resnet") and key.endswith("-unet"):
        return ResNetUNet(1, depth=int(key[len("resnet"):-len("-unet")]))
    if key == "reference":
        from reference_unet import ReferenceUNet

        return ReferenceUNet(3, 1, f)
    if key == "default":
        from unetkit.checkpoint import build_model as build
        from unetkit.config import ModelConfig

        cfg = ModelConfig()
        if sizes.default_features != cfg.features:  # the quick run only
            cfg = ModelConfig(features=sizes.default_features)
        return build(cfg, load_pretrained=False)
    raise SystemExit(f"unknown model {key!r}; known: {', '.join(MODEL_KEYS)}, reference, "
                     "default")


def input_side(model, sizes: Sizes) -> int:
    """Same-size models take ``sizes.side``; a valid-padding UNet the smallest input whose
    output is at least that."""
    if getattr(model, "padding", "same") == "valid":
        return model.valid_input_size(sizes.side)
    return sizes.side


def count_flops(case: Case, sizes: Sizes) -> int:
    """FLOPs of one iteration (forward, or forward + backward), counted on the meta device:
    no memory, no arithmetic."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build_model(case.model, sizes)
        side = input_side(model, sizes)
        x = torch.empty(sizes.batch, model.in_channels, side, side)
    with FlopCounterMode(display=False) as counter:
        if case.task == "infer":
            with torch.no_grad():
                model.eval()(x)
        else:
            model.train()(x).float().sum().backward()
    return int(counter.get_total_flops())


# ----------------------------------------------------------------------------- child side
def current_rss_mib() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return max_rss_mib()


def max_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes vs KiB


def loaded_allocator() -> str:
    """The allocator really mapped into this process (not just what LD_PRELOAD asked)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        from unetkit.process import allocator_name

        return allocator_name()
    return "tcmalloc" if "tcmalloc" in maps else ("jemalloc" if "jemalloc" in maps
                                                  else "glibc malloc")


class Memory:
    """Peak memory of the measured work: the RSS high-water mark on the CPU, the CUDA
    allocator's peak on a GPU. ``start()`` records the baseline (model and inputs built)."""

    def __init__(self, device):
        self.device = device
        self.baseline = 0.0

    def start(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            self.baseline = current_rss_mib()

    def report(self) -> dict:
        import torch

        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
            kind = "CUDA max allocated"
        else:
            peak, kind = max_rss_mib(), "RSS high-water"
        return {"memory_kind": kind, "peak_mib": peak, "baseline_mib": self.baseline,
                "increase_mib": peak - self.baseline}


def make_sync(device):
    import torch

    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_iterations(step, sync, sizes: Sizes) -> dict:
    """Warm up, then time N iterations (see the module docstring). The first iteration is
    framed by marker lines so the parent can stop a case that is far too slow."""
    print(START_MARK, flush=True)
    begin = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - begin
    print(DONE_MARK, flush=True)
    warm_iters, warm_time, last = 1, first, first
    while warm_time < sizes.warmup_s and first < sizes.target_s:
        begin = time.perf_counter()
        step()
        sync()
        last = time.perf_counter() - begin
        warm_iters += 1
        warm_time += last
    n = max(1, min(sizes.max_iters, math.ceil(sizes.target_s / max(last, 1e-6))))
    begin = time.perf_counter()
    for _ in range(n):
        step()
    sync()
    elapsed = time.perf_counter() - begin
    return {"first_iteration_s": first, "warmup_iterations": warm_iters, "iterations": n,
            "seconds": elapsed, "seconds_per_iteration": elapsed / n}


def measure_model(case: Case, sizes: Sizes, device, flops: int | None = None) -> dict:
    import torch
    from torch import nn

    from unetkit.config import LossConfig
    from unetkit.losses import build_loss
    from unetkit.models.blocks import center_crop
    from unetkit.models.fuse import fold_batchnorm

    if flops is None:
        flops = count_flops(case, sizes)
    torch.manual_seed(0)
    model = build_model(case.model, sizes).to(device)
    side = input_side(model, sizes)
    out_side = model.output_size(side) if hasattr(model, "output_size") else side
    batch = sizes.batch
    x = torch.randn(batch, model.in_channels, side, side, device=device)
    if case.fold:
        model = fold_batchnorm(model)
    if case.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if case.precision == "bf16":
        autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    elif case.precision == "fp16":
        autocast = torch.autocast(device.type, dtype=torch.float16)
    else:
        autocast = nullcontext()

    if case.task == "train":
        model.train()
        criterion = build_loss(LossConfig(), num_classes=2, ignore_index=None)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        mask = torch.randint(0, 2, (batch, side, side), device=device)
        weight = torch.ones(batch, side, side, device=device)
        params = [p for p in model.parameters() if p.requires_grad]

        def step():
            with autocast:
                logits = model(x)
            target = center_crop(mask, *logits.shape[-2:])
            pixel_weight = center_crop(weight, *logits.shape[-2:])
            loss = criterion(logits.float(), target, pixel_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 1.0)  # as unetkit's training loop (grad_clip)
            optimizer.step()
    else:
        model.eval()

        def step():
            with torch.inference_mode(), autocast:
                model(x)

    memory = Memory(device)
    memory.start()
    timing = time_iterations(step, make_sync(device), sizes)
    seconds = timing["seconds"]
    n = timing["iterations"]
    return {
        **timing,
        "batch": batch,
        "input_side": side,
        "output_side": out_side,
        "images_per_s": batch * n / seconds,
        "output_megapixels_per_s": batch * out_side**2 * n / seconds / 1e6,
        "flops_per_iteration": flops,
        "gflops_per_s": flops * n / seconds / 1e9,
        **memory.report(),
    }


def _time_calls(fn, sync, seconds: float) -> float:
    """Seconds per call: one warm-up call, then calls until ``seconds`` have passed (at
    least one; at least two when ``seconds`` > 0)."""
    fn()
    sync()
    calls, begin = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        sync()
        elapsed = time.perf_counter() - begin
        if elapsed >= seconds and (calls >= 2 or seconds == 0):
            return elapsed / calls


def measure_ceilings(sizes: Sizes, device) -> dict:
    """Attainable GFLOP/s of a square matmul and of a 3x3 convolution forward + backward,
    fp32 and bf16. Sizes double from small until one call takes 0.2 s (or up to the
    maximum), so that an emulated bf16 does not take minutes."""
    import torch
    from torch import nn

    sync = make_sync(device)
    rows = []
    matmul_max = sizes.matmul_max * (4 if device.type == "cuda" else 1)
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        n = 256
        while True:
            a = torch.randn(n, n, device=device).to(dtype)
            matmul = functools.partial(torch.mm, a, torch.randn_like(a))
            if n >= matmul_max or _time_calls(matmul, sync, 0) > 0.2:
                break
            n *= 2
        per_call = _time_calls(matmul, sync, sizes.ceiling_s)
        rows.append({"op": "matmul", "precision": precision, "layout": "-",
                     "shape": f"({n} x {n}) @ ({n} x {n})", "flops": 2 * n**3,
                     "gflops_per_s": 2 * n**3 / per_call / 1e9})
        for channels_last in (False, True):
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            side = 32
            while True:
                conv = nn.Conv2d(64, 64, 3, padding=1, bias=False).to(device, dtype)
                conv = conv.to(memory_format=fmt)
                x = torch.randn(sizes.batch, 64, side, side, device=device).to(dtype)
                x = x.contiguous(memory_format=fmt).requires_grad_(True)
                grad = torch.randn_like(x)

                def step(conv=conv, x=x, grad=grad):
                    y = conv(x)
                    torch.autograd.grad(y, (x, conv.weight), grad)

                if side >= sizes.conv_side_max or _time_calls(step, sync, 0) > 0.2:
                    break
                side *= 2
            # Forward, gradient of the input and gradient of the weight: each one multiply-add
            # per (output pixel, output channel, input channel, kernel tap), 2 FLOPs each,
            # as FlopCounterMode counts them.
            flops = 3 * 2 * sizes.batch * 64 * 64 * 9 * side * side
            per_call = _time_calls(step, sync, sizes.ceiling_s)
            rows.append({"op": "conv3x3 fwd+bwd", "precision": precision,
                         "layout": "channels_last" if channels_last else "contiguous",
                         "shape": f"{sizes.batch} x 64 x {side} x {side}, 64 -> 64",
                         "flops": flops, "gflops_per_s": flops / per_call / 1e9})
    return {"ceilings": rows}


def measure_tiled(sizes: Sizes, device) -> dict:
    import numpy as np
    import torch

    from unetkit.inference import predict
    from unetkit.models import UNet
    from unetkit.models.fuse import fold_batchnorm

    torch.manual_seed(0)
    model = UNet(3, 1, sizes.tiled_features, padding="same", norm="batch")
    model = fold_batchnorm(model).to(device)  # what `unetkit predict` runs
    tiles = [0]
    model.register_forward_hook(lambda module, args, out: tiles.__setitem__(
        0, tiles[0] + args[0].shape[0]))
    side = sizes.tiled_side
    image = np.random.default_rng(0).standard_normal((3, side, side), dtype=np.float32)
    memory = Memory(device)
    memory.start()
    begin = time.perf_counter()
    probs = predict(model, image, tile=sizes.tiled_tile, overlap=sizes.tiled_overlap,
                    batch_size=4)
    make_sync(device)()
    seconds = time.perf_counter() - begin
    return {"model_label": f"UNet({sizes.tiled_features}, same, BN folded)",
            "image_side": side,
            "tile": sizes.tiled_tile, "overlap": sizes.tiled_overlap, "batch": 4,
            "tiles": tiles[0], "seconds": seconds, "megapixels_per_s": side**2 / seconds / 1e6,
            "output_shape": list(probs.shape), **memory.report()}


def measure_data(sizes: Sizes, device) -> dict:
    import torch

    from unetkit.config import AugmentConfig, DataConfig
    from unetkit.data.folder import build_datasets, make_loader
    from unetkit.data.transforms import Augmenter

    cfg = DataConfig(demo_count=sizes.data_count, demo_size=sizes.data_size,
                     patch_size=sizes.side)
    begin = time.perf_counter()
    train_ds, _, cfg = build_datasets(cfg, seed=0)
    build_s = time.perf_counter() - begin
    loader = make_loader(train_ds, sizes.batch, True, 0, device)
    augment = Augmenter(AugmentConfig(), seed=0)
    sync = make_sync(device)

    def epoch(number: int) -> int:
        train_ds.set_epoch(number)
        seen = 0
        for batch in loader:
            batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
                     for k, v in batch.items()}
            seen += augment(batch)["image"].shape[0]
        sync()
        return seen

    memory = Memory(device)
    memory.start()
    begin = time.perf_counter()
    first_images = epoch(1)
    first_s = time.perf_counter() - begin
    images, number, begin = 0, 1, time.perf_counter()
    while True:
        number += 1
        images += epoch(number)
        seconds = time.perf_counter() - begin
        if seconds >= sizes.target_s:
            break
    return {"images_per_s": images / seconds, "first_epoch_images_per_s": first_images / first_s,
            "epochs_timed": number - 1, "images": images, "seconds": seconds,
            "batch": sizes.batch, "patch": sizes.side, "train_images": len(train_ds),
            "num_workers": loader.num_workers, "build_datasets_s": build_s, **memory.report()}


def child_main(case_name: str, quick: bool, device_name: str, result_path: str | None,
               flops: int | None = None) -> int:
    import torch

    sizes = QUICK if quick else FULL
    case = Case.parse(case_name)
    device = resolve_device(device_name)
    info = {"case": case.name, "allocator_loaded": loaded_allocator(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
            "torch_threads": torch.get_num_threads(), "device": str(device)}
    if case.task == "ceiling":
        result = measure_ceilings(sizes, device)
    elif case.task in ("train", "infer"):
        result = measure_model(case, sizes, device, flops)
    elif case.task == "tiled":
        result = measure_tiled(sizes, device)
    elif case.task == "data":
        result = measure_data(sizes, device)
    else:
        raise SystemExit(f"unknown task {case.task!r} in --case {case_name!r}; known: "
                         "train, infer, ceiling, tiled, data")
    result = {**info, "status": "ok", **result, "process_peak_rss_mib": max_rss_mib()}
    text = json.dumps(result, indent=2)
    if result_path:
        Path(result_path).write_text(text)
    else:
        print(text)
    return 0


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ----------------------------------------------------------------------------- parent side
def find_tcmalloc() -> str | None:
    try:
        from unetkit.process import _find_tcmalloc
    except ImportError:  # pragma: no cover - the package moved
        return None
    return _find_tcmalloc()


def child_env(allocator: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["UNETKIT_RELAUNCHED"] = "1"  # never let unetkit's launcher re-exec the child
    preload = [p for p in env.get("LD_PRELOAD", "").split(":") if p and "tcmalloc" not in p]
    lib = find_tcmalloc() if allocator == TCMALLOC else None
    if lib:
        preload.insert(0, lib)
    if preload:
        env["LD_PRELOAD"] = ":".join(preload)
    else:
        env.pop("LD_PRELOAD", None)
    return env


def run_child(case: Case, args, sizes: Sizes, log_dir: Path, cap: float | None,
              flops: int | None) -> dict:
    """Run one case in a fresh process; stop it if its first iteration exceeds ``cap``.
    ``flops`` (counted here) spares the child the ~2 s that FlopCounterMode's first use
    costs."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        result_path = Path(handle.name)
    command = [sys.executable, str(Path(__file__).resolve()), "--case", case.name,
               "--result", str(result_path), "--device", args.device]
    if args.quick:
        command.append("--quick")
    if flops is not None:
        command += ["--flops", str(flops)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=child_env(case.allocator), cwd=REPO)
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    log = []
    tail: collections.deque = collections.deque(maxlen=15)
    begin = time.monotonic()
    first_started = None
    stopped = None
    while True:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            line = ""
        if line is None:
            break
        if line.startswith(START_MARK):
            first_started = time.monotonic()
        elif line.startswith(DONE_MARK):
            first_started = None
        elif line:
            log.append(line)
            tail.append(line.rstrip())
        now = time.monotonic()
        if stopped is None and cap is not None and first_started and now - first_started > cap:
            stopped = (f"skipped: too slow (emulated bf16): first iteration > {cap:.0f} s, "
                       "stopped")
        elif stopped is None and now - begin > sizes.timeout_s:
            stopped = f"error: timed out after {sizes.timeout_s:.0f} s"
        if stopped and proc.poll() is None:
            proc.kill()  # the child we started, by its handle
    proc.wait()
    (log_dir / f"{case.name.replace(':', '_')}.log").write_text("".join(log))
    try:
        if stopped:
            return {"case": case.name, "status": stopped}
        if proc.returncode != 0 or result_path.stat().st_size == 0:
            last = " | ".join(t for t in tail if t.strip())[-600:]
            return {"case": case.name, "status": f"error (exit {proc.returncode}): {last}"}
        return json.loads(result_path.read_text())
    finally:
        result_path.unlink(missing_ok=True)


def python_command() -> str:
    """How to call this Python from the repository root, for the rerun line."""
    try:
        return str(Path(sys.executable).relative_to(REPO))
    except ValueError:
        return "python"


def best_ceiling(results: dict[str, dict], layout: str | None = None) -> dict[str, float]:
    """Best measured GFLOP/s per precision; with ``layout``, only the matmul and the
    convolution in that layout ("contiguous" or "channels_last")."""
    ceiling = results.get(Case("ceiling", "matmul+conv3x3", "fp32+bf16").name, {})
    best: dict[str, float] = {}
    for row in ceiling.get("ceilings", []):
        if layout is not None and row["layout"] not in ("-", layout):
            continue
        best[row["precision"]] = max(best.get(row["precision"], 0.0), row["gflops_per_s"])
    return best


def skip_reason(case: Case, results: dict[str, dict], emulated_bf16: bool,
                flops: int | None) -> tuple[str | None, float | None]:
    """(reason to skip without running, or None; first-iteration cap in seconds, or None)."""
    if case.precision != "bf16" or not emulated_bf16:
        return None, None
    if case.channels_last:
        plain = results.get(Case(case.task, case.model, "bf16", case.allocator).name)
        if plain and plain["status"].startswith("skipped"):
            return "skipped: too slow (emulated bf16); plain bf16 was already skipped", None
    layout = "channels_last" if case.channels_last else "contiguous"
    rate = best_ceiling(results, layout).get("bf16")
    if rate and flops:
        estimate = flops / (rate * 1e9)
        if estimate > BF16_CAP_S:
            return (f"skipped: too slow (emulated bf16): ~{estimate:.0f} s per iteration at "
                    f"the {rate:.1f} GFLOP/s bf16 {layout} rate measured above"), None
    return None, BF16_CAP_S


def cpu_description() -> dict:
    info = {"cpu_model": platform.processor() or platform.machine(), "isa": {}}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("model name") and info["cpu_model"] in ("", platform.machine(),
                                                                   platform.processor()):
            info["cpu_model"] = line.split(":", 1)[1].strip()
        if line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
    info["isa"] = {name: name in flags for name in
                   ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")}
    return info


def run_all(args) -> int:
    import torch

    from unetkit.process import available_cores
    from unetkit.runtime import cpu_has_fast_bf16

    sizes = QUICK if args.quick else FULL
    device = resolve_device(args.device)
    fast_bf16 = cpu_has_fast_bf16()
    emulated_bf16 = device.type == "cpu" and not fast_bf16
    cases = plan(device, args.quick)
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        cases = [c for c in cases if c.model == "reference" or c.task == "ceiling"
                 or any(w in c.name for w in wanted)]
    out = Path(args.out)
    log_dir = out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    begin = time.monotonic()
    print(f"{len(cases)} cases ({'quick' if args.quick else 'full'} run), each in a fresh "
          f"process; results in {out}/", flush=True)
    results: dict[str, dict] = {}
    for number, case in enumerate(cases, 1):
        case_begin = time.monotonic()
        flops = count_flops(case, sizes) if case.task in ("train", "infer") else None
        reason, cap = skip_reason(case, results, emulated_bf16, flops)
        if reason:
            result = {"case": case.name, "status": reason, "flops_per_iteration": flops}
        else:
            result = run_child(case, args, sizes, log_dir, cap, flops)
        result.update(task=case.task, model=case.model, variant=case.variant,
                      allocator=case.allocator, wall_s=time.monotonic() - case_begin)
        results[case.name] = result
        print(f"[{number:2d}/{len(cases)}] {case.name:42s} {summary(result):40s} "
              f"({result['wall_s']:.1f} s; {(time.monotonic() - begin) / 60:.1f} min in all)",
              flush=True)

    report = assemble(results, sizes, args, device, fast_bf16, started,
                      time.monotonic() - begin, available_cores(), torch.__version__)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = render_markdown(report)
    (out / "results.md").write_text(markdown)
    print()
    print(markdown)
    failed = [r["case"] for r in results.values() if r["status"].startswith("error")]
    if failed:
        print(f"{len(failed)} case(s) failed: {', '.join(failed)}; see {log_dir}/",
              file=sys.stderr)
    return 1 if failed else 0


def summary(result: dict) -> str:
    if result["status"] != "ok":
        return result["status"][:60]
    if "images_per_s" in result:
        return f"{result['images_per_s']:.2f} img/s" + (
            f", {result['gflops_per_s']:.1f} GFLOP/s" if "gflops_per_s" in result else "")
    if "ceilings" in result:
        return ", ".join(f"{r['op'].split()[0]} {r['precision']} {r['gflops_per_s']:.1f}"
                         for r in result["ceilings"] if r["layout"] != "channels_last")
    if "tiles" in result:
        return f"{result['seconds']:.1f} s, {result['tiles']} tiles"
    return "ok"


def assemble(results: dict[str, dict], sizes: Sizes, args, device, fast_bf16: bool,
             started, wall_s: float, cores: int, torch_version: str) -> dict:
    ceilings = best_ceiling(results)
    reference = {task: results.get(Case(task, "reference").name, {}) for task in
                 ("train", "infer")}
    cases = []
    for r in results.values():
        if r["task"] not in ("train", "infer"):
            continue
        row = dict(r)
        ok = r["status"] == "ok"
        ref = reference[r["task"]]
        row["vs_reference"] = (r["images_per_s"] / ref["images_per_s"]
                               if ok and ref.get("status") == "ok" else None)
        precision = Case(r["task"], r["model"], r["variant"]).precision
        row["fraction_of_ceiling"] = (r["gflops_per_s"] / ceilings[precision]
                                      if ok and ceilings.get(precision) else None)
        row["model_label"] = model_label(r["model"], sizes)
        cases.append(row)
    allocator = []
    for model in ALLOCATOR_MODELS:
        fast = results.get(Case("train", model, "fp32", TCMALLOC).name, {})
        slow = results.get(Case("train", model, "fp32", GLIBC).name, {})
        if fast.get("status") == "ok" and slow.get("status") == "ok":
            allocator.append({
                "model": model, "label": model_label(model, sizes), "task": "train",
                "variant": "fp32", "glibc_images_per_s": slow["images_per_s"],
                "tcmalloc_images_per_s": fast["images_per_s"],
                "speedup": fast["images_per_s"] / slow["images_per_s"],
                "glibc_peak_mib": slow["peak_mib"], "tcmalloc_peak_mib": fast["peak_mib"],
                "allocators_loaded": [slow["allocator_loaded"], fast["allocator_loaded"]]})
    data = next((r for r in results.values() if r["task"] == "data"), None)
    default = next((r for r in results.values()
                    if r["task"] == "train" and r["model"] == "default"), None)
    pipeline = None
    if data is not None:
        pipeline = {"data": data, "default_train": default, "ratio": None}
        if data["status"] == "ok" and default and default["status"] == "ok":
            pipeline["ratio"] = data["images_per_s"] / default["images_per_s"]
    cpu = cpu_description()
    children = [r for r in results.values() if r["status"] == "ok"]
    return {
        "meta": {
            "date": started.strftime("%Y-%m-%d %H:%M UTC"),
            "mode": "quick" if args.quick else "full",
            **cpu,
            "cores": os.cpu_count(), "usable_cores": cores, "torch": torch_version,
            "python": platform.python_version(), "device": str(device),
            "native_bf16": fast_bf16,
            "torch_threads": sorted({r["torch_threads"] for r in children}),
            "omp_wait_policy": sorted({r["omp_wait_policy"] for r in children}),
            "tcmalloc": find_tcmalloc(),
            "sizes": asdict(sizes), "bf16_cap_s": BF16_CAP_S, "wall_s": wall_s,
            "command": python_command() + " benchmarks/run.py"
                       + (" --quick" if args.quick else "")
                       + (f" --only {args.only}" if args.only else ""),
        },
        "ceilings": results.get(Case("ceiling", "matmul+conv3x3", "fp32+bf16").name,
                                {}).get("ceilings", []),
        "best_ceiling_gflops_per_s": ceilings,
        "cases": cases,
        "allocator": allocator,
        "tiled": next((r for r in results.values() if r["task"] == "tiled"), None),
        "data_pipeline": pipeline,
    }


# ----------------------------------------------------------------------------- markdown
CASE_COLUMNS = ("task", "model", "precision / layout", "allocator", "batch x input -> output",
                "img/s", "out Mpx/s", "GFLOP/iter", "GFLOP/s", "% of ceiling",
                "peak MiB", "over baseline MiB", "x reference", "status")


def _f(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return "-"
    return f"{value:,.{digits}f}"


def _table(columns, rows) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def render_markdown(report: dict) -> str:
    meta = report["meta"]
    isa = meta.get("isa", {})
    isa_text = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in isa.items()) or "unknown"
    quick = meta["mode"] == "quick"
    lines = [
        "# unetkit benchmark",
        "",
        f"- date: {meta['date']}; {meta['mode']} run, {meta['wall_s'] / 60:.1f} min"
        + (" (QUICK: tiny sizes, numbers are not representative)" if quick else ""),
        f"- CPU: {meta['cpu_model']}, {meta['cores']} cores ({meta['usable_cores']} usable); "
        f"{isa_text}",
        f"- native bf16 (`unetkit.runtime.cpu_has_fast_bf16()`): {meta['native_bf16']}"
        + ("" if meta["native_bf16"] else
           " -- bf16 is emulated here, far slower than fp32; slow bf16 cases are skipped"),
        f"- torch {meta['torch']}, Python {meta['python']}, device {meta['device']}, torch "
        f"threads {', '.join(map(str, meta['torch_threads']))}, OMP_WAIT_POLICY "
        f"{', '.join(meta['omp_wait_policy'])}; tcmalloc: {meta['tcmalloc'] or 'not found'}",
        f"- rerun: `{meta['command']}` from the repository root (`--quick` for a smoke run, "
        "`--case NAME` for one case, `--out DIR` for another folder)",
        "",
        "Each case runs in a fresh process. Timing: warm-up, then N iterations "
        "(time.perf_counter). FLOPs: FlopCounterMode, convolutions and matmuls only. "
        "Peak = the process's RSS high-water mark (CUDA: max allocated); \"over baseline\" "
        "= peak minus the memory after building the model and inputs. \"x reference\" = "
        "img/s divided by the textbook U-Net's for the same task. % of ceiling: achieved "
        "GFLOP/s over the best ceiling of the same precision below.",
        "",
        "## Ceiling (measured in this run)",
        "",
    ]
    lines += _table(("op", "precision", "layout", "shape", "GFLOP/s"), [
        (r["op"], r["precision"], r["layout"], r["shape"], _f(r["gflops_per_s"]))
        for r in report["ceilings"]])
    lines += ["", "## Training step and inference", ""]
    rows = []
    for r in report["cases"]:
        ok = r["status"] == "ok"
        shape = (f"{r['batch']} x {r['input_side']}^2 -> {r['output_side']}^2" if ok else "-")
        rows.append((
            r["task"], r["model_label"], variant_label(r["variant"]),
            r.get("allocator_loaded", r["allocator"]), shape,
            _f(r.get("images_per_s"), 2), _f(r.get("output_megapixels_per_s"), 3),
            _f(r["flops_per_iteration"] / 1e9 if r.get("flops_per_iteration") else None),
            _f(r.get("gflops_per_s")),
            _f(100 * r["fraction_of_ceiling"] if r.get("fraction_of_ceiling") else None),
            _f(r.get("peak_mib"), 0), _f(r.get("increase_mib"), 0),
            _f(r.get("vs_reference"), 2), r["status"]))
    lines += _table(CASE_COLUMNS, rows)
    lines += ["", "## Allocator (training, fp32)", ""]
    lines += _table(("model", "glibc malloc img/s", "tcmalloc img/s", "tcmalloc speed-up",
                     "glibc peak MiB", "tcmalloc peak MiB"), [
        (a["label"], _f(a["glibc_images_per_s"], 2), _f(a["tcmalloc_images_per_s"], 2),
         _f(a["speedup"], 2) + "x", _f(a["glibc_peak_mib"], 0), _f(a["tcmalloc_peak_mib"], 0))
        for a in report["allocator"]])
    tiled = report.get("tiled")
    lines += ["", "## Tiled inference (unetkit.inference.predict)", ""]
    if tiled and tiled["status"] == "ok":
        lines += _table(("model", "image", "tile / overlap / batch", "tiles", "seconds",
                         "Mpx/s", "peak MiB", "over baseline MiB", "allocator"), [(
            tiled["model_label"], f"3 x {tiled['image_side']}^2 fp32", f"{tiled['tile']} / "
            f"{tiled['overlap']} / {tiled['batch']}", tiled["tiles"], _f(tiled["seconds"]),
            _f(tiled["megapixels_per_s"], 3), _f(tiled["peak_mib"], 0),
            _f(tiled["increase_mib"], 0), tiled["allocator_loaded"])])
    elif tiled:
        lines.append(f"{tiled['status']}")
    pipeline = report.get("data_pipeline")
    lines += ["", "## Data pipeline vs training step", ""]
    if pipeline:
        data, train = pipeline["data"], pipeline["default_train"] or {}
        ok = data["status"] == "ok"
        lines += _table(("data pipeline img/s (steady)", "first epoch img/s (weight maps)",
                         "loader workers", "training step img/s (default model)",
                         "data / training", "target >= 5x"), [(
            _f(data.get("images_per_s"), 1), _f(data.get("first_epoch_images_per_s"), 1),
            data.get("num_workers", "-"),
            _f(train.get("images_per_s"), 2) + f" ({variant_label(train.get('variant', '-'))})",
            _f(pipeline["ratio"], 1) + "x" if pipeline["ratio"] else "-",
            ("met" if pipeline["ratio"] >= 5 else "NOT met") if pipeline["ratio"] else "-")])
        if not ok:
            lines.append(f"\ndata pipeline: {data['status']}")
        lines += ["", "Demo data (build_datasets + make_loader + Augmenter with the default "
                  "AugmentConfig), patch side "
                  f"{data.get('patch', '-')}, batch {data.get('batch', '-')}. With 0 loader "
                  "workers, loading runs between training steps in the same process, so an "
                  "epoch costs 1/training + 1/data seconds per image."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 1)[1])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: tiny sizes, ~2 min in all (mostly process start-up); "
                        "the numbers are not representative")
    parser.add_argument("--out", default=str(HERE / "results"),
                        help="folder for results.md, results.json and logs/")
    parser.add_argument("--only", metavar="SUBSTRINGS",
                        help="comma-separated substrings of case names to run (the ceiling "
                        "and the reference always run)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--case", help="run ONE case in this process (what the children do)")
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--flops", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--list", action="store_true", help="print the case names and exit")
    args = parser.parse_args(argv)
    if args.case:
        return child_main(args.case, args.quick, args.device, args.result, args.flops)
    if args.list:
        for case in plan(resolve_device(args.device), args.quick):
            print(case.name)
        return 0
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main())
