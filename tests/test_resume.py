"""--resume continues the run that is there: a setting that would change what the run is
(classes, task, network, channels) is one line and writes nothing; one that may change
(data root, learning rate, epochs) is applied and printed; a flag left out keeps the
run's value."""

import csv
import dataclasses
import shutil

import pytest
from PIL import Image
from test_training import tiny_config

from unetkit.checkpoint import load_config, load_training_state
from unetkit.cli import main
from unetkit.data.synthetic import write_demo_data
from unetkit.resume import ResumeError
from unetkit.training import train

TINY = ["--patch-size", "32", "--features", "4", "--depth", "2", "--batch-size", "4",
        "--schedule", "none", "--no-elastic"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(folder, data the run trained on, the run: 1 epoch, lr 0.003, features 4)."""
    root = tmp_path_factory.mktemp("resume")
    data = write_demo_data(root / "data", count=8, size=48, seed=0)
    run = root / "run"
    assert main(["train", "--data", str(data), "--epochs", "1", "--lr", "0.003", *TINY,
                 "--out", str(run), "--quiet"]) == 0
    return root, data, run


def files_of(folder):
    """Every file's bytes and modification time, by relative path."""
    return {p.relative_to(folder): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def a_copy(run, tmp_path):
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.parametrize("flags, shown", [
    # the case: other data with another class count
    (["--data", "DATA3", "--num-classes", "3"], "--num-classes 3 but the run was trained with 2"),
    (["--class-names", "bg", "cell"], "--class-names bg cell but the run was trained with "
                                      "background foreground"),
    (["--task", "instances"], "--task instances but the run was trained with semantic"),
    (["--arch", "resnet_unet"], "--arch resnet_unet but the run was trained with unet"),
    (["--features", "8"], "--features 8 but the run was trained with 4"),
    (["--depth", "3"], "--depth 3 but the run was trained with 2"),
])
def test_a_change_of_what_the_run_is_is_refused_and_writes_nothing(trained, capsys, flags,
                                                                   shown):
    root, _, run = trained
    if "DATA3" in flags:
        data3 = write_demo_data(root / "data3", count=8, size=48, multiclass=True)
        flags = [str(data3) if flag == "DATA3" else flag for flag in flags]
    before = files_of(run)
    code = main(["train", "--resume", "--out", str(run), "--epochs", "3", *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert shown in err and f"--resume {run}" in err and "cannot change on resume" in err
    assert files_of(run) == before  # checkpoints, metrics, config: not touched


def test_data_with_other_channels_is_refused_and_writes_nothing(trained, tmp_path, capsys):
    _, data, run = trained
    rgb = tmp_path / "rgb"
    shutil.copytree(data, rgb)
    for path in (rgb / "images").iterdir():
        Image.open(path).convert("RGB").save(path)
    before = files_of(run)
    code = main(["train", "--resume", "--out", str(run), "--epochs", "3", "--data", str(rgb)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert (f"--data {rgb} has images of 3 channel(s) but the run was trained with 1 "
            "channel(s); the channels cannot change") in err
    assert files_of(run) == before


def test_data_root_lr_and_epochs_are_applied_and_printed(trained, tmp_path, capsys):
    root, data, run = trained
    run = a_copy(run, tmp_path)
    other = write_demo_data(tmp_path / "other", count=8, size=48, seed=7)
    code = main(["train", "--resume", "--out", str(run), "--data", str(other), "--lr",
                 "0.001", "--epochs", "2"])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"continuing with --data {other} (was {data})" in printed
    assert "continuing with --lr 0.001 (was 0.003)" in printed
    assert "continuing with --epochs 2 (was 1)" in printed
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    # schedule "none": each epoch's lr is the one it trained with
    assert [(r["epoch"], float(r["lr"])) for r in rows] == [("1", 0.003), ("2", 0.001)]
    saved = load_config(run / "checkpoints" / "last")
    assert saved.data.root == str(other) and saved.optim.lr == 0.001
    assert saved.model.features == 4  # not given: the run's, not the default 32
    assert load_training_state(run / "checkpoints" / "last")["epoch"] == 2


def test_flags_left_out_keep_the_runs_values(trained, tmp_path, capsys):
    # The run trained with --features 4 --depth 2 --lr 0.003 --patch-size 32 ...: a resume
    # that gives none of them continues with them, not with the defaults.
    _, data, run = trained
    run = a_copy(run, tmp_path)
    assert main(["train", "--resume", "--out", str(run), "--epochs", "2"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("continuing with") == 1 and "--epochs 2 (was 1)" in printed
    saved = load_config(run / "checkpoints" / "last")
    assert (saved.model.features, saved.model.depth, saved.optim.lr,
            saved.data.patch_size, saved.data.root) == (4, 2, 0.003, 32, str(data))


def test_python_callers_are_refused_too(trained):
    # From Python, the settings that differ from their defaults are the ones asked for.
    _, data, run = trained
    before = files_of(run)
    cfg = tiny_config(run, epochs=3, resume=True)
    cfg.data = dataclasses.replace(cfg.data, root=str(data), num_classes=3)
    with pytest.raises(ResumeError, match="--num-classes 3 but the run was trained with 2"):
        train(cfg, progress=False)
    assert files_of(run) == before
