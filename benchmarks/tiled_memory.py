"""Time and peak memory of tiled prediction on a large RGB image (a benchmark, not a test).

    .venv/bin/python benchmarks/tiled_memory.py                 # 4096 x 4096, both modes
    .venv/bin/python benchmarks/tiled_memory.py --size 2048 --features 64 --mode memmap

Each run happens in a FRESH Python process (this script starts itself again with
``--child``), so the peak memory of one run is not inherited from another. Modes:

* ``array``: image and output are numpy arrays in memory.
* ``memmap``: image and output are ``numpy.memmap`` files in a temporary folder, so only
  the tile batch and the model need to be in memory.

Printed per run: wall time, peak resident memory (``resource.getrusage().ru_maxrss``), the
resident memory before ``predict`` started, and the peak ANONYMOUS memory sampled during
``predict`` (Linux ``/proc/self/status`` RssAnon, every 20 ms). ru_maxrss also counts the
pages of memory-mapped files that were touched, which the OS can drop at any time; RssAnon
is the memory that must really stay in RAM.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def rss_anon_mib() -> float | None:
    """Current anonymous resident memory, MiB (Linux only)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def max_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20  # KiB on Linux


def child(args: argparse.Namespace) -> dict:
    import torch

    from unetkit.inference import predict
    from unetkit.models import UNet

    torch.manual_seed(0)
    model = UNet(3, 1, features=args.features, depth=args.depth, padding="same").eval()
    shape = (3, args.size, args.size)
    tmp = Path(tempfile.mkdtemp(prefix="unetkit-bench-"))
    rng = np.random.default_rng(0)
    if args.mode == "memmap":
        image = np.lib.format.open_memmap(tmp / "image.npy", "w+", np.float32, shape)
        out = np.lib.format.open_memmap(tmp / "probs.npy", "w+", np.float32,
                                        (2, args.size, args.size))
    else:
        image = np.empty(shape, dtype=np.float32)
        out = None
    for row in range(0, args.size, 256):  # in bands (a memmap is never whole in memory)
        image[:, row : row + 256] = rng.standard_normal(image[:, row : row + 256].shape)
    if args.mode == "memmap":
        image.flush()
        image = np.load(tmp / "image.npy", mmap_mode="r")

    before = max_rss_mib()
    peak_anon = [rss_anon_mib() or 0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak_anon[0] = max(peak_anon[0], rss_anon_mib() or 0.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    probs = predict(model, image, tile=args.tile, batch_size=args.batch_size, out=out,
                    progress=args.progress)
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    foreground = float(probs[1, :: args.size // 8, :: args.size // 8].mean())  # touch output
    del image, out, probs  # close the memmaps before their files are removed
    shutil.rmtree(tmp, ignore_errors=True)
    return {
        "mode": args.mode,
        "seconds": round(seconds, 1),
        "max_rss_mib": round(max_rss_mib(), 1),
        "rss_before_predict_mib": round(before, 1),
        "peak_rss_anon_during_predict_mib": round(peak_anon[0], 1),
        "image_mib": round(np.prod(shape) * 4 / 2**20, 1),
        "output_mib": round(2 * args.size**2 * 4 / 2**20, 1),
        "mean_foreground_sample": round(foreground, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=4096, help="image side, pixels")
    parser.add_argument("--features", type=int, default=16,
                        help="UNet width (64 = the paper's; 16 = demo size, ~16x faster)")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--mode", choices=["array", "memmap", "both"], default="both")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    modes = ["array", "memmap"] if args.mode == "both" else [args.mode]
    print(f"UNet(3, 1, features={args.features}, depth={args.depth}, padding='same'), "
          f"{args.size}x{args.size} RGB, tile {args.tile}, batch {args.batch_size}")
    for mode in modes:
        command = [sys.executable, __file__, "--child", "--mode", mode, "--size",
                   str(args.size), "--features", str(args.features), "--depth",
                   str(args.depth), "--tile", str(args.tile), "--batch-size",
                   str(args.batch_size)] + (["--progress"] if args.progress else [])
        run = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
        result = json.loads(run.stdout.strip().splitlines()[-1])
        print("  " + ", ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
