"""unetkit beside smp, nnU-Net and Cellpose on real labelled data, in one run.

    .venv/bin/python benchmarks/realdata/run.py --fetch          # everything, from nothing
    .venv/bin/python benchmarks/realdata/run.py --only mnfinder --methods unetkit,smp
    .venv/bin/python benchmarks/realdata/run.py --redo unetkit   # re-run unetkit, keep peers

``--fetch`` brings the sets (sets.py) and the peers' virtual environments into the cache
(``~/.cache/unetkit-realdata`` or ``$UNETKIT_REALDATA``) once; never used by tests or CI.
Each case trains on SET/train and predicts SET/test in a fresh process, and writes its
predictions and times to CACHE/runs/SET/METHOD; score.py scores them all the same way.
A case already run is kept unless --redo names its method. The table goes to
benchmarks/results/realdata.md (and .json).

Budgets: unetkit gets ``--time T`` and nothing else; smp gets 2T; Cellpose and nnU-Net T
of training (their own set-up, planning and preprocessing are timed apart and reported).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

from sets import CACHE, SETS, prepare  # noqa: E402

VENVS = CACHE / "venvs"
PEERS = {  # venv name: what it installs (each its own environment, never unetkit's)
    "smp": ["torch==2.14.1", "torchvision==0.29.1", "segmentation-models-pytorch==0.6.0",
            "tifffile", "pillow"],
    "cellpose": ["torch==2.13.0", "cellpose==3.1.1.3", "tifffile", "pillow"],
    "nnunet": ["torch==2.13.0", "nnunetv2", "tifffile", "pillow"],
}
# name: (classes, objects?, T seconds, methods)
CASES = {
    "mnfinder": (2, True, 120, ("unetkit", "unetkit-semantic", "smp", "cellpose", "nnunet")),
    "cellunet": (2, True, 120, ("unetkit", "unetkit-semantic", "smp", "cellpose", "nnunet")),
    "atlas2d": (6, False, 110, ("unetkit", "smp", "nnunet")),
    "atlas3d": (6, False, 300, ("unetkit", "nnunet")),
    "photos": (2, False, 60, ("unetkit", "smp", "nnunet")),
}


def cpu_kind() -> str:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    native = [f for f in ("amx_bf16", "avx512_bf16") if re.search(rf"\b{f}\b", flags)]
    model = re.search(r"model name\s*:\s*(.*)", flags)
    return f"{model.group(1) if model else platform.processor()}; " + (
        ", ".join(native) if native else "AVX2, no native bf16")


def make_venvs() -> None:
    for name, packages in PEERS.items():
        venv = VENVS / name
        if not (venv / ".done").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *packages], check=True)
            (venv / ".done").touch()


def timed(cmd: list[str], log: Path, **kwargs) -> float:
    start = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, **kwargs)
    if done.returncode:
        raise RuntimeError(f"{cmd[0]} ... failed ({done.returncode}); see {log}")
    return time.perf_counter() - start


def run_unetkit(set_dir: Path, out: Path, seconds: int, task: str | None,
                classes: int) -> dict:
    """``unetkit train --data D --time T`` and nothing else but what the data need said
    (the class count, as nnU-Net's dataset.json says it; the task for objects)."""
    unetkit = str(ROOT / ".venv" / "bin" / "unetkit")
    train = [unetkit, "train", "--data", str(set_dir / "train"), "--time", f"{seconds}s",
             "--out", str(out / "run"), "--overwrite"] + (["--task", task] if task else [])
    train += ["--num-classes", str(classes)] if classes > 2 else []
    train_s = timed(train, out / "train.log")
    predict = [unetkit, "predict", "--checkpoint", str(out / "run"), "--out", str(out),
               "--quiet", str(set_dir / "test" / "images")]
    if (set_dir / "test" / "instances").exists():
        predict.append("--instances")
    return {"train_s": train_s, "predict_s": timed(predict, out / "predict.log")}


def run_peer(method: str, set_dir: Path, out: Path, seconds: int, classes: int) -> dict:
    python = str(VENVS / method / "bin" / "python")
    script = str(HERE / "peers" / f"{method}_peer.py")
    budget = 2 * seconds if method == "smp" else seconds
    cmd = [python, script, str(set_dir), str(out), "--seconds", str(budget)]
    if method in ("smp", "nnunet"):
        cmd += ["--classes", str(classes)]
    wall = timed(cmd, out / "peer.log", cwd=HERE / "peers")
    return {**json.loads((out / "times.json").read_text()), "wall_s": wall}


def run_case(name: str, method: str, redo: set[str]) -> dict:
    from score import score

    classes, _, seconds, _ = CASES[name]
    out = CACHE / "runs" / name / method
    result_file = out / "result.json"
    if result_file.exists() and method.split("-")[0] not in redo:
        return json.loads(result_file.read_text())
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*"):
        if old.is_file():
            old.unlink()
    print(f"{name}: {method} ...", flush=True)
    if method.startswith("unetkit"):
        task = "instances" if method == "unetkit" and CASES[name][1] else None
        times = run_unetkit(SETS / name, out, seconds, task, classes)
    else:
        times = run_peer(method, SETS / name, out, seconds, classes)
    result = {"set": name, "method": method, "T": seconds, **times,
              **score(SETS / name, out, classes)}
    result_file.write_text(json.dumps(result, indent=1))
    print(f"  {result}", flush=True)
    return result


def table(results: list[dict]) -> str:
    rows = ["| set | method | budget | train s | held-out Dice (mean fg) | AP@0.5 | F1@0.5 "
            "| AP@0.5:0.95 | PQ | merged | split |", "|---" * 11 + "|"]
    for r in results:
        budget = {"smp": "2T"}.get(r["method"], "T")
        obj = (f"{r['ap50']:.3f} | {r['f1_50']:.3f} | {r['ap50_95']:.3f} | {r['pq']:.3f} | "
               f"{r['merged']} | {r['split']}") if "ap50" in r else " | ".join([""] * 6)
        rows.append(f"| {r['set']} | {r['method']} | {budget} = "
                    f"{r['T'] * (2 if budget == '2T' else 1)} s | {r['train_s']:.0f} | "
                    f"{r['mean_dice']:.3f} | {obj} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fetch", action="store_true", help="fetch sets and peers first")
    parser.add_argument("--only", default="", help="comma-separated set names")
    parser.add_argument("--methods", default="", help="comma-separated methods")
    parser.add_argument("--redo", default="", help="methods to run again")
    args = parser.parse_args()
    if args.fetch:
        prepare()
        make_venvs()
    names = args.only.split(",") if args.only else list(CASES)
    wanted = set(args.methods.split(",")) if args.methods else None
    results = []
    for name in names:
        for method in CASES[name][3]:
            if wanted is None or method in wanted:
                results.append(run_case(name, method, set(args.redo.split(","))))
    text = (f"# unetkit and its peers on real labelled data\n\nCPU: {cpu_kind()}, "
            f"2 cores. Sets, splits and budgets: benchmarks/realdata/.\n\n{table(results)}\n")
    results_dir = ROOT / "benchmarks" / "results"
    (results_dir / "realdata.md").write_text(text)
    (results_dir / "realdata.json").write_text(json.dumps(results, indent=1))
    print(text)


if __name__ == "__main__":
    main()
