"""How long do you have? `unetkit train --time` against today's fixed defaults, measured
in one run on this machine (a benchmark, not a test).

    .venv/bin/python benchmarks/plan.py            # everything (about 35 minutes on 2 cores)
    .venv/bin/python benchmarks/plan.py --quick    # 1m budgets only, for a smoke check

Runs, each a fresh `python -m unetkit train` process timed from outside:

1. The fixed defaults (`--no-plan`: 30 epochs, lr 1e-4, patch 256, features 32) on the
   built-in binary data; its metrics.csv gives the best validation Dice reached by each
   wall time, for the side-by-side at 1, 2, 3 and 10 minutes.
2. The plan with `--time 1m`, `2m`, `3m`, `10m` on the same data.
3. The plan with `--time 3m` on the built-in multi-class data (mean foreground Dice).
4. The augmentation rule, checked: the plan against the plan with the full default
   augmentation, at the same budget, on the binary demo (1m) and on generated scans that
   behave like registered brain slices (2m; see :func:`write_scans`).

Writes benchmarks/results/plan.md (the tables) and results/plan.json (the raw rows).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
# The full default augmentation as flags (what the plan would otherwise weaken).
FULL_AUGMENT = ["--rot90", "--flip", "--rotate-deg", "15", "--scale", "0.85", "1.15",
                "--elastic", "--brightness", "0.1", "--contrast", "0.15", "--gamma", "0.2",
                "--noise-std", "0.03", "--blur-prob", "0.1"]


def write_scans(folder: Path, count: int = 60, size: int = 160, seed: int = 0) -> Path:
    """Generated slices that behave like registered brain MRI: every image shows the same
    anatomy at the same place (jittered by a few pixels and degrees), 4 classes
    (background, tissue, two ventricles, a structure on the left only, so left and right
    differ), smooth intensity bias and noise. Writes images/ and masks/ as PNG."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size - 0.5
    for i in range(count):
        angle = np.deg2rad(rng.uniform(-4, 4))
        dy, dx = rng.uniform(-0.02, 0.02, 2)
        scale = rng.uniform(0.95, 1.05)
        y = (np.cos(angle) * (yy - dy) - np.sin(angle) * (xx - dx)) / scale
        x = (np.sin(angle) * (yy - dy) + np.cos(angle) * (xx - dx)) / scale
        mask = np.zeros((size, size), np.uint8)
        mask[(y / 0.42) ** 2 + (x / 0.34) ** 2 < 1] = 1  # tissue (taller than wide)
        for side in (-1, 1):  # ventricles, mirror images of each other
            mask[((y + 0.05) / 0.12) ** 2 + ((x - side * 0.07) / 0.04) ** 2 < 1] = 2
        mask[((y - 0.2) / 0.06) ** 2 + ((x + 0.18) / 0.06) ** 2 < 1] = 3  # left only
        means = np.array([0.05, 0.55, 0.25, 0.8])
        bias = 1 + 0.2 * (rng.uniform(-1, 1) * y + rng.uniform(-1, 1) * x)
        image = means[mask] * bias + rng.normal(0, 0.08, mask.shape)
        image = np.clip(image * 255, 0, 255).astype(np.uint8)
        Image.fromarray(image).save(folder / "images" / f"scan_{i:03d}.png")
        Image.fromarray(mask).save(folder / "masks" / f"scan_{i:03d}.png")
    return folder


