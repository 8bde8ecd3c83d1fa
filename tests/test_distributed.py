"""Multi-process training on torch.distributed (gloo on the CPU)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from unetkit.models import UNet

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_model():
    torch.manual_seed(0)
    return UNet(1, 1, features=4, depth=2, padding="same").double()


def batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 24, 24, generator=g, dtype=torch.float64)
    y = (torch.rand(4, 1, 24, 24, generator=g) > 0.5).double()
    return x, y


def steps(model, x, y, n=3):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(n):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(x), y).backward()
        opt.step()
    return model


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = DistributedDataParallel(make_model())
    x, y = batch()
    half = x.shape[0] // world
    steps(model, x[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half])
    torch.save({k: v.clone() for k, v in model.module.state_dict().items()}, f"{out}.{rank}")
    # Both ranks leave together: a rank that tears gloo down while its peer is still
    # talking aborted the other ("terminate called without an active exception") twice
    # on a loaded 2-core machine.
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process_over_the_combined_batch(tmp_path):
    out = str(tmp_path / "params")
    mp.spawn(_worker, args=(2, free_port(), out), nprocs=2, join=True)
    rank0 = torch.load(f"{out}.0", weights_only=True)
    rank1 = torch.load(f"{out}.1", weights_only=True)
    single = steps(make_model(), *batch()).state_dict()
    for key in single:
        assert torch.equal(rank0[key], rank1[key]), key  # DDP keeps ranks identical
        assert torch.allclose(rank0[key], single[key], atol=1e-10), key


def torchrun(out, epochs, *extra):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={free_port()}", "train.py", "--epochs", str(epochs),
           "--features", "4", "--depth", "2", "--demo-count", "12", "--demo-size", "48",
           "--patch-size", "32", "--batch-size", "2", "--out", str(out),
           # a schedule that does not depend on the total, so 2 + 1 epochs can equal 3
           "--schedule", "none", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.mark.slow
def test_torchrun_trains_resumes_exactly_and_only_rank0_reports(tmp_path):
    from safetensors.torch import load_file

    log = torchrun(tmp_path / "split", 2)
    assert log.count("done: best validation Dice") == 1  # rank 0 alone reports and writes
    rows = (tmp_path / "split" / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3  # a header and one row per epoch
    torchrun(tmp_path / "split", 3, "--resume", "--quiet")
    torchrun(tmp_path / "whole", 3, "--quiet")
    resumed = load_file(str(tmp_path / "split" / "checkpoints" / "last" / "model.safetensors"))
    whole = load_file(str(tmp_path / "whole" / "checkpoints" / "last" / "model.safetensors"))
    for key in whole:  # every rank's random streams continue as if never stopped
        assert torch.allclose(resumed[key], whole[key], atol=1e-6), key
    assert len((tmp_path / "split" / "metrics.csv").read_text().strip().splitlines()) == 4
