"""Peak memory and time of ``unetkit predict`` (the command line, ``predict_files``) on large
8-bit greyscale PNGs, this checkout against another one (a benchmark, not a test).

    git worktree add /tmp/unetkit-base de41e80          # the code to compare with
    PYTHONPATH=src .venv/bin/python -m unetkit train --config configs/demo.yaml --out runs/demo
    .venv/bin/python benchmarks/predict_memory.py --base /tmp/unetkit-base/src

Each run is a FRESH process (``python -m unetkit predict ...``, which re-executes itself
once with tcmalloc as users get it), started with ``PYTHONPATH`` pointing at the code
measured; its peak resident memory is the ``ru_maxrss`` that ``os.wait4`` reports for that
process, its time the wall time from start to exit (model loading and file writing
included). Runs of the two codes alternate, so a slow spell of a shared machine hits both.
A child's ``ru_maxrss`` starts at its parent's resident size (fork copies the page tables,
exec keeps the high-water mark), so this launching process stays small: it imports
neither numpy nor torch, and the images are made and the masks compared in child
processes of their own. Its resident size is printed with the results.

The images are generated here, never downloaded: synthetic nuclei
(:func:`unetkit.data.synthetic.make_nuclei`, 1024 x 1024 tiles, each flipped at random)
tiled to the asked size, saved as 8-bit greyscale PNG and uncompressed TIFF (``--formats``;
code before streaming cannot open a PNG above Pillow's decompression-bomb limit, such as
16384 x 16384: that run is reported as failed). The masks of the two codes are compared
pixel for pixel. Writes a markdown table to ``--out``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_image(folder: Path, size: int, formats: list[str], tile: int = 1024) -> list[Path]:
    """A ``size`` x ``size`` uint8 image of synthetic nuclei tiles (a few seeds, flipped),
    saved in each of ``formats``: "png" (zlib level 1) and/or "tif" (uncompressed).
    Run in a child process (``--make-image``)."""
    import numpy as np
    import tifffile
    from PIL import Image

    from unetkit.data.synthetic import make_nuclei

    tiles = [np.round(make_nuclei(tile, seed)[0][0] * 255).astype(np.uint8) for seed in range(4)]
    rng = np.random.default_rng(0)
    image = np.empty((size, size), dtype=np.uint8)
    for y in range(0, size, tile):
        for x in range(0, size, tile):
            part = tiles[rng.integers(len(tiles))]
            part = part[:: rng.choice((-1, 1)), :: rng.choice((-1, 1))]
            h, w = min(tile, size - y), min(tile, size - x)
            image[y : y + h, x : x + w] = part[:h, :w]
    paths = []
    for fmt in formats:
        path = folder / f"nuclei_{size}.{fmt}"
        if fmt == "png":
            Image.fromarray(image).save(path, compress_level=1)
        else:
            tifffile.imwrite(path, image)
        paths.append(path)
    return paths


def run_predict(src: Path, checkpoint: Path, image: Path, out: Path) -> dict:
    """One ``unetkit predict`` in a fresh process: wall seconds and peak RSS (MiB)."""
    env = dict(os.environ, PYTHONPATH=str(src))
    env.pop("UNETKIT_RELAUNCHED", None)
    command = [sys.executable, "-m", "unetkit", "predict", "--checkpoint", str(checkpoint),
               str(image), "--out", str(out), "--quiet"]
    with tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak, not the max of all
        seconds = time.perf_counter() - start
        child.returncode = code = os.waitstatus_to_exitcode(status)
        stderr.seek(0)
        err = stderr.read().decode()
    failure = None
    if code != 0:  # e.g. the old code cannot open a PNG above Pillow's bomb limit
        failure = (err.strip().splitlines() or [f"exit code {code}"])[-1][:300]
    return {"seconds": seconds, "peak_mib": usage.ru_maxrss / 1024, "failure": failure}


def cpu_description() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    name = re.search(r"Model name:\s*(.+)", text)
    flags = sorted(set(re.findall(r"\b(avx512_bf16|amx_bf16|avx512f|avx2)\b", text)))
    return f"{name.group(1).strip() if name else 'unknown'}, {os.cpu_count()} cores; " \
           f"flags: {', '.join(flags) or 'none of avx2/avx512f/avx512_bf16/amx_bf16'}"


def masks_equal(first: Path, second: Path) -> bool:
    """Pixel equality of two mask PNGs (run in a child process: ``--compare``)."""
    import numpy as np
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    return bool(np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(second))))


def in_child(*arguments: str) -> str:
    """Run this script with ``arguments`` in a fresh process; its stdout."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run([sys.executable, __file__, *arguments], env=env, check=True,
                          capture_output=True, text=True).stdout.strip()


