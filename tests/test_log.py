"""Messages go through the ``unetkit`` logger: Python users silence or redirect them."""

from __future__ import annotations

import logging

import pytest

from unetkit.cli import main
from unetkit.config import Config, DataConfig, ModelConfig, TrainConfig
from unetkit.log import LOGGER
from unetkit.training import train


@pytest.fixture
def restore_logger():
    level, handlers = LOGGER.level, list(LOGGER.handlers)
    yield
    LOGGER.setLevel(level)
    LOGGER.handlers = handlers


def tiny(out) -> Config:
    return Config(model=ModelConfig(features=4, depth=2),
                  data=DataConfig(demo_count=6, demo_size=48, patch_size=32),
                  train=TrainConfig(epochs=1, batch_size=4, out=str(out), precision="fp32"))


def test_messages_can_be_redirected_and_silenced(tmp_path, capsys, restore_logger):
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    LOGGER.handlers = [Keep()]
    LOGGER.setLevel(logging.INFO)
    train(tiny(tmp_path / "a"))
    assert any(m.startswith("epoch   1/1") for m in records)
    assert any(m.startswith("done: best validation Dice") for m in records)
    assert "epoch   1/1" not in capsys.readouterr().out  # redirected, not printed
    LOGGER.handlers = [Keep()]
    records.clear()
    LOGGER.setLevel(logging.WARNING)
    train(tiny(tmp_path / "b"))
    assert records == []


def test_cli_quiet_and_verbose_set_the_level(tmp_path, restore_logger, monkeypatch):
    from unetkit import cli

    seen = []
    monkeypatch.setattr(cli, "cmd_make_demo_data", lambda args: seen.append(LOGGER.level) or 0)
    LOGGER.setLevel(logging.INFO)
    assert main(["make-demo-data", str(tmp_path / "d"), "--verbose"]) == 0
    assert seen == [logging.DEBUG] and LOGGER.level == logging.INFO  # restored after
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    LOGGER.handlers = [Keep()]
    assert main(["train", "--epochs", "1", "--demo-count", "6", "--demo-size", "48",
                 "--patch-size", "32", "--features", "4", "--depth", "2", "--quiet",
                 "--out", str(tmp_path / "r")]) == 0
    assert records == []  # --quiet: no INFO lines at all


def test_a_library_shows_nothing_by_itself_and_python_logging_sees_it(tmp_path, capsys,
                                                                      caplog):
    # Importing unetkit installs no console: only a NullHandler, and records propagate,
    # so a Python user's logging.basicConfig (here: caplog's handler on the root) sees them.
    assert [type(h) for h in LOGGER.handlers] == [logging.NullHandler]
    assert LOGGER.propagate and LOGGER.level == logging.NOTSET
    caplog.set_level(logging.INFO)
    train(tiny(tmp_path / "a"))
    assert any(m.startswith("epoch   1/1") for m in caplog.messages)
    assert any(r.name.startswith("unetkit.") for r in caplog.records)
    printed = capsys.readouterr()
    assert "epoch   1/1" not in printed.out + printed.err  # nothing written by unetkit itself


def test_the_cli_installs_its_console_for_the_command_only(tmp_path, capsys):
    assert main(["train", "--epochs", "1", "--demo-count", "6", "--demo-size", "48",
                 "--patch-size", "32", "--features", "4", "--depth", "2",
                 "--out", str(tmp_path / "r")]) == 0
    assert "epoch   1/1" in capsys.readouterr().out  # the command line shows the messages
    assert [type(h) for h in LOGGER.handlers] == [logging.NullHandler]  # and cleans up
    assert LOGGER.propagate and LOGGER.level == logging.NOTSET
