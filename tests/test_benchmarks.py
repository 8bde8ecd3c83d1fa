"""Smoke test of benchmarks/run.py: a quick subset runs end to end and writes its tables."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


def _load_run_module():
    if "benchmark_run" in sys.modules:
        return sys.modules["benchmark_run"]
    spec = importlib.util.spec_from_file_location("benchmark_run", RUN)
    module = importlib.util.module_from_spec(spec)
    sys.modules["benchmark_run"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_bf16_skip_rules():
    run = _load_run_module()
    case = run.Case("infer", "resnet18-unet", "bf16")
    ceiling = run.Case("ceiling", "matmul+conv3x3", "fp32+bf16").name
    results = {ceiling: {"status": "ok", "ceilings": [
        {"precision": "bf16", "layout": "-", "gflops_per_s": 1.0},
        {"precision": "bf16", "layout": "contiguous", "gflops_per_s": 2.0},
        {"precision": "bf16", "layout": "channels_last", "gflops_per_s": 8.0},
        {"precision": "fp32", "layout": "contiguous", "gflops_per_s": 60.0}]}}
    # 100 GFLOP at the contiguous bf16 rate (2 GFLOP/s) = 50 s > 20 s: skipped unrun.
    reason, cap = run.skip_reason(case, results, emulated_bf16=True, flops=100e9)
    assert reason.startswith("skipped: too slow (emulated bf16)") and "~50 s" in reason
    assert cap is None
    # 20 GFLOP = 10 s: run, but stopped if the first iteration passes the 20 s cap.
    assert run.skip_reason(case, results, True, 20e9) == (None, run.BF16_CAP_S)
    # channels_last has its own rate: 100 GFLOP at 8 GFLOP/s = 12.5 s, run with the cap.
    with_cl = run.Case("infer", "resnet18-unet", "bf16+cl")
    assert run.skip_reason(with_cl, results, True, 100e9) == (None, run.BF16_CAP_S)
    # Native bf16, or fp32: no cap at all.
    assert run.skip_reason(case, results, False, 200e9) == (None, None)
    fp32 = run.Case("infer", "resnet18-unet", "fp32")
    assert run.skip_reason(fp32, results, True, 200e9) == (None, None)
    # bf16 + channels_last is not tried once plain bf16 was too slow.
    results[case.name] = {"status": "skipped: too slow (emulated bf16): stopped"}
    reason, _ = run.skip_reason(with_cl, results, True, 1e9)
    assert reason.startswith("skipped")


def test_case_names_round_trip():
    run = _load_run_module()
    case = run.Case("train", "resnet34-unet", "bf16+cl", "glibc")
    assert run.Case.parse(case.name) == case
    assert case.precision == "bf16" and case.channels_last and not case.fold
    with pytest.raises(SystemExit, match="TASK:MODEL:VARIANT:ALLOCATOR"):
        run.Case.parse("train:resnet34-unet")


@pytest.mark.slow
def test_quick_subset_writes_tables(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--out", str(out),
         "--only", "infer:unet64-same:fp32:,data,tiled"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    markdown = (out / "results.md").read_text()
    for header in ("| task | model | precision / layout | allocator | batch x input -> output "
                   "| img/s | out Mpx/s | GFLOP/iter | GFLOP/s | % of ceiling | peak MiB |",
                   "## Ceiling", "## Tiled inference", "## Data pipeline vs training step",
                   "native bf16"):
        assert header in markdown
    report = json.loads((out / "results.json").read_text())
    assert report["meta"]["torch"] and report["meta"]["cpu_model"]
    rows = {row["case"]: row for row in report["cases"]}
    assert all(row["status"] == "ok" for row in rows.values()), rows
    ref_train = rows["train:reference:fp32:tcmalloc"]
    ref_infer = rows["infer:reference:fp32:tcmalloc"]
    assert ref_train["vs_reference"] == 1.0 and ref_infer["vs_reference"] == 1.0
    unet = rows["infer:unet64-same:fp32:tcmalloc"]
    assert unet["vs_reference"] == pytest.approx(
        unet["images_per_s"] / ref_infer["images_per_s"])
    # images/s and GFLOP/s agree with the timed iterations and the counted FLOPs.
    assert unet["images_per_s"] == pytest.approx(
        unet["batch"] * unet["iterations"] / unet["seconds"])
    assert unet["gflops_per_s"] == pytest.approx(
        unet["flops_per_iteration"] * unet["iterations"] / unet["seconds"] / 1e9)
    best_fp32 = max(c["gflops_per_s"] for c in report["ceilings"] if c["precision"] == "fp32")
    assert unet["fraction_of_ceiling"] == pytest.approx(unet["gflops_per_s"] / best_fp32)
    assert {c["precision"] for c in report["ceilings"]} == {"fp32", "bf16"}
    assert unet["peak_mib"] >= unet["baseline_mib"] > 0
    assert report["tiled"]["status"] == "ok" and report["tiled"]["tiles"] >= 4
    assert report["data_pipeline"]["data"]["images_per_s"] > 0


def test_gpu_check_on_a_machine_without_cuda_says_so_in_one_line():
    # CUDA_VISIBLE_DEVICES="" hides any GPU: the check must stop cleanly, not fail.
    import os

    gpu = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"
    proc = subprocess.run([sys.executable, str(gpu)], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == "no CUDA device: nothing to check\n" and proc.stderr == ""


def test_gpu_check_table_has_one_row_per_check():
    spec = importlib.util.spec_from_file_location(
        "benchmark_gpu", Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py")
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)

    def fails():
        raise ValueError("boom\nsecond line")

    def skips():
        raise gpu.Skip("1 GPU: DDP needs 2")

    rows = [gpu.check("works", lambda: "fine"), gpu.check("fails", fails),
            gpu.check("skips", skips)]
    assert [row[:2] for row in rows] == [("works", "ok"), ("fails", "FAIL"), ("skips", "skipped")]
    assert "\n" not in rows[1][2] and "boom" in rows[1][2]
    lines = gpu.table(rows).splitlines()
    assert lines[0] == "| check | result | detail | s |" and len(lines) == 5
