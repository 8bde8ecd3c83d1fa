"""Touching nuclei as objects: the instance model against connected components of the
semantic model, on the built-in demo's validation images (a benchmark, not a test).

    .venv/bin/python benchmarks/instances.py            # trains both demos, then scores
    .venv/bin/python benchmarks/instances.py --skip-training
    .venv/bin/python benchmarks/instances.py --sweep    # boundary width x epochs x seeds

Trains ``configs/demo.yaml`` (semantic) and ``configs/demo-instances.yaml`` (background /
interior / boundary) into runs/bench-semantic and runs/bench-instances unless
--skip-training, then predicts the demo's validation images (the same split training
held out) with each and reports: object F1 and AP at IoU 0.5, AP averaged over 0.5:0.95,
panoptic quality, the fraction of true objects merged, and the pixel Dice of the
foreground. Writes benchmarks/results/instances.md and docs/demo-objects.png.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RUNS = {"semantic": ("configs/demo.yaml", "runs/bench-semantic"),
        "instances": ("configs/demo-instances.yaml", "runs/bench-instances")}


def train(name: str, *flags: str) -> float:
    config, out = RUNS[name]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "unetkit", "train", "--config", config, "--out", out,
                    "--overwrite", "--quiet", *flags], cwd=ROOT, check=True)
    return time.perf_counter() - start


def sweep() -> None:
    """How the representation was chosen: boundary width x training length x seed
    threshold, object F1 / AP at IoU 0.5 and the merged true objects, on the same split."""
    from unetkit.object_metrics import ap_at, f1_at

    lines = ["| boundary px | epochs | seed threshold | F1@0.5 | AP@0.5 | merged | split |",
             "|---" * 7 + "|"]
    for width in (1, 2, 3, 4):
        for epochs in (25, 40):
            train("instances", "--boundary-width", str(width), "--epochs", str(epochs))
            for seed in (0.5, 0.7, 0.8):
                pooled = score("instances", seed_threshold=seed)[0]
                lines.append(f"| {width} | {epochs} | {seed} | {f1_at(pooled):.3f} | "
                             f"{ap_at(pooled):.3f} | {pooled['merged']} | {pooled['split']} |")
                print(lines[-1], flush=True)
    (ROOT / "benchmarks" / "results" / "instances-sweep.md").write_text(
        "# Choosing the instance representation (demo validation images)\n\n"
        + "\n".join(lines) + "\n")


def score(name: str, seed_threshold: float | None = None) -> tuple[dict, float, list]:
    """(pooled object scores, foreground pixel Dice, [(image, truth, predicted objects)])."""
    from unetkit import load_checkpoint, predict
    from unetkit.data.folder import build_datasets
    from unetkit.data.normalize import normalize_image
    from unetkit.object_metrics import object_scores, pool_object_scores
    from unetkit.object_outputs import objects_from_probabilities

    model, config = load_checkpoint(ROOT / RUNS[name][1] / "checkpoints" / "best",
                                    fold_batchnorm=True)
    _, val, _ = build_datasets(config.data, config.train.seed)
    per_image, overlap, total, shown = [], 0, 0, []
    for item in val.items:
        probs = predict(model, normalize_image(item.image, config), autocast=False)
        settings = {} if seed_threshold is None else {"seed_threshold": seed_threshold}
        objects = objects_from_probabilities(probs, config, **settings)
        truth = item.instances
        per_image.append(object_scores(truth, objects))
        overlap += int(((objects > 0) & (truth > 0)).sum())
        total += int((objects > 0).sum() + (truth > 0).sum())
        shown.append((item.image, truth, objects))
    return pool_object_scores(per_image), 2 * overlap / total, shown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--sweep", action="store_true", help="the representation choice")
    args = parser.parse_args()
    if args.sweep:
        sweep()
        return
    seconds = {}
    if not args.skip_training:
        for name in RUNS:
            seconds[name] = train(name)
    from unetkit.object_metrics import ap_at, f1_at
    from unetkit.report import outline_objects

    rows, pictures = [], {}
    for name in RUNS:
        pooled, dice, shown = score(name)
        merged = pooled["merged"] / max(pooled["true"], 1)
        rows.append((name, f1_at(pooled), ap_at(pooled), float(np.nanmean(pooled["ap"])),
                     pooled["pq"], merged, pooled["true"], pooled["predicted"], dice,
                     seconds.get(name)))
        pictures[name] = shown[0]
    cpu = subprocess.run("lscpu | grep -o 'avx512_bf16\\|amx_bf16' | sort -u | tr '\\n' ' '",
                         shell=True, capture_output=True, text=True).stdout.strip()
    lines = ["# Objects on the demo's validation images", "",
             f"CPU bf16 features: {cpu or 'none (AVX2)'}; 2 cores; prediction in fp32.", "",
             "| model | F1@0.5 | AP@0.5 | AP@0.5:0.95 | PQ | merged true objects | true | "
             "predicted | foreground pixel Dice | training s |", "|---" * 10 + "|"]
    for name, f1, ap, ap_mean, pq, merged, true, pred, dice, secs in rows:
        label = ("instance model (watershed)" if name == "instances"
                 else "semantic model, connected components")
        lines.append(f"| {label} | {f1:.3f} | {ap:.3f} | {ap_mean:.3f} | {pq:.3f} | "
                     f"{merged:.1%} | {true} | {pred} | {dice:.4f} | "
                     f"{'' if secs is None else f'{secs:.0f}'} |")
    text = "\n".join(lines) + "\n"
    print(text)
    (ROOT / "benchmarks" / "results" / "instances.md").write_text(text)
    _picture(pictures, outline_objects)


def _picture(pictures: dict, outline_objects) -> None:
    """docs/demo-objects.png: truth, connected components, instance model, side by side."""
    from PIL import Image

    image, truth, semantic = pictures["semantic"]
    _, _, instances = pictures["instances"]
    panels = [outline_objects(image, labels) for labels in (truth, semantic, instances)]
    gap = np.full((panels[0].shape[0], 6, 3), 255, dtype=np.uint8)
    row = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
    Image.fromarray(row).save(ROOT / "docs" / "demo-objects.png")
    print("wrote docs/demo-objects.png (truth | semantic + connected components | "
          "instance model)")


if __name__ == "__main__":
    main()
