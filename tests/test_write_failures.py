"""A full disk (or any failed write) ends in one line naming what, where and the free
space; nothing half-written stays behind, the previous checkpoint survives, and --resume
continues once there is room again."""

import errno
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import SafetensorError

import unetkit.checkpoint as checkpoint
from unetkit.checkpoint import build_model, load_training_state, save_checkpoint
from unetkit.cli import main
from unetkit.config import Config, DataConfig, ModelConfig
from unetkit.errors import WriteError, free_space, writing

TRAIN = ["train", "--demo-count", "8", "--demo-size", "48", "--patch-size", "32",
         "--features", "4", "--depth", "2", "--batch-size", "4", "--plot-every", "1",
         "--quiet"]


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_writing_names_what_where_and_free_space(tmp_path):
    partial = tmp_path / "half.bin"
    with pytest.raises(WriteError, match=r"could not write mask to .*half.bin: No space left "
                                         r"on device \(.* free there\)"):
        with writing("mask", partial, cleanup=partial):
            partial.write_bytes(b"half")
            disk_full()
    assert not partial.exists()
    with pytest.raises(ZeroDivisionError):  # not a write failure: left alone
        with writing("mask", partial):
            raise ZeroDivisionError
    assert "free" in free_space(tmp_path / "not" / "yet")


def test_full_disk_while_saving_a_checkpoint_then_resume(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert main([*TRAIN, "--epochs", "1", "--out", str(out)]) == 0
    before = (out / "checkpoints" / "last" / "model.safetensors").read_bytes()

    def half_then_full(tensors, path):  # what safetensors raises when the disk fills
        open(path, "wb").write(b"partial")
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: "
                              "StorageFull, message: \"No space left on device\" })")

    monkeypatch.setattr(checkpoint, "save_file", half_then_full)
    code = main([*TRAIN, "--epochs", "2", "--out", str(out), "--resume"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "could not write checkpoint to" in err and "free there" in err
    assert not (out / "checkpoints" / "last.tmp").exists()
    assert (out / "checkpoints" / "last" / "model.safetensors").read_bytes() == before
    assert load_training_state(out / "checkpoints" / "last")["epoch"] == 1

    monkeypatch.undo()  # space freed: the same command continues
    assert main([*TRAIN, "--epochs", "2", "--out", str(out), "--resume"]) == 0
    assert load_training_state(out / "checkpoints" / "last")["epoch"] == 2


@pytest.mark.parametrize("target, what", [
    ("csv.DictWriter.writerows", "could not write metrics to"),
    ("matplotlib.figure.Figure.savefig", "could not write training curves to"),
])
def test_full_disk_for_metrics_or_figures(tmp_path, monkeypatch, capsys, target, what):
    monkeypatch.setattr(target, disk_full)
    out = tmp_path / "run"
    assert main([*TRAIN, "--epochs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert what in err and len(err.splitlines()) == 1
    assert not list(out.glob("*.tmp"))


def test_full_disk_for_an_export(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert main([*TRAIN, "--epochs", "1", "--out", str(out)]) == 0
    monkeypatch.setattr("torch.jit.ScriptModule.save", disk_full)
    code = main(["export", "--checkpoint", str(out / "checkpoints" / "best"), "--format",
                 "torchscript", "--out", str(tmp_path / "model.pt")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "could not write TorchScript model to" in err
    assert not (tmp_path / "model.pt").exists()


def tiny_checkpoint(folder, spatial_dims):
    """An untrained 2D or 3D checkpoint: prediction needs no training."""
    config = Config(model=ModelConfig(in_channels=1, out_channels=1, features=4, depth=2,
                                      norm=None, spatial_dims=spatial_dims),
                    data=DataConfig(num_classes=2, normalize="none", patch_size=16,
                                    patch_depth=8 if spatial_dims == 3 else None))
    torch.manual_seed(0)
    return save_checkpoint(folder, build_model(config.model), config)


@pytest.mark.parametrize("dims, failing", [(2, "mask"), (3, "labels"), (3, "probabilities")])
def test_full_disk_while_predicting_stops_at_the_first_write(tmp_path, monkeypatch, capsys,
                                                              dims, failing):
    """Images and volumes alike: one line naming the file and the free space, exit code 2,
    no other file tried, nothing half-written left (a volume's labels go with its
    probabilities)."""
    from unetkit.data import writers

    ckpt = tiny_checkpoint(tmp_path / "ckpt", dims)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        if dims == 3:
            np.save(inputs / f"vol{i}.npy", rng.random((1, 10, 20, 20)).astype(np.float32))
        else:
            Image.fromarray(rng.integers(0, 255, (24, 24), np.uint8)).save(
                inputs / f"img{i}.png")
    calls, real_save = [], np.save

    def half_then_full(path, *args, **kwargs):  # a volume: np.save(tmp, data)
        if failing == "probabilities" and not calls:
            calls.append(None)  # the labels are written, then the disk is full
            return real_save(path, *args, **kwargs)
        calls.append(path)
        open(path, "wb").write(b"half")
        disk_full()

    def rows_then_full(self, y0, rows):  # an image: its mask's rows, band by band
        calls.append(self.path)
        disk_full()

    if dims == 3:
        monkeypatch.setattr(np, "save", half_then_full)
    else:
        monkeypatch.setattr(writers.PngRows, "write", rows_then_full)
    out = tmp_path / "out"
    code = main(["predict", str(inputs), "--checkpoint", str(ckpt), "--out", str(out),
                 "--quiet", *(["--probabilities", "npy"] if failing == "probabilities" else [])])
    err = capsys.readouterr().err.strip()
    first = {"mask": "img0.png", "labels": "vol0.npy", "probabilities": "vol0_prob.npy"}
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"could not write {failing} to {out / first[failing]}: No space left on device (" \
        in err and "free there)" in err
    assert len([c for c in calls if c is not None]) == 1  # stopped at the first failed write
    assert not out.exists() or list(out.iterdir()) == []  # no partial file


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="needs root")
def test_a_real_small_tmpfs_fills_up(tmp_path, capsys):
    disk = tmp_path / "small"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(disk)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        # features 16 makes a ~1.9 MB checkpoint: it cannot fit in 200 kB
        code = main([*TRAIN, "--features", "16", "--epochs", "1", "--out", str(disk / "run")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "could not write" in err and "free there" in err, err
        assert not list((disk / "run" / "checkpoints").glob("*.tmp"))
    finally:
        subprocess.run(["umount", str(disk)], check=False)