def rss_mib() -> float:
    """This process's resident size now, MiB (Linux), else 0."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return 0.0
    match = re.search(r"VmRSS:\s*(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else 0.0


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("--make-image", "--compare"):
        if sys.argv[1] == "--make-image":  # SIZE FOLDER FORMATS
            paths = make_image(Path(sys.argv[3]), int(sys.argv[2]), sys.argv[4].split(","))
            print("\n".join(str(p) for p in paths))
        else:
            print("same" if masks_equal(Path(sys.argv[2]), Path(sys.argv[3])) else "different")
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", type=Path, required=True,
                        help="src/ folder of the code to compare with (e.g. a worktree)")
    parser.add_argument("--checkpoint", type=Path,
                        default=ROOT / "runs" / "demo" / "checkpoints" / "best")
    parser.add_argument("--sizes", default="16384,4096", help="image sides, comma-separated")
    parser.add_argument("--repeat", default="1,3",
                        help="runs per code for each size (comma-separated, like --sizes)")
    parser.add_argument("--formats", default="png,tif",
                        help="input formats, comma-separated: png (zlib), tif (uncompressed)")
    parser.add_argument("--only", choices=("new", "base"), help="measure one code only")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" /
                        "predict_memory.md")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    repeats = [int(r) for r in args.repeat.split(",")]
    repeats += [repeats[-1]] * (len(sizes) - len(repeats))
    codes = {"new": ROOT / "src", "base": args.base.resolve()}
    if args.only:
        codes = {args.only: codes[args.only]}

    rows = []
    with tempfile.TemporaryDirectory(prefix="unetkit-predict-bench-") as tmp:
        tmp = Path(tmp)
        for size, repeat in zip(sizes, repeats):
            made = in_child("--make-image", str(size), str(tmp), args.formats)
            for image in map(Path, made.splitlines()):
                rows.append(measure(image, size, repeat, codes, args.checkpoint, tmp))
                image.unlink()
    report = format_report(rows, codes, args)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)


def measure(image: Path, size: int, repeat: int, codes: dict, checkpoint: Path, tmp: Path):
    """(size, format, {code: [runs]}, masks equal or None): ``repeat`` runs per code,
    alternating; a code that failed once is not run again."""
    results: dict[str, list[dict]] = {name: [] for name in codes}
    for i in range(repeat):
        for name, src in codes.items():
            if results[name] and results[name][-1]["failure"]:
                continue
            out = tmp / f"{name}_{image.suffix[1:]}"
            result = run_predict(src, checkpoint, image, out)
            if result["failure"]:  # the temporary folder's name says nothing
                result["failure"] = result["failure"].replace(f"{image.parent}{os.sep}", "")
            results[name].append(result)
            state = f"FAILED: {result['failure']}" if result["failure"] else "ok"
            print(f"{image.name} {name} run {i + 1}: {result['seconds']:.1f} s, peak "
                  f"{result['peak_mib']:.0f} MiB (launcher {rss_mib():.0f} MiB), {state}",
                  flush=True)
    same = None
    if len(codes) == 2 and not any(r[-1]["failure"] for r in results.values()):
        masks = [str(tmp / f"{n}_{image.suffix[1:]}" / f"{image.stem}.png") for n in codes]
        same = in_child("--compare", *masks) == "same"
    return size, image.suffix[1:], results, same


def format_report(rows, codes, args) -> str:
    checkpoint = args.checkpoint.resolve()
    if checkpoint.is_relative_to(ROOT):
        checkpoint = checkpoint.relative_to(ROOT)
    lines = [
        "# `unetkit predict` on large images: peak memory and time",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- CPU: {cpu_description()}",
        f"- torch {importlib.metadata.version('torch')}, Python {platform.python_version()}; "
        f"launcher resident size {rss_mib():.0f} MiB (a floor for the peaks below); checkpoint "
        f"{checkpoint}"
        " (the demo: UNet(16, same, BN), 1 -> 1 channel; default tile 512, overlap 0.25, "
        "batch 4, precision auto)",
        f"- codes: {', '.join(f'{n} = {p}' for n, p in codes.items())}",
        "- rerun: `.venv/bin/python benchmarks/predict_memory.py --base PATH/TO/OTHER/src`",
        "",
        "Each run: a fresh `python -m unetkit predict CKPT IMAGE --out DIR --quiet`; peak "
        "= the process's `ru_maxrss` (from `os.wait4`); time = wall time of the whole "
        "command. Input: an 8-bit greyscale image of synthetic nuclei, as PNG (zlib) and as "
        "uncompressed TIFF.",
        "",
        "| image | input | code | runs | time, s (min / median) | peak RSS, MiB (max) | "
        "masks equal |",
        "|---|---|---|---|---|---|---|",
    ]
    for size, fmt, results, same in rows:
        for name, runs in results.items():
            if runs and runs[-1]["failure"]:
                lines.append(f"| {size} x {size} | {fmt} | {name} | {len(runs)} | failed: "
                             f"{runs[-1]['failure']} | | |")
                continue
            times = sorted(r["seconds"] for r in runs)
            peak = max(r["peak_mib"] for r in runs)
            lines.append(f"| {size} x {size} | {fmt} | {name} | {len(runs)} | {times[0]:.1f} / "
                         f"{statistics.median(times):.1f} | {peak:,.0f} | "
                         f"{'-' if same is None else ('yes' if same else 'NO')} |")
    if len(codes) == 2:
        lines += ["", "| image | input | time new / base (median) | peak new / base |",
                  "|---|---|---|---|"]
        for size, fmt, results, _ in rows:
            new, base = results["new"], results["base"]
            if not new or not base or new[-1]["failure"] or base[-1]["failure"]:
                continue
            ratio = (statistics.median(r["seconds"] for r in new)
                     / statistics.median(r["seconds"] for r in base))
            peak = max(r["peak_mib"] for r in new) / max(r["peak_mib"] for r in base)
            lines.append(f"| {size} x {size} | {fmt} | {ratio:.2f}x | {peak:.2f}x |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
