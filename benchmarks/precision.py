"""What bf16 costs: the same checkpoint predicted in fp32 and in bf16 autocast.

    .venv/bin/python benchmarks/precision.py --checkpoint runs/demo/checkpoints/best

Predicts freshly generated demo images (seed 1, not the training data) both ways and
prints the largest probability difference, the mean one, and the fraction of pixels whose
label differs. The demo's Dice in each precision comes from training it twice:
``UNETKIT_PRECISION=fp32 make demo OUT=runs/demo-fp32`` and the same with bf16.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--count", type=int, default=8, help="demo images to predict")
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()

    from unetkit import load_checkpoint, predict
    from unetkit.data.io import read_image
    from unetkit.data.synthetic import write_demo_data
    from unetkit.inference import list_images, normalize_image

    model, config = load_checkpoint(args.checkpoint, fold_batchnorm=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_demo_data(tmp, count=args.count, size=args.size, seed=1)
        largest, means, flipped, pixels = 0.0, [], 0, 0
        for path in list_images([folder / "images"]):
            image = normalize_image(read_image(path), config, path)
            fp32 = predict(model, image, autocast=False)
            bf16 = predict(model, image, autocast=True)
            diff = np.abs(fp32 - bf16)
            largest = max(largest, float(diff.max()))
            means.append(float(diff.mean()))
            flipped += int((fp32.argmax(0) != bf16.argmax(0)).sum())
            pixels += fp32.shape[1] * fp32.shape[2]
    cpu = subprocess.run("lscpu | grep -o 'avx512_bf16\\|amx_bf16' | sort -u | tr '\\n' ' '",
                         shell=True, capture_output=True, text=True).stdout.strip()
    print(f"CPU bf16 features: {cpu or 'none (AVX2: bf16 emulated)'}")
    print(f"{args.count} images {args.size}x{args.size}: largest |p_fp32 - p_bf16| = "
          f"{largest:.4f}, mean {np.mean(means):.2e}, labels differing at "
          f"{flipped} of {pixels} pixels ({flipped / pixels:.4%})")


if __name__ == "__main__":
    main()
