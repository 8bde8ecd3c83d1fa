"""The built-in 3D demo, measured: `unetkit train --config configs/demo-3d.yaml` timed from
outside, then held-out generated volumes (another seed, written as NIfTI) predicted and
evaluated with `unetkit predict` / `unetkit evaluate` (a benchmark, not a test).

    .venv/bin/python benchmarks/demo3d.py

Writes benchmarks/results/demo3d.md and docs/demo-3d-slices.png (orthogonal slices of a
held-out volume, the truth filled and the prediction outlined).
"""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RUN, HELD_OUT, PRED = "runs/demo-3d", "runs/demo-3d-heldout", "runs/demo-3d-pred"


def unetkit(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "unetkit", *args], cwd=ROOT, check=True)
    return time.perf_counter() - start


def main() -> None:
    sys.path.insert(0, str(ROOT / "src"))
    from unetkit.data.synthetic_volumes import DEMO_SPACING
    from unetkit.data.volumes import read_volume, read_volume_mask
    from unetkit.report import plot_orthogonal
    from unetkit.runtime import cpu_has_fast_bf16

    wall = unetkit("train", "--config", "configs/demo-3d.yaml", "--out", RUN, "--overwrite",
                   "--quiet")
    rows = list(csv.DictReader((ROOT / RUN / "metrics.csv").open()))
    best = max(rows, key=lambda r: float(r["val_dice"]))
    unetkit("make-demo-data", HELD_OUT, "--volumes", "--count", "8", "--seed", "1")
    unetkit("predict", f"{HELD_OUT}/images", "--checkpoint", f"{RUN}/checkpoints/best",
            "--out", PRED, "--quiet")
    scores = ROOT / RUN / "heldout.csv"
    summary = subprocess.run(
        [sys.executable, "-m", "unetkit", "evaluate", "--data", HELD_OUT, "--checkpoint",
         f"{RUN}/checkpoints/best", "--csv", str(scores), "--quiet"],
        cwd=ROOT, check=True, capture_output=True, text=True).stdout
    image = read_volume(ROOT / HELD_OUT / "images" / "vol_000.nii.gz").array
    truth = read_volume_mask(ROOT / HELD_OUT / "masks" / "vol_000.nii.gz", 2).array
    pred = read_volume_mask(ROOT / PRED / "vol_000.nii.gz", 2).array
    plot_orthogonal(image, truth, pred, ROOT / "docs" / "demo-3d-slices.png", DEMO_SPACING,
                    "held-out demo volume: truth filled, prediction outlined (red)")
    cpu = "AVX-512 BF16" if cpu_has_fast_bf16() else "AVX2 (no native bf16)"
    dice = np.mean([float(r["dice_nucleus"]) for r in csv.DictReader(scores.open())])
    text = (f"# The 3D demo (`benchmarks/demo3d.py`, {cpu} CPU, 2 cores)\n\n"
            f"`unetkit train --config configs/demo-3d.yaml`: {len(rows)} epochs in "
            f"{wall:.0f} s (process wall time), best validation Dice "
            f"{float(best['val_dice']):.4f} (IoU {float(best['val_iou']):.4f}) at epoch "
            f"{best['epoch']}.\n\nHeld-out generated volumes (seed 1, NIfTI), "
            f"`unetkit evaluate`:\n\n```\n{summary.strip()}\n```\n\nMean per-volume nucleus "
            f"Dice {dice:.4f}.\n")
    (ROOT / "benchmarks" / "results" / "demo3d.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
