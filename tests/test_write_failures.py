"""A full disk (or any failed write) ends in one line naming what, where and the free
space; nothing half-written stays behind, the previous checkpoint survives, and --resume
continues once there is room again."""

import errno
import os
import shutil
import subprocess

import pytest
from safetensors import SafetensorError

import unetkit.checkpoint as checkpoint
from unetkit.checkpoint import load_training_state
from unetkit.cli import main
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