def train(out: str, *flags: str) -> dict:
    """One training process: wall seconds from outside, and its metrics.csv rows."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "unetkit", "train", "--out", out, "--overwrite",
                    "--quiet", *flags], cwd=ROOT, check=True)
    wall = time.perf_counter() - start
    with open(ROOT / out / "metrics.csv", newline="") as f:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    plan = ROOT / out / "plan.json"
    return {"out": out, "flags": list(flags), "wall_s": wall, "rows": rows,
            "best_dice": max(r["val_dice"] for r in rows),
            "plan": json.loads(plan.read_text()) if plan.is_file() else None}


def best_by(rows: list[dict], seconds: float) -> float:
    """The best validation Dice among the epochs finished by ``seconds`` of run time."""
    done = [r["val_dice"] for r in rows if r["elapsed_s"] <= seconds]
    return max(done) if done else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    import torch

    from unetkit.runtime import cpu_has_fast_bf16

    kind = "AVX-512 BF16" if cpu_has_fast_bf16() else "AVX2 (no native bf16)"
    budgets = [60] if args.quick else [60, 120, 180, 600]
    results: dict = {"cpu": kind, "torch": torch.__version__, "runs": {}}
    runs = results["runs"]
    runs["fixed"] = train("runs/bench-plan-fixed", "--no-plan", *(
        ["--epochs", "3"] if args.quick else []))
    for seconds in budgets:
        runs[f"time{seconds}"] = train(f"runs/bench-plan-{seconds}s", "--time", f"{seconds}s")
    runs["multiclass180"] = train("runs/bench-plan-multi", "--demo", "multiclass",
                                  "--time", "60s" if args.quick else "180s")
    runs["binary60_full_aug"] = train("runs/bench-plan-60s-aug", "--time", "60s",
                                      *FULL_AUGMENT)
    scans = write_scans(ROOT / "runs" / "bench-scans-data")
    scan_flags = ["--data", str(scans), "--num-classes", "4", "--time",
                  "60s" if args.quick else "120s"]
    runs["scans_plan"] = train("runs/bench-plan-scans", *scan_flags)
    runs["scans_full_aug"] = train("runs/bench-plan-scans-aug", *scan_flags, *FULL_AUGMENT)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "plan.json").write_text(json.dumps(results, indent=1) + "\n")
    (RESULTS / "plan.md").write_text(report(results, budgets))
    print(report(results, budgets))


def report(results: dict, budgets: list[int]) -> str:
    runs = results["runs"]
    fixed = runs["fixed"]
    lines = [f"# How long do you have? (`benchmarks/plan.py`, {results['cpu']} CPU, 2 cores, "
             f"torch {results['torch']})", "",
             "Best validation Dice on the built-in binary data reached within the wall time "
             "(the fixed defaults: by that time in their metrics.csv; the plan: the run "
             "given that budget, timed from outside the process).", "",
             "| time | `--time` (plan) | process wall time | fixed defaults by then |",
             "|---|---|---|---|"]
    for seconds in budgets:
        run = runs[f"time{seconds}"]
        lines.append(f"| {seconds // 60} min | {run['best_dice']:.4f} | {run['wall_s']:.0f} s "
                     f"({100 * run['wall_s'] / seconds:.0f}%) | "
                     f"{best_by(fixed['rows'], seconds):.4f} |")
    lines += ["", f"Fixed defaults, all {len(fixed['rows'])} epochs: best Dice "
              f"{fixed['best_dice']:.4f} in {fixed['wall_s']:.0f} s.", ""]
    multi = runs["multiclass180"]
    best = max(multi["rows"], key=lambda r: r["val_dice"])
    per_class = {k[len("val_dice_"):]: v for k, v in best.items()
                 if k.startswith("val_dice_") and k != "val_dice_background"}
    lines += [f"Multi-class demo, `--time {multi['flags'][-1]}`: mean foreground Dice "
              f"{multi['best_dice']:.4f} ("
              + ", ".join(f"{k} {v:.3f}" for k, v in per_class.items())
              + f"), wall {multi['wall_s']:.0f} s.", "",
              "The augmentation rule, same budget:", "",
              "| data | plan's augmentation | full default augmentation |", "|---|---|---|",
              f"| binary demo, 1 min | {runs['time60']['best_dice']:.4f} | "
              f"{runs['binary60_full_aug']['best_dice']:.4f} |",
              f"| registered scans, {runs['scans_plan']['flags'][-1]} | "
              f"{runs['scans_plan']['best_dice']:.4f} | "
              f"{runs['scans_full_aug']['best_dice']:.4f} |", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
