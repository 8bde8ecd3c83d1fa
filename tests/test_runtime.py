"""The fast-settings selection and the launcher's process set-up."""

import os
import subprocess
import sys

import pytest
import torch

from unetkit import runtime
from unetkit.cli import _find_tcmalloc


def test_cpu_precision_follows_native_bf16(monkeypatch):
    monkeypatch.delenv(runtime.PRECISION_ENV, raising=False)
    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: True)
    assert runtime.select_precision(cpu) == torch.bfloat16
    assert runtime.select_channels_last(cpu, torch.bfloat16, None) is True
    # Without native bf16 (AVX2-only CPUs) bf16 is emulated and slow: plain fp32.
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: False)
    assert runtime.select_precision(cpu) == torch.float32
    assert runtime.select_channels_last(cpu, torch.float32, None) is False


def test_forced_precision_and_errors():
    cpu = torch.device("cpu")
    assert runtime.select_precision(cpu, "fp32") == torch.float32
    assert runtime.select_precision(cpu, "bf16") == torch.bfloat16
    assert runtime.select_channels_last(cpu, torch.float32, True) is True
    with pytest.raises(ValueError, match="fp16"):
        runtime.select_precision(cpu, "fp16")
    with pytest.raises(ValueError, match="precision"):
        runtime.select_precision(cpu, "int8")


def test_environment_sets_auto_for_the_whole_process(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: False)
    monkeypatch.setenv("UNETKIT_PRECISION", "bf16")
    assert runtime.select_precision(cpu) == torch.bfloat16
    assert runtime.select_precision(cpu, "fp32") == torch.float32  # an explicit choice wins
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setenv("UNETKIT_PRECISION", "FP32")
    assert runtime.select_precision(cpu) == torch.float32
    assert runtime.make_runtime("cpu").dtype == torch.float32
    monkeypatch.setenv("UNETKIT_PRECISION", "auto")
    assert runtime.select_precision(cpu) == torch.bfloat16
    monkeypatch.setenv("UNETKIT_PRECISION", "int8")
    with pytest.raises(ValueError, match="UNETKIT_PRECISION=int8.*auto, fp32, bf16, fp16"):
        runtime.select_precision(cpu)
    monkeypatch.setenv("UNETKIT_PRECISION", "fp16")
    with pytest.raises(ValueError, match="UNETKIT_PRECISION=fp16: fp16 needs CUDA"):
        runtime.select_precision(cpu)


def test_runtime_without_torchrun_is_single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    rt = runtime.make_runtime("cpu", "fp32")
    assert (rt.rank, rt.world_size, rt.is_main, rt.distributed) == (0, 1, True, False)
    with rt.autocast():
        assert not torch.is_autocast_enabled("cpu")


def test_launcher_sets_allocator_and_thread_policy():
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "OMP_WAIT_POLICY", "UNETKIT_RELAUNCHED")}
    run = subprocess.run([sys.executable, "-m", "unetkit", "info"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    expected = "tcmalloc" if _find_tcmalloc() else "glibc malloc"
    assert f"allocator: {expected}" in run.stdout
    assert "OMP_WAIT_POLICY: PASSIVE" in run.stdout
    run = subprocess.run([sys.executable, "-m", "unetkit", "info"],
                         env=dict(env, UNETKIT_NO_TCMALLOC="1"), capture_output=True,
                         text=True, timeout=120)
    assert "allocator: glibc malloc" in run.stdout


def test_launcher_says_once_when_tcmalloc_is_missing(monkeypatch, capsys):
    from unetkit import cli, process

    for name in ("LD_PRELOAD", "UNETKIT_NO_TCMALLOC", "RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(process, "_find_tcmalloc", lambda: None)
    note = process.tcmalloc_note()
    assert "make tcmalloc" in note and "1.9x slower" in note and "\n" not in note
    monkeypatch.setattr(cli, "tcmalloc_note", process.tcmalloc_note)
    monkeypatch.setattr(cli, "cmd_predict", lambda args: 0)
    predict = ["predict", "in.png", "--checkpoint", "ckpt", "--out", "masks"]
    assert cli.main(predict, relaunch=True) == 0
    assert capsys.readouterr().out.count("make tcmalloc") == 1
    assert cli.main(predict, relaunch=False) == 0  # a Python caller: no launcher, no note
    assert cli.main([*predict, "--quiet"], relaunch=True) == 0
    assert "tcmalloc" not in capsys.readouterr().out
    monkeypatch.setenv("RANK", "1")  # torchrun: the first process says it
    assert process.tcmalloc_note() is None
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("UNETKIT_NO_TCMALLOC", "1")
    assert process.tcmalloc_note() is None
    monkeypatch.delenv("UNETKIT_NO_TCMALLOC")
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libtcmalloc_minimal.so.4")
    assert process.tcmalloc_note() is None


@pytest.mark.cuda
def test_cuda_picks_reduced_precision_and_channels_last(monkeypatch):
    monkeypatch.delenv(runtime.PRECISION_ENV, raising=False)
    cuda = torch.device("cuda")
    dtype = runtime.select_precision(cuda)
    assert dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    assert runtime.select_channels_last(cuda, dtype, None) is True
    assert runtime.select_device("auto") == torch.device("cuda:0")
