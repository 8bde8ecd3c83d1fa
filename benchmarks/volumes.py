"""3D speed and memory beside 2D, in one run on THIS machine (a benchmark, not a test).

    .venv/bin/python benchmarks/volumes.py            # about 5 minutes on 2 cores
    .venv/bin/python benchmarks/volumes.py --quick    # smoke run, numbers not representative

Cases, each in a fresh child process (the RSS high-water mark is per process), timed and
counted as benchmarks/run.py does (its helpers: warm-up, N iterations of ~5 s, FLOPs of
convolutions and matmuls on the meta device):

* ``ceiling``: the machine's attainable GFLOP/s (matmul, 3x3 convolution fwd+bwd), fp32
  and bf16, as in run.py;
* ``train`` / ``infer`` of the 2D default model (UNet(32, same, BN), batch 4 x 1 x 256^2)
  and of 3D U-Nets: the demo's (features 8, depth 3, spacing (3, 1, 1), batch 2 x 1 x 20 x
  64 x 64) and an isotropic one (features 16, depth 4, batch 2 x 1 x 64^3), in the
  precision ``unetkit train`` picks here; images/s counts images or volumes;
* ``predict512``: ``sliding_window`` prediction of a 512^3 volume with the demo model
  (its 20 x 64 x 64 tiles, overlap 0.25, batch 4): peak RSS beyond the volume and the
  output arrays, which are allocated before the measurement starts.

Writes benchmarks/results/volumes.md and volumes.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE)]

import run  # noqa: E402  (benchmarks/run.py: timing, memory and ceiling helpers)

MODELS = {  # key: (label, ModelConfig kwargs, input shape without batch, batch)
    "2d-default": ("UNet(32, same, BN) 2D, 1 x 256 x 256", {}, (1, 256, 256), 4),
    "3d-demo": ("UNet3D(8, depth 3, spacing 3:1:1), 1 x 20 x 64 x 64",
                {"features": 8, "depth": 3, "spatial_dims": 3, "spacing": (3.0, 1.0, 1.0)},
                (1, 20, 64, 64), 2),
    "3d-iso": ("UNet3D(16, depth 4, isotropic), 1 x 64 x 64 x 64",
               {"features": 16, "depth": 4, "spatial_dims": 3}, (1, 64, 64, 64), 2),
}
QUICK_SHAPES = {"2d-default": (1, 64, 64), "3d-demo": (1, 12, 32, 32),
                "3d-iso": (1, 16, 16, 16)}


def build(key: str, quick: bool):
    from unetkit.config import ModelConfig
    from unetkit.models.registry import build_model

    _, kwargs, shape, batch = MODELS[key]
    if quick:
        shape, batch = QUICK_SHAPES[key], 1
    model = build_model(ModelConfig(norm="batch", **kwargs), load_pretrained=False)
    return model, (batch, *shape)


def measure(task: str, key: str, quick: bool) -> dict:
    import torch
    from torch import nn
    from torch.utils.flop_counter import FlopCounterMode

    from unetkit.config import LossConfig
    from unetkit.losses import build_loss
    from unetkit.runtime import precision_name, select_precision

    device = torch.device("cpu")
    sizes = run.QUICK if quick else run.FULL
    model, shape = build(key, quick)
    with torch.device("meta"):
        meta_model, _ = build(key, quick)
        x_meta = torch.empty(shape)
    with FlopCounterMode(display=False) as counter:
        if task == "infer":
            with torch.no_grad():
                meta_model.eval()(x_meta)
        else:
            meta_model.train()(x_meta).float().sum().backward()
    flops = counter.get_total_flops()
    dtype = select_precision(device, "auto")
    autocast = torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32)
    x = torch.randn(shape)
    if task == "train":
        criterion = build_loss(LossConfig(), num_classes=2, ignore_index=None)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        mask = torch.randint(0, 2, (shape[0], *shape[2:]))
        weight = torch.ones(mask.shape)
        model.train()

        def step():
            with autocast:
                logits = model(x)
            loss = criterion(logits.float(), mask, weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
    else:
        model.eval()

        def step():
            with torch.inference_mode(), autocast:
                model(x)

    memory = run.Memory(device)
    memory.start()
    timing = run.time_iterations(step, lambda: None, sizes)
    n, seconds = timing["iterations"], timing["seconds"]
    return {**timing, "shape": list(shape), "precision": precision_name(dtype),
            "images_per_s": shape[0] * n / seconds, "flops_per_iteration": flops,
            "gflops_per_s": flops * n / seconds / 1e9, **memory.report()}


def measure_predict512(quick: bool) -> dict:
    import numpy as np
    import torch

    from unetkit.runtime import select_precision
    from unetkit.volume_inference import sliding_window

    side = 96 if quick else 512
    model, _ = build("3d-demo", quick)
    model.eval()
    volume = torch.from_numpy(np.random.default_rng(0).random((1, 1, side, side, side),
                                                              dtype=np.float32))
    dtype = select_precision(torch.device("cpu"), "auto")
    volume_mib = volume.numel() * 4 / 2**20
    memory = run.Memory(torch.device("cpu"))
    memory.start()  # the volume exists; the output (1 logit, float32) is counted below
    begin = time.perf_counter()
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype,
                                                enabled=dtype != torch.float32):
        out = sliding_window(model, volume, (20, 64, 64), overlap=0.25, batch_size=4)
    seconds = time.perf_counter() - begin
    output_mib = out.numel() * 4 / 2**20
    report = memory.report()
    return {"side": side, "seconds": seconds, "volume_mib": volume_mib,
            "output_mib": output_mib, **report,
            "beyond_volume_and_output_mib": report["increase_mib"] - output_mib}


def child(name: str, quick: bool, out: str) -> None:
    import torch

    from unetkit.process import available_cores

    torch.set_num_threads(available_cores())
    if name == "ceiling":
        result = run.measure_ceilings(run.QUICK if quick else run.FULL, torch.device("cpu"))
    elif name == "predict512":
        result = measure_predict512(quick)
    else:
        task, key = name.split(":")
        result = measure(task, key, quick)
    Path(out).write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        return child(args.case, args.quick, args.result)
    import tempfile

    from unetkit.runtime import cpu_has_fast_bf16

    names = ["ceiling"] + [f"{t}:{k}" for k in MODELS for t in ("train", "infer")]
    names.append("predict512")
    results = {}
    for name in names:
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            subprocess.run([sys.executable, __file__, "--case", name, "--result", f.name,
                            *(["--quick"] if args.quick else [])], check=True,
                           env={**__import__("os").environ, "OMP_WAIT_POLICY": "PASSIVE"})
            results[name] = json.loads(Path(f.name).read_text())
        print(name, "done", flush=True)
    cpu = "AVX-512 BF16" if cpu_has_fast_bf16() else "AVX2 (no native bf16)"
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "volumes.json").write_text(json.dumps({"cpu": cpu, **results}, indent=1) + "\n")
    text = report(results, cpu)
    (out / "volumes.md").write_text(text)
    print(text)


def report(results: dict, cpu: str) -> str:
    ceilings = results["ceiling"]["ceilings"]
    lines = [f"# 3D beside 2D (`benchmarks/volumes.py`, {cpu} CPU, 2 cores)", "",
             "| case | precision | images/s | GFLOP/s | of the conv ceiling | peak RSS +MiB |",
             "|---|---|---|---|---|---|"]
    for key, (label, _, _, _) in MODELS.items():
        for task in ("train", "infer"):
            r = results[f"{task}:{key}"]
            best = max(c["gflops_per_s"] for c in ceilings if c["precision"] == r["precision"]
                       and c["op"].startswith("conv"))
            lines.append(f"| {task} {label} (batch {r['shape'][0]}) | {r['precision']} | "
                         f"{r['images_per_s']:.2f} | {r['gflops_per_s']:.1f} | "
                         f"{100 * r['gflops_per_s'] / best:.0f}% | {r['increase_mib']:.0f} |")
    lines += ["", "Ceilings (GFLOP/s): " + ", ".join(
        f"{c['op']} {c['precision']} {c['layout']} {c['gflops_per_s']:.0f}" for c in ceilings)]
    p = results["predict512"]
    lines += ["", f"Sliding-window prediction of a {p['side']}^3 volume (the demo model, "
              f"tiles 20 x 64 x 64, overlap 0.25, batch 4): {p['seconds']:.0f} s; peak RSS "
              f"{p['increase_mib']:.0f} MiB above the {p['volume_mib']:.0f} MiB volume, of "
              f"which {p['output_mib']:.0f} MiB is the output: "
              f"**{p['beyond_volume_and_output_mib']:.0f} MiB beyond the volume and output "
              f"arrays**.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
