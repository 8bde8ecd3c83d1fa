"""--tensorboard: an epoch hook copying every metrics.csv column and the predictions
figure to OUT/tensorboard; without the tensorboard package, one line before anything runs."""

import csv
import dataclasses
import sys

import pytest

from unetkit.cli import main
from unetkit.config import Config
from unetkit.loggers import TENSORBOARD_MISSING
from unetkit.training import train


def tiny_config(out, **train_settings) -> Config:
    cfg = Config()
    cfg.data = dataclasses.replace(cfg.data, demo_count=6, demo_size=32, patch_size=32,
                                   val_fraction=0.34)
    cfg.model = dataclasses.replace(cfg.model, features=4, depth=2)
    cfg.optim = dataclasses.replace(cfg.optim, schedule="none")
    settings = dict(epochs=2, batch_size=2, steps_per_epoch=1, out=str(out), plot_every=1,
                    num_preview=1, tensorboard=True) | train_settings
    cfg.train = dataclasses.replace(cfg.train, **settings)
    return cfg


@pytest.fixture
def no_tensorboard(monkeypatch):
    """As if the tensorboard package were not installed (None in sys.modules makes the
    import raise ImportError), whether or not it is."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)


def test_without_the_package_training_refuses_before_it_starts(tmp_path, no_tensorboard):
    with pytest.raises(ImportError) as err:
        train(tiny_config(tmp_path / "run"), progress=False)
    assert str(err.value) == TENSORBOARD_MISSING
    assert not (tmp_path / "run").exists()  # nothing read or written
    train(tiny_config(tmp_path / "off", epochs=1, tensorboard=False), progress=False)


def test_without_the_package_the_command_prints_one_line(tmp_path, capsys, no_tensorboard):
    code = main(["train", "--tensorboard", "--epochs", "1", "--out", str(tmp_path / "run"),
                 "--demo-count", "4", "--demo-size", "32", "--patch-size", "32"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.splitlines()[-1].endswith(TENSORBOARD_MISSING)
    assert len(err.splitlines()) == 1 and not (tmp_path / "run").exists()
    assert TENSORBOARD_MISSING == ("--tensorboard needs the tensorboard package: "
                                   "pip install -e '.[tensorboard]'")


def read_events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def test_event_files_hold_every_metrics_column_and_the_figure(tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    train(tiny_config(out), progress=False)
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    events = read_events(out / "tensorboard")
    columns = [c for c in rows[0] if c != "epoch"]
    assert "lr" in columns and sorted(events.Tags()["scalars"]) == sorted(columns)
    for column in columns:
        logged = events.Scalars(column)
        assert [e.step for e in logged] == [1, 2], column
        for event, row in zip(logged, rows):
            assert event.value == pytest.approx(float(row[column]), rel=1e-5, abs=1e-7)
    assert [e.step for e in events.Images("predictions")] == [1, 2]


def test_a_new_run_in_the_folder_replaces_the_curves_and_a_resumed_one_continues(tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"

    def logged():
        events = read_events(out / "tensorboard").Scalars("val_dice")
        with open(out / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert [e.value for e in events] == pytest.approx([float(r["val_dice"]) for r in rows])
        return [e.step for e in events]

    train(tiny_config(out, epochs=2), progress=False)
    train(tiny_config(out, epochs=1, overwrite=True, seed=1), progress=False)
    assert logged() == [1]  # the first run's epochs 1 and 2 are hidden, as in metrics.csv
    train(tiny_config(out, epochs=2, resume=True), progress=False)
    assert logged() == [1, 2]
